"""GGUF import of qwen3.5's mixture-of-experts files (``qwen35moe``) and gemma4 (``gemma4``).

What llama.cpp's converter (convert_hf_to_gguf.py: Qwen3_5MoeTextModel, Gemma4Model) did to the
Hugging Face tensors, and what is undone here, onto mlx-lm's ``qwen3_5_moe`` and ``gemma4_text``:

qwen35moe -- dense qwen3.5's linear-attention layers (value heads tiled, -exp(A_log), dt_bias as
ssm_dt.bias, norms stored as 1 + w: undone by the ``qwen35`` entry this one extends) with routed
experts on every layer: Hugging Face's fused ``experts.gate_up_proj`` is split by the converter
into stacked ``ffn_gate_exps`` / ``ffn_up_exps`` (or kept fused as ``ffn_gate_up_exps`` with
``--fuse-gate-up-exps``: gate rows first, then up, split back here exactly), plus a shared expert
behind a sigmoid gate (``ffn_*_shexp``, ``ffn_gate_inp_shexp``).  Multi-token-prediction blocks
past the model's own are left out, as for dense qwen3.5.

gemma4 -- norms stored as they are (no 1 + w), a learned per-layer output scale
(``layer_output_scale``), per-layer inputs (``per_layer_token_embd``, ``per_layer_model_proj``,
``per_layer_proj_norm``, and per block ``inp_gate``, ``proj``, ``post_norm``), the last
``shared_kv_layers`` blocks reusing an earlier block's K/V (their own k/v projections, when the
file carries them, have no place in mlx-lm and are left out), sliding and full layers told apart by
``attention.sliding_window_pattern`` (per layer) with their own head sizes (``key_length`` full,
``key_length_swa`` sliding), rope bases and rotated sizes; the full layers' "proportional" partial
rope is written as a ``rope_freqs`` tensor of 1.0 for the rotated frequencies and 1e30 for the
rest, read back here as the partial rotary factor.  The 26B MoE size adds a router (``ffn_gate_inp``
with its input scale ``ffn_gate_inp.scale``), per-expert output scales (``ffn_down_exps.scale``)
and fused ``ffn_gate_up_exps`` (gate rows first) beside the dense MLP; the 31B/26B full layers that
share one projection for keys and values (``attention_k_eq_v``) have no ``attn_v``.  A multimodal
file's vision (``v.*``, ``mm.*``) and audio (``a.*``) tensors are left out: text only.

Ollama's own converter (convert_qwen35.go) writes qwen3.5, dense and MoE, under the same names
with another layout, told apart by its fused ``ssm_ba`` ([in_proj_b; in_proj_a] rows): value heads
left in Hugging Face's order, ``ssm_dt`` without ".bias", K/V heads per layer (0 on the
linear-attention ones, which is where the full-attention interval is read from),
``mrope_sections`` and ``norm_top_k_prob`` keys; those files are read by a variant of each entry.

The installed gguf-py (0.19) knows both architecture names and every tensor and key used here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

# gguf.py registers these entries while it is itself being imported, so its names are imported
# inside the functions, once that module is complete.


def _gate_rows(cfg: Mapping[str, Any], n: int) -> slice:
    return slice(0, n // 2)


def _up_rows(cfg: Mapping[str, Any], n: int) -> slice:
    return slice(n // 2, n)


# Routers stay float32 as the converter writes them (llama.cpp routes in float32; a float16
# copy would move expert scores near a tie).
_ROUTERS = frozenset({"ffn_gate_inp", "ffn_gate_inp_shexp"})

# a fused [gate; up] expert tensor -> mlx-lm's two SwitchGLU projections, rows moved exactly
_FUSED_GATE_UP = {"ffn_gate_up_exps": (("ffn_gate_exps", _gate_rows), ("ffn_up_exps", _up_rows))}


def _qwen35moe_config(m: Any, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Dense qwen3.5's config plus the experts: routed on every layer (llama.cpp's qwen35moe has
    no dense layers), top-k weights renormalised unless the file says otherwise, and a shared
    expert as wide as expert_shared_feed_forward_length."""
    from .gguf import UnsupportedGGUF, _qwen35_config

    cfg = _qwen35_config(m, tensors)
    experts = m.int("expert_count")
    if not experts:
        raise UnsupportedGGUF("qwen35moe without experts is not supported")
    width = m.int("expert_feed_forward_length")
    if width is None and "blk.0.ffn_up_exps.weight" in tensors:
        width = int(tensors["blk.0.ffn_up_exps.weight"].shape[1])
    elif width is None and "blk.0.ffn_gate_up_exps.weight" in tensors:
        width = int(tensors["blk.0.ffn_gate_up_exps.weight"].shape[1]) // 2
    shared = tensors.get("blk.0.ffn_up_shexp.weight")
    cfg.update(
        model_type="qwen3_5_moe",
        num_experts=experts,
        num_experts_per_tok=m.int("expert_used_count"),
        moe_intermediate_size=width,
        shared_expert_intermediate_size=m.int("expert_shared_feed_forward_length")
        or (int(shared.shape[1]) if shared is not None else 0),
        decoder_sparse_step=1,
        norm_topk_prob=bool(m.get("expert_weights_norm", True)),
    )
    if not cfg["intermediate_size"]:
        cfg["intermediate_size"] = width  # unused by the MoE layers; mlx-lm wants a number
    return cfg


