"""Quantized KV caches in the continuous batch (mlxollama/engine/kvcache.py): the batched cache on
its own, then the engine (LoadedLLM) running q8_0/q4_0 caches on tiny random models."""

from __future__ import annotations

import asyncio
import logging

import mlx.core as mx
import pytest
from mlx_lm.models import cache as mlx_cache

from mlxollama.config import Config
from mlxollama.engine.jobs import DoneEvent, GenerationJob, PromptSpec, TextEvent
from mlxollama.engine.kvcache import (
    BatchQuantizedKVCache,
    QuantizedKVCache,
    batchable,
    group_size_for,
    make_cache_factory,
    parse_kv_cache_type,
)
from mlxollama.engine.llm import EngineSettings, LoadedLLM
from mlxollama.options import Options

from ..support.tinyhf import build_hf_checkpoint
from ..support.tinymodels import build_tiny_llama

# --- settings -------------------------------------------------------------------------------------


def test_cache_type_names_follow_ollama(caplog):
    assert [parse_kv_cache_type(v) for v in ("", None, "f16", "q8_0", "Q4_0", " q8_0 ")] == [
        "f16",
        "f16",
        "f16",
        "q8_0",
        "q4_0",
        "q8_0",
    ]
    with caplog.at_level(logging.WARNING, logger="mlxollama.engine"):
        assert parse_kv_cache_type("q5_1") == "f16"  # Ollama: logged, then f16
    assert "unsupported OLLAMA_KV_CACHE_TYPE 'q5_1'" in caplog.text


def test_the_model_parameter_overrides_the_server_default():
    config = Config.from_env({"OLLAMA_KV_CACHE_TYPE": "Q8_0"})
    assert config.kv_cache_type == "q8_0"
    assert EngineSettings.from_config(config).kv_cache_type == "q8_0"
    assert EngineSettings.from_config(config, {"kv_cache_type": "q4_0"}).kv_cache_type == "q4_0"
    assert EngineSettings.from_config(config, {"kv_cache_type": "f16"}).kv_cache_type == "f16"
    assert EngineSettings.from_config(config, {"kv_cache_type": "bogus"}).kv_cache_type == "f16"
    assert EngineSettings.from_config(Config.from_env({})).kv_cache_type == "f16"


def test_a_modelfile_may_set_the_cache_type():
    from mlxollama.convert.modelfile import parse, to_create_fields
    from mlxollama.options import Options

    fields = to_create_fields(parse("FROM tiny\nPARAMETER kv_cache_type q4_0\nPARAMETER num_ctx 64\n"))
    assert fields["parameters"] == {"kv_cache_type": "q4_0", "num_ctx": 64}
    # a load-time model parameter, not a request option: merging options passes over it
    assert Options.merged(fields["parameters"]).num_ctx == 64


def test_group_size_fits_the_head_width():
    assert [group_size_for(d, 8) for d in (64, 128, 256, 32, 96, None)] == [64, 64, 64, 32, 32, 64]
    assert [group_size_for(d, 4) for d in (64, 128, 32, 96, None)] == [32, 32, 32, 32, 32]
    assert group_size_for(16) is None  # MLX quantizes groups of 32, 64 or 128 only


# --- the batched cache on its own ----------------------------------------------------------------


def filled(length: int, seed: int, bits: int = 8, group_size: int = 32) -> tuple[QuantizedKVCache, mx.array]:
    mx.random.seed(seed)
    keys = mx.random.normal((1, 2, length, 32))
    cache = QuantizedKVCache(group_size, bits)
    if length:
        cache.update_and_fetch(keys, keys * 2)
    return cache, keys


def dequantized(parts, bits=8, group_size=32) -> mx.array:
    return mx.dequantize(*parts, group_size=group_size, bits=bits)


def test_merge_then_extract_gives_each_sequence_back():
    caches = [filled(n, seed) for seed, n in enumerate((5, 0, 9, 1))]
    batch = QuantizedKVCache.merge([c for c, _ in caches])
    assert isinstance(batch, BatchQuantizedKVCache) and (batch.bits, batch.group_size) == (8, 32)
    assert batch.size() == 9 and batch.left_padding.tolist() == [4, 9, 0, 8]
    assert batch.offset.tolist() == [5, 0, 9, 1]
    for i, (c, _) in enumerate(caches):
        out = batch.extract(i)
        assert type(out) is QuantizedKVCache and out.size() == c.size()
        if c.size():
            assert mx.array_equal(dequantized(out.keys), dequantized(c.keys_and_values()[0]))
            assert mx.array_equal(dequantized(out.values), dequantized(c.keys_and_values()[1]))


def test_quantization_error_is_small():
    (cache8, keys), (cache4, _) = filled(7, 1, bits=8), filled(7, 1, bits=4)
    assert mx.abs(dequantized(cache8.keys_and_values()[0]) - keys).max().item() < 0.05
    assert mx.abs(dequantized(cache4.keys_and_values()[0], bits=4) - keys).max().item() < 0.8


