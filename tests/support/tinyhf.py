"""Tiny random-weight checkpoints in Hugging Face layout (config.json, HF-named
safetensors, a byte-level BPE tokenizer) for every architecture the importers
handle, built with mlx-lm's own model classes so the parameter names are the
ones mlx-lm loads.  Plus helpers to run a model in float32 and decode greedily."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .tinymodels import build_tokenizer

VOCAB = 384  # build_tokenizer's vocabulary size
EOS = "<|im_end|>"

# hidden 256: the in-dimension of every matrix is a multiple of 256, as GGUF's
# K-quants (Q4_K) need; still tiny (~1M parameters).
_BASE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "vocab_size": VOCAB,
    "max_position_embeddings": 2048,
}
_NO_RMS = {k: v for k, v in _BASE.items() if k != "rms_norm_eps"}

CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **_BASE,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        **_BASE,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **_BASE,
        "head_dim": 128,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "gemma": {
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        **_BASE,
        "head_dim": 64,
        "rope_theta": 10000.0,
        "hidden_act": "gelu",
    },
    "gemma2": {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        **_BASE,
        "head_dim": 64,
        "query_pre_attn_scalar": 64,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "sliding_window": 4096,
        "rope_theta": 10000.0,
        "hidden_activation": "gelu_pytorch_tanh",
    },
    # 6 layers: gemma3's fixed local/global pattern (5 sliding, 1 global) is
    # exercised, with a 4-token window that prompts overrun, and linear rope
    # scaling on the global layer only.
    "gemma3": {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        **_BASE,
        "num_hidden_layers": 6,
        "head_dim": 64,
        "query_pre_attn_scalar": 64,
        "sliding_window": 4,
        "sliding_window_pattern": 6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "max_position_embeddings": 32768,
    },
    # Mistral-Nemo-like: head_dim differs from hidden / heads.
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        **_BASE,
        "head_dim": 32,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    # Phi-4-mini-like partial rotary with LongRoPE factors for the rotated 48 dims.
    "phi3": {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        **_BASE,
        "num_key_value_heads": 4,
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.75,
        "max_position_embeddings": 8192,
        "original_max_position_embeddings": 1024,
        "sliding_window": 2047,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "type": "longrope",
            "long_factor": [1.0 + 0.25 * i for i in range(24)],
            "short_factor": [1.0 + 0.02 * i for i in range(24)],
        },
    },
    # Ministral-3-like (GGUF arch "mistral3"): yarn rope plus Llama-4
    # attention temperature; original context 8 so prompts cross it.
    "ministral3": {
        "architectures": ["Ministral3ForCausalLM"],
        "model_type": "ministral3",
        **_BASE,
        "head_dim": 64,
        "tie_word_embeddings": False,
        "max_position_embeddings": 64,
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 8,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "llama_4_scaling_beta": 0.1,
            "rope_theta": 1000000.0,
        },
    },
    # Mixture-of-experts: 4 experts, 2 per token (GGUF: llama with experts, qwen2moe, qwen3moe).
    "mixtral": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        **_BASE,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    "qwen2_moe": {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        **_BASE,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "shared_expert_intermediate_size": 256,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": False,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    "qwen3_moe": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        **_BASE,
        "head_dim": 64,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    # Granite 3.x: the four multipliers set away from their neutral values.
    "granite": {
        "architectures": ["GraniteForCausalLM"],
        "model_type": "granite",
        **_BASE,
        "rope_theta": 10000.0,
        "logits_scaling": 4.0,
        "attention_multiplier": 0.0625,
        "embedding_multiplier": 6.0,
        "residual_multiplier": 0.5,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
    },
    "granitemoe": {
        "architectures": ["GraniteMoeForCausalLM"],
        "model_type": "granitemoe",
        **_BASE,
        "intermediate_size": 256,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "rope_theta": 10000.0,
        "logits_scaling": 4.0,
        "attention_multiplier": 0.0625,
        "embedding_multiplier": 6.0,
        "residual_multiplier": 0.5,
        "attention_bias": False,
        "tie_word_embeddings": True,
    },
    "olmo2": {
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        **_BASE,
        "rope_theta": 500000.0,
        "attention_bias": False,
        "tie_word_embeddings": False,
    },
    # 4 layers: SmolLM3's last layer of every 4 runs without rope.
    "smollm3": {
        "architectures": ["SmolLM3ForCausalLM"],
        "model_type": "smollm3",
        **_BASE,
        "num_hidden_layers": 4,
        "rope_theta": 2000000.0,
        "no_rope_layer_interval": 4,
        "tie_word_embeddings": True,
    },
    # LayerNorm models (no rms_norm_eps).
    "starcoder2": {
        "architectures": ["Starcoder2ForCausalLM"],
        "model_type": "starcoder2",
        **_NO_RMS,
        "norm_epsilon": 1e-5,
        "rope_theta": 100000.0,
        "use_bias": True,
        "tie_word_embeddings": True,
    },
    "cohere": {
        "architectures": ["CohereForCausalLM"],
        "model_type": "cohere",
        **_NO_RMS,
        "layer_norm_eps": 1e-5,
        "logit_scale": 0.25,
        "use_qk_norm": False,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    },
    "olmoe": {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        **_BASE,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "norm_topk_prob": False,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # Command R7B: 4 layers, the last global (no rope), a 4-token window on the others.
    "cohere2": {
        "architectures": ["Cohere2ForCausalLM"],
        "model_type": "cohere2",
        **_NO_RMS,
        "num_hidden_layers": 4,
        "head_dim": 64,
        "layer_norm_eps": 1e-5,
        "logit_scale": 0.25,
        "sliding_window": 4,
        "sliding_window_pattern": 4,
        "rotary_pct": 1.0,
        "rope_theta": 50000.0,
        "tie_word_embeddings": True,
    },
    # Phi-2: LayerNorm, biases, partial rotary, a biased lm_head.
    "phi": {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        **_NO_RMS,
        "num_key_value_heads": 4,
        "intermediate_size": 1024,
        "partial_rotary_factor": 0.5,
        "layer_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # StarCoder / SantaCoder / granite-code 20B+ (GGUF "starcoder"): GPT-2 style, multi-query, learned positions.
    "gpt_bigcode": {
        "architectures": ["GPTBigCodeForCausalLM"],
        "model_type": "gpt_bigcode",
        "n_embd": 256,
        "n_layer": 2,
        "n_inner": 1024,
        "n_head": 4,
        "n_positions": 2048,
        "layer_norm_epsilon": 1e-5,
        "vocab_size": VOCAB,
        "multi_query": True,
        "tie_word_embeddings": True,
    },
    "stablelm": {
        "architectures": ["StableLmForCausalLM"],
        "model_type": "stablelm",
        **_NO_RMS,
        "num_key_value_heads": 4,
        "partial_rotary_factor": 0.25,
        "layer_norm_eps": 1e-5,
        "use_qkv_bias": True,
        "use_parallel_residual": False,
        "qk_layernorm": False,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "nemotron": {
        "architectures": ["NemotronForCausalLM"],
        "model_type": "nemotron",
        **_NO_RMS,
        "head_dim": 64,
        "hidden_act": "relu2",
        "norm_eps": 1e-5,
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    },
    # EXAONE 3.x: GPT-2 style names, HF's num_layers / layer_norm_epsilon (RMSNorm).
    "exaone": {
        "architectures": ["ExaoneForCausalLM"],
        "model_type": "exaone",
        **{k: v for k, v in _NO_RMS.items() if k != "num_hidden_layers"},
        "num_layers": 2,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "silu",
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # GLM-4-0414: half the head rotated, q/k/v biases, fused gate/up.
    "glm4": {
        "architectures": ["Glm4ForCausalLM"],
        "model_type": "glm4",
        **_BASE,
        "head_dim": 64,
        "partial_rotary_factor": 0.5,
        "attention_bias": True,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # DeepSeek-V2-Lite-like: MLA (no q LoRA), 1 dense then MoE layers with a
    # shared expert, yarn rope with mscale == mscale_all_dim; original context 8.
    "deepseek_v2": {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        **_BASE,
        "num_key_value_heads": 4,
        "kv_lora_rank": 64,
        "q_lora_rank": None,
        "qk_rope_head_dim": 32,
        "qk_nope_head_dim": 32,
        "v_head_dim": 32,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "routed_scaling_factor": 2.0,
        "topk_method": "greedy",
        "max_position_embeddings": 32,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 8,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
        },
    },
    # InternLM2: q/k/v fused per KV head in wqkv (2 query heads per group).
    "internlm2": {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        **_BASE,
        "bias": False,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    # Llama 4 (Scout-like): 4 layers so the fourth runs without rope (global, temperature
    # tuned), MoE on every second layer (1 routed expert of 4 + a shared one), dense MLPs
    # between; q/k norms; llama.cpp's fixed 8192-token attention chunks.
    "llama4": {
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama4_text",
            **_BASE,
            "num_hidden_layers": 4,
            "head_dim": 64,
            "intermediate_size": 128,
            "intermediate_size_mlp": 512,
            "interleave_moe_layer_step": 2,
            "num_local_experts": 4,
            "num_experts_per_tok": 1,
            "attention_bias": False,
            "attention_chunk_size": 8192,
            "use_qk_norm": True,
            "rope_theta": 500000.0,
            "rope_scaling": None,
            "tie_word_embeddings": False,
        },
    },
    # Qwen3.5 (dense): 4 layers, three gated-delta-net linear-attention layers then one
    # gated full-attention layer; 2 key heads and 4 value heads, so llama.cpp's value-head
    # reordering is exercised; partial rotary (a quarter of the head).
    "qwen3_5": {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "qwen3_5_text",
            **_BASE,
            "num_hidden_layers": 4,
            "head_dim": 64,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 32,
            "linear_value_head_dim": 64,
            "linear_conv_kernel_dim": 4,
            "full_attention_interval": 4,
            "tie_word_embeddings": False,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000000.0,
                "partial_rotary_factor": 0.25,
                "mrope_section": [11, 11, 10],
            },
        },
    },
    # Qwen3-Next: qwen3.5's layers with 4 routed experts (2 per token) and a gated shared expert.
    "qwen3_next": {
        "architectures": ["Qwen3NextForCausalLM"],
        "model_type": "qwen3_next",
        **_BASE,
        "num_hidden_layers": 4,
        "head_dim": 64,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 32,
        "linear_value_head_dim": 64,
        "linear_conv_kernel_dim": 4,
        "full_attention_interval": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "shared_expert_intermediate_size": 256,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "tie_word_embeddings": False,
    },
    # gpt-oss as OpenAI publishes it: experts in MXFP4 (HF "_blocks"/"_scales",
    # gate/up rows interleaved), sinks, biases, yarn, a 4-token sliding window
    # on even layers.
    "gpt_oss": {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        **_BASE,
        "num_hidden_layers": 4,
        "head_dim": 64,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "intermediate_size": 256,
        "sliding_window": 4,
        "rope_theta": 150000.0,
        "max_position_embeddings": 64,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 8,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        },
        "quantization_config": {"quant_method": "mxfp4"},
    },
}

_GEMMA = {"gemma", "gemma2", "gemma3_text"}
# mlx-lm stacks experts (switch_mlp); Hugging Face checkpoints hold one tensor per expert.
_HF_EXPERT_NAMES = {"mixtral": {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}}


def _gpt_oss_mxfp4(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """gpt-oss experts as the published checkpoints hold them: MXFP4 blocks
    (experts, rows, in / 32, 16 bytes; low nibble = even element) and E8M0
    scales, gate and up rows interleaved in gate_up_proj."""
    out = {}
    for name, w in weights.items():
        if ".experts." not in name:
            out[name] = w
            continue
        prefix, rest = name.split(".experts.")
        proj, suffix = rest.split(".")
        if proj == "up_proj":
            continue  # written with gate_proj
        if proj == "gate_proj":
            up = weights[name.replace("gate_proj", "up_proj")]
            w = np.stack([w, up], axis=-2 if suffix == "weight" else -1)  # interleave rows
            w = w.reshape(*w.shape[:-3], -1, w.shape[-1]) if suffix == "weight" else w.reshape(*w.shape[:-2], -1)
        hf = f"{prefix}.experts.{'gate_up_proj' if proj == 'gate_proj' else proj}"
        if suffix == "bias":
            out[f"{hf}_bias"] = w
            continue
        packed, scales = mx.quantize(mx.array(w), group_size=32, bits=4, mode="mxfp4")
        packed = np.array(packed).view(np.uint8)
        out[f"{hf}_blocks"] = packed.reshape(*w.shape[:-1], w.shape[-1] // 32, 16)
        out[f"{hf}_scales"] = np.array(scales)
    return out


def _llama4_experts(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Llama 4 checkpoints keep each layer's experts as bare (experts, in, out) tensors,
    gate and up side by side in gate_up_proj."""
    out = {}
    for name, w in weights.items():
        if ".experts." not in name:
            out[name] = w
        elif name.endswith("experts.gate_proj.weight"):
            up = weights[name.replace("gate_proj", "up_proj")]
            out[name.replace("gate_proj.weight", "gate_up_proj")] = np.concatenate(
                [w.swapaxes(1, 2), up.swapaxes(1, 2)], axis=-1
            )
        elif name.endswith("experts.down_proj.weight"):
            out[name.removesuffix(".weight")] = np.ascontiguousarray(w.swapaxes(1, 2))
    return out


