"""Server-sent events framing for the OpenAI and Anthropic layers (native endpoints use NDJSON)."""

from __future__ import annotations

import random
import string

from .errors import dumps

DONE = "data: [DONE]\n\n"


def data(obj) -> str:
    """OpenAI framing: data lines only."""
    return f"data: {dumps(obj)}\n\n"


def event(name: str, obj) -> str:
    """Anthropic framing: every data line is preceded by its event name."""
    return f"event: {name}\ndata: {dumps(obj)}\n\n"


async def open_stream(request):
    return await request.respond(content_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def call_id() -> str:
    """A tool-call id where the engine gave none: clients match tool results to calls by id,
    so it must never be empty (Ollama HEAD fills `call_` + 8 random [a-z0-9] the same way)."""
    return "call_" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
