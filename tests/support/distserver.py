"""A server made of several local processes over MLX's ring backend on loopback, for tests.

`launcher="mlx.launch"` runs `mlx.launch -n N --backend ring` as a user would, `launcher="hostfile"`
`mlxollama serve --hostfile` (which runs mlx.launch on its ring ports from 32323). `launcher="direct"`
starts each rank itself with the environment mlx.launch gives it (MLX_RANK and a ring hostfile),
as launchd does on each Mac of a cluster: mlx.launch stops every rank as soon as one fails, so a
test that kills rank 1 and watches rank 0 carry on needs ranks that live on their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .liveserver import free_port, wait_until_serving


class GroupServer:
    def __init__(self, models_dir: Path, log_dir: Path, ranks: int = 2, env: dict | None = None, launcher="direct"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        base = dict(os.environ)
        base.update(
            {
                "OLLAMA_HOST": f"127.0.0.1:{self.port}",
                "MLXOLLAMA_MODELS": str(models_dir),
                "MLXOLLAMA_EXIT_WITH_PARENT": "1",
                "OLLAMA_NOPRUNE": "1",
                "MLXOLLAMA_DISTRIBUTED_MIN_SIZE": "0",
            }
        )
        base.update(env or {})
        self.procs: list[subprocess.Popen] = []
        self._logs = []
        command = [sys.executable, "-m", "mlxollama.cli", "serve"]
        if launcher == "mlx.launch":
            launch = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or "mlx.launch"
            self._start(
                [launch, "-n", str(ranks), "--backend", "ring", "-p", str(free_port()), *command],
                base,
                "launch.log",
            )
        elif launcher == "hostfile":  # mlxollama serve --hostfile: it runs mlx.launch itself
            hostfile = log_dir / "hosts.json"
            hostfile.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * ranks))
            self._start([*command, "--hostfile", str(hostfile), "--backend", "ring"], base, "launch.log")
        else:
            hostfile = log_dir / "hosts.json"
            hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"] for _ in range(ranks)]))
            for rank in range(ranks):
                env_rank = dict(base, MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile))
                self._start(command, env_rank, f"rank{rank}.log")
        self._wait_ready()

    def _start(self, command: list[str], env: dict, log_name: str) -> None:
        log = open(self.log_dir / log_name, "wb")
        self._logs.append(log)
        self.procs.append(
            subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        )

    def _wait_ready(self, timeout: float = 60) -> None:
        wait_until_serving(self, self.procs[0], "group", timeout)

    def log(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def signal_rank(self, rank: int, signum: int) -> None:
        """SIGKILL: the rank dies; SIGSTOP: it hangs (stop() ends it)."""
        os.kill(self.procs[rank].pid, signum)
        if signum == signal.SIGKILL:
            self.procs[rank].wait(10)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    os.killpg(p.pid, signal.SIGCONT)  # a rank a test stopped
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        for log in self._logs:
            log.close()


def build_odd_head_llama(out: Path, *, seed: int = 1, layers: int = 4) -> Path:
    """A tiny llama whose 3 heads do not divide over 2 ranks (as SmolLM2's 9 do not), so the group
    shards it by layers (pipeline) rather than by heads."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from .tinymodels import build_tiny_llama

    build_tiny_llama(out)  # tokenizer, model_info and a config to adjust
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_size=48, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=3)
    config["num_key_value_heads"] = 1
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = {k: v.astype(mx.float16) for k, v in tree_flatten(model.parameters())}
    eos = config["eos_token_id"]
    # As build_tiny_llama: a spread-out head (greedy output follows the prompt) that never says EOS.
    head = mx.random.normal(weights["lm_head.weight"].shape) * 0.5
    weights["lm_head.weight"] = (head * mx.ones((head.shape[0], 1)).at[eos].multiply(0.0)).astype(mx.float16)
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config))
    info = json.loads((out / "model_info.json").read_text())
    info.update({"llama.embedding_length": 48, "llama.block_count": layers})
    (out / "model_info.json").write_text(json.dumps(info))
    return out
