"""A loaded mlx-lm model and the generation routine its engine thread runs."""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_logits_processors, make_sampler
from mlx_lm.utils import load as mlx_lm_load

from ..options import Options
from .jobs import DoneEvent, GenerationJob, TextEvent
from .prompt import build_prompt_tokens
from .stops import StopMatcher


def runs_on_cpu() -> bool:
    return mx.default_device() == mx.cpu


def apply_backend_dtype(model: nn.Module) -> None:
    """Pick parameter dtypes for the backend at load time, not at conversion time.

    The CPU backend computes float16 slowly and its quantized matmul is much faster with
    float32 scales, so everything floating becomes float32 there. On a GPU memory bandwidth
    rules, so float32 scales (kept in the store only where float16 would round) become
    float16 and everything else keeps its stored dtype.
    """
    cpu = runs_on_cpu()

    def cast(path: str, value: mx.array):
        if not mx.issubdtype(value.dtype, mx.floating):
            return value
        if cpu:
            return value.astype(mx.float32)
        if value.dtype == mx.float32 and path.rsplit(".", 1)[-1] in ("scales", "biases"):
            return value.astype(mx.float16)
        return value

    updated = [(k, cast(k, v)) for k, v in tree_flatten(model.parameters())]
    model.load_weights(updated, strict=False)


class LoadedLLM:
    kind = "llm"

    def __init__(self, model_dir: Path):
        self.model, self.tokenizer = mlx_lm_load(str(model_dir))
        apply_backend_dtype(self.model)
        mx.eval(self.model.parameters())
        self.weights_bytes = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        self.on_gpu = not runs_on_cpu()

    def memory_bytes(self, num_ctx: int) -> int:
        """Weights plus a full KV cache at num_ctx: what /api/ps reports as size."""
        args = getattr(self.model, "args", None)
        try:
            layers = len(self.model.layers)
            heads = args.num_attention_heads
            kv_heads = getattr(args, "num_key_value_heads", None) or heads
            head_dim = getattr(args, "head_dim", None) or args.hidden_size // heads
            itemsize = 4 if runs_on_cpu() else 2
            kv = 2 * layers * kv_heads * head_dim * itemsize * num_ctx
        except (AttributeError, TypeError):
            kv = 0
        return self.weights_bytes + kv

    def close(self) -> None:
        del self.model
        del self.tokenizer

    def generate(self, job: GenerationJob) -> None:
        opts: Options = job.options
        started = time.perf_counter_ns()
        prompt = build_prompt_tokens(self.tokenizer, job.prompt, opts.num_ctx)
        room = opts.num_ctx - len(prompt)
        # No context shifting: generation stops when the window is full ("length").
        max_tokens = room if opts.num_predict < 0 else min(opts.num_predict, room)
        context = list(prompt) if job.prompt.return_context else None
        if max_tokens <= 0 or opts.num_predict == 0:
            job.emit(DoneEvent("length", len(prompt), time.perf_counter_ns() - started, 0, 0, context))
            return

        if opts.seed >= 0:
            mx.random.seed(opts.seed)
        sampler = make_sampler(
            temp=opts.temperature,
            top_p=opts.top_p if 0 < opts.top_p < 1 else 0.0,
            min_p=opts.min_p,
            top_k=max(opts.top_k, 0),
        )
        window = opts.num_ctx if opts.repeat_last_n < 0 else opts.repeat_last_n
        processors = make_logits_processors(
            repetition_penalty=opts.repeat_penalty if window and opts.repeat_penalty != 1.0 else None,
            repetition_context_size=window,
            presence_penalty=opts.presence_penalty or None,
            presence_context_size=window or 64,
            frequency_penalty=opts.frequency_penalty or None,
            frequency_context_size=window or 64,
        )
        stops = StopMatcher(opts.stop)
        first_token_at = None
        count = 0
        reason = "stop"
        gen = stream_generate(
            self.model,
            self.tokenizer,
            mx.array(prompt),
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=processors,
        )
        try:
            for resp in gen:
                if first_token_at is None:
                    first_token_at = time.perf_counter_ns()
                if job.cancelled:
                    reason = "cancelled"
                    break
                if resp.token not in self.tokenizer.eos_token_ids:
                    count += 1
                    if context is not None:
                        context.append(int(resp.token))
                text = stops.feed(resp.text)
                if text:
                    job.emit(TextEvent(text))
                if stops.stopped:
                    reason = "stop"
                    break
                if resp.finish_reason:
                    reason = resp.finish_reason
        finally:
            gen.close()
        if reason == "cancelled":
            return
        tail = stops.flush()
        if tail:
            job.emit(TextEvent(tail))
        ended = time.perf_counter_ns()
        first_token_at = first_token_at or ended
        job.emit(
            DoneEvent(
                done_reason=reason,
                prompt_eval_count=len(prompt),
                prompt_eval_duration=first_token_at - started,
                eval_count=count,
                eval_duration=ended - first_token_at,
                context=context,
            )
        )
