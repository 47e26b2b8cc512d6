#!/usr/bin/env python3
"""Long-context figures in one run (issue 14): the KV cache types, then second-turn TTFT.

1. KV cache memory per 1,000 tokens for f16 / q8_0 / q4_0 (OLLAMA_KV_CACHE_TYPE), measured on the
   caches the server builds (engine/kvcache.py) for a model of SmolLM2-135M's shape.
2. Decode tokens/s at 1k / 8k / 32k tokens of context for each type, through the batched caches
   the continuous batch uses (one sequence). The model has SmolLM2-135M's shape (30 layers, 9 query
   and 3 KV heads of 64, 576 wide) with random float32 weights: decode time depends on the shapes,
   not the weights, and the context is filled with random keys and values instead of a prefill
   (which would take minutes per type at 32k on a small CPU).
3. Perplexity of the real SmolLM2-135M (the bundled GGUF, imported as the server does) on a fixed
   text, prefilled through each cache type in 128-token steps, and the change against f16.
4. scripts/bench_restart.py's run(), when that script exists: second-turn time to first token,
   cold / RAM-warm / disk-warm after a restart.

    source scripts/_setup.sh && .venv/bin/python scripts/bench_context.py \
        [--contexts 1024,8192,32768] [--steps 16,8,4] [--no-restart]

On Linux, source scripts/_setup.sh first: it preloads OpenBLAS, without which the servers of part 4
keep SmolLM2's 4-bit weights and prefill ~10 tokens/s (its cold turn alone then took 6 min here).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402
from mlx_lm.models import llama  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from mlxollama.engine.kvcache import KV_CACHE_TYPES, make_cache_factory  # noqa: E402

KINDS = list(KV_CACHE_TYPES)

# SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M)
SMOLLM2_135M_SHAPE = dict(
    model_type="llama",
    hidden_size=576,
    num_hidden_layers=30,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    rms_norm_eps=1e-5,
    vocab_size=49152,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)

# A fixed text of ordinary English prose (written for this benchmark), about 700 tokens.
TEXT = """\
The lighthouse stood at the end of a narrow spit of rock, and for most of the year the only people
who saw it up close were the keeper and the men who brought his supplies once a fortnight. In the
summer there were visitors: families who walked out along the causeway at low tide, children who
ran ahead and had to be called back before the water turned, and now and then a painter who set up
an easel on the flat stones and stayed until the light changed. The keeper did not mind them. He
answered their questions about the lamp and the lens, showed them the logbook where every ship that
passed was written down, and warned them, always, about the tide.

The lamp itself was older than the tower. It had been brought from a lighthouse further up the
coast when that one was pulled down, and the brass fittings still carried the name of a foundry
that had closed long ago. Every evening the keeper climbed the one hundred and twelve steps, wound
the clockwork that turned the lens, trimmed the wick and lit it. Every morning he climbed them again
to put it out, clean the glass and draw the curtains so that the sun would not crack the prisms. In
between he slept in short stretches, waking by habit to look at the beam sweeping across the water.

Winter was different. The storms came in from the west, one after another, and for days at a time
the causeway was under water even at the lowest tide. The supply boat could not land, and the keeper
lived on what he had stored: flour, dried beans, salted fish, tea and a great deal of patience. He
wrote letters he could not send, mended the nets he no longer used, and read the same few books until
he knew whole pages by heart. When the wind was strong enough the whole tower hummed, a low note that
he felt in his teeth more than he heard, and on those nights he stayed in the lamp room until dawn.

Ships still passed in the worst weather, their lights appearing and vanishing between the waves. He
counted them, noted the time and the direction, and watched until each one was safely past the reef
that ran out from the point. Twice in his years there he saw a ship come too close. The first time
it turned away in time, and he never learned its name. The second time it struck, and he spent the
night on the rocks with a rope and a lantern, and in the morning there were eleven men asleep on the
floor of his kitchen, wrapped in every blanket he owned.

