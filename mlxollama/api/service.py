"""The one generation path every API family uses: validated request in, engine events out.

Native, OpenAI and Anthropic handlers differ only in how they shape requests and responses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..engine.catalog import ModelSpec
from ..engine.jobs import DoneEvent, ErrorEvent, GenerationJob, PromptSpec, TextEvent
from ..engine.structured import FormatError, format_grammar
from ..options import Options, OptionTypeError, validate_options
from .errors import APIError
from .protocol import ChatRequest, check_format
from .state import ServerState


def check_capabilities(spec: ModelSpec, requested: str, need: list[str], think) -> None:
    """Ollama's capability errors: generate/chat/thinking by requested name, others by full name."""
    if "completion" in need and "completion" not in spec.capabilities:
        raise APIError(f'"{requested}" does not support generate', 400)
    missing = [c for c in need if c != "completion" and c not in spec.capabilities]
    if missing:
        raise APIError(f"{spec.name.display_full()} does not support " + "\n".join(missing), 400)
    if think not in (None, False) and "thinking" not in spec.capabilities:
        raise APIError(f'"{requested}" does not support thinking', 400)


def resolve_options(state: ServerState, spec: ModelSpec, raw: dict | None, overrides: dict | None = None) -> Options:
    """Defaults < model params < request options (< API-specific overrides such as /v1's)."""
    try:
        request_opts = validate_options(raw)
        opts = Options.merged(spec.params, request_opts, overrides, num_ctx=state.config.context_length)
    except OptionTypeError as e:
        raise APIError(str(e), 500) from e
    opts.num_ctx = max(opts.num_ctx, 4)
    if spec.context_length:
        opts.num_ctx = min(opts.num_ctx, spec.context_length)
    return opts


def structured_grammar(fmt) -> str | None:
    """`format` checked with Ollama's 500 texts and compiled for constrained decoding."""
    check_format(fmt)
    try:
        return format_grammar(fmt)
    except FormatError as e:
        raise APIError(
            f'invalid format: {json.dumps(json.dumps(fmt))}; expected "json" or a valid JSON Schema object', 500
        ) from e


def effective_think(spec: ModelSpec, think):
    """Ollama >= 0.12.4: a thinking model thinks unless told not to."""
    if think is None and "thinking" in spec.capabilities:
        return True
    return think


def prepare_chat(state: ServerState, spec: ModelSpec, req: ChatRequest, overrides: dict | None = None):
    """Checks and prompt assembly shared by /api/chat and the OpenAI/Anthropic layers.
    Returns (PromptSpec, Options); raises APIError with Ollama's texts. The PromptSpec carries
    the effective `think` and the compiled `format` grammar; tool calls are parsed whenever
    `tools` were given."""
    if "completion" not in spec.capabilities:
        raise APIError(f'"{req.model}" does not support chat', 400)
    need = (
        ["completion"] + (["tools"] if req.tools else []) + (["vision"] if any(m.images for m in req.messages) else [])
    )
    check_capabilities(spec, req.model, need, req.think)
    grammar = structured_grammar(req.format)
    opts = resolve_options(state, spec, req.options, overrides)
    messages = list(spec.messages) + [m.for_template() for m in req.messages]
    if spec.system and req.messages[0].role != "system":
        messages.insert(0, {"role": "system", "content": spec.system})
    return PromptSpec(
        messages=messages,
        tools=req.tools or None,
        truncate=req.truncate,
        shift=req.shift,
        think=effective_think(spec, req.think),
        grammar=grammar,
        go_template=own_template(spec),
    ), opts


def own_template(spec: ModelSpec) -> str | None:
    """The model's TEMPLATE layer, when it has one of its own (not one we derived for FIM)."""
    return None if spec.go_template_derived else spec.go_template


@dataclass
class Metrics:
    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    # Ollama counts cached tokens in prompt_eval_count and names them here too (omitted when none)
    prompt_eval_cached_count: int = 0

    def ollama_fields(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("done_reason", "prompt_eval_cached_count") and v}
        if self.prompt_eval_cached_count and "prompt_eval_count" in out:
            # Ollama's order: right after prompt_eval_count
            at = list(out).index("prompt_eval_count") + 1
            items = list(out.items())
            out = dict(items[:at] + [("prompt_eval_cached_count", self.prompt_eval_cached_count)] + items[at:])
        return {"done_reason": self.done_reason, **out}


@dataclass
class Collected:
    """A whole answer gathered for a non-streamed reply; `end` is the DoneEvent or ErrorEvent."""

    text: str
    thinking: str
    tool_calls: list
    logprobs: list
    end: DoneEvent | ErrorEvent


class Generation:
    """A running generation: iterate its events, always close() it."""

    def __init__(self, state: ServerState, runner, job: GenerationJob, started: int, load_ns: int):
        self.state = state
        self.runner = runner
        self.job = job
        self.started = started
        self.load_ns = load_ns
        self.done: DoneEvent | None = None
        self._closed = False

    async def next_event(self) -> TextEvent | DoneEvent | ErrorEvent:
        event = await self.job.events.get()
        if isinstance(event, DoneEvent):
            self.done = event
        return event

    async def collect(self, event) -> Collected:
        """Gather the rest of the answer, starting from an already received event."""
        text, thinking, calls, logprobs = [], [], [], []
        while isinstance(event, TextEvent):
            text.append(event.text)
            thinking.append(event.thinking)
            calls.extend(event.tool_calls or [])
            logprobs.extend(event.logprobs or [])
            event = await self.next_event()
        return Collected("".join(text), "".join(thinking), calls, logprobs, event)

    def metrics(self) -> Metrics:
        d = self.done
        return Metrics(
            d.done_reason,
            time.perf_counter_ns() - self.started,
            self.load_ns,
            d.prompt_eval_count,
            d.prompt_eval_duration,
            d.eval_count,
            d.eval_duration,
            d.prompt_eval_cached_count,
        )

    def close(self) -> None:
        """Stops the engine work at its next step (a client gone mid-stream) and frees the slot."""
        if not self._closed:
            self._closed = True
            self.job.cancel()
            self.state.scheduler.release(self.runner)


async def acquire_runner(state: ServerState, spec: ModelSpec, keep_alive: int | None, num_ctx: int):
    """Load or reuse the model: (runner, load duration in ns). The caller must release the runner."""
    if spec.context_length:  # a load-only request brings the server default: cap it as generation does
        num_ctx = min(num_ctx, spec.context_length)
    load_started = time.perf_counter_ns()
    runner = await state.scheduler.acquire(spec, keep_alive, num_ctx)
    return runner, time.perf_counter_ns() - load_started


async def start_generation(
    state: ServerState,
    spec: ModelSpec,
    prompt: PromptSpec,
    opts: Options,
    *,
    keep_alive: int | None,
    started: int,
    logprobs: bool = False,
    top_logprobs: int = 0,
) -> Generation:
    runner, load_ns = await acquire_runner(state, spec, keep_alive, opts.num_ctx)
    job = GenerationJob(prompt, opts, logprobs=logprobs, top_logprobs=top_logprobs)
    runner.submit(job)
    return Generation(state, runner, job, started, load_ns)
