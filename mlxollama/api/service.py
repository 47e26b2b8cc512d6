"""The one generation path every API family uses: validated request in, engine events out.

Native, OpenAI and Anthropic handlers differ only in how they shape requests and responses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..engine.catalog import ModelSpec
from ..engine.jobs import DoneEvent, ErrorEvent, GenerationJob, PromptSpec, TextEvent
from ..options import Options, OptionTypeError, validate_options
from .errors import APIError
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


@dataclass
class Metrics:
    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int

    def ollama_fields(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "done_reason" and v}
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
        return Metrics(d.done_reason, time.perf_counter_ns() - self.started, self.load_ns,
                       d.prompt_eval_count, d.prompt_eval_duration, d.eval_count, d.eval_duration)

    def close(self) -> None:
        """Stops the engine work at its next step (a client gone mid-stream) and frees the slot."""
        if not self._closed:
            self._closed = True
            self.job.cancel()
            self.state.scheduler.release(self.runner)


async def acquire_runner(state: ServerState, spec: ModelSpec, keep_alive: int | None, num_ctx: int):
    """Load or reuse the model: (runner, load duration in ns). The caller must release the runner."""
    load_started = time.perf_counter_ns()
    runner = await state.scheduler.acquire(spec, keep_alive, num_ctx)
    return runner, time.perf_counter_ns() - load_started


async def start_generation(state: ServerState, spec: ModelSpec, prompt: PromptSpec, opts: Options, *,
                           keep_alive: int | None, started: int, logprobs: bool = False,
                           top_logprobs: int = 0) -> Generation:
    runner, load_ns = await acquire_runner(state, spec, keep_alive, opts.num_ctx)
    job = GenerationJob(prompt, opts, logprobs=logprobs, top_logprobs=top_logprobs)
    runner.submit(job)
    return Generation(state, runner, job, started, load_ns)
