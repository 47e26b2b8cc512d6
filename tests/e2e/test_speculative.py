"""Speculative decoding with a DRAFT model (engine/speculative.py): created through /api/create and
the CLI's Modelfile, shown by /api/show and /api/ps, and greedy output identical to decoding
without the draft, alone and when a second request joins and the stream moves into the batch."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from mlxollama.engine.jobs import DoneEvent, GenerationJob, PromptSpec, TextEvent
from mlxollama.engine.llm import LoadedLLM
from mlxollama.options import Options
from mlxollama.store import Store

from ..support.store import package_tiny
from ..support.tinymodels import build_tiny_llama

TINY = "tiny:latest"
PROMPTS = ["Why is the sky blue?", "def add(a, b):", "Paris is the capital"]


def post(url: str, path: str, body: dict, timeout: float = 300) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=timeout)


def greedy(url: str, model: str, prompt: str, **options) -> dict:
    r = post(
        url,
        "/api/generate",
        {
            "model": model,
            "prompt": prompt,
            "raw": True,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 40, **options},
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def drafts(server, models_dir, tmp_path_factory) -> dict:
    """Models with a draft: tiny drafting for itself (every draft accepted) and another random
    model with tiny's tokenizer (nearly every draft rejected), plus one with another vocabulary."""
    store = Store(models_dir)
    other = build_tiny_llama(tmp_path_factory.mktemp("tiny-seed1"), seed=1)
    package_tiny(store, "tiny-seed1:latest", other)
    # the same model with two token ids swapped: another vocabulary
    swapped = tmp_path_factory.mktemp("tiny-swapped")
    shutil.copytree(other, swapped, dirs_exist_ok=True)
    tok = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (swapped / "tokenizer.json").write_text(json.dumps(tok))
    package_tiny(store, "tiny-swapped:latest", swapped)
    for name, draft in (("tiny-spec", "tiny"), ("tiny-spec-other", "tiny-seed1")):
        r = post(server.url, "/api/create", {"model": name, "from": TINY, "draft": draft, "stream": False})
        assert r.status_code == 200, r.text
    return {"self": "tiny-spec", "other": "tiny-spec-other"}


def test_draft_round_trips_through_create_and_show(server, drafts):
    shown = post(server.url, "/api/show", {"model": "tiny-spec"}).json()
    assert shown["draft"] == "tiny:latest"
    lines = shown["modelfile"].splitlines()
    assert (
        "DRAFT tiny:latest" in lines
        and lines.index("DRAFT tiny:latest") == lines.index(next(l for l in lines if l.startswith("FROM"))) + 1
    )
    # a model created FROM it keeps the draft; the base model has none
    r = post(server.url, "/api/create", {"model": "tiny-spec-child", "from": "tiny-spec", "stream": False})
    assert r.status_code == 200, r.text
    assert post(server.url, "/api/show", {"model": "tiny-spec-child"}).json()["draft"] == "tiny:latest"
    assert "draft" not in post(server.url, "/api/show", {"model": TINY}).json()
    # the legacy `modelfile` field reads DRAFT too
    r = post(
        server.url, "/api/create", {"model": "tiny-spec-mf", "modelfile": "FROM tiny\nDRAFT tiny\n", "stream": False}
    )
    assert r.status_code == 200, r.text
    assert post(server.url, "/api/show", {"model": "tiny-spec-mf"}).json()["draft"] == "tiny:latest"


def test_create_refuses_a_draft_it_cannot_use(server, drafts):
    def create(draft) -> httpx.Response:
        return post(server.url, "/api/create", {"model": "tiny-bad-draft", "from": TINY, "draft": draft})

    r = create("tiny-missing")
    assert (r.status_code, r.json()) == (400, {"error": "draft model 'tiny-missing' not found"})
    r = create("tiny-swapped")
    assert r.status_code == 400
    assert "does not share this model's vocabulary" in r.json()["error"]
    r = create(7)
    assert r.status_code == 400 and "CreateRequest.draft" in r.json()["error"]
    r = create("tiny-spec")  # drafts do not chain
    assert r.status_code == 400 and "has a draft of its own" in r.json()["error"]
    assert post(server.url, "/api/show", {"model": "tiny-bad-draft"}).status_code == 404


def test_the_cli_creates_a_model_with_a_draft_from_a_modelfile(server, drafts, tmp_path):
    (tmp_path / "Modelfile").write_text("FROM tiny\nDRAFT tiny-seed1\nPARAMETER draft_num_predict 2\n")
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{server.port}", "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "mlxollama.cli", "create", "tiny-spec-cli", "-f", str(tmp_path / "Modelfile")],
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    shown = post(server.url, "/api/show", {"model": "tiny-spec-cli"}).json()
    assert shown["draft"] == "tiny-seed1:latest" and "DRAFT tiny-seed1:latest\n" in shown["modelfile"]
    assert "draft_num_predict" in shown["parameters"]


