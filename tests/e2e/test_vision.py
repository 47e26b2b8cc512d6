"""Vision models on the engine (issue 17): tiny random-weight VLMs of three families built with
mlx-vlm's own classes (tests/support/tinyvlm.py), checked against mlx-vlm's own generation.

In-process (engine/vision.py's LoadedVLM driven through admit/step, as the runner drives it):
greedy tokens identical to mlx_vlm's generate_step on the same prompt text and image, a different
image changes the logits, a batched answer equals the same request alone, a second question about
the same image reuses the cached prefix without running the vision tower again, and bad images get
Ollama's text.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlxollama.engine.jobs import DoneEvent, EngineError, ErrorEvent, GenerationJob, PromptSpec, TextEvent
from mlxollama.engine.vision import CONTEXT_WITH_IMAGE, UNDECODABLE_IMAGE, LoadedVLM
from mlxollama.options import Options
from tests.support.tinyvlm import build_tiny_vlm, make_image, reference_generate, reference_logits, reference_prompt

FAMILIES = ["gemma3", "qwen2_5_vl", "mistral3", "llava"]
QUESTION = "Describe this image."
GREEDY = 8


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return {f: build_tiny_vlm(f, tmp_path_factory.mktemp(f"vlm-{f}")) for f in FAMILIES}


@pytest.fixture(scope="module")
def engines(folders):
    loaded = {f: LoadedVLM(folders[f]) for f in FAMILIES}
    yield loaded
    for e in loaded.values():
        e.close()


def run(vlm: LoadedVLM, specs: list[PromptSpec], options: Options, *, logprobs: bool = False):
    """Admit every request (all before the first step: they decode together where the family
    batches), step until idle: per request (text, DoneEvent or ErrorEvent, logprobs entries)."""

    async def main():
        jobs = [GenerationJob(s, options, logprobs=logprobs, top_logprobs=5 if logprobs else 0) for s in specs]
        for job in jobs:
            try:
                vlm.admit(job)
            except EngineError as e:  # the runner's _guard turns these into the request's error
                job.emit(ErrorEvent(e.message, e.status))
        while vlm.busy:
            vlm.step()
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        out = []
        for job in jobs:
            text, end, lps = [], None, []
            while not job.events.empty():
                event = job.events.get_nowait()
                if isinstance(event, TextEvent):
                    text.append(event.text)
                    lps.extend(event.logprobs or [])
                else:
                    end = event
            assert isinstance(end, (DoneEvent, ErrorEvent)), end
            out.append(("".join(text), end, lps))
        return out

    return asyncio.run(main())


def greedy(**kw) -> Options:
    # no repeat penalty (Ollama's default is 1.1): mlx-vlm's reference applies none
    return Options(temperature=0, repeat_penalty=1.0, num_predict=kw.pop("num_predict", GREEDY), **kw)


def generated_ids(done: DoneEvent) -> list[int]:
    return done.context[len(done.context) - done.eval_count :]


def raw_spec(folder: Path, image: bytes | None, question: str = QUESTION) -> PromptSpec:
    text = reference_prompt(folder, question, 1 if image else 0)
    return PromptSpec(raw_prompt=text, images=[image] if image else None, return_context=True)


def assert_same_greedy(ours: DoneEvent, ref: list[int], eos: list[int]) -> None:
    got = generated_ids(ours)
    assert got == ref[: len(got)]
    # a shorter answer stopped at an end-of-sequence token that the reference picked as well
    assert len(got) == len(ref) or ref[len(got)] in eos


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_equal_mlx_vlm_on_the_same_prompt_and_image(folders, engines, family):
    vlm, image = engines[family], make_image(1)
    text = reference_prompt(folders[family], QUESTION, 1)
    ((_, done, lps),) = run(vlm, [raw_spec(folders[family], image)], greedy(), logprobs=True)
    assert isinstance(done, DoneEvent), done
    assert vlm.image_token_id in done.context[: done.prompt_eval_count]  # the image's tokens are in the prompt
    ref = reference_generate(folders[family], text, [image], n=GREEDY, formatted=True)
    assert_same_greedy(done, ref, vlm.eos_ids)
    # the first token's distribution: mlx-vlm's log-probabilities, top entries included
    want = reference_logits(folders[family], text, [image], formatted=True)
    assert lps[0]["logprob"] == pytest.approx(float(want.max()), abs=2e-3)
    top = sorted(want, reverse=True)[: len(lps[0]["top_logprobs"])]
    assert [t["logprob"] for t in lps[0]["top_logprobs"]] == pytest.approx(top, abs=2e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_messages_with_an_image_equal_mlx_vlm_formatting(folders, engines, family):
    """The chat path hands the template a message's images as content parts in front of its text
    (Ollama's order), which is what mlx-vlm formats for a message written that way."""
    vlm, image = engines[family], make_image(2)
    spec = PromptSpec(messages=[{"role": "user", "content": QUESTION, "images": [image]}], return_context=True)
    ((_, done, _),) = run(vlm, [spec], greedy())
    assert isinstance(done, DoneEvent), done
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert_same_greedy(done, reference_generate(folders[family], parts, [image], n=GREEDY), vlm.eos_ids)


def test_a_go_template_gets_the_image_marker_in_front_of_the_content(engines):
    """A model with its own Ollama TEMPLATE (a registry pull) renders .Content: the image goes in
    as the model's marker text in front of it (Ollama's [img-N] place), the same prompt as raw."""
    vlm, image = engines["gemma3"], make_image(9)
    template = "{{ range .Messages }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"
    messages = [{"role": "user", "content": QUESTION, "images": [image]}]
    spec = PromptSpec(messages=messages, go_template=template, return_context=True)
    raw = f"<start_of_turn>user\n<start_of_image> {QUESTION}<end_of_turn>\n<start_of_turn>model\n"
    (a, b) = run(vlm, [spec, PromptSpec(raw_prompt=raw, images=[image], return_context=True)], greedy())
    assert isinstance(a[1], DoneEvent) and isinstance(b[1], DoneEvent)
    assert a[1].context == b[1].context and vlm.image_token_id in a[1].context


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_format_constrains_an_image_answer_batched_and_alone(engines, family):
    """`format` (llguidance) on an image request, on the batch path (gemma3) and the alone path (qwen2.5-vl)."""
    from mlxollama.engine.structured import format_grammar

    vlm = engines[family]
    spec = PromptSpec(
        messages=[{"role": "user", "content": QUESTION, "images": [make_image(10)]}], grammar=format_grammar("json")
    )
    ((text, done, _),) = run(vlm, [spec], greedy(num_predict=24))
    assert isinstance(done, DoneEvent), done
    assert text.lstrip().startswith("{")
    free = PromptSpec(messages=[{"role": "user", "content": QUESTION, "images": [make_image(10)]}])
    ((other, _, _),) = run(vlm, [free], greedy(num_predict=24))
    assert other != text  # the random model's own answer is not JSON: the grammar made it so


@pytest.mark.parametrize("family", FAMILIES)
def test_a_different_image_changes_the_logits(folders, engines, family):
    vlm = engines[family]
    firsts = []
    for seed in (3, 4):
        ((_, done, lps),) = run(
            vlm, [raw_spec(folders[family], make_image(seed))], greedy(num_predict=1), logprobs=True
        )
        assert isinstance(done, DoneEvent), done
        firsts.append([t["logprob"] for t in lps[0]["top_logprobs"]])
    assert not np.allclose(firsts[0], firsts[1], atol=1e-4)
    refs = [
        reference_logits(
            folders[family], reference_prompt(folders[family], QUESTION, 1), [make_image(s)], formatted=True
        )
        for s in (3, 4)
    ]
    assert not np.allclose(refs[0], refs[1], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_requests_together_answer_as_each_alone(folders, engines, family):
    """Different images and questions admitted at once: batched families decode them in one batch,
    the others one after the other; either way every answer equals the same request alone."""
    vlm, folder = engines[family], folders[family]
    specs = lambda: [  # noqa: E731 - fresh specs per run (the engine marks them)
        raw_spec(folder, make_image(5), QUESTION),
        raw_spec(folder, make_image(6), "What is in the picture?"),
        raw_spec(folder, None, "Why is the sky blue?"),
    ]
    opts = greedy(num_predict=12)
    alone = [run(vlm, [s], opts)[0] for s in specs()]
    vlm.prompt_cache = type(vlm.prompt_cache)(max_size=16)  # no cache hits: the batch prefills afresh
    vlm.decoding = 0
    seen = []
    original_step = vlm.step

    def counting_step():
        original_step()
        seen.append(vlm.decoding)

    vlm.step = counting_step
    try:
        together = run(vlm, specs(), opts)
    finally:
        del vlm.step
    assert [(t, generated_ids(d)) for t, d, _ in together] == [(t, generated_ids(d)) for t, d, _ in alone]
    assert vlm.batchable == (family != "qwen2_5_vl")
    if vlm.batchable:
        assert max(seen) >= 2  # they did decode together


@pytest.mark.parametrize("family", FAMILIES)
def test_a_second_question_about_the_same_image_reuses_its_cache(folders, engines, family):
    vlm, image = engines[family], make_image(7)
    first = [{"role": "user", "content": QUESTION, "images": [image]}]
    ((answer, done1, _),) = run(vlm, [PromptSpec(messages=first)], greedy())
    encoded = vlm.images_encoded
    follow = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the colours?"}]
    ((_, done2, _),) = run(vlm, [PromptSpec(messages=follow)], greedy())
    assert isinstance(done2, DoneEvent), done2
    assert vlm.images_encoded == encoded  # the vision tower did not run again
    assert done2.prompt_eval_cached_count >= done1.prompt_eval_count - 1
    # the same question about another image of the same size shares no image tokens with it
    other = [{"role": "user", "content": QUESTION, "images": [make_image(8)]}]
    ((_, done3, _),) = run(vlm, [PromptSpec(messages=other)], greedy())
    assert vlm.images_encoded == encoded + 1
    assert done3.prompt_eval_cached_count < done1.prompt_eval_count - 4


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_a_quantized_vision_model_answers_as_mlx_vlm_does(folders, family, tmp_path):
    """Stored with --quantize q8_0 (mlx-vlm's converter: the tower stays in float), loaded from the
    store's folder: greedy tokens equal mlx-vlm's own on that same folder."""
    from mlxollama.convert.create import convert_path
    from mlxollama.engine.catalog import load_spec
    from mlxollama.store import ModelName, Store

    store = Store(tmp_path / "models")
    convert_path(folders[family], "q:latest", quantize="q8_0", store=store)
    spec = load_spec(store, ModelName.parse("q:latest"))
    assert spec.kind == "vision" and spec.details()["quantization_level"] == "Q8_0"
    folder = spec.materialize(tmp_path / "run")
    vlm = LoadedVLM(folder)
    try:
        image = make_image(27)
        ((_, done, _),) = run(vlm, [raw_spec(folder, image)], greedy())
        assert isinstance(done, DoneEvent), done
        ref = reference_generate(folder, reference_prompt(folder, QUESTION, 1), [image], n=GREEDY, formatted=True)
        assert_same_greedy(done, ref, vlm.eos_ids)
    finally:
        vlm.close()


def test_an_undecodable_image_is_refused_with_ollamas_text(engines):
    vlm = engines["gemma3"]
    spec = PromptSpec(messages=[{"role": "user", "content": QUESTION, "images": [b"not an image at all"]}])
    ((_, end, _),) = run(vlm, [spec], greedy())
    assert isinstance(end, ErrorEvent) and (end.status, end.message) == (400, UNDECODABLE_IMAGE)
    # and the engine goes on serving
    ((_, done, _),) = run(vlm, [raw_spec(Path(vlm.model_key), make_image(1))], greedy(num_predict=2))
    assert isinstance(done, DoneEvent)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_token_text_in_chat_messages_is_not_taken_for_an_image(engines, family):
    """A model's answer (or a paste) that spells the image placeholder would otherwise be expanded
    as an image nobody sent, and the request would fail; the text loses those spellings."""
    vlm, image = engines[family], make_image(22)

    def ask(echo: str):
        messages = [
            {"role": "user", "content": QUESTION, "images": [image]},
            {"role": "assistant", "content": f"a {echo} b"},
            {"role": "user", "content": f"more {echo}"},
        ]
        ((_, done, _),) = run(vlm, [PromptSpec(messages=messages, return_context=True)], greedy(num_predict=1))
        return done

    spelled = ask("".join(vlm.image_texts))
    plain = ask("")
    assert isinstance(spelled, DoneEvent), spelled
    assert spelled.context == plain.context


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_a_generate_context_holding_an_image_is_refused_clearly(folders, engines, family):
    """/api/generate's deprecated context round-trip cannot carry pixels: continuing an answer about
    an image from its tokens would read the placeholders as text, so it is a 400 that says so."""
    vlm = engines[family]
    ((_, done, _),) = run(vlm, [raw_spec(folders[family], make_image(23))], greedy(num_predict=2))
    for extra in ({}, {"images": [make_image(24)]}):
        spec = PromptSpec(messages=[{"role": "user", "content": "And then?", **extra}], context=done.context)
        ((_, end, _),) = run(vlm, [spec], greedy(num_predict=2))
        assert isinstance(end, ErrorEvent) and (end.status, end.message) == (400, CONTEXT_WITH_IMAGE)
    text_context = [t for t in done.context if t != vlm.image_token_id]
    ((_, ok, _),) = run(vlm, [PromptSpec(raw_prompt="And then?", context=text_context)], greedy(num_predict=2))
    assert isinstance(ok, DoneEvent), ok


def test_too_many_images_for_the_context_is_a_clear_400(engines):
    vlm = engines["qwen2_5_vl"]
    images = [make_image(i) for i in range(8)]
    spec = PromptSpec(messages=[{"role": "user", "content": QUESTION, "images": images}])
    ((_, end, _),) = run(vlm, [spec], greedy(num_ctx=32))
    assert isinstance(end, ErrorEvent) and end.status == 400
    assert "exceeds the context length" in end.message and "8 image(s)" in end.message


# --- through a live server: every API family, errors, concurrency, the prompt cache ----------------

TEXT_MODEL = "tiny:latest"  # tests/conftest.py: a text-only model


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served(server, models_dir, folders) -> dict[str, str]:
    """The tiny VLMs stored as `mlxollama convert` stores an mlx-vlm folder, in the session store."""
    from mlxollama.convert.create import convert_path
    from mlxollama.store import Store

    names = {}
    for family in FAMILIES:
        names[family] = f"tiny-vlm-{family.replace('_', '-')}:latest"
        convert_path(folders[family], names[family], store=Store(models_dir))
    return names


def post(server, path: str, body: dict, timeout: float = 300) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=timeout)


def chat(server, model: str, messages: list[dict], **options) -> dict:
    opts = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": GREEDY, **options}
    r = post(server, "/api/chat", {"model": model, "messages": messages, "stream": False, "options": opts})
    assert r.status_code == 200, r.text
    return r.json()


def test_show_reports_vision(server, served):
    body = post(server, "/api/show", {"model": served["gemma3"]}).json()
    assert "vision" in body["capabilities"]


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_logprobs_equal_mlx_vlm_and_follow_the_image(server, served, folders, family):
    """/api/generate raw with an image: the first token's top log-probabilities are mlx-vlm's own
    on the same prompt text and image; another image gives others."""
    text = reference_prompt(folders[family], QUESTION, 1)
    got = []
    for seed in (11, 12):
        body = {
            "model": served[family],
            "prompt": text,
            "raw": True,
            "images": [b64(make_image(seed))],
            "stream": False,
            "logprobs": True,
            "top_logprobs": 5,
            "options": {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 1},
        }
        r = post(server, "/api/generate", body)
        assert r.status_code == 200, r.text
        got.append([t["logprob"] for t in r.json()["logprobs"][0]["top_logprobs"]])
        want = reference_logits(folders[family], text, [make_image(seed)], formatted=True)
        assert got[-1] == pytest.approx(sorted(want, reverse=True)[:5], abs=2e-3)
    assert not np.allclose(got[0], got[1], atol=1e-4)


def test_the_ollama_client_sends_image_paths(server, served, tmp_path):
    import ollama

    path = tmp_path / "picture.png"
    path.write_bytes(make_image(13))
    client = ollama.Client(host=server.url)
    opts = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": GREEDY}
    reply = client.chat(
        model=served["gemma3"], messages=[{"role": "user", "content": QUESTION, "images": [str(path)]}], options=opts
    )
    native = chat(server, served["gemma3"], [{"role": "user", "content": QUESTION, "images": [b64(make_image(13))]}])
    assert reply.message.content == native["message"]["content"]
    assert reply.prompt_eval_count == native["prompt_eval_count"] > 20
    gen = client.generate(model=served["gemma3"], prompt=QUESTION, images=[str(path)], options=opts)
    assert gen.prompt_eval_count == native["prompt_eval_count"]


def test_openai_image_url_parts(server, served):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    image = make_image(14)
    parts = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(image)}},
    ]
    reply = client.chat.completions.create(
        model=served["mistral3"], messages=[{"role": "user", "content": parts}], temperature=0, max_tokens=GREEDY
    )
    # the text and image parts of one message arrive as one native message with its image
    native = chat(
        server, served["mistral3"], [{"role": "user", "content": QUESTION, "images": [b64(image)]}], repeat_penalty=1.1
    )
    assert reply.choices[0].message.content == native["message"]["content"]
    assert reply.usage.prompt_tokens == native["prompt_eval_count"]
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(
            model=served["mistral3"],
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}
            ],
        )
    assert "image URLs are not currently supported, please use base64 encoded data instead" in str(e.value)


