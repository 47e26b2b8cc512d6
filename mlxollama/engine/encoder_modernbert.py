"""ModernBERT encoders (answerdotai/ModernBERT-*, gte-modernbert, modernbert-embed) for engine/encoder.py.

Pre-norm blocks with rotary attention: every ``global_attn_every_n_layers``-th layer (layer 0
first) attends globally with the global rope base, the rest within a symmetric band of
``local_attention // 2`` tokens either side with the local base; a GeGLU MLP (one Wi
projection split into input and gate); LayerNorms without bias by default; a final norm.
The first layer has no attention norm (the embeddings are normed already). Parameter names
are the Hugging Face ModernBertModel's.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .encoder import rotary_attention  # encoder.py imports this module only inside functions

_LAYER_TYPES = ("full_attention", "sliding_attention")


def modernbert_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """EncoderConfig keyword arguments from a ModernBertConfig dict (refusing what we do not run)."""
    from .encoder import _ACTIVATIONS, UnsupportedEncoder

    hidden = int(raw.get("hidden_size", 768))
    heads = int(raw.get("num_attention_heads", 12))
    if hidden % heads:
        raise UnsupportedEncoder(f"'modernbert': hidden_size {hidden} not divisible by {heads} heads")
    layers = int(raw.get("num_hidden_layers", 22))
    act = raw.get("hidden_activation", "gelu")
    if act not in _ACTIVATIONS:
        raise UnsupportedEncoder(
            f"unsupported embedding model architecture 'modernbert' with hidden_activation={act!r}"
        )
    types = raw.get("layer_types")
    if not types:
        every = int(raw.get("global_attn_every_n_layers", 3))
        types = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    if len(types) != layers or any(t not in _LAYER_TYPES for t in types):
        raise UnsupportedEncoder(f"'modernbert': layer_types {types!r} do not describe {layers} layers")
    # transformers 5 writes the two rope bases as rope_parameters[layer type]; older configs as *_rope_theta
    rope = raw.get("rope_parameters") or {}
    for params in [raw.get("rope_scaling"), *(v for v in rope.values() if isinstance(v, dict))]:
        kind = (params or {}).get("rope_type") or (params or {}).get("type") or "default"
        if kind != "default":
            raise UnsupportedEncoder(f"unsupported embedding model architecture 'modernbert' with rope type {kind!r}")
    global_theta = (rope.get("full_attention") or {}).get("rope_theta") or raw.get("global_rope_theta") or 160_000.0
    local_theta = (rope.get("sliding_attention") or {}).get("rope_theta") or raw.get("local_rope_theta") or 10_000.0
    pad = raw.get("pad_token_id")
    return {
        "model_type": "modernbert",
        "vocab_size": int(raw["vocab_size"]),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": int(raw.get("intermediate_size", 1152)),
        "max_position_embeddings": int(raw.get("max_position_embeddings", 8192)),
        "type_vocab_size": 0,
        "layer_norm_eps": float(raw.get("norm_eps", 1e-5)),
        "hidden_act": act,
        "pad_token_id": int(pad) if pad is not None else 50283,
        "position_offset": 0,
        "rotary_base": float(global_theta),
        "local_rotary_base": float(local_theta),
        "layer_types": tuple(types),
        "local_half_window": int(raw.get("local_attention", 128)) // 2,
        "norm_bias": bool(raw.get("norm_bias", False)),
        "attention_bias": bool(raw.get("attention_bias", False)),
        "mlp_bias": bool(raw.get("mlp_bias", False)),
    }


class _Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)

    def __call__(self, ids: mx.array) -> mx.array:
        return self.norm(self.tok_embeddings(ids))


class _Attention(nn.Module):
    def __init__(self, cfg, base: float):
        super().__init__()
        h = cfg.hidden_size
        self.Wqkv = nn.Linear(h, 3 * h, bias=cfg.attention_bias)
        self.Wo = nn.Linear(h, h, bias=cfg.attention_bias)
        self.n_heads = cfg.num_attention_heads
        self.base = base

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.Wo(rotary_attention(self.Wqkv(x), mask, self.n_heads, self.base))


class _GeGLU(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        from .encoder import _ACTIVATIONS, _gelu_cpu

        self.Wi = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.Wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self._act = _ACTIVATIONS[cfg.hidden_act]
        if cfg.hidden_act == "gelu" and mx.default_device() == mx.cpu:
            self._act = _gelu_cpu

    def __call__(self, x: mx.array) -> mx.array:
        value, gate = mx.split(self.Wi(x), 2, axis=-1)
        return self.Wo(self._act(value) * gate)


class _Layer(nn.Module):
    def __init__(self, cfg, index: int):
        super().__init__()
        self.is_global = cfg.layer_types[index] == "full_attention"
        if index > 0:  # layer 0 reads the already-normed embeddings
            self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)
        self.attn = _Attention(cfg, cfg.rotary_base if self.is_global else cfg.local_rotary_base)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)
        self.mlp = _GeGLU(cfg)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        normed = self.attn_norm(x) if "attn_norm" in self else x
        x = x + self.attn(normed, mask)
        return x + self.mlp(self.mlp_norm(x))


class ModernBertEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.layers = [_Layer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)
        self._half_window = cfg.local_half_window

    def __call__(self, ids: mx.array, types: mx.array, keep: mx.array) -> mx.array:
        """Same interface as BertEncoder: ids/types int [B, L], keep bool [B, L] -> hidden [B, L, H]."""
        x = self.embeddings(ids)
        keys = keep[:, None, None, :]
        pos = mx.arange(ids.shape[1])
        band = mx.abs(pos[:, None] - pos[None, :]) <= self._half_window
        # a padding query far from every real token keeps itself as a key (no all-masked row, no NaN)
        diag = mx.eye(ids.shape[1], dtype=mx.bool_)
        local = mx.logical_or(mx.logical_and(keys, band[None, None]), diag)
        for layer in self.layers:
            x = layer(x, keys if layer.is_global else local)
        return self.final_norm(x)
