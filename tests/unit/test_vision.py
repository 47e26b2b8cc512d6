"""Vision prompt rules (engine/vision.py) without a model: where images go in a message and in a raw
prompt, how an image prompt's cache key differs from its tokens, undecodable bytes, and the API
handing a message's images to the engine."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mlxollama.api.protocol import Message
from mlxollama.engine.jobs import EngineError
from mlxollama.engine.llm import _Active, _cache_key
from mlxollama.engine.prompt import to_template_message
from mlxollama.engine.vision import (
    UNDECODABLE_IMAGE,
    decode_image,
    raw_with_image_markers,
    with_image_markers,
)

MARK = "<start_of_image>"


def test_images_go_in_front_of_the_content_as_ollama_places_them():
    assert with_image_markers("What is this?", 1, MARK) == f"{MARK} What is this?"
    assert with_image_markers("What is this?", 2, MARK) == f"{MARK}{MARK} What is this?"
    assert with_image_markers("", 1, MARK) == MARK


def test_a_literal_img_placeholder_takes_the_image_in_place():
    assert with_image_markers("Compare [img] with this one", 2, MARK) == f"{MARK} Compare {MARK} with this one"


def test_raw_prompts_keep_their_markers_and_read_ollamas_numbered_tags():
    assert raw_with_image_markers(f"<bos>{MARK}Describe", 1, MARK) == f"<bos>{MARK}Describe"
    assert raw_with_image_markers("[img-0] and [img-1]?", 2, MARK) == f"{MARK} and {MARK}?"
    assert raw_with_image_markers("Describe", 1, MARK) == f"{MARK}Describe"


def test_the_cache_key_of_an_image_prompt_replaces_its_prefix_only():
    a = _Active(job=None, detokenizer=None, reply=None, prompt_len=3, cached=0, started=0, context=None)
    assert _cache_key(a, [1, 2, 3, 4]) == [1, 2, 3, 4]
    a.key_prefix = [1, -99, 3]
    assert _cache_key(a, [1, 7, 3, 4, 5]) == [1, -99, 3, 4, 5]


def png(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_images_decode_to_rgb_and_bad_bytes_get_ollamas_text():
    img = decode_image(png())
    assert img.mode == "RGB" and img.size == (8, 8)
    for bad in (b"", b"GIF89a", b"not an image", png()[:40]):
        with pytest.raises(EngineError) as e:
            decode_image(bad)
        assert (e.value.status, e.value.message) == (400, UNDECODABLE_IMAGE)


def test_a_messages_images_travel_to_the_engine_but_not_into_text_templates():
    m = Message(role="user", content="hi", images=[b"\x89PNG"])
    out = m.for_template()
    assert out["images"] == [b"\x89PNG"] and out["content"] == "hi"
    assert "images" not in to_template_message(out)  # text models render the content alone
    assert "images" not in Message(role="user", content="hi").for_template()


def test_llavas_image_processor_is_spared_the_tokenizers_keywords():
    """mlx-vlm 0.7.10's LlavaProcessor forwards `padding=` to transformers 5's image processor,
    which refuses it; the engine's stand-in passes the image processor only its own keywords."""
    from types import SimpleNamespace

    from mlxollama.engine.vision import ImageProcessorKwargs, _fix_processor

    seen = {}

    def image_processor(images, **kwargs):
        if "padding" in kwargs:
            raise TypeError("ImagesKwargs.__init__() got an unexpected keyword argument 'padding'")
        seen.update(kwargs)
        return "pixels"

    processor = SimpleNamespace(image_processor=image_processor)
    _fix_processor("llava", processor)
    assert isinstance(processor.image_processor, ImageProcessorKwargs)
    assert processor.image_processor(["img"], padding=True, return_tensors="np") == "pixels"
    assert seen == {"return_tensors": "np"}
    untouched = SimpleNamespace(image_processor=image_processor)
    _fix_processor("gemma3", untouched)
    assert untouched.image_processor is image_processor
