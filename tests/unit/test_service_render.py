"""The service files rendered from launchd/ templates (mlxollama/cli/service.py render): odd paths stay intact."""

from __future__ import annotations

import plistlib
from pathlib import Path

from mlxollama.cli.service import LABEL, render

ROOT = Path(__file__).resolve().parents[2]


def test_plist_template_escapes_odd_paths():
    values = {
        "LABEL": LABEL,
        "PYTHON": "/Users/a & b/<x>/.venv/bin/python",
        "ROOT": "/Users/a & b/<x>",
        "OLLAMA_HOST": "0.0.0.0:11434",
        "MODELS": "/Volumes/Big Disk/models",
        "KEEP_ALIVE": "-1",
        "PATH": "/usr/bin:/bin",
        "LOG_DIR": "/Users/a & b/Library/Logs/mlxollama",
    }
    template = (ROOT / "launchd" / f"{LABEL}.plist").read_text()
    plist = plistlib.loads(render(template, values, "darwin").encode())
    assert plist["ProgramArguments"][0] == values["PYTHON"]
    assert plist["EnvironmentVariables"]["MLXOLLAMA_MODELS"] == "/Volumes/Big Disk/models"
    assert plist["StandardOutPath"] == "/Users/a & b/Library/Logs/mlxollama/server.log"


def test_systemd_template_quotes_odd_paths():
    values = {
        "PYTHON": '/home/a b/"q"/py',
        "ROOT": "/home/a b/100%",
        "OLLAMA_HOST": "127.0.0.1:1",
        "MODELS": "/m",
        "KEEP_ALIVE": "5m",
        "PATH": "/bin",
    }
    unit = render((ROOT / "launchd" / "mlxollama.service").read_text(), values, "linux")
    assert 'ExecStart="/home/a b/\\"q\\"/py" -m mlxollama.cli serve' in unit
    assert "WorkingDirectory=/home/a b/100%%" in unit
    assert "@" not in unit.split("[Unit]", 1)[1]
