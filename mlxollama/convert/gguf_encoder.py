"""Import a GGUF sentence encoder (llama.cpp's ``bert``, XLM-RoBERTa and RoBERTa written as
``bert``, and ``nomic-bert``) as the folder our MLX encoder (engine/encoder.py) loads.

Ollama's library embedders (all-minilm, nomic-embed-text, mxbai-embed-large,
snowflake-arctic-embed) are GGUFs written by llama.cpp's or Ollama's BERT converters. Those
rename the Hugging Face tensors through gguf-py's ``TensorNameMap`` and change nothing else
(BERT's q/k/v stay separate, NomicBERT's Wqkv stays fused, no permutation), so the import
is the table read backwards onto the names the encoder uses, each tensor dequantized to
float (embeddings are sensitive to requantization, and these models are small). The
WordPiece vocabulary comes back from the ``tokenizer.ggml.*`` metadata (gguf_tokenizer.py);
pooling from ``{arch}.pooling_type`` and normalisation from ``{arch}.normalize_embeddings``,
defaulting as Ollama does (bert normalised, nomic-bert raw).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from mlx.utils import tree_flatten

from ..engine.encoder import BertEncoder, EncoderConfig, PoolingConfig
from .gguf import model_info_from_metadata, read_metadata
from .gguf_tokenizer import UnsupportedTokenizer, write_tokenizer_files

log = logging.getLogger(__name__)

ENCODER_ARCHITECTURES = ("bert", "nomic-bert", "gemma-embedding", "modern-bert")

# llama.cpp's pooling_type numbering (enum llama_pooling_type).
_POOLING = {1: "mean", 2: "cls", 3: "lasttoken"}

# GGUF tensor (without .weight/.bias) -> our encoder's parameter module, per architecture.
# The HF side of each row is what gguf-py's TensorNameMap lists for that GGUF name.
_BERT_NAMES = {
    "token_embd": "embeddings.word_embeddings",
    "position_embd": "embeddings.position_embeddings",
    "token_types": "embeddings.token_type_embeddings",
    "token_embd_norm": "embeddings.LayerNorm",
    "blk.{bid}.attn_q": "encoder.layer.{bid}.attention.self.query",
    "blk.{bid}.attn_k": "encoder.layer.{bid}.attention.self.key",
    "blk.{bid}.attn_v": "encoder.layer.{bid}.attention.self.value",
    "blk.{bid}.attn_output": "encoder.layer.{bid}.attention.output.dense",
    "blk.{bid}.attn_output_norm": "encoder.layer.{bid}.attention.output.LayerNorm",
    "blk.{bid}.ffn_up": "encoder.layer.{bid}.intermediate.dense",
    "blk.{bid}.ffn_down": "encoder.layer.{bid}.output.dense",
    "blk.{bid}.layer_output_norm": "encoder.layer.{bid}.output.LayerNorm",
}
_NOMIC_NAMES = {
    "token_embd": "embeddings.word_embeddings",
    "token_types": "embeddings.token_type_embeddings",
    "token_embd_norm": "emb_ln",
    "blk.{bid}.attn_qkv": "encoder.layers.{bid}.attn.Wqkv",
    "blk.{bid}.attn_output": "encoder.layers.{bid}.attn.out_proj",
    "blk.{bid}.attn_output_norm": "encoder.layers.{bid}.norm1",
    "blk.{bid}.ffn_up": "encoder.layers.{bid}.mlp.fc11",
    "blk.{bid}.ffn_gate": "encoder.layers.{bid}.mlp.fc12",
    "blk.{bid}.ffn_down": "encoder.layers.{bid}.mlp.fc2",
    "blk.{bid}.layer_output_norm": "encoder.layers.{bid}.norm2",
}
_NAMES = {"bert": _BERT_NAMES, "nomic-bert": _NOMIC_NAMES}
# Present in some files, not used to embed: the pooler / classifier heads.
_IGNORED = ("cls", "cls.output", "output_norm")


class UnsupportedEncoderGGUF(ValueError):
    """A GGUF embedder we cannot import (the reason is in the message, without paths)."""


@dataclass
class GGUFEncoderImport:
    architecture: str
    file_type: str
    parameter_count: int
    context_length: int | None
    embedding_length: int | None
    chat_template: str | None = None
    files: list[str] = field(default_factory=list)
    pooling: str = "mean"
    normalize: bool = True


def read_architecture(path: str | Path) -> str:
    """``general.architecture`` of a GGUF file (the header is parsed; the weights stay memory-mapped, unread)."""
    reader = gguf.GGUFReader(str(path), "r")
    f = reader.fields.get("general.architecture")
    arch = str(f.contents()) if f is not None else ""
    # Ollama's embeddinggemma is a gemma3 GGUF with a pooling type: the encoder imports it
    if arch == "gemma3" and f"{arch}.pooling_type" in reader.fields:
        return "gemma-embedding"
    return arch


def is_encoder_architecture(arch: str) -> bool:
    return arch in ENCODER_ARCHITECTURES


def _file_type(meta: Mapping[str, Any]) -> str:
    ft = meta.get("general.file_type")
    try:
        name = gguf.LlamaFileType(int(ft)).name if ft is not None else "ALL_F32"
    except ValueError:
        return "unknown"
    if name == "ALL_F32":
        return "F32"
    return name.removeprefix("MOSTLY_")


def _tensor_array(t: Any) -> np.ndarray:
    """A GGUF tensor as numpy in row-major HF shape; F16/F32 kept, quantized types decoded."""
    qtype = QT(t.tensor_type)
    data = np.asarray(t.data)
    if qtype == QT.F32:
        w = data.astype(np.float32, copy=False)
    elif qtype == QT.F16:
        w = data.astype(np.float16, copy=False)
    else:
        try:
            w = gguf.quants.dequantize(data, qtype).astype(np.float32, copy=False)
        except (NotImplementedError, ValueError) as e:
            raise UnsupportedEncoderGGUF(f"tensor {t.name}: GGML type {qtype.name} cannot be decoded") from e
    return w.reshape(tuple(int(x) for x in reversed(t.shape)))


def _stored_dtype(t: Any) -> str:
    """What _tensor_array yields for ``t``, in safetensors' spelling."""
    return {QT.F16: "F16"}.get(QT(t.tensor_type), "F32")


