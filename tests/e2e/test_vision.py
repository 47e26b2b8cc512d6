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
from pathlib import Path

import numpy as np
import pytest

from mlxollama.engine.jobs import DoneEvent, EngineError, ErrorEvent, GenerationJob, PromptSpec, TextEvent
from mlxollama.engine.vision import UNDECODABLE_IMAGE, LoadedVLM
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


def test_an_undecodable_image_is_refused_with_ollamas_text(engines):
    vlm = engines["gemma3"]
    spec = PromptSpec(messages=[{"role": "user", "content": QUESTION, "images": [b"not an image at all"]}])
    ((_, end, _),) = run(vlm, [spec], greedy())
    assert isinstance(end, ErrorEvent) and (end.status, end.message) == (400, UNDECODABLE_IMAGE)
    # and the engine goes on serving
    ((_, done, _),) = run(vlm, [raw_spec(Path(vlm.model_key), make_image(1))], greedy(num_predict=2))
    assert isinstance(done, DoneEvent)


def test_too_many_images_for_the_context_is_a_clear_400(engines):
    vlm = engines["qwen2_5_vl"]
    images = [make_image(i) for i in range(8)]
    spec = PromptSpec(messages=[{"role": "user", "content": QUESTION, "images": images}])
    ((_, end, _),) = run(vlm, [spec], greedy(num_ctx=32))
    assert isinstance(end, ErrorEvent) and end.status == 400
    assert "exceeds the context length" in end.message and "8 image(s)" in end.message