def _ollama_qwen35_meta(m: Any) -> Any:
    """Ollama's qwen3.5 keys in llama.cpp's spelling: one K/V head count and the full-attention
    interval from the per-layer counts, mrope_sections as rope.dimension_sections,
    norm_top_k_prob as expert_weights_norm."""
    from .gguf import UnsupportedGGUF, _Meta

    meta, arch = dict(m.meta), m.arch
    kv = m.get("attention.head_count_kv")
    if isinstance(kv, list):
        full = [i for i, n in enumerate(kv) if int(n)]
        interval = full[0] + 1 if full else 0
        if not full or full != list(range(interval - 1, len(kv), interval)) or len({int(kv[i]) for i in full}) > 1:
            raise UnsupportedGGUF(
                f"{arch}: full-attention layers {full[:8]} are not every n-th layer with one K/V size"
            )
        meta[f"{arch}.attention.head_count_kv"] = int(kv[full[0]])
        meta.setdefault(f"{arch}.full_attention_interval", interval)
    for theirs, ours in (("mrope_sections", "rope.dimension_sections"), ("norm_top_k_prob", "expert_weights_norm")):
        if f"{arch}.{theirs}" in meta:
            meta.setdefault(f"{arch}.{ours}", meta[f"{arch}.{theirs}"])
    return _Meta(meta, arch)


def _read_ollama_qwen35(build: Callable[[Any, Mapping[str, Any]], dict[str, Any]]):
    def build_config(m: Any, tensors: Mapping[str, Any]) -> dict[str, Any]:
        return build(_ollama_qwen35_meta(m), tensors)

    return build_config


def _ollama_variant(spec: Any) -> Callable[[Mapping[str, Any]], Any]:
    def pick(tensors: Mapping[str, Any]) -> Any:
        return spec if any(name.endswith(".ssm_ba.weight") for name in tensors) else None

    return pick


def _per_layer(m: Any, key: str, layers: int) -> list[int] | None:
    """A key llama.cpp writes either once or once per layer, as a per-layer list."""
    from .gguf import UnsupportedGGUF

    v = m.get(key)
    if v is None:
        return None
    values = [int(x) for x in v] if isinstance(v, list) else [int(v)] * layers
    if len(values) != layers:
        raise UnsupportedGGUF(f"{m.arch}.{key} has {len(values)} entries for {layers} layers")
    return values


def _one(values: set[int], what: str) -> int | None:
    from .gguf import UnsupportedGGUF

    if len(values) > 1:
        raise UnsupportedGGUF(f"gemma4: {what} differs between layers of one kind ({sorted(values)})")
    return next(iter(values), None)


def _proportional_factor(tensors: Mapping[str, Any], head_dim: int, rope_dims: int) -> float:
    """The full layers' partial rotary factor: Gemma4Model writes rope_freqs as 1.0 for the
    rotated frequencies, then 1e30 (no rotation) for the others, over the whole head."""
    from .gguf import UnsupportedGGUF

    t = tensors.get("rope_freqs.weight")
    if t is None:
        return rope_dims / head_dim
    factors = np.asarray(t.data, np.float64).reshape(-1)
    rotated = int(np.sum(factors < 1e20))
    if len(factors) != head_dim // 2 or not np.all(factors[:rotated] == 1.0) or not np.all(factors[rotated:] >= 1e20):
        raise UnsupportedGGUF("gemma4: rope_freqs is not the proportional rope's 1 / 1e30 pattern")
    return 2 * rotated / head_dim


