#!/usr/bin/env python3
"""GPU figures in one run: a random-weight 4-bit model of a real shape, our server next to mlx_lm.server.

Needs no network: the model (weights and a synthetic byte-level tokenizer of the right vocabulary
size) is built here from a config, quantized with mlx-lm and packaged into a temporary store.
Prints one table with
  1. single-stream decode tokens/s (mlx-lm in-process, /api/generate, mlx_lm.server) against the
     memory-bandwidth bound: weight bytes x tokens/s / bandwidth, as a %;
  2. aggregate tokens/s at N concurrent streams through /api/generate vs the same N requests one
     after another, and vs mlx_lm.server under the same load (/v1/completions, same prompts);
  3. time to first token of a long prompt, cold vs warm (the prompt extended: the prompt cache).

Run it through scripts/bench_gpu.sh, which makes the venv with mlx[cuda13]. Directly:
    python scripts/bench_gpu.py [--shape qwen3-4b|tiny] [--streams 1,4,8,16] [--tokens 128]
        [--bandwidth-gbs 4800] [--time-limit 1200]
Both servers listen on 127.0.0.1 only and stop with this process; the run stops at --time-limit.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import json
import os
import platform
import random
import shutil
import signal
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

from mlxollama.convert.create import package_model_dir  # noqa: E402
from mlxollama.store import ModelName, Store, build_config_blob  # noqa: E402
from tests.support.liveserver import LiveServer, free_port  # noqa: E402

# Qwen3-4B's published config (hidden 2560, 36 layers, GQA 32/8, head 128, tied embeddings).
SHAPES = {
    "qwen3-4b": dict(
        hidden_size=2560,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=9728,
        vocab_size=151936,
        max_position_embeddings=40960,
    ),
    # a smoke run on a CPU: same code paths, seconds instead of minutes
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=256,
        vocab_size=2048,
        max_position_embeddings=8192,
    ),
}
# HBM/GDDR peak bandwidth in GB/s by the name nvidia-smi prints (first match wins: longer names first).
BANDWIDTH_GBS = [
    ("GH200", 4000),
    ("H200", 4800),
    ("H100 NVL", 3900),
    ("H100 PCIe", 2000),
    ("H100", 3350),
    ("B200", 8000),
    ("B100", 8000),
    ("A100-SXM4-80GB", 2039),
    ("A100 80GB PCIe", 1935),
    ("A100", 1555),
    ("L40S", 864),
    ("L40", 864),
    ("L4", 300),
    ("A10G", 600),
    ("A10", 600),
    ("RTX 4090", 1008),
    ("RTX 5090", 1792),
    ("RTX 6000 Ada", 960),
    ("RTX PRO 6000", 1792),
]
EOS, PAD = "<|im_end|>", "<|endoftext|>"
WORD_LETTERS = "etaoinshrdlucmfwyp"


class OutOfTime(Exception):
    pass


# ---------------------------------------------------------------- the model


def build_tokenizer(out: Path, vocab_size: int) -> dict[str, int]:
    """A byte-level BPE with exactly vocab_size ids and no merges: every prompt character is one
    token (so prompt lengths are known exactly) and every id the model may emit decodes to a word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    fillers = vocab_size - len(vocab) - 2

    def word(i: int) -> str:  # "Ġw" + base-26 letters: a space-led word, never a single character
        s = ""
        while True:
            s = chr(97 + i % 26) + s
            i //= 26
            if i == 0:
                return "Ġw" + s

    for i in range(fillers):
        vocab[word(i)] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, EOS])
    tok.save(str(out / "tokenizer.json"))
    ids = {PAD: tok.token_to_id(PAD), EOS: tok.token_to_id(EOS)}
    assert tok.get_vocab_size() == vocab_size and ids[EOS] == vocab_size - 1, "tokenizer size"
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": EOS,
                "pad_token": PAD,
                "unk_token": None,
                "model_max_length": 40960,
            }
        )
    )
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS, "pad_token": PAD}))
    return ids


