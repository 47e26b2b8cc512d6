"""SIGTERM/SIGINT stop the server gracefully: running streams end with an error line, models
unload, the process exits 0 within seconds (launchd and systemd count anything else a crash)."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from ..support.liveserver import LiveServer

# tiny-long has a context of a million tokens: this generation runs for minutes.
ENDLESS = {"model": "tiny-long", "prompt": "go on", "options": {"num_predict": 1 << 19, "num_ctx": 1 << 20}}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_generation_ends_the_stream_and_exits_0_quickly(models_dir, tmp_path, signum):
    srv = LiveServer(models_dir, tmp_path / "server.log")
    try:
        with httpx.stream("POST", srv.url + "/api/generate", json=ENDLESS, timeout=60) as r:
            lines = r.iter_lines()
            first = json.loads(next(lines))
            assert first["done"] is False  # generating
            signalled = time.monotonic()
            srv.proc.send_signal(signum)
            rest = [json.loads(line) for line in lines if line]
        code = srv.proc.wait(30)
        elapsed = time.monotonic() - signalled
    finally:
        srv.stop()
    assert code == 0, srv.log()
    assert elapsed < 5, srv.log()
    assert rest, "the stream ended without a final line"
    assert rest[-1] == {"error": "server shutting down"}
    assert all(not obj.get("done") for obj in rest)
    log = srv.log()
    assert "Traceback" not in log and "RuntimeError" not in log, log


def test_signal_when_idle_exits_0_quickly(models_dir, tmp_path):
    srv = LiveServer(models_dir, tmp_path / "server.log")
    try:
        r = httpx.post(srv.url + "/api/generate", json={"model": "tiny", "keep_alive": -1}, timeout=60)
        assert r.status_code == 200  # a model stays loaded
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)
        elapsed = time.monotonic() - signalled
    finally:
        srv.stop()
    assert code == 0, srv.log()
    assert elapsed < 5, srv.log()
    assert "Traceback" not in srv.log()
