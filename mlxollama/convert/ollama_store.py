"""Models the user already has in Ollama's own store (`OLLAMA_MODELS`, default ~/.ollama/models).

A pull of a name found there converts the local GGUF blob instead of downloading it. That store
is only ever read: files are opened read-only, small text layers are copied, nothing is linked,
locked or written there.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ollama_models_dir
from ..store import Layer, ModelName, Store, StoredManifest, media
from .create import TEXT_LAYER_TYPES, Emit, ManageError, check_gguf_architecture, import_ollama_model


def find(name: ModelName, root: Path | None = None) -> StoredManifest | None:
    """The Ollama manifest for `name` (parts matched case-insensitively, like Ollama), if any."""
    root = root or ollama_models_dir()
    if not (root / "manifests").is_dir():
        return None
    # Store's lookups only list directories and read files; its lock is taken by writers only.
    try:
        stored = Store(root).get_manifest(name)
    except (OSError, ValueError):
        return None
    if stored is None or not any(l.media_type == media.MODEL for l in stored.manifest.layers):
        return None
    return stored


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def import_from_ollama(
    store: Store, name: ModelName, source: StoredManifest, emit: Emit, noprune: bool = False
) -> StoredManifest:
    emit({"status": "pulling manifest"})
    src_blobs = source.store
    try:
        original_config = json.loads(src_blobs.blob_path(source.manifest.config.digest).read_bytes())
    except (OSError, ValueError):
        original_config = {}
    if not isinstance(original_config, dict):
        original_config = {}
    from .gguf_vision import source_key_for, vision_refusal

    family = str(original_config.get("model_family") or "")
    projector = next((l for l in source.manifest.layers if l.media_type == media.PROJECTOR), None)
    refusal = vision_refusal(family, projector is not None)
    if refusal:
        raise ManageError(refusal, 400)
    check_gguf_architecture(family)
    model = next(l for l in source.manifest.layers if l.media_type == media.MODEL)
    gguf = src_blobs.blob_path(model.digest)
    if not gguf.is_file():
        raise ManageError(f"the Ollama store at {src_blobs.root} lists {model.digest} but has no such blob")
    text_layers: list[Layer] = []
    for layer in [*source.manifest.layers, source.manifest.config]:
        emit(
            {
                "status": f"pulling {_short(layer.digest)}",
                "digest": layer.digest,
                "total": layer.size,
                "completed": layer.size,
            }
        )
        if layer.media_type in TEXT_LAYER_TYPES:
            digest, size = store.write_blob(src_blobs.blob_path(layer.digest), expected_digest=layer.digest)
            text_layers.append(Layer(layer.media_type, digest, size))
    # Ollama verified the GGUF when it pulled it; hashing gigabytes again would only repeat that.
    emit({"status": "verifying sha256 digest"})
    return import_ollama_model(
        store,
        name,
        gguf_path=gguf,
        gguf_digest=model.digest,
        text_layers=text_layers,
        original_config=original_config,
        emit=emit,
        noprune=noprune,
        projector_path=src_blobs.blob_path(projector.digest) if projector else None,
        source_key=source_key_for(gguf, model.digest, projector.digest if projector else None),
    )
