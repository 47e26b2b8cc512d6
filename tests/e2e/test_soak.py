"""A short soak: 8 clients for 10 s mixing generate, chat, embed, tags, show and pull through
scripts/soak.py, which starts its own server on a tiny model with a loopback registry. Not one answer
may be lost, belong to another request, or be malformed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def test_eight_clients_for_ten_seconds_lose_and_mix_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--clients", "8", "--seconds", "10", "--timeout", "60", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    counts = {k: summary[k] for k in ("lost", "failed", "mixed", "malformed")}
    assert counts == {"lost": 0, "failed": 0, "mixed": 0, "malformed": 0}, json.dumps(summary["examples"], indent=1)[
        :4000
    ]
    assert proc.returncode == 0
    # every route was exercised, generations most, and enough of them to mean something
    routes = summary["routes"]
    assert set(routes) == {"generate", "generate-stream", "chat", "chat-stream", "embed", "tags", "show", "pull"}
    assert summary["ok"] >= 50, summary
