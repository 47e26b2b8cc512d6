"""A real mlxollama server process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(server, first_process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Polls `server.url` until it answers; `server.log()` goes into the error when it never does."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if first_process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{server.log()}")
        try:
            if httpx.get(server.url + "/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{what} did not start:\n{server.log()}")


class LiveServer:
    def __init__(self, models_dir: Path, log_path: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_dir = models_dir
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.update(
            {
                "OLLAMA_HOST": f"127.0.0.1:{self.port}",
                "MLXOLLAMA_MODELS": str(models_dir),
                "MLXOLLAMA_EXIT_WITH_PARENT": "1",  # never outlive the test run
                "OLLAMA_NOPRUNE": "1",
            }
        )
        full_env.update(env or {})
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlxollama.cli", "serve"],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        wait_until_serving(self, self.proc, "server", timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
