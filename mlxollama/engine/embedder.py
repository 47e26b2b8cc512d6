"""A loaded embedding model on its engine thread: /api/embed and /api/embeddings jobs."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from .encoder import SUPPORTED_MODEL_TYPES, EncoderModel, InputTooLong, l2_normalize, pool, read_pooling
from .jobs import EmbedJob, EmbedResult, EngineError, ErrorEvent


def decoder_embeddings(
    inner, tokenizer, texts: list[str], *, limit: int, truncate: bool, mode: str = "mean"
) -> tuple[np.ndarray, int]:
    """Pooled final hidden states of a decoder's inner model -> (float32 [len(texts), dim],
    tokens processed). One text per forward pass: a causal model with last-token pooling would
    need left padding and masks to batch, and embedding requests to decoders are rarely large.
    Raises InputTooLong for a text over `limit` tokens when truncate is off."""
    vectors, total = [], 0
    for text in texts:
        ids = list(tokenizer.encode(text, add_special_tokens=True))
        if len(ids) > limit:
            if not truncate:
                raise InputTooLong()
            ids = ids[:limit]
        total += len(ids)
        if not ids:
            # An empty text with no special tokens to add has no hidden state to pool.
            vectors.append(None)
            continue
        hidden = inner(mx.array([ids], dtype=mx.int32)).astype(mx.float32)
        vectors.append(np.array(pool(hidden, mx.ones((1, len(ids)), mx.bool_), mode)[0]))
    dim = next((v.shape[0] for v in vectors if v is not None), None)
    if dim is None:
        dim = int(inner(mx.array([[0]], dtype=mx.int32)).shape[-1])
    return np.stack([np.zeros(dim, np.float32) if v is None else v for v in vectors]).astype(np.float32), total


def fit_vectors(vectors: np.ndarray, *, dimensions: int, normalize: bool) -> np.ndarray:
    """`dimensions` (Matryoshka-style: the leading components), then unit length when asked."""
    if 0 < dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]
    return l2_normalize(vectors) if normalize else vectors


class DecoderEmbedder:
    """A decoder checkpoint used as an embedder (Qwen3-Embedding style): its final hidden states
    pooled as its sentence-transformers folder says. Implements the EmbeddingModel interface."""

    def __init__(self, model_dir: Path):
        from mlx.utils import tree_flatten
        from mlx_lm.utils import load

        from .llm import apply_backend_dtype

        self.model, self.tokenizer = load(str(model_dir))
        apply_backend_dtype(self.model)
        mx.eval(self.model.parameters())
        self.weights_bytes = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        pooling = read_pooling(model_dir)
        self.mode = pooling.mode
        config = json.loads((Path(model_dir) / "config.json").read_text())
        self.max_length = int(config.get("max_position_embeddings") or 8192)
        self.embedding_length = int(config.get("hidden_size") or 0)

    def close(self) -> None:
        del self.model

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(self.tokenizer.encode(t)) for t in texts]

    def embed(self, texts: list[str], *, truncate: bool = True, normalize: bool = True, batch_size: int = 1):
        out, total = decoder_embeddings(
            self.model.model, self.tokenizer, texts, limit=self.max_length, truncate=truncate, mode=self.mode
        )
        return (l2_normalize(out) if normalize else out), total


def _is_encoder_folder(model_dir: Path) -> bool:
    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "")
    return model_type in SUPPORTED_MODEL_TYPES


class LoadedEmbedder:
    kind = "embedding"

    def __init__(self, model_dir: Path):
        from .encoder_gemma import GemmaEmbeddingModel, is_gemma_embedding_folder

        if is_gemma_embedding_folder(model_dir):
            self.encoder = GemmaEmbeddingModel.load(model_dir)
        else:
            self.encoder = EncoderModel.load(model_dir) if _is_encoder_folder(model_dir) else DecoderEmbedder(model_dir)
        self.on_gpu = mx.default_device() != mx.cpu

    def memory_bytes(self, num_ctx: int) -> int:
        return self.encoder.weights_bytes

    def close(self) -> None:
        self.encoder.close()

    def admit(self, job) -> None:
        raise EngineError("embedding models cannot generate", 400)

    def embed(self, job: EmbedJob) -> None:
        try:
            vectors, tokens = self.encoder.embed(job.texts, truncate=job.truncate, normalize=False)
        except InputTooLong as e:
            job.emit(ErrorEvent(str(e), 400))
            return
        if not np.all(np.isfinite(vectors)):
            job.emit(ErrorEvent("the model produced NaN or Inf values", 500))
            return
        # A shortened vector is made unit length again whatever was asked.
        vectors = fit_vectors(
            vectors, dimensions=job.dimensions, normalize=job.normalize or 0 < job.dimensions < vectors.shape[1]
        )
        job.emit(EmbedResult(vectors=vectors.astype(np.float32).tolist(), prompt_eval_count=tokens))
