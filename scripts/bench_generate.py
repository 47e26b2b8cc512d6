#!/usr/bin/env python3
"""Prefill and decode tokens/s of a model through /api/generate next to raw MLX on the same weights.

One run, same machine, same stored model. Rows:
- MLX with the stored quantized weights (our load-time dtypes: float32 scales on the CPU),
- MLX with the quantized layers dequantized to float32 at load (what the server does on the
  CPU backend when the model fits MLXOLLAMA_CPU_DENSE, engine/cpu_dense.py),
- our server's /api/generate with its automatic choice,
- optionally llama.cpp on the GGUF the model came from (--llama-cpp, through llama-cpp-python).

With --blas both (Linux) the MLX and server rows are measured twice in child processes: with the
OpenBLAS that scripts/_setup.sh preloads and with MLX's bundled reference BLAS. Usage:

    .venv/bin/python scripts/bench_generate.py [--model smollm2:135m] [--prompt-tokens 64,512]
        [--decode-tokens 64] [--runs 3] [--blas setup|none|both] [--llama-cpp PYTHON]
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
from mlxollama.convert.bundled import BUNDLED, import_source, package_path  # noqa: E402
from mlxollama.engine.catalog import load_spec  # noqa: E402
from mlxollama.store import ModelName, Store  # noqa: E402
from tests.support.liveserver import LiveServer  # noqa: E402

WORDS = ("the quick brown fox jumps over the lazy dog while the sky stays blue and calm " * 2000).split()


def prompt_text(tokenizer, n_tokens: int) -> str:
    """Whole words up to n_tokens (a bisection: encoding grows with the text)."""
    lo, hi = 0, min(len(WORDS), n_tokens)  # a word is at least one token
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode(" ".join(WORDS[:mid]), add_special_tokens=False)) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(WORDS[:lo])


def _median_rates(samples: list[tuple[float, float]], prompt_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "prefill_tps": statistics.median(p for p, _ in samples),
        "decode_tps": statistics.median(d for _, d in samples),
    }


def bench_mlx(model_dir: Path, texts: dict[int, str], decode: int, runs: int, dense: bool) -> dict[int, dict]:
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    from mlxollama.engine.cpu_dense import densify
    from mlxollama.engine.llm import apply_backend_dtype

    model, tokenizer = load(str(model_dir))
    apply_backend_dtype(model)
    if dense:
        densify(model)
    mx.eval(model.parameters())
    out = {}
    for size, text in texts.items():
        samples = []
        for i in range(runs + 1):
            tokens = tokenizer.encode(f"Run {i}. {text}", add_special_tokens=False)
            for last in stream_generate(
                model, tokenizer, mx.array(tokens), max_tokens=decode, sampler=make_sampler(0.0)
            ):
                pass
            if i:  # the first run is a warm-up: kernels compiled, caches primed
                samples.append((last.prompt_tps, last.generation_tps))
        out[size] = _median_rates(samples, len(tokens))
    return out


def bench_server(url: str, model: str, texts: dict[int, str], decode: int, runs: int) -> dict[int, dict]:
    out = {}
    with httpx.Client(timeout=3600) as c:
        for size, text in texts.items():
            samples = []
            for i in range(runs + 1):
                # a different start each run, so the prompt cache cannot serve it
                body = {
                    "model": model,
                    "prompt": f"Run {i}. {text}",
                    "raw": True,
                    "stream": False,
                    "keep_alive": -1,
                    "options": {
                        "temperature": 0,
                        "num_predict": decode,
                        "repeat_penalty": 1.0,
                        "num_ctx": max(4096, size + decode + 64),
                    },
                }
                final = c.post(url + "/api/generate", json=body).raise_for_status().json()
                if i:
                    # decode as mlx-lm counts it: tokens over the time after the first token
                    samples.append(
                        (
                            final["prompt_eval_count"] / final["prompt_eval_duration"] * 1e9,
                            final["eval_count"] / final["eval_duration"] * 1e9,
                        )
                    )
            out[size] = _median_rates(samples, final["prompt_eval_count"])
    return out


def chat_ttft(url: str, model: str, text: str) -> float:
    """Seconds to the first streamed /api/chat chunk for a fresh prompt (Open WebUI's first turn)."""
    body = {
        "model": model,
        "stream": True,
        "keep_alive": -1,
        "messages": [{"role": "user", "content": text}],
        "options": {"temperature": 0, "num_predict": 4, "num_ctx": 8192},
    }
    start = time.perf_counter()
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=3600) as r:
        for line in r.iter_lines():
            if line and json.loads(line).get("message", {}).get("content"):
                return time.perf_counter() - start
    return float("nan")


