#!/usr/bin/env python3
"""Decode and prefill tokens/s of a model through /api/generate next to raw mlx_lm.stream_generate.

Both run in the same invocation on the same machine and the same stored model, so the ratio is
the server's overhead. Usage (after ./scripts/serve has imported the defaults once):

    .venv/bin/python scripts/bench_generate.py [--model smollm2:135m] [--prompt-tokens 64] [--decode-tokens 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlxollama.config import Config  # noqa: E402
from mlxollama.convert.bundled import BUNDLED, import_source  # noqa: E402
from mlxollama.engine.catalog import load_spec  # noqa: E402
from mlxollama.store import ModelName, Store  # noqa: E402
from tests.liveserver import LiveServer  # noqa: E402


def prompt_text(tokenizer, n_tokens: int) -> str:
    words = ("the quick brown fox jumps over the lazy dog while the sky stays blue and calm " * 200).split()
    text = ""
    for w in words:
        candidate = (text + " " + w).strip()
        if len(tokenizer.encode(candidate, add_special_tokens=False)) > n_tokens:
            break
        text = candidate
    return text


def bench_raw(model_dir: Path, text: str, decode: int, runs: int, apply_policy: bool) -> dict:
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    from mlxollama.engine.llm import apply_backend_dtype

    model, tokenizer = load(str(model_dir))
    if apply_policy:
        apply_backend_dtype(model)
        mx.eval(model.parameters())
    prefill, dec = [], []
    for i in range(runs + 1):
        last = None
        tokens = tokenizer.encode(f"Run {i}. {text}", add_special_tokens=False)
        for resp in stream_generate(model, tokenizer, mx.array(tokens), max_tokens=decode, sampler=make_sampler(0.0)):
            last = resp
        if i == 0:
            continue  # warm-up: kernels compiled, caches primed
        prefill.append(last.prompt_tps)
        dec.append(last.generation_tps)
    return {"prompt_tokens": len(tokens), "prefill_tps": statistics.median(prefill), "decode_tps": statistics.median(dec)}


def bench_server(url: str, model: str, text: str, decode: int, runs: int) -> dict:
    prefill, dec, counts = [], [], []
    with httpx.Client(timeout=600) as c:
        for i in range(runs + 1):
            # a different start each run, so the prompt cache cannot serve it
            body = {"model": model, "prompt": f"Run {i}. {text}", "raw": True, "stream": True, "keep_alive": -1,
                    "options": {"temperature": 0, "num_predict": decode, "repeat_penalty": 1.0}}
            final = None
            with c.stream("POST", url + "/api/generate", json=body) as r:
                for line in r.iter_lines():
                    if line:
                        final = json.loads(line)
            if i == 0:
                continue
            prefill.append(final["prompt_eval_count"] / final["prompt_eval_duration"] * 1e9)
            # same definition as mlx-lm: tokens / time after the first token
            dec.append(final["eval_count"] / final["eval_duration"] * 1e9)
            counts.append(final["eval_count"])
    return {"prompt_tokens": final["prompt_eval_count"], "prefill_tps": statistics.median(prefill),
            "decode_tps": statistics.median(dec), "eval_count": counts[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models-dir", default=None, help="store to use (default: MLXOLLAMA_MODELS or ~/.mlxollama/models)")
    args = ap.parse_args()

    import mlx.core as mx

    models_dir = Path(args.models_dir) if args.models_dir else Config.from_env().models_dir
    store = Store(models_dir)
    name = ModelName.parse(args.model)
    if store.resolve(name) is None:
        source = next((s for s in BUNDLED if ModelName.parse(s.name) == name), None)
        if source is None:
            print(f"model {args.model} is not in {models_dir}", file=sys.stderr)
            return 1
        print(f"importing {args.model} ...", flush=True)
        import_source(store, source)
    spec = load_spec(store, name)
    model_dir = spec.materialize(models_dir.parent / "run")

    from mlx_lm.tokenizer_utils import load as load_tokenizer

    text = prompt_text(load_tokenizer(model_dir), args.prompt_tokens)
    device = str(mx.default_device())
    print(f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, mlx {mx.__version__} on {device}")
    print(f"model: {args.model}, prompt ~{args.prompt_tokens} tokens, {args.decode_tokens} decoded tokens, "
          f"median of {args.runs} runs after a warm-up", flush=True)

    raw = bench_raw(model_dir, text, args.decode_tokens, args.runs, apply_policy=True)
    raw_stock = bench_raw(model_dir, text, args.decode_tokens, args.runs, apply_policy=False)
    with tempfile.TemporaryDirectory() as logs:
        server = LiveServer(models_dir, Path(logs) / "server.log", env={"OLLAMA_NOPRUNE": "1"})
        try:
            srv = bench_server(server.url, args.model, text, args.decode_tokens, args.runs)
        finally:
            server.stop()

    rows = [
        ("mlx_lm.stream_generate (our load-time dtypes)", raw),
        ("mlx_lm.stream_generate (stock mlx_lm.load)", raw_stock),
        ("mlxollama /api/generate", srv),
    ]
    print()
    print(f"{'path':<48} {'prompt tok':>10} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for label, r in rows:
        print(f"{label:<48} {r['prompt_tokens']:>10} {r['prefill_tps']:>14.1f} {r['decode_tps']:>13.1f}")
    print()
    print(f"server / raw (same dtypes): prefill {srv['prefill_tps'] / raw['prefill_tps']:.3f}, "
          f"decode {srv['decode_tps'] / raw['decode_tps']:.3f}")
    print(f"load-time dtype policy vs stock load: prefill {raw['prefill_tps'] / raw_stock['prefill_tps']:.2f}x, "
          f"decode {raw['decode_tps'] / raw_stock['decode_tps']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
