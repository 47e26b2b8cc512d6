"""Long conversations: the default window Ollama sizes from memory, and context shift when a
generation fills its window (Ollama's runner: keep num_keep tokens, drop the oldest half of the
rest, go on), inside the continuous batch and for sliding-window (rotating) caches."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import os
import subprocess
import sys

import httpx
import mlx.core as mx
import pytest

from mlxollama.config import GIB
from mlxollama.engine.jobs import DoneEvent, GenerationJob, PromptSpec, TextEvent
from mlxollama.engine.llm import LoadedLLM, shifted_window
from mlxollama.options import Options

from ..support.liveserver import LiveServer
from ..support.tinyhf import build_hf_checkpoint
from ..support.tinymodels import build_tiny_llama

TINY = "tiny:latest"


def generate(url: str, prompt: str, **body) -> dict:
    options = {"temperature": 0, **body.pop("options", {})}
    r = httpx.post(
        url + "/api/generate",
        json={"model": TINY, "prompt": prompt, "stream": False, "options": options, **body},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return r.json()


# --- through the server -------------------------------------------------------------------------


def test_a_generation_longer_than_the_window_keeps_going(server):
    out = generate(server.url, "Hello", options={"num_ctx": 32, "num_predict": 100})
    assert out["prompt_eval_count"] < 32
    # 100 tokens through a 32-token window: it shifted several times and stopped at num_predict
    assert (out["eval_count"], out["done_reason"]) == (100, "length")
    assert len(out["context"]) == out["prompt_eval_count"] + 100


def test_without_shift_a_full_window_ends_the_answer(server):
    out = generate(server.url, "Hello", shift=False, options={"num_ctx": 32, "num_predict": 100})
    assert out["done_reason"] == "length"
    assert out["eval_count"] == 32 - out["prompt_eval_count"]


def test_a_chat_longer_than_the_window_keeps_answering(server):
    messages = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once upon a time."},
        {"role": "user", "content": "Go on, and make it long."},
    ]
    body = {
        "model": TINY,
        "messages": messages,
        "stream": False,
        "options": {"temperature": 0, "num_ctx": 64, "num_predict": 150},
    }
    long = httpx.post(server.url + "/api/chat", json=body, timeout=300).json()
    assert long["prompt_eval_count"] < 64
    assert (long["eval_count"], long["done_reason"]) == (150, "length")
    cut = httpx.post(server.url + "/api/chat", json={**body, "shift": False}, timeout=300).json()
    assert (cut["eval_count"], cut["done_reason"]) == (64 - cut["prompt_eval_count"], "length")
    # the shifted answer starts as the cut one does: the shift only changes what comes after
    assert long["message"]["content"].startswith(cut["message"]["content"])


def test_open_ended_generation_stops_after_ten_windows(server):
    """num_predict -1 with a model that never ends: Ollama bounds it at 10 x num_ctx."""
    out = generate(server.url, "Hi", options={"num_ctx": 16, "num_predict": -1})
    assert (out["eval_count"], out["done_reason"]) == (160, "length")
    capped = generate(server.url, "Hi", options={"num_ctx": 16, "num_predict": 1000})
    assert capped["eval_count"] == 160


def test_a_prompt_longer_than_the_window_is_truncated_or_refused(server):
    prompt = "The quick brown fox jumps over the lazy dog. " * 20
    out = generate(server.url, prompt, raw=True, options={"num_ctx": 32, "num_predict": 40})
    assert out["prompt_eval_count"] == 31 and out["eval_count"] == 40
    r = httpx.post(
        server.url + "/api/generate",
        json={
            "model": TINY,
            "prompt": prompt,
            "raw": True,
            "stream": False,
            "truncate": False,
            "options": {"num_ctx": 32},
        },
        timeout=60,
    )
    assert r.status_code == 400
    assert r.json() == {"error": "the input length exceeds the context length"}


def test_shifting_sequences_share_the_batch_with_others(server):
    """Sequences that shift leave the batch and come back while others keep decoding; every
    greedy answer is the one it gives alone."""
    requests = [
        ("a story about cats", {"options": {"num_ctx": 32, "num_predict": 90}}),
        ("a story about dogs", {"options": {"num_ctx": 48, "num_predict": 120, "num_keep": 0}}),
        ("a story about birds", {"shift": False, "options": {"num_ctx": 32, "num_predict": 90}}),
        ("a story about fish", {"options": {"num_predict": 60}}),
        ("a story about bees", {"options": {"num_ctx": 24, "num_predict": 70, "num_keep": -1}}),
    ]

    def run(item):
        prompt, body = item
        out = generate(server.url, prompt, **body)
        return out["response"], out["eval_count"], out["done_reason"]

    alone = [run(item) for item in requests]
    with cf.ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(run, requests))
    assert together == alone
    counts = [count for _, count, _ in alone]
    assert counts[0] == 90 and counts[1] == 120 and counts[3] == 60 and counts[4] == 70
    assert counts[2] < 32  # no shift: ended at its window


# --- the default window, sized from a stated memory figure -------------------------------------


@pytest.fixture(scope="module")
def big_memory_server(models_dir, tmp_path_factory):
    # A 48 GiB machine (Ollama's top tier), stated instead of measured; no OLLAMA_CONTEXT_LENGTH.
    env = {"MLXOLLAMA_BACKEND_MEMORY": str(48 * GIB), "OLLAMA_CONTEXT_LENGTH": ""}
    srv = LiveServer(models_dir, tmp_path_factory.mktemp("logs-bigmem") / "server.log", env=env)
    yield srv
    srv.stop()


def test_ps_reports_the_window_sized_from_memory_capped_by_the_model(big_memory_server):
    url = big_memory_server.url
    for name in ("tiny-long:latest", TINY):  # trained windows: 1M tokens and 2048
        r = httpx.post(url + "/api/generate", json={"model": name, "keep_alive": -1}, timeout=120)
        assert r.status_code == 200 and r.json()["done_reason"] == "load"
    loaded = {m["name"]: m for m in httpx.get(url + "/api/ps", timeout=30).json()["models"]}
    assert loaded["tiny-long:latest"]["context_length"] == 262144
    assert loaded[TINY]["context_length"] == 2048  # the tier, capped at what the model was trained on
    shown = httpx.post(url + "/api/show", json={"model": TINY}, timeout=30).json()
    assert shown["model_info"]["llama.context_length"] == 2048
    # a request without num_ctx runs with the default window: a prompt longer than 4096 fits whole
    prompt = "The quick brown fox jumps over the lazy dog. " * 250  # about 4250 tokens
    r = httpx.post(
        url + "/api/generate",
        json={
            "model": "tiny-long",
            "prompt": prompt,
            "raw": True,
            "stream": False,
            "truncate": False,
            "options": {"num_predict": 1},
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] > 4096
    # `mlxollama ps` shows it in its CONTEXT column, as `ollama ps` does
    cli = subprocess.run(
        [sys.executable, "-m", "mlxollama.cli", "ps"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OLLAMA_HOST": url.removeprefix("http://")},
    )
    assert cli.returncode == 0, cli.stderr
    header, *rows = cli.stdout.splitlines()
    column = header.index("CONTEXT")
    contexts = {row.split()[0]: row[column:].split()[0] for row in rows}
    assert contexts == {"tiny-long:latest": "262144", TINY: "2048"}


# --- inside the engine: what a shifted sequence computes -----------------------------------------


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("shift-llama"))


@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory):
    # gemma3: five sliding-window layers (RotatingKVCache, window 4) and one global layer
    return build_hf_checkpoint(tmp_path_factory.mktemp("shift-gemma3"), "gemma3", dtype="float32")


def run_jobs(llm: LoadedLLM, jobs_spec: list[tuple[PromptSpec, Options]], logprobs: bool = False):
    """Drive the engine as its thread does: admit, step until idle; (text, logprobs, done) per job."""

    async def main():
        jobs = [GenerationJob(p, o, logprobs=logprobs) for p, o in jobs_spec]
        for job in jobs:
            llm.admit(job)
        while llm.busy:
            llm.step()
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        results = []
        for job in jobs:
            text, lps, done = [], [], None
            while not job.events.empty():
                event = job.events.get_nowait()
                if isinstance(event, TextEvent):
                    text.append(event.text)
                    lps += event.logprobs or []
                else:
                    done = event
            assert isinstance(done, DoneEvent), done
            results.append(("".join(text), [lp["logprob"] for lp in lps], done))
        return results

    return asyncio.run(main())


def reference_logprobs(model, window: list[int], continuation: list[int]) -> list[float]:
    """Log-probabilities of `continuation` after `window` from one whole-sequence forward pass, no
    cache: what a sequence that really holds `window` must report."""
    logits = model(mx.array([window + continuation]))[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    rows = logprobs[len(window) - 1 : -1]
    return rows[mx.arange(len(continuation)), mx.array(continuation)].tolist()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("batched", [True, False], ids=["batch", "alone"])
def test_after_a_shift_the_model_sees_exactly_the_kept_tokens(arch, batched, request):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    llm = LoadedLLM(model_dir)
    llm.batchable = llm.batchable and batched  # the one-at-a-time path serves models that cannot batch
    try:
        num_ctx, num_keep, n = 24, 4, 40
        # sampled hot, not greedy: tiny random models fall into loops where dropped tokens hardly matter
        sampling = dict(temperature=4.0, top_k=0, top_p=1.0, repeat_penalty=1.0, seed=3)
        opts = Options(**sampling, num_ctx=num_ctx, num_keep=num_keep, num_predict=n)
        other = Options(**sampling, num_predict=n)  # a neighbour in the batch that does not shift
        jobs = [
            (PromptSpec(raw_prompt="Paris is the capital", return_context=True), opts),
            (PromptSpec(raw_prompt="def add(a, b):", return_context=True), other),
        ]
        (_, logprobs, done), (_, _, other_done) = run_jobs(llm, jobs, logprobs=True)
        assert (done.eval_count, done.done_reason, other_done.eval_count) == (n, "length", n)
        tokens, p = done.context, done.prompt_eval_count
        # first window: the prompt, then what the model says until the window is full
        first = reference_logprobs(llm.model, tokens[:p], tokens[p:num_ctx])
        # second window: num_keep tokens plus the newer half, then on until the next shift
        kept = shifted_window(tokens[:num_ctx], num_keep, num_ctx)
        assert kept == tokens[:num_keep] + tokens[num_ctx - (num_ctx - num_keep) // 2 : num_ctx]
        after = tokens[num_ctx : 2 * num_ctx - len(kept)]
        second = reference_logprobs(llm.model, kept, after)
        assert logprobs[: len(first) + len(second)] == pytest.approx(first + second, abs=2e-3)
        # had the model still seen the dropped tokens, it would have reported something else
        unshifted = reference_logprobs(llm.model, tokens[:num_ctx], after)
        assert max(abs(a - b) for a, b in zip(unshifted, second)) > 0.05
    finally:
        llm.close()


def test_a_grammar_survives_a_shift(tiny_llama_dir):
    """A JSON schema goes on from where it was across shifts: a 60-character string forces an
    answer several windows long, which ends as valid JSON holding exactly 60 characters (a grammar
    that took the last kept token twice would lose count or fail)."""
    import json

    from mlxollama.engine.structured import format_grammar

    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "minLength": 60, "maxLength": 60}},
        "required": ["a"],
    }
    llm = LoadedLLM(tiny_llama_dir)
    try:
        spec = PromptSpec(raw_prompt="Give JSON:", grammar=format_grammar(schema))
        for batchable in (True, False):
            llm.batchable = batchable
            opts = Options(temperature=0.0, num_ctx=16, num_predict=300)
            ((text, _, done),) = run_jobs(llm, [(spec, opts)])
            assert done.done_reason == "stop" and done.eval_count > 16
            assert len(json.loads(text)["a"]) == 60
    finally:
        llm.close()


def test_a_large_window_costs_no_memory_until_used(tiny_llama_dir):
    """MLX caches grow as tokens arrive: an idle model, and one that answered a short request,
    hold the same memory whether the window is 4096 or 262144 tokens."""

    def active() -> int:
        gc.collect()
        mx.clear_cache()
        return mx.get_active_memory()

    def measure(num_ctx: int) -> tuple[int, int, int]:
        """(loaded model, what a short request left behind, a whole window's KV cache) in bytes."""
        before = active()
        llm = LoadedLLM(tiny_llama_dir)
        try:
            idle = active()
            run_jobs(
                llm, [(PromptSpec(raw_prompt="Hello world"), Options(temperature=0.0, num_ctx=num_ctx, num_predict=8))]
            )
            return idle - before, active() - idle, llm.memory_bytes(num_ctx) - llm.weights_bytes
        finally:
            llm.close()

    idle_small, used_small, _ = measure(4096)
    idle_large, used_large, full_window = measure(262144)
    # the same to within a few small arrays MLX keeps for itself (a window would be 134 MB)
    assert abs(idle_large - idle_small) < 1024
    assert abs(used_large - used_small) < 1024
    assert 0 < used_large < full_window // 100  # the few tokens used, not a window allocated up front
