"""scripts/serve and scripts/test share one .venv: switching between them must not reinstall."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _setup(extras: str) -> subprocess.CompletedProcess:
    # Sourcing _setup.sh is what both scripts do before they serve or test.
    return subprocess.run(
        ["bash", "-c", f"source scripts/_setup.sh {extras} && echo READY"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_serve_after_test_and_test_after_serve_reuse_the_install():
    if not (ROOT / ".venv" / ".mlxollama-installed-extras-test").exists():
        pytest.skip("run through ./scripts/test, which installs the test extras into .venv")
    first = _setup("test")  # what ./scripts/test just did: nothing left to install
    assert first.returncode == 0 and "READY" in first.stdout, first.stderr
    for extras in ("", "test", ""):
        r = _setup(extras)
        assert r.returncode == 0 and "READY" in r.stdout, r.stderr
        assert "installing" not in r.stdout + r.stderr, f"extras={extras!r} reinstalled:\n{r.stdout}"
