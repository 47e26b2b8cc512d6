#!/usr/bin/env python3
"""Second-turn time to first token of a long conversation, through real servers:

  cold       a fresh server with no prompt cache at all (the whole conversation is prefilled);
  RAM-warm   the server that answered turn 1 (the LRU prompt cache holds the history);
  disk-warm  a server started after the one that answered turn 1 stopped (the disk tier holds it).

Goal: disk-warm ≤ 10% of cold. Each server is loaded (a load-only request) before it is timed, so
the figures are prefill, not model loading.

    .venv/bin/python scripts/bench_restart.py [--model smollm2:135m] [--history-tokens 3000]

scripts/bench_context.py calls run(); it returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlxollama.convert.bundled import BUNDLED, CHAT_MODEL, import_source  # noqa: E402
from mlxollama.store import ModelName, Store  # noqa: E402
from tests.support.liveserver import LiveServer  # noqa: E402

NUM_CTX = 8192
SUBJECTS = ["the river", "a lantern", "the old mill", "seven crows", "the harbour", "a copper kettle", "the orchard"]
VERBS = ["watched", "carried", "mended", "painted", "counted", "followed", "described"]
OBJECTS = ["the morning tide", "a folded map", "the broken gate", "twelve lanterns", "the north road", "a letter"]


def history(n_tokens: int) -> list[dict]:
    """A conversation of about n_tokens: four long user parts, each acknowledged (about 12 tokens a sentence)."""
    sentences = [
        f"In entry {i}, {SUBJECTS[i % 7]} {VERBS[(i // 7) % 7]} {OBJECTS[(i // 49) % 6]}."
        for i in range(max(n_tokens // 12, 8))
    ]
    quarter = len(sentences) // 4 + 1
    messages = [{"role": "system", "content": "You are a careful assistant who remembers long notes."}]
    for part in range(4):
        text = " ".join(sentences[part * quarter : (part + 1) * quarter])
        messages += [
            {"role": "user", "content": f"Notes, part {part + 1}: {text}"},
            {"role": "assistant", "content": f"I have noted part {part + 1}."},
        ]
    return messages + [{"role": "user", "content": "Which entries mention the harbour?"}]


def chat(url: str, model: str, messages: list[dict], num_predict: int) -> tuple[float, dict, str]:
    """(seconds to the first streamed line, the final line, the answer) of one streamed chat."""
    body = {
        "model": model,
        "messages": messages,
        "stream": True,
        "options": {"temperature": 0, "num_predict": num_predict, "num_ctx": NUM_CTX},
    }
    first = None
    answer = []
    started = time.perf_counter()
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            first = first or time.perf_counter() - started
            event = json.loads(line)
            if "error" in event:
                raise RuntimeError(event["error"])
            answer.append(event.get("message", {}).get("content", ""))
            if event.get("done"):
                return first, event, "".join(answer)
    raise RuntimeError("the stream ended without a final line")


def load(url: str, model: str) -> None:
    r = httpx.post(url + "/api/generate", json={"model": model}, timeout=600)
    r.raise_for_status()


def run(
    model: str = CHAT_MODEL, history_tokens: int = 3000, models_dir: Path | None = None, log=print
) -> dict[str, float]:
    """Measure cold / RAM-warm / disk-warm second-turn TTFT; returns the figures (seconds, tokens, ratios).

    `models_dir`: a store holding `model` (a bundled model is imported into a temporary store when
    none is given or the model is missing)."""
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        tmp = Path(tmp)
        if models_dir is None:
            models_dir = tmp / "models"
        store = Store(models_dir)
        name = ModelName.parse(model)
        if store.resolve(name) is None:
            source = next((s for s in BUNDLED if ModelName.parse(s.name) == name), None)
            if source is None:
                raise SystemExit(f"model {model} is not in {models_dir}")
            import_source(store, source)
        cache_dir = tmp / "prompts"

        def server(label: str, disk: bool) -> LiveServer:
            env = {"MLXOLLAMA_PROMPT_CACHE_DIR": str(cache_dir)}
            if not disk:
                env["MLXOLLAMA_PROMPT_CACHE_DISK"] = "0"
            srv = LiveServer(models_dir, tmp / f"{label}.log", env)
            load(srv.url, model)
            return srv

        turn1 = history(history_tokens)
        results: dict[str, float] = {}

        # Turn 1 on a server with the disk tier, then turn 2 on the same server: RAM-warm.
        srv = server("first", disk=True)
        try:
            _, done1, answer = chat(srv.url, model, turn1, 16)
            turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the river?"}]
            # RAM-warm is timed on a copy of turn 2 that differs in its last words, so the disk
            # tier below is not handed turn 2's own cache by this request.
            ram_turn2 = turn2[:-1] + [{"role": "user", "content": "And the orchard?"}]
            results["ttft ram-warm s"], done_ram, _ = chat(srv.url, model, ram_turn2, 1)
        finally:
            srv.stop()  # graceful: queued cache writes reach the disk
        results["disk files bytes"] = sum(p.stat().st_size for p in cache_dir.rglob("*.safetensors"))

        # A new process on the same store and cache folder: disk-warm.
        srv = server("restarted", disk=True)
        try:
            t0 = time.perf_counter()
            results["ttft disk-warm s"], done_disk, _ = chat(srv.url, model, turn2, 1)
            results["disk-warm request s"] = time.perf_counter() - t0
        finally:
            srv.stop()

        # No cache at all: cold.
        srv = server("cold", disk=False)
        try:
            results["ttft cold s"], done_cold, _ = chat(srv.url, model, turn2, 1)
        finally:
            srv.stop()

    results["history tokens"] = done1["prompt_eval_count"]
    results["turn 2 tokens"] = done_cold["prompt_eval_count"]
    results["disk-warm cached tokens"] = done_disk.get("prompt_eval_cached_count", 0)
    results["ram-warm cached tokens"] = done_ram.get("prompt_eval_cached_count", 0)
    results["disk-warm / cold"] = results["ttft disk-warm s"] / results["ttft cold s"]
    results["ram-warm / cold"] = results["ttft ram-warm s"] / results["ttft cold s"]
    log(
        f"second-turn TTFT after {results['history tokens']} tokens of history "
        f"({results['turn 2 tokens']} in turn 2), model {model}:\n"
        f"  cold       {results['ttft cold s']:.3f} s\n"
        f"  RAM-warm   {results['ttft ram-warm s']:.3f} s ({100 * results['ram-warm / cold']:.1f}% of cold; "
        f"{results['ram-warm cached tokens']} tokens cached)\n"
        f"  disk-warm  {results['ttft disk-warm s']:.3f} s ({100 * results['disk-warm / cold']:.1f}% of cold; "
        f"{results['disk-warm cached tokens']} tokens cached; {results['disk files bytes'] / 2**20:.0f} MiB on disk)\n"
        f"  goal: disk-warm <= 10% of cold: {'met' if results['disk-warm / cold'] <= 0.10 else 'NOT met'}"
    )
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=CHAT_MODEL)
    ap.add_argument("--history-tokens", type=int, default=3000)
    ap.add_argument(
        "--models-dir", type=Path, default=None, help="a store holding the model (default: a temporary one)"
    )
    args = ap.parse_args()
    import mlx.core as mx

    print(
        f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, mlx {mx.__version__} "
        f"on {mx.default_device()}",
        flush=True,
    )
    run(args.model, args.history_tokens, args.models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
