#!/usr/bin/env python3
"""Serving benchmark: batching, prompt cache and event-loop latency, next to mlx_lm.server.

One run, one machine, one model. Prints a table and the ratios for:
  1. single-stream decode tokens/s through /api/generate vs raw mlx_lm.stream_generate in-process;
  2. aggregate decode tokens/s with N concurrent streams vs the same N requests one after another,
     and vs mlx_lm.server (started here on another loopback port) under the same load via /v1;
  3. time to first token of a chat's second turn after a long history, cold vs warm prompt cache;
  4. p50/p99 latency of GET /api/tags while 8 generations run.

    .venv/bin/python scripts/bench_serving.py [--model smollm2:135m] [--streams 1,4,8,16] [--tokens 32]
        [--history-tokens 1000]

The same script runs on Apple Silicon and on NVIDIA (mlx[cuda13]) unchanged.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_generate import bench_mlx, prompt_text  # noqa: E402

from mlxollama.config import Config  # noqa: E402
from mlxollama.convert.bundled import BUNDLED, import_source  # noqa: E402
from mlxollama.engine.catalog import load_spec  # noqa: E402
from mlxollama.store import ModelName, Store  # noqa: E402
from tests.support.liveserver import LiveServer, free_port  # noqa: E402

WORDS = [
    "cats",
    "the sea",
    "rivers",
    "mountains",
    "jazz",
    "bread",
    "stars",
    "trains",
    "forests",
    "bees",
    "clocks",
    "maps",
    "glass",
    "salt",
    "wind",
    "paper",
]


def ours_request(url: str, model: str, i: int, tokens: int) -> tuple[int, float]:
    body = {
        "model": model,
        "prompt": f"Write about {WORDS[i % len(WORDS)]}.",
        "stream": False,
        "options": {"temperature": 0, "num_predict": tokens, "repeat_penalty": 1.0},
    }
    r = httpx.post(url + "/api/generate", json=body, timeout=3600).json()
    return r["eval_count"], 0.0


def mlx_server_request(url: str, model: str, i: int, tokens: int) -> tuple[int, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Write about {WORDS[i % len(WORDS)]}."}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=3600).json()
    return r["usage"]["completion_tokens"], 0.0


def aggregate(send, n: int, sequential: bool) -> float:
    t = time.perf_counter()
    if sequential:
        total = sum(send(i)[0] for i in range(n))
    else:
        with cf.ThreadPoolExecutor(n) as pool:
            total = sum(r[0] for r in pool.map(send, range(n)))
    return total / (time.perf_counter() - t)


def ttft(url: str, model: str, messages: list[dict]) -> float:
    body = {
        "model": model,
        "messages": messages,
        "stream": True,
        "options": {"temperature": 0, "num_predict": 1, "num_ctx": 8192},
    }
    t = time.perf_counter()
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=3600) as r:
        for line in r.iter_lines():
            if line:
                return time.perf_counter() - t
    return float("nan")


def long_history(tokenizer, n_tokens: int) -> list[dict]:
    text = prompt_text(tokenizer, max(n_tokens // 4, 8))
    return [{"role": "system", "content": "You are a helpful assistant."}] + [
        m
        for i in range(4)
        for m in (
            {"role": "user", "content": f"Part {i}: {text}"},
            {"role": "assistant", "content": f"Noted part {i}."},
        )
    ]


def tags_latency(url: str, model: str, tokens: int) -> tuple[float, float]:
    stop = threading.Event()
    samples = []

    def load():
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: ours_request(url, model, i, tokens), range(8)))
        stop.set()

    worker = threading.Thread(target=load)
    worker.start()
    with httpx.Client(timeout=60) as c:
        time.sleep(0.5)
        while not stop.is_set():
            t = time.perf_counter()
            c.get(url + "/api/tags")
            samples.append(time.perf_counter() - t)
            time.sleep(0.05)
    worker.join()
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(0.99 * (len(samples) - 1))] * 1000


def start_mlx_server(model_dir: Path, port: int, concurrency: int, log) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlx_lm.server",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--decode-concurrency",
            str(concurrency),
            "--prompt-concurrency",
            str(min(concurrency, 8)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("mlx_lm.server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=32, help="decoded tokens per request")
    ap.add_argument("--history-tokens", type=int, default=1000)
    ap.add_argument("--skip-mlx-server", action="store_true")
    args = ap.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    max_streams = max(streams)

    import mlx.core as mx
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    models_dir = Config.from_env().models_dir
    store = Store(models_dir)
    name = ModelName.parse(args.model)
    if store.resolve(name) is None:
        source = next((s for s in BUNDLED if ModelName.parse(s.name) == name), None)
        if source is None:
            print(f"model {args.model} is not in {models_dir}", file=sys.stderr)
            return 1
        import_source(store, source)
    model_dir = load_spec(store, name).materialize(models_dir.parent / "run")
    tokenizer = load_tokenizer(model_dir)
    print(
        f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, mlx {mx.__version__} "
        f"on {mx.default_device()}; model {args.model}; {args.tokens} tokens per request",
        flush=True,
    )

    results: dict[str, float] = {}
    # Raw mlx-lm with the weights the server's automatic choice gives a small model on this backend.
    from mlxollama.engine.cpu_dense import fast_blas_loaded

    dense = mx.default_device() == mx.cpu and fast_blas_loaded()
    raw = bench_mlx(model_dir, {16: prompt_text(tokenizer, 16)}, args.tokens, 2, dense=dense)[16]
    results["raw decode tok/s"] = raw["decode_tps"]
    with tempfile.TemporaryDirectory() as logs:
        server = LiveServer(
            models_dir, Path(logs) / "ours.log", env={"OLLAMA_NUM_PARALLEL": str(max_streams), "OLLAMA_NOPRUNE": "1"}
        )
        try:
            url = server.url
            ours_request(url, args.model, 0, 4)  # load + warm-up
            body = {
                "model": args.model,
                "prompt": prompt_text(tokenizer, 16),
                "raw": True,
                "stream": False,
                "options": {"temperature": 0, "num_predict": args.tokens, "repeat_penalty": 1.0},
            }
            single = [httpx.post(url + "/api/generate", json=body, timeout=3600).json() for _ in range(2)]
            results["server decode tok/s"] = statistics.median(
                s["eval_count"] / s["eval_duration"] * 1e9 for s in single
            )
            for n in streams:
                send = lambda i: ours_request(url, args.model, i, args.tokens)  # noqa: E731
                results[f"ours x{n} concurrent"] = aggregate(send, n, sequential=False)
                results[f"ours x{n} sequential"] = aggregate(send, n, sequential=True)
                print(
                    f"  ours x{n}: {results[f'ours x{n} concurrent']:.1f} tok/s concurrent, "
                    f"{results[f'ours x{n} sequential']:.1f} sequential",
                    flush=True,
                )
            history = long_history(tokenizer, args.history_tokens)
            first = history + [{"role": "user", "content": "Summarise."}]
            results["ttft cold s"] = ttft(url, args.model, first)
            reply = {"role": "assistant", "content": "A summary."}
            second = first + [reply, {"role": "user", "content": "Shorter, please."}]
            # the first turn's cache now covers the history; a fresh server would be cold
            results["ttft warm s"] = ttft(url, args.model, second)
            results["history tokens"] = len(
                tokenizer.encode(
                    tokenizer.apply_chat_template([m for m in second], tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False,
                )
            )
            p50, p99 = tags_latency(url, args.model, args.tokens)
            results["tags p50 ms"], results["tags p99 ms"] = p50, p99
        finally:
            server.stop()

        if not args.skip_mlx_server:
            port = free_port()
            with open(Path(logs) / "mlx.log", "wb") as log:
                proc = start_mlx_server(model_dir, port, max_streams, log)
                try:
                    murl = f"http://127.0.0.1:{port}"
                    mlx_server_request(murl, str(model_dir), 0, 4)
                    for n in streams:
                        send = lambda i: mlx_server_request(murl, str(model_dir), i, args.tokens)  # noqa: E731
                        results[f"mlx_lm.server x{n}"] = aggregate(send, n, sequential=False)
                        print(f"  mlx_lm.server x{n}: {results[f'mlx_lm.server x{n}']:.1f} tok/s", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(30)

    print()
    print(
        f"1. single stream decode: server {results['server decode tok/s']:.1f} tok/s, raw mlx-lm "
        f"{results['raw decode tok/s']:.1f} tok/s, overhead {100 * (1 - results['server decode tok/s'] / results['raw decode tok/s']):.1f}%"
    )
    print("2. aggregate decode tokens/s")
    print(f"   {'streams':>7} {'concurrent':>11} {'sequential':>11} {'ratio':>6} {'mlx_lm.server':>14} {'vs it':>6}")
    for n in streams:
        c, s = results[f"ours x{n} concurrent"], results[f"ours x{n} sequential"]
        m = results.get(f"mlx_lm.server x{n}")
        mtxt = f"{m:>14.1f} {c / m:>6.2f}" if m else f"{'-':>14} {'-':>6}"
        print(f"   {n:>7} {c:>11.1f} {s:>11.1f} {c / s:>6.2f} {mtxt}")
    print(
        f"3. second-turn TTFT after {results['history tokens']} tokens of history: cold {results['ttft cold s']:.2f} s, "
        f"warm {results['ttft warm s']:.2f} s ({100 * results['ttft warm s'] / results['ttft cold s']:.0f}% of cold)"
    )
    print(
        f"4. GET /api/tags during 8 generations: p50 {results['tags p50 ms']:.1f} ms, p99 {results['tags p99 ms']:.1f} ms"
    )
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
