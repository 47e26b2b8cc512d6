"""How the command line finds its server from OLLAMA_HOST (mlxollama/cli/client.py)."""

from __future__ import annotations


def test_server_url_follows_ollama_host_rules(monkeypatch):
    from mlxollama.cli.client import server_url

    cases = {
        "": "http://127.0.0.1:11434",
        "0.0.0.0": "http://127.0.0.1:11434",
        ":5000": "http://127.0.0.1:5000",
        "example.com": "http://example.com:11434",
        "https://example.com": "https://example.com:443",
        "http://[::1]:9000/prefix/": "http://[::1]:9000/prefix",
        '"127.0.0.1:8080"': "http://127.0.0.1:8080",
        "[::]:11434": "http://[::1]:11434",
    }
    for raw, url in cases.items():
        assert server_url(raw) == url, raw
