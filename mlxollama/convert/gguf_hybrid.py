"""GGUF import of granite4's hybrid files (``granitehybrid``) and gemma3n (``gemma3n``).

What llama.cpp's converter (GraniteHybridModel on Mamba2Model + GraniteMoeModel; Gemma3NModel on
Gemma3Model) did to the Hugging Face tensors, and what is undone here, onto mlx-lm's
``granitemoehybrid`` and ``gemma3n``:

granitehybrid -- Mamba-2 layers between attention layers, which layer is which told only by the
per-layer ``attention.head_count_kv`` list (0 on the Mamba layers).  Mamba2Model wrote ``A_log``
as A = -exp(A_log) and unsqueezed it and ``D`` to (heads, 1) (``ssm_a``, ``ssm_d``, no
``.weight``), renamed ``dt_bias`` to ``ssm_dt.bias``, squeezed the (channels, 1, kernel) conv1d
kernel, and reshaped the gated norm to (groups, inner / groups); LlamaModel permuted the attention
layers' Q/K rows.  GraniteMoeModel split the fused ``input_linear`` tensors: the experts' into
``ffn_gate_exps`` / ``ffn_up_exps`` (stacked back onto mlx-lm's SwitchGLU), the shared MLP's into
``ffn_gate_shexp`` / ``ffn_up_shexp`` (rejoined here into ``shared_mlp.input_linear``, rows moved
exactly), or, without experts, into a dense ``ffn_gate`` / ``ffn_up`` / ``ffn_down``.  Rope is
used only where the file says ``rope.scaling.finetuned`` (the converter writes false for every
hybrid Granite 4, whose attention has no positional encoding: mlx-lm's "nope"); the context
length it then writes (2**20) is kept.  Only one SSM norm group is taken: llama.cpp normalises per
group, mlx-lm's gated norm over the whole inner size, which agree for the one group every released
Granite 4 has.

gemma3n -- norms stored as they are (Gemma3NModel's norm shift is 0: gemma3n multiplies by w),
the three AltUp projections in and out stacked along a first axis (``altup_proj``,
``altup_unembd_proj``: unstacked onto mlx-lm's numbered Linear lists), ``correct_output_scale``
named ``altup_correct_scale.weight``, the sliding / full layers as ``sliding_window_pattern``, the
activation sparsity as per-layer normal quantiles (``activation_sparsity_scale``: turned back into
the target sparsities with the normal CDF), the per-layer token embedding zero-padded to the full
vocabulary (kept so: ids past the per-layer vocabulary -- the image / audio soft tokens -- then get
zeros, as in llama.cpp).  Ollama's own converter (convert_gemma3n.go) writes the same tensor names
with a few other keys (``head_dim``, ``rope.freq_base_local``, ``altup.correct_scale``), clamps
the AltUp coefficients at conversion and does not pad; both are read.  What neither file carries
is Gemma 3n's fixed ``altup_coef_clip`` (120, applied at run time by mlx-lm, as by Hugging Face).
Vision and audio towers are not in a text GGUF (llama.cpp writes them to a separate mmproj file;
Ollama's library tags are text only).

The installed gguf-py (0.19) knows both architecture names and every tensor and key used here.
mlx-lm keeps gemma3n's text model under ``model.language_model.``, where llama.cpp's table says
``model.``: the entry's ``param_alias`` matches them.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Mapping

import numpy as np

# gguf.py registers these entries while it is itself being imported, so its names are imported
# inside the functions, once that module is complete.

GEMMA3N_ALTUP_COEF_CLIP = 120.0  # every Gemma 3n config.json; not in any GGUF
# llama.cpp's gemma3n graph when the file names no activation sparsity: its first 10 layers at 0.95
_LLAMACPP_SPARSE_LAYERS, _LLAMACPP_SPARSITY = 10, 0.95


def _layer_types(m: Any, layers: int, heads: int) -> tuple[list[bool], int]:
    """(attention or not, per layer; the attention layers' K/V head count) from head_count_kv."""
    from .gguf import UnsupportedGGUF

    kv = m.get("attention.head_count_kv")
    per_layer = [int(x) for x in kv] if isinstance(kv, list) else [int(kv if kv is not None else heads)] * layers
    if len(per_layer) != layers:
        raise UnsupportedGGUF(f"granitehybrid: head_count_kv has {len(per_layer)} entries for {layers} layers")
    counts = {n for n in per_layer if n}
    if len(counts) > 1:
        raise UnsupportedGGUF(f"granitehybrid: attention layers with different K/V head counts {sorted(counts)}")
    return [n > 0 for n in per_layer], counts.pop() if counts else heads


def _granitehybrid_config(m: Any, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """granitemoehybrid's config from GraniteHybridModel's keys (see the module docstring)."""
    from .gguf import UnsupportedGGUF, _common_config, _Meta

    layers, heads = m.int("block_count"), m.int("attention.head_count")
    if not layers or not heads:
        raise UnsupportedGGUF("granitehybrid: block_count/attention.head_count missing from metadata")
    attention, n_kv = _layer_types(m, layers, heads)
    cfg = _common_config(_Meta({**m.meta, f"{m.arch}.attention.head_count_kv": n_kv}, m.arch), tensors)
    head_dim = cfg["hidden_size"] // heads
    use_rope = bool(m.get("rope.scaling.finetuned", False))
    rotated = m.int("rope.dimension_count") or head_dim
    cfg.pop("head_dim", None)  # the converter drops head_dim; _common_config took the rotated size for it
    if (m.int("attention.key_length") or head_dim) != head_dim:
        raise UnsupportedGGUF("granitehybrid: a head size other than hidden/heads is not supported by mlx-lm")
    if use_rope and (rotated != head_dim or cfg.get("rope_scaling")):
        raise UnsupportedGGUF("granitehybrid: partial or scaled rope is not supported by mlx-lm's granitemoehybrid")
    cfg.pop("rope_scaling", None)

    ssm = [i for i, a in enumerate(attention) if not a]
    inner, ssm_heads = m.int("ssm.inner_size"), m.int("ssm.time_step_rank")
    if ssm and (not inner or not ssm_heads or not m.int("ssm.state_size")):
        raise UnsupportedGGUF("granitehybrid: ssm.* metadata of the Mamba-2 layers is missing")
    groups = m.int("ssm.group_count", 1)
    if groups != 1:
        raise UnsupportedGGUF(
            f"granitehybrid: {groups} SSM norm groups (llama.cpp normalises per group, mlx-lm over the whole inner size)"
        )
    first_ssm, first_attn = (ssm or [0])[0], next((i for i, a in enumerate(attention) if a), 0)
    cfg.update(
        model_type="granitemoehybrid",
        layer_types=["attention" if a else "mamba" for a in attention],
        position_embedding_type="rope" if use_rope else "nope",
        attention_bias=f"blk.{first_attn}.attn_q.bias" in tensors,
        mamba_n_heads=ssm_heads,
        mamba_d_head=inner // ssm_heads if inner and ssm_heads else None,
        mamba_d_state=m.int("ssm.state_size"),
        mamba_d_conv=m.int("ssm.conv_kernel", 4),
        mamba_n_groups=groups,
        mamba_conv_bias=f"blk.{first_ssm}.ssm_conv1d.bias" in tensors,
        mamba_proj_bias=f"blk.{first_ssm}.ssm_in.bias" in tensors,
        # Granite's four multipliers, as llama.cpp's *_scale keys (GraniteModel)
        logits_scaling=m.float("logit_scale", 1.0),
        attention_multiplier=m.float("attention.scale", head_dim**-0.5),
        embedding_multiplier=m.float("embedding_scale", 1.0),
        residual_multiplier=m.float("residual_scale", 1.0),
    )
    cfg.setdefault("max_position_embeddings", 1 << 20)  # what the converter writes without rope
    experts = m.int("expert_count", 0) or 0
    if experts:
        up, shared = tensors.get("blk.0.ffn_up_exps.weight"), tensors.get("blk.0.ffn_up_shexp.weight")
        cfg.update(
            num_local_experts=experts,
            num_experts_per_tok=m.int("expert_used_count"),
            # mlx-lm's experts are intermediate_size wide (HF's GraniteMoeHybrid, as the converter read it)
            intermediate_size=int(up.shape[1]) if up is not None else cfg["intermediate_size"],
            shared_intermediate_size=m.int("expert_shared_feed_forward_length")
            or (int(shared.shape[1]) if shared is not None else None),
        )
    else:
        up = tensors.get("blk.0.ffn_up.weight")
        cfg["intermediate_size"] = int(up.shape[1]) if up is not None else cfg["intermediate_size"]
        cfg["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    return cfg


def _shared_gate_up_rows(cfg: Mapping[str, Any]) -> np.ndarray:
    """shared_mlp.input_linear is [gate; up], the order llama.cpp's two halves are joined in."""
    return np.arange(2 * cfg["shared_intermediate_size"])


def sparsity_from_scale(scale: float) -> float:
    """The target sparsity p whose standard-normal quantile the converter stored (it wrote
    icdf(p) in float32); the shortest decimal whose quantile rounds to the stored value, so that
    0.95 comes back as 0.95 and mlx-lm recomputes the same float32 multiplier."""
    if not math.isfinite(scale):
        return 0.0 if scale < 0 else 1.0
    normal = NormalDist()
    p = normal.cdf(scale)
    for digits in range(1, 10):
        q = round(p, digits)
        if 0.0 < q < 1.0 and math.isclose(normal.inv_cdf(q), scale, rel_tol=4e-7, abs_tol=1e-12):
            return q
    return p


def _gemma3n_sparsity(m: Any, layers: int) -> list[float]:
    from .gguf import UnsupportedGGUF

    scales = m.get("activation_sparsity_scale")
    if scales is None:
        return [_LLAMACPP_SPARSITY if i < _LLAMACPP_SPARSE_LAYERS else 0.0 for i in range(layers)]
    scales = [float(s) for s in scales] if isinstance(scales, list) else [float(scales)] * layers
    if len(scales) != layers:
        raise UnsupportedGGUF(f"gemma3n: activation_sparsity_scale has {len(scales)} entries for {layers} layers")
    return [sparsity_from_scale(s) for s in scales]


def _gemma3n_config(m: Any, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """mlx-lm's gemma3n config (a text_config) from Gemma3NModel's or Ollama's keys."""
    from .gguf import UnsupportedGGUF

    layers, hidden, heads = m.int("block_count"), m.int("embedding_length"), m.int("attention.head_count")
    if not layers or not hidden or not heads:
        raise UnsupportedGGUF("gemma3n: block_count/embedding_length/attention.head_count missing from metadata")
    pattern = m.get("attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != layers:
        raise UnsupportedGGUF("gemma3n: attention.sliding_window_pattern must name every layer")
    layer_types = ["sliding_attention" if x else "full_attention" for x in pattern]
    shared = m.int("attention.shared_kv_layers", 0) or 0
    if not 0 <= shared < layers or len(set(layer_types[: layers - shared])) != 2:
        raise UnsupportedGGUF("gemma3n: mlx-lm needs sliding and full layers among those with their own K/V")
    ff = m.get("feed_forward_length")
    if ff is None:
        raise UnsupportedGGUF("gemma3n: feed_forward_length missing from metadata")
    widths = [int(x) for x in ff] if isinstance(ff, list) else [int(ff)] * layers
    if len(widths) != layers:
        raise UnsupportedGGUF(f"gemma3n: feed_forward_length has {len(widths)} entries for {layers} layers")
    emb, per_layer_emb = tensors.get("token_embd.weight"), tensors.get("per_layer_token_embd.weight")
    laurel = tensors.get("blk.0.laurel_l.weight")
    if emb is None or per_layer_emb is None or laurel is None:
        raise UnsupportedGGUF("gemma3n: token_embd, per_layer_token_embd or laurel tensors missing")
    head_dim = m.int("attention.key_length") or m.int("head_dim") or hidden // heads
    if (m.int("attention.value_length") or head_dim) != head_dim:
        raise UnsupportedGGUF("gemma3n: value heads sized unlike key heads are not supported")
    if m.get("rope.scaling.type") not in (None, "none"):
        raise UnsupportedGGUF(f"gemma3n: rope scaling {m.get('rope.scaling.type')!r} is not supported")
    text: dict[str, Any] = {
        "model_type": "gemma3n_text",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": widths if len(set(widths)) > 1 else widths[0],
        "num_attention_heads": heads,
        "num_key_value_heads": m.int("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": m.float("attention.layer_norm_rms_epsilon", 1e-6),
        "vocab_size": int(emb.shape[1]),
        # the converter's zero rows past Hugging Face's per-layer vocabulary are kept (see above)
        "vocab_size_per_layer_input": int(per_layer_emb.shape[1]),
        "hidden_size_per_layer_input": m.int("embedding_length_per_layer_input"),
        "num_kv_shared_layers": shared,
        "sliding_window": m.int("attention.sliding_window", 512),
        "layer_types": layer_types,
        "max_position_embeddings": m.int("context_length", 32768),
        "rope_theta": m.float("rope.freq_base", 1000000.0),
        "rope_local_base_freq": m.float("rope.freq_base_swa") or m.float("rope.freq_base_local") or 10000.0,
        # llama.cpp's graph soft-caps at 30 whatever the file says; Ollama's converter writes no key
        "final_logit_softcapping": m.float("final_logit_softcapping", 30.0),
        "activation_sparsity_pattern": _gemma3n_sparsity(m, layers),
        "altup_num_inputs": m.int("altup.num_inputs", 4),
        "altup_active_idx": m.int("altup.active_idx", 0),
        # llama.cpp always multiplies by the correct_output_scale tensor; Ollama writes the flag
        "altup_correct_scale": bool(m.get("altup.correct_scale", True)),
        "altup_coef_clip": GEMMA3N_ALTUP_COEF_CLIP,
        "laurel_rank": int(laurel.shape[1]),
        "rope_scaling": None,
    }
    # The top level repeats what the importer and the server read from any config.
    top = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "vocab_size")
    return {"model_type": "gemma3n", "text_config": text, **{k: text[k] for k in top}}


def _gemma3n_param_alias(name: str) -> str:
    """mlx-lm's model.language_model.X is llama.cpp's table's model.X."""
    return "model." + name.removeprefix("model.language_model.") if name.startswith("model.language_model.") else name


def register_hybrid(architectures: dict[str, Any]) -> None:
    """Add the ``granitehybrid`` and ``gemma3n`` entries to gguf.py's ARCHITECTURES."""
    from .gguf import ArchSpec

    architectures["granitehybrid"] = ArchSpec(
        _granitehybrid_config,
        permute_qk=True,
        value_map={"ssm_a": lambda a: np.log(-a.astype(np.float32))},
        block_params={"ssm_dt.bias": "mamba.dt_bias"},
        # A's -exp(A_log) and the conv kernels stay float32, as llama.cpp computes with them
        keep_float32=frozenset({"ssm_conv1d", "ssm_a", "ssm_d", "ssm_norm"}),
        rows_joined={
            "ffn_up_shexp": (("ffn_gate_shexp", "ffn_up_shexp"), "shared_mlp.input_linear", _shared_gate_up_rows)
        },
    )
    architectures["gemma3n"] = ArchSpec(
        _gemma3n_config,
        param_alias=_gemma3n_param_alias,
        stacked={"altup_proj": "model.altup_projections", "altup_unembd_proj": "model.altup_unembed_projections"},
    )
