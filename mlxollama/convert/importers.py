"""Converters from outside formats into stored MLX models (GGUF files, sentence-transformers folders)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..store import ModelName, Store, build_config_blob, format_parameter_size


def import_gguf_model(store: Store, name: ModelName, gguf_path: Path, **layers):
    from .gguf import import_gguf

    with tempfile.TemporaryDirectory(prefix="mlxollama-gguf-") as tmp:
        result = import_gguf(gguf_path, Path(tmp))
        config = build_config_blob(
            model_format="mlx",
            model_family=result.architecture,
            model_type=format_parameter_size(result.parameter_count),
            file_type=result.file_type,
            capabilities=None,
            context_length=result.context_length,
            embedding_length=result.embedding_length,
        )
        from .package import package_model_dir

        return package_model_dir(store, name, Path(tmp), config=config, **layers)


def import_sentence_transformers(store: Store, name: ModelName, folder: Path, **layers):
    from .hf_encoder import convert_sentence_transformers

    with tempfile.TemporaryDirectory(prefix="mlxollama-st-") as tmp:
        result = convert_sentence_transformers(folder, Path(tmp))
        config = build_config_blob(
            model_format="mlx",
            model_family=result.architecture,
            model_type=format_parameter_size(result.parameter_count),
            file_type=result.file_type,
            capabilities=["embedding"],
            context_length=result.context_length,
            embedding_length=result.embedding_length,
        )
        from .package import package_model_dir

        return package_model_dir(store, name, Path(tmp), config=config, **layers)