def test_anthropic_image_blocks(server, served):
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key="unused")
    image = make_image(15)
    reply = client.messages.create(
        model=served["qwen2_5_vl"],
        max_tokens=GREEDY,
        extra_body={"temperature": 0},  # this SDK has no temperature argument
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(image)}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
    )
    native = chat(
        server,
        served["qwen2_5_vl"],
        [{"role": "user", "content": QUESTION, "images": [b64(image)]}],
        repeat_penalty=1.1,
    )
    assert "".join(b.text for b in reply.content if b.type == "text") == native["message"]["content"]
    assert reply.usage.input_tokens == native["prompt_eval_count"]


def test_image_errors_read_as_ollamas(server, served):
    image = b64(make_image(16))
    r = post(
        server, "/api/chat", {"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi", "images": [image]}]}
    )
    assert r.status_code == 400 and "does not support vision" in r.json()["error"]
    r = post(server, "/api/generate", {"model": TEXT_MODEL, "prompt": "hi", "images": [image]})
    assert r.status_code == 400 and "does not support vision" in r.json()["error"]
    bad = {
        "model": served["gemma3"],
        "stream": False,
        "messages": [{"role": "user", "content": "hi", "images": [b64(b"GIF89a?")]}],
    }
    r = post(server, "/api/chat", bad)
    assert (r.status_code, r.json()) == (400, {"error": UNDECODABLE_IMAGE})
    r = post(
        server, "/api/generate", {"model": served["gemma3"], "prompt": "hi", "images": ["data:image/png;base64,AAAA"]}
    )
    assert r.status_code == 400 and r.json()["error"].startswith("illegal base64 data at input byte")


