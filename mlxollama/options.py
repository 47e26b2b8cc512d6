"""The `options` object: defaults < model params layer < request (reference §3, B.4)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


class OptionTypeError(ValueError):
    """A wrong option type; Ollama answers these with HTTP 500."""


# Keys Ollama still accepts from older clients and ignores (reference §3.3).
IGNORED_KEYS = {
    "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "penalize_newline", "numa", "low_vram",
    "f16_kv", "logits_all", "vocab_only", "use_mlock", "embedding_only", "num_gqa",
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
        setattr(self, key, _coerce(key, kind, value))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _coerce(key: str, kind: str, value):
    if kind == "integer":
        if not _is_number(value):
            raise OptionTypeError(f'option "{key}" must be of type integer')
        return int(value)
    if kind == "float32":
        if not _is_number(value):
            raise OptionTypeError(f'option "{key}" must be of type float32')
        return float(value)
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


def validate_options(raw) -> dict:
    """Check a request's options object and return it with values coerced; raises OptionTypeError."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TypeError("options must be an object")
    checked = {}
    for key, value in raw.items():
        kind = _TYPES.get(key)
        if kind is None or value is None:
            continue
        checked[key] = _coerce(key, kind, value)
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
