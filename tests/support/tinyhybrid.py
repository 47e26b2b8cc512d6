"""Tiny granite4 hybrid (``granitemoehybrid``) and gemma3n checkpoints and their GGUF writers.

``build_hybrid_checkpoint`` makes a Hugging Face folder from the CONFIGS here with mlx-lm's own
classes (so the parameter names are the ones mlx-lm loads) and random weights (tinyhf's), laid
out as a Hugging Face repo holds them: GraniteMoeHybrid's fused ``input_linear`` experts and
shared MLP, (channels, 1, kernel) conv kernels; gemma3n's names are mlx-lm's already.
``write_hybrid_gguf`` writes them the way llama.cpp's converter does (GraniteHybridModel:
Mamba2Model's A = -exp(A_log), squeezed conv1d, (heads, 1) A and D, grouped ssm_norm, dt_bias ->
ssm_dt.bias, per-layer head_count_kv with 0 on Mamba layers, Q/K rows permuted, fused gate/up
split; Gemma3NModel: stacked AltUp projections, norms unshifted, activation sparsity as normal
quantiles, per-layer embeddings zero-padded to the vocabulary) or, for gemma3n, the way Ollama's
convert_gemma3n.go does.  Written from the converters' rules, independently of the importer; it
returns the weights llama.cpp decodes from the file, in Hugging Face names and layout, as
ggufwriter.write_gguf does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import NormalDist
from typing import Any

import gguf
import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType as QT

from .ggufwriter import _FILE_TYPE, _encode, _llamacpp_permute, _tokenizer_metadata, q4_k_m_type
from .tinyhf import EOS, VOCAB, _random_weights, load_hf_weights
from .tinymodels import build_tokenizer

_VOCAB = VOCAB

CONFIGS = {
    # Granite 4.0-H-like: Mamba-2 layers around one attention layer without rope ("nope"), MoE
    # (4 experts, 2 per token) beside a shared MLP on every layer, Granite's four multipliers.
    "granitemoehybrid": {
        "architectures": ["GraniteMoeHybridForCausalLM"],
        "model_type": "granitemoehybrid",
        "hidden_size": 256,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": _VOCAB,
        "max_position_embeddings": 2048,
        "layer_types": ["mamba", "attention", "mamba", "mamba"],
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "shared_intermediate_size": 256,
        "mamba_n_heads": 8,
        "mamba_d_head": 64,
        "mamba_d_state": 32,
        "mamba_d_conv": 4,
        "mamba_n_groups": 1,
        "mamba_expand": 2,
        "mamba_conv_bias": True,
        "mamba_proj_bias": False,
        "position_embedding_type": "nope",
        "rope_theta": 10000.0,
        "attention_bias": False,
        "logits_scaling": 4.0,
        "attention_multiplier": 0.0625,
        "embedding_multiplier": 0.5,  # (larger: the tied logits echo the last token)
        "residual_multiplier": 0.5,
        "tie_word_embeddings": True,
    },
    # Gemma 3n (E2B-like layout, tiny): 6 layers in two sliding, sliding, full groups, the last
    # two reusing earlier layers' K/V, a 4-token window the prompts overrun, AltUp over 4 streams,
    # laurel, per-layer inputs, activation sparsity on the first two layers.
    "gemma3n": {
        "architectures": ["Gemma3nForConditionalGeneration"],
        "model_type": "gemma3n",
        "text_config": {
            "model_type": "gemma3n_text",
            "hidden_size": 256,
            "num_hidden_layers": 6,
            "intermediate_size": [512] * 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "rms_norm_eps": 1e-6,
            "vocab_size": _VOCAB,
            "vocab_size_per_layer_input": _VOCAB,
            "hidden_size_per_layer_input": 64,
            "num_kv_shared_layers": 2,
            "sliding_window": 4,
            "max_position_embeddings": 2048,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "final_logit_softcapping": 30.0,
            "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
            "altup_num_inputs": 4,
            "altup_coef_clip": 120.0,
            "altup_correct_scale": True,
            "altup_active_idx": 0,
            "laurel_rank": 64,
            "hidden_activation": "gelu_pytorch_tanh",
            "rope_scaling": None,
        },
    },
}
GGUF_ARCH = {"granitemoehybrid": "granitehybrid", "gemma3n": "gemma3n"}


def hf_layout(model_type: str, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mlx-lm's random tensors as the Hugging Face checkpoint holds them, with gains that make
    every path matter (greedy continuations vary, top-1 margins are not tiny)."""
    rng = np.random.default_rng(7)
    out: dict[str, np.ndarray] = {}
    if model_type == "gemma3n":
        for name, w in weights.items():
            if name.endswith("embed_tokens.weight"):
                w = rng.normal(0, 0.25, w.shape)  # times sqrt(hidden) = 16 in the model
            elif name == "model.language_model.norm.weight":
                w = rng.uniform(1.0, 3.0, w.shape)  # sharper tied logits
            elif name.endswith("altup.correct_output_scale"):
                w = rng.uniform(0.5, 1.5, w.shape)
            elif name.endswith("altup.modality_router.weight"):
                w = w * 64.0  # its inputs are scaled by 1 / hidden
            out[name] = np.asarray(w, np.float32)
        return out
    assert model_type == "granitemoehybrid", model_type
    for name, w in weights.items():
        if name.endswith("conv1d.weight"):  # mlx-lm (channels, kernel, 1) -> HF (channels, 1, kernel)
            out[name] = np.ascontiguousarray(np.moveaxis(w, 2, 1))
        elif name.endswith(("mamba.out_proj.weight", "shared_mlp.output_linear.weight")):
            out[name] = w * 8.0
        elif ".switch_mlp." in name or ".mlp." in name:
            if name.endswith("gate_proj.weight"):  # HF fuses [gate; up] (experts: per expert, rows)
                up = weights[name.replace("gate_proj", "up_proj")]
                moe = ".switch_mlp." in name
                prefix = name.split(".block_sparse_moe.switch_mlp." if moe else ".mlp.")[0]
                key = (
                    f"{prefix}.block_sparse_moe.input_linear.weight"
                    if moe
                    else f"{prefix}.shared_mlp.input_linear.weight"
                )
                out[key] = np.concatenate([w, up], axis=1 if moe else 0)
            elif name.endswith("down_proj.weight"):
                moe = ".switch_mlp." in name
                prefix = name.split(".block_sparse_moe.switch_mlp." if moe else ".mlp.")[0]
                key = (
                    f"{prefix}.block_sparse_moe.output_linear.weight"
                    if moe
                    else f"{prefix}.shared_mlp.output_linear.weight"
                )
                out[key] = w  # (tinyhf's gain of 8 for down_proj already applied)
        else:
            out[name] = w
    return out