def build_model(out: Path, shape: str, bits: int, group_size: int, seed: int = 0) -> dict:
    """Random weights of the shape through mlx-lm's own qwen3 class, quantized by mlx-lm."""
    import mlx.core as mx
    from mlx_lm.models import qwen3
    from mlx_lm.utils import quantize_model, save_config, save_model

    out.mkdir(parents=True, exist_ok=True)
    dims = SHAPES[shape]
    ids = build_tokenizer(out, dims["vocab_size"])
    config = {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "eos_token_id": ids[EOS],
        "torch_dtype": "bfloat16",
        **dims,
    }
    mx.random.seed(seed)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    # The end token's embedding row (also the tied output row) is zero, so its logit is 0 while
    # the others spread both ways: greedy decoding never stops early and every request decodes
    # exactly its token budget on both servers.
    emb = model.model.embed_tokens
    emb.weight = (emb.weight * mx.ones((dims["vocab_size"], 1)).at[ids[EOS]].multiply(0.0)).astype(mx.bfloat16)
    model.set_dtype(mx.bfloat16)
    model, config = quantize_model(model, config, group_size=group_size, bits=bits)
    mx.eval(model.parameters())
    save_model(out, model, donate_model=True)
    save_config(config, out / "config.json")
    del model
    gc.collect()
    mx.clear_cache()
    (out / "model_info.json").write_text(
        json.dumps(
            {
                "general.architecture": "qwen3",
                "qwen3.context_length": dims["max_position_embeddings"],
                "qwen3.embedding_length": dims["hidden_size"],
                "qwen3.block_count": dims["num_hidden_layers"],
            }
        )
    )
    return config


def weight_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def package(models_dir: Path, model_dir: Path, name: str, shape: str, bits: int) -> None:
    dims = SHAPES[shape]
    config = build_config_blob(
        model_format="mlx",
        model_family="qwen3",
        model_type=shape,
        file_type=f"Q{bits}",
        context_length=dims["max_position_embeddings"],
        embedding_length=dims["hidden_size"],
    )
    package_model_dir(Store(models_dir), ModelName.parse(name), model_dir, config=config)


# ---------------------------------------------------------------- load


def prompt_text(n_tokens: int, seed: int) -> str:
    """n_tokens characters of word-like text: exactly n_tokens tokens with this tokenizer."""
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < n_tokens:
        w = "".join(rng.choice(WORD_LETTERS) for _ in range(rng.randint(2, 8)))
        words.append(w)
        size += len(w) + 1
    return " ".join(words)[:n_tokens]


class Ours:
    label = "mlxollama /api/generate"

    def __init__(self, url: str, model: str):
        self.url, self.model = url, model
        self.final: dict = {}

    def body(self, prompt: str, tokens: int, stream: bool) -> dict:
        # raw: the same text reaches both servers; repeat_penalty 1 as mlx_lm.server has none
        return {
            "model": self.model,
            "prompt": prompt,
            "raw": True,
            "stream": stream,
            "keep_alive": -1,
            "options": {"temperature": 0, "num_predict": tokens, "repeat_penalty": 1.0},
        }

    def complete(self, prompt: str, tokens: int) -> int:
        r = httpx.post(self.url + "/api/generate", json=self.body(prompt, tokens, False), timeout=900)
        r.raise_for_status()
        return r.json()["eval_count"]

    def stream(self, prompt: str, tokens: int) -> list[float]:
        """Arrival times of the chunks that carry text; the final chunk's counters kept in self.final."""
        times = []
        with httpx.stream("POST", self.url + "/api/generate", json=self.body(prompt, tokens, True), timeout=900) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                chunk = json.loads(line) if line else {}
                if chunk.get("response"):
                    times.append(time.perf_counter())
                if chunk.get("done"):
                    self.final = chunk
        return times


