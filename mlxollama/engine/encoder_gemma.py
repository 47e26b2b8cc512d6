"""EmbeddingGemma (Ollama's ``embeddinggemma``; Hugging Face google/embeddinggemma-*) on MLX.

The transformer is Gemma 3's text stack run bidirectionally: every token attends to every
other on the global layers, and within a symmetric band on the sliding-window layers
(|i - j| <= sliding_window // 2, the window config.json stores for a bidirectional Gemma 3:
transformers reads 512 as an exclusive bound of 257, llama.cpp as half of 512 either side).
The hidden states are mean-pooled, passed through the sentence-transformers Dense heads
(768 -> 3072 -> 768, no bias, identity activation) and normalised.

mlx-lm's gemma3_text layers do the per-layer work (q/k norms, rope, GeGLU, the four
norms); only the loop over them is ours, so that each layer gets the padding-aware
bidirectional mask instead of the causal one mlx-lm builds, and the rope base follows
``layer_types`` rather than mlx-lm's fixed every-sixth-layer pattern.

The task prompts of config_sentence_transformers.json ("task: search result | query: ")
are not applied: Ollama embeds the text it is given, and clients add the prefix.

Folder layout (written by convert/hf_encoder.py and convert/gguf_encoder.py):
config.json (Gemma3TextConfig keys, ``use_bidirectional_attention`` true), model.safetensors
(Gemma3TextModel names plus ``dense.N.weight`` / ``dense.N.bias``), dense.json (one entry
per head), pooling.json, tokenizer.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from tokenizers import Tokenizer

from .encoder import (
    PoolingConfig,
    TokenizedEmbedder,
    UnsupportedEncoder,
    l2_normalize,
    plan_batches,
    pool,
    read_pooling,
)

# sentence-transformers Dense activations we run; the name is the class path it stores.
DENSE_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "identity": "identity",
    "tanh": "tanh",
}


def is_gemma_embedding_config(raw: dict[str, Any]) -> bool:
    """A Gemma 3 text model meant as a bidirectional encoder (EmbeddingGemma)."""
    return str(raw.get("model_type", "")) == "gemma3_text" and bool(raw.get("use_bidirectional_attention"))


def is_gemma_embedding_folder(model_dir: Path) -> bool:
    path = Path(model_dir) / "config.json"
    try:
        return is_gemma_embedding_config(json.loads(path.read_text()))
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class GemmaEmbeddingConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    query_pre_attn_scalar: float
    rope_theta: float  # global (full attention) layers
    rope_local_base_freq: float  # sliding layers
    sliding_window: int  # as config.json stores it for a bidirectional model: the band is half of it each side
    layer_types: tuple[str, ...]
    max_position_embeddings: int
    pad_token_id: int

    @property
    def half_window(self) -> int:
        return self.sliding_window // 2

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "GemmaEmbeddingConfig":
        if not is_gemma_embedding_config(raw):
            raise UnsupportedEncoder("not a bidirectional gemma3_text (EmbeddingGemma) configuration")
        act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
        if act != "gelu_pytorch_tanh":
            raise UnsupportedEncoder(
                f"unsupported embedding model architecture 'gemma3_text' with hidden_activation={act!r}"
            )
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if raw.get(key):
                raise UnsupportedEncoder(
                    f"unsupported embedding model architecture 'gemma3_text' with {key}={raw[key]!r}"
                )
        if raw.get("attention_bias"):
            raise UnsupportedEncoder("unsupported embedding model architecture 'gemma3_text' with attention_bias")
        layers = int(raw["num_hidden_layers"])
        types = raw.get("layer_types")
        if not types:
            pattern = int(raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern") or 6)
            types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
        if len(types) != layers or any(t not in ("full_attention", "sliding_attention") for t in types):
            raise UnsupportedEncoder(f"'gemma3_text': layer_types {types!r} do not describe {layers} layers")
        # transformers 5 spells the two rope bases as rope_parameters[layer type]
        rope = raw.get("rope_parameters") or {}
        scaling = raw.get("rope_scaling")
        for params in [scaling, *(v for v in rope.values() if isinstance(v, dict))]:
            kind = (params or {}).get("rope_type") or (params or {}).get("type") or "default"
            if kind != "default":
                raise UnsupportedEncoder(
                    f"unsupported embedding model architecture 'gemma3_text' with rope type {kind!r}"
                )
        global_theta = (rope.get("full_attention") or {}).get("rope_theta") or raw.get("rope_theta") or 1_000_000.0
        local_theta = (
            (rope.get("sliding_attention") or {}).get("rope_theta") or raw.get("rope_local_base_freq") or 10_000.0
        )
        heads = int(raw.get("num_attention_heads", 8))
        head_dim = int(raw.get("head_dim") or int(raw["hidden_size"]) // heads)
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            num_hidden_layers=layers,
            intermediate_size=int(raw["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            query_pre_attn_scalar=float(raw.get("query_pre_attn_scalar") or head_dim),
            rope_theta=float(global_theta),
            rope_local_base_freq=float(local_theta),
            sliding_window=int(raw.get("sliding_window") or 512),
            layer_types=tuple(types),
            max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
            pad_token_id=int(raw.get("pad_token_id") or 0),
        )

    def mlx_lm_args(self) -> dict[str, Any]:
        return {
            "model_type": "gemma3_text",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta,
            "rope_local_base_freq": self.rope_local_base_freq,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "sliding_window": self.sliding_window,
            "max_position_embeddings": self.max_position_embeddings,
        }


@dataclass(frozen=True)
class DenseHead:
    in_features: int
    out_features: int
    bias: bool
    activation: str  # "identity" | "tanh"

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation": self.activation,
        }


def read_dense_heads(model_dir: Path) -> list[DenseHead]:
    path = Path(model_dir) / "dense.json"
    if not path.is_file():
        return []
    return [
        DenseHead(int(d["in_features"]), int(d["out_features"]), bool(d["bias"]), str(d["activation"]))
        for d in json.loads(path.read_text())
    ]


class _Dense(nn.Module):
    def __init__(self, head: DenseHead):
        super().__init__()
        self.linear = nn.Linear(head.in_features, head.out_features, bias=head.bias)
        self._tanh = head.activation == "tanh"

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        return mx.tanh(y) if self._tanh else y


class GemmaEncoder(nn.Module):
    """Gemma3TextModel run bidirectionally -> final hidden states [B, L, H]. Parameter names are
    Gemma3TextModel's (embed_tokens, layers.N..., norm) plus the dense heads as dense.N."""

    def __init__(self, cfg: GemmaEmbeddingConfig, heads: list[DenseHead]):
        super().__init__()
        from mlx_lm.models import gemma3_text
        from mlx_lm.models.rope_utils import initialize_rope

        args = gemma3_text.ModelArgs.from_dict(cfg.mlx_lm_args())
        inner = gemma3_text.Gemma3Model(args)
        self.embed_tokens = inner.embed_tokens
        self.layers = inner.layers
        self.norm = inner.norm
        self.dense = [_Dense(h) for h in heads]
        self._global = [t == "full_attention" for t in cfg.layer_types]
        for layer, is_global in zip(self.layers, self._global):
            # mlx-lm picks the rope base from a fixed every-sixth-layer pattern; layer_types decide here
            base = cfg.rope_theta if is_global else cfg.rope_local_base_freq
            layer.self_attn.rope = initialize_rope(cfg.head_dim, base=base, traditional=False)
        self._half_window = cfg.half_window
        self._scale = math.sqrt(cfg.hidden_size)

    def __call__(self, ids: mx.array, keep: mx.array) -> mx.array:
        h = self.embed_tokens(ids)
        # HF multiplies by sqrt(hidden) in the weights' dtype (exact in float32; mlx-lm rounds it to bf16)
        h = h * mx.array(self._scale, dtype=h.dtype)
        width = ids.shape[1]
        keys = keep[:, None, None, :]
        pos = mx.arange(width)
        band = mx.abs(pos[:, None] - pos[None, :]) <= self._half_window
        # every padding query keeps itself as a key: a row with no key at all would give NaN,
        # and 0 * NaN through the next layer's values would reach the real tokens
        diag = mx.eye(width, dtype=mx.bool_)
        full_mask = mx.logical_or(keys, diag)
        band_mask = mx.logical_or(mx.logical_and(keys, band[None, None]), diag)
        for layer, is_global in zip(self.layers, self._global):
            h = layer(h, full_mask if is_global else band_mask, None)
        return self.norm(h)

    def heads(self, pooled: mx.array) -> mx.array:
        for d in self.dense:
            pooled = d(pooled)
        return pooled