def build_hybrid_checkpoint(
    out: Path, arch: str, *, seed: int = 0, overrides: dict[str, Any] | None = None, dtype: str = "bfloat16"
) -> Path:
    """A CONFIGS[arch] checkpoint as a Hugging Face repo folder holds it (``overrides``: keys of
    the text config replaced)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    config = json.loads(json.dumps(CONFIGS[arch]))
    (config.get("text_config") or config).update(overrides or {})
    config["torch_dtype"] = dtype
    config["eos_token_id"] = vocab[EOS]
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(dict(config)))
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    weights = hf_layout(
        config["model_type"], _random_weights(config["model_type"], shapes, np.random.default_rng(seed))
    )
    arrays = {k: mx.array(v).astype(getattr(mx, dtype)) for k, v in weights.items()}
    mx.save_safetensors(str(out / "model.safetensors"), arrays, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": vocab[EOS]}))
    return out


def _quantized(w: gguf.GGUFWriter, name: str, t: np.ndarray, qtype: QT, mix: bool, n_layer: int) -> np.ndarray:
    """A quantizable tensor written as the converter / llama-quantize would; what llama.cpp decodes."""
    # llama-quantize's Q4_K_M rule matches "ffn_down" anywhere in the name (experts, shared expert too)
    mixed = re.sub(r"\.ffn_down_(exps|shexp)\.", ".ffn_down.", name)
    data, decoded, used = _encode(np.ascontiguousarray(t, np.float32), q4_k_m_type(mixed, n_layer) if mix else qtype)
    w.add_tensor(name, data, raw_dtype=None if used == QT.F16 else used)
    return decoded


def _f32(w: gguf.GGUFWriter, name: str, t: np.ndarray) -> np.ndarray:
    t = np.ascontiguousarray(t, np.float32)
    w.add_tensor(name, t)
    return t


def _write_granitehybrid(w: gguf.GGUFWriter, cfg: dict, weights: dict, qtype: QT, mix: bool) -> dict:
    n_layer, n_head, n_kv = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden = cfg["hidden_size"]
    attention = [t == "attention" for t in cfg["layer_types"]]
    experts = bool(cfg.get("num_local_experts"))
    inner = cfg["mamba_expand"] * hidden
    # GraniteMoeModel / LlamaModel / TextModel keys, then GraniteHybridModel's own
    w.add_context_length(1 << 20)  # no rope on a hybrid: the converter's arbitrary context
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv([n_kv if a else 0 for a in attention])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(hidden // n_head)
    if experts:
        w.add_expert_count(cfg["num_local_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_shared_feed_forward_length(cfg["shared_intermediate_size"])
    w.add_attention_scale(cfg["attention_multiplier"])
    w.add_embedding_scale(cfg["embedding_multiplier"])
    w.add_residual_scale(cfg["residual_multiplier"])
    w.add_logit_scale(cfg["logits_scaling"])
    w.add_ssm_conv_kernel(cfg["mamba_d_conv"])
    w.add_ssm_state_size(cfg["mamba_d_state"])
    w.add_ssm_group_count(cfg["mamba_n_groups"])
    w.add_ssm_inner_size(inner)
    w.add_ssm_time_step_rank(cfg["mamba_n_heads"])
    w.add_rope_scaling_finetuned(False)

    ref: dict[str, np.ndarray] = {}

    def q(name: str, t: np.ndarray) -> np.ndarray:
        return _quantized(w, name, t, qtype, mix, n_layer)

    groups = cfg["mamba_n_groups"]
    for hf, t in weights.items():
        if hf == "model.embed_tokens.weight":
            ref[hf] = q("token_embd.weight", t)
            continue
        if hf == "model.norm.weight":
            ref[hf] = _f32(w, "output_norm.weight", t)
            continue
        if hf == "lm_head.weight":
            ref[hf] = q("output.weight", t)
            continue
        parts = hf.split(".")
        i, rest = int(parts[2]), ".".join(parts[3:])
        blk = f"blk.{i}"
        if rest == "input_layernorm.weight":
            ref[hf] = _f32(w, f"{blk}.attn_norm.weight", t)
        elif rest == "post_attention_layernorm.weight":
            ref[hf] = _f32(w, f"{blk}.ffn_norm.weight", t)
        elif rest == "mamba.in_proj.weight":
            ref[hf] = q(f"{blk}.ssm_in.weight", t)
        elif rest == "mamba.out_proj.weight":
            ref[hf] = q(f"{blk}.ssm_out.weight", t)
        elif rest == "mamba.conv1d.weight":
            ref[hf] = _f32(w, f"{blk}.ssm_conv1d.weight", t.squeeze(1))[:, None, :]
        elif rest == "mamba.conv1d.bias":
            ref[hf] = _f32(w, f"{blk}.ssm_conv1d.bias", t)
        elif rest == "mamba.dt_bias":
            ref[hf] = _f32(w, f"{blk}.ssm_dt.bias", t)
        elif rest == "mamba.A_log":
            a = _f32(w, f"{blk}.ssm_a", -np.exp(t.astype(np.float32))[:, None])
            ref[hf] = np.log(-a[:, 0])
        elif rest == "mamba.D":
            ref[hf] = _f32(w, f"{blk}.ssm_d", t[:, None])[:, 0]
        elif rest == "mamba.norm.weight":
            ref[hf] = _f32(w, f"{blk}.ssm_norm.weight", t.reshape(groups, -1)).reshape(-1)
        elif rest.startswith("self_attn."):
            proj = rest.split(".")[1]
            kind = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}[proj]
            if proj in ("q_proj", "k_proj"):
                perm = _llamacpp_permute(np.arange(t.shape[0]), n_head if proj == "q_proj" else n_kv)
                ref[hf] = q(f"{blk}.{kind}.weight", t[perm])[np.argsort(perm)]
            else:
                ref[hf] = q(f"{blk}.{kind}.weight", t)
        elif rest == "block_sparse_moe.router.layer.weight":
            ref[hf] = _f32(w, f"{blk}.ffn_gate_inp.weight", t)  # routers stay F32
        elif rest == "block_sparse_moe.input_linear.weight":
            gate, up = np.split(t, 2, axis=1)
            ref[hf] = np.concatenate([q(f"{blk}.ffn_gate_exps.weight", gate), q(f"{blk}.ffn_up_exps.weight", up)], 1)
        elif rest == "block_sparse_moe.output_linear.weight":
            ref[hf] = q(f"{blk}.ffn_down_exps.weight", t)
        elif rest == "shared_mlp.input_linear.weight":
            gate, up = np.split(t, 2, axis=0)
            names = ("ffn_gate_shexp", "ffn_up_shexp") if experts else ("ffn_gate", "ffn_up")
            ref[hf] = np.concatenate([q(f"{blk}.{names[0]}.weight", gate), q(f"{blk}.{names[1]}.weight", up)])
        elif rest == "shared_mlp.output_linear.weight":
            ref[hf] = q(f"{blk}.{'ffn_down_shexp' if experts else 'ffn_down'}.weight", t)
        else:
            raise AssertionError(hf)
    return ref


def _write_gemma3n(w: gguf.GGUFWriter, cfg: dict, weights: dict, qtype: QT, mix: bool, ollama: bool) -> dict:
    n_layer = cfg["num_hidden_layers"]
    vocab = cfg["vocab_size"]
    sparsity = [float(np.float32(NormalDist().inv_cdf(p))) if p > 0 else float("-inf")
                for p in cfg["activation_sparsity_pattern"]]  # fmt: skip
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layer)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
    w.add_shared_kv_layers(cfg["num_kv_shared_layers"])
    w.add_embedding_length_per_layer_input(cfg["hidden_size_per_layer_input"])
    w.add_altup_active_idx(cfg["altup_active_idx"])
    w.add_altup_num_inputs(cfg["altup_num_inputs"])
    w.add_activation_sparsity_scale(sparsity)
    if ollama:  # convert_gemma3n.go's keys: one MLP width, its own names for the head size and local base
        w.add_feed_forward_length(cfg["intermediate_size"][0])
        w.add_uint32("gemma3n.head_dim", cfg["head_dim"])
        w.add_float32("gemma3n.rope.freq_base_local", cfg["rope_local_base_freq"])
        w.add_bool("gemma3n.altup.correct_scale", cfg["altup_correct_scale"])
        w.add_float32("gemma3n.altup.lr_multiplier", 1.0)
    else:  # Gemma3NModel (Gemma3Model, TextModel)
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_rope_freq_base_swa(cfg["rope_local_base_freq"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3N, n_layer)
    ref: dict[str, np.ndarray] = {}
    stacks: dict[str, list[tuple[int, str, np.ndarray]]] = {}
    for hf, t in weights.items():
        short = "model." + hf.removeprefix("model.language_model.")
        if ".altup_projections." in short or ".altup_unembed_projections." in short:
            stacks.setdefault(short.rsplit(".", 2)[0], []).append((int(short.split(".")[2]), hf, t))
            continue
        if short.endswith("correct_output_scale"):
            short += ".weight"  # Gemma3NModel.filter_tensors
        name = names.get_name(short, try_suffixes=(".weight",))
        assert name, hf
        if short.endswith(("embed_tokens.weight", "embed_tokens_per_layer.weight")) and not ollama:
            padded = np.zeros((vocab, t.shape[1]), np.float32)  # Gemma3NModel pads to vocab_size
            padded[: t.shape[0]] = t
            ref[hf] = _quantized(w, name, padded, qtype, mix, n_layer)[: t.shape[0]]
        elif t.ndim == 1 or name.endswith(("_norm.weight", "altup_correct_coef.weight", "altup_predict_coef.weight")):
            if ollama and "coef" in name:
                t = np.clip(t, -cfg["altup_coef_clip"], cfg["altup_coef_clip"])  # clamped at conversion
            ref[hf] = _f32(w, name, t)
        else:
            ref[hf] = _quantized(w, name, t, qtype, mix, n_layer)
    for short, members in stacks.items():
        members.sort()
        name = "altup_proj.weight" if short.endswith("altup_projections") else "altup_unembd_proj.weight"
        decoded = _quantized(w, name, np.stack([t for _, _, t in members]), qtype, mix, n_layer)
        ref.update({hf: decoded[i] for i, (_, hf, _) in enumerate(members)})
    return ref


def write_hybrid_gguf(hf_dir: Path, path: Path, qtype: QT, mix: bool = False, ollama: bool = False) -> dict:
    """``hf_dir`` (a CONFIGS checkpoint) as llama.cpp's converter writes it (``ollama``: gemma3n as
    Ollama's converter does); returns what llama.cpp decodes, by Hugging Face name."""
    hf_dir = Path(hf_dir)
    top = json.loads((hf_dir / "config.json").read_text())
    mt = top["model_type"]
    cfg = {**top.get("text_config", top), "eos_token_id": top["eos_token_id"]}
    w = gguf.GGUFWriter(str(path), GGUF_ARCH[mt])
    w.add_name(f"tiny {mt}")
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_K_M if mix else _FILE_TYPE[qtype]))
    weights = load_hf_weights(hf_dir)
    if mt == "granitemoehybrid":
        ref = _write_granitehybrid(w, cfg, weights, qtype, mix)
    else:
        ref = _write_gemma3n(w, cfg, weights, qtype, mix, ollama)
    _tokenizer_metadata(w, hf_dir, cfg)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref
