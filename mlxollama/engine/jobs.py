"""Work items for a model's engine thread, and the events they produce.

Plain Python only: the HTTP side builds jobs and reads events; only the engine thread touches MLX.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import StatusError
from ..options import Options


@dataclass
class TextEvent:
    """A piece of the answer. `thinking` carries reasoning text; `tool_calls` whole parsed calls
    ({"function": {"name", "arguments": dict, "index"}}, optional "id")."""

    text: str
    logprobs: list[dict] | None = None
    thinking: str = ""
    tool_calls: list[dict] | None = None


@dataclass
class DoneEvent:
    done_reason: str
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    context: list[int] | None = None
    # Of prompt_eval_count, the tokens that came from the prompt cache (Ollama's prompt_eval_cached_count)
    prompt_eval_cached_count: int = 0


@dataclass
class ErrorEvent:
    message: str
    status: int = 500


class EngineError(StatusError):
    """A failure on a model's thread: loading, prompt building, generation."""


class Job:
    """Something run on a model's thread; results travel back through an asyncio queue."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self.created = time.perf_counter_ns()

    def emit(self, event: Any) -> None:
        """Called from the engine thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            self.cancel()  # the event loop is gone: the server is shutting down

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class PromptSpec:
    """What to feed the model: either chat messages rendered by the template, or raw text."""

    messages: list[dict] | None = None
    raw_prompt: str | None = None
    tools: list[dict] | None = None
    context: list[int] | None = None  # generate's deprecated token round-trip
    truncate: bool = True
    shift: bool = True  # a full window drops the oldest half (after num_keep) instead of stopping
    return_context: bool = False
    think: bool | str | None = None  # after Ollama's defaulting: None only for non-thinking models
    fim: tuple[str, str] | None = None  # (prefix, suffix): fill-in-the-middle from tokenizer tokens
    grammar: str | None = None  # llguidance grammar from `format`; constrains the answer
    # The model's own Ollama TEMPLATE layer: rendered instead of the Jinja chat template, as
    # Ollama prefers it (OLLAMA_GO_TEMPLATE defaults to true).
    go_template: str | None = None
    # Images of a raw or templated /api/generate prompt (chat messages carry theirs as "images")
    images: list[bytes] | None = None


class GenerationJob(Job):
    def __init__(self, prompt: PromptSpec, options: Options, *, logprobs: bool = False, top_logprobs: int = 0) -> None:
        super().__init__()
        self.prompt = prompt
        self.options = options
        self.want_logprobs = logprobs
        self.top_logprobs = top_logprobs if logprobs else 0


class EmbedJob(Job):
    def __init__(
        self, texts: list[str], *, truncate: bool, normalize: bool, dimensions: int = 0, num_ctx: int = 0
    ) -> None:
        super().__init__()
        self.texts = texts
        self.num_ctx = num_ctx
        self.truncate = truncate
        self.normalize = normalize
        self.dimensions = dimensions
        self.result: Any = None


@dataclass
class EmbedResult:
    vectors: list[list[float]] = field(default_factory=list)
    prompt_eval_count: int = 0