def _tokenizer(model_dir: Path) -> Tokenizer:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: tokenizer.json not found")
    return Tokenizer.from_file(str(path))


class GemmaEmbeddingModel(TokenizedEmbedder):
    """A loaded EmbeddingGemma: implements engine.encoder.EmbeddingModel."""

    architecture = "gemma3_text"

    def __init__(
        self,
        module: GemmaEncoder,
        cfg: GemmaEmbeddingConfig,
        tokenizer: Tokenizer,
        pooling: PoolingConfig,
        max_length: int,
    ):
        super().__init__(module, cfg, tokenizer, pooling, max_length)
        self.embedding_length = module.dense[-1].linear.weight.shape[0] if module.dense else cfg.hidden_size

    @classmethod
    def load(cls, model_dir: Path, dtype=None) -> "GemmaEmbeddingModel":
        from .encoder import _resolve_dtype

        model_dir = Path(model_dir)
        cfg = GemmaEmbeddingConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
        heads = read_dense_heads(model_dir)
        module = GemmaEncoder(cfg, heads)
        weights: dict[str, mx.array] = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            weights.update(mx.load(str(f)))
        check_gemma_weights(module, weights)
        target = _resolve_dtype(dtype)
        module.load_weights([(k, v.astype(target)) for k, v in weights.items()], strict=True)
        module.eval()
        mx.eval(module.parameters())
        return cls(module, cfg, _tokenizer(model_dir), read_pooling(model_dir), read_gemma_max_length(model_dir, cfg))

    def embed(
        self, texts: list[str], *, truncate: bool = True, normalize: bool | None = True, batch_size: int = 32
    ) -> tuple[np.ndarray, int]:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embedding_length), np.float32), 0
        if normalize is None:
            normalize = self.pooling.normalize
        encodings, lengths = self._encode(texts, truncate)
        out = np.empty((len(texts), self.embedding_length), np.float32)
        for idx, width in plan_batches(lengths, batch_size):
            out[idx] = self._forward([encodings[i].ids for i in idx], max(width, 1))
        return (l2_normalize(out) if normalize else out), int(sum(lengths))

    def _forward(self, rows: list[list[int]], width: int) -> np.ndarray:
        ids = np.full((len(rows), width), self.config.pad_token_id, np.int32)
        keep = np.zeros((len(rows), width), bool)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = row
            keep[r, : len(row)] = True
        keep_mx = mx.array(keep)
        hidden = self.module(mx.array(ids), keep_mx).astype(mx.float32)
        pooled = self.module.heads(pool(hidden, keep_mx, self.pooling.mode).astype(hidden.dtype))
        vecs = np.array(pooled.astype(mx.float32))
        # an empty text (no special tokens either) pools nothing: a zero vector, not the heads' bias
        vecs[~keep.any(axis=1)] = 0.0
        return vecs


def check_gemma_weights(module: nn.Module, weights: dict[str, mx.array]) -> None:
    expected = dict(tree_flatten(module.parameters()))
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} encoder weights, e.g. {', '.join(missing[:3])}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise UnsupportedEncoder(
            f"'gemma3_text' checkpoint has weights this encoder does not use, e.g. {', '.join(extra[:3])}"
        )
    for name, param in expected.items():
        if tuple(weights[name].shape) != tuple(param.shape):
            raise ValueError(
                f"weight {name} has shape {tuple(weights[name].shape)}, config implies {tuple(param.shape)}"
            )


def read_gemma_max_length(model_dir: Path, cfg: GemmaEmbeddingConfig) -> int:
    """sentence_bert_config.json's max_seq_length, else the model's positions."""
    path = Path(model_dir) / "sentence_bert_config.json"
    limit = cfg.max_position_embeddings
    if path.is_file():
        seq = json.loads(path.read_text()).get("max_seq_length")
        if seq:
            return min(limit, int(seq))
    return limit