# Qwen3.5's zero-centred RMSNorms: Hugging Face stores w, the model (and mlx-lm, once its
# sanitize has added 1) multiplies by 1 + w.
_QWEN35_NORMS = (".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight", "_norm.weight")


def _qwen35_layout(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Qwen3_5ForConditionalGeneration's names (model.language_model.*), conv1d kernels as
    (channels, 1, width), zero-centred norms."""
    out = {}
    for name, w in weights.items():
        hf = name.replace("language_model.model.", "model.language_model.").replace("language_model.lm_head", "lm_head")
        if name.endswith("conv1d.weight"):
            w = np.ascontiguousarray(np.moveaxis(w, 2, 1))
        elif name.endswith(_QWEN35_NORMS):
            w = w - 1.0
        out[hf] = w
    return out


def _hf_layout(model_type: str, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if model_type == "qwen3_5":
        return _qwen35_layout(weights)
    if model_type == "qwen3_next":  # Qwen3.5's conv kernels and norms, plus one tensor per expert
        weights = {k.removeprefix("language_model."): v for k, v in _qwen35_layout(weights).items()}
    if model_type == "gpt_oss":
        return _gpt_oss_mxfp4(weights)
    if model_type == "llama4":
        return _llama4_experts(weights)
    if model_type == "granitemoe":  # HF keeps [gate; up] fused per expert (input_linear), down as output_linear
        out = {k: v for k, v in weights.items() if ".switch_mlp." not in k}
        for k in [k for k in weights if k.endswith("switch_mlp.gate_proj.weight")]:
            moe = k.removesuffix(".switch_mlp.gate_proj.weight")
            out[f"{moe}.input_linear.weight"] = np.concatenate(
                [weights[k], weights[f"{moe}.switch_mlp.up_proj.weight"]], axis=1
            )
            out[f"{moe}.output_linear.weight"] = weights[f"{moe}.switch_mlp.down_proj.weight"]
        return out
    out = {}
    for name, w in weights.items():
        if ".switch_mlp." not in name:
            out[name] = w
            continue
        prefix, rest = name.split(".switch_mlp.")
        proj, suffix = rest.split(".")
        proj = _HF_EXPERT_NAMES.get(model_type, {}).get(proj, proj)
        for e in range(w.shape[0]):
            out[f"{prefix}.experts.{e}.{proj}.{suffix}"] = w[e]
    return out


# Output projections scaled up so the layers, not the token embedding, decide
# the next token: greedy continuations vary and top-1 margins are not tiny.
_GAIN = {"o_proj": 8.0, "down_proj": 8.0, "lm_head": 8.0, "v_proj": 2.0}
_GAIN_BY_TYPE = {"internlm2": {"wo": 8.0, "w2": 8.0, "output": 8.0}}


def _random_weights(model_type: str, shapes: dict[str, tuple[int, ...]], rng) -> dict[str, np.ndarray]:
    gemma = model_type in _GEMMA
    out = {}
    for name, shape in shapes.items():
        if name == "model.norm.weight" and gemma:
            w = rng.uniform(1.0, 3.0, shape)  # sharper tied logits
        elif name.endswith("norm.weight"):
            # gemma norms apply 1 + w, the others w
            w = rng.uniform(-0.3, 0.3, shape) if gemma else rng.uniform(0.6, 1.4, shape)
        elif name.endswith(".bias"):
            w = rng.uniform(-0.2, 0.2, shape)
        elif "embed_tokens" in name or name.endswith(("wte.weight", "wpe.weight")):
            # gemma multiplies embeddings by sqrt(hidden) = 16
            w = rng.normal(0, 1.0 / 16 if gemma else 1.0, shape)
        else:
            gain = {**_GAIN, **_GAIN_BY_TYPE.get(model_type, {})}.get(name.split(".")[-2], 1.0)
            w = rng.normal(0, gain / np.sqrt(shape[-1]), shape)
        out[name] = w.astype(np.float32)
    return out


def build_hf_checkpoint(
    out: Path,
    arch: str,
    *,
    seed: int = 0,
    dtype: str = "bfloat16",
    shard: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """A ``arch`` checkpoint as a Hugging Face repo folder would hold it
    (``overrides``: config.json keys replaced)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert max(vocab.values()) + 1 == VOCAB
    config = json.loads(json.dumps(CONFIGS[arch]))
    config.update(overrides or {})
    config["torch_dtype"] = dtype
    config["eos_token_id"] = vocab[EOS]
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(dict(config)))
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    if config.get("tie_word_embeddings", True) or config["model_type"] in ("gemma", "gemma2"):
        shapes.pop("lm_head.weight", None)  # tied: HF checkpoints carry no lm_head
    weights = _hf_layout(
        config["model_type"], _random_weights(config["model_type"], shapes, np.random.default_rng(seed))
    )
    arrays = {
        k: mx.array(v).astype(getattr(mx, dtype)) if v.dtype == np.float32 else mx.array(v) for k, v in weights.items()
    }
    if shard:  # two shards plus an index, as large HF repos come
        names = sorted(arrays)
        parts = [names[: len(names) // 2], names[len(names) // 2 :]]
        weight_map = {}
        for i, part in enumerate(parts):
            fname = f"model-{i + 1:05d}-of-00002.safetensors"
            mx.save_safetensors(str(out / fname), {k: arrays[k] for k in part}, metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        mx.save_safetensors(str(out / "model.safetensors"), arrays, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": vocab[EOS]}))
    return out


def load_hf_weights(hf_dir: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 numpy arrays, by HF name."""
    weights = {}
    for f in sorted(Path(hf_dir).glob("model*.safetensors")):
        for k, v in mx.load(str(f)).items():
            # packed integer tensors (MXFP4 blocks and scales) stay as they are
            weights[k] = np.array(v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v)
    return weights


def load_float32(model_dir: Path, weights: dict[str, np.ndarray] | None = None):
    """mlx-lm model from ``model_dir`` with every floating parameter in float32;
    ``weights`` (HF names) replace the stored ones."""
    from mlx_lm.utils import load_model

    from mlxollama.convert.gguf import set_quantized_param_dtype

    model, _ = load_model(Path(model_dir))
    if weights is not None:
        arrays = {k: mx.array(v, dtype=mx.float32) if v.dtype.kind == "f" else mx.array(v) for k, v in weights.items()}
        # HF experts -> stacked, Qwen3.5's HF names and norms -> mlx-lm's, as load_model does
        if any(".experts." in k or "input_linear" in k or "conv1d" in k for k in arrays):
            arrays = model.sanitize(arrays)
        model.load_weights(list(arrays.items()), strict=True)
    set_quantized_param_dtype(model, mx.float32)
    return model


def load_source(hf_dir: Path):
    """The original checkpoint run in float32.  Its values are loaded first, so that a
    sanitize step (Qwen3.5's 1 + w norms) runs in float32 too rather than in the file's
    bfloat16, which would round the norms (llama.cpp's converter adds the 1 in float32)."""
    if json.loads((Path(hf_dir) / "config.json").read_text())["model_type"] in ("qwen3_5", "qwen3_next"):
        return load_float32(hf_dir, load_hf_weights(hf_dir))
    return load_float32(hf_dir)


def logits(model, ids: list[int]) -> np.ndarray:
    out = model(mx.array([ids]))[0]
    assert out.dtype == mx.float32
    return np.array(out, dtype=np.float64)


def greedy(model, ids: list[int], n: int = 8) -> list[int]:
    """n greedy tokens through mlx-lm's generate_step with the model's own
    KV caches (rotating windows for sliding layers)."""
    from mlx_lm.generate import generate_step

    steps = generate_step(mx.array(ids), model, max_tokens=n)
    return [int(tok) for tok, _ in steps]


# 12 ids: longer than the 4-token sliding windows and the yarn original contexts (8) of the tiny configs
PROMPT = [5, 77, 120, 3, 250, 9, 300, 41, 17, 200, 64, 99]
