"""Quantized KV caches that join mlx-lm's continuous batch (OLLAMA_KV_CACHE_TYPE, PARAMETER kv_cache_type).

mlx-lm 0.32's QuantizedKVCache has no `merge`, so BatchGenerator cannot put a sequence holding one
into a batch, and there is no batched form of it. This module adds both, the way mlx-lm's own
KVCache / BatchKVCache pair works, so that it could go upstream as it is:

- `QuantizedKVCache`: mlx-lm's single-sequence cache plus `merge` (and a `size` that counts the
  tokens held, which merging needs: mlx-lm's returns 0). The LRU prompt cache stores, trims and
  copies it like any other cache.
- `BatchQuantizedKVCache`: BatchKVCache's left-padded layout (per-sequence offsets, padding,
  merge/extract/filter/extend/prepare/finalize/trim) over quantized (packed, scales, biases)
  triples. It carries `bits` and `group_size`, so mlx-lm's attention (models/base.py) takes the
  quantized-matmul path, with the batch's padding mask.

`make_cache_factory` wraps a model's cache construction: every plain KVCache layer becomes a
QuantizedKVCache; sliding-window (RotatingKVCache) and other special layers stay as they are, since
their windows are small and bounded, and mlx-lm has no quantized rotating cache to batch.
"""

from __future__ import annotations

import logging
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map
from mlx_lm.models import cache as mlx_cache
from mlx_lm.models.base import create_causal_mask

log = logging.getLogger("mlxollama.engine")

# Ollama's names (OLLAMA_KV_CACHE_TYPE) → bits per element; f16 is the model's own dtype, unquantized.
KV_CACHE_TYPES: dict[str, int | None] = {"f16": None, "q8_0": 8, "q4_0": 4}
DEFAULT_KV_CACHE_TYPE = "f16"
# GGML's q8_0/q4_0 hold blocks of 32 elements with one float16 scale: 8.5 and 4.5 bits an element.
# MLX's affine quantization keeps a scale and a bias a group. 8-bit: groups of 64 (mlx-lm's default,
# --kv-group-size) take GGML's 8.5 bits with float16 scales, and 32 would gain nothing measurable
# (SmolLM2-135M perplexity: -0.14% vs +0.04% of f16). 4-bit: groups of 32, GGML's block, cost half a bit
# more (5 bits) but halve the loss (+8% vs +16% at 64; scripts/bench_context.py). Heads that are not a
# multiple of the group use 32, the smallest group MLX quantizes.
GROUP_SIZE = {8: 64, 4: 32}
SMALL_GROUP_SIZE = 32


def parse_kv_cache_type(value, origin: str = "OLLAMA_KV_CACHE_TYPE") -> str:
    """Ollama's rule: lower-cased; empty is f16; anything else unknown is logged and f16 is used."""
    name = str(value or "").strip().lower()
    if not name:
        return DEFAULT_KV_CACHE_TYPE
    if name not in KV_CACHE_TYPES:
        log.warning("unsupported %s %r: using f16 (the supported types are f16, q8_0 and q4_0)", origin, value)
        return DEFAULT_KV_CACHE_TYPE
    return name


def group_size_for(head_dim: int | None, bits: int = 8) -> int | None:
    """The quantization group for keys and values `head_dim` wide; None when MLX cannot quantize them."""
    if head_dim is None:
        return GROUP_SIZE[bits]
    for size in (GROUP_SIZE[bits], SMALL_GROUP_SIZE):
        if head_dim % size == 0:
            return size
    return None


def model_head_dims(model: nn.Module) -> tuple[int, int] | None:
    """(key width, value width) of a model's attention heads, from its config; None when unknown."""
    args = getattr(model, "args", None)
    try:
        heads = args.num_attention_heads
        head_dim = getattr(args, "head_dim", None) or args.hidden_size // heads
    except (AttributeError, TypeError, ZeroDivisionError):
        return None
    k = getattr(args, "qk_head_dim", None) or head_dim
    v = getattr(args, "v_head_dim", None) or head_dim
    return int(k), int(v)


def make_cache_factory(model: nn.Module, kv_cache_type: str) -> Callable[[], list] | None:
    """A `make_cache` for `model` whose full-attention layers keep quantized keys and values; None
    when `kv_cache_type` is f16 or the model's heads cannot be quantized (it keeps its own caches)."""
    bits = KV_CACHE_TYPES[kv_cache_type]
    if bits is None:
        return None
    dims = model_head_dims(model)
    groups = [group_size_for(d, bits) for d in dims] if dims else [GROUP_SIZE[bits]]
    if None in groups:
        log.warning("kv cache type %s: attention heads %s wide cannot be quantized; using f16", kv_cache_type, dims)
        return None
    group_size = min(groups)
    own = getattr(model, "make_cache", None)

    def make_cache() -> list:
        caches = own() if own is not None else [mlx_cache.KVCache() for _ in model.layers]
        # Only plain KVCache layers: rotating, chunked, SSM (ArraysCache) and nested ones stay.
        return [QuantizedKVCache(group_size, bits) if type(c) is mlx_cache.KVCache else c for c in caches]

    return make_cache


