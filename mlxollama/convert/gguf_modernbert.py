"""llama.cpp's ``modern-bert`` GGUF (convert_hf_to_gguf.py ModernBertModel) into the folder our
encoder runs (engine/encoder_modernbert.py).

The converter renames ModernBertModel's tensors through gguf-py's TensorNameMap and changes
nothing else (Wqkv stays fused, Wi stays one up projection that the GeGLU splits), so the
import is that table read backwards. Metadata, as llama.cpp reads it: the local window is
``{arch}.attention.sliding_window`` (ModernBERT's local_attention: a band of half of it either
side), every ``sliding_window_pattern``-th layer from layer 0 is global (default 3),
``rope.freq_base`` is the global base and ``rope.freq_base_swa`` the local one; LayerNorms
carry a bias only where the file holds one. The vocabulary is a byte-level BPE
(tokenizer.ggml.pre ``modern-bert``, GPT-2's split) with [CLS] / [SEP] added as BOS / EOS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import gguf
import numpy as np
from mlx.utils import tree_flatten

from ..engine.encoder import EncoderConfig, PoolingConfig, UnsupportedEncoder, build_encoder

ARCH = "modern-bert"
_POOLING = {1: "mean", 2: "cls", 3: "lasttoken"}


def modernbert_config(meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> dict[str, Any]:
    """config.json in ModernBertConfig's spelling (what EncoderConfig reads)."""

    def need(key: str) -> Any:
        v = meta.get(f"{ARCH}.{key}")
        if v is None:
            raise UnsupportedEncoder(f"{ARCH}: metadata {ARCH}.{key} is missing")
        return v

    embd = tensors.get("token_embd.weight")
    if embd is None:
        raise UnsupportedEncoder(f"{ARCH}: tensor token_embd.weight is missing")
    layers = int(need("block_count"))
    window = int(meta.get(f"{ARCH}.attention.sliding_window") or 0)
    period = meta.get(f"{ARCH}.attention.sliding_window_pattern")
    if isinstance(period, list):  # one bool per layer, true = sliding
        types = ["sliding_attention" if p else "full_attention" for p in period]
    else:
        every = int(period) if period else 3
        types = ["sliding_attention" if window and i % every else "full_attention" for i in range(layers)]
    act = str(meta.get(f"{ARCH}.hidden_act") or "gelu")
    return {
        "architectures": ["ModernBertModel"],
        "model_type": "modernbert",
        "vocab_size": int(embd.shape[-1]),
        "hidden_size": int(need("embedding_length")),
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": int(need("attention.head_count")),
        "hidden_activation": act,
        "max_position_embeddings": int(need("context_length")),
        "norm_eps": float(str(np.float32(meta.get(f"{ARCH}.attention.layer_norm_epsilon", 1e-5)))),
        "norm_bias": "token_embd_norm.bias" in tensors,
        "attention_bias": "blk.0.attn_qkv.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
        "global_rope_theta": float(meta.get(f"{ARCH}.rope.freq_base", 160000.0)),
        "local_rope_theta": float(meta.get(f"{ARCH}.rope.freq_base_swa", 10000.0)),
        "local_attention": window or 128,
        "layer_types": types,
        "pad_token_id": int(meta.get("tokenizer.ggml.padding_token_id") or 0),
    }


def import_modernbert_gguf(
    reader: gguf.GGUFReader, meta: Mapping[str, Any], out: Path, tensor_array, write_safetensors
):
    """-> (config dict, PoolingConfig, parameter count); weights written to out/model.safetensors."""
    tensors = {t.name: t for t in reader.tensors}
    config = modernbert_config(meta, tensors)
    cfg = EncoderConfig.from_dict(config)
    expected = {k: tuple(v.shape) for k, v in tree_flatten(build_encoder(cfg).parameters())}
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.MODERN_BERT, cfg.num_hidden_layers)
    to_gguf = {}
    for name in expected:
        g = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise UnsupportedEncoder(f"{ARCH}: no GGUF name for {name}")
        to_gguf[name] = g
    ignored = {
        n for n in tensors if n.startswith(("cls.", "output.")) and n not in to_gguf.values()
    }  # MLM / classifier heads
    unknown = sorted(set(tensors) - set(to_gguf.values()) - ignored)
    if unknown:
        raise UnsupportedEncoder(f"{ARCH}: tensor {unknown[0]} has no place in the encoder")
    plan = []
    for name, shape in expected.items():
        t = tensors.get(to_gguf[name])
        if t is None:
            raise UnsupportedEncoder(f"{ARCH}: the file lacks tensor {to_gguf[name]}")
        if int(np.prod(shape)) != int(t.n_elements):
            stored = [int(x) for x in reversed(t.shape)]
            raise UnsupportedEncoder(f"{ARCH}: tensor {t.name} has shape {stored}, the encoder expects {list(shape)}")
        plan.append((name, t, shape))
    kind = meta.get(f"{ARCH}.pooling_type")
    mode = _POOLING.get(int(kind) if kind is not None else 2)
    if mode is None:
        raise UnsupportedEncoder(f"{ARCH}: pooling_type {kind} is not supported")
    normalize = meta.get(f"{ARCH}.normalize_embeddings")
    pooling = PoolingConfig(mode, True if normalize is None else bool(normalize))

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    write_safetensors(
        out / "model.safetensors",
        [(n, s, "F32", lambda t=t, s=s: tensor_array(t).astype(np.float32).reshape(s)) for n, t, s in plan],
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "pooling.json").write_text(json.dumps({"mode": pooling.mode, "normalize": pooling.normalize}) + "\n")
    parameter_count = sum(int(t.n_elements) for _, t, _ in plan)
    return config, pooling, parameter_count
