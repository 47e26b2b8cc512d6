"""qwen3.5 MoE and gemma4 Hugging Face checkpoints (tests/support/ollamamlx.py's tiny
Qwen3_5MoeForConditionalGeneration and Gemma4ForConditionalGeneration folders) written as GGUF
the way llama.cpp's convert_hf_to_gguf.py writes them (Qwen3_5MoeTextModel, Gemma4Model; rules
restated below from the converter, written independently of the importer).

``write_moe_hybrid_gguf`` returns, like ``ggufwriter.write_gguf``, the weights a llama.cpp run
decodes from the file, back under the Hugging Face names and layout: running the source model
with them is the reference an exact import reproduces.

Qwen3_5MoeTextModel (Qwen3NextModel + _LinearAttentionVReorderBase + Qwen2MoeModel): the text
config; norms + 1 (not linear_attn.norm), -exp(A_log), dt_bias as dt_proj.bias, conv1d squeezed,
value heads tiled; each layer's fused experts.gate_up_proj [E, 2I, H] split into stacked
ffn_gate_exps / ffn_up_exps (``fused_gate_up``: kept as ffn_gate_up_exps, as --fuse-gate-up-exps
writes it), experts.down_proj as ffn_down_exps, shared expert and its gate; routers F32.

Gemma4Model (Gemma3Model without the 1 + w norms): the text config; head_count_kv and
feed_forward_length per layer (global K/V heads, double-wide MLPs of the KV-shared layers),
sliding_window_pattern per layer, key/value lengths full and _swa, rope dimension counts full
(the whole head) and _swa, rope bases full and _swa, shared_kv_layers, per-layer input width,
expert counts; a rope_freqs tensor of 1.0 for the full layers' rotated frequencies, 1e30 for the
others; router.scale as ffn_gate_inp.scale, router.per_expert_scale as ffn_down_exps.scale,
layer_scalar as layer_output_scale.weight, experts.gate_up_proj kept fused (ffn_gate_up_exps).
``shared_kv_tensors``: also the K/V projections of the KV-shared layers, which the published
checkpoints carry (mlx-lm drops them) and the converter writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from .ggufwriter import _FILE_TYPE, _encode, _qwen35_reference, _qwen35_tensors, _tokenizer_metadata, q4_k_m_type
from .tinyhf import load_hf_weights

MOE_HYBRID_ARCH = {"qwen3_5_moe": "qwen35moe", "gemma4": "gemma4"}
# the converter keeps these small tensors F32 whatever the output type
_F32_KINDS = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight")


def _add(w: gguf.GGUFWriter, name: str, t: np.ndarray, qtype: QT, n_layer: int, mix: bool) -> np.ndarray:
    """Write one tensor as llama.cpp would store it; returns what llama.cpp decodes from it."""
    if t.ndim == 1 or name.endswith(_F32_KINDS):
        t = np.ascontiguousarray(t, np.float32)
        w.add_tensor(name, t)
        return t
    data, decoded, used = _encode(np.ascontiguousarray(t), q4_k_m_type(name, n_layer) if mix else qtype)
    w.add_tensor(name, data, raw_dtype=None if used == QT.F16 else used)
    return decoded


def _common_keys(w: gguf.GGUFWriter, cfg: dict, qtype: QT, mix: bool) -> None:
    w.add_name(f"tiny {cfg['model_type']}")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))  # (Gemma3Model's default, and mlx-lm's)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_K_M if mix else _FILE_TYPE[qtype]))


def _qwen35moe(w, hf_dir: Path, cfg: dict, weights: dict, qtype: QT, mix: bool, fused_gate_up: bool) -> dict:
    n_layer, head_dim = cfg["num_hidden_layers"], cfg["head_dim"]
    rope = cfg["rope_parameters"]
    _common_keys(w, cfg, qtype, mix)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_expert_count(cfg["num_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
    w.add_ssm_state_size(cfg["linear_key_head_dim"])
    w.add_ssm_group_count(cfg["linear_num_key_heads"])
    w.add_ssm_time_step_rank(cfg["linear_num_value_heads"])
    w.add_ssm_inner_size(cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"])
    w.add_full_attention_interval(cfg["full_attention_interval"])
    w.add_rope_dimension_count(int(head_dim * rope["partial_rotary_factor"]))
    w.add_rope_dimension_sections([*rope["mrope_section"], 0])
    _tokenizer_metadata(w, hf_dir, cfg)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN35MOE, n_layer)
    weights = {k: v for k, v in weights.items() if not k.startswith("model.visual.")}  # the mmproj's
    _qwen35_tensors(weights, cfg, reorder_v=True)
    reference: dict[str, np.ndarray] = {}
    for hf_name, t in weights.items():
        short = hf_name.replace("model.language_model.", "model.")
        if short.endswith("mlp.experts.gate_up_proj"):
            bid = short.split(".")[2]
            if fused_gate_up:
                reference[hf_name] = _add(w, f"blk.{bid}.ffn_gate_up_exps.weight", t, qtype, n_layer, mix)
                continue
            gate, up = np.split(t, 2, axis=1)
            decoded = [
                _add(w, f"blk.{bid}.ffn_{p}_exps.weight", x, qtype, n_layer, mix)
                for p, x in zip(("gate", "up"), (gate, up))
            ]
            reference[hf_name] = np.concatenate(decoded, axis=1)
            continue
        if short.endswith("mlp.experts.down_proj"):
            short += ".weight"
        name = names.get_name(short, try_suffixes=(".weight", ".bias"))
        assert name, hf_name
        reference[hf_name] = _add(w, name, t, qtype, n_layer, mix)
    _qwen35_reference(reference, cfg, reorder_v=True)
    return reference


def _gemma4(w, hf_dir: Path, cfg: dict, weights: dict, qtype: QT, mix: bool, shared_kv_tensors: bool) -> dict:
    n_layer = cfg["num_hidden_layers"]
    head_full, head_swa = cfg["global_head_dim"], cfg["head_dim"]
    swa = [t == "sliding_attention" for t in cfg["layer_types"]]
    shared = cfg["num_kv_shared_layers"]
    rope_full, rope_swa = cfg["rope_parameters"]["full_attention"], cfg["rope_parameters"]["sliding_attention"]
    _common_keys(w, cfg, qtype, mix)
    n_ff = cfg["intermediate_size"]
    if cfg.get("use_double_wide_mlp"):
        w.add_feed_forward_length([n_ff if i < n_layer - shared else 2 * n_ff for i in range(n_layer)])
    else:
        w.add_feed_forward_length(n_ff)
    kv_swa, kv_full = cfg["num_key_value_heads"], cfg.get("num_global_key_value_heads")
    w.add_head_count_kv([kv_swa if s else kv_full for s in swa] if kv_full is not None else kv_swa)
    w.add_key_length(head_full)
    w.add_value_length(head_full)
    w.add_key_length_swa(head_swa)
    w.add_value_length_swa(head_swa)
    w.add_rope_freq_base(rope_full["rope_theta"])
    w.add_rope_freq_base_swa(rope_swa["rope_theta"])
    w.add_rope_dimension_count(head_full)
    w.add_rope_dimension_count_swa(int(head_swa * cfg.get("partial_rotary_factor", 1.0)))
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_shared_kv_layers(shared)
    w.add_embedding_length_per_layer_input(cfg.get("hidden_size_per_layer_input") or 0)
    w.add_sliding_window_pattern(swa)
    if cfg.get("enable_moe_block"):
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["top_k_experts"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    _tokenizer_metadata(w, hf_dir, cfg)
    rotated = int(head_full * rope_full["partial_rotary_factor"] / 2)
    w.add_tensor("rope_freqs.weight", np.array([1.0] * rotated + [1e30] * (head_full // 2 - rotated), np.float32))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, n_layer)
    renamed = {"router.scale": "ffn_gate_inp.scale", "router.per_expert_scale": "ffn_down_exps.scale"}
    reference: dict[str, np.ndarray] = {}
    for hf_name, t in weights.items():
        if not hf_name.startswith("model.language_model."):
            continue  # vision and audio towers: the mmproj file's
        short = "model." + hf_name.removeprefix("model.language_model.")
        bid = short.split(".")[2] if short.startswith("model.layers.") else None
        tail = short.split(".", 3)[-1]
        if tail in renamed:
            name = f"blk.{bid}.{renamed[tail]}"
        else:
            if tail in ("layer_scalar", "experts.gate_up_proj", "experts.down_proj"):
                short += ".weight"  # filter_tensors names them so
            name = names.get_name(short, try_suffixes=(".weight", ".bias"))
        assert name, hf_name
        reference[hf_name] = _add(w, name, t, qtype, n_layer, mix)
    if shared_kv_tensors:
        rng = np.random.default_rng(7)
        for i in range(n_layer - shared, n_layer):
            head, kv = (head_swa, kv_swa) if swa[i] else (head_full, kv_full or kv_swa)
            for kind in ("attn_k", "attn_v"):
                t = rng.normal(0, 0.05, (kv * head, cfg["hidden_size"])).astype(np.float32)
                _add(w, f"blk.{i}.{kind}.weight", t, qtype, n_layer, mix)
            w.add_tensor(f"blk.{i}.attn_k_norm.weight", np.ones(head, np.float32))
    return reference


def write_moe_hybrid_gguf(
    hf_dir: Path,
    path: Path,
    qtype: QT,
    *,
    mix: bool = False,
    fused_gate_up: bool = False,
    shared_kv_tensors: bool = True,
) -> dict[str, np.ndarray]:
    """``hf_dir`` (a qwen3_5_moe or gemma4 checkpoint) as llama.cpp's converter writes it, then
    quantized to ``qtype`` (``mix``: Q4_K_M's Q4_K + Q6_K mix); returns the decoded weights."""
    hf_dir = Path(hf_dir)
    top = json.loads((hf_dir / "config.json").read_text())
    mt = top["model_type"]
    cfg = {**top["text_config"], "model_type": mt, "eos_token_id": top["eos_token_id"]}
    w = gguf.GGUFWriter(str(path), MOE_HYBRID_ARCH[mt])
    weights = load_hf_weights(hf_dir)
    if mt == "qwen3_5_moe":
        reference = _qwen35moe(w, hf_dir, cfg, weights, qtype, mix, fused_gate_up)
    else:
        reference = _gemma4(w, hf_dir, cfg, weights, qtype, mix, shared_kv_tensors)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def make_gemma4_k_eq_v(hf_dir: Path, global_kv_heads: int = 1, seed: int = 5) -> Path:
    """Turn a tiny gemma4 folder (ollamamlx.build_gemma4) into the 26B/31B layout in place: the
    full-attention layers' keys are their values (``attention_k_eq_v``: no v_proj) with their own
    K/V head count (``num_global_key_value_heads``); new random k_proj weights for those layers."""
    import mlx.core as mx

    hf_dir = Path(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    text = config["text_config"]
    text.update(attention_k_eq_v=True, num_global_key_value_heads=global_kv_heads)
    weights = mx.load(str(hf_dir / "model.safetensors"))
    rng = np.random.default_rng(seed)
    first_shared = text["num_hidden_layers"] - text["num_kv_shared_layers"]
    for i, kind in enumerate(text["layer_types"][:first_shared]):
        if kind != "full_attention":
            continue
        prefix = f"model.language_model.layers.{i}.self_attn"
        weights.pop(f"{prefix}.v_proj.weight")
        shape = (global_kv_heads * text["global_head_dim"], text["hidden_size"])
        weights[f"{prefix}.k_proj.weight"] = mx.array(rng.normal(0, shape[1] ** -0.5, shape)).astype(mx.bfloat16)
    mx.save_safetensors(str(hf_dir / "model.safetensors"), weights, metadata={"format": "pt"})
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2))
    return hf_dir


