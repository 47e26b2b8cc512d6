"""A loaded embedding model on its engine thread: /api/embed and /api/embeddings jobs."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from .encoder import EncoderModel, InputTooLong
from .jobs import EmbedJob, EmbedResult, EngineError, ErrorEvent


class LoadedEmbedder:
    kind = "embedding"

    def __init__(self, model_dir: Path):
        self.encoder = EncoderModel.load(model_dir)
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
