"""One request's generated text turned into answer, reasoning and tool calls, as it streams.

Order follows Ollama: stop strings cut the raw text (the runner's job), then reasoning is split
off, then tool calls are taken out of what remains. Plain Python, no MLX.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .harmony import HarmonyParser
from .stops import StopMatcher
from .thinking import ThinkingParser
from .tools import ToolCallParser


@dataclass
class Piece:
    content: str = ""
    thinking: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)


class ReplyParser:
    def __init__(
        self,
        stops: StopMatcher,
        thinking: ThinkingParser | None = None,
        tools: ToolCallParser | None = None,
        harmony: HarmonyParser | None = None,
    ):
        self.stops = stops
        self.thinking = thinking
        self.tools = tools
        self.harmony = harmony  # gpt-oss: its channels carry reasoning and tool calls both

    @property
    def stopped(self) -> bool:
        return self.stops.stopped

    def _split(self, text: str, final: bool) -> Piece:
        if self.harmony is not None:
            return Piece(*self.harmony.feed(text, final=final))
        thinking = ""
        if self.thinking is not None:
            thinking, text = self.thinking.add(text)
            if final:
                t, c = self.thinking.flush()
                thinking, text = thinking + t, text + c
        calls: list[dict] = []
        if self.tools is not None:
            text, calls = self.tools.add(text)
            if final:
                c, more = self.tools.flush()
                text, calls = text + c, calls + more
        return Piece(text, thinking, calls)

    def feed(self, text: str) -> Piece:
        return self._split(self.stops.feed(text), final=False)

    def finish(self) -> Piece:
        """Generation ended: everything held back is decided now."""
        return self._split(self.stops.flush(), final=True)