They left on the first boat that could reach the island, and he did not expect to hear from them
again. But the next summer a parcel arrived with the supplies: a new pair of boots, a box of good
tea, and a letter signed by all eleven. He kept the letter in the logbook, between the pages for the
night of the wreck, and when visitors asked about the lighthouse he sometimes showed it to them,
though he never said much about what had happened. It was enough, he said, that the light had been
burning, and that someone had been there to see.
"""


def timed_decode(model, caches: list, steps: int) -> float:
    """Tokens/s of `steps` single-token decode steps through `caches` (batch of one)."""
    token = mx.array([[1]])
    mx.eval(model(token, cache=caches))  # warm up (and compile the kernels once)
    start = time.perf_counter()
    for _ in range(steps):
        logits = model(token, cache=caches)
        token = logits[:, -1:].argmax(axis=-1)
        mx.eval(token)
    return steps / (time.perf_counter() - start)


def filled_batch_caches(model, kind: str, tokens: int) -> list:
    """The continuous batch's caches (merged from the server's single-sequence ones) holding
    `tokens` positions of random keys and values."""
    factory = make_cache_factory(model, kind)
    caches = factory() if factory is not None else make_prompt_cache(model)
    args = model.args
    kv_heads, head_dim = args.num_key_value_heads, args.hidden_size // args.num_attention_heads
    chunk = 4096
    for c in caches:
        done = 0
        while done < tokens:
            n = min(chunk, tokens - done)
            k = mx.random.normal((1, kv_heads, n, head_dim))
            c.update_and_fetch(k, k)
            mx.eval(c.state)
            done += n
    return [type(c).merge([c]) for c in caches]


def memory_and_speed(contexts: list[int], steps: list[int], log) -> dict:
    args = llama.ModelArgs(**SMOLLM2_135M_SHAPE)
    model = llama.Model(args)
    mx.eval(model.parameters())  # random float32 weights
    results = {"per_1k": {}, "decode": {}}
    log("\n== KV cache memory per 1,000 tokens (SmolLM2-135M shape: 30 layers x 3 KV heads x 64, float32 on the CPU)")
    for kind in KINDS:
        caches = filled_batch_caches(model, kind, 1000)
        per_1k = sum(c.nbytes for c in caches) / caches[0].size() * 1000
        results["per_1k"][kind] = per_1k
        ratio = per_1k / results["per_1k"]["f16"]
        log(f"  {kind:5s} {per_1k / 2**20:7.2f} MiB / 1k tokens  ({ratio:.3f} of f16)")
        del caches
    half = results["per_1k"]["f16"] / 2
    log(
        f"  (f16 is the model's dtype: float32 on the CPU backend; on a GPU it is float16, {half / 2**20:.2f} MiB / 1k,"
    )
    log("   where q8_0 / q4_0 take 8.5 / 5 bits an element, 0.53 / 0.31 of f16)")

    log("\n== Decode tokens/s with the context already filled (random weights, SmolLM2-135M shape; one sequence)")
    log("  " + "context".rjust(8) + "".join(k.rjust(10) for k in KINDS) + "   steps timed")
    for ctx, n in zip(contexts, steps):
        row = {}
        for kind in KINDS:
            caches = filled_batch_caches(model, kind, ctx)
            row[kind] = timed_decode(model, caches, n)
            del caches
            gc.collect()
            mx.clear_cache()
        results["decode"][ctx] = row
        log("  " + f"{ctx:>8d}" + "".join(f"{row[k]:10.2f}" for k in KINDS) + f"   {n}")
    return results


def smollm2_dir(tmp: Path) -> Path:
    from mlxollama.convert.bundled import BUNDLED, CHAT_MODEL, import_source
    from mlxollama.engine.catalog import load_spec
    from mlxollama.store import ModelName, Store

    store = Store(tmp / "models")
    source = next(s for s in BUNDLED if s.name == CHAT_MODEL)
    import_source(store, source)
    return load_spec(store, ModelName.parse(CHAT_MODEL)).materialize(tmp / "run")


def perplexities(log, chunk: int = 128) -> dict:
    from mlxollama.config import CPU_DENSE_ALL
    from mlxollama.engine.llm import EngineSettings, LoadedLLM

    with tempfile.TemporaryDirectory(prefix="bench-context-") as tmp:
        model_dir = smollm2_dir(Path(tmp))
        # Loaded once (each type gets its own caches), with float32 weights as the server keeps a model
        # this small on the CPU backend (MLXOLLAMA_CPU_DENSE): stored 4-bit weights prefill ~10 tok/s here.
        llm = LoadedLLM(model_dir, EngineSettings(cpu_dense_bytes=CPU_DENSE_ALL))
        tokens = llm.tokenizer.encode(TEXT)
        out = {}
        for kind in KINDS:
            factory = make_cache_factory(llm.model, kind)
            caches = factory() if factory is not None else make_prompt_cache(llm.model)
            nll, count = 0.0, 0
            for start in range(0, len(tokens) - 1, chunk):
                window = tokens[start : start + chunk + 1]
                logits = llm.model(mx.array([window[:-1]]), cache=caches)[0].astype(mx.float32)
                logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
                targets = mx.array(window[1:])
                picked = mx.take_along_axis(logprobs, targets[:, None], axis=-1)
                nll -= picked.sum().item()
                count += len(window) - 1
            out[kind] = math.exp(nll / count)
        llm.close()
        gc.collect()
    log(f"\n== Perplexity of SmolLM2-135M (the bundled Q4_1 GGUF, imported, float32) on a fixed {count}-token text")
    log(f"   prefilled through each cache type in {chunk}-token steps")
    for kind in KINDS:
        delta = (out[kind] / out["f16"] - 1) * 100
        log(f"  {kind:5s} {out[kind]:8.4f}   {delta:+.2f}% vs f16")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="1024,8192,32768", help="context sizes for the decode rows")
    ap.add_argument("--steps", default="16,8,4", help="decode steps timed at each context size")
    ap.add_argument("--no-restart", action="store_true", help="skip scripts/bench_restart.py")
    args = ap.parse_args()
    contexts = [int(x) for x in args.contexts.split(",")]
    steps = [int(x) for x in args.steps.split(",")]
    steps += [steps[-1]] * (len(contexts) - len(steps))

    def log(line: str) -> None:
        print(line, flush=True)

    log(
        f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, mlx {mx.__version__} "
        f"on {mx.default_device()}"
    )
    began = time.perf_counter()
    memory_and_speed(contexts, steps, log)
    perplexities(log)
    restart = ROOT / "scripts" / "bench_restart.py"
    if args.no_restart:
        log("\n(second-turn TTFT skipped: --no-restart)")
    elif restart.exists():
        log("\n== Second-turn time to first token (scripts/bench_restart.py)")
        sys.path.insert(0, str(restart.parent))
        import bench_restart

        bench_restart.run(log=log)
    else:
        log("\n(second-turn TTFT: scripts/bench_restart.py is not there)")
    log(f"\nwhole run: {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
