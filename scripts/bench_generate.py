#!/usr/bin/env python3
"""Prefill and decode tokens/s of a model through /api/generate next to raw MLX and llama.cpp on the same GGUF.

One run, same machine, same weights (the bundled SmolLM2-135M Q4_1 GGUF by default). Rows:
- MLX with the stored quantized weights (our load-time dtypes: float32 scales on the CPU),
- MLX with the quantized layers dequantized to float32 at load (what the server does on the
  CPU backend when the model fits MLXOLLAMA_CPU_DENSE, engine/cpu_dense.py),
- our server's /api/generate with its automatic choice, plus /api/chat time to first token of the
  longest prompt (Open WebUI's first turn; the goal is < 60 s at 4,096 tokens),
- llama.cpp on the GGUF the model was imported from, through llama-cpp-python built once into
  .cache/bench-llama-cpp (pip compiles it: a C compiler, cmake and several minutes), 1 and 2 threads.

MLX rows run in child processes so each sees its own BLAS: the OpenBLAS that scripts/_setup.sh
preloads (--blas setup, default), MLX's bundled reference BLAS (--blas none) or both. Stored
quantized MLX prefills ~10 tok/s on a small CPU, so it runs only up to --quantized-max tokens
(default 512; a 4,096-token prompt costs it ~7 min per run) and the output says what it skipped.

    .venv/bin/python scripts/bench_generate.py [--prompt-tokens 64,512,4096] [--runs 2]
        [--quantized-max 512] [--openblas-threads 1,2] [--llama-cpp auto|none|PYTHON] [--speculative]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
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
QUANTIZED = "MLX stored quantized"
DENSE = "MLX dense float32"
SERVER = "mlxollama /api/generate (auto)"
LLAMA = "llama.cpp"
TTFT_GOAL_S = 60.0

# llama-cpp-python, pinned so a cached build matches what the figures were made with. Built without
# -march=native: on CPUs that advertise AMX, native builds use AMX tiles, and where the hypervisor does
# not grant them (this machine's VM) the first batched prompt dies with SIGSEGV on `ldtilecfg` in
# ggml_backend_amx_mul_mat. AVX-512 is switched on explicitly where the CPU has it.
LLAMA_CPP_VERSION = "0.3.36"
LLAMA_CPP_VENV = ROOT / ".cache" / "bench-llama-cpp" / "venv"


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


def chat_ttft(url: str, model: str, text: str) -> tuple[float, int]:
    """Seconds to the first streamed /api/chat chunk for a fresh prompt (Open WebUI's first turn), and
    the prompt's token count from the final chunk."""
    body = {
        "model": model,
        "stream": True,
        "keep_alive": -1,
        "messages": [{"role": "user", "content": text}],
        "options": {"temperature": 0, "num_predict": 4, "num_ctx": 8192},
    }
    start = time.perf_counter()
    first = float("nan")
    prompt_tokens = 0
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=3600) as r:
        for line in r.iter_lines():
            if not line:
                continue
            chunk = json.loads(line)
            if first != first and (chunk.get("message", {}).get("content") or chunk.get("done")):
                first = time.perf_counter() - start
            prompt_tokens = chunk.get("prompt_eval_count", prompt_tokens)
    return first, prompt_tokens


LLAMA_CPP_CHILD = r"""
import json, statistics, sys, time
from llama_cpp import Llama
gguf, threads, decode, runs, texts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
# n_threads_batch too: llama-cpp-python otherwise prefills on every core whatever n_threads says
llm = Llama(gguf, n_ctx=max(4096, max(map(int, texts)) + decode + 64), n_threads=threads, n_threads_batch=threads,
            n_batch=512, verbose=False)
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


def clean_env() -> dict[str, str]:
    """This process's environment without the OpenBLAS preload scripts/_setup.sh may have exported:
    each child gets the BLAS its row names, and llama.cpp none of ours."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_NUM_THREADS")}