def kv_bytes_per_element(kv_cache_type: str, itemsize: int) -> float:
    """Bytes one key or value element takes in the cache: packed bits plus a scale and a bias a group
    (both in the activation dtype, `itemsize` bytes)."""
    bits = KV_CACHE_TYPES.get(kv_cache_type)
    if bits is None:
        return float(itemsize)
    return bits / 8 + 2 * itemsize / GROUP_SIZE[bits]


class QuantizedKVCache(mlx_cache.QuantizedKVCache):
    """mlx-lm's quantized cache, mergeable into a batch."""

    def size(self) -> int:
        return self.offset

    @classmethod
    def merge(cls, caches) -> "BatchQuantizedKVCache":
        return BatchQuantizedKVCache.merge(caches)

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else super().nbytes


def batchable(caches: list) -> list:
    """The same caches with any of mlx-lm's QuantizedKVCache (e.g. from mlx-lm's load_prompt_cache,
    which restores caches by mlx-lm class name) turned into the mergeable one; nothing is copied."""
    out = []
    for c in caches:
        if type(c) is mlx_cache.QuantizedKVCache:
            own = QuantizedKVCache(c.group_size, c.bits)
            own.keys, own.values, own.offset = c.keys, c.values, c.offset
            c = own
        out.append(c)
    return out