LLAMA_CPP_CHILD = r"""
import json, statistics, sys, time
from llama_cpp import Llama
gguf, threads, decode, runs, texts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
llm = Llama(gguf, n_ctx=max(4096, max(map(int, texts)) + decode + 64), n_threads=threads, n_batch=512, verbose=False)
out = {}
for size, text in texts.items():
    samples = []
    for i in range(runs + 1):
        llm.reset()
        tokens = llm.tokenize(f"Run {i}. {text}".encode(), add_bos=False)
        t0 = time.perf_counter(); llm.eval(tokens); t1 = time.perf_counter()
        for _ in range(decode):
            llm.eval([llm.sample(temp=0.0)])
        t2 = time.perf_counter()
        if i:
            samples.append((len(tokens) / (t1 - t0), decode / (t2 - t1)))
    out[size] = {"prompt_tokens": len(tokens), "prefill_tps": statistics.median(p for p, _ in samples),
                 "decode_tps": statistics.median(d for _, d in samples)}
print(json.dumps(out))
"""


def bench_llama_cpp(python: str, gguf: Path, threads: int, texts: dict[int, str], decode: int, runs: int):
    r = subprocess.run(
        [python, "-c", LLAMA_CPP_CHILD, str(gguf), str(threads), str(decode), str(runs), json.dumps(texts)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        print(f"llama.cpp run failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    return {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def llama_cpp_python(choice: str) -> str:
    """The Python to run llama.cpp with; `auto`: its own venv, kept apart from ours."""
    if choice != "auto":
        return choice
    venv = ROOT / ".venv" / "bench-llama-cpp"
    python = venv / "bin" / "python"
    if (
        subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True).returncode
        if python.exists()
        else True
    ):
        print("building llama-cpp-python into .venv/bench-llama-cpp ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # A portable AVX2 build: the native one picked AMX here, whose batched prompt kernels crash
        # (SIGSEGV) in a VM that does not grant AMX.
        env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", "-DGGML_NATIVE=OFF")}
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "llama-cpp-python"], check=True, env=env)
    return str(python)


def setup_blas_env() -> dict[str, str]:
    """LD_PRELOAD and OPENBLAS_NUM_THREADS as scripts/_setup.sh chooses them (system or shipped OpenBLAS)."""
    r = subprocess.run(
        [
            "bash",
            "-c",
            'source scripts/_setup.sh >/dev/null 2>&1; echo "${LD_PRELOAD:-}"; echo "${OPENBLAS_NUM_THREADS:-}"',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "LD_PRELOAD": ""},
    )
    preload, threads = (r.stdout.splitlines() + ["", ""])[:2]
    return {"LD_PRELOAD": preload, "OPENBLAS_NUM_THREADS": threads} if preload else {}


def measure(args, blas_label: str, fast_blas: bool) -> list[tuple[str, dict[int, dict]]]:
    """Every MLX and server row in this process (its LD_PRELOAD decides the BLAS).

    Prompts longer than --slow-max run only where prefill is fast (dense weights with OpenBLAS):
    the others take minutes per prompt on a small CPU."""
    import mlx.core as mx
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    models_dir = Path(args.models_dir) if args.models_dir else Config.from_env().models_dir
    store = Store(models_dir)
    spec = load_spec(store, ModelName.parse(args.model))
    model_dir = spec.materialize(models_dir.parent / "run")
    tokenizer = load_tokenizer(model_dir)
    texts = {n: prompt_text(tokenizer, n) for n in args.sizes}
    short = {n: t for n, t in texts.items() if n <= args.slow_max}
    print(f"[{blas_label}] mlx {mx.__version__} on {mx.default_device()}", flush=True)
    rows = []
    for dense in (False, True):
        label = "MLX dense float32 (BLAS)" if dense else "MLX stored quantized"
        sized = texts if dense and fast_blas else short
        rows.append((f"{label} [{blas_label}]", bench_mlx(model_dir, sized, args.decode_tokens, args.runs, dense)))
        print(f"  {rows[-1][0]} done", flush=True)
    with tempfile.TemporaryDirectory() as logs:
        server = LiveServer(models_dir, Path(logs) / "server.log", env={"OLLAMA_NOPRUNE": "1"})
        try:
            rows.append(
                (
                    f"mlxollama /api/generate (auto) [{blas_label}]",
                    bench_server(server.url, args.model, texts if fast_blas else short, args.decode_tokens, args.runs),
                )
            )
            longest = max(texts if fast_blas else short)
            ttft = chat_ttft(server.url, args.model, f"Read this and wait. {texts[longest]}")
            print(f"  /api/chat time to first token, {longest}-token message, fresh prompt: {ttft:.1f} s", flush=True)
        finally:
            server.stop()
    return rows


def print_table(rows, sizes: list[int]) -> None:
    print()
    print(f"{'path':<72} {'prompt tok':>10} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for label, by_size in rows:
        for n in sizes:
            if n in by_size:
                r = by_size[n]
                print(f"{label:<72} {r['prompt_tokens']:>10} {r['prefill_tps']:>14.1f} {r['decode_tps']:>13.1f}")
    print()
    base_label, base = rows[0]
    print(f"ratios to {base_label} (prefill, decode):")
    for label, by_size in rows[1:]:
        ratios = ", ".join(
            f"{n} tok {by_size[n]['prefill_tps'] / base[n]['prefill_tps']:.2f}x "
            f"{by_size[n]['decode_tps'] / base[n]['decode_tps']:.2f}x"
            for n in sizes
            if n in by_size and n in base
        )
        print(f"  {label}: {ratios}")


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--prompt-tokens", default="64", help="comma-separated prompt sizes, e.g. 64,512,4096")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--models-dir", default=None, help="store to use (default: MLXOLLAMA_MODELS or ~/.mlxollama/models)"
    )
    ap.add_argument(
        "--blas",
        choices=("setup", "none", "both"),
        default="both",
        help="setup: the OpenBLAS scripts/_setup.sh preloads; none: MLX's bundled BLAS; both (default)",
    )
    ap.add_argument(
        "--llama-cpp",
        metavar="PYTHON",
        nargs="?",
        const="auto",
        help="adds llama.cpp rows: a Python with llama-cpp-python, or none to build it into "
        ".venv/bench-llama-cpp (pip compiles it: a C compiler and several minutes)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads")
    ap.add_argument(
        "--slow-max",
        type=int,
        default=512,
        help="longer prompts only where prefill is fast (dense weights with OpenBLAS)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure here, write rows as JSON
    args = ap.parse_args()
    args.sizes = [int(n) for n in args.prompt_tokens.split(",")]

    if args.child:
        rows = measure(args, os.environ.get("BENCH_BLAS_LABEL", "?"), bool(os.environ.get("LD_PRELOAD")))
        Path(args.child).write_text(json.dumps(rows))
        return 0

    models_dir = Path(args.models_dir) if args.models_dir else Config.from_env().models_dir
    store = Store(models_dir)
    name = ModelName.parse(args.model)
    source = next((s for s in BUNDLED if ModelName.parse(s.name) == name), None)
    if store.resolve(name) is None:
        if source is None:
            print(f"model {args.model} is not in {models_dir}", file=sys.stderr)
            return 1
        print(f"importing {args.model} ...", flush=True)
        import_source(store, source)

    import mlx.core as mx

    print(
        f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, {platform.processor() or ''}"
        f" mlx {mx.__version__} on {mx.default_device()}"
    )
    print(
        f"model: {args.model}, prompts of ~{args.prompt_tokens} tokens, {args.decode_tokens} decoded tokens, "
        f"median of {args.runs} runs after a warm-up; {load_average()}",
        flush=True,
    )

    base_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_NUM_THREADS")}
    blas_env = setup_blas_env() if platform.system() == "Linux" else {}
    variants = []
    if args.blas in ("setup", "both"):
        label = (
            f"OpenBLAS {Path(blas_env['LD_PRELOAD']).name}, {blas_env['OPENBLAS_NUM_THREADS']} threads"
            if blas_env
            else "no OpenBLAS"
        )
        variants.append((label, {**base_env, **blas_env}))
    if args.blas in ("none", "both") and (blas_env or args.blas == "none"):
        variants.append(("bundled BLAS", base_env))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, env in variants:
            out = Path(tmp) / "rows.json"
            argv = [
                sys.executable,
                __file__,
                "--child",
                str(out),
                "--model",
                args.model,
                "--prompt-tokens",
                args.prompt_tokens,
                "--decode-tokens",
                str(args.decode_tokens),
                "--runs",
                str(args.runs),
                "--models-dir",
                str(models_dir),
                "--slow-max",
                str(args.slow_max),
            ]
            subprocess.run(argv, env={**env, "BENCH_BLAS_LABEL": label}, check=True)
            rows += [(lab, {int(k): v for k, v in by.items()}) for lab, by in json.loads(out.read_text())]

    if args.llama_cpp and source is not None:
        args.llama_cpp = llama_cpp_python(args.llama_cpp)
        gguf = package_path(source.package, source.relative_path)
        for threads in sorted({1, args.threads}):
            from mlx_lm.tokenizer_utils import load as load_tokenizer

            tokenizer = load_tokenizer(load_spec(store, name).materialize(models_dir.parent / "run"))
            texts = {n: prompt_text(tokenizer, n) for n in args.sizes}
            got = bench_llama_cpp(args.llama_cpp, gguf, threads, texts, args.decode_tokens, args.runs)
            if got:
                rows.append((f"llama.cpp (llama-cpp-python, {threads} thread{'s' * (threads > 1)})", got))

    print_table(rows, args.sizes)
    print(f"\nat the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
