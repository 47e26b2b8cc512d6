"""Stop strings that never leak: text that could still become a stop string is held back."""

from __future__ import annotations

from .holdback import held_back


class StopMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add generated text; return the part that is safe to emit now."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        hold = held_back(self.pending, self.stops)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        """Generation ended without a stop: the held-back text was not a stop after all."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
