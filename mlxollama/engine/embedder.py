"""A loaded embedding model on its engine thread: /api/embed and /api/embeddings jobs."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from .encoder import SUPPORTED_MODEL_TYPES, EncoderModel, InputTooLong, read_pooling
from .jobs import EmbedJob, EmbedResult, EngineError, ErrorEvent


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
        # One text per forward pass: a causal model with last-token pooling would need left padding
        # and masks to batch, and embedding requests to decoder embedders are rarely large.
        vectors, total = [], 0
        for text in texts:
            ids = list(self.tokenizer.encode(text, add_special_tokens=True))
            if len(ids) > self.max_length:
                if not truncate:
                    raise InputTooLong()
                ids = ids[: self.max_length]
            total += len(ids)
            hidden = self.model.model(mx.array([ids]))[0].astype(mx.float32)
            if self.mode == "lasttoken":
                vec = hidden[-1]
            elif self.mode == "cls":
                vec = hidden[0]
            elif self.mode == "max":
                vec = mx.max(hidden, axis=0)
            else:
                vec = mx.mean(hidden, axis=0)
            vectors.append(np.array(vec))
        out = np.stack(vectors).astype(np.float32)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out, total


def _is_encoder_folder(model_dir: Path) -> bool:
    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "")
    return model_type in SUPPORTED_MODEL_TYPES


class LoadedEmbedder:
    kind = "embedding"

    def __init__(self, model_dir: Path):
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
            vectors, tokens = self.encoder.embed(job.texts, truncate=job.truncate, normalize=job.normalize)
        except InputTooLong as e:
            job.emit(ErrorEvent(str(e), 400))
            return
        if not np.all(np.isfinite(vectors)):
            job.emit(ErrorEvent("the model produced NaN or Inf values", 500))
            return
        if 0 < job.dimensions < vectors.shape[1]:
            # Matryoshka-style: keep the leading components and make them unit length again.
            vectors = vectors[:, : job.dimensions]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        job.emit(EmbedResult(vectors=vectors.astype(np.float32).tolist(), prompt_eval_count=tokens))
