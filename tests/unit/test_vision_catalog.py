"""What the catalog says about a stored vision model: the `vision` capability in Ollama's order, the
projector's fields under llama.cpp's clip.* keys, and which tensors belong to the vision tower."""

from __future__ import annotations

from mlxollama.engine.catalog import derive_capabilities, is_vision_tensor, projector_info

QWEN_TOOLS_THINK = "{% if tools %}{{ tools }}{% endif %}<think>\n</think>"


def test_vision_comes_after_insert_and_before_thinking():
    assert derive_capabilities("vision", None, None) == ["completion", "vision"]
    assert derive_capabilities("vision", QWEN_TOOLS_THINK, "{{ .Suffix }}") == [
        "completion",
        "tools",
        "insert",
        "vision",
        "thinking",
    ]
    assert "vision" not in derive_capabilities("llm", QWEN_TOOLS_THINK, None)


def test_vision_tensors_in_mlx_vlm_and_hugging_face_names():
    for name in (
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "multi_modal_projector.mm_input_projection_weight",
        "visual.blocks.0.attn.qkv.weight",
        "model.visual.merger.mlp.0.weight",
        "model.vision_tower.transformer.layers.0.attention.q_proj.weight",
    ):
        assert is_vision_tensor(name), name
    for name in (
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "lm_head.weight",
        "model.embed_tokens.weight",
    ):
        assert not is_vision_tensor(name), name


def test_projector_info_of_a_gemma3_config():
    config = {
        "model_type": "gemma3",
        "text_config": {"hidden_size": 2560},
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 896,
            "patch_size": 14,
            "layer_norm_eps": 1e-6,
        },
    }
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    assert projector_info(config, pre, 416_866_032) == {
        "general.architecture": "clip",
        "general.parameter_count": 416_866_032,
        "clip.has_vision_encoder": True,
        "clip.projector_type": "gemma3",
        "clip.vision.block_count": 27,
        "clip.vision.embedding_length": 1152,
        "clip.vision.feed_forward_length": 4304,
        "clip.vision.attention.head_count": 16,
        "clip.vision.attention.layer_norm_epsilon": 1e-6,
        "clip.vision.image_size": 896,
        "clip.vision.patch_size": 14,
        "clip.vision.projection_dim": 2560,
        "clip.vision.image_mean": [0.5, 0.5, 0.5],
        "clip.vision.image_std": [0.5, 0.5, 0.5],
    }


def test_projector_info_of_a_qwen2_5_vl_config():
    config = {
        "model_type": "qwen2_5_vl",
        "hidden_size": 2048,
        "vision_config": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "window_size": 112,
        },
    }
    info = projector_info(config, {}, 0)
    assert "general.parameter_count" not in info
    assert info["clip.projector_type"] == "qwen2.5vl_merger"
    assert info["clip.vision.block_count"] == 32
    assert info["clip.vision.attention.head_count"] == 16
    assert info["clip.vision.projection_dim"] == 2048
    assert info["clip.vision.spatial_merge_size"] == 2
    assert info["clip.vision.window_size"] == 112
