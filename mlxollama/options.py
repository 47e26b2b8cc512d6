"""The `options` object: defaults < model params layer < request (reference §3, B.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from .errors import StatusError


class OptionTypeError(ValueError):
    """A wrong option type; Ollama answers these with HTTP 500."""


class OptionValueError(StatusError):
    """A number Ollama's JSON decoder would never let through (NaN, ±Infinity): a 400."""

    def __init__(self, message: str):
        super().__init__(message, 400)


# Keys Ollama still accepts from older clients and ignores (reference §3.3).
IGNORED_KEYS = {
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "tfs_z",
    "penalize_newline",
    "numa",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "embedding_only",
    "num_gqa",
}


@dataclass
class Options:
    # sampling / prediction
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    stop: list[str] = field(default_factory=list)
    num_predict: int = -1
    num_keep: int = 4
    # load-time ("runner") options; MLX needs no reload for any of them
    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool = True
    num_thread: int = 0
    # tokens a draft model proposes per speculative step (Ollama's default); 0 turns drafting off
    draft_num_predict: int = 4

    @classmethod
    def merged(cls, *sources: dict | None, num_ctx: int = 4096) -> "Options":
        opts = cls(num_ctx=num_ctx)
        for src in sources:
            for key, value in (src or {}).items():
                opts.set_checked(key, value)
        return opts

    def set_checked(self, key: str, value) -> None:
        kind = _TYPES.get(key)
        if kind is None or value is None:
            return  # unknown and deprecated keys are ignored, like Ollama
        setattr(self, key, _normalised(key, _coerce(key, kind, value)))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Go turns a JSON number into an int64 or a float32 option; we saturate at those ranges
# instead of wrapping, so no value beyond them ever reaches MLX.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
FLOAT32_MAX = 3.4028234663852886e38


def _coerce(key: str, kind: str, value):
    if kind in ("integer", "float32") and _is_number(value) and not math.isfinite(value):
        # Only reachable from Python callers or model params: the request decoder refuses these.
        raise OptionValueError(f'invalid value for option "{key}": {value} is not a finite number')
    if kind == "integer":
        if not _is_number(value):
            raise OptionTypeError(f'option "{key}" must be of type integer')
        return min(max(int(value), INT64_MIN), INT64_MAX)
    if kind == "float32":
        if not _is_number(value):
            raise OptionTypeError(f'option "{key}" must be of type float32')
        return min(max(float(value), -FLOAT32_MAX), FLOAT32_MAX)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise OptionTypeError(f'option "{key}" must be of type boolean')
        return value
    if kind == "array":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise OptionTypeError(f'option "{key}" must be of type array')
        return list(value)
    raise AssertionError(kind)


_PY_TO_KIND = {"float": "float32", "int": "integer", "bool": "boolean", "list[str]": "array"}
_TYPES = {f.name: _PY_TO_KIND[f.type] for f in fields(Options)}

# Largest context window we take: MLX indexes with 32-bit integers, and no cache could hold more.
MAX_NUM_CTX = (1 << 31) - 1
MAX_DRAFT_NUM_PREDICT = 64


def _clamp(value, low, high):
    return min(max(value, low), high)


# Ranges the sampler and the engine need, clamped the way Ollama's sampler clamps them
# (sample/samplers.go NewSampler: temperature >= 0, top_p and min_p within [0, 1]). Options
# the MLX engine does not use (typical_p, num_batch, num_keep, num_thread, num_gpu, main_gpu)
# are kept as given: they cannot reach MLX. top_k beyond the vocabulary is handled where the
# vocabulary is known (engine/sampling.py); num_predict < 0 means "until the window is full".
_RANGES = {
    "temperature": lambda v: max(v, 0.0),
    "top_p": lambda v: _clamp(v, 0.0, 1.0),
    "min_p": lambda v: _clamp(v, 0.0, 1.0),
    "top_k": lambda v: max(v, 0),
    # -1 is the whole window (reference §3.1); other negatives mean the same rather than an error.
    "repeat_last_n": lambda v: -1 if v < 0 else v,
    "num_ctx": lambda v: _clamp(v, 4, MAX_NUM_CTX),  # Ollama clamps to >= 4 (reference §3.2)
    # Ollama's runner drafts nothing at <= 0; past a few dozen tokens every step is mostly rejected work.
    "draft_num_predict": lambda v: _clamp(v, 0, MAX_DRAFT_NUM_PREDICT),
}


def _normalised(key: str, value):
    clamp = _RANGES.get(key)
    return value if clamp is None else clamp(value)


def validate_options(raw) -> dict:
    """Check a request's options object and return it with values coerced and clamped.

    A wrong type raises OptionTypeError (Ollama's 500); a non-finite number OptionValueError (400)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TypeError("options must be an object")
    checked = {}
    for key, value in raw.items():
        kind = _TYPES.get(key)
        if kind is None or value is None:
            continue
        checked[key] = _normalised(key, _coerce(key, kind, value))
    return checked


def format_parameters(params: dict) -> str:
    """/api/show `parameters`: key padded to 30 columns, Go-literal values, arrays one line each."""
    import json

    lines = []
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, str):
                text = json.dumps(v, ensure_ascii=False)
            elif isinstance(v, bool):
                text = "true" if v else "false"
            else:
                text = repr(v) if isinstance(v, float) else str(v)
            lines.append(f"{key:<30} {text}")
    return "\n".join(lines)
