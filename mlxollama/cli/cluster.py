"""`mlxollama serve --hostfile hosts.json`: the same server on every host of an MLX group, started
by `mlx.launch` (engine/distributed.py explains what each rank does).

mlx.launch starts `python -m mlxollama.cli serve` on each host over ssh, with this Python's path
(install mlxollama at the same path on every Mac) and with the OLLAMA_*/MLXOLLAMA_* settings of
this shell, which it would not pass on otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..config import server_variables

BACKENDS = ("ring", "jaccl", "jaccl-ring", "mpi")


def launch_command(hostfile: str, backend: str | None = None, env: dict[str, str] | None = None) -> list[str]:
    """The mlx.launch command line that starts every rank of the group the hostfile describes."""
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
    command = [launcher or "mlx.launch", "--hostfile", hostfile, "--python", sys.executable]
    if backend:
        command += ["--backend", backend]
    for key, value in sorted((env if env is not None else server_variables()).items()):
        command += ["--env", f"{key}={value}"]
    return command + ["--", "-m", "mlxollama.cli", "serve"]


def serve_group(hostfile: str, backend: str | None = None) -> int:
    if not Path(hostfile).is_file():
        print(f"Error: hostfile {hostfile} not found", file=sys.stderr)
        return 1
    command = launch_command(hostfile, backend)
    if shutil.which(command[0]) is None:
        print("Error: mlx.launch not found (it comes with the mlx package)", file=sys.stderr)
        return 1
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
