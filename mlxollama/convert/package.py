"""Turn a folder of MLX model files into a stored model: one blob per file, plus Ollama's text layers."""

from __future__ import annotations

import json
from pathlib import Path

from ..store import Layer, Manifest, ModelName, Store, media

_TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
}


def media_type_for(relative_name: str) -> str:
    base = relative_name.rsplit("/", 1)[-1]
    if base.endswith(".safetensors"):
        return media.MLX_WEIGHTS
    if relative_name == "config.json":
        return media.MLX_CONFIG
    if base in _TOKENIZER_FILES:
        return media.MLX_TOKENIZER
    return media.MLX_FILE


def package_model_dir(
    store: Store,
    name: ModelName,
    model_dir: Path,
    *,
    config: dict,
    template: str | None = None,
    system: str | None = None,
    params: dict | None = None,
    messages: list | None = None,
    licenses: list[str] = (),
    parent: str | None = None,
):
    """Store every file under model_dir as a named layer and write the manifest; returns it stored."""
    layers = []
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        digest, size = store.add_blob_from_path(path)
        layers.append(Layer(media_type_for(rel), digest, size, name=rel, from_=parent))

    def text_layer(media_type: str, text: str):
        digest, size = store.write_blob(text.encode("utf-8"))
        layers.append(Layer(media_type, digest, size))

    if template:
        text_layer(media.TEMPLATE, template)
    if system:
        text_layer(media.SYSTEM, system)
    if params:
        text_layer(media.PARAMS, json.dumps(params, separators=(",", ":")))
    if messages:
        text_layer(media.MESSAGES, json.dumps(messages, separators=(",", ":")))
    for text in licenses:
        text_layer(media.LICENSE, text)
    config_digest, config_size = store.write_blob(json.dumps(config, separators=(",", ":")).encode())
    manifest = Manifest(config=Layer(media.CONFIG, config_digest, config_size), layers=layers)
    store.write_manifest(name, manifest)
    return store.get_manifest(name)