class MlxServer(Ours):
    label = "mlx_lm.server /v1/completions"

    def body(self, prompt: str, tokens: int, stream: bool) -> dict:
        return {"model": self.model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": stream}

    def complete(self, prompt: str, tokens: int) -> int:
        r = httpx.post(self.url + "/v1/completions", json=self.body(prompt, tokens, False), timeout=900)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    def stream(self, prompt: str, tokens: int) -> list[float]:
        times = []
        with httpx.stream("POST", self.url + "/v1/completions", json=self.body(prompt, tokens, True), timeout=900) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    choices = json.loads(line[5:]).get("choices") or [{}]
                    if choices[0].get("text"):
                        times.append(time.perf_counter())
        return times


def decode_rate(server, prompt: str, tokens: int, runs: int) -> tuple[float, float | None]:
    """Tokens/s between the first and the last streamed token (decode alone, prefill excluded, as
    a client sees it), and the server's own eval_count / eval_duration where it reports one."""
    rates, reported = [], []
    for _ in range(runs):
        t = server.stream(prompt, tokens)
        if len(t) >= 2 and t[-1] > t[0]:
            rates.append((len(t) - 1) / (t[-1] - t[0]))
        if server.final.get("eval_duration"):
            reported.append(server.final["eval_count"] / server.final["eval_duration"] * 1e9)
    return (statistics.median(rates) if rates else float("nan"), statistics.median(reported) if reported else None)


def aggregate(server, n: int, tokens: int, prompt_tokens: int, seed: int, sequential: bool) -> float:
    prompts = [prompt_text(prompt_tokens, seed + i) for i in range(n)]
    t = time.perf_counter()
    if sequential:
        total = sum(server.complete(p, tokens) for p in prompts)
    else:
        with cf.ThreadPoolExecutor(n) as pool:
            total = sum(pool.map(lambda p: server.complete(p, tokens), prompts))
    return total / (time.perf_counter() - t)


def ttft(server, prompt: str) -> float:
    t = time.perf_counter()
    times = server.stream(prompt, 2)
    return (times[0] - t) if times else float("nan")


def ttft_cold_warm(server, prompt_tokens: int, runs: int, seed: int) -> tuple[float, float]:
    """Cold: a prompt no request has sent. Warm: the same prompt extended by a few words, which
    a prompt cache answers from the first request's KV."""
    cold, warm = [], []
    for r in range(runs):
        base = prompt_text(prompt_tokens, seed + r)
        cold.append(ttft(server, base))
        warm.append(ttft(server, base + " and then some more words"))
    return statistics.median(cold), statistics.median(warm)


def in_process_decode(model_dir: Path, tokens: int, runs: int) -> float:
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(model_dir))
    rates = []
    for r in range(runs + 1):  # the first warms up kernels
        last = None
        for last in stream_generate(model, tokenizer, prompt_text(32, 900 + r), max_tokens=tokens):
            pass
        if r:
            rates.append(last.generation_tps)
    del model
    gc.collect()
    mx.clear_cache()
    return statistics.median(rates)


