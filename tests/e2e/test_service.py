"""The background service: launchd plist and systemd unit generation, install/uninstall scripts.

Runs on Linux too: MLXOLLAMA_SERVICE_OS picks the macOS path, and stand-in `launchctl` /
`systemctl` programs on PATH record what the scripts ask of them.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from mlxollama.cli.service import LABEL

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install-launchd.sh"
UNINSTALL = ROOT / "scripts" / "uninstall-launchd.sh"
VENV_PY = str(ROOT / ".venv" / "bin" / "python")

# launchctl stand-in: `print` succeeds while "loaded"; bootstrap loads, bootout unloads.
FAKE_LAUNCHCTL = """#!/bin/sh
echo "launchctl $*" >> "$FAKE_LOG"
case "$1" in
  print) [ -e "$FAKE_STATE" ] ;;
  bootstrap) touch "$FAKE_STATE" ;;
  bootout) rm -f "$FAKE_STATE" ;;
esac
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$FAKE_LOG"
case "$*" in
  *is-active*) [ -e "$FAKE_STATE" ] ;;
  *"enable --now"*) touch "$FAKE_STATE" ;;
  *"disable --now"*) rm -f "$FAKE_STATE" ;;
esac
"""


@pytest.fixture
def sandbox(tmp_path):
    """A fake HOME and a bin/ with the service managers' stand-ins first on PATH."""
    home, bin_ = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_.mkdir()
    for name, text in (("launchctl", FAKE_LAUNCHCTL), ("systemctl", FAKE_SYSTEMCTL)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "MLXOLLAMA_", "XDG_"))}
    env.update(
        HOME=str(home),
        PATH=f"{bin_}:{os.environ['PATH']}",
        FAKE_LOG=str(tmp_path / "calls.log"),
        FAKE_STATE=str(tmp_path / "loaded"),
        MLXOLLAMA_SERVICE_WAIT="20",
    )
    return tmp_path, home, env


def calls(tmp_path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def script(path: Path, env: dict, *args: str, os_name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(path), *args],
        env={**env, "MLXOLLAMA_SERVICE_OS": os_name},
        capture_output=True,
        text=True,
        timeout=120,
    )


def dry_run_file(output: str, path: Path) -> str:
    """The file contents a --dry-run shows under `+ write PATH:` (indented by four spaces)."""
    lines = output.splitlines()
    start = lines.index(f"+ write {path}:") + 1
    body = []
    for line in lines[start:]:
        if not line.startswith("    ") and line != "":
            break
        body.append(line[4:])
    return "\n".join(body).rstrip("\n") + "\n"


def check_plist(data: bytes, home: Path, host: str, models: str) -> dict:
    plist = plistlib.loads(data)
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [VENV_PY, "-m", "mlxollama.cli", "serve"]
    assert plist["WorkingDirectory"] == str(ROOT)
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] == "Interactive"
    envs = plist["EnvironmentVariables"]
    assert envs["OLLAMA_HOST"] == host and envs["MLXOLLAMA_MODELS"] == models and envs["OLLAMA_KEEP_ALIVE"]
    assert envs["PATH"].split(":")[0] == str(ROOT / ".venv" / "bin")
    logs = home / "Library" / "Logs" / "mlxollama"
    assert Path(plist["StandardOutPath"]).parent == logs and Path(plist["StandardErrorPath"]).parent == logs
    return plist


# --- macOS (launchd) ------------------------------------------------------------------------------


def test_install_dry_run_lists_the_launchctl_commands(sandbox):
    tmp_path, home, env = sandbox
    env["PATH"] = os.environ["PATH"]  # no launchctl at all, as on Linux: the loaded state is unknown
    env["OLLAMA_HOST"] = "127.0.0.1:11555"
    r = script(INSTALL, env, "--dry-run", os_name="darwin")
    assert r.returncode == 0, r.stderr
    uid = os.getuid()
    plist_path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    lines = r.stdout.splitlines()
    models = str(home / ".mlxollama" / "models")
    assert f"+ env MLXOLLAMA_MODELS={models} {VENV_PY} -m mlxollama.cli import-defaults" in lines
    assert f"+ mkdir -p {home}/Library/LaunchAgents {home}/Library/Logs/mlxollama" in lines
    launchctl = [ln for ln in lines if ln.startswith("+ launchctl")]
    assert launchctl == [
        f"+ launchctl bootout gui/{uid}/{LABEL}   # only if already loaded",
        f"+ launchctl enable gui/{uid}/{LABEL}",
        f"+ launchctl bootstrap gui/{uid} {plist_path}",
    ]
    assert "+ wait until GET http://127.0.0.1:11555/ answers (up to 20s)" in lines
    assert "tail -f" in r.stdout and f"launchctl bootout gui/{uid}/{LABEL}" in r.stdout
    check_plist(dry_run_file(r.stdout, plist_path).encode(), home, "127.0.0.1:11555", models)
    assert list(home.iterdir()) == []  # nothing was written