def _quantized_zeros(shape: tuple, dim: int, dtype, group_size: int, bits: int) -> tuple:
    """An all-zero (packed, scales, biases) triple for `shape` + (dim,) elements."""
    per_word = 32 // bits
    return (
        mx.zeros((*shape, dim // per_word), dtype=mx.uint32),
        mx.zeros((*shape, dim // group_size), dtype=dtype),
        mx.zeros((*shape, dim // group_size), dtype=dtype),
    )


def _parts(q: tuple, fn) -> tuple:
    return tuple(fn(x) for x in q)


class BatchQuantizedKVCache(mlx_cache._BaseCache):
    """BatchKVCache with quantized keys and values: sequences left-padded to one length, each with
    its own offset (its rotary position), `_idx` the shared write position."""

    step = 256

    def __init__(self, left_padding: list[int], group_size: int = GROUP_SIZE[8], bits: int = 8):
        self.keys = None  # (packed, scales, biases), each (B, heads, capacity, ·)
        self.values = None
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-p for p in left_padding])
        self._idx = 0
        self._right_padding = None
        self.group_size = group_size
        self.bits = bits

    # -- the model's view -------------------------------------------------------------------------

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        B, heads, n, k_dim = keys.shape
        prev = self._idx
        if self.keys is None or prev + n > self.keys[0].shape[2]:
            grow = (self.step + n - 1) // self.step * self.step
            new_k = _quantized_zeros((B, heads, grow), k_dim, keys.dtype, self.group_size, self.bits)
            new_v = _quantized_zeros((B, heads, grow), values.shape[3], values.dtype, self.group_size, self.bits)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                if prev % self.step != 0:  # drop the unused tail before growing
                    self.keys, self.values = (_parts(q, lambda x: x[..., :prev, :]) for q in (self.keys, self.values))
                self.keys = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(self.keys, new_k))
                self.values = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(self.values, new_v))
        self.offset = self.offset + n
        self._idx += n
        qk = tuple(mx.quantize(keys, group_size=self.group_size, bits=self.bits))
        qv = tuple(mx.quantize(values, group_size=self.group_size, bits=self.bits))
        for stored, new in zip(self.keys + self.values, qk + qv):
            stored[..., prev : self._idx, :] = new
        return self.keys_and_values()

    def keys_and_values(self):
        return tree_map(lambda x: x[..., : self._idx, :], (self.keys, self.values))

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    # -- what PromptProcessingBatch calls around a padded prefill ---------------------------------

    def prepare(self, *, left_padding=None, lengths=None, right_padding=None):
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("Left padding can only be added to an empty BatchQuantizedKVCache")
            left_padding = mx.array(left_padding)
            self.left_padding += left_padding
            self.offset = self.offset - left_padding
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self):
        """Right padding (shorter prompts in one prefill) becomes left padding: roll each row right."""
        if self._right_padding is None:
            return
        shifts = self._right_padding[:, None]
        roll = lambda x: mlx_cache.dynamic_roll(x, shifts, axis=2)  # noqa: E731
        self.keys, self.values = _parts(self.keys, roll), _parts(self.values, roll)
        self.offset = self.offset - self._right_padding
        self.left_padding += self._right_padding
        self._right_padding = None

    # -- batch membership ------------------------------------------------------------------------

    def filter(self, batch_indices):
        """Keep only these sequences (in place), then drop padding columns no row needs any more."""
        if self.keys is not None:
            pick = lambda x: x[batch_indices]  # noqa: E731
            self.keys, self.values = _parts(self.keys, pick), _parts(self.values, pick)
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        trim = min(self.left_padding.tolist())
        if trim > 0:
            if self.keys is not None:
                cut = lambda x: x[..., trim:, :]  # noqa: E731
                self.keys, self.values = _parts(self.keys, cut), _parts(self.values, cut)
            self._idx -= trim
            self.left_padding -= trim

    def extend(self, other: "BatchQuantizedKVCache"):
        """Append another batch's sequences (in place), right-aligning both at the later write position."""
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        idx = max(self._idx, other._idx)
        capacity = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)
        ref = self if self.keys is not None else other
        heads = ref.keys[0].shape[1]
        k_dim = ref.keys[0].shape[3] * 32 // self.bits
        v_dim = ref.values[0].shape[3] * 32 // self.bits
        dtype = ref.keys[1].dtype

        def aligned(c: "BatchQuantizedKVCache"):
            k, v = c.keys, c.values
            if k is None:
                rows = c.offset.shape[0]
                k = _quantized_zeros((rows, heads, 0), k_dim, dtype, self.group_size, self.bits)
                v = _quantized_zeros((rows, heads, 0), v_dim, dtype, self.group_size, self.bits)
            left = idx - c._idx
            right = capacity - k[0].shape[2] - left
            if right < 0:
                k, v = _parts(k, lambda x: x[..., :right, :]), _parts(v, lambda x: x[..., :right, :])
                right = 0
            if left or right:
                widths = [(0, 0), (0, 0), (left, right), (0, 0)]
                k, v = _parts(k, lambda x: mx.pad(x, widths)), _parts(v, lambda x: mx.pad(x, widths))
            return k, v, c.offset, c.left_padding + left

        (k1, v1, o1, p1), (k2, v2, o2, p2) = aligned(self), aligned(other)
        self.keys = tuple(mx.concatenate([a, b]) for a, b in zip(k1, k2))
        self.values = tuple(mx.concatenate([a, b]) for a, b in zip(v1, v2))
        self.offset = mx.concatenate([o1, o2])
        self.left_padding = mx.concatenate([p1, p2])
        self._idx = idx

    def extract(self, idx: int) -> QuantizedKVCache:
        """One sequence, without its padding, as a single-sequence cache (for the prompt cache)."""
        cache = QuantizedKVCache(self.group_size, self.bits)
        padding = self.left_padding.tolist()[idx]
        row = lambda x: mx.contiguous(x[idx : idx + 1, :, padding : self._idx])  # noqa: E731
        cache.keys, cache.values = _parts(self.keys, row), _parts(self.values, row)
        cache.offset = self._idx - padding
        return cache

    @classmethod
    def merge(cls, caches: list[QuantizedKVCache]) -> "BatchQuantizedKVCache":
        """Single-sequence caches into one batch, left-padded to the longest."""
        filled = [c for c in caches if c.keys is not None]
        ref = caches[0] if not filled else filled[0]
        group_size, bits = ref.group_size, ref.bits
        if any((c.group_size, c.bits) != (group_size, bits) for c in caches):
            raise ValueError("quantized caches with different bits or group sizes cannot share a batch")
        lengths = [c.size() for c in caches]
        longest = max(lengths)
        if longest == 0:
            return cls([0] * len(caches), group_size, bits)
        padding = [longest - n for n in lengths]
        heads = filled[0].keys[0].shape[1]
        k_dim = filled[0].keys[0].shape[3] * 32 // bits
        v_dim = filled[0].values[0].shape[3] * 32 // bits
        dtype = filled[0].keys[1].dtype
        shape = (len(caches), heads, longest)
        keys = _quantized_zeros(shape, k_dim, dtype, group_size, bits)
        values = _quantized_zeros(shape, v_dim, dtype, group_size, bits)
        for i, (pad, c) in enumerate(zip(padding, caches)):
            if c.keys is None or c.offset == 0:
                continue
            for stored, part in zip(keys + values, tuple(c.keys) + tuple(c.values)):
                stored[i : i + 1, :, pad : pad + c.offset] = part[..., : c.offset, :]
        batch = cls(padding, group_size, bits)
        batch.keys, batch.values = keys, values
        batch.offset += longest
        batch._idx = longest
        return batch

    # -- bookkeeping -----------------------------------------------------------------------------

    @property
    def state(self):
        return self.keys, self.values, self.offset, self.left_padding, self._idx

    @state.setter
    def state(self, v):
        self.keys, self.values, self.offset, self.left_padding, self._idx = v

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return sum(x.nbytes for x in self.keys + self.values)