def _write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...], str, Any]]) -> None:
    """A safetensors file written one tensor at a time ((name, shape, dtype, producer) each), so a
    pull holds one decoded tensor in memory, not the model."""
    sizes = {"F16": 2, "F32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for name, shape, dtype, _ in entries:
        n = int(np.prod(shape)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, shape, dtype, produce in entries:
            data = np.ascontiguousarray(produce(), {"F16": "<f2", "F32": "<f4"}[dtype])
            if data.shape != tuple(shape):
                raise UnsupportedEncoderGGUF(f"tensor {name}: decoded shape {list(data.shape)}, expected {list(shape)}")
            f.write(memoryview(data).cast("B"))
    tmp.replace(path)


def _map_names(arch: str, n_blocks: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for g, ours in _NAMES[arch].items():
        if "{bid}" in g:
            for b in range(n_blocks):
                out[g.format(bid=b)] = ours.format(bid=b)
        else:
            out[g] = ours
    return out


def _config(arch: str, meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> dict[str, Any]:
    """config.json in the Hugging Face spelling our EncoderConfig reads."""

    def need(key: str) -> Any:
        v = meta.get(f"{arch}.{key}")
        if v is None:
            raise UnsupportedEncoderGGUF(f"{arch}: metadata {arch}.{key} is missing")
        return v

    def rows(name: str) -> int:
        t = tensors.get(f"{name}.weight")
        return int(t.shape[-1]) if t is not None else 0  # GGUF shapes are reversed: rows last

    hidden = int(need("embedding_length"))
    vocab = rows("token_embd")
    if not vocab:
        raise UnsupportedEncoderGGUF(f"{arch}: tensor token_embd.weight is missing")
    eps = float(str(np.float32(meta.get(f"{arch}.attention.layer_norm_epsilon", 1e-12))))
    common = {"vocab_size": vocab, "type_vocab_size": rows("token_types")}
    if arch == "nomic-bert":
        if meta.get(f"{arch}.expert_count"):
            raise UnsupportedEncoderGGUF("nomic-bert with experts (nomic-bert-moe) is not supported")
        return {
            "architectures": ["NomicBertModel"],
            "model_type": "nomic_bert",
            **common,
            "n_embd": hidden,
            "n_layer": int(need("block_count")),
            "n_head": int(need("attention.head_count")),
            "n_inner": int(need("feed_forward_length")),
            "n_positions": int(need("context_length")),
            "layer_norm_epsilon": eps,
            "rotary_emb_base": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            "rotary_emb_fraction": 1.0,
            "activation_function": "swiglu",
            "prenorm": False,
            "qkv_proj_bias": False,
            "mlp_fc1_bias": False,
            "mlp_fc2_bias": False,
        }
    positions = rows("position_embd")
    if not positions:
        raise UnsupportedEncoderGGUF(f"{arch}: tensor position_embd.weight is missing")
    tokenizer = str(meta.get("tokenizer.ggml.model", ""))
    layers = {
        "hidden_size": hidden,
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": int(need("attention.head_count")),
        "intermediate_size": int(need("feed_forward_length")),
        "layer_norm_eps": eps,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    }
    if tokenizer in ("t5", "gpt2"):
        # XLM-RoBERTa (unigram: bge-m3, multilingual-e5) and RoBERTa (byte-level BPE: granite-embedding):
        # llama.cpp dropped the pad_token_id + 1 position rows RoBERTa never uses; they come back
        # as zeros so positions count from pad + 1 again.
        pad = int(meta.get("tokenizer.ggml.padding_token_id", 1))
        model_type = "xlm-roberta" if tokenizer == "t5" else "roberta"
        return {
            "architectures": ["XLMRobertaModel" if tokenizer == "t5" else "RobertaModel"],
            "model_type": model_type,
            **common,
            **layers,
            "max_position_embeddings": positions + pad + 1,
            "pad_token_id": pad,
        }
    if tokenizer != "bert":
        raise UnsupportedEncoderGGUF(
            f"bert with tokenizer {tokenizer!r} is not supported (supported: 'bert' WordPiece, "
            "'t5' XLM-RoBERTa unigram, 'gpt2' RoBERTa byte-level BPE)"
        )
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        **common,
        **layers,
        "max_position_embeddings": positions,
        "pad_token_id": int(meta.get("tokenizer.ggml.padding_token_id") or 0),
    }


def _pooling(arch: str, meta: Mapping[str, Any]) -> PoolingConfig:
    kind = meta.get(f"{arch}.pooling_type")
    kind = 1 if kind is None else int(kind)
    if kind == 4:
        raise UnsupportedEncoderGGUF(f"{arch} reranker (pooling_type rank) is not supported")
    if kind not in _POOLING:
        # 0 (none) gives one vector per token in llama.cpp; one per text needs a pooling.
        log.warning("%s: pooling_type %s; using mean pooling", arch, kind)
    normalize = meta.get(f"{arch}.normalize_embeddings")
    if normalize is None:
        normalize = arch == "bert"  # Ollama's default per architecture
    return PoolingConfig(_POOLING.get(kind, "mean"), bool(normalize))


def import_gguf_encoder(gguf_path: str | Path, out_dir: str | Path) -> GGUFEncoderImport:
    """Convert a ``bert`` / ``nomic-bert`` GGUF into an encoder folder at ``out_dir``; EmbeddingGemma
    (``gemma-embedding``, Ollama's ``gemma3`` with a pooling type) and ``modern-bert`` go to their own
    importers (gemma_embed.py, gguf_modernbert.py)."""
    out = Path(out_dir)
    reader = gguf.GGUFReader(str(gguf_path), "r")
    meta, types = read_metadata(reader)
    arch = str(meta.get("general.architecture", ""))
    from .gemma_embed import is_gemma_embedding_gguf

    if is_gemma_embedding_gguf(arch, meta.get(f"{arch}.pooling_type")):
        return _import_gemma(reader, meta, types, out)
    if arch == "modern-bert":
        return _import_modernbert(reader, meta, types, out)
    if arch not in ENCODER_ARCHITECTURES:
        raise UnsupportedEncoderGGUF(f"GGUF architecture {arch!r} is not an embedding model we import")
    tensors = {t.name: t for t in reader.tensors}
    config = _config(arch, meta, tensors)
    cfg = EncoderConfig.from_dict(config)
    pooling = _pooling(arch, meta)

    names = _map_names(arch, cfg.num_hidden_layers)
    expected = {k: tuple(v.shape) for k, v in tree_flatten(BertEncoder(cfg).parameters())}
    plan: list[tuple[str, Any, tuple[int, ...]]] = []  # (our name, GGUF tensor, shape), checked before writing
    for t in reader.tensors:
        base, _, suffix = t.name.rpartition(".")
        if base in _IGNORED:
            continue
        module = names.get(base)
        name = f"{module}.{suffix}"
        if module is None or name not in expected:
            raise UnsupportedEncoderGGUF(f"{arch}: tensor {t.name} has no place in the encoder")
        shape = tuple(int(x) for x in reversed(t.shape))
        if base == "position_embd":
            shape = (shape[0] + cfg.position_offset, *shape[1:])
        if shape != expected[name] and int(np.prod(shape)) != int(np.prod(expected[name])):
            raise UnsupportedEncoderGGUF(
                f"{arch}: tensor {t.name} has shape {list(shape)}, the encoder expects {list(expected[name])}"
            )
        plan.append((name, t, expected[name]))  # same size: a (n,) bias spelled (1, n) and the like
    missing = sorted(set(expected) - {name for name, _, _ in plan})
    if missing:
        raise UnsupportedEncoderGGUF(f"{arch}: the file lacks {len(missing)} encoder tensors, e.g. {missing[0]}")

    def tensor(t: Any, shape: tuple[int, ...]) -> np.ndarray:
        w = _tensor_array(t)
        if t.name == "position_embd.weight" and cfg.position_offset:
            w = np.concatenate([np.zeros((cfg.position_offset, w.shape[1]), w.dtype), w])
        return w.reshape(shape)

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    files: list[str] = []
    _write_safetensors(
        out / "model.safetensors",
        [(name, shape, _stored_dtype(t), lambda t=t, shape=shape: tensor(t, shape)) for name, t, shape in plan],
    )
    files.append("model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    files.append("config.json")
    context = int(meta.get(f"{arch}.context_length") or cfg.usable_positions)
    files += _write_tokenizer(meta, out, arch, min(context, cfg.usable_positions))
    (out / "pooling.json").write_text(json.dumps({"mode": pooling.mode, "normalize": pooling.normalize}) + "\n")
    files.append("pooling.json")
    parameter_count = sum(int(t.n_elements) for t in reader.tensors)
    _write_model_info(meta, types, out, arch, parameter_count, pooling)
    files.append("model_info.json")
    return GGUFEncoderImport(
        architecture=arch,
        file_type=_file_type(meta),
        parameter_count=parameter_count,
        context_length=context,
        embedding_length=cfg.hidden_size,
        files=files,
        pooling=pooling.mode,
        normalize=pooling.normalize,
    )


def _write_tokenizer(meta: Mapping[str, Any], out: Path, arch: str, context: int) -> list[str]:
    """The tokenizer files from the GGUF vocabulary (the names written); an unsupported one refused."""
    try:
        return write_tokenizer_files(meta, out, context).files
    except UnsupportedTokenizer as e:
        raise UnsupportedEncoderGGUF(f"{arch}: {e}") from e


def _write_model_info(
    meta: Mapping[str, Any],
    types: Mapping[str, Any],
    out: Path,
    arch: str,
    parameter_count: int,
    pooling: PoolingConfig,
) -> None:
    info = model_info_from_metadata(meta, types, parameter_count)
    info.setdefault(f"{arch}.pooling_type", pooling.ollama_pooling_type)  # marks it an embedder
    (out / "model_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")


def _import_gemma(reader: Any, meta: Mapping[str, Any], types: Mapping[str, Any], out: Path) -> GGUFEncoderImport:
    """EmbeddingGemma (llama.cpp's gemma-embedding, Ollama's gemma3 with a pooling type): see convert/gemma_embed.py."""
    from ..engine.encoder import UnsupportedEncoder
    from .gemma_embed import import_gemma_gguf

    arch = str(meta.get("general.architecture", ""))
    try:
        config, heads, pooling, parameter_count = import_gemma_gguf(
            reader, meta, out, _tensor_array, _write_safetensors
        )
    except UnsupportedEncoder as e:
        raise UnsupportedEncoderGGUF(str(e)) from e
    context = int(config["max_position_embeddings"])
    tokenizer_files = _write_tokenizer(meta, out, arch, context)
    _write_model_info(meta, types, out, arch, parameter_count, pooling)
    return GGUFEncoderImport(
        architecture=arch,
        file_type=_file_type(meta),
        parameter_count=parameter_count,
        context_length=context,
        embedding_length=heads[-1].out_features if heads else int(config["hidden_size"]),
        files=["model.safetensors", "config.json", "dense.json", "pooling.json", *tokenizer_files, "model_info.json"],
        pooling=pooling.mode,
        normalize=pooling.normalize,
    )


def _import_modernbert(reader: Any, meta: Mapping[str, Any], types: Mapping[str, Any], out: Path) -> GGUFEncoderImport:
    """llama.cpp's modern-bert: see convert/gguf_modernbert.py."""
    from ..engine.encoder import UnsupportedEncoder
    from .gguf_modernbert import import_modernbert_gguf

    try:
        config, pooling, parameter_count = import_modernbert_gguf(reader, meta, out, _tensor_array, _write_safetensors)
    except UnsupportedEncoder as e:
        raise UnsupportedEncoderGGUF(str(e)) from e
    context = int(config["max_position_embeddings"])
    tokenizer_files = _write_tokenizer(meta, out, "modern-bert", context)
    _write_model_info(meta, types, out, "modern-bert", parameter_count, pooling)
    return GGUFEncoderImport(
        architecture="modern-bert",
        file_type=_file_type(meta),
        parameter_count=parameter_count,
        context_length=context,
        embedding_length=int(config["hidden_size"]),
        files=["model.safetensors", "config.json", "pooling.json", *tokenizer_files, "model_info.json"],
        pooling=pooling.mode,
        normalize=pooling.normalize,
    )
