"""The decisions convert/gguf_vision.py makes from headers alone: which GGUF is a projector (Ollama's
isProjectorGGUF rules), which registry vision models are refused before their download, and the
source key that keeps an older text-only conversion of the same GGUF from being reused."""

from __future__ import annotations

import pytest

from mlxollama.convert.gguf_vision import is_projector, vision_refusal, vision_source_key


@pytest.mark.parametrize(
    "meta,projector",
    [
        # llama.cpp's mmproj (convert_hf_to_gguf.py --mmproj)
        ({"general.architecture": "clip", "general.type": "mmproj", "clip.has_vision_encoder": True}, True),
        # an older clip projector without general.type (llava's, as Ollama's library holds it)
        ({"general.architecture": "clip", "clip.has_vision_encoder": True, "clip.vision.block_count": 23}, True),
        # a vision tower alone under a model architecture: vision blocks, no text blocks
        ({"general.architecture": "mllama", "mllama.vision.block_count": 32}, True),
        # a multimodal model file (text blocks beside its tower) is the model, not a projector
        ({"general.architecture": "gemma3", "gemma3.block_count": 34, "gemma3.vision.block_count": 27}, False),
        ({"general.architecture": "llama", "llama.block_count": 32}, False),
    ],
)
def test_projector_files_are_told_apart_as_ollama_does(meta, projector):
    assert is_projector(meta) is projector


def test_refused_families_are_named_before_the_download():
    for family, has_projector in (("gemma3", True), ("gemma3", False), ("qwen2vl", True), ("qwen25vl", False)):
        assert vision_refusal(family, has_projector) is None, family
    assert vision_refusal("llama", False) is None  # a text model
    why = vision_refusal("llama", True)  # llava: a llama GGUF and a clip projector
    assert why and "llama with a projector" in why and "gemma3, qwen2.5-vl and mistral-small3.x" in why
    assert vision_refusal("mistral3", False) is None  # the library's one file converts
    assert vision_refusal("mistral3", True)  # llama.cpp's pixtral mmproj does not
    assert "llama3.2-vision" in (vision_refusal("mllama", False) or "")


def test_source_keys_keep_text_only_conversions_apart():
    assert vision_source_key("sha256:aa", None) != "sha256:aa"
    assert vision_source_key("sha256:aa", "sha256:bb") != vision_source_key("sha256:aa", "sha256:cc")
