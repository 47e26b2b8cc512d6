"""Pipeline parallelism for mlx-lm's llama family, which (unlike deepseek, qwen3-moe and others)
has no `pipeline()`: the same split as mlx-lm's PipelineMixin, applied to a loaded model.

Rank r keeps the layers after those of ranks r+1 ... n-1 (rank 0 the last ones); a token's
hidden state goes from the highest rank down, and an all_gather hands the final one to every
rank, so each computes the same logits (and rank 0's sampler picks for all; distributed.py).
SmolLM2 needs this: its 9 heads do not divide over 2 ranks, its 30 layers do.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache, RotatingKVCache
from mlx_lm.models.llama import LlamaModel, Model
from mlx_lm.models.pipeline import PipelineMixin


class PipelinedLlamaModel(PipelineMixin, LlamaModel):
    def __call__(self, inputs: mx.array, cache=None, input_embeddings=None):
        h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        layers = self.pipeline_layers
        if cache is None:
            cache = [None] * len(layers)
        full = next((i for i, layer in enumerate(layers) if not layer.use_sliding), None)
        sliding = next((i for i, layer in enumerate(layers) if layer.use_sliding), None)
        fa_mask = create_attention_mask(h, cache[full]) if full is not None else None
        swa_mask = (
            create_attention_mask(h, cache[sliding], window_size=self.sliding_window) if sliding is not None else None
        )
        rank, size = self.pipeline_rank, self.pipeline_size
        if rank < size - 1:  # the layers before ours ran on the next rank up
            h = mx.distributed.recv_like(h, rank + 1, group=self.pipeline_group)
        for layer, c in zip(layers, cache):
            h = layer(h, swa_mask if layer.use_sliding else fa_mask, cache=c)
        if rank != 0:
            h = mx.distributed.send(h, rank - 1, group=self.pipeline_group)
            if cache[-1] is not None:  # keep the send in the graph that evaluating the cache runs
                cache[-1].keys = mx.depends(cache[-1].keys, h)
        if size > 1:
            h = mx.distributed.all_gather(h, group=self.pipeline_group)[: h.shape[0]]
        return self.norm(h)


class PipelinedLlama(Model):
    @property
    def layers(self):
        return self.model.pipeline_layers

    def make_cache(self):
        return [
            RotatingKVCache(max_size=self.model.sliding_window) if layer.use_sliding else KVCache()
            for layer in self.layers
        ]


def pipeline_llama(model: Model, group) -> None:
    """Turn a (lazily) loaded llama-family model into this rank's pipeline stage, in place."""
    inner = model.model
    inner.__class__ = PipelinedLlamaModel
    inner.pipeline_rank, inner.pipeline_size, inner.start_idx, inner.end_idx = 0, 1, 0, None
    inner.pipeline(group)
    # PipelineMixin keeps no group; a Module attribute would be taken for a child, so a plain one.
    object.__setattr__(inner, "pipeline_group", group)
    model.__class__ = PipelinedLlama
