"""A loaded mlx-lm model: continuous batching over mlx-lm's BatchGenerator with an LRU prompt cache.

Everything here runs on the model's engine thread.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm import stream_generate
from mlx_lm.generate import BatchGenerator, StopSequences
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer
from mlx_lm.utils import load as mlx_lm_load

from ..config import CPU_DENSE_AUTO, DEFAULT_NUM_PARALLEL, Config
from ..options import Options
from ..parsers.harmony import FINAL_HEADER, HarmonyParser, is_harmony_template
from ..parsers.reply import Piece, ReplyParser
from ..parsers.stops import StopMatcher
from ..parsers.thinking import ThinkingParser, infer_think_tags, prompt_opens_thinking
from ..parsers.tools import ToolCallParser, infer_tool_format
from .cpu_dense import dense_budget, dense_size, densify, fast_blas_loaded, has_quantized_layers, should_densify
from .diskcache import DiskCacheSettings
from .fim import fim_format_for, fim_stop_ids
from .jobs import DoneEvent, EngineError, ErrorEvent, GenerationJob, PromptSpec, TextEvent
from .kvcache import kv_bytes_per_element, make_cache_factory, parse_kv_cache_type
from .prompt import PromptCancelled, build_prompt_tokens
from .sampling import make_request_processors, make_request_sampler, token_bytes, token_logprobs
from .speculative import Drafter, SpeculativeStream, speculation_possible
from .structured import FormatError, GrammarProcessor, LazyGrammarTokenizer, ThinkGate

log = logging.getLogger("mlxollama.engine")


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


@dataclass
class EngineSettings:
    num_parallel: int = DEFAULT_NUM_PARALLEL
    prefill_step: int = 512
    prompt_cache_entries: int = 16
    prompt_cache_bytes: int = 1 << 30
    cpu_dense_bytes: int = 0  # see cpu_dense.py; 0 keeps quantized weights quantized
    cpu_dense_auto: bool = False  # the automatic budget also wants a fast BLAS loaded
    test_faults: bool = False  # MLXOLLAMA_TEST_FAULT: prompts may ask for injected failures
    kv_cache_type: str = "f16"  # OLLAMA_KV_CACHE_TYPE, or the model's PARAMETER kv_cache_type (kvcache.py)

    @classmethod
    def from_config(cls, config: Config, params: dict | None = None) -> "EngineSettings":
        """`params`: the model's stored parameters; a load-time kv_cache_type there overrides the server's."""
        model_kv = (params or {}).get("kv_cache_type")
        return cls(
            num_parallel=config.num_parallel,
            prefill_step=config.prefill_step,
            prompt_cache_entries=config.prompt_cache_entries,
            prompt_cache_bytes=config.prompt_cache_bytes,
            cpu_dense_bytes=dense_budget(config.cpu_dense, config.memory_budget),
            cpu_dense_auto=config.cpu_dense == CPU_DENSE_AUTO,
            test_faults=config.test_faults,
            kv_cache_type=(
                parse_kv_cache_type(config.kv_cache_type)
                if model_kv is None
                else parse_kv_cache_type(model_kv, "PARAMETER kv_cache_type")
            ),
        )


@dataclass
class _Active:
    job: GenerationJob
    detokenizer: object
    reply: ReplyParser
    prompt_len: int
    cached: int
    started: int
    context: list[int] | None
    # What re-admits the sequence after a context shift (see _shift)
    limit: int = 0
    num_keep: int = 0
    sampler: object = None
    processors: list = field(default_factory=list)
    stops: object = None
    first_token_at: int | None = None
    count: int = 0
    pending_logprobs: list = field(default_factory=list)
    # The prompt cache's key for the prompt where it is not its tokens (images: vision.py)
    key_prefix: list[int] | None = None


class LoadedLLM:
    kind = "llm"

    def __init__(
        self,
        model_dir: Path,
        settings: EngineSettings | None = None,
        disk_cache: DiskCacheSettings | None = None,
        draft_dir: Path | None = None,
    ):
        self.settings = settings or EngineSettings()
        self.model, self.tokenizer = self._load_model(model_dir)
        apply_backend_dtype(self.model)
        self.dense = self._densify_for_cpu()
        mx.eval(self.model.parameters())
        self.weights_bytes = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        self.on_gpu = not runs_on_cpu()
        self.model_key = str(model_dir)
        # q8_0/q4_0: every cache mlx-lm makes for this model (batch, prompt cache) comes from the
        # model's make_cache hook, so quantized caches are the only change generation sees.
        make_cache = make_cache_factory(self.model, self.settings.kv_cache_type)
        self.kv_cache_type = "f16" if make_cache is None else self.settings.kv_cache_type
        if make_cache is not None:
            self.model.make_cache = make_cache
        self.decoding = 0  # sequences in the last decode step (logged when it changes)
        # Models whose caches cannot be merged (and so cannot join a batch) run one at a time.
        self.batchable = all(hasattr(c, "merge") for c in make_prompt_cache(self.model))
        self.prompt_cache = LRUPromptCache(
            max_size=self.settings.prompt_cache_entries, max_bytes=self.settings.prompt_cache_bytes
        )
        # Its disk tier (diskcache.py): caches are only loaded where backend and KV type match.
        # Quantized caches are our own classes, which mlx-lm's load_prompt_cache cannot rebuild,
        # so the tier never writes them: no tier (and no writer thread, no lookups) for them.
        variant = f"{'cpu' if runs_on_cpu() else 'gpu'}-{self.kv_cache_type}"
        saves_to_disk = disk_cache is not None and self.batchable and self.kv_cache_type == "f16"
        self.disk_cache = disk_cache.open(variant) if saves_to_disk else None
        self.eos_ids = sorted(self.tokenizer.eos_token_ids)
        # Rows of the embedding (and width of the logits): the only token ids the model takes.
        self.vocab_size = int(getattr(getattr(self.model, "args", None), "vocab_size", None) or len(self.tokenizer))
        self.stop_sequences = StopSequences([(t,) for t in self.eos_ids])
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):  # named templates (e.g. "default" and "tool_use")
            template = "\n".join(str(t) for t in template.values())
        self.chat_template = template if isinstance(template, str) else None
        self.harmony = is_harmony_template(self.chat_template)
        self.think_tags = infer_think_tags(self.tokenizer, self.chat_template)
        self.tool_format = infer_tool_format(self.tokenizer, self.chat_template)
        self.fim_format = fim_format_for(self.tokenizer)
        self._grammar_tokenizer = LazyGrammarTokenizer()
        # Created on the engine thread, so generation and its synchronisation share one stream.
        self.stream = mx.default_stream(mx.default_device())
        self.batch: BatchGenerator | None = None
        self.active: dict[int, _Active] = {}
        # DRAFT: a lone stream decodes speculatively (speculative.py) until another one joins.
        self.drafter = None
        if draft_dir is not None:
            self.drafter = Drafter(
                draft_dir, apply_backend_dtype, self.settings.prompt_cache_entries, self.settings.prompt_cache_bytes
            )
        self.speculating = self.batchable and speculation_possible(self.model, self.drafter)
        self.spec_stream: SpeculativeStream | None = None

    def _load_model(self, model_dir: Path):
        """(model, tokenizer); engine/distributed.py loads a shard of the model instead."""
        return mlx_lm_load(str(model_dir))

    def _densify_for_cpu(self) -> bool:
        """On the CPU, float32 weights within the budget so prompts run through BLAS (cpu_dense.py)."""
        if not has_quantized_layers(self.model):
            return False
        size = dense_size(self.model)
        fast_blas = not self.settings.cpu_dense_auto or fast_blas_loaded()
        if not should_densify(size, self.settings.cpu_dense_bytes, runs_on_cpu(), fast_blas):
            return False
        layers = densify(self.model)
        log.info(
            "CPU backend: %d quantized layers dequantized to float32 (%.0f MiB) for BLAS prefill",
            layers,
            size / (1 << 20),
        )
        return True

    # -- bookkeeping ---------------------------------------------------------------------------

    def memory_bytes(self, num_ctx: int) -> int:
        """Weights plus a full KV cache at num_ctx: what /api/ps reports as size."""
        args = getattr(self.model, "args", None)
        try:
            layers = len(self.model.layers)
            heads = args.num_attention_heads
            kv_heads = getattr(args, "num_key_value_heads", None) or heads
            head_dim = getattr(args, "head_dim", None) or args.hidden_size // heads
            itemsize = 4 if runs_on_cpu() else 2
            kv = int(2 * layers * kv_heads * head_dim * kv_bytes_per_element(self.kv_cache_type, itemsize) * num_ctx)
        except (AttributeError, TypeError):
            kv = 0
        return self.weights_bytes + kv + self.draft_memory_bytes(num_ctx)

    def draft_memory_bytes(self, num_ctx: int) -> int:
        """The draft's share of memory_bytes (its weights and its own KV cache)."""
        return 0 if self.drafter is None else self.drafter.memory_bytes(num_ctx, 4 if runs_on_cpu() else 2)

    @property
    def busy(self) -> bool:
        return bool(self.active)

    def close(self) -> None:
        for a in self.active.values():
            a.job.emit(ErrorEvent("model unloaded", 500))
        self.active.clear()
        if self.batch is not None:
            self.batch.close()
            self.batch = None
        if self.disk_cache is not None:
            self.disk_cache.close()  # the writes still queued reach the disk (bounded wait)
        del self.prompt_cache
        del self.model
        del self.tokenizer

    def _generator(self) -> BatchGenerator:
        if self.batch is None:
            n = max(1, self.settings.num_parallel)
            self.batch = BatchGenerator(
                self.model,
                completion_batch_size=n,
                prefill_batch_size=min(n, 8),
                prefill_step_size=self.settings.prefill_step,
                stream=self.stream,
            )
        return self.batch

    # -- admission -----------------------------------------------------------------------------

    def admit(self, job: GenerationJob) -> None:
        """Tokenize and join the running batch (or run alone when the model cannot batch).

        A failure fails this request only, with a text free of internals; see _recover."""
        try:
            self._admit(job)
        except PromptCancelled:
            return  # the client went away while its prompt was being built
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - keep serving the other requests
            log.exception("admitting a request failed")
            self._recover()
            raise EngineError(_failure_text(e), 500) from e

    def _check_context(self, context: list[int] | None) -> None:
        """An id outside the embedding would index past it (a crash inside MLX)."""
        for t in context or ():
            if not 0 <= t < self.vocab_size:
                raise EngineError(
                    f"invalid context: token {t} is not in this model's vocabulary (0 to {self.vocab_size - 1})", 400
                )

    def _admit(self, job: GenerationJob) -> None:
        opts: Options = job.options
        started = time.perf_counter_ns()
        self._check_context(job.prompt.context)
        prompt = build_prompt_tokens(self.tokenizer, job.prompt, opts.num_ctx, cancelled=lambda: job.cancelled)
        limit = generation_limit(opts.num_predict, opts.num_ctx)
        # A full window either shifts (see _shift) or, with shift off, ends the answer ("length").
        max_tokens = min(limit, opts.num_ctx - len(prompt))
        context = list(prompt) if job.prompt.return_context else None
        if max_tokens <= 0:
            job.emit(DoneEvent("length", len(prompt), time.perf_counter_ns() - started, 0, 0, context))
            return
        reply, gate = self._reply_parser(job.prompt, opts, prompt)
        processors = make_request_processors(opts)
        if job.prompt.grammar:
            processors.append(self._grammar_processor(job.prompt.grammar, gate))
        if self.settings.test_faults and (fault := _requested_fault(job.prompt)):
            processors.append(fault)
        stop_ids = list(self.eos_ids)
        if job.prompt.fim is not None and self.fim_format is not None:
            stop_ids += fim_stop_ids(self.tokenizer, self.fim_format)
        sampler = make_request_sampler(opts, self.vocab_size)
        num_keep = len(prompt) if opts.num_keep < 0 else opts.num_keep  # Ollama: negative keeps the prompt
        if not self.batchable:
            self._generate_alone(
                job, prompt, limit, num_keep, started, context, reply, sampler, processors, set(stop_ids)
            )
            return

        stops = self.stop_sequences if len(stop_ids) == len(self.eos_ids) else StopSequences([(t,) for t in stop_ids])
        if self.spec_stream is not None and self.spec_stream.uid in self.active:
            self._spec_to_batch()  # someone joins: nobody waits behind a speculative stream
        spec = self._start_speculative(job, prompt, max_tokens, sampler, processors, set(stop_ids))
        uid, cached = spec or self._enqueue(prompt, max_tokens, sampler, processors, stops)
        self.active[uid] = _Active(
            job=job,
            detokenizer=self._detokenizer(),
            reply=reply,
            prompt_len=len(prompt),
            cached=cached,
            started=started,
            context=context,
            limit=limit,
            num_keep=num_keep,
            sampler=sampler,
            processors=processors,
            stops=stops,
        )

    def _enqueue(self, tokens: list[int], max_tokens: int, sampler, processors: list, stops) -> tuple[int, int]:
        """Put a sequence into the batch, starting from the longest cached prefix of `tokens`:
        (its batch uid, how many tokens came from the prompt cache)."""
        cache, rest = self.prompt_cache.fetch_nearest_cache(self.model_key, tokens)
        if cache is None:
            rest = tokens
        if self.disk_cache is not None and (found := self.disk_cache.fetch(tokens, len(tokens) - len(rest))):
            cache, rest = found[0], tokens[found[1] :]
        elif not rest:
            # A full hit still needs one input token to produce the next one.
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = tokens[-1:]
            else:
                cache, rest = None, tokens
        cached = len(tokens) - len(rest)
        (uid,) = self._generator().insert(
            [rest],
            max_tokens=[max_tokens],
            caches=[cache],
            all_tokens=[tokens[:cached]],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[stops],
        )
        return uid, cached

    def _start_speculative(
        self, job: GenerationJob, prompt: list[int], max_tokens: int, sampler, processors: list, stop_ids: set[int]
    ) -> tuple[int, int] | None:
        """Decode speculatively when this is the model's only sequence: (uid, cached tokens), or None
        for the batch. A grammar (format) goes to the batch: its processor advances with every token
        it sees and cannot take back the drafted ones the model rejects."""
        if not self.speculating or self.active or job.options.draft_num_predict <= 0:
            return None
        if any(isinstance(p, GrammarProcessor) for p in processors):
            return None
        cache, rest = self.prompt_cache.fetch_nearest_cache(self.model_key, prompt)
        if cache is None:
            cache, rest = make_prompt_cache(self.model), prompt
        elif not rest:
            trim_prompt_cache(cache, 1)  # the last prompt token is the first round's input
            rest = prompt[-1:]
        self.spec_stream = SpeculativeStream(
            self.model,
            self.drafter,
            prompt,
            cache,
            len(prompt) - len(rest),
            max_tokens=max_tokens,
            sampler=sampler,
            processors=processors,
            stop_ids=stop_ids,
            num_draft=job.options.draft_num_predict,
            prefill_step=self.settings.prefill_step,
        )
        return self.spec_stream.uid, len(prompt) - len(rest)

    def _spec_to_batch(self) -> None:
        """Hand the speculative stream to the continuous batch, with its KV cache."""
        stream, self.spec_stream = self.spec_stream, None
        a = self.active.pop(stream.uid)
        self.active[stream.handoff(self._generator(), sampler=a.sampler, processors=a.processors, stops=a.stops)] = a

    def _shift(self, uid: int, a: _Active, tokens: list[int]) -> None:
        """Ollama's context shift for a sequence whose window is full: keep the first num_keep
        tokens, drop the oldest half of the rest, and go on generating from what is left.

        The sequence has already left the batch (mlx-lm ends it at its max_tokens); it comes back
        as a new one whose cache is rebuilt from the kept tokens. Rebuilding costs a prefill of
        half a window, but is right for every cache type: keys carry their rotary positions, so
        cutting the middle out of a cache in place would leave them wrong, and rotating
        (sliding-window) caches have already overwritten what they would need."""
        num_ctx = a.job.options.num_ctx
        kept = shifted_window(tokens, a.num_keep, num_ctx)
        log.debug(
            "context window full (%d tokens): shifting, keep %d, discard %d",
            len(tokens),
            min(a.num_keep, num_ctx - 1),
            len(tokens) - len(kept),
        )
        resume_processors(a.processors)
        del self.active[uid]
        new_uid, _ = self._enqueue(kept, min(a.limit - a.count, num_ctx - len(kept)), a.sampler, a.processors, a.stops)
        self.active[new_uid] = a

    def _detokenizer(self):
        """mlx-lm's streaming detokenizers drop a leading space from the first token, which is
        right for a whole text but wrong for a continuation: a completion (or an indented FIM
        middle) must keep it, as Ollama's does. A non-empty start turns that trimming off."""
        d = self.tokenizer.detokenizer
        if isinstance(d, (BPEStreamingDetokenizer, SPMStreamingDetokenizer)):
            d.text, d.offset = "\x00", 1
        return d

    def _reply_parser(self, spec: PromptSpec, opts: Options, prompt: list[int]):
        """Stop strings, reasoning and tool-call splitting for one request; plus, when the
        request also has a grammar, the gate that holds it back while the model reasons."""
        thinking = gate = None
        if self.harmony and spec.fim is None and spec.raw_prompt is None:
            # gpt-oss reasons whatever `think` says; Ollama reports it as thinking all the same.
            if spec.grammar:
                open_ids = self.tokenizer.encode("<|channel|>", add_special_tokens=False)[:1]
                gate = ThinkGate(self._decode_token, FINAL_HEADER, open_ids, opened=False)
            return ReplyParser(StopMatcher(opts.stop), harmony=HarmonyParser()), gate
        tags = self.think_tags
        if tags is not None and spec.fim is None:
            tail = self.tokenizer.decode(prompt[-16:])
            opened = prompt_opens_thinking(tail, tags)
            # think:false still separates reasoning the template forces open anyway (as Ollama
            # does for gpt-oss); otherwise it leaves the output alone, as Ollama does.
            if spec.think not in (None, False) or opened:
                thinking = ThinkingParser(*tags, opened=opened)
                if spec.grammar:
                    open_ids = self.tokenizer.encode(tags[0], add_special_tokens=False)[:1]
                    gate = ThinkGate(self._decode_token, tags[1], open_ids, opened)
        fmt = self.tool_format
        if not fmt.start and spec.go_template:  # the model's Ollama TEMPLATE names the tag (Ollama's parseTag)
            fmt = infer_tool_format(None, spec.go_template)
        tools = ToolCallParser(fmt, spec.tools) if spec.tools else None
        return ReplyParser(StopMatcher(opts.stop), thinking, tools), gate

    def _decode_token(self, tid: int) -> str:
        return token_bytes(self.tokenizer, tid).decode("utf-8", errors="ignore")

    def _grammar_processor(self, grammar: str, gate) -> GrammarProcessor:
        try:
            gtok = self._grammar_tokenizer.get(self.tokenizer, self.vocab_size, self.eos_ids)
            return GrammarProcessor(gtok, grammar, gate)
        except FormatError as e:
            raise EngineError(f"structured outputs: {e}", 500) from e

    # -- stepping ------------------------------------------------------------------------------

    def step(self) -> None:
        """One decode step for the whole batch (plus a prompt chunk for newcomers)."""
        try:
            self._drop_cancelled()
            if not self.active:
                return
            if self.spec_stream is not None and self.spec_stream.uid in self.active:
                responses = self.spec_stream.step()
            else:
                self.spec_stream = None  # finished, shifted into the batch, cancelled or failed
                _, responses = self.batch.next()
            if responses and len(responses) != self.decoding:  # (a prefill-only step decodes none)
                self.decoding = len(responses)
                log.debug("decoding %d sequences together (kv cache %s)", self.decoding, self.kv_cache_type)
            self._deliver(responses)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: fail this batch, keep serving
            log.exception("batch step failed")
            for a in self.active.values():
                a.job.emit(ErrorEvent(_failure_text(e), 500))
            self.active.clear()
            self._recover()

    def _deliver(self, responses) -> None:
        now = time.perf_counter_ns()
        for r in responses:
            a = self.active.get(r.uid)
            if a is None:
                continue
            if a.first_token_at is None:
                a.first_token_at = now
            is_eos = r.finish_reason == "stop"
            if not is_eos:
                a.detokenizer.add_token(r.token)
                a.count += 1
                if a.context is not None:
                    a.context.append(int(r.token))
                if a.job.want_logprobs:
                    a.pending_logprobs.append(token_logprobs(self.tokenizer, r.logprobs, r.token, a.job.top_logprobs))
            # "length" before the request's own limit: the window is full, and the sequence
            # shifts and goes on (it has left the batch either way).
            shifting = r.finish_reason == "length" and a.count < a.limit and a.job.prompt.shift
            ended = r.finish_reason is not None and not shifting
            if ended:
                a.detokenizer.finalize()
            piece = a.reply.feed(a.detokenizer.last_segment)
            if piece or (a.pending_logprobs and not a.reply.stopped):
                a.job.emit(_event(piece, a.pending_logprobs))
                a.pending_logprobs = []
            if ended or (shifting and a.reply.stopped):
                self._remember(_cache_key(a, list(r.all_tokens)), r.prompt_cache)
                self._finish(r.uid, r.finish_reason if ended else "stop")
            elif shifting:
                self._shift(r.uid, a, list(r.all_tokens))
            elif a.reply.stopped:
                if r.uid < 0:  # the speculative stream
                    saved = self.spec_stream.take_out()
                else:
                    saved = self.batch.remove([r.uid], return_prompt_caches=True)
                for cache, tokens in saved.values():
                    self._remember(_cache_key(a, list(tokens)), cache)
                self._finish(r.uid, "stop")

    def _remember(self, tokens: list[int], cache: list) -> None:
        """Keep a finished sequence's cache in the LRU and queue it for the disk tier, whose
        writer thread takes the write off this request's path."""
        self.prompt_cache.insert_cache(self.model_key, tokens, cache)
        if self.disk_cache is not None:
            self.disk_cache.save(tokens, cache)

    def _recover(self) -> None:
        """Leave nothing of a failed step behind for the next request.

        The batch generator's caches and sequences may be half-updated, so it is dropped with
        everything in it (its requests have failed; the next request starts a fresh one; the
        prompt cache only ever hands out copies, so it holds nothing of the failed step). An
        exception raised while mx.compile traces a function that captures mx.random.state
        (mlx-lm's samplers do) leaves a placeholder in the global random state, after which
        every random draw fails; a fresh seed replaces it."""
        if self.batch is not None:
            try:
                self.batch.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                log.debug("closing a failed batch generator", exc_info=True)
            self.batch = None
        mx.random.seed(int.from_bytes(os.urandom(8), "little"))
        mx.clear_cache()

    def _drop_cancelled(self) -> None:
        gone = [uid for uid, a in self.active.items() if a.job.cancelled]
        if gone:
            if any(uid >= 0 for uid in gone):  # a speculative stream (uid < 0) is not in the batch
                self.batch.remove([uid for uid in gone if uid >= 0])
            for uid in gone:
                del self.active[uid]

    def _finish(self, uid: int, reason: str) -> None:
        a = self.active.pop(uid)
        tail = a.reply.finish()
        if tail:
            a.job.emit(_event(tail, None))
        ended = time.perf_counter_ns()
        first = a.first_token_at or ended
        a.job.emit(
            DoneEvent(
                done_reason=reason,
                prompt_eval_count=a.prompt_len,
                prompt_eval_cached_count=a.cached,
                prompt_eval_duration=first - a.started,
                eval_count=a.count,
                eval_duration=ended - first,
                context=a.context,
            )
        )

    # -- embeddings from a chat model -----------------------------------------------------------

    def embed(self, job) -> None:
        """Ollama serves /api/embed with any model: a completion model gives its mean-pooled
        final hidden state (no embedding capability needed)."""
        from .embedder import decoder_embeddings, fit_vectors
        from .encoder import InputTooLong
        from .jobs import EmbedResult

        inner = getattr(self.model, "model", None)
        if inner is None:
            raise EngineError("this model cannot produce embeddings", 400)
        try:
            out, total = decoder_embeddings(
                inner, self.tokenizer, job.texts, limit=job.num_ctx or 4096, truncate=job.truncate
            )
        except InputTooLong as e:
            raise EngineError(str(e), 400) from e
        out = fit_vectors(out, dimensions=job.dimensions, normalize=job.normalize)
        job.emit(EmbedResult(vectors=out.tolist(), prompt_eval_count=total))

    # -- models that cannot batch --------------------------------------------------------------

    def _generate_alone(
        self,
        job: GenerationJob,
        prompt: list[int],
        limit: int,
        num_keep: int,
        started: int,
        context: list[int] | None,
        reply: ReplyParser,
        sampler,
        processors: list,
        stop_ids: set[int],
    ) -> None:
        opts = job.options
        detokenizer = self._detokenizer()
        first_token_at = None
        count = 0
        reason = "length"
        window = list(prompt)
        while True:
            max_tokens = min(limit - count, opts.num_ctx - len(window))
            gen = stream_generate(
                self.model,
                self.tokenizer,
                mx.array(window),
                max_tokens=max_tokens,
                sampler=sampler,
                logits_processors=processors,
            )
            shifting = False
            try:
                for resp in gen:
                    first_token_at = first_token_at or time.perf_counter_ns()
                    if job.cancelled:
                        return
                    logprobs = None
                    end = resp.token in stop_ids
                    if not end:
                        detokenizer.add_token(resp.token)
                        count += 1
                        window.append(int(resp.token))
                        if context is not None:
                            context.append(int(resp.token))
                        if job.want_logprobs:
                            logprobs = [token_logprobs(self.tokenizer, resp.logprobs, resp.token, job.top_logprobs)]
                    # the window is full before the request's own limit: shift and go on (see _shift)
                    shifting = resp.finish_reason == "length" and count < limit and job.prompt.shift
                    if end or (resp.finish_reason and not shifting):
                        detokenizer.finalize()
                    piece = reply.feed(detokenizer.last_segment)
                    if piece or logprobs:
                        job.emit(_event(piece, logprobs))
                    if end or reply.stopped:
                        reason, shifting = "stop", False
                        break
                    if resp.finish_reason:
                        reason = resp.finish_reason
            finally:
                gen.close()
            if not shifting:
                break
            window = shifted_window(window, num_keep, opts.num_ctx)
            resume_processors(processors)
        tail = reply.finish()
        if tail:
            job.emit(_event(tail, None))
        ended = time.perf_counter_ns()
        first_token_at = first_token_at or ended
        job.emit(DoneEvent(reason, len(prompt), first_token_at - started, count, ended - first_token_at, context))