def write_ollama_qwen35(hf_dir: Path, path: Path, qtype: QT) -> dict[str, np.ndarray]:
    """A qwen3.5 checkpoint, dense or MoE, as Ollama's own converter writes it (convert_qwen35.go):
    qwen35 / qwen35moe, K/V heads per layer (0 on linear-attention layers, no
    full_attention_interval: the Hugging Face configs name layer_types), mrope_sections and
    norm_top_k_prob keys; its renames, norms + 1 (not ssm_norm), -exp(A_log), conv1d squeezed,
    dt_bias as bare ssm_dt, in_proj_b and in_proj_a fused as ssm_ba ([b; a]), value heads left in
    Hugging Face's order, per-expert tensors merged into ffn_{gate,up,down}_exps, the shared
    expert's gate squeezed to (hidden,).  Returns the decoded weights under Hugging Face names."""
    hf_dir = Path(hf_dir)
    top = json.loads((hf_dir / "config.json").read_text())
    cfg = {**top["text_config"], "model_type": top["model_type"], "eos_token_id": top["eos_token_id"]}
    moe = bool(cfg.get("num_experts"))
    n_layer, head_dim, rope = cfg["num_hidden_layers"], cfg["head_dim"], cfg["rope_parameters"]
    w = gguf.GGUFWriter(str(path), "qwen35moe" if moe else "qwen35")
    _common_keys(w, cfg, qtype, False)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(int(head_dim * rope["partial_rotary_factor"]))
    if moe:
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_bool(f"{w.arch}.norm_top_k_prob", True)
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_ssm_inner_size(cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"])
    w.add_ssm_state_size(cfg["linear_key_head_dim"])
    w.add_ssm_group_count(cfg["linear_num_key_heads"])
    w.add_ssm_time_step_rank(cfg["linear_num_value_heads"])
    w.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
    interval = cfg["full_attention_interval"]
    w.add_head_count_kv([cfg["num_key_value_heads"] if (i + 1) % interval == 0 else 0 for i in range(n_layer)])
    w.add_array(f"{w.arch}.mrope_sections", list(rope["mrope_section"]))
    _tokenizer_metadata(w, hf_dir, cfg)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN35MOE if moe else gguf.MODEL_ARCH.QWEN35, n_layer)
    weights = {k: v for k, v in load_hf_weights(hf_dir).items() if not k.startswith("model.visual.")}
    reference: dict[str, np.ndarray] = {}
    for hf_name, t in weights.items():
        short = hf_name.replace("model.language_model.", "model.")
        bid = short.split(".")[2] if short.startswith("model.layers.") else None
        if short.endswith("linear_attn.in_proj_a.weight"):
            continue  # written with in_proj_b
        if short.endswith("linear_attn.in_proj_b.weight"):
            a_name = hf_name.replace("in_proj_b", "in_proj_a")
            ba = _add(w, f"blk.{bid}.ssm_ba.weight", np.concatenate([t, weights[a_name]]), qtype, n_layer, False)
            reference[hf_name], reference[a_name] = np.split(ba, 2)
            continue
        if short.endswith("mlp.experts.gate_up_proj"):
            gate, up = np.split(t, 2, axis=1)
            decoded = [
                _add(w, f"blk.{bid}.ffn_{p}_exps.weight", x, qtype, n_layer, False)
                for p, x in zip(("gate", "up"), (gate, up))
            ]
            reference[hf_name] = np.concatenate(decoded, axis=1)
            continue
        if short.endswith(".A_log"):
            reference[hf_name] = np.log(-_add(w, f"blk.{bid}.ssm_a", -np.exp(t), qtype, n_layer, False))
            continue
        if short.endswith(".dt_bias"):
            reference[hf_name] = _add(w, f"blk.{bid}.ssm_dt", t, qtype, n_layer, False)
            continue
        if short.endswith("mlp.shared_expert_gate.weight"):
            reference[hf_name] = _add(w, f"blk.{bid}.ffn_gate_inp_shexp.weight", t.reshape(-1), qtype, n_layer, False)
            reference[hf_name] = reference[hf_name].reshape(t.shape)
            continue
        if short.endswith("mlp.experts.down_proj"):
            short += ".weight"
        name = names.get_name(short, try_suffixes=(".weight", ".bias"))
        assert name, hf_name
        one = name.endswith("norm.weight") and not name.endswith("ssm_norm.weight")
        if "conv1d" in name:
            reference[hf_name] = _add(w, name, t.squeeze(1), qtype, n_layer, False)[:, None, :]
        else:
            reference[hf_name] = _add(w, name, t + 1 if one else t, qtype, n_layer, False) - (1 if one else 0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference
