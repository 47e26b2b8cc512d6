"""The background service: template rendering for scripts/install-launchd.sh, and `mlxollama service`.

Only the standard library and mlxollama.config (itself standard library only) are imported at
module level, so the install script can render a template with any Python 3 even before the
virtual environment exists (for --dry-run).

    python -m mlxollama.cli.service render darwin|linux TEMPLATE   (values from MLXOLLAMA_SVC_* variables)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

from ..config import service_os_override, service_template_values, xdg_config_home

LABEL = "dev.mlxollama.server"
UNIT = "mlxollama.service"
KEYS = ("LABEL", "PYTHON", "ROOT", "OLLAMA_HOST", "MODELS", "KEEP_ALIVE", "PATH", "LOG_DIR")


def service_os() -> str:
    """darwin or linux; MLXOLLAMA_SERVICE_OS overrides so either path can be exercised anywhere."""
    return service_os_override() or platform.system().lower()


def _systemd_quoted(value: str) -> str:
    # inside "..." in a unit file: backslash and quote are escaped, % starts a specifier
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def render(template: str, values: dict[str, str], kind: str) -> str:
    """Fill @KEY@ placeholders, escaped for the file they land in (plist XML or a systemd unit)."""
    out = template
    for key in KEYS:
        value = values.get(key, "")
        if kind == "darwin":
            value = xml_escape(value)
        elif kind == "linux":
            value = _systemd_quoted(value)
        else:
            raise ValueError(f"unknown service kind {kind!r}")
        out = out.replace(f"@{key}@", value)
    return out


def _main_render(argv: list[str]) -> int:
    kind, template = argv[0], Path(argv[1])
    values = service_template_values(KEYS)
    sys.stdout.write(render(template.read_text(encoding="utf-8"), values, kind))
    return 0


# --- `mlxollama service ...` ------------------------------------------------------------------


def _checkout_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "scripts" / "install-launchd.sh").is_file() else None


def _answers(timeout: float = 2.0) -> str | None:
    import httpx

    from .client import server_url

    url = server_url()
    try:
        ok = httpx.get(url + "/", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        ok = False
    return url if ok else None


def status() -> int:
    kind = service_os()
    home = Path.home()
    if kind == "darwin":
        plist = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        print(f"launchd agent {LABEL}: {'installed at ' + str(plist) if plist.exists() else 'not installed'}")
        uid = os.getuid()
        try:
            loaded = (
                subprocess.run(["launchctl", "print", f"gui/{uid}/{LABEL}"], capture_output=True, text=True).returncode
                == 0
            )
            print(f"loaded: {'yes' if loaded else 'no'}")
        except FileNotFoundError:
            pass
        print(f"logs: {home / 'Library' / 'Logs' / 'mlxollama' / 'server.log'}")
    elif kind == "linux":
        unit = xdg_config_home() / "systemd" / "user" / UNIT
        print(f"systemd user unit {UNIT}: {'installed at ' + str(unit) if unit.exists() else 'not installed'}")
        try:
            state = subprocess.run(["systemctl", "--user", "is-active", UNIT], capture_output=True, text=True)
            print(f"active: {state.stdout.strip() or 'unknown'}")
        except FileNotFoundError:
            pass
        print(f"logs: journalctl --user -u {UNIT}")
    else:
        print(f"no service support for {kind!r}; run `mlxollama serve` instead")
    url = _answers()
    print(f"server: {'answering at ' + url if url else 'not answering'}")
    return 0 if url else 1


def run(action: str, dry_run: bool = False, skip_import: bool = False) -> int:
    if action == "status":
        return status()
    root = _checkout_root()
    if root is None:
        print(
            "Error: the service scripts live in a source checkout; run scripts/install-launchd.sh from it",
            file=sys.stderr,
        )
        return 1
    script = root / "scripts" / ("install-launchd.sh" if action == "install" else "uninstall-launchd.sh")
    cmd = ["bash", str(script)] + (["--dry-run"] if dry_run else [])
    if skip_import and action == "install":
        cmd.append("--skip-import")
    return subprocess.call(cmd)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "render":
        sys.exit(_main_render(sys.argv[2:]))
    print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
    sys.exit(2)