@pytest.mark.parametrize("which", ["self", "other"])
def test_greedy_text_with_a_draft_equals_greedy_text_without(server, drafts, which):
    model = drafts[which]
    for prompt in PROMPTS:
        plain = greedy(server.url, TINY, prompt)
        for n in (1, 4):
            spec = greedy(server.url, model, prompt, draft_num_predict=n)
            assert (spec["response"], spec["eval_count"]) == (plain["response"], plain["eval_count"])
    # drafting off (Ollama's draft_num_predict 0) decodes in the batch: the same text again
    off = greedy(server.url, model, PROMPTS[0], draft_num_predict=0)
    assert off["response"] == greedy(server.url, TINY, PROMPTS[0])["response"]
    # stop strings and the window shifting mid-answer behave as without a draft
    for options in ({"stop": ["e"]}, {"num_ctx": 24, "num_predict": 60}):
        assert (
            greedy(server.url, model, PROMPTS[1], **options)["response"]
            == (greedy(server.url, TINY, PROMPTS[1], **options)["response"])
        )


def test_logprobs_with_a_draft_are_the_models_own(server, drafts):
    def logprobs(model):
        body = {"model": model, "prompt": PROMPTS[0], "raw": True, "stream": False, "logprobs": True, "top_logprobs": 2}
        body["options"] = {"temperature": 0, "num_predict": 12}
        r = post(server.url, "/api/generate", body)
        assert r.status_code == 200, r.text
        return r.json()["logprobs"]

    plain, spec = logprobs(TINY), logprobs("tiny-spec-other")
    assert [e["token"] for e in spec] == [e["token"] for e in plain]
    assert [e["logprob"] for e in spec] == pytest.approx([e["logprob"] for e in plain], abs=1e-3)


def test_ps_counts_the_draft_in_the_model_memory(server, drafts):
    greedy(server.url, "tiny-spec", PROMPTS[0], num_predict=2)
    entry = next(
        m for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"] in ("tiny-spec", "tiny-spec:latest")
    )
    draft = entry["draft"]
    assert draft["model"] == "tiny:latest" and 0 < draft["size"] < entry["size"]


def test_a_request_joining_a_speculative_stream_gets_its_own_answer(server, drafts):
    solo = {p: greedy(server.url, TINY, p, num_predict=80)["response"] for p in PROMPTS[:2]}
    started = threading.Event()
    result: dict = {}

    def first():
        body = {
            "model": "tiny-spec",
            "prompt": PROMPTS[0],
            "raw": True,
            "options": {"temperature": 0, "num_predict": 80},
        }
        text = []
        with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=300) as r:
            for line in r.iter_lines():
                text.append(json.loads(line).get("response", ""))
                if len(text) == 3:
                    started.set()
        result["first"] = "".join(text)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(120)
    second = greedy(server.url, "tiny-spec", PROMPTS[1], num_predict=80)["response"]
    t.join(300)
    assert (result["first"], second) == (solo[PROMPTS[0]], solo[PROMPTS[1]])


# --- the engine in-process: the hand-over to the batch, step by step --------------------------------


def run(llm: LoadedLLM, prompts: list[str], options: Options, join_after: int):
    """Admit the first prompt, step `join_after` times, admit the rest, step until idle: the
    (text, done) of each, whether the first was decoding speculatively and whether it was handed over."""

    async def main():
        jobs = [GenerationJob(PromptSpec(raw_prompt=p), options) for p in prompts]
        llm.admit(jobs[0])
        for _ in range(join_after):
            llm.step()
        streaming = llm.spec_stream is not None
        for job in jobs[1:]:
            llm.admit(job)
        handed_over = llm.spec_stream is None and bool(llm.active)
        while llm.busy:
            llm.step()
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        out = []
        for job in jobs:
            text, done = [], None
            while not job.events.empty():
                event = job.events.get_nowait()
                if isinstance(event, TextEvent):
                    text.append(event.text)
                else:
                    done = event
            assert isinstance(done, DoneEvent), done
            out.append(("".join(text), done))
        return out, streaming, handed_over

    return asyncio.run(main())


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_llama(tmp_path_factory.mktemp("main")), build_tiny_llama(tmp_path_factory.mktemp("d"), seed=1)


@pytest.mark.parametrize("join_after", [0, 1, 5])
def test_the_speculative_stream_moves_into_the_batch_with_its_cache(tiny_dirs, join_after):
    main_dir, draft_dir = tiny_dirs
    plain, spec = LoadedLLM(main_dir), LoadedLLM(main_dir, draft_dir=draft_dir)
    try:
        opts = Options(temperature=0, num_predict=30)
        want, _, _ = run(plain, PROMPTS, opts, 0)
        got, streaming, handed_over = run(spec, PROMPTS, opts, join_after)
        assert streaming and handed_over
        assert [(t, d.eval_count) for t, d in got] == [(t, d.eval_count) for t, d in want]
        # the first step reads the (short) prompt; rounds of drafting come after it
        assert (spec.drafter.stats.rounds > 0) == (join_after > 1)
    finally:
        plain.close()
        spec.close()