def _gemma4_config(m: Any, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """gemma4_text's config from Gemma4Model's keys (see the module docstring)."""
    from .gguf import UnsupportedGGUF

    layers, hidden, heads = m.int("block_count"), m.int("embedding_length"), m.int("attention.head_count")
    if not layers or not hidden or not heads:
        raise UnsupportedGGUF("gemma4: block_count/embedding_length/attention.head_count missing from metadata")
    pattern = m.get("attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != layers:
        raise UnsupportedGGUF("gemma4: attention.sliding_window_pattern must name every layer")
    sliding = [bool(x) for x in pattern]
    shared = m.int("attention.shared_kv_layers", 0)
    first_shared = layers - shared
    kv = _per_layer(m, "attention.head_count_kv", layers) or [heads] * layers
    kv_swa = _one({kv[i] for i in range(layers) if sliding[i]}, "head_count_kv")
    kv_full = _one({kv[i] for i in range(layers) if not sliding[i]}, "head_count_kv")
    head_full = m.int("attention.key_length") or hidden // heads
    head_swa = m.int("attention.key_length_swa") or head_full
    if (m.int("attention.value_length") or head_full) != head_full or (
        m.int("attention.value_length_swa") or head_swa
    ) != head_swa:
        raise UnsupportedGGUF("gemma4: value heads sized unlike key heads are not supported")
    # Full-attention layers whose keys are their values (26B, 31B) carry no attn_v.
    kv_full_layers = [i for i in range(first_shared) if not sliding[i]]
    k_eq_v = bool(kv_full_layers) and f"blk.{kv_full_layers[0]}.attn_v.weight" not in tensors
    if kv_full is not None and kv_swa is not None and kv_full != kv_swa and not k_eq_v:
        raise UnsupportedGGUF("gemma4: full layers with their own K/V head count need shared key/value projections")

    ff = _per_layer(m, "feed_forward_length", layers)
    if not ff:
        raise UnsupportedGGUF("gemma4: feed_forward_length missing from metadata")
    width = ff[0]
    double_wide = shared > 0 and all(ff[i] == 2 * width for i in range(first_shared, layers)) and width != ff[-1]
    if any(w != (2 * width if double_wide and i >= first_shared else width) for i, w in enumerate(ff)):
        raise UnsupportedGGUF(f"gemma4: MLP widths {ff[:8]}... are not mlx-lm's (one width, doubled on shared layers)")

    rope_full = m.int("rope.dimension_count") or head_full
    rope_swa = m.int("rope.dimension_count_swa") or head_swa
    if rope_swa != head_swa:  # mlx-lm's default rope rotates the whole head
        raise UnsupportedGGUF("gemma4: partial rotary on the sliding-window layers is not supported")
    if m.get("rope.scaling.type") not in (None, "none"):
        raise UnsupportedGGUF(f"gemma4: rope scaling {m.get('rope.scaling.type')!r} is not supported")

    emb, per_layer_emb = tensors.get("token_embd.weight"), tensors.get("per_layer_token_embd.weight")
    vocab = int(emb.shape[1]) if emb is not None else len(m.meta.get("tokenizer.ggml.tokens") or [])
    per_layer = m.int("embedding_length_per_layer_input", 0) or 0
    experts = m.int("expert_count", 0) or 0
    full_index = sliding.index(False) if False in sliding else layers
    cfg: dict[str, Any] = {
        "model_type": "gemma4_text",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": width,
        "num_attention_heads": heads,
        "head_dim": head_swa,
        "global_head_dim": head_full,
        "num_key_value_heads": kv_swa if kv_swa is not None else kv_full,
        "num_global_key_value_heads": kv_full,
        "num_kv_shared_layers": shared,
        "rms_norm_eps": m.float("attention.layer_norm_rms_epsilon", 1e-6),
        "vocab_size": vocab,
        "vocab_size_per_layer_input": int(per_layer_emb.shape[1]) if per_layer_emb is not None else vocab,
        "hidden_size_per_layer_input": per_layer,
        "sliding_window": m.int("attention.sliding_window", 512),
        "sliding_window_pattern": full_index + 1,
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        "attention_k_eq_v": k_eq_v,
        "final_logit_softcapping": m.float("final_logit_softcapping"),
        "use_double_wide_mlp": double_wide,
        "enable_moe_block": experts > 0,
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_parameters": {
            "full_attention": {
                "rope_type": "proportional",
                "partial_rotary_factor": _proportional_factor(tensors, head_full, rope_full),
                "rope_theta": m.float("rope.freq_base", 1000000.0),
            },
            "sliding_attention": {"rope_type": "default", "rope_theta": m.float("rope.freq_base_swa", 10000.0)},
        },
    }
    ctx = m.int("context_length")
    if ctx:
        cfg["max_position_embeddings"] = ctx
    if experts:
        down = tensors.get("blk.0.ffn_down_exps.weight")
        width = m.int("expert_feed_forward_length") or (int(down.shape[0]) if down is not None else None)
        cfg.update(num_experts=experts, top_k_experts=m.int("expert_used_count"), moe_intermediate_size=width)
    return cfg


def _gemma4_unused(cfg: Mapping[str, Any], name: str) -> bool:
    """Tensors of a gemma4 file mlx-lm's text model has no place for: the K/V projections of the
    KV-shared layers (they reuse an earlier layer's) and an audio tower in the same file."""
    if name.startswith("a."):
        return True
    parts = name.split(".")
    if parts[0] != "blk" or len(parts) < 3 or "num_hidden_layers" not in cfg:
        return False
    first_shared = cfg["num_hidden_layers"] - cfg.get("num_kv_shared_layers", 0)
    return int(parts[1]) >= first_shared and parts[2] in ("attn_k", "attn_v", "attn_k_norm")


def register_moe_hybrid(architectures: dict[str, Any]) -> None:
    """Add the ``qwen35moe`` and ``gemma4`` entries to gguf.py's ARCHITECTURES (the dense
    ``qwen35`` entry, which qwen35moe extends, must be there already)."""
    from .gguf import ArchSpec

    qwen35 = architectures["qwen35"]
    experts: dict[str, str] = {
        "ffn_gate_exps.weight": "mlp.switch_mlp.gate_proj.weight",
        "ffn_up_exps.weight": "mlp.switch_mlp.up_proj.weight",
    }
    moe = dataclasses.replace(
        qwen35,
        build_config=_qwen35moe_config,
        block_params={**qwen35.block_params, **experts},
        split=_FUSED_GATE_UP,
        keep_float32=qwen35.keep_float32 | _ROUTERS,
    )
    # Ollama's own qwen3.5 files: no value-head reordering to undo, [b; a] split, bare ssm_dt
    ollama = {
        "row_order": {},
        "col_order": {},
        "unused": lambda cfg, name: name.startswith("mtp."),
    }
    ba = {"ssm_ba": (("ssm_beta", _gate_rows), ("ssm_alpha", _up_rows))}
    dt = {"ssm_dt.weight": "linear_attn.dt_bias"}
    ollama_dense = dataclasses.replace(
        qwen35,
        build_config=_read_ollama_qwen35(qwen35.build_config),
        split=ba,
        block_params={**qwen35.block_params, **dt},
        **ollama,
    )
    ollama_moe = dataclasses.replace(
        moe,
        build_config=_read_ollama_qwen35(_qwen35moe_config),
        split={**_FUSED_GATE_UP, **ba},
        block_params={**moe.block_params, **dt},
        **ollama,
    )
    architectures["qwen35"] = dataclasses.replace(qwen35, variant=_ollama_variant(ollama_dense))
    architectures["qwen35moe"] = dataclasses.replace(moe, variant=_ollama_variant(ollama_moe))
    gemma4_experts = {
        "ffn_gate_exps.weight": "experts.switch_glu.gate_proj.weight",
        "ffn_up_exps.weight": "experts.switch_glu.up_proj.weight",
        "ffn_down_exps.weight": "experts.switch_glu.down_proj.weight",
        # Gemma4Model's names for the router's input scale and the per-expert output scales
        "ffn_gate_inp.scale": "router.scale",
        "ffn_down_exps.scale": "router.per_expert_scale",
    }
    unused: Callable[[Mapping[str, Any], str], bool] = _gemma4_unused
    architectures["gemma4"] = ArchSpec(
        _gemma4_config, block_params=gemma4_experts, split=_FUSED_GATE_UP, unused=unused, keep_float32=_ROUTERS
    )
