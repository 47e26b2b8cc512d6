"""Holding back text that may be the start of a tag split across streamed chunks."""

from __future__ import annotations

from collections.abc import Iterable


def held_back(text: str, tags: str | Iterable[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of one of tags: that much
    must wait for the next chunk, which decides whether a tag (or stop string) starts there."""
    best = 0
    for tag in (tags,) if isinstance(tags, str) else tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best