def test_concurrent_image_requests_answer_as_alone(server, served):
    """Two gemma3 requests (one batch) and a qwen2.5-vl one (its own thread, one at a time) at once."""
    from concurrent.futures import ThreadPoolExecutor

    asks = [
        (served["gemma3"], [{"role": "user", "content": QUESTION, "images": [b64(make_image(17))]}]),
        (served["gemma3"], [{"role": "user", "content": "What is in the picture?", "images": [b64(make_image(18))]}]),
        (served["qwen2_5_vl"], [{"role": "user", "content": QUESTION, "images": [b64(make_image(19))]}]),
        (served["qwen2_5_vl"], [{"role": "user", "content": QUESTION, "images": [b64(make_image(20))]}]),
    ]
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda a: chat(server, *a, num_predict=24)["message"]["content"], asks))
    alone = [chat(server, *a, num_predict=24)["message"]["content"] for a in asks]
    assert together == alone


def test_a_follow_up_question_reuses_the_image_prefix(server, served):
    first = [{"role": "user", "content": QUESTION, "images": [b64(make_image(21))]}]
    one = chat(server, served["mistral3"], first)
    follow = first + [one["message"], {"role": "user", "content": "And the colours?"}]
    two = chat(server, served["mistral3"], follow)
    assert two.get("prompt_eval_cached_count", 0) >= one["prompt_eval_count"] - 1


