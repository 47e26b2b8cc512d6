"""OpenAI-compatible endpoints (reference §6): chat completions, completions, embeddings, models.

A translation layer, as in Ollama: each request becomes the native request object and runs through
the same preparation and engine as /api/chat, /api/generate and /api/embed; native results are
reshaped into OpenAI's JSON and SSE chunks. Errors keep the native status and text inside OpenAI's
envelope. The conversions themselves are plain functions in openai_convert.py; here are the routes
and the writers.
"""

from __future__ import annotations

import functools
import random
import time
from urllib.parse import unquote

from sanic import Blueprint

from ..engine.jobs import DoneEvent, ErrorEvent, TextEvent
from ..errors import StatusError
from . import sse
from .embed import NOT_FOUND as EMBED_NOT_FOUND
from .embed import embed_texts
from .errors import APIError, json_body
from .generate import generate_reply
from .openai_convert import (
    FINGERPRINT,
    ToolCallNumbering,
    chat_request,
    completion_request,
    embed_request,
    embedding_list,
    error_body,
    legacy_logprobs,
    openai_logprobs,
    usage,
)
from .protocol import parse_body
from .service import Generation, prepare_chat, start_generation
from .state import read_metadata, state_of

bp = Blueprint("openai")


# --- errors ----------------------------------------------------------------------------------


def openai_error(status: int, message: str):
    return json_body(error_body(status, message), status)


def openai_errors(handler):
    """Status errors raised before any byte is written leave in OpenAI's envelope."""

    @functools.wraps(handler)
    async def wrapped(request, *args, **kwargs):
        try:
            return await handler(request, *args, **kwargs)
        except StatusError as e:
            return openai_error(e.status, e.message)

    return wrapped


class ChatWriter:
    """Engine events → chat.completion or a chat.completion.chunk stream (Ollama ≥ 0.32.6 layout:
    role only in the first delta, one `created` for the stream, a separate empty-delta finish chunk)."""

    def __init__(self, model: str, include_usage: bool):
        self.id = f"chatcmpl-{random.randrange(999)}"
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())
        self.calls = ToolCallNumbering()

    def _chunk(self, choices: list, **extra) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            **extra,
        }

    def _delta_chunks(self, ev: TextEvent, first: bool) -> list[dict]:
        calls = self.calls.convert(ev.tool_calls) if ev.tool_calls else []
        role = {"role": "assistant"} if first else {}
        logprobs = {"logprobs": {"content": openai_logprobs(ev.logprobs)}} if ev.logprobs else {}
        if ev.thinking and (ev.text or calls):
            # OpenAI deltas carry reasoning or content, never both: split into two chunks.
            return [
                self._chunk(
                    [{"index": 0, "delta": {**role, "reasoning": ev.thinking}, "finish_reason": None, **logprobs}]
                ),
                self._chunk(
                    [
                        {
                            "index": 0,
                            "delta": {"content": ev.text, **({"tool_calls": calls} if calls else {})},
                            "finish_reason": None,
                        }
                    ]
                ),
            ]
        delta = {**role, "content": ev.text}
        if ev.thinking:
            delta["reasoning"] = ev.thinking
        if calls:
            delta["tool_calls"] = calls
        return [self._chunk([{"index": 0, "delta": delta, "finish_reason": None, **logprobs}])]

    async def stream(self, response, gen: Generation, event) -> None:
        first, tool_sent = True, False
        while True:
            if isinstance(event, TextEvent):
                if event.text or event.thinking or event.tool_calls or event.logprobs:
                    for chunk in self._delta_chunks(event, first):
                        await response.send(sse.data(chunk))
                    first = False
                    tool_sent = tool_sent or bool(event.tool_calls)
            elif isinstance(event, DoneEvent):
                if first:  # an empty completion still opens with the role
                    await response.send(
                        sse.data(
                            self._chunk(
                                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                            )
                        )
                    )
                reason = event.done_reason or "stop"
                if reason == "stop" and tool_sent:
                    reason = "tool_calls"
                await response.send(sse.data(self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])))
                if self.include_usage:
                    m = gen.metrics()
                    await response.send(sse.data(self._chunk([], usage=usage(m.prompt_eval_count, m.eval_count))))
                await response.send(sse.DONE)
                break
            else:
                # Ollama feeds a mid-stream error through its chunk converter and loses the text;
                # an error object is what the OpenAI SDKs raise on.
                await response.send(sse.data(error_body(event.status, event.message)))
                break
            event = await gen.next_event()
        await response.eof()

    async def collect(self, gen: Generation, event):
        whole = await gen.collect(event)
        event, calls, logprobs = whole.end, whole.tool_calls, whole.logprobs
        if isinstance(event, ErrorEvent):
            return openai_error(event.status, event.message)
        message: dict = {"role": "assistant", "content": whole.text}
        if whole.thinking:
            message["reasoning"] = whole.thinking
        if calls:
            message["tool_calls"] = self.calls.convert(calls)
        reason = event.done_reason or None
        if reason == "stop" and calls:
            reason = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": reason}
        if logprobs:
            choice["logprobs"] = {"content": openai_logprobs(logprobs)}
        m = gen.metrics()
        return json_body(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [choice],
                "usage": usage(m.prompt_eval_count, m.eval_count),
            }
        )