def test_filter_extend_and_trim_keep_rows_aligned():
    a = QuantizedKVCache.merge([filled(3, 0)[0], filled(6, 1)[0]])
    b = QuantizedKVCache.merge([filled(8, 2)[0]])
    a.extend(b)
    assert a.size() == 8 and a.left_padding.tolist() == [5, 2, 0] and a.offset.tolist() == [3, 6, 8]
    expected = dequantized(filled(6, 1)[0].keys_and_values()[0])
    assert mx.array_equal(dequantized(a.extract(1).keys), expected)
    a.filter([0, 1])  # the longest left: two columns of padding nobody needs go with it
    assert a.size() == 6 and a.left_padding.tolist() == [3, 0] and a.offset.tolist() == [3, 6]
    assert mx.array_equal(dequantized(a.extract(1).keys), expected)
    assert a.trim(2) == 2 and a.offset.tolist() == [1, 4]
    assert mx.array_equal(dequantized(a.extract(1).keys), expected[..., :4, :])


def test_mlx_lm_quantized_caches_become_mergeable():
    plain = mlx_cache.QuantizedKVCache(32, 8)
    plain.update_and_fetch(mx.ones((1, 2, 3, 32)), mx.ones((1, 2, 3, 32)))
    (own,) = batchable([plain])
    assert type(own) is QuantizedKVCache and own.size() == 3 and hasattr(own, "merge")


# --- the engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    # hidden 128 over 4 heads: 32-wide heads (the tiny default's 16 cannot be quantized by MLX)
    return build_tiny_llama(tmp_path_factory.mktemp("kv-llama"), hidden=128)


@pytest.fixture(scope="module")
def engines(llama_dir):
    made = {kind: LoadedLLM(llama_dir, EngineSettings(num_parallel=4, kv_cache_type=kind)) for kind in KINDS}
    yield made
    for llm in made.values():
        llm.close()


KINDS = ("f16", "q8_0", "q4_0")


def run_jobs(llm: LoadedLLM, specs: list[tuple[PromptSpec, Options]], late: list | None = None):
    """Admit, step until idle (admitting `late` jobs after two steps): (text, logprobs, done) each."""

    async def main():
        jobs = [GenerationJob(p, o, logprobs=True) for p, o in specs]
        later = [GenerationJob(p, o, logprobs=True) for p, o in late or ()]
        for job in jobs:
            llm.admit(job)
        steps = 0
        peak = 0
        while llm.busy:
            llm.step()
            steps += 1
            peak = max(peak, llm.decoding)
            if steps == 2:
                for job in later:
                    llm.admit(job)
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        out = []
        for job in jobs + later:
            text, lps, done = [], [], None
            while not job.events.empty():
                event = job.events.get_nowait()
                if isinstance(event, TextEvent):
                    text.append(event.text)
                    lps += [lp["logprob"] for lp in event.logprobs or ()]
                else:
                    done = event
            assert isinstance(done, DoneEvent), done
            out.append(("".join(text), lps, done))
        return out, peak

    return asyncio.run(main())


def greedy(n: int, **kw) -> Options:
    return Options(temperature=0.0, repeat_penalty=1.0, num_predict=n, **kw)


PROMPTS = ["Paris is the capital", "def add(a, b):", "The quick brown fox jumps over", "Hi"]


def test_quantized_caches_are_what_the_engine_uses(engines):
    assert engines["f16"].kv_cache_type == "f16"
    for kind, bits in (("q8_0", 8), ("q4_0", 4)):
        llm = engines[kind]
        caches = mlx_cache.make_prompt_cache(llm.model)
        assert all(type(c) is QuantizedKVCache and c.bits == bits and c.group_size == 32 for c in caches)
        assert llm.batchable  # they merge, so they batch


def test_quantized_requests_batch_together_and_agree_with_f16(engines):
    """Four greedy requests decode in one batch (plus one joining late, which extends it); each
    answer is the one the same cache type gives alone. Against f16 on this random model (whose
    near-uniform logits make it a harsh judge; the real-model agreement is in
    tests/e2e/test_kv_cache_type.py): q8_0 answers start with the same 8 tokens, and while answers
    agree their log-probabilities differ by < 0.1 (q8_0) and < 0.5 (q4_0)."""
    specs = [(PromptSpec(raw_prompt=p, return_context=True), greedy(12 + 3 * i)) for i, p in enumerate(PROMPTS)]
    late = [(PromptSpec(raw_prompt="Once upon a time", return_context=True), greedy(10))]
    answers = {}
    for kind in KINDS:
        llm = engines[kind]
        together, peak = run_jobs(llm, specs, late)
        assert peak >= 4, f"{kind}: at most {peak} sequences decoded together"
        alone = [run_jobs(llm, [s])[0][0] for s in specs + late]
        assert [d.context for _, _, d in together] == [d.context for _, _, d in alone]
        for (_, lp_t, _), (_, lp_a, _) in zip(together, alone):
            assert lp_t == pytest.approx(lp_a, abs=1e-3)
        assert [d.eval_count for _, _, d in together] == [12, 15, 18, 21, 10]
        answers[kind] = [(d.context[d.prompt_eval_count :], lps) for _, lps, d in together]

    for kind, tolerance in (("q8_0", 0.1), ("q4_0", 0.5)):
        for (tokens, lps), (ref_tokens, ref_lps) in zip(answers[kind], answers["f16"]):
            same = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), len(tokens))
            assert lps[:same] == pytest.approx(ref_lps[:same], abs=tolerance)
            if kind == "q8_0":
                assert same >= 8


