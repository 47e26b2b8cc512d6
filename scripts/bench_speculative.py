#!/usr/bin/env python3
"""Decode tokens/s with and without a DRAFT model, the draft's acceptance rate, and whether greedy
text is identical: through the engine the server runs (engine/llm.py LoadedLLM, admit and step as
its thread does), one request at a time (speculative decoding serves a lone stream).

Default pair: the bundled SmolLM2-135M as main model (dense float32 on the CPU where the engine's
MLXOLLAMA_CPU_DENSE budget takes it, as the server loads it) with its stored quantized self as draft.
Run by scripts/bench_generate.py --speculative (same BLAS environment), or alone:

    .venv/bin/python scripts/bench_speculative.py [--model smollm2:135m] [--draft NAME]
        [--draft-num-predict 2,4] [--decode-tokens 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlxollama.config import Config  # noqa: E402
from mlxollama.convert.bundled import BUNDLED, import_source  # noqa: E402
from mlxollama.engine.catalog import load_spec  # noqa: E402
from mlxollama.engine.jobs import DoneEvent, GenerationJob, PromptSpec, TextEvent  # noqa: E402
from mlxollama.engine.llm import EngineSettings, LoadedLLM  # noqa: E402
from mlxollama.options import Options  # noqa: E402
from mlxollama.store import ModelName, Store  # noqa: E402

PROMPTS = [
    "Explain why the sky is blue in three short paragraphs.",
    "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
    "List the planets of the solar system and one fact about each.",
    "What is the capital of France? Tell me about its history.",
]


def stored_dir(store: Store, name: str, run_dir: Path) -> Path:
    model = ModelName.parse(name)
    if store.resolve(model) is None:
        source = next((s for s in BUNDLED if ModelName.parse(s.name) == model), None)
        if source is None:
            raise SystemExit(f"model {name} is not in {store.root}")
        print(f"importing {name} ...", flush=True)
        import_source(store, source)
    return load_spec(store, model).materialize(run_dir)


def generate(llm: LoadedLLM, prompt: str, options: Options) -> tuple[str, DoneEvent]:
    """One chat request, alone, through admit/step as the engine thread runs it."""

    async def main():
        job = GenerationJob(PromptSpec(messages=[{"role": "user", "content": prompt}]), options)
        llm.admit(job)
        while llm.busy:
            llm.step()
        await asyncio.sleep(0.01)
        text, done = [], None
        while not job.events.empty():
            event = job.events.get_nowait()
            if isinstance(event, TextEvent):
                text.append(event.text)
            elif isinstance(event, DoneEvent):
                done = event
            else:
                raise SystemExit(f"generation failed: {event}")
        return "".join(text), done

    return asyncio.run(main())


def measure(llm: LoadedLLM, prompts: list[str], decode: int, draft_num_predict: int) -> tuple[list[str], float]:
    """(greedy texts, median decode tokens/s) after a warm-up request."""
    options = Options(temperature=0.0, num_predict=decode, draft_num_predict=draft_num_predict)
    generate(llm, "Warm up: say hello.", options)
    if llm.drafter is not None:
        llm.drafter.stats.drafted = llm.drafter.stats.accepted = llm.drafter.stats.rounds = 0
    texts, rates = [], []
    for prompt in prompts:
        text, done = generate(llm, prompt, options)
        texts.append(text)
        rates.append(done.eval_count / max(done.eval_duration / 1e9, 1e-9))
    return texts, statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--draft", default="", help="draft model (default: the model's own stored weights)")
    ap.add_argument("--models-dir", default="", help="store to read (default: MLXOLLAMA_MODELS)")
    ap.add_argument("--draft-num-predict", default="2,4", help="comma-separated draft lengths to measure")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3, help="measured requests per row (median), after a warm-up")
    args = ap.parse_args()

    config = Config.from_env()
    store = Store(Path(args.models_dir) if args.models_dir else config.models_dir)
    settings = EngineSettings.from_config(config)
    prompts = (PROMPTS * args.runs)[: args.runs]
    with tempfile.TemporaryDirectory(prefix="bench-speculative-") as tmp:
        main_dir = stored_dir(store, args.model, Path(tmp))
        draft_dir = stored_dir(store, args.draft or args.model, Path(tmp))
        plain = LoadedLLM(main_dir, settings)
        base_texts, base_rate = measure(plain, prompts, args.decode_tokens, 0)
        main_kind = "dense float32" if plain.dense else "stored weights"
        plain.close()
        spec = LoadedLLM(main_dir, settings, draft_dir=draft_dir)
        if not spec.speculating:
            print("this model cannot decode speculatively (its caches cannot be trimmed)")
            return 1
        print(
            f"\nspeculative decoding: {args.model} ({main_kind}) with draft {args.draft or args.model} "
            f"(stored weights); greedy, {args.decode_tokens} tokens, median of {len(prompts)} chat requests"
        )
        print(f"{'draft tokens/step':>18} {'decode tok/s':>13} {'vs no draft':>12} {'accepted':>9} {'same text':>10}")
        print(f"{'no draft':>18} {base_rate:>13.1f} {'1.00x':>12} {'-':>9} {'-':>10}")
        for n in [int(x) for x in args.draft_num_predict.split(",") if x]:
            texts, rate = measure(spec, prompts, args.decode_tokens, n)
            stats = spec.drafter.stats
            same = sum(a == b for a, b in zip(texts, base_texts))
            print(
                f"{n:>18} {rate:>13.1f} {rate / base_rate:>11.2f}x {stats.acceptance:>8.0%} "
                f"{f'{same}/{len(texts)}':>10}"
            )
        spec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
