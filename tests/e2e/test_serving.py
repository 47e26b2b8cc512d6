"""Serving under concurrency: continuous batching, prompt cache, queue limits, cancellation."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import httpx
import pytest

from ..support.liveserver import LiveServer

TINY = "tiny:latest"
PROMPTS = [
    f"request number {i}: tell me about {w}"
    for i, w in enumerate(["cats", "the sea", "rust", "python code", "mountains", "jazz", "bread", "stars"])
]


def generate(url: str, prompt: str, **options) -> dict:
    body = {
        "model": TINY,
        "prompt": prompt,
        "stream": False,
        "options": {"temperature": 0, "num_predict": 16, **options},
    }
    r = httpx.post(url + "/api/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_concurrent_greedy_requests_match_solo_runs(server):
    alone = [generate(server.url, p)["response"] for p in PROMPTS]
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: generate(server.url, p)["response"], PROMPTS))
    assert together == alone
    assert len(set(alone)) > 1  # different prompts really gave different answers


def test_concurrent_seeded_sampling_is_reproducible(server):
    opts = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 7}
    alone = generate(server.url, PROMPTS[0], **opts)["response"]
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(generate, server.url, PROMPTS[0], **opts)] + [
            pool.submit(generate, server.url, p, temperature=1.0, top_k=0, top_p=1.0) for p in PROMPTS[1:4]
        ]
        results = [f.result()["response"] for f in futures]
    assert results[0] == alone


def test_prompt_cache_reuse_keeps_greedy_output_and_counts(server):
    system = "You are a careful assistant. " * 30
    history = [{"role": "system", "content": system}, {"role": "user", "content": "first question"}]
    body = {"model": TINY, "messages": history, "stream": False, "options": {"temperature": 0, "num_predict": 8}}
    first = httpx.post(server.url + "/api/chat", json=body, timeout=300).json()
    again = httpx.post(server.url + "/api/chat", json=body, timeout=300).json()
    assert again["message"]["content"] == first["message"]["content"]
    # cached tokens still count as prompt tokens, as in Ollama
    assert again["prompt_eval_count"] == first["prompt_eval_count"]
    follow = history + [first["message"], {"role": "user", "content": "second question"}]
    turn2 = httpx.post(server.url + "/api/chat", json={**body, "messages": follow}, timeout=300).json()
    assert turn2["prompt_eval_count"] > first["prompt_eval_count"]


def test_prompt_cache_never_leaks_between_concurrent_requests(server):
    shared = "Shared prefix that every request starts with. " * 10
    prompts = [shared + f"then variant {i} with {w}" for i, w in enumerate(["apples", "bees", "clouds", "dunes"])]
    alone = [generate(server.url, p, num_predict=12)["response"] for p in prompts]
    for _ in range(2):
        with cf.ThreadPoolExecutor(4) as pool:
            assert list(pool.map(lambda p: generate(server.url, p, num_predict=12)["response"], prompts)) == alone


def test_logprobs(server):
    r = httpx.post(
        server.url + "/api/generate",
        json={
            "model": TINY,
            "prompt": "hello",
            "stream": False,
            "logprobs": True,
            "top_logprobs": 3,
            "options": {"temperature": 0, "num_predict": 4},
        },
        timeout=120,
    ).json()
    assert len(r["logprobs"]) == 4
    for entry in r["logprobs"]:
        assert entry["logprob"] <= 0 and isinstance(entry["bytes"], list)
        alts = entry["top_logprobs"]
        assert len(alts) == 3 and alts[0]["logprob"] >= alts[-1]["logprob"]
        # greedy: the chosen token is the most likely one
        assert entry["token"] == alts[0]["token"]
    # token bytes joined are exactly the response, even where a token holds part of a character
    assert b"".join(bytes(e["bytes"]) for e in r["logprobs"]).decode("utf-8", errors="replace") == r["response"]


def test_disconnect_frees_the_slot_for_the_next_request(server):
    body = {"model": TINY, "prompt": "endless", "options": {"num_predict": 1_000_000, "num_ctx": 2048}}
    for _ in range(3):  # abandon several long streams: none may keep running
        with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
            next(r.iter_lines())
    quick = generate(server.url, "short", num_predict=2)
    assert quick["eval_count"] == 2
    # the abandoned generations stopped: a full-context run takes far longer than this one did
    t = time.perf_counter()
    generate(server.url, "short again", num_predict=2)
    solo = time.perf_counter() - t
    t = time.perf_counter()
    long = generate(server.url, "long", num_predict=512)
    assert long["eval_count"] == 512
    assert time.perf_counter() - t > solo


@pytest.fixture(scope="module")
def small_queue_server(models_dir, tmp_path_factory):
    srv = LiveServer(
        models_dir,
        tmp_path_factory.mktemp("logs-q") / "server.log",
        env={"OLLAMA_MAX_QUEUE": "1", "OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_NUM_PARALLEL": "2"},
    )
    yield srv
    srv.stop()


def test_queue_full_returns_503(small_queue_server):
    """OLLAMA_MAX_QUEUE counts requests waiting for a model, as Ollama's does (the one being
    placed plus that many behind it); running requests do not count."""
    url = small_queue_server.url
    body = {"model": "tiny-long", "prompt": "busy", "options": {"num_predict": 1 << 19, "num_ctx": 1 << 20}}
    quick = {"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    started = threading.Barrier(3)
    stop = threading.Event()

    def hold_a_slot():
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next(lines)
            started.wait()
            for _ in lines:  # keep reading, as a real client does, until told to leave
                if stop.is_set():
                    return

    # Two running streams: more than OLLAMA_MAX_QUEUE, and not refused.
    holders = [threading.Thread(target=hold_a_slot) for _ in range(2)]
    for t in holders:
        t.start()
    with cf.ThreadPoolExecutor(2) as pool:
        try:
            started.wait(timeout=60)
            # With one model allowed and tiny-long busy, requests for tiny wait: one being
            # placed and one queued fit, a third is refused.
            waiting = [pool.submit(httpx.post, url + "/api/generate", json=quick, timeout=120) for _ in range(2)]
            time.sleep(1.5)
            assert not any(f.done() for f in waiting)
            r = httpx.post(url + "/api/generate", json=quick, timeout=60)
            assert r.status_code == 503
            assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
        finally:
            stop.set()
            for t in holders:
                t.join(60)
        # once the streams are gone, tiny-long is evicted and the waiting requests are served
        assert [f.result().status_code for f in waiting] == [200, 200]
    r = httpx.post(url + "/api/generate", json=quick, timeout=60)
    assert r.status_code == 200


@pytest.fixture(scope="module")
def tight_memory_server(models_dir, tmp_path_factory):
    # A one-byte budget: any second model must push out the idle first one.
    srv = LiveServer(
        models_dir, tmp_path_factory.mktemp("logs-mem") / "server.log", env={"MLXOLLAMA_MEMORY_BUDGET": "1"}
    )
    yield srv
    srv.stop()


def test_loading_over_the_memory_budget_evicts_the_idle_model(tight_memory_server):
    url = tight_memory_server.url

    def loaded():
        return [m["name"] for m in httpx.get(url + "/api/ps", timeout=30).json()["models"]]

    assert httpx.post(url + "/api/generate", json={"model": TINY}, timeout=60).json()["done_reason"] == "load"
    assert loaded() == [TINY]
    assert httpx.post(url + "/api/generate", json={"model": "tiny-sys"}, timeout=60).json()["done_reason"] == "load"
    assert loaded() == ["tiny-sys:latest"]
