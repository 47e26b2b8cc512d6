"""BERT-family sentence encoders (sentence-transformers folders) on MLX.

Only the pieces an embedding endpoint needs: the encoder stack, the tokenizer from
tokenizer.json, and the sentence-transformers pooling / normalisation. Results match
sentence-transformers (see tests/test_encoder.py and tests/fixtures/embed_reference.json).

Two layouts: BERT / RoBERTa / XLM-R (learned positions, GELU MLP, HF BertModel names) and
NomicBERT (nomic-embed-text: rotary positions, fused QKV, SwiGLU, no biases; the names of
nomic-ai's own modeling code).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from tokenizers import Tokenizer

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "nomic_bert", "modernbert")
POOLING_MODES = ("mean", "cls", "lasttoken", "max", "mean_sqrt_len")

# Checkpoint entries that are not part of the encoder stack sentence-transformers runs.
_DROPPED_PREFIXES = ("pooler.", "cls.", "lm_head.", "classifier.", "head.", "decoder.")
_DROPPED_SUFFIXES = ("position_ids",)
_MODEL_PREFIXES = ("bert.", "roberta.", "model.")

# Caps rows * padded length per forward pass: on the CPU backend attention scores are
# materialised (rows * heads * L^2 floats), so 256 texts of 512 tokens in one pass would
# need gigabytes. At 8192 tokens a 512-token batch is 16 rows (~200 MB of scores for 12 heads).
_TOKEN_BUDGET = 8192


class UnsupportedEncoder(ValueError):
    """The folder holds a model this encoder cannot run (architecture named in the message)."""


class InputTooLong(ValueError):
    """Raised for truncate=False when an input exceeds the model window (Ollama's exact text)."""

    def __init__(self, message: str = "the input length exceeds the context length"):
        super().__init__(message)


@runtime_checkable
class EmbeddingModel(Protocol):
    """What the server needs from any embedding model (encoder or decoder family)."""

    max_length: int
    embedding_length: int

    def count_tokens(self, texts: list[str]) -> list[int]: ...

    def embed(
        self,
        texts: list[str],
        *,
        truncate: bool = True,
        normalize: bool | None = True,
        batch_size: int = 32,
    ) -> tuple[np.ndarray, int]: ...


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EncoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    pad_token_id: int
    # RoBERTa counts positions from padding_idx + 1; BERT from 0.
    position_offset: int
    # NomicBERT: rotary positions (base > 0) instead of learned ones, SwiGLU MLP.
    rotary_base: float = 0.0
    # ModernBERT (encoder_modernbert.py): global / local layers, the local rope base and band
    local_rotary_base: float = 0.0
    layer_types: tuple[str, ...] = ()
    local_half_window: int = 0
    norm_bias: bool = True
    attention_bias: bool = True
    mlp_bias: bool = True

    @property
    def usable_positions(self) -> int:
        return self.max_position_embeddings - self.position_offset

    @property
    def is_nomic(self) -> bool:
        return self.model_type == "nomic_bert"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "EncoderConfig":
        model_type = str(raw.get("model_type") or "").lower()
        if model_type == "nomic_bert":
            return cls._from_nomic(raw)
        if model_type == "modernbert":
            from .encoder_modernbert import modernbert_fields

            return cls(**modernbert_fields(raw))
        if model_type not in SUPPORTED_MODEL_TYPES:
            arch = model_type or ",".join(raw.get("architectures") or []) or "unknown"
            raise UnsupportedEncoder(
                f"unsupported embedding model architecture {arch!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        pet = raw.get("position_embedding_type", "absolute") or "absolute"
        if pet != "absolute":
            raise UnsupportedEncoder(
                f"unsupported embedding model architecture {model_type!r} with "
                f"position_embedding_type={pet!r} (only 'absolute' is supported)"
            )
        act = raw.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise UnsupportedEncoder(f"unsupported embedding model architecture {model_type!r} with hidden_act={act!r}")
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        if hidden % heads:
            raise UnsupportedEncoder(f"{model_type!r}: hidden_size {hidden} not divisible by {heads} heads")
        pad = raw.get("pad_token_id")
        pad = int(pad) if pad is not None else (1 if model_type != "bert" else 0)
        return cls(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            intermediate_size=int(raw["intermediate_size"]),
            max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            hidden_act=act,
            pad_token_id=pad,
            position_offset=0 if model_type == "bert" else pad + 1,
        )

    @classmethod
    def _from_nomic(cls, raw: dict[str, Any]) -> "EncoderConfig":
        """nomic-ai's NomicBertConfig (GPT-2 style key names); the options its released
        embedders use, anything else refused by name rather than run wrong."""
        wanted = {
            "activation_function": "swiglu",
            "prenorm": False,
            "qkv_proj_bias": False,
            "mlp_fc1_bias": False,
            "mlp_fc2_bias": False,
            "rotary_emb_fraction": 1.0,
            "rotary_emb_interleaved": False,
        }
        for key, value in wanted.items():
            if key in raw and raw[key] != value:
                raise UnsupportedEncoder(
                    f"unsupported embedding model architecture 'nomic_bert' with {key}={raw[key]!r}"
                )
        if raw.get("num_experts") or raw.get("moe_every_n_layers"):
            raise UnsupportedEncoder("unsupported embedding model architecture 'nomic_bert' with experts (MoE)")
        hidden = int(raw.get("n_embd") or raw["hidden_size"])
        heads = int(raw.get("n_head") or raw["num_attention_heads"])
        if hidden % heads:
            raise UnsupportedEncoder(f"'nomic_bert': hidden size {hidden} not divisible by {heads} heads")
        return cls(
            model_type="nomic_bert",
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            num_hidden_layers=int(raw.get("n_layer") or raw["num_hidden_layers"]),
            num_attention_heads=heads,
            intermediate_size=int(raw.get("n_inner") or raw.get("intermediate_size") or 4 * hidden),
            max_position_embeddings=int(raw.get("n_positions") or raw.get("max_position_embeddings") or 2048),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            layer_norm_eps=float(raw.get("layer_norm_epsilon", raw.get("layer_norm_eps", 1e-12))),
            hidden_act="silu",
            pad_token_id=int(raw.get("pad_token_id") or 0),
            position_offset=0,
            rotary_base=float(raw.get("rotary_emb_base") or 10000.0),
        )


def read_config(model_dir: Path) -> EncoderConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: config.json not found")
    return EncoderConfig.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class PoolingConfig:
    mode: str  # one of POOLING_MODES
    normalize: bool

    # llama.cpp / Ollama numbering for bert.pooling_type: 0 none, 1 mean, 2 cls, 3 last.
    @property
    def ollama_pooling_type(self) -> int:
        return {"mean": 1, "cls": 2, "lasttoken": 3}.get(self.mode, 0)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def read_pooling(model_dir: Path) -> PoolingConfig:
    """pooling.json (written by the importer) or the sentence-transformers module files."""
    model_dir = Path(model_dir)
    explicit = _read_json(model_dir / "pooling.json")
    if explicit is not None:
        mode = explicit.get("mode", "mean")
        if mode not in POOLING_MODES:
            raise UnsupportedEncoder(f"unsupported pooling mode {mode!r}")
        return PoolingConfig(mode, bool(explicit.get("normalize", False)))

    modules = _read_json(model_dir / "modules.json")
    if modules is None:
        # A plain HF encoder: sentence-transformers wraps it with mean pooling, no Normalize.
        return PoolingConfig("mean", False)
    pooling_path = None
    normalize = False
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            pooling_path = m.get("path") or ""
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            # Dense, LayerNorm, ... would change the vector; refusing beats silently wrong output.
            raise UnsupportedEncoder(f"unsupported sentence-transformers module {m.get('type')!r} in modules.json")
    if pooling_path is None:
        return PoolingConfig("mean", normalize)
    return PoolingConfig(_pooling_mode(model_dir / pooling_path / "config.json"), normalize)


def _pooling_mode(path: Path) -> str:
    cfg = _read_json(path) or {}
    if isinstance(cfg.get("pooling_mode"), str):
        named = {
            "mean": "mean",
            "cls": "cls",
            "max": "max",
            "lasttoken": "lasttoken",
            "mean_sqrt_len_tokens": "mean_sqrt_len",
        }
        if cfg["pooling_mode"] not in named:
            raise UnsupportedEncoder(f"unsupported pooling mode {cfg['pooling_mode']!r}")
        return named[cfg["pooling_mode"]]
    flags = {
        "cls": cfg.get("pooling_mode_cls_token", False),
        "mean": cfg.get("pooling_mode_mean_tokens", False),
        "max": cfg.get("pooling_mode_max_tokens", False),
        "mean_sqrt_len": cfg.get("pooling_mode_mean_sqrt_len_tokens", False),
        "lasttoken": cfg.get("pooling_mode_lasttoken", False),
        "weightedmean": cfg.get("pooling_mode_weightedmean_tokens", False),
    }
    on = [k for k, v in flags.items() if v]
    if not on:
        return "mean"
    if len(on) > 1 or on[0] == "weightedmean":
        raise UnsupportedEncoder(f"unsupported pooling mode {'+'.join(on)!r}")
    return on[0]


def read_max_length(model_dir: Path, cfg: EncoderConfig) -> int:
    """The window sentence-transformers truncates to."""
    model_dir = Path(model_dir)
    limit = cfg.usable_positions
    sbert = _read_json(model_dir / "sentence_bert_config.json") or {}
    if sbert.get("max_seq_length"):
        return min(limit, int(sbert["max_seq_length"]))
    tok_cfg = _read_json(model_dir / "tokenizer_config.json") or {}
    mml = tok_cfg.get("model_max_length")
    if isinstance(mml, (int, float)) and 0 < mml < 1_000_000:
        return min(limit, int(mml))
    return limit


# --------------------------------------------------------------------------- weights


def _clean_name(name: str) -> str | None:
    for prefix in _MODEL_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if name.startswith(_DROPPED_PREFIXES) or name.endswith(_DROPPED_SUFFIXES):
        return None
    return name


def load_checkpoint(model_dir: Path) -> dict[str, mx.array]:
    """All *.safetensors in the folder, renamed to this module's names (HF names minus `bert.`)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    weights: dict[str, mx.array] = {}
    for f in files:
        for name, value in mx.load(str(f)).items():
            clean = _clean_name(name)
            if clean is not None:
                weights[clean] = value
    return weights


def check_weights(module: nn.Module, weights: dict[str, mx.array]) -> None:
    """Fail with a readable message instead of a shape error deep inside a forward pass."""
    expected = dict(tree_flatten(module.parameters()))
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} encoder weights, e.g. {', '.join(missing[:3])}")
    for name, param in expected.items():
        if tuple(weights[name].shape) != tuple(param.shape):
            raise ValueError(
                f"weight {name} has shape {tuple(weights[name].shape)}, config implies {tuple(param.shape)}"
            )


# --------------------------------------------------------------------------- module

# Eigen's float32 erf (as in XLA): x * P(x^2) / Q(x^2) on [-4, 4], error < 5e-7 against
# mx.erf. MLX's CPU backend evaluates transcendentals one element at a time (erf ~3x slower
# than this chain of multiply-adds on x86), and GELU is then a third of an encoder pass.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def _erf_rational(x: mx.array) -> mx.array:
    x = mx.clip(x, -4.0, 4.0)
    x2 = x * x
    p = mx.full(x.shape, _ERF_P[0], x.dtype)
    for c in _ERF_P[1:]:
        p = p * x2 + c
    q = mx.full(x.shape, _ERF_Q[0], x.dtype)
    for c in _ERF_Q[1:]:
        q = q * x2 + c
    return x * p / q


def _gelu_cpu(x: mx.array) -> mx.array:
    # float32 throughout: the small coefficients underflow in float16
    y = x.astype(mx.float32)
    return (0.5 * y * (1.0 + _erf_rational(y * (1.0 / math.sqrt(2.0))))).astype(x.dtype)


_ACTIVATIONS = {
    "gelu": nn.gelu,  # HF "gelu" is the exact erf form; _gelu_cpu replaces it on the CPU backend
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "gelu_fast": nn.gelu_approx,
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}


class _Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        if cfg.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self._offset = cfg.position_offset

    def __call__(self, ids: mx.array, types: mx.array) -> mx.array:
        # Right padding only, so positions are a plain range (pad positions are masked anyway).
        pos = mx.arange(ids.shape[1]) + self._offset
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None]
        if "token_type_embeddings" in self:
            x = x + self.token_type_embeddings(types)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h = cfg.hidden_size
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.n_heads = cfg.num_attention_heads
        self.scale = 1.0 / math.sqrt(h // cfg.num_attention_heads)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, t, h = x.shape

        def heads(y):
            return y.reshape(b, t, self.n_heads, -1).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(b, t, h)


class _DenseNorm(nn.Module):
    """dense -> residual add -> LayerNorm (BERT's post-LN output blocks)."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        setattr(self, "self", _SelfAttention(cfg))  # HF name: attention.self.query ...
        self.output = _DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.output(self["self"](x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self._act = _ACTIVATIONS[cfg.hidden_act]
        if cfg.hidden_act == "gelu" and mx.default_device() == mx.cpu:
            self._act = _gelu_cpu

    def __call__(self, x: mx.array) -> mx.array:
        return self._act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class _Stack(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.layer = [_Layer(cfg) for _ in range(cfg.num_hidden_layers)]


# ---- NomicBERT: post-LN blocks like BERT, but rotary attention and a SwiGLU MLP


class _NomicEmbeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)

    def __call__(self, ids: mx.array, types: mx.array) -> mx.array:
        x = self.word_embeddings(ids)
        if "token_type_embeddings" in self:
            x = x + self.token_type_embeddings(types)
        return x


def rotary_attention(qkv: mx.array, mask: mx.array, n_heads: int, base: float) -> mx.array:
    """Self-attention from a fused projection [b, t, 3h] (rows: all q heads, all k, all v) with
    rotate-half (non-interleaved) rotary over the whole head, positions from 0 -> [b, t, h], before
    the output projection."""
    b, t, h3 = qkv.shape
    h = h3 // 3
    head_dim = h // n_heads
    qkv = qkv.reshape(b, t, 3, n_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q = mx.fast.rope(qkv[0], head_dim, traditional=False, base=base, scale=1.0, offset=0)
    k = mx.fast.rope(qkv[1], head_dim, traditional=False, base=base, scale=1.0, offset=0)
    out = mx.fast.scaled_dot_product_attention(q, k, qkv[2], scale=1.0 / math.sqrt(head_dim), mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(b, t, h)


class _RotaryAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h = cfg.hidden_size
        self.Wqkv = nn.Linear(h, 3 * h, bias=False)  # rows: all q heads, all k, all v
        self.out_proj = nn.Linear(h, h, bias=False)
        self.n_heads = cfg.num_attention_heads
        self.base = cfg.rotary_base

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.out_proj(rotary_attention(self.Wqkv(x), mask, self.n_heads, self.base))


class _SwiGLU(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.fc11 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # value ("up")
        self.fc12 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # gate
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.fc11(x) * nn.silu(self.fc12(x)))


class _NomicLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn = _RotaryAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _SwiGLU(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.norm1(self.attn(x, mask) + x)
        return self.norm2(self.mlp(x) + x)


class _NomicStack(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.layers = [_NomicLayer(cfg) for _ in range(cfg.num_hidden_layers)]


class BertEncoder(nn.Module):
    """BERT / RoBERTa / NomicBERT encoder; parameter names are the HF checkpoint's without
    the `bert.` prefix (NomicBERT: nomic-ai's names, emb_ln and encoder.layers.N.attn.Wqkv)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.is_nomic:
            self.embeddings = _NomicEmbeddings(cfg)
            self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
            self.encoder = _NomicStack(cfg)
        else:
            self.embeddings = _Embeddings(cfg)
            self.encoder = _Stack(cfg)

    def __call__(self, ids: mx.array, types: mx.array, keep: mx.array) -> mx.array:
        """ids/types: int [B, L]; keep: bool [B, L] (False on padding) -> hidden [B, L, H]."""
        x = self.embeddings(ids, types)
        mask = keep[:, None, None, :]
        if "emb_ln" in self:
            x = self.emb_ln(x)
            layers = self.encoder.layers
        else:
            layers = self.encoder.layer
        for layer in layers:
            x = layer(x, mask)
        return x


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """The encoder module for ``cfg``: ModernBERT's own, or BertEncoder (BERT, RoBERTa, XLM-R, NomicBERT)."""
    if cfg.model_type == "modernbert":
        from .encoder_modernbert import ModernBertEncoder

        return ModernBertEncoder(cfg)
    return BertEncoder(cfg)


# --------------------------------------------------------------------------- pooling


def pool(hidden: mx.array, keep: mx.array, mode: str) -> mx.array:
    """sentence-transformers pooling over right-padded float32 hidden states [batch, width, dim];
    `keep` marks the real tokens. The one pooling every embedding path uses."""
    m = keep.astype(hidden.dtype)[..., None]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        last = keep.astype(mx.int32).sum(axis=1) - 1
        return mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    if mode == "max":
        return mx.where(m > 0, hidden, mx.array(-1e9, hidden.dtype)).max(axis=1)
    summed = (hidden * m).sum(axis=1)
    count = mx.maximum(m.sum(axis=1), 1e-9)
    if mode == "mean_sqrt_len":
        return summed / mx.sqrt(count)
    return summed / count


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, with torch.nn.functional.normalize's epsilon (what
    sentence-transformers uses). The one normalisation every embedding path uses."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- batching


def plan_batches(lengths: list[int], batch_size: int) -> list[tuple[list[int], int]]:
    """Group input indices into padded batches -> [(indices, padded width)].

    Longest first, so each batch pads only to its own first member. A batch also ends
    where the next text is under 3/4 of the batch width (and more than 8 tokens shorter),
    keeping padding to about a quarter at most: one 256-token text would otherwise make
    eleven 10-token neighbours cost 256 each. On the CPU backend this took a 256-text
    request of mixed 8..80-token sentences from 1.34x to 1.15x padded tokens and ~19 to
    ~30 sentences/s.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch_size = max(1, int(batch_size))
    plan: list[tuple[list[int], int]] = []
    start = 0
    while start < len(order):
        width = max(lengths[order[start]], 1)
        rows = max(1, min(batch_size, _TOKEN_BUDGET // width))
        end = start + 1
        while end < len(order) and end - start < rows:
            n = lengths[order[end]]
            if 4 * n < 3 * width and width - n > 8:
                break
            end += 1
        plan.append((order[start:end], width))
        start = end
    return plan


# --------------------------------------------------------------------------- model


def _resolve_dtype(dtype) -> mx.Dtype:
    if dtype is None:
        return mx.float32
    if isinstance(dtype, str):
        names = {
            "float32": mx.float32,
            "f32": mx.float32,
            "float16": mx.float16,
            "f16": mx.float16,
            "bfloat16": mx.bfloat16,
            "bf16": mx.bfloat16,
        }
        if dtype.lower() not in names:
            raise ValueError(f"unsupported dtype {dtype!r}")
        dtype = names[dtype.lower()]
    if mx.default_device() == mx.cpu:
        # The CPU backend computes half precision slowly and less accurately.
        return mx.float32
    return dtype


class TokenizedEmbedder:
    """What the embedding models share: module, config, pooling, a tokenizer in two copies, and the
    EmbeddingModel members that need only those. Subclasses set embedding_length and architecture."""

    kind = "embedding"

    def __init__(self, module: nn.Module, config: Any, tokenizer: Tokenizer, pooling: PoolingConfig, max_length: int):
        self.module = module
        self.config = config
        self.pooling = pooling
        self.max_length = int(max_length)
        self.weights_bytes = sum(v.nbytes for _, v in tree_flatten(module.parameters()))
        # Two tokenizer copies so neither call path mutates shared truncation state.
        self._tok_full = tokenizer
        self._tok_full.no_padding()
        self._tok_full.no_truncation()
        self._tok_trunc = Tokenizer.from_str(tokenizer.to_str())
        # The tokenizers library truncates before adding specials, so [SEP] stays last,
        # exactly as sentence-transformers' HF tokenizer call does.
        self._tok_trunc.enable_truncation(self.max_length)

    def close(self) -> None:
        del self.module

    @property
    def normalize_default(self) -> bool:
        return self.pooling.normalize

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tok_full.encode_batch(list(texts))]

    def _encode(self, texts: list[str], truncate: bool) -> tuple[list, list[int]]:
        """Texts -> (encodings, their lengths); InputTooLong when truncate is off and one is too long."""
        encodings = (self._tok_trunc if truncate else self._tok_full).encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        if not truncate and max(lengths) > self.max_length:
            raise InputTooLong()
        return encodings, lengths


class EncoderModel(TokenizedEmbedder):
    """A loaded sentence encoder: module + tokenizer + pooling. Implements EmbeddingModel."""

    def __init__(
        self,
        module: BertEncoder,
        config: EncoderConfig,
        tokenizer: Tokenizer,
        pooling: PoolingConfig,
        max_length: int,
    ):
        super().__init__(module, config, tokenizer, pooling, max_length)
        self.embedding_length = config.hidden_size
        self.architecture = config.model_type
        self._pad_id = config.pad_token_id

    @classmethod
    def load(cls, model_dir: Path, dtype=None) -> "EncoderModel":
        model_dir = Path(model_dir)
        cfg = read_config(model_dir)
        pooling = read_pooling(model_dir)
        tok_path = model_dir / "tokenizer.json"
        if not tok_path.is_file():
            raise FileNotFoundError(f"{model_dir}: tokenizer.json not found")
        tokenizer = Tokenizer.from_file(str(tok_path))

        module = build_encoder(cfg)
        weights = load_checkpoint(model_dir)
        check_weights(module, weights)
        target = _resolve_dtype(dtype)
        wanted = dict(tree_flatten(module.parameters()))
        module.load_weights(
            [
                (k, v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v)
                for k, v in weights.items()
                if k in wanted
            ],
            strict=True,
        )
        module.eval()
        mx.eval(module.parameters())
        return cls(module, cfg, tokenizer, pooling, read_max_length(model_dir, cfg))

    def embed(
        self,
        texts: list[str],
        *,
        truncate: bool = True,
        normalize: bool | None = True,
        batch_size: int = 32,
    ) -> tuple[np.ndarray, int]:
        """Embed texts -> (float32 [len(texts), dim], tokens processed).

        normalize=None follows the model's own setting (Normalize module in modules.json).
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embedding_length), np.float32), 0
        if normalize is None:
            normalize = self.pooling.normalize
        encodings, lengths = self._encode(texts, truncate)
        out = np.empty((len(texts), self.embedding_length), np.float32)
        for idx, width in plan_batches(lengths, batch_size):
            out[idx] = self._forward([encodings[i] for i in idx], width, normalize)
        return out, int(sum(lengths))

    def _forward(self, encodings, width: int, normalize: bool) -> np.ndarray:
        n = len(encodings)
        ids = np.full((n, width), self._pad_id, np.int32)
        types = np.zeros((n, width), np.int32)
        keep = np.zeros((n, width), bool)
        for r, e in enumerate(encodings):
            k = len(e.ids)
            ids[r, :k] = e.ids
            types[r, :k] = e.type_ids
            keep[r, :k] = True
        keep_mx = mx.array(keep)
        hidden = self.module(mx.array(ids), mx.array(types), keep_mx).astype(mx.float32)
        vecs = np.array(pool(hidden, keep_mx, self.pooling.mode))
        return l2_normalize(vecs) if normalize else vecs
