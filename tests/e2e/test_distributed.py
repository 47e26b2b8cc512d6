"""One model across two local processes with MLX's distributed engine (ring backend on loopback):
a group gives the single-process server's greedy tokens, and survives a rank that dies (issue 18)."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from mlxollama.store import Store

from ..support.distserver import GroupServer, build_odd_head_llama
from ..support.liveserver import LiveServer
from ..support.store import package_tiny
from ..support.tinymodels import build_tiny_llama

TINY = "tiny:latest"  # 4 heads, 2 KV heads: shards by heads over 2 ranks
ODD = "odd:latest"  # 3 heads: shards by layers
LONG = "tiny-long:latest"  # a huge window: a generation that runs until stopped
PROMPTS = ["Why is the sky blue?", "Paris is the capital of", "def add(a, b):", "Hello world! 12345"]
GREEDY = {"temperature": 0, "num_predict": 10}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "models"
    store = Store(root)
    tiny = build_tiny_llama(tmp_path_factory.mktemp("tiny"))
    package_tiny(store, TINY, tiny)
    package_tiny(store, LONG, tiny, context_length=1 << 20)
    package_tiny(store, ODD, build_odd_head_llama(tmp_path_factory.mktemp("odd")))
    return root


@pytest.fixture(scope="module")
def single(models, tmp_path_factory):
    srv = LiveServer(models, tmp_path_factory.mktemp("single") / "server.log")
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c
    srv.stop()


@pytest.fixture(scope="module")
def tensor(models, tmp_path_factory):
    """Started the way a user starts it: mlxollama serve --hostfile hosts.json (mlx.launch underneath)."""
    group = GroupServer(
        models, tmp_path_factory.mktemp("tensor"), env={"MLXOLLAMA_DISTRIBUTED": "tensor"}, launcher="mlx.launch"
    )
    try:
        with httpx.Client(base_url=group.url, timeout=60) as c:
            yield c
    finally:
        group.stop()


def generate(client, model, prompt, **extra):
    body = {"model": model, "prompt": prompt, "stream": False, "options": dict(GREEDY), **extra}
    r = client.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def chat_stream(client, model, prompt, **extra) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "options": dict(GREEDY), **extra}
    text = []
    with client.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            chunk = json.loads(line)
            assert "error" not in chunk, chunk
            text.append(chunk["message"]["content"])
    assert chunk["done"]
    return "".join(text)


def test_tensor_parallel_generate_matches_one_process(tensor, single):
    got = generate(tensor, TINY, PROMPTS[0], logprobs=True)
    want = generate(single, TINY, PROMPTS[0], logprobs=True)
    assert got["context"] == want["context"] and got["response"] == want["response"]
    for a, b in zip(got["logprobs"], want["logprobs"]):
        assert a["token"] == b["token"] and a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)
    ps = tensor.get("/api/ps").json()["models"]
    assert ps[0]["distributed"] == {"ranks": 2, "mode": "tensor", "status": "up"}


def test_tensor_parallel_streamed_chat_matches(tensor, single):
    assert chat_stream(tensor, TINY, PROMPTS[1]) == chat_stream(single, TINY, PROMPTS[1])


def test_four_concurrent_streams_match(tensor, single):
    want = [chat_stream(single, TINY, p) for p in PROMPTS]
    got = [None] * len(PROMPTS)

    def run(i):
        got[i] = chat_stream(tensor, TINY, PROMPTS[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want


def test_json_schema_format_matches(tensor, single):
    got = generate(tensor, TINY, "Give me a", format=SCHEMA, options={"temperature": 0, "num_predict": 12})
    want = generate(single, TINY, "Give me a", format=SCHEMA, options={"temperature": 0, "num_predict": 12})
    assert got["response"] == want["response"]
    if got["done_reason"] == "stop":
        assert isinstance(json.loads(got["response"])["a"], int)


def test_context_shift_and_prompt_cache_stay_in_step(tensor, single):
    """A full window re-admits the sequence with its kept tokens on every rank; a repeated prompt
    starts from the prompt cache on every rank."""
    options = {"temperature": 0, "num_ctx": 32, "num_predict": 80}
    got = generate(tensor, TINY, PROMPTS[1], options=options)
    assert got["eval_count"] == 80
    assert got["context"] == generate(single, TINY, PROMPTS[1], options=options)["context"]
    again = generate(tensor, TINY, PROMPTS[1], options=options)
    assert again["context"] == got["context"]


def test_cancelled_stream_leaves_the_group_in_step(tensor, single):
    # One sharded model at a time: the tiny model, asked for far more tokens than the test reads.
    body = {"model": TINY, "prompt": PROMPTS[2], "options": {"temperature": 0, "num_predict": 1500}}
    with tensor.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        for n, line in enumerate(r.iter_lines()):
            assert not json.loads(line)["done"]
            if n == 3:
                break  # the client goes away mid-generation
    # The sequence leaves the batch on every rank; the next requests still match.
    assert chat_stream(tensor, TINY, PROMPTS[3]) == chat_stream(single, TINY, PROMPTS[3])
    assert generate(tensor, TINY, PROMPTS[0])["context"] == generate(single, TINY, PROMPTS[0])["context"]


def test_pipeline_when_heads_do_not_divide(models, single, tmp_path):
    # Plain mlx.launch -n 2 --backend ring mlxollama serve; MLXOLLAMA_DISTRIBUTED unset: the group chooses.
    group = GroupServer(models, tmp_path / "logs", launcher="mlx.launch")
    try:
        with httpx.Client(base_url=group.url, timeout=60) as c:
            assert generate(c, ODD, PROMPTS[0])["context"] == generate(single, ODD, PROMPTS[0])["context"]
            assert chat_stream(c, ODD, PROMPTS[1]) == chat_stream(single, ODD, PROMPTS[1])
            assert c.get("/api/ps").json()["models"][0]["distributed"]["mode"] == "pipeline"
    finally:
        group.stop()


def test_smollm2_pipeline_matches_one_process(models_dir, smollm, server, tmp_path):
    """The real SmolLM2: 9 heads (no tensor split over 2), 30 layers (15 a rank)."""
    group = GroupServer(models_dir, tmp_path / "logs")
    body = {"model": smollm, "prompt": PROMPTS[0], "stream": False, "options": {"temperature": 0, "num_predict": 3}}
    try:
        with httpx.Client(base_url=group.url, timeout=120) as c:
            got = c.post("/api/generate", json=body).json()
            assert c.get("/api/ps").json()["models"][0]["distributed"]["mode"] == "pipeline"
    finally:
        group.stop()
    want = httpx.post(server.url + "/api/generate", json=body, timeout=120).json()
    assert got["context"] == want["context"] and got["response"] == want["response"]


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["dies", "hangs"])
def test_a_failed_rank_fails_the_request_and_rank_0_keeps_answering(models, tmp_path, fault):
    """A rank that dies breaks the ring's sockets at once; one that hangs is caught by the watchdog."""
    group = GroupServer(models, tmp_path / "logs", env={"MLXOLLAMA_DISTRIBUTED_TIMEOUT": "3"})
    try:
        with httpx.Client(base_url=group.url, timeout=30) as c:
            body = {"model": LONG, "prompt": PROMPTS[0], "options": {"temperature": 0, "num_predict": 100000}}
            lines = []
            with c.stream("POST", "/api/generate", json=body) as r:
                for line in r.iter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 3:
                        group.signal_rank(1, fault)
                        killed = time.monotonic()
                    if "error" in lines[-1] or lines[-1].get("done"):
                        break
            assert "distributed group is down" in lines[-1].get("error", ""), lines[-1]
            assert time.monotonic() - killed < 20
            assert c.get("/api/tags").status_code == 200
            entry = next(m for m in c.get("/api/ps").json()["models"] if m["name"] == LONG)
            assert entry["distributed"]["status"] == "down" and entry["distributed"]["error"]
            r = c.post("/api/generate", json=dict(body, stream=False))
            assert r.status_code == 503 and "distributed group is down" in r.json()["error"]
            for internals in ("[ring]", "Traceback", "RuntimeError", ".py"):
                assert internals not in r.json()["error"] and internals not in lines[-1]["error"]
        assert "distributed group is down" in (group.log_dir / "rank0.log").read_text()
    finally:
        group.stop()
