"""Modelfile → the JSON form of /api/create, on the client side as `ollama create` does.

Parsing and the translation are the server's own (`mlxollama.convert.modelfile`, which reads legacy
`modelfile` requests with them); the client passes how it uploads: a FROM or ADAPTER naming a local
file or folder is stored as blobs and sent as `files` / `adapters`.
"""

from __future__ import annotations

from pathlib import Path

from ..convert.modelfile import ClientSide, Command, ModelfileError, format_parameter, parse, to_create_fields

__all__ = ["Command", "ModelfileError", "parse", "typed_parameter", "to_create_request"]

# Files a model directory contributes (weights, configs, tokenizers); caches and docs stay home.
MODEL_DIR_PATTERNS = (
    "*.safetensors",
    "*.gguf",
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "*.jinja",
    "merges.txt",
    "vocab.txt",
)


def typed_parameter(name: str, values: list[str]):
    """`/set parameter NAME V...`: one typed value, or all of them for a list option (stop)."""
    first = format_parameter(name, values[0] if values else "")
    if isinstance(first, list):
        return list(values)
    return first


def model_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found: list[Path] = []
    for pattern in MODEL_DIR_PATTERNS:
        found.extend(p for p in sorted(path.glob(pattern)) if p.is_file() and p not in found)
    if not found:
        raise ModelfileError(f"no Modelfile or safetensors files found in {path}")
    return found


def local_path(arg: str, base: Path) -> Path | None:
    """A FROM/ADAPTER argument that names an existing file or folder, relative to the Modelfile."""
    p = Path(arg).expanduser()
    if not p.is_absolute():
        p = base / p
    return p if p.exists() else None


def to_create_request(commands: list[Command], base: Path, upload) -> tuple[dict, list[str]]:
    """(JSON create fields, warnings). `upload(path) -> "sha256:..."` stores a local file as a blob."""
    warnings: list[str] = []

    def upload_local(arg: str) -> dict[str, str] | None:
        path = local_path(arg, base)
        if path is None:
            return None
        root = path if path.is_dir() else path.parent
        return {p.relative_to(root).as_posix(): upload(p) for p in model_files(path)}

    fields = to_create_fields(commands, ClientSide(upload_local, warnings.append))
    return fields, warnings