def bench_llama_cpp(python: str, gguf: Path, threads: int, texts: dict[int, str], decode: int, runs: int):
    r = subprocess.run(
        [python, "-c", LLAMA_CPP_CHILD, str(gguf), str(threads), str(decode), str(runs), json.dumps(texts)],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    if r.returncode:
        print(f"llama.cpp run failed (exit {r.returncode}):\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    return {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def llama_cpp_cmake_args() -> str:
    """A portable build (no -march=native, hence no AMX) with this CPU's AVX-512 kernels; no OpenMP and no
    BLAS, so the build needs nothing beyond a compiler and cmake."""
    if os.environ.get("CMAKE_ARGS"):
        return os.environ["CMAKE_ARGS"]
    args = ["-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF", "-DGGML_BLAS=OFF"]
    flags = cpu_flags()
    if "avx512f" in flags:
        args.append("-DGGML_AVX512=ON")
        for flag, option in (("avx512vbmi", "VBMI"), ("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16")):
            if flag in flags:
                args.append(f"-DGGML_AVX512_{option}=ON")
    return " ".join(args)


def llama_cpp_python(choice: str) -> str | None:
    """The Python to run llama.cpp with; `auto`: a venv under .cache/ (git-ignored), built once per
    version and CMAKE_ARGS. pip's wheel cache is bypassed: it would hand back a wheel built with other
    flags (the earlier native AMX build) for the same version."""
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    python = LLAMA_CPP_VENV / "bin" / "python"
    stamp = LLAMA_CPP_VENV / ".mlxollama-bench-build"
    key = f"llama-cpp-python=={LLAMA_CPP_VERSION} CMAKE_ARGS={llama_cpp_cmake_args()}"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == key:
        return str(python)
    print(f"building {key} into {LLAMA_CPP_VENV.relative_to(ROOT)} (several minutes) ...", flush=True)
    env = {**clean_env(), "CMAKE_ARGS": llama_cpp_cmake_args()}
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(LLAMA_CPP_VENV)], check=True, env=env)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir"]
    r = subprocess.run([*pip, f"llama-cpp-python=={LLAMA_CPP_VERSION}"], env=env)
    if r.returncode:
        print("llama-cpp-python did not build; llama.cpp rows skipped", file=sys.stderr)
        return None
    stamp.write_text(key + "\n")
    return str(python)


