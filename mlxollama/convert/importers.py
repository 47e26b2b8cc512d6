"""Converters from outside formats into stored MLX models (GGUF files, Hugging Face safetensors, sentence-transformers folders)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..store import ModelName, Store, build_config_blob, format_parameter_size
from .package import package_model_dir


def store_converted(store: Store, name: ModelName, model_dir: Path, result, *, capabilities=None, **layers):
    """Package a converter's output folder, with the config blob built from its result
    (every converter's result has architecture, parameter_count, file_type and lengths)."""
    config = build_config_blob(
        model_format="mlx",
        model_family=result.architecture,
        model_type=format_parameter_size(result.parameter_count),
        file_type=result.file_type,
        capabilities=capabilities,
        context_length=result.context_length,
        embedding_length=result.embedding_length,
    )
    return package_model_dir(store, name, model_dir, config=config, **layers)


def import_gguf_model(store: Store, name: ModelName, gguf_path: Path, **layers):
    from .gguf import import_gguf

    with tempfile.TemporaryDirectory(prefix="mlxollama-gguf-") as tmp:
        result = import_gguf(gguf_path, Path(tmp))
        return store_converted(store, name, Path(tmp), result, **layers)


def import_hf_model(store: Store, name: ModelName, src_dir: Path, *, quantize: str | None = "4bit", **layers):
    """A Hugging Face safetensors folder, converted (and by default 4-bit
    quantized) with mlx-lm.  A folder that already is an MLX model is stored
    as it is when ``quantize`` is None or names the quantization it already
    has (so a default "4bit" does not fail on an mlx-community 4-bit repo);
    an unquantized MLX folder is quantized; asking a quantized one for a
    different quantization raises ValueError like any requantization."""
    from .hf import QUANTIZE_ERROR, convert_hf_checkpoint, copy_mlx_checkpoint, is_mlx_checkpoint, same_quantization

    src_dir = Path(src_dir)
    with tempfile.TemporaryDirectory(prefix="mlxollama-hf-") as tmp:
        out = Path(tmp) / "model"
        if is_mlx_checkpoint(src_dir):
            config = json.loads((src_dir / "config.json").read_text())
            if quantize is None or same_quantization(quantize, config):
                result = copy_mlx_checkpoint(src_dir, out)
            elif "quantization" in config:
                raise ValueError(QUANTIZE_ERROR)
            else:
                result = convert_hf_checkpoint(src_dir, out, quantize=quantize)
        else:
            result = convert_hf_checkpoint(src_dir, out, quantize=quantize)
        return store_converted(store, name, out, result, **layers)


def import_sentence_transformers(store: Store, name: ModelName, folder: Path, **layers):
    from .hf_encoder import convert_sentence_transformers

    with tempfile.TemporaryDirectory(prefix="mlxollama-st-") as tmp:
        result = convert_sentence_transformers(folder, Path(tmp))
        return store_converted(store, name, Path(tmp), result, capabilities=["embedding"], **layers)