def test_the_prompt_cache_reuses_quantized_caches(engines):
    llm = engines["q8_0"]
    spec = PromptSpec(raw_prompt="A long shared prefix, then a question", return_context=True)
    ((_, first_lps, first),), _ = run_jobs(llm, [(spec, greedy(8))])
    stored, rest = llm.prompt_cache.fetch_nearest_cache(llm.model_key, first.context)
    assert rest == [] and all(type(c) is QuantizedKVCache for c in stored)
    assert stored[0].size() >= len(first.context) - 1
    # a follow-up that extends the conversation starts from the cached prefix, and the repeat
    # of the first request (served from the cache) answers exactly as before
    uid, cached = llm._enqueue(first.context + [5, 6, 7], 2, None, [], llm.stop_sequences)
    assert cached >= len(first.context) - 1
    llm.batch.remove([uid])
    ((_, again_lps, again),), _ = run_jobs(llm, [(spec, greedy(8))])
    assert again.context == first.context
    assert again_lps == pytest.approx(first_lps, abs=1e-3)


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_context_shift_works_with_quantized_caches(engines, kind):
    """A sequence that fills its window shifts (its cache is rebuilt from the kept tokens) and goes
    on, inside a batch with a neighbour that does not shift."""
    llm = engines[kind]
    shifting = (PromptSpec(raw_prompt="Paris is the capital", return_context=True), greedy(40, num_ctx=24))
    neighbour = (PromptSpec(raw_prompt="def add(a, b):"), greedy(30))
    (out, other), _ = run_jobs(llm, [shifting, neighbour])
    assert (out[2].eval_count, out[2].done_reason, other[2].eval_count) == (40, "length", 30)
    assert len(out[2].context) == out[2].prompt_eval_count + 40
    ((alone_text, _, _),), _ = run_jobs(llm, [shifting])
    assert out[0] == alone_text


def test_sliding_window_layers_stay_unquantized(tmp_path):
    # gemma3: five sliding-window layers (RotatingKVCache) and one global layer, 64-wide heads
    model_dir = build_hf_checkpoint(tmp_path / "gemma3", "gemma3", dtype="float32")
    llm = LoadedLLM(model_dir, EngineSettings(num_parallel=2, kv_cache_type="q4_0"))
    try:
        kinds = [type(c).__name__ for c in mlx_cache.make_prompt_cache(llm.model)]
        assert kinds.count("RotatingKVCache") == 5 and kinds.count("QuantizedKVCache") == 1
        caches = mlx_cache.make_prompt_cache(llm.model)
        assert next(c for c in caches if isinstance(c, QuantizedKVCache)).group_size == 32  # q4_0: GGML's block
        specs = [(PromptSpec(raw_prompt=p), greedy(12, num_ctx=16)) for p in PROMPTS[:2]]
        results, peak = run_jobs(llm, specs)
        assert peak == 2 and [d.eval_count for _, _, d in results] == [12, 12]
    finally:
        llm.close()


def test_heads_too_narrow_to_quantize_keep_f16(tmp_path, caplog):
    model_dir = build_tiny_llama(tmp_path / "narrow")  # 16-wide heads
    with caplog.at_level(logging.WARNING, logger="mlxollama.engine"):
        llm = LoadedLLM(model_dir, EngineSettings(kv_cache_type="q8_0"))
    try:
        assert llm.kv_cache_type == "f16" and "cannot be quantized" in caplog.text
        assert make_cache_factory(llm.model, "q8_0") is None
        assert type(mlx_cache.make_prompt_cache(llm.model)[0]) is mlx_cache.KVCache
    finally:
        llm.close()


def test_quantized_caches_take_less_memory(engines):
    sizes = {}
    for kind in KINDS:
        llm = engines[kind]
        ((_, _, done),), _ = run_jobs(llm, [(PromptSpec(raw_prompt="x " * 200, return_context=True), greedy(4))])
        cache, _ = llm.prompt_cache.fetch_nearest_cache(llm.model_key, done.context)
        sizes[kind] = sum(c.nbytes for c in cache) / cache[0].size()
        assert llm.memory_bytes(4096) > llm.weights_bytes
    # float32 on the CPU: 4 bytes an element; 8 bits + a float32 scale and bias per 32 → 1.25; 4 bits → 0.75
    assert sizes["q8_0"] / sizes["f16"] == pytest.approx(1.25 / 4, rel=0.02)
    assert sizes["q4_0"] / sizes["f16"] == pytest.approx(0.75 / 4, rel=0.02)
    assert engines["q4_0"].memory_bytes(4096) < engines["q8_0"].memory_bytes(4096) < engines["f16"].memory_bytes(4096)