def setup_blas_env(threads: str | None) -> dict[str, str]:
    """LD_PRELOAD and OPENBLAS_NUM_THREADS as scripts/_setup.sh chooses them (system or shipped OpenBLAS);
    `threads` overrides the thread count the way a user would, through the environment."""
    env = {**clean_env(), **({"OPENBLAS_NUM_THREADS": threads} if threads else {})}
    r = subprocess.run(
        [
            "bash",
            "-c",
            'source scripts/_setup.sh >/dev/null 2>&1; echo "${LD_PRELOAD:-}"; echo "${OPENBLAS_NUM_THREADS:-}"',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    preload, n = (r.stdout.splitlines() + ["", ""])[:2]
    return {"LD_PRELOAD": preload, "OPENBLAS_NUM_THREADS": n} if preload else {}


def measure(args, blas_label: str, fast_blas: bool) -> tuple[list, dict]:
    """The MLX and server rows in this process (its LD_PRELOAD decides the BLAS), and the chat TTFT.

    Stored quantized weights run only up to --quantized-max tokens, and so does everything on MLX's
    bundled BLAS: those prefill at ~10 tok/s here, minutes per long prompt."""
    import mlx.core as mx
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    models_dir = Path(args.models_dir) if args.models_dir else Config.from_env().models_dir
    store = Store(models_dir)
    spec = load_spec(store, ModelName.parse(args.model))
    model_dir = spec.materialize(models_dir.parent / "run")
    tokenizer = load_tokenizer(model_dir)
    texts = {n: prompt_text(tokenizer, n) for n in args.sizes}
    short = {n: t for n, t in texts.items() if n <= args.quantized_max}
    print(f"[{blas_label}] mlx {mx.__version__} on {mx.default_device()}", flush=True)
    rows = []
    for dense in (False, True) if args.with_quantized else (True,):
        label = DENSE if dense else QUANTIZED
        sized = texts if dense and fast_blas else short
        rows.append((f"{label} [{blas_label}]", bench_mlx(model_dir, sized, args.decode_tokens, args.runs, dense)))
        print(f"  {rows[-1][0]} done", flush=True)
    ttft = {}
    with tempfile.TemporaryDirectory() as logs:
        server = LiveServer(models_dir, Path(logs) / "server.log", env={"OLLAMA_NOPRUNE": "1"})
        try:
            sized = texts if fast_blas else short
            rows.append(
                (f"{SERVER} [{blas_label}]", bench_server(server.url, args.model, sized, args.decode_tokens, args.runs))
            )
            print(f"  {rows[-1][0]} done", flush=True)
            if sized:
                longest = max(sized)
                seconds, tokens = chat_ttft(server.url, args.model, f"Read this and wait. {texts[longest]}")
                ttft = {"size": longest, "seconds": seconds, "prompt_tokens": tokens, "blas": blas_label}
                print(f"  /api/chat time to first token, {tokens}-token prompt: {seconds:.1f} s", flush=True)
        finally:
            server.stop()
    return rows, ttft


def _fmt(by_size: dict, n: int) -> str:
    r = by_size.get(n)
    return f"{r['prefill_tps']:.1f} / {r['decode_tps']:.1f}" if r else "skipped"


def print_table(rows, sizes: list[int], quantized_max: int) -> None:
    print()
    head = " | ".join(f"{n} tok prefill / decode" for n in sizes)
    print(f"| path | {head} |")
    print("|---|" + "---|" * len(sizes))
    for label, by_size in rows:
        print(f"| {label} | " + " | ".join(_fmt(by_size, n) for n in sizes) + " |")
    skipped = sorted({n for _, by in rows for n in sizes if n not in by})
    if skipped:
        print(
            f"\nskipped: prompts of {', '.join(map(str, skipped))} tokens on stored quantized weights and on MLX's"
            f" bundled BLAS (--quantized-max {quantized_max}: ~10 tok/s prefill there, minutes per prompt;"
            " --quantized-max 4096 runs them)."
        )
    counted = {n: {by[n]["prompt_tokens"] for _, by in rows if n in by} for n in sizes}
    print(
        "\nprompt tokens as each path counted them: "
        + ", ".join("/".join(map(str, sorted(c))) for c in counted.values())
    )


def _ratio(a: dict, b: dict, n: int, key: str) -> str | None:
    if n in a and n in b and b[n][key]:
        return f"{n} tok {a[n][key] / b[n][key]:.2f}x"
    return None


def print_ratios(rows, sizes: list[int], ttfts: list[dict]) -> None:
    llamas = [(lab, by) for lab, by in rows if lab.startswith(LLAMA)]
    quantized = next(((lab, by) for lab, by in rows if lab.startswith(QUANTIZED)), None)

    def line(title: str, a: dict, b: dict, key: str) -> str:
        parts = [r for n in sizes if (r := _ratio(a, b, n, key))]
        return f"  {title}: {', '.join(parts) if parts else 'no common prompt size'}"

    print("\nratios:")
    for label, by in rows:
        if label.startswith(SERVER):
            for llabel, lby in llamas:
                print(line(f"prefill, {label} / {llabel}", by, lby, "prefill_tps"))
    if quantized:
        for label, by in rows:
            if label.startswith((DENSE, SERVER)):
                print(line(f"decode, {label} / {quantized[0]}", by, quantized[1], "decode_tps"))
    print("\ngoals (issue 16):")
    servers = [(lab, by) for lab, by in rows if lab.startswith(SERVER)]
    for label, by in servers:
        if llamas:
            verdict = []
            for n in sizes:
                peers = [lby[n]["prefill_tps"] for _, lby in llamas if n in lby]
                if n in by and peers:
                    verdict.append(f"{n} tok {'met' if by[n]['prefill_tps'] >= max(peers) else 'not met'}")
            print(f"  prefill >= llama.cpp's best thread count, {label}: {', '.join(verdict)}")
        if quantized:
            verdict = [
                f"{n} tok {'met' if by[n]['decode_tps'] >= 1.5 * quantized[1][n]['decode_tps'] else 'not met'}"
                for n in sizes
                if n in by and n in quantized[1]
            ]
            print(f"  decode >= 1.5x stored quantized MLX, {label}: {', '.join(verdict)}")
    for ttft in ttfts:
        verdict = "met" if ttft["seconds"] < TTFT_GOAL_S else "not met"
        note = "" if ttft["size"] >= 4096 else f" (the goal is for 4,096 tokens; this run's longest was {ttft['size']})"
        print(
            f"  /api/chat TTFT of a {ttft['prompt_tokens']}-token prompt [{ttft['blas']}]: {ttft['seconds']:.1f} s, "
            f"goal < {TTFT_GOAL_S:.0f} s: {verdict}{note}"
        )


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        r = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        if r.stdout.strip():
            return r.stdout.strip()
    return platform.processor() or platform.machine()


def memory_gb() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.0f} GB"
    except (ValueError, OSError, AttributeError):
        return "? GB"


def run_speculative(args, env: dict[str, str], models_dir: Path) -> None:
    """Hook for scripts/bench_speculative.py (with vs without a draft), run with the same BLAS and store."""
    script = ROOT / "scripts" / "bench_speculative.py"
    if not script.exists():
        print("\n--speculative: scripts/bench_speculative.py does not exist; skipped")
        return
    argv = [sys.executable, str(script), *shlex.split(args.speculative_args or "")]
    print(f"\n$ {shlex.join(argv[1:])}", flush=True)
    r = subprocess.run(argv, env={**env, "MLXOLLAMA_MODELS": str(models_dir)}, cwd=ROOT)
    if r.returncode:
        print(f"bench_speculative.py exited {r.returncode}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--prompt-tokens", default="64,512,4096", help="comma-separated prompt sizes")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2, help="measured runs per prompt size (median), after a warm-up")
    ap.add_argument(
        "--models-dir", default=None, help="store to use (default: MLXOLLAMA_MODELS or ~/.mlxollama/models)"
    )
    ap.add_argument(
        "--blas",
        choices=("setup", "none", "both"),
        default="setup",
        help="setup (default): the OpenBLAS scripts/_setup.sh preloads; none: MLX's bundled BLAS; both",
    )
    ap.add_argument(
        "--openblas-threads",
        default="",
        help="comma-separated OPENBLAS_NUM_THREADS values to measure the dense and server rows with "
        "(default: what scripts/_setup.sh sets, the core count unless OPENBLAS_NUM_THREADS is set)",
    )
    ap.add_argument(
        "--quantized-max",
        "--slow-max",
        dest="quantized_max",
        type=int,
        default=512,
        help="longest prompt for stored quantized MLX and the bundled-BLAS rows (default 512; 4096 adds "
        "~7 min per run on a 2-core CPU)",
    )
    ap.add_argument(
        "--llama-cpp",
        metavar="PYTHON",
        default="auto",
        help="auto (default): build llama-cpp-python into .cache/bench-llama-cpp once; none: no llama.cpp "
        "rows; or a Python that has llama_cpp",
    )
    ap.add_argument("--llama-threads", default="1,2", help="llama.cpp thread counts (prefill and decode)")
    ap.add_argument(
        "--speculative",
        action="store_true",
        help="then run scripts/bench_speculative.py (if present) with --speculative-args",
    )
    ap.add_argument("--speculative-args", default="", help="arguments for scripts/bench_speculative.py")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure here, write rows as JSON
    ap.add_argument("--no-quantized", dest="with_quantized", action="store_false", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sizes = [int(n) for n in args.prompt_tokens.split(",")]

    if args.child:
        rows, ttft = measure(args, os.environ.get("BENCH_BLAS_LABEL", "?"), bool(os.environ.get("LD_PRELOAD")))
        Path(args.child).write_text(json.dumps({"rows": rows, "ttft": ttft}))
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

    # The llama.cpp build first: its minutes of compiling must not overlap any measurement.
    llama_python = llama_cpp_python(args.llama_cpp) if source is not None else None
    if source is None and args.llama_cpp != "none":
        print(f"no llama.cpp rows: {args.model} is not a bundled GGUF model", flush=True)

    variants = []  # (label, environment) of each MLX child process
    linux = platform.system() == "Linux"
    for threads in [t for t in args.openblas_threads.split(",") if t] or [None]:
        blas_env = setup_blas_env(threads) if linux and args.blas in ("setup", "both") else {}
        if blas_env:
            label = f"OpenBLAS {Path(blas_env['LD_PRELOAD']).name}, {blas_env['OPENBLAS_NUM_THREADS']} threads"
            variants.append((label, {**clean_env(), **blas_env}))
    if args.blas in ("none", "both") or not variants:
        variants.append(("bundled BLAS" if linux else "system BLAS", clean_env()))

    import mlx.core as mx

    blas_line = "; ".join(
        f"{label}" + (f" ({env['LD_PRELOAD']})" if env.get("LD_PRELOAD") else "") for label, env in variants
    )
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {memory_gb()}, {platform.system()} {platform.machine()}; "
        f"mlx {mx.__version__} on {mx.default_device()}; BLAS for MLX: {blas_line}"
    )
    if llama_python:
        print(f"llama.cpp: llama-cpp-python {LLAMA_CPP_VERSION}, CMAKE_ARGS {llama_cpp_cmake_args()}")
    print(
        f"model: {args.model}, prompts of ~{args.prompt_tokens} tokens, {args.decode_tokens} decoded tokens, "
        f"median of {args.runs} runs after a warm-up; {load_average()}",
        flush=True,
    )

    rows, ttfts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, env) in enumerate(variants):
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
                "--quantized-max",
                str(args.quantized_max),
            ]
            # quantized matmuls never call BLAS (same figures with either): one measurement serves all
            if i:
                argv.append("--no-quantized")
            subprocess.run(argv, env={**env, "BENCH_BLAS_LABEL": label}, check=True)
            got = json.loads(out.read_text())
            rows += [(lab, {int(k): v for k, v in by.items()}) for lab, by in got["rows"]]
            if got["ttft"]:
                ttfts.append(got["ttft"])

    if llama_python:
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        tokenizer = load_tokenizer(load_spec(store, name).materialize(models_dir.parent / "run"))
        texts = {n: prompt_text(tokenizer, n) for n in args.sizes}
        gguf = package_path(source.package, source.relative_path)
        for threads in sorted({int(t) for t in args.llama_threads.split(",")}):
            got = bench_llama_cpp(llama_python, gguf, threads, texts, args.decode_tokens, args.runs)
            if got:
                rows.append((f"{LLAMA} (llama-cpp-python, {threads} thread{'s' * (threads > 1)})", got))
            print(f"  llama.cpp, {threads} thread(s) done", flush=True)

    print_table(rows, args.sizes, args.quantized_max)
    print_ratios(rows, args.sizes, ttfts)
    print(f"\nat the end: {load_average()}", flush=True)
    if args.speculative:
        run_speculative(args, variants[0][1], models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