def test_a_model_that_runs_alone_does_not_hold_up_another_model(server, served):
    """qwen2.5-vl decodes one sequence at a time on its own engine thread: while a long answer
    streams from it, a gemma3 request is answered (the order of events, not timings, is checked)."""
    import json
    import threading

    first_chunk, long_done = threading.Event(), {}

    def long_answer():
        body = {
            "model": served["qwen2_5_vl"],
            "messages": [{"role": "user", "content": QUESTION, "images": [b64(make_image(25))]}],
            "options": {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 1500},
        }
        with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=600) as r:
            for line in r.iter_lines():
                first_chunk.set()
                if line and json.loads(line).get("done"):
                    long_done.update(json.loads(line))
                    long_done["at"] = len(order)
                    order.append("qwen done")

    order: list[str] = []
    worker = threading.Thread(target=long_answer)
    worker.start()
    try:
        assert first_chunk.wait(300)
        other = chat(server, served["gemma3"], [{"role": "user", "content": QUESTION, "images": [b64(make_image(26))]}])
        order.append("gemma3 answered")
        assert other["done"]
    finally:
        worker.join(600)
    # (the tiny qwen's greedy answer to this image runs the whole 1500 tokens, no end-of-sequence)
    assert long_done["done_reason"] == "length"
    assert order == ["gemma3 answered", "qwen done"]
