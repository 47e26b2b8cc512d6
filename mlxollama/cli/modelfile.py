"""Modelfile → the JSON form of /api/create, on the client side as `ollama create` does.

Parsing and parameter typing are the shared ones in `mlxollama.convert.modelfile` (the server uses
them for legacy `modelfile` requests). What is client-only lives here: a FROM or ADAPTER naming a
local file or folder is uploaded as blobs and sent as `files` / `adapters`.
"""

from __future__ import annotations

from pathlib import Path

from ..convert.modelfile import Command, ModelfileError, format_parameter, parse

__all__ = ["Command", "ModelfileError", "parse", "typed_parameter", "to_create_request"]

# Files a model directory contributes (weights, configs, tokenizers); caches and docs stay home.
MODEL_DIR_PATTERNS = ("*.safetensors", "*.gguf", "*.json", "tokenizer.model", "*.tiktoken", "*.jinja",
                      "merges.txt", "vocab.txt")
DEPRECATED = {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
              "mirostat", "mirostat_tau", "mirostat_eta"}


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
    req: dict = {}
    params: dict = {}
    messages: list[dict] = []
    licenses: list[str] = []
    warnings: list[str] = []

    def digests(path: Path) -> dict[str, str]:
        root = path if path.is_dir() else path.parent
        return {p.relative_to(root).as_posix(): upload(p) for p in model_files(path)}

    for c in commands:
        if c.name == "model":
            path = local_path(c.args, base)
            if path is None:
                req["from"] = c.args
            else:
                req.setdefault("files", {}).update(digests(path))
        elif c.name == "adapter":
            path = local_path(c.args, base)
            if path is None:
                raise ModelfileError(f"adapter {c.args}: no such file or directory")
            req["adapters"] = digests(path)
        elif c.name in ("template", "system", "renderer", "parser", "requires"):
            req[c.name] = c.args
        elif c.name == "draft":
            warnings.append("warning: DRAFT is not supported and was ignored")
        elif c.name == "license":
            licenses.append(c.args)
        elif c.name == "message":
            role, _, content = c.args.partition(": ")
            messages.append({"role": role, "content": content})
        elif c.name in DEPRECATED:
            warnings.append(f"warning: parameter {c.name} is deprecated")
        else:
            value = format_parameter(c.name, c.args)
            if isinstance(value, list):
                params.setdefault(c.name, []).extend(value)
            else:
                params[c.name] = value
    if params:
        req["parameters"] = params
    if messages:
        req["messages"] = messages
    if licenses:
        req["license"] = licenses
    return req, warnings