def _stop_with_parent() -> None:
    # mlx_lm.server has no such option: the kernel sends it SIGTERM when this process dies
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_mlx_server(model_dir: Path, concurrency: int, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlx_lm.server",
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--decode-concurrency",
            str(concurrency),
            "--prompt-concurrency",
            str(min(concurrency, 8)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_stop_with_parent,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            httpx.get(url + "/v1/models", timeout=2)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("mlx_lm.server did not start")


# ---------------------------------------------------------------- the machine


def gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None


def bandwidth_for(name: str | None) -> float | None:
    if not name:
        return None
    return next((gbs for key, gbs in BANDWIDTH_GBS if key.lower() in name.lower()), None)


# ---------------------------------------------------------------- the run


def run(args, work: Path, results: dict) -> None:
    import mlx.core as mx

    streams = [int(s) for s in args.streams.split(",")]
    gpu = gpu_name()
    bandwidth = args.bandwidth_gbs or bandwidth_for(gpu)
    results["machine"] = (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores; GPU: {gpu or 'none'}; "
        f"mlx {mx.__version__} on {mx.default_device()}"
    )
    results["bandwidth GB/s"] = bandwidth
    results["bandwidth from"] = "--bandwidth-gbs" if args.bandwidth_gbs else ("table" if bandwidth else None)
    print(results["machine"], flush=True)

    model_dir = work / "model"
    t = time.perf_counter()
    build_model(model_dir, args.shape, args.bits, args.group_size)
    results["weight bytes"] = weight_bytes(model_dir)
    results["build s"] = time.perf_counter() - t
    print(
        f"built random {args.shape} {args.bits}-bit g{args.group_size}: {results['weight bytes'] / 1e6:,.1f} MB "
        f"of weights in {results['build s']:.0f} s",
        flush=True,
    )
    name = f"bench-{args.shape}:q{args.bits}"
    models_dir = work / "models"
    package(models_dir, model_dir, name, args.shape, args.bits)

    results["decode in-process"] = in_process_decode(model_dir, args.tokens, args.runs)
    print(f"  mlx-lm in-process decode {results['decode in-process']:.1f} tok/s", flush=True)

    decode_prompt = prompt_text(32, 7)
    env = {
        "OLLAMA_NUM_PARALLEL": str(max(streams)),
        "OLLAMA_CONTEXT_LENGTH": str(args.num_ctx),
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_MAX_LOADED_MODELS": "1",
    }
    server = LiveServer(models_dir, work / "ours.log", env=env)
    try:
        ours = Ours(server.url, name)
        t = time.perf_counter()
        ours.complete("warm up", 4)
        results["ours load s"] = time.perf_counter() - t
        measure(ours, "ours", args, streams, decode_prompt, results, sequential=True)
    except Exception:
        print(server.log(), file=sys.stderr)
        raise
    finally:
        server.stop()

    if args.skip_mlx_server:
        return
    with open(work / "mlx_lm.log", "wb") as log:
        proc, url = start_mlx_server(model_dir, max(streams), log)
        try:
            theirs = MlxServer(url, str(model_dir))
            theirs.complete("warm up", 4)
            measure(theirs, "mlx_lm.server", args, streams, decode_prompt, results, sequential=False)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def measure(server, key: str, args, streams: list[int], decode_prompt: str, results: dict, sequential: bool) -> None:
    results[f"decode {key}"], reported = decode_rate(server, decode_prompt, args.tokens, args.runs)
    line = f"  {key} decode {results[f'decode {key}']:.1f} tok/s between streamed tokens"
    if reported:
        results[f"decode {key} eval_duration"] = reported
        line += f", {reported:.1f} by its eval_duration"
    print(line, flush=True)
    for n in streams:
        results[f"{key} x{n}"] = aggregate(server, n, args.tokens, args.prompt_tokens, 1000 * n, sequential=False)
        line = f"  {key} x{n}: {results[f'{key} x{n}']:.1f} tok/s concurrent"
        if sequential:
            results[f"{key} x{n} sequential"] = aggregate(
                server, n, args.tokens, args.prompt_tokens, 1000 * n + 500, sequential=True
            )
            line += f", {results[f'{key} x{n} sequential']:.1f} sequential"
        print(line, flush=True)
    cold, warm = ttft_cold_warm(server, args.ttft_tokens, args.runs, 50_000)
    results[f"ttft cold {key}"], results[f"ttft warm {key}"] = cold, warm
    print(f"  {key} TTFT {args.ttft_tokens} tokens: cold {cold:.3f} s, warm {warm:.3f} s", flush=True)


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def report(args, results: dict) -> None:
    streams = [int(s) for s in args.streams.split(",")]
    wb, bw = results.get("weight bytes"), results.get("bandwidth GB/s")
    dims = SHAPES[args.shape]
    print()
    print(f"machine: {results.get('machine')}")
    print(
        f"model: random-weight qwen3 {args.shape} (hidden {dims['hidden_size']}, {dims['num_hidden_layers']} layers, "
        f"heads {dims['num_attention_heads']}/{dims['num_key_value_heads']}, ffn {dims['intermediate_size']}, "
        f"vocab {dims['vocab_size']}), {args.bits}-bit g{args.group_size}, weights {fmt(wb and wb / 1e6, ',.1f')} MB; "
        f"{args.tokens} tokens per request, {args.prompt_tokens}-token prompts"
    )
    bound = bw * 1e9 / wb if bw and wb else None
    src = results.get("bandwidth from")
    print(
        f"bandwidth bound: {fmt(bw, '.0f')} GB/s{f' ({src})' if src else ' (unknown: pass --bandwidth-gbs)'} "
        f"/ weight bytes = {fmt(bound)} tok/s"
    )
    print()
    print("| single-stream decode | tok/s | % of bandwidth bound |")
    print("|---|---|---|")
    for key, label in (
        ("in-process", "mlx-lm stream_generate, in-process"),
        ("ours", Ours.label),
        ("mlx_lm.server", MlxServer.label),
    ):
        v = results.get(f"decode {key}")
        if v is not None:
            print(f"| {label} | {fmt(v)} | {fmt(bound and 100 * v / bound)} |")
        v = results.get(f"decode {key} eval_duration")
        if v is not None:
            print(f"| {label}, by its eval_duration | {fmt(v)} | {fmt(bound and 100 * v / bound)} |")
    print()
    print(
        "| streams | ours concurrent tok/s | ours sequential | concurrent / sequential | mlx_lm.server concurrent | ours / mlx_lm.server |"
    )
    print("|---|---|---|---|---|---|")
    for n in streams:
        c, s, m = (results.get(k) for k in (f"ours x{n}", f"ours x{n} sequential", f"mlx_lm.server x{n}"))
        print(
            f"| {n} | {fmt(c)} | {fmt(s)} | {fmt(c and s and c / s, '.2f')} | {fmt(m)} | "
            f"{fmt(c and m and c / m, '.2f')} |"
        )
    print()
    print(f"| TTFT, {args.ttft_tokens}-token prompt | cold s | warm s (prompt cache) | warm / cold |")
    print("|---|---|---|---|")
    for key, label in (("ours", Ours.label), ("mlx_lm.server", MlxServer.label)):
        c, w = results.get(f"ttft cold {key}"), results.get(f"ttft warm {key}")
        if c is not None:
            print(f"| {label} | {fmt(c, '.3f')} | {fmt(w, '.3f')} | {fmt(c and w / c, '.2f')} |")
    print()
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-4b")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, help="decoded tokens per request (default 128; tiny: 32)")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="prompt length of the aggregate requests")
    ap.add_argument("--ttft-tokens", type=int, help="prompt length for TTFT (default 2048; tiny: 256)")
    ap.add_argument("--num-ctx", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=2, help="repeats of the decode and TTFT measurements (median)")
    ap.add_argument("--bandwidth-gbs", type=float, help="peak memory bandwidth; default: by GPU name")
    ap.add_argument("--skip-mlx-server", action="store_true")
    ap.add_argument("--time-limit", type=int, default=1200, help="seconds for the whole run")
    ap.add_argument("--work-dir", type=Path, help="where the model and store go (default: a temp dir, removed)")
    args = ap.parse_args()
    tiny = args.shape == "tiny"
    args.tokens = args.tokens or (32 if tiny else 128)
    args.ttft_tokens = args.ttft_tokens or (256 if tiny else 2048)

    def out_of_time(*_):
        raise OutOfTime(f"stopped at --time-limit {args.time_limit} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.time_limit)
    # The alarm lands in the main thread; should requests in flight keep it waiting, leave anyway
    # a minute later (both servers stop with this process).
    watchdog = threading.Timer(args.time_limit + 60, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=args.work_dir))
    results: dict = {}
    code = 0
    try:
        run(args, work, results)
    except (OutOfTime, Exception) as e:  # print what was measured before the failure
        print(f"\nbench_gpu: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    finally:
        signal.alarm(0)
        watchdog.cancel()
        shutil.rmtree(work, ignore_errors=True)
    report(args, results)
    return code


if __name__ == "__main__":
    sys.exit(main())
