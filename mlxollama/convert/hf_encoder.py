"""Import a Hugging Face sentence-transformers encoder folder (BERT family) for MLX."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ..engine.encoder import (
    SUPPORTED_MODEL_TYPES,
    UnsupportedEncoder,
    build_encoder,
    check_weights,
    load_checkpoint,
    read_config,
    read_max_length,
    read_pooling,
)

__all__ = ["EncoderImport", "EncoderImportError", "UnsupportedEncoder", "convert_sentence_transformers"]

# Copied verbatim when present; the loader and a later re-export need nothing else.
_PLAIN_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",  # holds query/document prompts
)


# model_type -> the general.architecture Ollama reports for the same model (llama.cpp's converter
# writes RoBERTa and XLM-R as "bert"; NomicBERT keeps its own name).
_OLLAMA_ARCHITECTURE = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "nomic_bert": "nomic-bert",
    "modernbert": "modern-bert",  # llama.cpp's name for it
}


class EncoderImportError(ValueError):
    """The source folder is missing or is not a usable sentence-transformers encoder."""


@dataclass
class EncoderImport:
    architecture: str  # Ollama's general.architecture: "bert" (BERT, RoBERTa, XLM-R) or "nomic-bert"
    parameter_count: int
    context_length: int  # bert.context_length as Ollama reports it: max_position_embeddings
    embedding_length: int
    file_type: str  # "F32" | "F16"
    files: list[str] = field(default_factory=list)  # relative to out_dir
    max_length: int = 0  # the window inputs are truncated to (sentence_bert_config)
    pooling: str = "mean"
    normalize: bool = False
    model_info: dict = field(default_factory=dict)


def convert_sentence_transformers(src_dir: Path, out_dir: Path) -> EncoderImport:
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise EncoderImportError(f"{src_dir}: not a directory")
    for required in ("config.json", "tokenizer.json"):
        if not (src_dir / required).is_file():
            raise EncoderImportError(f"{src_dir}: {required} not found")
    if not any(src_dir.glob("*.safetensors")):
        hint = " (only PyTorch .bin weights; convert them to safetensors first)" if any(src_dir.glob("*.bin")) else ""
        raise EncoderImportError(f"{src_dir}: no *.safetensors weights{hint}")

    model_type = _model_type(src_dir)
    from ..engine.encoder_gemma import is_gemma_embedding_folder

    if is_gemma_embedding_folder(src_dir):  # EmbeddingGemma: bidirectional Gemma 3 + Dense heads
        from .gemma_embed import convert_gemma_folder

        return convert_gemma_folder(src_dir, out_dir)
    if is_decoder_embedder(model_type):
        return _convert_decoder(src_dir, out_dir)

    # UnsupportedEncoder (naming the architecture) passes through untouched.
    try:
        cfg = read_config(src_dir)
        pooling = read_pooling(src_dir)
        max_length = read_max_length(src_dir, cfg)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise EncoderImportError(f"{src_dir}: malformed model configuration ({e!r})") from e

    weights = load_checkpoint(src_dir)
    module = build_encoder(cfg)  # parameters stay lazy: only names and shapes are used
    try:
        check_weights(module, weights)
    except ValueError as e:
        raise EncoderImportError(f"{src_dir}: {e}") from e
    wanted = {k for k, _ in tree_flatten(module.parameters())}
    extra = sorted(set(weights) - wanted)
    if extra:
        raise UnsupportedEncoder(
            f"{cfg.model_type!r} checkpoint has weights this encoder does not use, e.g. {', '.join(extra[:3])}"
        )

    dtypes = {v.dtype for v in weights.values()}
    # bfloat16 -> float32 rather than float16: float16 can overflow bf16's range.
    target = mx.float16 if dtypes == {mx.float16} else mx.float32
    weights = {k: v.astype(target) for k, v in weights.items()}
    file_type = "F16" if target == mx.float16 else "F32"
    parameter_count = int(sum(v.size for v in weights.values()))

    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    files.append("model.safetensors")
    for name in _PLAIN_FILES:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out_dir / name)
            files.append(name)
    for rel in _pooling_config_paths(src_dir):
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_dir / rel, out_dir / rel)
        files.append(rel)

    (out_dir / "pooling.json").write_text(
        json.dumps({"mode": pooling.mode, "normalize": pooling.normalize}, indent=2) + "\n"
    )
    files.append("pooling.json")

    arch = _OLLAMA_ARCHITECTURE.get(cfg.model_type, "bert")
    model_info = {
        "general.architecture": arch,
        "general.file_type": 1 if file_type == "F16" else 0,  # llama.cpp ftype numbering
        "general.parameter_count": parameter_count,
        f"{arch}.attention.causal": False,
        f"{arch}.attention.head_count": cfg.num_attention_heads,
        f"{arch}.attention.layer_norm_epsilon": cfg.layer_norm_eps,
        f"{arch}.block_count": cfg.num_hidden_layers,
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.normalize_embeddings": pooling.normalize,
        f"{arch}.pooling_type": pooling.ollama_pooling_type,
        f"{arch}.vocab_size": cfg.vocab_size,
    }
    (out_dir / "model_info.json").write_text(json.dumps(model_info, indent=2) + "\n")
    files.append("model_info.json")

    return EncoderImport(
        architecture=arch,
        parameter_count=parameter_count,
        context_length=cfg.max_position_embeddings,
        embedding_length=cfg.hidden_size,
        file_type=file_type,
        files=files,
        max_length=max_length,
        pooling=pooling.mode,
        normalize=pooling.normalize,
        model_info=model_info,
    )


def _model_type(src_dir: Path) -> str:
    try:
        return str(json.loads((src_dir / "config.json").read_text()).get("model_type", ""))
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise EncoderImportError(f"{src_dir}: malformed config.json ({e!r})") from e


def is_decoder_embedder(model_type: str) -> bool:
    """A decoder architecture mlx-lm runs (Qwen3-Embedding style): pooled over its hidden states."""
    if not model_type or model_type in SUPPORTED_MODEL_TYPES:
        return False
    from mlx_lm.utils import _get_classes

    try:
        _get_classes({"model_type": model_type})
    except ValueError:
        return False
    return True


def _convert_decoder(src_dir: Path, out_dir: Path) -> EncoderImport:
    """Weights through mlx-lm's converter (unquantized: embeddings are sensitive to it), plus the
    folder's pooling, so the same EmbeddingModel interface serves it."""
    from .hf import UnsupportedCheckpoint, convert_hf_checkpoint

    pooling = read_pooling(src_dir)
    try:
        result = convert_hf_checkpoint(src_dir, out_dir, quantize=None)
    except UnsupportedCheckpoint as e:
        raise UnsupportedEncoder(f"{_model_type(src_dir)!r} embedding model: {e}") from e
    files = list(result.files)
    for rel in _pooling_config_paths(src_dir):
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_dir / rel, out_dir / rel)
        files.append(rel)
    (out_dir / "pooling.json").write_text(json.dumps({"mode": pooling.mode, "normalize": pooling.normalize}) + "\n")
    files.append("pooling.json")
    info_path = out_dir / "model_info.json"
    model_info = json.loads(info_path.read_text())
    arch = result.architecture
    model_info[f"{arch}.pooling_type"] = pooling.ollama_pooling_type
    model_info[f"{arch}.normalize_embeddings"] = pooling.normalize
    info_path.write_text(json.dumps(model_info, indent=2) + "\n")
    return EncoderImport(
        architecture=arch,
        parameter_count=result.parameter_count,
        context_length=result.context_length,
        embedding_length=result.embedding_length,
        file_type=result.file_type,
        files=files,
        max_length=result.context_length,
        pooling=pooling.mode,
        normalize=pooling.normalize,
        model_info=model_info,
    )


def _pooling_config_paths(src_dir: Path) -> list[str]:
    modules_path = src_dir / "modules.json"
    if not modules_path.is_file():
        return []
    out = []
    for m in json.loads(modules_path.read_text()):
        if str(m.get("type", "")).endswith(".Pooling") and m.get("path"):
            rel = f"{m['path'].strip('/')}/config.json"
            if (src_dir / rel).is_file():
                out.append(rel)
    return out
