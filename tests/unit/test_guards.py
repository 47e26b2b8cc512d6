"""CORS origins and the Host guard, as Ollama decides them (gin-contrib/cors with AllowWildcard;
allowedHostsMiddleware in server/routes.go)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from mlxollama.api.app import _DEFAULT_ORIGINS, OriginPolicy, _is_interface_address, host_allowed, split_host_port


def test_only_star_is_a_wildcard_in_origins():
    ipv6 = OriginPolicy(["http://[::1]:3000"])
    assert ipv6.allows("http://[::1]:3000")  # brackets are plain text, not a character class
    assert not ipv6.allows("http://:")
    bracketed = OriginPolicy(["http://[fd00::5]"])
    assert bracketed.allows("http://[fd00::5]")
    assert not bracketed.allows("http://f")
    assert not bracketed.allows("http://5")
    question = OriginPolicy(["http://a?b"])
    assert question.allows("http://a?b")
    assert not question.allows("http://axb")


def test_one_star_matches_any_middle():
    policy = OriginPolicy(["https://*.example.com", "chrome-extension://*", "*-app.test"])
    assert policy.allows("https://ui.example.com")
    assert policy.allows("https://a.b.example.com")
    assert not policy.allows("https://example.org")
    assert not policy.allows("http://ui.example.com")
    assert policy.allows("chrome-extension://abcdef")
    assert policy.allows("http://my-app.test")
    assert not policy.allow_all


def test_lone_star_allows_everything():
    policy = OriginPolicy(["*"])
    assert policy.allow_all
    assert policy.allows("http://anything.example")


def test_exact_origins_compare_lowercased_and_trimmed():
    policy = OriginPolicy(["http://Example.COM ", "moz-extension://abc"])
    assert policy.allows("http://example.com")
    assert policy.allows("moz-extension://abc")
    assert not policy.allows("http://example.com.evil")


def test_unusable_entries_are_left_out():
    # Ollama refuses to start on these; we skip them instead of matching something unintended.
    policy = OriginPolicy(["example.com", "http://*.*.com", "ftp://files"])
    assert not policy.allows("example.com")
    assert not policy.allows("http://a.b.com")
    assert not policy.allows("ftp://files")


def test_default_origins():
    policy = OriginPolicy(list(_DEFAULT_ORIGINS))
    for origin in (
        "http://localhost",
        "https://localhost:3000",
        "http://127.0.0.1:8080",
        "http://0.0.0.0",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://abc",
        "vscode-file://vscode-app",
    ):
        assert policy.allows(origin), origin
    for origin in (
        "http://localhost.evil.com",
        "http://127.0.0.1.nip.io",
        "https://evil.com",
        "http://[::1]:3000",
        "null",
    ):
        assert not policy.allows(origin), origin


@pytest.mark.parametrize(
    "hostport, host",
    [
        ("localhost:11434", "localhost"),
        ("localhost", "localhost"),  # no port: the whole value
        ("[::1]:11434", "::1"),
        ("[::1]", "[::1]"),  # Go's SplitHostPort fails ("missing port"): the value stays bracketed
        ("::1", "::1"),  # too many colons: the whole value
        ("127.0.0.1:80", "127.0.0.1"),
        (":80", ""),
        ("", ""),
        ("[a]b:1", "[a]b:1"),
        ("a]:1", "a]:1"),
    ],
)
def test_split_host_port_as_go(hostport, host):
    assert split_host_port(hostport) == host


def never_local(_ip) -> bool:
    return False


@pytest.mark.parametrize(
    "host",
    [
        "",
        "localhost",
        "localhost:11434",
        "LOCALHOST:1",
        "app.localhost",
        "box.local:8080",
        "svc.internal",
        "127.0.0.1:11434",
        "127.9.9.9",
        "[::1]:11434",
        "::1",
        "[::ffff:127.0.0.1]:80",
        "10.1.2.3",
        "172.16.0.1:80",
        "172.31.255.255",
        "192.168.1.20:11434",
        "[fd00::5]:11434",
        "[fc00::1]:1",
        "0.0.0.0:11434",
        "[::]:11434",
    ],
)
def test_host_guard_allows_this_machine(host):
    assert host_allowed(host, is_local_address=never_local)


@pytest.mark.parametrize(
    "host",
    [
        "evil.com",
        "evil.com:11434",
        "localhost.evil.com",
        "127.0.0.1.nip.io",
        "169.254.1.1:80",
        "[fe80::1]:80",  # link-local
        "192.0.2.1",
        "198.51.100.7:80",
        "[2001:db8::1]:80",  # documentation ranges
        "198.18.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "100.64.0.1",
        "172.32.0.1",
        "11.0.0.1",
        "[::ffff:0.0.0.0]:80",
        "[::1]",
    ],
)
def test_host_guard_refuses_other_names_and_ranges(host):
    assert not host_allowed(host, is_local_address=never_local)


def test_host_guard_allows_this_machines_own_addresses_and_name():
    public = ipaddress.ip_address("203.0.113.9")
    assert not host_allowed("203.0.113.9:11434", is_local_address=never_local)
    assert host_allowed("203.0.113.9:11434", is_local_address=lambda ip: ip == public)
    assert host_allowed(socket.gethostname().upper() + ":11434", is_local_address=never_local)


def test_interface_address_check():
    assert _is_interface_address(ipaddress.ip_address("127.0.0.1"))
    assert not _is_interface_address(ipaddress.ip_address("203.0.113.77"))
    assert not _is_interface_address(ipaddress.ip_address("224.0.0.1"))