# --- /v1/chat/completions --------------------------------------------------------------------


@bp.post("/v1/chat/completions")
@openai_errors
async def chat_completions(request):
    started = time.perf_counter_ns()
    state = state_of(request)
    req, overrides, include_usage = chat_request(parse_body(request.body))
    if not req.model:
        raise APIError("model is required", 400)
    spec = await state.lookup(req.model, not_found="model '{name}' not found")
    prompt, opts = prepare_chat(state, spec, req, overrides)
    gen = await start_generation(
        state,
        spec,
        prompt,
        opts,
        keep_alive=None,
        started=started,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
    )
    writer = ChatWriter(req.model, include_usage)
    try:
        event = await gen.next_event()
        if isinstance(event, ErrorEvent):
            return openai_error(event.status, event.message)
        if not req.stream:
            return await writer.collect(gen, event)
        await writer.stream(await sse.open_stream(request), gen, event)
    finally:
        gen.close()


# --- /v1/completions -------------------------------------------------------------------------


class CompletionWriter:
    def __init__(self, request, model: str, include_usage: bool):
        self.request = request
        self.id = f"cmpl-{random.randrange(999)}"
        self.model = model
        self.include_usage = include_usage
        self.response = None
        self.offset = 0

    def _choice(self, native: dict) -> dict:
        choice = {"text": native.get("response", ""), "index": 0, "finish_reason": native.get("done_reason") or None}
        if native.get("logprobs"):
            # Ollama requests them but drops them here; the legacy shape is what OpenAI clients read.
            choice["logprobs"], self.offset = legacy_logprobs(native["logprobs"], self.offset)
        return choice

    def completion(self, native: dict) -> dict:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [self._choice(native)],
            "usage": usage(native.get("prompt_eval_count", 0), native.get("eval_count", 0)),
        }

    async def line(self, native: dict) -> None:
        """One native stream line → one SSE chunk (Ollama's mapping, `created` = now per chunk)."""
        if self.response is None:
            self.response = await sse.open_stream(self.request)
        if "error" in native:
            await self.response.send(sse.data(error_body(500, native["error"])))
            return
        chunk = {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),
            "choices": [self._choice(native)],
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }
        if self.include_usage:  # Ollama puts zero usage on every chunk and the real one last
            chunk["usage"] = usage(0, 0)
        await self.response.send(sse.data(chunk))
        if native.get("done"):
            if self.include_usage:
                chunk["choices"] = []
                chunk["usage"] = usage(native.get("prompt_eval_count", 0), native.get("eval_count", 0))
                await self.response.send(sse.data(chunk))
            await self.response.send(sse.DONE)


@bp.post("/v1/completions")
@openai_errors
async def completions(request):
    """Ollama's middleware model: the native /api/generate path runs on the converted request and
    each native object it gives is reshaped, so prompt templating, FIM (`suffix`), load replies
    and error texts stay exactly native."""
    started = time.perf_counter_ns()
    req, include_usage = completion_request(parse_body(request.body))
    writer = CompletionWriter(request, req.model, include_usage)
    whole = await generate_reply(state_of(request), req, started, writer.line)
    if whole is not None and not req.stream:
        return json_body(writer.completion(whole))
    if whole is not None:
        await writer.line(whole)  # a one-object native reply (a load) is a one-chunk stream
    if writer.response is not None:
        await writer.response.eof()


# --- /v1/embeddings --------------------------------------------------------------------------


@bp.post("/v1/embeddings")
@openai_errors
async def embeddings(request):
    state = state_of(request)
    model, texts, dimensions, encoding = embed_request(parse_body(request.body))
    spec = await state.lookup(model, not_found=EMBED_NOT_FOUND)
    result, _ = await embed_texts(
        state, spec, texts, truncate=True, normalize=True, dimensions=dimensions, keep_alive=None, options=None
    )
    return json_body(embedding_list(model, result.vectors, result.prompt_eval_count, encoding == "base64"))


# --- /v1/models ------------------------------------------------------------------------------


@bp.get("/v1/models")
@openai_errors
async def list_models(request):
    stored = await read_metadata(state_of(request).store.list_models)
    data = [
        {
            "id": s.name.display_shortest(),
            "object": "model",
            "created": int(s.modified_at),
            "owned_by": s.name.namespace,
        }
        for s in stored
    ]
    # Ollama serialises an empty list as null (a Go nil slice); clients are written for that.
    return json_body({"object": "list", "data": data or None})


@bp.get("/v1/models/<model:path>")
@openai_errors
async def retrieve_model(request, model: str):
    # `path` takes the rest of the URL, so `hf.co/org/repo:tag` and `user/model` work (Ollama's
    # one-segment route cannot address them); SDKs may percent-encode the name.
    model = unquote(model).strip("/")
    if not model:  # `/v1/models/`: Ollama redirects it to the list
        return await list_models(request)
    spec = await state_of(request).lookup(model, not_found="model '{short}' not found")
    return json_body(
        {"id": model, "object": "model", "created": int(spec.modified_at), "owned_by": spec.name.namespace}
    )