# --- context shift (Ollama's runner: InputCache.ShiftDiscard, Server.NewSequence, llm/server.go) ---

# Ollama bounds an open-ended generation (num_predict < 0), and any larger num_predict, at this
# many windows: with context shift a model that never stops would otherwise run for ever.
OPEN_ENDED_WINDOWS = 10


def generation_limit(num_predict: int, num_ctx: int) -> int:
    """Tokens a request may generate in all, across context shifts."""
    bound = OPEN_ENDED_WINDOWS * num_ctx
    return bound if num_predict < 0 or num_predict > bound else num_predict


def shifted_window(tokens: list[int], num_keep: int, num_ctx: int) -> list[int]:
    """What a full window keeps when it shifts: the first num_keep tokens (at most num_ctx - 1, so
    one can always go) and the newest ones, after dropping enough of the oldest for half of what
    num_keep leaves free to be free again."""
    keep = max(0, min(num_keep, num_ctx - 1, len(tokens)))
    target_free = max((num_ctx - keep) // 2, 1)
    discard = min(max(target_free - (num_ctx - len(tokens)), 0), len(tokens) - keep)
    return tokens[:keep] + tokens[keep + discard :]


def resume_processors(processors: list) -> None:
    """Before a shifted sequence is prefilled again: a grammar processor has already consumed the
    last kept token (it takes each token when asked for the next one), so its next call must not
    take it a second time."""
    for p in processors:
        if isinstance(p, GrammarProcessor):
            p.calls = 0


def _failure_text(e: BaseException) -> str:
    """What a client is told when generation fails: no Python or MLX internals (they are logged)."""
    text = str(e).lower()
    if isinstance(e, MemoryError) or any(w in text for w in ("memory", "malloc", "allocate")):
        return "generation failed: out of memory"
    return "generation failed: the model runner hit an internal error; check the server log for details"


# --- fault injection (MLXOLLAMA_TEST_FAULT) ------------------------------------------------------
# With the switch on, a prompt holding "mlxollama-test-fault:<kind>" gets a logits processor that
# fails inside the batch step, as real failures do: "oom" runs out of memory, "error" raises,
# "trace" raises while mx.compile traces a function that captures the global random state (how
# an out-of-range sampler value used to poison every later request).

_FAULT_MARK = re.compile(r"mlxollama-test-fault:(oom|error|trace)")


def _requested_fault(spec: PromptSpec):
    texts = [spec.raw_prompt or ""] + [str(m.get("content") or "") for m in spec.messages or ()]
    found = next((m for m in map(_FAULT_MARK.search, texts) if m), None)
    return None if found is None else _FAULTS[found.group(1)]


def _fault_oom(tokens, logits):
    raise MemoryError("test fault: could not allocate")


def _fault_error(tokens, logits):
    raise RuntimeError("test fault: a logits processor failed")


def _fault_trace(tokens, logits):
    def fail(x):
        raise ValueError("test fault: raised while tracing")

    mx.compile(fail, inputs=mx.random.state, outputs=mx.random.state)(logits)
    return logits


_FAULTS = {"oom": _fault_oom, "error": _fault_error, "trace": _fault_trace}


def _cache_key(a: _Active, tokens: list[int]) -> list[int]:
    """What a finished sequence is remembered under: its tokens, with the prompt's own key in front
    where the prompt has one (an image's placeholder tokens say nothing of its pixels)."""
    return tokens if a.key_prefix is None else a.key_prefix + tokens[len(a.key_prefix) :]


def _event(piece: Piece, logprobs: list | None) -> TextEvent:
    return TextEvent(piece.content, logprobs or None, piece.thinking, piece.tool_calls or None)
