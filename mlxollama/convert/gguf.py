"""Import a GGUF file (llama.cpp / Ollama) as an MLX model folder for mlx-lm.

Read with ``gguf.GGUFReader``: ``mx.load`` on a GGUF mis-decodes Q4_K without
error and rejects Q5_*/IQ*.  Block types whose dequantization is an affine map
of small integers per 32 elements are repacked bit-exactly into MLX's affine
layout (``w = scale * q + bias`` per group, little-endian bit stream packed in
uint32); everything else is dequantized with ``gguf.quants`` and requantized
as plain min/max affine 32-groups (see ``affine_quantize``).

Tensor names come from llama.cpp's own naming table (gguf-py's
``TensorNameMap``, which its converter uses) read backwards: of the Hugging
Face names a GGUF name stands for, the one mlx-lm's model class has is taken,
shape-checked.  An architecture is then one ``ARCHITECTURES`` entry: a config
builder (GGUF metadata -> config.json) plus the transforms llama.cpp's
converter applied (Q/K row permutation, gemma's 1 + w norms, tensors it split
that mlx-lm keeps whole); stacked experts land on mlx-lm's SwitchGLU.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import mmap
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import gguf
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from gguf import GGMLQuantizationType as QT
from mlx.utils import tree_map

from .gguf_hybrid import register_hybrid
from .gguf_moe_hybrid import register_moe_hybrid
from .gguf_tokenizer import UnsupportedTokenizer, write_tokenizer_files

log = logging.getLogger(__name__)

GROUP = 32  # every exact mapping below has 32-element scale groups
SHARD_BYTES = 4 << 30  # flush to a new safetensors shard past this size
_CONVERT_CHUNK = 1 << 22  # elements decoded at a time


class UnsupportedGGUF(ValueError):
    """The GGUF uses an architecture, tensor type or tokenizer we cannot import."""


@dataclass
class GGUFImport:
    architecture: str
    file_type: str
    parameter_count: int
    context_length: int | None
    embedding_length: int | None
    chat_template: str | None
    files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# metadata


def _f32(x: Any) -> float:
    # Shortest decimal that round-trips in float32: 1e-05, not 9.999999747378752e-06.
    return float(str(np.float32(x)))


def read_metadata(reader: gguf.GGUFReader) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values, value types) of the GGUF key/values, without the reader's GGUF.* pseudo keys."""
    meta: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or not f.types:
            continue
        try:
            meta[key] = f.contents()
        except UnicodeDecodeError:
            # Some sentencepiece vocabs hold invalid UTF-8 pieces.
            if f.types[0] == gguf.GGUFValueType.ARRAY:
                meta[key] = [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
            else:
                meta[key] = bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
        types[key] = f.types
    return meta, types


def model_info_from_metadata(meta: Mapping[str, Any], types: Mapping[str, Any], parameter_count: int) -> dict[str, Any]:
    """Key/values for Ollama's /api/show ``model_info``."""
    info: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        t = types.get(key) or []
        if isinstance(value, list):
            if len(value) > 5:
                value = []
            elif t and t[-1] == gguf.GGUFValueType.FLOAT32:
                value = [_f32(v) for v in value]
        elif t and t[0] == gguf.GGUFValueType.FLOAT32:
            value = _f32(value)
        elif isinstance(value, np.generic):
            value = value.item()
        info[key] = value
    info.setdefault("general.parameter_count", parameter_count)
    return info


# llama.cpp's enum llama_pooling_type, as the embedders' pooling.json names the modes.
_POOLING_MODES = {1: "mean", 2: "cls", 3: "lasttoken"}


def _embedding_pooling(pooling_type: Any, normalize: Any) -> dict[str, Any] | None:
    if pooling_type is None:
        return None
    return {"mode": _POOLING_MODES.get(int(pooling_type), "mean"), "normalize": bool(normalize)}


def file_type_name(meta: Mapping[str, Any], tensors: list[Any]) -> str:
    """Ollama-style quantization name (Q4_K_M, Q4_1, F16, ...) from general.file_type."""
    ft = meta.get("general.file_type")
    if ft is not None:
        try:
            name = gguf.LlamaFileType(int(ft)).name
        except ValueError:
            name = None
        if name and name != "GUESSED":
            if name == "ALL_F32":
                return "F32"
            name = name.removeprefix("MOSTLY_")
            return "MXFP4" if name == "MXFP4_MOE" else name
    # No (usable) file type: name it after the type holding most weight elements.
    weight: Counter[str] = Counter()
    for t in tensors:
        if len(t.shape) >= 2:
            weight[t.tensor_type.name] += int(t.n_elements)
    return weight.most_common(1)[0][0] if weight else "unknown"


# --------------------------------------------------------------------------
# exact block decoders: blocks (N, type_size) uint8 -> q (N, block) uint8,
# scale and bias (N, block // 32) float32 with w = scale * q + bias.


def _f16(col: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(col).view(np.float16).astype(np.float32)


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    # GGUF 32-element blocks: byte j holds element j (low nibble) and j + 16 (high).
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _dec_q4_0(b: np.ndarray):
    d = _f16(b[:, 0:2])
    return _nibbles32(b[:, 2:18]), d, -8.0 * d


def _dec_q4_1(b: np.ndarray):
    return _nibbles32(b[:, 4:20]), _f16(b[:, 0:2]), _f16(b[:, 2:4])


def _dec_q5_0(b: np.ndarray):
    d = _f16(b[:, 0:2])
    high = np.unpackbits(b[:, 2:6], axis=1, bitorder="little")  # bit k = element k's 5th bit
    return _nibbles32(b[:, 6:22]) | (high << 4), d, -16.0 * d


def _dec_q5_1(b: np.ndarray):
    high = np.unpackbits(b[:, 4:8], axis=1, bitorder="little")
    return _nibbles32(b[:, 8:24]) | (high << 4), _f16(b[:, 0:2]), _f16(b[:, 2:4])


def _dec_q8_0(b: np.ndarray):
    d = _f16(b[:, 0:2])
    q = (b[:, 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return q, d, -128.0 * d


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """6-bit sub-block scales and mins of Q4_K/Q5_K (12 bytes -> 8 + 8)."""
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def _k_low_nibbles(qs: np.ndarray) -> np.ndarray:
    # 4 chunks of 32 bytes: low nibbles are sub-block 2c, high nibbles 2c + 1.
    c = qs.reshape(qs.shape[0], 4, 1, 32)
    return np.concatenate([c & 0x0F, c >> 4], axis=2).reshape(qs.shape[0], 8, 32)


def _dec_q4_k(b: np.ndarray):
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    q = _k_low_nibbles(b[:, 16:144]).reshape(n, 256)
    return q, d * sc, -(dmin * mn)


def _dec_q5_k(b: np.ndarray):
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    qh = b[:, 16:48]
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # (n, 8 sub-blocks, 32)
    q = (_k_low_nibbles(b[:, 48:176]) | (high << 4)).reshape(n, 256)
    return q, d * sc, -(dmin * mn)


# qtype -> (decoder, MLX bits).  Q5_* use MLX 5-bit: q in [0, 31] fits exactly.
_EXACT: dict[QT, tuple[Callable, int]] = {
    QT.Q4_0: (_dec_q4_0, 4),
    QT.Q4_1: (_dec_q4_1, 4),
    QT.Q5_0: (_dec_q5_0, 5),
    QT.Q5_1: (_dec_q5_1, 5),
    QT.Q8_0: (_dec_q8_0, 8),
    QT.Q4_K: (_dec_q4_k, 4),
    QT.Q5_K: (_dec_q5_k, 5),
}

# Types with no exact MLX form (16-element sub-blocks, non-uniform grids):
# dequantize and requantize with 32-element groups, at a width whose rounding
# step stays well below the source's own: Q6_K -> 8 bits; IQ4 (non-uniform
# 16-level grid) -> 6 bits; 2-3 bit types -> 4 bits (keeps them small; the
# added rounding noise is a fraction of their own quantization noise).
_REQUANT_4 = {
    QT.Q2_K,
    QT.Q3_K,
    QT.IQ1_S,
    QT.IQ1_M,
    QT.IQ2_XXS,
    QT.IQ2_XS,
    QT.IQ2_S,
    QT.IQ3_XXS,
    QT.IQ3_S,
    QT.TQ1_0,
    QT.TQ2_0,
}
_REQUANT_6 = {QT.IQ4_NL, QT.IQ4_XS}


def _requant_bits(qtype: QT) -> int:
    if qtype in _REQUANT_4:
        return 4
    if qtype in _REQUANT_6:
        return 6
    return 8  # Q6_K, Q8_K, and anything else not tabulated


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers (rows, cols) into MLX's layout: element i of a row occupies
    bits [i*bits, (i+1)*bits) of the row's little-endian bit stream of uint32s."""
    rows, cols = q.shape
    if 32 % bits == 0:
        per = 32 // bits
        words = q.reshape(rows, cols // per, per).astype(np.uint32)
        words <<= np.arange(per, dtype=np.uint32) * bits
        return np.bitwise_or.reduce(words, axis=-1)
    out = np.empty((rows, cols * bits // 32), np.uint32)
    step = max(1, (1 << 24) // max(cols * bits, 1))  # bound the one-byte-per-bit temporary
    shifts = np.arange(bits, dtype=np.uint8)
    for r in range(0, rows, step):
        chunk = q[r : r + step]
        bitarr = ((chunk[..., None] >> shifts) & 1).reshape(chunk.shape[0], cols * bits)
        out[r : r + step] = np.packbits(bitarr, axis=1, bitorder="little").view(np.uint32)
    return out


def _half_if_exact(*arrays: np.ndarray) -> list[np.ndarray]:
    """float16 if every value survives the round trip exactly, else float32.
    (Q4_0/Q4_1/Q5_*/Q8_0 scales are f16 and -8d/-16d/-128d are exact barring
    overflow; Q4_K/Q5_K products d*sc need ~17 mantissa bits, so stay f32.)"""
    halves = [a.astype(np.float16) for a in arrays]
    if all(np.array_equal(h.astype(np.float32), a) for h, a in zip(halves, arrays)):
        return halves
    return [a.astype(np.float32) for a in arrays]


@dataclass
class _Tensor:
    arrays: dict[str, np.ndarray]  # suffix ("weight", "scales", "biases") -> array
    quant: tuple[int, int] | tuple[int, int, str] | None = None  # (bits, group_size[, MLX mode])


def _rows_permutation(rows: int, n_head: int) -> np.ndarray:
    """Index that undoes llama.cpp's Q/K permute (HF halves -> interleaved pairs)."""
    head_dim = rows // n_head
    return np.arange(rows).reshape(n_head, head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)


def convert_tensor(
    t: Any, perm_heads: int | None = None, mxfp4_interleaved: bool = False, row_order: np.ndarray | None = None
) -> _Tensor:
    """One GGUF tensor -> MLX arrays.  ``perm_heads``: undo llama.cpp's Q/K row
    permutation for that many heads (rows are output features, so it applies
    to packed rows, scales and biases alike, no dequantization needed);
    ``row_order``: any other row reordering to undo, as an index."""
    qtype = QT(t.tensor_type)
    ne = [int(x) for x in t.shape]  # GGUF order: ne[0] is the contiguous row length
    shape = tuple(reversed(ne))
    cols, rows = ne[0], int(np.prod(ne[1:], dtype=np.int64)) if len(ne) > 1 else 1
    perm = row_order if row_order is not None else _rows_permutation(shape[0], perm_heads) if perm_heads else None

    def permute(a: np.ndarray) -> np.ndarray:
        return a if perm is None else a[perm]

    if qtype in (QT.F32, QT.F16, QT.BF16) or len(ne) == 1:
        w = np.asarray(t.data)
        if qtype == QT.BF16:
            w = gguf.quants.dequantize(w, qtype)
        elif qtype not in (QT.F32, QT.F16):
            w = _dequantize(t, qtype)
        w = w.reshape(shape)
        if w.ndim >= 2 and w.dtype != np.float16:
            # Matrices are stored half precision unless that would overflow.
            if np.isfinite(w).all() and np.abs(w).max(initial=0.0) <= 65504.0:
                w = w.astype(np.float16)
        return _Tensor({"weight": permute(np.ascontiguousarray(w))})

    if qtype == QT.MXFP4:
        # Same E8M0 scale and E2M1 codes as MLX's mxfp4 mode; only the nibble order differs.
        blocks = np.ascontiguousarray(t.data).reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])
        qs = blocks[:, 1:]
        # llama.cpp: byte j holds elements j and j + 16; Ollama's gptoss keeps OpenAI's 2k / 2k + 1
        codes = np.stack([qs & 0x0F, qs >> 4], axis=-1).reshape(-1, 32) if mxfp4_interleaved else _nibbles32(qs)
        q = permute(codes.reshape(rows, cols))
        scale = permute(blocks[:, 0].reshape(rows, cols // GROUP))
        lead = shape[:-1]
        return _Tensor(
            {"weight": pack_bits(q, 4).reshape(*lead, -1), "scales": scale.reshape(*lead, -1)}, (4, GROUP, "mxfp4")
        )

    if qtype in _EXACT:
        decode, bits = _EXACT[qtype]
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        row_blocks = np.asarray(t.data).reshape(rows, -1)  # a view of the file, one output row per row
        packed = np.empty((rows, cols * bits // 32), np.uint32)
        scale = np.empty((rows, cols // GROUP), np.float32)
        bias = np.empty((rows, cols // GROUP), np.float32)
        # A few million elements at a time: the decode temporaries (several bytes per
        # element) stay a fixed size instead of a multiple of the largest tensor.
        step = max(1, _CONVERT_CHUNK // cols)
        for r in range(0, rows, step):
            src = row_blocks[r : r + step] if perm is None else row_blocks[perm[r : r + step]]
            q, sc, bi = decode(np.ascontiguousarray(src).reshape(-1, type_size))
            n = src.shape[0]
            packed[r : r + n] = pack_bits(q.reshape(n, cols), bits)
            scale[r : r + n], bias[r : r + n] = sc.reshape(n, -1), bi.reshape(n, -1)
        scale, bias = _half_if_exact(scale, bias)
        lead = shape[:-1]
        return _Tensor(
            {
                "weight": packed.reshape(*lead, -1),
                "scales": scale.reshape(*lead, -1),
                "biases": bias.reshape(*lead, -1),
            },
            (bits, GROUP),
        )

    bits = _requant_bits(qtype)
    w = permute(_dequantize(t, qtype).reshape(rows, cols))
    if cols % GROUP:
        return _Tensor({"weight": w.reshape(shape).astype(np.float16)})
    q, scale, bias = affine_quantize(w, bits)
    lead = shape[:-1]
    return _Tensor(
        {
            "weight": pack_bits(q, bits).reshape(*lead, -1),
            "scales": scale.reshape(*lead, -1),
            "biases": bias.reshape(*lead, -1),
        },
        (bits, GROUP),
    )


def affine_quantize(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain min/max affine quantization per 32-group.  Not mx.quantize: that
    one forces 0.0 onto the grid, which costs up to a full step of error; this
    stays within half a step.  Scales/biases are float16 (like mlx-lm) where
    that stays precise, and q is rounded against the stored values, so their
    rounding adds only ~2^-10 of the group's magnitude."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // GROUP, GROUP).astype(np.float32)
    lo, hi = g.min(-1), g.max(-1)
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels
    # float16 only while every scale is a normal f16 number: subnormal scales
    # (tiny groups at 8 bits) would lose most of their precision.
    nonzero = scale[scale > 0]
    small = nonzero.size and nonzero.min() < np.finfo(np.float16).tiny
    dtype = np.float32 if small or np.abs(g).max(initial=0.0) >= 30000.0 else np.float16
    scale = scale.astype(dtype)
    bias = lo.astype(dtype)
    s32, b32 = scale.astype(np.float32)[..., None], bias.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s32 > 0, np.rint((g - b32) / s32), 0.0)
    q = np.clip(q, 0, levels).astype(np.uint8).reshape(rows, cols)
    return q, scale, bias


def _dequantized(t: Any) -> np.ndarray:
    """Any GGUF tensor as float32 in numpy (C) order."""
    qtype = QT(t.tensor_type)
    w = np.asarray(t.data)
    w = w.astype(np.float32) if qtype in (QT.F32, QT.F16) else _dequantize(t, qtype)
    return w.reshape(tuple(int(x) for x in reversed(t.shape)))


def _dequantize(t: Any, qtype: QT) -> np.ndarray:
    try:
        return gguf.quants.dequantize(np.asarray(t.data), qtype).astype(np.float32, copy=False)
    except NotImplementedError as e:
        raise UnsupportedGGUF(f"tensor {t.name}: GGML type {qtype.name} cannot be decoded") from e


# --------------------------------------------------------------------------
# architectures


class _Meta:
    """Architecture-prefixed metadata lookups."""

    def __init__(self, meta: Mapping[str, Any], arch: str):
        self.meta, self.arch = meta, arch

    def get(self, key: str, default: Any = None) -> Any:
        v = self.meta.get(f"{self.arch}.{key}")
        return default if v is None else v

    def int(self, key: str, default: int | None = None) -> int | None:
        v = self.get(key, default)
        if isinstance(v, list):  # per-layer values
            if len(set(v)) != 1:
                raise UnsupportedGGUF(f"{self.arch}.{key} varies per layer ({v[:8]}...), not supported")
            v = v[0]
        return None if v is None else int(v)

    def float(self, key: str, default: float | None = None) -> float | None:
        v = self.get(key, default)
        return None if v is None else _f32(v)


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture needs beyond llama.cpp's own naming table: the
    config builder (GGUF metadata -> mlx-lm config.json) and the transforms
    llama.cpp's converter applied to the Hugging Face tensors."""

    build_config: Callable[[_Meta, Mapping[str, Any]], dict[str, Any]]
    # llama.cpp's converter permutes Q/K rows for llama-style rope (LlamaModel and its subclasses).
    permute_qk: bool = False
    # Present in the GGUF but carried by config.json instead of a weight.
    skip_tensors: frozenset[str] = frozenset({"rope_freqs.weight"})
    # llama.cpp's converter stores gemma RMSNorm weights as 1 + w (its graph
    # multiplies by the stored value) while mlx-lm's gemma norms apply 1 + w.
    norm_shift: float = 0.0
    # Tensors llama.cpp split that mlx-lm keeps whole: GGUF kind -> (the kinds
    # it is rebuilt from, mlx-lm module, builder(config, *arrays) -> weight).
    # Rebuilt from dequantized values, stored unquantized.
    joined: Mapping[str, tuple[tuple[str, ...], str, Callable[..., np.ndarray]]] = field(default_factory=dict)
    # Files written by another converter (Ollama's own): whose naming table to
    # read them with, their kind names -> llama.cpp's, fused tensors -> parts
    # (llama.cpp kind, rows selector(config, n_rows)), MXFP4 nibble order.
    table_arch: str | None = None
    renamed: Mapping[str, str] = field(default_factory=dict)
    split: Mapping[str, tuple[tuple[str, Callable[[Mapping[str, Any], int], Any]], ...]] = field(default_factory=dict)
    mxfp4_interleaved: bool = False
    # Where mlx-lm's model class keeps the text model ("language_model." in multimodal classes)
    param_prefix: str = ""
    # Rows (1-D: entries) llama.cpp reordered, per GGUF kind: builder(config, n_rows) -> the
    # index that restores them; input columns likewise (whole 32-column groups when quantized).
    row_order: Mapping[str, Callable[[Mapping[str, Any], int], np.ndarray]] = field(default_factory=dict)
    col_order: Mapping[str, Callable[[Mapping[str, Any], int], np.ndarray]] = field(default_factory=dict)
    # Values llama.cpp transformed, per GGUF kind: the inverse, applied to the decoded values.
    value_map: Mapping[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    # "kind.suffix" llama.cpp renamed -> mlx-lm's parameter in the block ("model.layers.N.")
    block_params: Mapping[str, str] = field(default_factory=dict)
    # F32 kinds kept F32 (SSM conv kernels: small, and llama.cpp computes with them in F32)
    keep_float32: frozenset[str] = frozenset()
    # Like ``joined``, for tensors llama.cpp only split by rows: GGUF kind -> (kinds, mlx-lm
    # module, row index(config) into their concatenation); kept quantized when the parts agree.
    rows_joined: Mapping[str, tuple[tuple[str, ...], str, Callable[[Mapping[str, Any]], np.ndarray]]] = field(
        default_factory=dict
    )
    # GGUF tensors mlx-lm's class has no place for, by config and name (gemma4's KV-shared layers' k/v)
    unused: Callable[[Mapping[str, Any], str], bool] | None = None
    # Files another converter writes under the same architecture name (Ollama's own qwen3.5):
    # the file's tensors -> the entry that reads them, or None for this one
    variant: Callable[[Mapping[str, Any]], ArchSpec | None] | None = None
    # mlx-lm parameter name -> its spelling in llama.cpp's table, where they differ by more than
    # a prefix (gemma3n's model.language_model.X is the table's model.X)
    param_alias: Callable[[str], str] | None = None
    # GGUF kinds that stack numbered Hugging Face modules along their first axis (gemma3n's
    # altup_proj): kind -> the module list's name in the table's spelling
    stacked: Mapping[str, str] = field(default_factory=dict)


_ARCH_ENUM = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


@functools.lru_cache(maxsize=32)
def _gguf_to_hf(arch: str, n_blocks: int) -> dict[str, tuple[str, ...]]:
    """llama.cpp's naming table inverted: GGUF tensor base name ("blk.3.attn_q")
    -> every Hugging Face module name the converter writes under it, for this
    architecture (gguf-py's TensorNameMap, the converter's own table)."""
    inverse: dict[str, list[str]] = {}
    for hf_name, (_, gguf_name) in gguf.TensorNameMap(_ARCH_ENUM[arch], n_blocks).mapping.items():
        inverse.setdefault(gguf_name, []).append(hf_name)
    return {k: tuple(v) for k, v in inverse.items()}


def _mlx_parameter_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of mlx-lm's model class for ``config``.
    MLX is lazy: building the module allocates nothing."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    try:
        model_cls, args_cls = _get_classes(dict(config))
        model = model_cls(args_cls.from_dict(dict(config)))
    except Exception as e:  # a config mlx-lm rejects is a GGUF we cannot import
        log.warning("mlx-lm cannot build %s from the GGUF's config: %s", config.get("model_type"), e)
        raise UnsupportedGGUF(f"{config.get('model_type')}: mlx-lm cannot build this configuration") from e
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


_VISION_PREFIXES = ("v.", "mm.")

# Stacked expert tensors (llama.cpp's ffn_*_exps) -> mlx-lm's SwitchGLU, which
# sits next to the router (ffn_gate_inp) in every mlx-lm MoE block.
_EXPERT_PROJ = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}


def tensor_name_map(
    arch: str,
    spec: ArchSpec,
    tensors: Mapping[str, Any],
    params: Mapping[str, tuple[int, ...]],
    n_blocks: int,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """GGUF tensor name -> mlx-lm parameter name (None: not a weight), choosing
    among the Hugging Face names llama.cpp accepts for it the one that
    mlx-lm's model class has.  Every GGUF tensor must land on a parameter of
    the same shape and every parameter must be filled, else the file is refused
    by name rather than mis-loaded."""
    inverse = _gguf_to_hf(spec.table_arch or arch, n_blocks)

    prefix = spec.param_prefix
    real: dict[str, str] = {}
    if spec.param_alias is not None:  # matched in the table's spelling, returned in mlx-lm's
        real = {spec.param_alias(k): k for k in params}
        params = {spec.param_alias(k): v for k, v in params.items()}

    def pick(base: str, suffix: str) -> list[str]:
        found = {f"{prefix}{hf}.{suffix}" for hf in inverse.get(base, ()) if f"{prefix}{hf}.{suffix}" in params}
        if not found and suffix == "weight":
            # bare parameters (gpt-oss's attention sinks): the converter appended ".weight"
            found = {f"{prefix}{hf}" for hf in inverse.get(base, ()) if f"{prefix}{hf}" in params}
        return sorted(found)

    names: dict[str, Any] = {}
    for name, t in tensors.items():
        # The Ollama library's multimodal GGUFs (gemma3, mistral3) carry the vision tower and its
        # projector (v.*, mm.*) beside the text model: the text model is imported, for text chat.
        unused = spec.unused is not None and spec.unused(config or {}, name)
        if name in spec.skip_tensors or name.startswith(_VISION_PREFIXES) or unused:
            names[name] = None
            continue
        # Ollama's gptoss names its sinks without ".weight"
        named = name.endswith((".weight", ".bias", ".scale"))  # (gemma4's router and expert scales)
        base, _, suffix = name.rpartition(".") if named else (name, "", "weight")
        block, _, kind = base.rpartition(".")
        kind = spec.renamed.get(kind, kind)
        base = f"{block}.{kind}" if block else kind
        got = tuple(int(x) for x in reversed(t.shape))
        if block.startswith("blk.") and int(block[4:]) >= n_blocks:
            names[name] = None  # multi-token-prediction blocks past the model's own (nextn_predict_layers)
            continue
        if kind in spec.stacked:  # one parameter per leading index, selected exactly
            parts = tuple((f"{prefix}{spec.stacked[kind]}.{i}.{suffix}", (i,)) for i in range(got[0]))
            if any(params.get(p) != got[1:] for p, _ in parts):
                raise UnsupportedGGUF(f"tensor {name!r} of shape {list(got)} does not unstack onto mlx-lm's model")
            names[name] = parts
            continue
        if kind in spec.split:
            parts = []
            for part_kind, rows in spec.split[kind]:
                renamed = spec.block_params.get(f"{part_kind}.{suffix}")
                if renamed and block.startswith("blk."):  # (gemma4's, qwen35moe's fused gate/up experts)
                    found = [p for p in (f"{prefix}model.layers.{block[4:]}.{renamed}",) if p in params]
                else:
                    found = pick(f"{block}.{part_kind}", suffix)
                if len(found) != 1:
                    raise UnsupportedGGUF(f"tensor {name!r} has no mapping for architecture {arch!r}")
                part_shape = list(got)
                axis = -2 if suffix == "weight" else -1  # rows: output features
                part_shape[axis] = len(range(got[axis])[rows(config, got[axis])])
                if [d for d in params[found[0]] if d != 1] != [d for d in part_shape if d != 1]:
                    raise UnsupportedGGUF(
                        f"tensor {name!r} has shape {list(got)}, mlx-lm expects parts like {list(params[found[0]])}"
                    )
                parts.append((found[0], rows))
            names[name] = tuple(parts)
            continue
        joined = next((j for j in [*spec.joined.values(), *spec.rows_joined.values()] if kind in j[0]), None)
        if joined is not None and block.startswith("blk."):
            # Built once, from the last of its parts; its shape is checked when built.
            names[name] = f"model.layers.{block[4:]}.{joined[1]}.{suffix}" if kind == joined[0][-1] else None
            continue
        renamed = spec.block_params.get(f"{kind}.{suffix}")
        if renamed and block.startswith("blk."):
            found = [p for p in (f"{prefix}model.layers.{block[4:]}.{renamed}",) if p in params]
        else:
            found = pick(base, suffix)
        if not found and kind in _EXPERT_PROJ:
            # the SwitchGLU of the module holding the router ("mlp.gate", "block_sparse_moe.router.layer")
            for router in pick(f"{block}.ffn_gate_inp", "weight"):
                parts = router.split(".")[:-1]
                found = [
                    c
                    for c in (
                        f"{'.'.join(parts[:i])}.switch_mlp.{_EXPERT_PROJ[kind]}.{suffix}"
                        for i in range(len(parts) - 1, 0, -1)
                    )
                    if c in params
                ][:1]
        if len(found) != 1:
            raise UnsupportedGGUF(f"tensor {name!r} has no mapping for architecture {arch!r}")
        want = params[found[0]]
        if [d for d in want if d != 1] != [d for d in got if d != 1]:
            raise UnsupportedGGUF(f"tensor {name!r} has shape {list(got)}, mlx-lm expects {list(want)}")
        names[name] = found[0]
    placed = {n for v in names.values() if v is not None for n in ([p for p, _ in v] if isinstance(v, tuple) else [v])}
    missing = set(params) - placed
    if "token_embd.weight" in tensors:
        missing.discard("lm_head.weight")  # tied: models that always build lm_head drop it in sanitize
    missing = sorted(missing)
    if missing:
        raise UnsupportedGGUF(f"{arch}: the GGUF lacks tensors mlx-lm needs ({', '.join(missing[:4])})")
    if real:
        for name, v in names.items():
            if isinstance(v, tuple):
                names[name] = tuple((real.get(p, p), rows) for p, rows in v)
            elif v is not None:
                names[name] = real.get(v, v)
    return names


def _llama3_rope_scaling(factors: np.ndarray, base: float, dims: int) -> dict[str, Any]:
    """llama.cpp stores Llama 3.1+ rope scaling only as per-frequency divisors
    (rope_freqs.weight); recover the HF ``llama3`` parameters that produce them."""
    factors = np.asarray(factors, np.float64).reshape(-1)
    if np.allclose(factors, 1.0):
        return {}
    wavelen = 2 * math.pi * base ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    factor = float(factors.max())
    for orig in (8192, 4096, 2048, 16384, 32768, 65536, 131072):
        for low in (1.0, 0.5, 2.0, 4.0):
            for high in (4.0, 2.0, 8.0, 1.0, 16.0, 32.0):
                if high <= low:
                    continue
                smooth = (orig / wavelen - low) / (high - low)
                pred = np.where(
                    wavelen < orig / high,
                    1.0,
                    np.where(wavelen > orig / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
                )
                if pred.shape == factors.shape and np.allclose(pred, factors, rtol=1e-3, atol=1e-4):
                    return {
                        "rope_type": "llama3",
                        "factor": factor,
                        "low_freq_factor": low,
                        "high_freq_factor": high,
                        "original_max_position_embeddings": orig,
                    }
    raise UnsupportedGGUF("rope_freqs.weight does not match any llama3 rope scaling; cannot import")


def _common_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    hidden = m.int("embedding_length")
    heads = m.int("attention.head_count")
    if not hidden or not heads:
        raise UnsupportedGGUF(f"{m.arch}: embedding_length/attention.head_count missing from metadata")
    emb = tensors.get("token_embd.weight")
    vocab = (
        int(emb.shape[1]) if emb is not None else m.int("vocab_size") or len(m.meta.get("tokenizer.ggml.tokens") or [])
    )
    cfg: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": m.int("block_count"),
        "intermediate_size": m.int("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": m.int("attention.head_count_kv", heads),
        "rms_norm_eps": m.float("attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": m.float("rope.freq_base", 10000.0),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    ctx = m.int("context_length")
    if ctx:
        cfg["max_position_embeddings"] = ctx

    head_dim = m.int("attention.key_length") or m.int("rope.dimension_count")
    if head_dim and head_dim != hidden // heads:
        cfg["head_dim"] = head_dim
    rope_dims = m.int("rope.dimension_count") or head_dim or hidden // heads

    scaling: dict[str, Any] = {}
    stype = m.get("rope.scaling.type")
    factor = m.float("rope.scaling.factor") or m.float("rope.scale_linear")
    if stype in (None, "linear") and factor and factor != 1.0:
        scaling = {"type": "linear", "factor": factor}
    elif stype == "yarn" and factor:
        scaling = {"type": "yarn", "factor": factor}
        orig = m.int("rope.scaling.original_context_length")
        if orig:
            scaling["original_max_position_embeddings"] = orig
        for key in ("beta_fast", "beta_slow"):
            v = m.float(f"rope.scaling.yarn_{key}")
            if v is not None:
                scaling[key] = v
    elif stype == "longrope" and m.arch == "phi3":
        pass  # phi3 builds it from its rope_factors_* tensors
    elif stype not in (None, "none", "linear"):
        raise UnsupportedGGUF(f"{m.arch}: rope scaling type {stype!r} is not supported")
    if "rope_freqs.weight" in tensors:
        t = tensors["rope_freqs.weight"]
        if QT(t.tensor_type) != QT.F32:
            raise UnsupportedGGUF("rope_freqs.weight is not F32")
        scaling = _llama3_rope_scaling(np.asarray(t.data), cfg["rope_theta"], rope_dims) or scaling
    if scaling:
        cfg["rope_scaling"] = scaling
    return cfg


def _llama_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {"model_type": "llama", **_common_config(m, tensors)}
    cfg["attention_bias"] = "blk.0.attn_q.bias" in tensors
    cfg["mlp_bias"] = "blk.0.ffn_gate.bias" in tensors
    if m.int("expert_count"):
        return _mixtral_config(cfg, m, tensors)
    return cfg


def _qwen2_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {"model_type": "qwen2", **_common_config(m, tensors)}
    if "head_dim" in cfg:  # mlx-lm's qwen2 always uses hidden // heads
        raise UnsupportedGGUF("qwen2 GGUF with a head size other than hidden/heads")
    return cfg


def _qwen3_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {"model_type": "qwen3", **_common_config(m, tensors)}
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    return cfg


def _gemma_query_scalar(m: _Meta, cfg: Mapping[str, Any], size_27b_layers: int) -> int:
    """GGUF has no query_pre_attn_scalar; llama.cpp (like gemma_pytorch) uses
    hidden / heads for the 27B models, recognised by their layer count, and
    the head size for every other size.  An int, as transformers' strict
    Gemma2Config / Gemma3TextConfig (read when the tokenizer loads) demand."""
    if cfg["num_hidden_layers"] == size_27b_layers:
        return cfg["hidden_size"] // cfg["num_attention_heads"]
    return int(cfg["head_dim"])


def _gemma_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {"model_type": "gemma", **_common_config(m, tensors)}
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg.pop("tie_word_embeddings")  # mlx-lm's gemma always ties
    _dense_only(cfg, "gemma", "rope_scaling")
    return cfg


def _gemma2_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {"model_type": "gemma2", **_common_config(m, tensors)}
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg.pop("tie_word_embeddings")  # mlx-lm's gemma2 always ties
    if cfg.pop("rope_scaling", None):
        raise UnsupportedGGUF("gemma2: rope scaling is not supported by mlx-lm's gemma2")
    cfg["query_pre_attn_scalar"] = _gemma_query_scalar(m, cfg, 46)
    # llama.cpp's defaults when the keys are missing, which are also gemma-2's values
    cfg["attn_logit_softcapping"] = m.float("attn_logit_softcapping", 50.0)
    cfg["final_logit_softcapping"] = m.float("final_logit_softcapping", 30.0)
    # Recorded for completeness: mlx-lm's gemma2 attends over the full context.
    cfg["sliding_window"] = m.int("attention.sliding_window", 4096)
    return cfg


def _gemma3_sliding_pattern(m: _Meta, layers: int, default: int = 6) -> int:
    """Period of the local/global layer pattern: llama.cpp fixes gemma3 at 6
    (5 sliding layers, then a global one), cohere2 at 4; newer files may spell it out."""
    v = m.get("attention.sliding_window_pattern")
    if v is None:
        return default
    if not isinstance(v, list):
        return int(v)
    is_swa = [bool(x) for x in v]
    period = is_swa.index(False) + 1 if False in is_swa else layers + 1
    if is_swa != [(i + 1) % period != 0 for i in range(len(is_swa))]:
        raise UnsupportedGGUF(f"{m.arch}: sliding window layer pattern {v[:12]}... is not periodic")
    return period


def _gemma3_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    # The text model of every gemma3 GGUF; a vision tower would be a separate mmproj file.
    cfg = {"model_type": "gemma3_text", **_common_config(m, tensors)}
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg["query_pre_attn_scalar"] = _gemma_query_scalar(m, cfg, 62)
    # Ollama's converter leaves these out of the library's multimodal gemma3 files (its engine reads
    # rope.global.freq_base and rope.local.freq_base): its engine's defaults, gemma3's values, apply.
    if m.get("rope.freq_base") is None:
        cfg["rope_theta"] = m.float("rope.global.freq_base", 1_000_000.0)
    if m.get("attention.layer_norm_rms_epsilon") is None:
        cfg["rms_norm_eps"] = 1e-6
    cfg["rope_local_base_freq"] = m.float("rope.freq_base_swa") or m.float("rope.local.freq_base", 10000.0)
    window = m.int("attention.sliding_window")
    if window:
        cfg["sliding_window"] = window
        cfg["sliding_window_pattern"] = _gemma3_sliding_pattern(m, cfg["num_hidden_layers"])
    else:  # no window: every layer is global (llama.cpp then uses the global rope too)
        cfg["sliding_window_pattern"] = 1
    cap = m.float("final_logit_softcapping")
    if cap:
        # mlx-lm's gemma3 has no final soft-capping; it is monotonic, so greedy
        # decoding is unchanged, only sampling temperatures differ.
        log.warning("%s: final_logit_softcapping %s is not applied by mlx-lm", m.arch, cap)
        cfg["final_logit_softcapping"] = cap
    return cfg


def _phi3_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {"model_type": "phi3", **_common_config(m, tensors)}
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    # _common_config read rope.dimension_count as the head size; in phi3 it is
    # the rotated part of the head (partial rotary, e.g. Phi-4-mini).
    cfg.pop("head_dim", None)
    if (m.int("attention.key_length") or head_dim) != head_dim:
        raise UnsupportedGGUF("phi3 GGUF with a head size other than hidden/heads")
    rope_dims = m.int("rope.dimension_count") or head_dim
    if rope_dims != head_dim:
        cfg["partial_rotary_factor"] = rope_dims / head_dim
    orig = m.int("rope.scaling.original_context_length")
    if orig:
        cfg["original_max_position_embeddings"] = orig
    window = m.int("attention.sliding_window")
    if window:
        cfg["sliding_window"] = window  # recorded; mlx-lm's phi3 attends over the full context
    scaling = cfg.pop("rope_scaling", None)
    if scaling:
        # mlx-lm's phi3 only takes LongRoPE factor lists (it requires long_factor even for "linear")
        raise UnsupportedGGUF(f"phi3: rope scaling {scaling} is not supported")
    long_t, short_t = tensors.get("rope_factors_long.weight"), tensors.get("rope_factors_short.weight")
    if long_t is not None:
        if short_t is None:
            raise UnsupportedGGUF("phi3: rope_factors_long without rope_factors_short")
        long_f = [_f32(x) for x in np.asarray(long_t.data, np.float32).reshape(-1)]
        short_f = [_f32(x) for x in np.asarray(short_t.data, np.float32).reshape(-1)]
        if len(long_f) != rope_dims // 2 or len(short_f) != rope_dims // 2:
            raise UnsupportedGGUF(f"phi3: rope factors have {len(long_f)} entries, expected {rope_dims // 2}")
        ctx, orig = cfg.get("max_position_embeddings"), cfg.get("original_max_position_embeddings", 4096)
        attn = m.float("rope.scaling.attn_factor")
        if ctx and attn is not None and ctx > orig:
            # llama.cpp's converter writes the LongRoPE factor sqrt(1 + ln s / ln orig);
            # anything else (phi3 "yarn" factors) is not what mlx-lm's SuScaledRoPE computes.
            su = math.sqrt(1 + math.log(ctx / orig) / math.log(orig))
            if not math.isclose(attn, su, rel_tol=1e-4):
                raise UnsupportedGGUF(f"phi3: rope attn_factor {attn} is not LongRoPE's {su:.6f}")
        cfg["rope_scaling"] = {"type": "longrope", "long_factor": long_f, "short_factor": short_f}
    return cfg


def _mistral3_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """llama.cpp's "mistral3": a llama-layout text model (Mistral Small 3.x,
    Ministral 3) optionally with yarn rope and Llama-4 attention temperature
    scaling, which is mlx-lm's "ministral3"; without the latter it is llama."""
    cfg = _llama_config(m, tensors)
    scaling = cfg.get("rope_scaling") or {}
    log_mul = m.float("rope.scaling.yarn_log_multiplier")
    if scaling.get("type") == "yarn" and log_mul:
        # llama.cpp's mistral3 graph: mscale 1, mscale_all_dim = yarn_log_multiplier
        scaling.update(mscale=1.0, mscale_all_dim=log_mul)
    beta = m.float("attention.temperature_scale")
    if not beta:
        return cfg
    orig = scaling.get("original_max_position_embeddings") or m.int("rope.scaling.original_context_length")
    if not orig:
        raise UnsupportedGGUF("mistral3: attention temperature scaling needs rope.scaling.original_context_length")
    params: dict[str, Any] = {
        "rope_type": "default",
        **scaling,
        "rope_theta": cfg.pop("rope_theta"),
        "llama_4_scaling_beta": beta,
        "original_max_position_embeddings": orig,
    }
    if "type" in params:
        params["rope_type"] = params.pop("type")
    cfg.pop("rope_scaling", None)
    for key in ("attention_bias", "mlp_bias"):
        if cfg.pop(key):
            raise UnsupportedGGUF("mistral3 GGUF with attention/MLP biases")
    cfg["model_type"] = "ministral3"
    cfg["rope_parameters"] = params
    return cfg


def _moe_counts(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Experts per layer and per token, plus the expert FFN width (from the
    metadata, else from the stacked tensor's shape)."""
    up = tensors.get("blk.0.ffn_up_exps.weight")
    width = m.int("expert_feed_forward_length") or (int(up.shape[1]) if up is not None else None)
    return {"num_experts_per_tok": m.int("expert_used_count"), "moe_intermediate_size": width}


def _dense_only(cfg: dict[str, Any], arch: str, *keys: str) -> None:
    for key in keys:
        if cfg.pop(key, None):
            raise UnsupportedGGUF(f"{arch}: {key.replace('_', ' ')} is not supported by mlx-lm's model")


def _mixtral_config(cfg: dict[str, Any], m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Mixtral and other llama-MoE files: llama.cpp keeps the "llama" arch and
    stacks the experts (w1/w3/w2 -> ffn_gate/up/down_exps)."""
    _dense_only(cfg, "llama MoE", "head_dim", "attention_bias", "mlp_bias", "rope_scaling")
    cfg.update(
        model_type="mixtral", num_local_experts=m.int("expert_count"), num_experts_per_tok=m.int("expert_used_count")
    )
    return cfg


def _qwen2moe_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {
        **_qwen2_config(m, tensors),
        "model_type": "qwen2_moe",
        "num_experts": m.int("expert_count"),
        **_moe_counts(m, tensors),
    }
    shexp = tensors.get("blk.0.ffn_up_shexp.weight")
    cfg["shared_expert_intermediate_size"] = m.int("expert_shared_feed_forward_length") or (
        int(shexp.shape[1]) if shexp is not None else None
    )
    return cfg


def _qwen3moe_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {
        **_qwen3_config(m, tensors),
        "model_type": "qwen3_moe",
        "num_experts": m.int("expert_count"),
        **_moe_counts(m, tensors),
    }
    cfg["intermediate_size"] = cfg["intermediate_size"] or cfg["moe_intermediate_size"]
    # llama.cpp's qwen3moe has no dense layers (its tensor table lacks ffn_up/gate/down)
    cfg["decoder_sparse_step"] = 1
    cfg["mlp_only_layers"] = []
    # llama.cpp's qwen3moe graph renormalises the top-k weights unless told otherwise.
    cfg["norm_topk_prob"] = bool(m.get("expert_weights_norm", True))
    return cfg


def _granite_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Granite 3.x: llama layout with four scalar multipliers, which llama.cpp
    stores as *_scale keys (its converter drops head_dim); "granitemoe" has
    experts instead of the MLP."""
    moe = m.arch == "granitemoe"
    cfg = {
        "model_type": "granitemoe" if moe else "granite",
        **_common_config(m, tensors),
        "attention_bias": "blk.0.attn_q.bias" in tensors,
    }
    if moe:
        cfg.update(num_local_experts=m.int("expert_count"), num_experts_per_tok=m.int("expert_used_count"))
    else:
        if m.int("expert_count"):
            raise UnsupportedGGUF("granite: experts in a dense granite file are not supported")
        cfg["mlp_bias"] = "blk.0.ffn_gate.bias" in tensors
    cfg.pop("head_dim", None)
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["logits_scaling"] = m.float("logit_scale", 1.0)
    cfg["attention_multiplier"] = m.float("attention.scale", head_dim**-0.5)
    cfg["embedding_multiplier"] = m.float("embedding_scale", 1.0)
    cfg["residual_multiplier"] = m.float("residual_scale", 1.0)
    return cfg


def _smollm3_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    # llama.cpp hard-codes SmolLM3's NoPE layers (every 4th); the file says nothing.
    return {**_llama_config(m, tensors), "model_type": "smollm3", "no_rope_layer_interval": 4}


def _olmo2_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    return {"model_type": "olmo2", **_common_config(m, tensors)}


def _layer_norm_config(model_type: str, eps_key: str):
    """Architectures with LayerNorm (not RMSNorm) and head size hidden / heads."""

    def build(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
        cfg = {"model_type": model_type, **_common_config(m, tensors)}
        cfg.pop("rms_norm_eps")
        _dense_only(cfg, m.arch, "head_dim", "rope_scaling")
        cfg[eps_key] = m.float("attention.layer_norm_epsilon", 1e-5)
        return cfg

    return build


def _cohere_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Command-R (llama.cpp "command-r"): parallel attention/MLP on one
    LayerNorm, tied embeddings, logits times logit_scale; its interleaved rope
    needs no Q/K permutation."""
    cfg = _layer_norm_config("cohere", "layer_norm_eps")(m, tensors)
    cfg["logit_scale"] = m.float("logit_scale", 1.0)
    cfg["use_qk_norm"] = "blk.0.attn_q_norm.weight" in tensors
    return cfg


def _olmoe_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """OLMoE: every layer a mixture of experts as wide as feed_forward_length."""
    return {
        "model_type": "olmoe",
        **_common_config(m, tensors),
        "num_experts": m.int("expert_count"),
        "num_experts_per_tok": m.int("expert_used_count"),
        "norm_topk_prob": bool(m.get("expert_weights_norm", False)),
    }


def _cohere2_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Command R7B: cohere with 3 sliding-window layers (with rope) per global
    layer (without), the pattern llama.cpp fixes for cohere2."""
    cfg = _cohere_config(m, tensors)
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    if (m.int("rope.dimension_count") or head_dim) != head_dim:
        raise UnsupportedGGUF("cohere2: partial rotary is not supported by mlx-lm's cohere2")
    if cfg.pop("use_qk_norm"):
        raise UnsupportedGGUF("cohere2: q/k norms are not supported by mlx-lm's cohere2")
    cfg.update(
        model_type="cohere2",
        head_dim=head_dim,
        sliding_window=m.int("attention.sliding_window", 4096),
        sliding_window_pattern=_gemma3_sliding_pattern(m, cfg["num_hidden_layers"], default=4),
    )
    return cfg


def _ffn_width(m: _Meta, tensors: Mapping[str, Any]) -> int | None:
    """The MLP's hidden width from ffn_up's shape: Phi2Model and StarCoderModel
    write feed_forward_length as 4 * n_embd whatever the model has."""
    up = tensors.get("blk.0.ffn_up.weight")
    return int(up.shape[1]) if up is not None else m.int("feed_forward_length")


def _phi2_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Phi-2: LayerNorm, parallel attention/MLP, partial rotary."""
    cfg = {"model_type": "phi", **_common_config(m, tensors)}
    cfg.pop("rms_norm_eps")
    cfg.pop("head_dim", None)  # _common_config took the rotated size for it
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    _dense_only(cfg, "phi2", "rope_scaling")
    cfg.update(
        layer_norm_eps=m.float("attention.layer_norm_epsilon", 1e-5),
        intermediate_size=_ffn_width(m, tensors),
        partial_rotary_factor=(m.int("rope.dimension_count") or head_dim) / head_dim,
    )
    return cfg


def _starcoder_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """StarCoder (GPTBigCode): GPT-2 style names and config keys, learned
    positions, fused qkv; multi-query read from the qkv width (the converter
    writes head_count_kv 1 for every file)."""
    cfg = {"model_type": "gpt_bigcode", **_common_config(m, tensors)}
    cfg.pop("rms_norm_eps")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    qkv = tensors.get("blk.0.attn_qkv.weight")
    multi_query = qkv is None or int(qkv.shape[1]) == hidden + 2 * (hidden // heads)
    cfg.update(
        n_embd=hidden,
        n_layer=cfg["num_hidden_layers"],
        n_head=heads,
        n_inner=_ffn_width(m, tensors),
        n_positions=cfg.get("max_position_embeddings"),
        multi_query=multi_query,
        num_key_value_heads=1 if multi_query else heads,
        layer_norm_epsilon=m.float("attention.layer_norm_epsilon", 1e-5),
        attention_bias="blk.0.attn_qkv.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors,
    )
    return cfg


def _stablelm_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """StableLM 2 / Stable Code: LayerNorm, partial rotary, optional qkv biases."""
    cfg = {"model_type": "stablelm", **_common_config(m, tensors)}
    cfg.pop("rms_norm_eps")
    cfg.pop("head_dim", None)  # _common_config took the rotated size for it
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    _dense_only(cfg, "stablelm", "rope_scaling")
    cfg.update(
        layer_norm_eps=m.float("attention.layer_norm_epsilon", 1e-5),
        partial_rotary_factor=(m.int("rope.dimension_count") or head_dim) / head_dim,
        use_qkv_bias="blk.0.attn_q.bias" in tensors,
        # the converter writes true where the HF config is silent
        use_parallel_residual=bool(m.get("use_parallel_residual", True)),
        qk_layernorm=False,
    )
    return cfg


def _nemotron_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Nemotron / Minitron: LayerNorm1P (stored as 1 + w), squared-ReLU MLP, partial rotary."""
    cfg = {"model_type": "nemotron", **_common_config(m, tensors)}
    cfg.pop("rms_norm_eps")
    head_dim = m.int("attention.key_length") or cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg.update(
        hidden_act="relu2",
        norm_eps=m.float("attention.layer_norm_epsilon", 1e-5),
        head_dim=head_dim,
        partial_rotary_factor=(m.int("rope.dimension_count") or head_dim) / head_dim,
        attention_bias="blk.0.attn_q.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors,
    )
    return cfg


def _exaone_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """EXAONE 3.x: llama-like under GPT-2 style names (transformer.h.N...)."""
    cfg = {"model_type": "exaone", **_common_config(m, tensors)}
    rope_dims = m.int("rope.dimension_count")
    if cfg.get("head_dim") or (rope_dims and rope_dims != cfg["hidden_size"] // cfg["num_attention_heads"]):
        raise UnsupportedGGUF("exaone: partial rotary or a head size other than hidden/heads is not supported")
    cfg.pop("head_dim", None)
    cfg["num_layers"] = cfg["num_hidden_layers"]  # mlx-lm's exaone reads num_layers (HF's name)
    cfg["layer_norm_epsilon"] = cfg.pop("rms_norm_eps")
    cfg["attention_bias"] = "blk.0.attn_q.bias" in tensors
    cfg["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    return cfg


def _glm4_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """GLM-4 (0414): fused gate/up (kept fused as ffn_up, like mlx-lm), sandwich
    norms, partial rotary over rope.dimension_count of each head."""
    cfg = {"model_type": "glm4", **_common_config(m, tensors)}
    # _common_config took rope.dimension_count for the head size; in glm4 it is the rotated part.
    head_dim = m.int("attention.key_length") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope_dims = m.int("rope.dimension_count") or head_dim // 2
    cfg.update(
        head_dim=head_dim, partial_rotary_factor=rope_dims / head_dim, attention_bias="blk.0.attn_q.bias" in tensors
    )
    _dense_only(cfg, "glm4", "rope_scaling")
    return cfg


def _deepseek2_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """DeepSeek-V2 / V2-Lite / Coder-V2 (MLA attention, shared + routed experts)."""
    cfg = {"model_type": "deepseek_v2", **_common_config(m, tensors)}
    cfg.pop("head_dim", None)  # the MLA head sizes below replace it
    heads, rope_dims = cfg["num_attention_heads"], m.int("rope.dimension_count")
    if m.int("attention.key_length_mla"):  # converters since 2025: MLA sizes in *_mla, kv_b split
        qk_head, v_head = m.int("attention.key_length_mla"), m.int("attention.value_length_mla")
    else:
        qk_head, v_head = m.int("attention.key_length"), m.int("attention.value_length")
    gating = m.int("expert_gating_func")
    if gating not in (None, 0, 1):  # 1 = softmax; sigmoid routing is DeepSeek-V3's
        raise UnsupportedGGUF(f"deepseek2: expert gating function {gating} is not supported by mlx-lm's deepseek_v2")
    if m.get("expert_weights_norm"):
        raise UnsupportedGGUF("deepseek2: normalised top-k expert weights are not supported by mlx-lm's deepseek_v2")
    cfg.update(
        num_key_value_heads=heads,  # MLA: llama.cpp writes 1 (MQA over the latent); mlx-lm has no such field
        kv_lora_rank=m.int("attention.kv_lora_rank"),
        q_lora_rank=m.int("attention.q_lora_rank"),
        qk_rope_head_dim=rope_dims,
        qk_nope_head_dim=qk_head - rope_dims,
        v_head_dim=v_head,
        n_routed_experts=m.int("expert_count"),
        n_shared_experts=m.int("expert_shared_count"),
        num_experts_per_tok=m.int("expert_used_count"),
        moe_intermediate_size=m.int("expert_feed_forward_length"),
        first_k_dense_replace=m.int("leading_dense_block_count", 0),
        routed_scaling_factor=m.float("expert_weights_scale", 1.0),
        # llama.cpp routes greedily over all experts unless the file names expert groups.
        topk_method="greedy",
        attention_bias="blk.0.attn_output.bias" in tensors,
    )
    groups, groups_used = m.int("expert_group_count"), m.int("expert_group_used_count")
    if groups and groups > 1:
        cfg.update(topk_method="group_limited_greedy", n_group=groups, topk_group=groups_used)
    scaling = cfg.pop("rope_scaling", None) or {}
    if scaling.get("type") not in (None, "yarn"):
        raise UnsupportedGGUF(f"deepseek2: rope scaling {scaling.get('type')} is not supported")
    scaling = {"type": "yarn", "factor": 1.0, **scaling}  # mlx-lm's deepseek_v2 always runs its yarn rope
    log_mul = m.float("rope.scaling.yarn_log_multiplier")
    if log_mul:
        # The converter writes 0.1 * mscale_all_dim and llama.cpp's graph takes mscale equal to it.
        scaling["mscale"] = scaling["mscale_all_dim"] = _f32(log_mul / 0.1)
    cfg["rope_scaling"] = scaling
    return cfg


def _deepseek2_kv_b(cfg: Mapping[str, Any], k_b: np.ndarray, v_b: np.ndarray) -> np.ndarray:
    """kv_b_proj from llama.cpp's split: k_b (heads, kv_lora, nope) holds each
    head's key rows transposed, v_b (heads, v_head, kv_lora) its value rows."""
    heads = cfg["num_attention_heads"]
    k_rows = k_b.reshape(heads, cfg["kv_lora_rank"], cfg["qk_nope_head_dim"]).transpose(0, 2, 1)
    v_rows = v_b.reshape(heads, cfg["v_head_dim"], cfg["kv_lora_rank"])
    return np.concatenate([k_rows, v_rows], axis=1).reshape(-1, cfg["kv_lora_rank"])


def _internlm2_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """InternLM2: llama with q/k/v fused in one wqkv, grouped per KV head
    (each group: its query heads, then one key and one value head), which
    llama.cpp's converter splits into attn_q/k/v and permutes like llama."""
    cfg = {"model_type": "internlm2", **_common_config(m, tensors)}
    # the converter splits only the wqkv weight (a bias would not survive its reshape)
    cfg["bias"] = False
    _dense_only(cfg, "internlm2", "head_dim")
    scaling = cfg.get("rope_scaling")
    if scaling and scaling["type"] != "linear":
        raise UnsupportedGGUF(f"internlm2: rope scaling {scaling['type']} is not supported by mlx-lm's internlm2")
    return cfg


def _internlm2_wqkv(cfg: Mapping[str, Any], q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """wqkv from llama.cpp's permuted attn_q/k/v: rows un-permuted, then per
    KV head [its query heads; key; value], the layout mlx-lm's internlm2 splits."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    q, k = q[_rows_permutation(q.shape[0], n_head)], k[_rows_permutation(k.shape[0], n_kv)]
    head_dim, cols = q.shape[0] // n_head, q.shape[1]
    groups = [
        q.reshape(n_kv, n_head // n_kv, head_dim, cols),
        k.reshape(n_kv, 1, head_dim, cols),
        v.reshape(n_kv, 1, head_dim, cols),
    ]
    return np.concatenate(groups, axis=1).reshape(-1, cols)


def _gpt_oss_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """gpt-oss: attention sinks, biases everywhere, experts (often MXFP4, kept
    so), yarn rope, sliding-window layers alternating with global ones."""
    cfg = {"model_type": "gpt_oss", **_common_config(m, tensors)}
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg.update(
        num_local_experts=m.int("expert_count"),
        num_experts_per_tok=m.int("expert_used_count"),
        intermediate_size=m.int("expert_feed_forward_length") or cfg["intermediate_size"],
        sliding_window=m.int("attention.sliding_window", 128),
    )
    scaling = cfg.pop("rope_scaling", None)
    if scaling and m.arch == "gptoss" and m.get("rope.scaling.type") is None:
        # Ollama's converter writes factor and original context only: gpt-oss's yarn, its betas
        scaling = {
            "type": "yarn",
            "factor": scaling["factor"],
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": m.int("rope.scaling.original_context_length"),
        }
    if scaling:
        if scaling["type"] != "yarn":
            raise UnsupportedGGUF(f"gpt-oss: rope scaling {scaling['type']} is not supported")
        scaling["rope_type"] = scaling.pop("type")
        cfg["rope_scaling"] = scaling
    layers = cfg["num_hidden_layers"]
    pattern = m.get("attention.sliding_window_pattern")
    if isinstance(pattern, list):  # newer files spell it out (true = sliding)
        sliding = [bool(x) for x in pattern]
    else:  # llama.cpp's fixed gpt-oss pattern: even layers sliding, odd layers global
        sliding = [i % 2 == 0 for i in range(layers)]
    if len(sliding) != layers or all(sliding) or not any(sliding):
        raise UnsupportedGGUF("gpt-oss: mlx-lm needs both sliding-window and global layers")
    cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    return cfg


def _llama4_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Llama 4 (Scout, Maverick) text model: MoE every interleave_moe_layer_step-th layer (one
    routed expert, sigmoid gate, a shared expert), dense MLPs between; what llama.cpp's graph
    fixes rather than reads (chunked attention of 8192 on three layers of four, the fourth
    without rope and with attention temperature tuning, q/k norms unless 128 experts) is what
    mlx-lm's llama4 hard-codes or is told here.  Q/K are not permuted (interleaved rope)."""
    cfg = _common_config(m, tensors)
    if cfg.pop("tie_word_embeddings"):
        raise UnsupportedGGUF("llama4: tied embeddings are not supported by mlx-lm's llama4")
    experts, used = m.int("expert_count"), m.int("expert_used_count")
    if not experts or used != 1:
        raise UnsupportedGGUF(f"llama4: {used} experts per token; mlx-lm's llama4 routes exactly one")
    if m.get("attention.sliding_window") == 0:  # llama.cpp: then no chunking and rope on every layer
        raise UnsupportedGGUF("llama4 without chunked attention is not supported by mlx-lm's llama4")
    head_dim = cfg.pop("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    scaling = cfg.pop("rope_scaling", None)
    if scaling and scaling.get("rope_type") != "llama3":
        raise UnsupportedGGUF(f"llama4: rope scaling {scaling} is not supported")
    text = {
        **cfg,
        "model_type": "llama4_text",
        "head_dim": head_dim,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "attention_chunk_size": 8192,
        "interleave_moe_layer_step": m.int("interleave_moe_layer_step", 1),
        "intermediate_size": m.int("expert_feed_forward_length"),
        "intermediate_size_mlp": cfg["intermediate_size"],
        "num_local_experts": experts,
        "num_experts_per_tok": used,
        "use_qk_norm": experts != 128,  # llama.cpp: Maverick (128 experts) has no q/k norm
        "rope_scaling": scaling,
        "attn_temperature_tuning": True,  # a bool for transformers' strict Llama4TextConfig
        "floor_scale": 8192,
        "attn_scale": 0.1,
    }
    # The top level repeats what the importer and the server read from any config.
    top = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "vocab_size")
    return {"model_type": "llama4", "text_config": text, **{k: text[k] for k in top if k in text}}


def _reorder_columns(conv: _Tensor, order: np.ndarray) -> None:
    """Input columns of a converted tensor taken in ``order``; a quantized one only in whole
    32-column groups (each group's packed words, scale and bias move together, exactly)."""
    if conv.quant is None:
        conv.arrays["weight"] = np.ascontiguousarray(conv.arrays["weight"][..., order])
        return
    groups = order.reshape(-1, GROUP)
    if not (groups == groups[:, :1] + np.arange(GROUP)).all() or (groups[:, 0] % GROUP).any():
        raise UnsupportedGGUF("a column reordering that splits quantization groups")
    group_order = groups[:, 0] // GROUP
    for key, a in conv.arrays.items():
        per_group = a.shape[-1] // len(group_order)  # packed words per group (1 for scales, biases)
        lead = a.shape[:-1]
        a = a.reshape(*lead, len(group_order), per_group)[..., group_order, :]
        conv.arrays[key] = np.ascontiguousarray(a.reshape(*lead, -1))


def _qwen35_v_heads(cfg: Mapping[str, Any], head_dim: int) -> np.ndarray:
    """Index restoring Hugging Face's value-head order (grouped by key head) from llama.cpp's
    (tiled: value head j of every key head, then j + 1, ...), ``head_dim`` rows per head."""
    k_heads, v_heads = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    tiled = np.arange(v_heads * head_dim).reshape(v_heads // k_heads, k_heads, head_dim)
    return tiled.transpose(1, 0, 2).reshape(-1)


def _qwen35_qkv_order(cfg: Mapping[str, Any], n: int) -> np.ndarray:
    """attn_qkv rows / conv1d channels: q and k as they are, then the value heads."""
    qk = 2 * cfg["linear_num_key_heads"] * cfg["linear_key_head_dim"]
    return np.concatenate([np.arange(qk), qk + _qwen35_v_heads(cfg, cfg["linear_value_head_dim"])])


def _qwen3next_qkvz_rows(cfg: Mapping[str, Any]) -> np.ndarray:
    """Rows of [attn_qkv; attn_gate] (llama.cpp: all q heads, all k, all v, then z) in mlx-lm's
    in_proj_qkvz order, grouped per key head: [q_g, k_g, v_g (its value heads), z_g]."""
    nk, dk = cfg["linear_num_key_heads"], cfg["linear_key_head_dim"]
    v_per_k = cfg["linear_num_value_heads"] // nk * cfg["linear_value_head_dim"]
    q = np.arange(nk * dk).reshape(nk, dk)
    k = nk * dk + q
    v = 2 * nk * dk + np.arange(nk * v_per_k).reshape(nk, v_per_k)
    z = v + nk * v_per_k
    return np.concatenate([q, k, v, z], axis=1).reshape(-1)


def _qwen3next_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Qwen3-Next: qwen3.5's layer pattern (gated delta net, gated attention) with routed and
    gated shared experts on every layer; no value-head reordering; mlx-lm keeps q/k/v/z and
    b/a fused per key head (older files hold them so, as ssm_in / ssm_ba; newer ones split
    ssm_in into attn_qkv + attn_gate, regrouped here)."""
    cfg = _qwen35_config(m, tensors)
    cfg.pop("rope_parameters")
    cfg.update(
        model_type="qwen3_next",
        rope_theta=m.float("rope.freq_base", 10000.0),
        partial_rotary_factor=(m.int("rope.dimension_count") or cfg["head_dim"] // 4) / cfg["head_dim"],
        num_experts=m.int("expert_count"),
        num_experts_per_tok=m.int("expert_used_count"),
        moe_intermediate_size=m.int("expert_feed_forward_length"),
        shared_expert_intermediate_size=m.int("expert_shared_feed_forward_length"),
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=bool(m.get("expert_weights_norm", True)),
    )
    if not cfg["num_experts"]:
        raise UnsupportedGGUF("qwen3next without experts is not supported")
    return cfg


def _qwen35_config(m: _Meta, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Qwen3.5 (dense): three gated-delta-net linear-attention layers per full-attention one
    (gated q_proj, q/k norms, partial rotary).  llama.cpp stores the zero-centred norms as
    1 + w, which is what mlx-lm's qwen3_5 keeps (its sanitize adds the 1 to Hugging Face
    files); it reorders value heads key-head-major ("tiled"), turns A_log into -exp(A_log) and
    dt_bias into ssm_dt.bias: undone here.  Multi-token-prediction blocks are left out."""
    cfg = {"model_type": "qwen3_5", **_common_config(m, tensors)}
    if cfg.pop("rope_scaling", None):
        raise UnsupportedGGUF("qwen35: rope scaling is not supported")
    cfg["num_hidden_layers"] -= m.int("nextn_predict_layers", 0)
    head_dim = m.int("attention.key_length") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope_dims = m.int("rope.dimension_count") or head_dim // 4
    v_heads, inner = m.int("ssm.time_step_rank"), m.int("ssm.inner_size")
    if not v_heads or not inner or not m.int("ssm.group_count"):
        raise UnsupportedGGUF("qwen35: ssm.* metadata of the linear-attention layers is missing")
    sections = m.get("rope.dimension_sections") or [11, 11, 10]
    cfg.update(
        head_dim=head_dim,
        attention_bias=False,
        linear_num_value_heads=v_heads,
        linear_num_key_heads=m.int("ssm.group_count"),
        linear_key_head_dim=m.int("ssm.state_size"),
        linear_value_head_dim=inner // v_heads,
        linear_conv_kernel_dim=m.int("ssm.conv_kernel", 4),
        full_attention_interval=m.int("full_attention_interval", 4),
        # text positions are equal in every M-RoPE section: plain (NeoX) rope over the rotated dims
        rope_parameters={
            "rope_type": "default",
            "rope_theta": cfg.pop("rope_theta"),
            "partial_rotary_factor": rope_dims / head_dim,
            "mrope_section": [int(x) for x in list(sections)[:3]],
        },
    )
    return cfg


def _qkv_rows(part: int) -> Callable[[Mapping[str, Any], int], slice]:
    """Rows of q, k or v in a fused [q; k; v] projection."""

    def rows(cfg: Mapping[str, Any], n: int) -> slice:
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
        return [slice(0, q), slice(q, q + kv), slice(q + kv, q + 2 * kv)][part]

    return rows


ARCHITECTURES: dict[str, ArchSpec] = {
    # Mistral GGUFs (7B, Nemo, Small <= 3.x from older converters) and
    # Mixtral (experts) use the llama architecture too.
    "llama": ArchSpec(_llama_config, permute_qk=True),
    "mistral3": ArchSpec(_mistral3_config, permute_qk=True),
    "granite": ArchSpec(_granite_config, permute_qk=True),
    "granitemoe": ArchSpec(_granite_config, permute_qk=True),
    "smollm3": ArchSpec(_smollm3_config, permute_qk=True),
    "qwen2": ArchSpec(_qwen2_config),
    "qwen2moe": ArchSpec(_qwen2moe_config),
    "qwen3": ArchSpec(_qwen3_config),
    "qwen3moe": ArchSpec(_qwen3moe_config),
    "olmo2": ArchSpec(_olmo2_config),
    "starcoder2": ArchSpec(_layer_norm_config("starcoder2", "norm_epsilon")),
    "command-r": ArchSpec(_cohere_config),
    "cohere2": ArchSpec(_cohere2_config),
    "olmoe": ArchSpec(_olmoe_config),
    "exaone": ArchSpec(_exaone_config),
    "glm4": ArchSpec(_glm4_config),
    "gpt-oss": ArchSpec(_gpt_oss_config),
    # gpt-oss as Ollama's library ships it (Ollama's own converter)
    "gptoss": ArchSpec(
        _gpt_oss_config,
        table_arch="gpt-oss",
        mxfp4_interleaved=True,
        renamed={"attn_out": "attn_output", "ffn_norm": "post_attention_norm"},
        split={
            "attn_qkv": (("attn_q", _qkv_rows(0)), ("attn_k", _qkv_rows(1)), ("attn_v", _qkv_rows(2))),
            # gate and up rows interleaved, as OpenAI's checkpoints hold them
            "ffn_gate_up_exps": (
                ("ffn_gate_exps", lambda c, n: slice(0, n, 2)),
                ("ffn_up_exps", lambda c, n: slice(1, n, 2)),
            ),
        },
    ),
    "deepseek2": ArchSpec(
        _deepseek2_config, joined={"attn_v_b": (("attn_k_b", "attn_v_b"), "self_attn.kv_b_proj", _deepseek2_kv_b)}
    ),
    "gemma": ArchSpec(_gemma_config, norm_shift=1.0),
    "gemma2": ArchSpec(_gemma2_config, norm_shift=1.0),
    "gemma3": ArchSpec(_gemma3_config, norm_shift=1.0),
    "phi2": ArchSpec(_phi2_config),
    "starcoder": ArchSpec(_starcoder_config),
    "stablelm": ArchSpec(_stablelm_config),
    "nemotron": ArchSpec(_nemotron_config, norm_shift=1.0),
    "llama4": ArchSpec(_llama4_config, param_prefix="language_model."),
    "qwen3next": ArchSpec(
        _qwen3next_config,
        value_map={"ssm_a": lambda a: np.log(-a.astype(np.float32))},
        block_params={"ssm_dt.bias": "linear_attn.dt_bias"},
        keep_float32=frozenset({"ssm_conv1d"}),
        rows_joined={"attn_gate": (("attn_qkv", "attn_gate"), "linear_attn.in_proj_qkvz", _qwen3next_qkvz_rows)},
    ),
    "qwen35": ArchSpec(
        _qwen35_config,
        param_prefix="language_model.",
        row_order={
            "attn_qkv": _qwen35_qkv_order,
            "ssm_conv1d": _qwen35_qkv_order,
            "attn_gate": lambda c, n: _qwen35_v_heads(c, c["linear_value_head_dim"]),
            **{k: lambda c, n: _qwen35_v_heads(c, 1) for k in ("ssm_beta", "ssm_alpha", "ssm_a", "ssm_dt")},
        },
        col_order={"ssm_out": lambda c, n: _qwen35_v_heads(c, c["linear_value_head_dim"])},
        value_map={"ssm_a": lambda a: np.log(-a.astype(np.float32))},
        block_params={"ssm_dt.bias": "linear_attn.dt_bias"},
        keep_float32=frozenset({"ssm_conv1d"}),
    ),
    "internlm2": ArchSpec(
        _internlm2_config, joined={"attn_v": (("attn_q", "attn_k", "attn_v"), "attention.wqkv", _internlm2_wqkv)}
    ),
    "phi3": ArchSpec(_phi3_config, skip_tensors=frozenset({"rope_factors_long.weight", "rope_factors_short.weight"})),
}

register_moe_hybrid(ARCHITECTURES)  # qwen35moe, gemma4 (gguf_moe_hybrid.py)
register_hybrid(ARCHITECTURES)  # granitehybrid, gemma3n (gguf_hybrid.py)

SUPPORTED_GGUF_ARCHITECTURES: frozenset[str] = frozenset(ARCHITECTURES)


def gguf_architecture_supported(arch: str) -> bool:
    """Whether ``general.architecture`` ``arch`` can be imported (cheap: pull
    checks it from the GGUF header before downloading the weights)."""
    return arch in ARCHITECTURES


# --------------------------------------------------------------------------
# writing


# numpy dtype -> safetensors dtype name, for what the converters produce
_SAFETENSORS_DTYPES = {
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint16): "U16",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint32): "U32",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
    np.dtype(np.bool_): "BOOL",
}
# Room kept at the head of each shard for its JSON header (~5,000 tensors): the data is
# written first, the header last, padded with spaces as the safetensors format allows.
_HEADER_RESERVE = 1 << 20
_HEADER_HEAD = '{"__metadata__":{"format":"mlx"}'


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class _ShardWriter:
    """safetensors shards written as tensors arrive, so an import holds one converted
    tensor at a time, not a shard's worth (memory stays flat for any model size)."""

    def __init__(self, out: Path, prefix: str = ""):
        self.out, self.shards, self.total, self.prefix = out, [], 0, prefix
        self.weight_map: dict[str, int] = {}
        self._file: Any = None
        self._entries: list[str] = []
        self._offset = self._header_len = 0

    def add(self, name: str, a: np.ndarray) -> None:
        name = self.prefix + name
        a = np.ascontiguousarray(a, np.float32 if a.dtype == np.float64 else None)
        if a.dtype not in _SAFETENSORS_DTYPES:
            raise UnsupportedGGUF(f"{name}: cannot store dtype {a.dtype}")
        for attempt in range(2):
            if self._file is None:
                path = self.out / f".partial-{len(self.shards)}.safetensors"
                self._file = open(path, "wb")
                self._file.seek(8 + _HEADER_RESERVE)
                self.shards.append(path)
                self._entries, self._offset, self._header_len = [], 0, len(_HEADER_HEAD) + 1
            info = {"dtype": _SAFETENSORS_DTYPES[a.dtype], "shape": list(a.shape)}
            entry = f"{_json(name)}:{_json({**info, 'data_offsets': [self._offset, self._offset + a.nbytes]})}"
            if self._header_len + len(entry) + 1 <= _HEADER_RESERVE:
                break
            if attempt or not self._entries:
                raise UnsupportedGGUF(f"{name}: tensor names too long for a safetensors header")
            self.flush()
        self._file.write(a.reshape(-1).view(np.uint8))
        self._entries.append(entry)
        self._header_len += len(entry) + 1
        self._offset += a.nbytes
        self.weight_map[name] = len(self.shards) - 1
        self.total += a.nbytes

    def maybe_flush(self) -> None:
        if self._offset >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._file is None:
            return
        header = ",".join([_HEADER_HEAD, *self._entries]).encode() + b"}"
        self._file.seek(0)
        self._file.write(len(header.ljust(_HEADER_RESERVE)).to_bytes(8, "little") + header.ljust(_HEADER_RESERVE))
        self._file.close()
        self._file, self._offset = None, 0

    def finish(self) -> list[str]:
        self.flush()
        n = len(self.shards)
        if n == 1:
            names = ["model.safetensors"]
        else:
            names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for path, name in zip(self.shards, names):
            os.replace(path, self.out / name)
        if n > 1:
            index = {
                "metadata": {"total_size": self.total},
                "weight_map": {k: names[i] for k, i in sorted(self.weight_map.items())},
            }
            (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
            names.append("model.safetensors.index.json")
        return names


def _release_mapped_pages(reader: gguf.GGUFReader) -> None:
    """Unmap the GGUF pages read so far (they stay in the page cache, and come back on the
    next read): otherwise every page the import touched stays resident in this process,
    up to the whole file."""
    mapped = getattr(reader.data, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False))


def import_gguf(
    gguf_path: str | Path, out_dir: str | Path, *, spec: ArchSpec | None = None, write_prefix: str = ""
) -> GGUFImport:
    """Convert ``gguf_path`` into an mlx-lm model folder at ``out_dir``.  ``spec``: the text model's
    spec when the architecture is not one of ``ARCHITECTURES``; ``write_prefix``: put before every
    weight (and quantization) name, for a multimodal class's text model (gguf_vision.py)."""
    gguf_path, out = Path(gguf_path), Path(out_dir)
    reader = gguf.GGUFReader(str(gguf_path), "r")
    meta, types = read_metadata(reader)
    arch = str(meta.get("general.architecture", ""))
    spec = spec or ARCHITECTURES.get(arch)
    if spec is None:
        raise UnsupportedGGUF(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )

    tensors = {t.name: t for t in reader.tensors}
    if spec.variant is not None:
        spec = spec.variant(tensors) or spec
    m = _Meta(meta, arch)
    config = spec.build_config(m, tensors)
    # Fails early, before writing anything, on a tensor or shape mlx-lm has no place for.
    params = _mlx_parameter_shapes(config)
    names = tensor_name_map(arch, spec, tensors, params, config["num_hidden_layers"], config)
    vision = sum(1 for n in tensors if n.startswith(_VISION_PREFIXES))
    if vision:
        log.info("%s: importing the text model; %d vision tensors left out (images are not supported)", arch, vision)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    out.mkdir(parents=True, exist_ok=True)
    # mlx-lm loads every model*.safetensors: drop shards of an earlier import.
    for stale in [
        *out.glob("model*.safetensors"),
        *out.glob(".partial-*.safetensors"),
        out / "model.safetensors.index.json",
    ]:
        stale.unlink(missing_ok=True)
    if arch == "gptoss" and meta.get("tokenizer.ggml.pre") in (None, "default"):
        # Ollama's engine splits gpt-oss text with o200k's rules whatever the file says
        meta = {**meta, "tokenizer.ggml.pre": "gpt-4o"}
    try:
        tok_info = write_tokenizer_files(meta, out, config.get("max_position_embeddings"))
    except UnsupportedTokenizer as e:
        raise UnsupportedGGUF(f"{arch}: {e}") from e

    writer = _ShardWriter(out, write_prefix)
    quant: dict[str, tuple] = {}
    for t in reader.tensors:
        _release_mapped_pages(reader)
        name = names[t.name]
        if name is None:
            continue
        if isinstance(name, tuple):  # a fused tensor: its rows go to several parameters, exactly
            conv = convert_tensor(t, None, spec.mxfp4_interleaved)
            for part, rows in name:
                module, suffix = part.rsplit(".", 1)
                for key, a in conv.arrays.items():
                    if isinstance(rows, tuple):  # one matrix of a stack (ArchSpec.stacked)
                        a = a[rows]
                    elif suffix == "bias" and conv.quant is None:
                        a = a[..., rows(config, a.shape[-1])]
                    else:
                        a = a[..., rows(config, a.shape[-2]), :]
                    writer.add(f"{module}.{key}" if key != "weight" else part, np.ascontiguousarray(a))
                if conv.quant is not None:
                    quant[module] = conv.quant
            writer.maybe_flush()
            continue
        perm = None
        if spec.permute_qk:
            if ".self_attn.q_proj." in name:
                perm = n_head
            elif ".self_attn.k_proj." in name:
                perm = n_kv
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        if kind in spec.rows_joined:
            parts, _, order = spec.rows_joined[kind]
            sources = [tensors[f"blk.{t.name.split('.')[1]}.{p}.weight"] for p in parts]
            convs = [convert_tensor(s, None, spec.mxfp4_interleaved) for s in sources]
            if len({(c.quant, tuple(c.arrays)) for c in convs}) == 1:  # same quantization: rows move exactly
                rows = order(config)
                arrays = {
                    k: np.ascontiguousarray(np.concatenate([c.arrays[k] for c in convs])[rows]) for k in convs[0].arrays
                }
                conv = _Tensor(arrays, convs[0].quant)
            else:
                w = np.concatenate([_dequantized(s) for s in sources])[order(config)]
                conv = _Tensor({"weight": _half_if_exact(w)[0]})
            if conv.quant is None and conv.arrays["weight"].shape != params[name]:
                raise UnsupportedGGUF(
                    f"{t.name}: rebuilt shape {list(conv.arrays['weight'].shape)}, mlx-lm expects {list(params[name])}"
                )
        elif kind in spec.joined:
            parts, _, build = spec.joined[kind]
            block = t.name.split(".")[1]
            w = build(config, *(_dequantized(tensors[f"blk.{block}.{p}.weight"]) for p in parts))
            if w.shape != params[name]:
                raise UnsupportedGGUF(f"{t.name}: rebuilt shape {list(w.shape)}, mlx-lm expects {list(params[name])}")
            conv = _Tensor({"weight": _half_if_exact(w)[0]})
        else:
            order = spec.row_order.get(kind)
            rows = order(config, int(t.shape[-1])) if order else None
            if kind in spec.keep_float32 and QT(t.tensor_type) == QT.F32:
                w = _dequantized(t)
                conv = _Tensor({"weight": w if rows is None else np.ascontiguousarray(w[rows])})
            else:
                conv = convert_tensor(t, perm, spec.mxfp4_interleaved, row_order=rows)
            if kind in spec.col_order:
                _reorder_columns(conv, spec.col_order[kind](config, int(t.shape[0])))
            if kind in spec.value_map and conv.quant is None:
                conv.arrays["weight"] = spec.value_map[kind](conv.arrays["weight"])
        if spec.norm_shift and t.name.endswith("norm.weight"):
            # (1 + w) - 1 is exact in float32 for |w| <= 1, so mlx-lm's 1 + w
            # reproduces the stored value bit for bit.
            conv.arrays["weight"] = conv.arrays["weight"].astype(np.float32) - np.float32(spec.norm_shift)
        if conv.quant is None and conv.arrays["weight"].shape != params[name]:
            # Same values, unit dimensions spelled differently (e.g. a (1, n) gate stored as (n,)).
            conv.arrays["weight"] = conv.arrays["weight"].reshape(params[name])
        module = name.rsplit(".", 1)[0]
        suffix = name.rsplit(".", 1)[1]
        if conv.quant is not None:
            quant[module] = conv.quant
        for key, a in conv.arrays.items():
            writer.add(f"{module}.{key}" if key != "weight" else f"{module}.{suffix}", a)
        writer.maybe_flush()
    files = writer.finish()

    if quant:

        def entry(q: tuple) -> dict[str, Any]:
            # mlx-lm's default mode is affine; only other modes are spelled out
            return {"group_size": q[1], "bits": q[0], **({"mode": q[2]} if len(q) > 2 else {})}

        common, _ = Counter(quant.values()).most_common(1)[0]
        qcfg: dict[str, Any] = entry(common)
        for module, q in sorted(quant.items()):
            if q != common:
                qcfg[write_prefix + module] = entry(q)
        config["quantization"] = qcfg
        config["quantization_config"] = qcfg
    if tok_info.bos_token_id is not None:
        config["bos_token_id"] = tok_info.bos_token_id
    if tok_info.eos_token_ids:
        config["eos_token_id"] = tok_info.eos_token_ids
    _write_json(out / "config.json", config)

    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
    pad = meta.get("tokenizer.ggml.padding_token_id")
    if pad is not None:
        gen["pad_token_id"] = int(pad)
    _write_json(out / "generation_config.json", gen)

    parameter_count = sum(int(t.n_elements) for t in reader.tensors)
    _write_json(out / "model_info.json", model_info_from_metadata(meta, types, parameter_count))
    pooling = _embedding_pooling(meta.get(f"{arch}.pooling_type"), meta.get(f"{arch}.normalize_embeddings"))
    if pooling is not None:  # a decoder embedder (Qwen3-Embedding: last token), served through /api/embed
        _write_json(out / "pooling.json", pooling)
    _write_json(
        out / "gguf_tensors.json",
        [{"name": t.name, "type": QT(t.tensor_type).name, "shape": [int(x) for x in t.shape]} for t in reader.tensors],
    )

    files = ["config.json", *files, *tok_info.files, "generation_config.json", "model_info.json", "gguf_tensors.json"]
    template = meta.get("tokenizer.chat_template")
    return GGUFImport(
        architecture=arch,
        file_type=file_type_name(meta, reader.tensors),
        parameter_count=parameter_count,
        context_length=m.int("context_length"),
        embedding_length=m.int("embedding_length"),
        chat_template=str(template) if template else None,
        files=files,
    )


# --------------------------------------------------------------------------
# runtime


def set_quantized_param_dtype(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast every floating parameter -- quantization scales/biases, norms,
    unquantized matrices, linear biases -- to ``dtype``; packed uint32 weights
    are untouched.  Activations then run in ``dtype``: float32 on MLX's CPU
    backend (much faster there than float16 arithmetic), float16 on GPUs where
    memory bandwidth dominates."""

    def cast(x: Any) -> Any:
        if isinstance(x, mx.array) and mx.issubdtype(x.dtype, mx.floating) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    model.update(tree_map(cast, model.parameters()))
    mx.eval(model.parameters())
