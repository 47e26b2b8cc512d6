#!/usr/bin/env python3
"""Decode speed of one model served by 1 process and by a 2-process group (tensor and pipeline
parallel over MLX's ring backend on loopback), and the bytes the group exchanges per decoded token.

On one machine both ranks share its cores and memory bandwidth, so the 2-process figures show
the cost of lockstep and of the collectives, not a speed-up: that needs two Macs, each with its
own GPU and memory (README "Several Macs, one model").

Bytes per token: what rank 0 puts into its control all_sums (measured: the server logs it when
the model unloads), the sampled token's all_sum (4 bytes a sequence), and the model's own
collectives, estimated from its shapes: tensor parallel all_sums the hidden state twice a layer
(after attention and after the MLP); pipeline parallel sends it once between stages and
all_gathers the last one to every rank. A ring all_sum of B bytes moves about 2(n-1)/n * B bytes
out of each rank.

    .venv/bin/python scripts/bench_distributed.py [--tokens 64] [--model smollm2:135m]

Without --model it builds a random llama (hidden 512, 8 layers, 8 heads) in a temporary store.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlxollama.store import Store  # noqa: E402
from tests.support.distserver import GroupServer  # noqa: E402
from tests.support.liveserver import LiveServer  # noqa: E402
from tests.support.store import package_tiny  # noqa: E402
from tests.support.tinymodels import build_tiny_llama  # noqa: E402

PROMPT = "Why is the sky blue? Explain it step by step."
BENCH = "bench:latest"


def build_model(tmp: Path, store: Store) -> tuple[str, dict]:
    """A random llama big enough for decode to take measurable time on a CPU."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out = build_tiny_llama(tmp / "bench")
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8)
    config["num_key_value_heads"] = 4
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = {k: v.astype(mx.float16) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config))
    info = json.loads((out / "model_info.json").read_text())
    info.update({"llama.embedding_length": 512, "llama.block_count": 8})
    (out / "model_info.json").write_text(json.dumps(info))
    package_tiny(store, BENCH, out)
    return BENCH, config


def model_config(store: Store, name: str) -> dict:
    from mlxollama.store import ModelName

    stored = store.get_manifest(ModelName.parse(name))
    for layer in stored.manifest.layers:
        if layer.name == "config.json":
            return json.loads(store.blob_path(layer.digest).read_text())
    raise SystemExit(f"{name} has no config.json")


def decode_rate(url: str, model: str, tokens: int) -> tuple[float, int]:
    body = {"model": model, "prompt": PROMPT, "stream": False, "options": {"temperature": 0, "num_predict": tokens}}
    with httpx.Client(base_url=url, timeout=600) as c:
        c.post("/api/generate", json=dict(body, options={"num_predict": 2}))  # load and warm up
        r = c.post("/api/generate", json=body).json()
        c.post("/api/generate", json={"model": model, "keep_alive": 0})  # unload: the group logs its bytes
    return r["eval_count"] / (r["eval_duration"] / 1e9), r["eval_count"]


def model_bytes_per_token(config: dict, mode: str, ranks: int = 2, itemsize: int = 4) -> int:
    """Bytes each rank sends per decoded token in the model's own collectives (float32 on the CPU)."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    ring = 2 * (ranks - 1) / ranks  # all_sum over a ring
    if mode == "tensor":
        return int(2 * layers * hidden * itemsize * ring)
    # one hand-over between stages, then an all_gather of the final hidden state
    return int(hidden * itemsize + hidden * itemsize * (ranks - 1))


def control_bytes(log_dir: Path) -> tuple[int, int] | None:
    text = (log_dir / "rank0.log").read_text(errors="replace")
    found = re.findall(r"control messages: (\d+) bytes over (\d+) batch steps \((\d+) decoded tokens\)", text)
    if not found:
        return None
    sent, _steps, decoded = map(int, found[-1])
    return sent, decoded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--model", help="a model already in MLXOLLAMA_MODELS-style store given by --store")
    ap.add_argument("--store", help="models folder holding --model")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.model:
            models = Path(args.store).expanduser() if args.store else Path.home() / ".mlxollama" / "models"
            store = Store(models)
            model, config = args.model, model_config(store, args.model)
        else:
            models = tmp / "models"
            store = Store(models)
            model, config = build_model(tmp, store)
        rows = []
        single = LiveServer(models, tmp / "single.log")
        try:
            rate, n = decode_rate(single.url, model, args.tokens)
        finally:
            single.stop()
        rows.append(("1 process", rate, n, None, 0))
        env = {"MLXOLLAMA_DISTRIBUTED_MIN_SIZE": "0"}
        for mode in ("tensor", "pipeline"):
            log_dir = tmp / mode
            group = GroupServer(models, log_dir, env=dict(env, MLXOLLAMA_DISTRIBUTED=mode))
            try:
                rate, n = decode_rate(group.url, model, args.tokens)
            finally:
                group.stop()
            rows.append((f"2 processes, {mode}", rate, n, control_bytes(log_dir), model_bytes_per_token(config, mode)))

    print(f"model {model}: hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, greedy decode")
    print(f"{'setup':<24} {'tokens/s':>9} {'tokens':>7} {'control B/tok':>14} {'token B/tok':>12} {'model B/tok':>12}")
    for name, rate, n, control, model_b in rows:
        per_control = f"{control[0] / max(control[1], 1):.0f}" if control else "-"
        token_b = "4" if control else "-"
        print(f"{name:<24} {rate:>9.1f} {n:>7} {per_control:>14} {token_b:>12} {model_b or '-':>12}")
    print(
        "\nBoth ranks share this machine's cores: the 2-process rows measure lockstep and collective\n"
        "overhead, not a speed-up. Control bytes include the warm-up request and the prompt's tokens;\n"
        "model bytes are estimated from the shapes (float32 on the CPU backend, float16 on a Mac's GPU)."
    )


if __name__ == "__main__":
    main()