def test_install_and_uninstall_with_launchctl(sandbox, server):
    tmp_path, home, env = sandbox
    env["OLLAMA_HOST"] = f"127.0.0.1:{server.port}"  # the test server stands in for the agent
    env["MLXOLLAMA_MODELS"] = "~/models"
    uid = os.getuid()
    plist_path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    r = script(INSTALL, env, "--skip-import", os_name="darwin")
    assert r.returncode == 0, r.stdout + r.stderr
    check_plist(plist_path.read_bytes(), home, env["OLLAMA_HOST"], str(home / "models"))
    assert (home / "Library" / "Logs" / "mlxollama").is_dir()
    assert calls(tmp_path) == [
        f"launchctl print gui/{uid}/{LABEL}",
        f"launchctl enable gui/{uid}/{LABEL}",
        f"launchctl bootstrap gui/{uid} {plist_path}",
    ]
    assert f"mlxollama is running at http://127.0.0.1:{server.port}" in r.stdout

    # again: the loaded agent is booted out first, then loaded from the rewritten file
    (tmp_path / "calls.log").unlink()
    r = script(INSTALL, env, "--skip-import", os_name="darwin")
    assert r.returncode == 0, r.stdout + r.stderr
    log = calls(tmp_path)
    assert f"launchctl bootout gui/{uid}/{LABEL}" in log
    assert log.index(f"launchctl bootout gui/{uid}/{LABEL}") < log.index(f"launchctl bootstrap gui/{uid} {plist_path}")

    (tmp_path / "calls.log").unlink()
    r = script(UNINSTALL, env, "--dry-run", os_name="darwin")
    assert r.returncode == 0 and f"+ launchctl bootout gui/{uid}/{LABEL}" in r.stdout
    assert f"+ rm -f {plist_path}" in r.stdout and plist_path.exists()
    r = script(UNINSTALL, env, os_name="darwin")
    assert r.returncode == 0, r.stderr
    assert f"launchctl bootout gui/{uid}/{LABEL}" in calls(tmp_path) and not plist_path.exists()
    r = script(UNINSTALL, env, os_name="darwin")
    assert (r.returncode, r.stdout) == (0, "mlxollama service is not installed; nothing to do.\n")


def test_install_fails_clearly_when_the_server_never_answers(sandbox):
    from ..support.liveserver import free_port

    tmp_path, home, env = sandbox
    env.update(OLLAMA_HOST=f"127.0.0.1:{free_port()}", MLXOLLAMA_SERVICE_WAIT="1")
    r = script(INSTALL, env, "--skip-import", os_name="darwin")
    assert r.returncode == 1
    assert r.stderr.strip() == f"mlxollama did not answer within 1s; see {home}/Library/Logs/mlxollama/server.log"


# --- Linux (systemd) ------------------------------------------------------------------------------


def test_install_dry_run_lists_the_systemctl_commands(sandbox):
    tmp_path, home, env = sandbox
    r = script(INSTALL, env, "--dry-run", "--skip-import", os_name="linux")
    assert r.returncode == 0, r.stderr
    unit = home / ".config" / "systemd" / "user" / "mlxollama.service"
    systemctl = [ln for ln in r.stdout.splitlines() if ln.startswith("+ systemctl")]
    assert systemctl == ["+ systemctl --user daemon-reload", "+ systemctl --user enable --now mlxollama.service"]
    assert f'ExecStart="{VENV_PY}" -m mlxollama.cli serve' in dry_run_file(r.stdout, unit)
    assert "journalctl --user -u mlxollama.service" in r.stdout
    assert calls(tmp_path) == ["systemctl --user is-active --quiet mlxollama.service"]  # only looked
    assert list(home.iterdir()) == []


def test_systemd_unit_installs_and_verifies(sandbox, server):
    tmp_path, home, env = sandbox
    env["OLLAMA_HOST"] = f"127.0.0.1:{server.port}"
    env["XDG_CONFIG_HOME"] = str(home / "cfg")
    r = script(INSTALL, env, "--skip-import", os_name="linux")
    assert r.returncode == 0, r.stdout + r.stderr
    unit = home / "cfg" / "systemd" / "user" / "mlxollama.service"
    text = unit.read_text()
    assert f'Environment="OLLAMA_HOST=127.0.0.1:{server.port}"' in text and "Restart=on-failure" in text
    assert calls(tmp_path)[1:] == ["systemctl --user daemon-reload", "systemctl --user enable --now mlxollama.service"]

    # a second install restarts the running unit so the new file takes effect
    (tmp_path / "calls.log").unlink()
    assert script(INSTALL, env, "--skip-import", os_name="linux").returncode == 0
    assert calls(tmp_path)[-1] == "systemctl --user restart mlxollama.service"

    (tmp_path / "calls.log").unlink()
    r = script(UNINSTALL, env, os_name="linux")
    assert r.returncode == 0 and not unit.exists()
    assert calls(tmp_path) == ["systemctl --user disable --now mlxollama.service", "systemctl --user daemon-reload"]

    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed here; the unit was generated but not verified")
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(text)
    res = subprocess.run([verify, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [ln for ln in (res.stdout + res.stderr).splitlines() if "mlxollama.service" in ln]
    assert res.returncode == 0 and not complaints, textwrap.indent(res.stdout + res.stderr, "  ")


def test_scripts_parse_and_offer_help():
    for path in (INSTALL, UNINSTALL, ROOT / "scripts" / "_service.sh"):
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, path
    r = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--dry-run" in r.stdout and "OLLAMA_HOST" in r.stdout
    r = subprocess.run(["bash", str(INSTALL), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option: --bogus" in r.stderr


def test_mlxollama_service_wraps_the_scripts(sandbox, server):
    import sys

    tmp_path, home, env = sandbox
    env["OLLAMA_HOST"] = f"127.0.0.1:{server.port}"
    cmd = [sys.executable, "-m", "mlxollama.cli", "service"]
    run = lambda *a: subprocess.run(
        cmd + list(a),
        env={**env, "MLXOLLAMA_SERVICE_OS": "darwin"},  # noqa: E731
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    r = run("install", "--dry-run", "--skip-import")
    assert r.returncode == 0 and f"+ launchctl bootstrap gui/{os.getuid()}" in r.stdout
    r = run("status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"launchd agent {LABEL}: not installed" in r.stdout
    assert f"server: answering at http://127.0.0.1:{server.port}" in r.stdout
    r = run("uninstall")
    assert (r.returncode, r.stdout) == (0, "mlxollama service is not installed; nothing to do.\n")
