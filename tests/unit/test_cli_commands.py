"""`mlxollama push` through commands.main with a stand-in client: its progress lines and closing message."""

from __future__ import annotations

import re


def test_push_progress_and_result(capsys, monkeypatch):
    from types import SimpleNamespace

    from mlxollama.cli import commands as cli_mod

    digest = "sha256:" + "ef" * 32

    class FakeClient:
        def push(self, name, insecure=False, stream=True):
            yield SimpleNamespace(status="retrieving manifest", digest=None, total=None, completed=None)
            for done in (0, 1000, 2000):
                yield SimpleNamespace(status="pushing efefefefefef", digest=digest, total=2000, completed=done)
            for status in ("pushing manifest", "success"):
                yield SimpleNamespace(status=status, digest=None, total=None, completed=None)

    monkeypatch.setattr(cli_mod, "_client", FakeClient)
    assert cli_mod.main(["push", "example.com/me/model:latest"]) == 0
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert lines[0] == "retrieving manifest"
    assert re.fullmatch(r"pushing efefefefefef 100% ▕█+▏ +2 KB", lines[1])
    assert lines[2:] == ["pushing manifest", "success"]
    assert out.out == "\nYou can find your model at:\n\n\texample.com/me/model:latest\n"
