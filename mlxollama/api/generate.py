"""POST /api/generate and POST /api/chat (reference §5.6, §5.7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sanic import Blueprint

from ..engine.catalog import ModelSpec
from ..engine.jobs import DoneEvent, ErrorEvent, PromptSpec, TextEvent
from ..errors import StatusError
from ..template.gotemplate import TemplateError
from ..template.ollama import render as render_go_template
from ..timefmt import rfc3339_utc
from .errors import APIError, dumps, json_body
from .protocol import ChatRequest, GenerateRequest, parse_body
from .service import (
    Generation,
    acquire_runner,
    check_capabilities,
    effective_think,
    own_template,
    prepare_chat,
    resolve_options,
    start_generation,
    structured_grammar,
)
from .state import ServerState, state_of

bp = Blueprint("generate")


def _pieces(event: TextEvent):
    """Stream chunks for one engine event: tool calls travel whole, in a chunk of their own
    with empty content (reference §8.2)."""
    if event.tool_calls and (event.text or event.thinking):
        yield event.text, event.thinking, None, event.logprobs
        yield "", "", event.tool_calls, None
    else:
        yield event.text, event.thinking, event.tool_calls, event.logprobs


# Where a streamed reply's objects go, one at a time: NDJSON lines for the native routes, SSE
# chunks for /v1/completions.
Emit = Callable[[dict], Awaitable[None]]


class NDJSONStream:
    """The native wire for a reply: one JSON object, or NDJSON lines on a response opened by the first."""

    def __init__(self, request):
        self.request = request
        self.response = None

    async def send(self, obj: dict) -> None:
        if self.response is None:
            self.response = await self.request.respond(content_type="application/x-ndjson")
        await self.response.send(dumps(obj) + "\n")

    async def reply(self, whole: dict | None):
        """The handler's return: `whole` as one JSON object, or None after a stream (ended here)."""
        if whole is not None:
            return json_body(whole)
        if self.response is not None:
            await self.response.eof()
        return None


async def _run(gen: Generation, chunk, final, stream: bool, want_logprobs: bool, emit: Emit) -> dict | None:
    """A generation as Ollama's objects: the one object for stream:false, else each stream object
    through emit (None returned). An engine error before the first byte raises StatusError.

    chunk(text, thinking, tool_calls) and final(done, metrics, text, thinking, tool_calls) shape
    the objects for their endpoint."""
    try:
        event = await gen.next_event()
        if isinstance(event, ErrorEvent):
            raise StatusError(event.message, event.status)
        if not stream:
            whole = await gen.collect(event)
            if isinstance(whole.end, ErrorEvent):
                raise StatusError(whole.end.message, whole.end.status)
            out = final(whole.end, gen.metrics().ollama_fields(), whole.text, whole.thinking, whole.tool_calls)
            if want_logprobs:
                out["logprobs"] = whole.logprobs
            return out
        while True:
            if isinstance(event, TextEvent):
                for text, thinking, calls, logprobs in _pieces(event):
                    piece = chunk(text, thinking, calls)
                    if logprobs:
                        piece["logprobs"] = logprobs
                    await emit(piece)
            elif isinstance(event, DoneEvent):
                await emit(final(event, gen.metrics().ollama_fields()))
                break
            else:
                await emit({"error": event.message})
                break
            event = await gen.next_event()
        return None
    finally:
        gen.close()


async def _load_or_unload(state: ServerState, spec: ModelSpec, req, shape) -> dict:
    if req.keep_alive_given and req.keep_alive == 0:
        await state.scheduler.unload(spec)
        return shape("unload")
    runner, _ = await acquire_runner(state, spec, req.keep_alive, state.config.context_length)
    state.scheduler.release(runner)
    return shape("load")


async def _serve_native(request, parse, reply):
    """A native route: parse the body, run the reply on it, write what it gives as NDJSON."""
    started = time.perf_counter_ns()
    req = parse(parse_body(request.body))
    stream = NDJSONStream(request)
    return await stream.reply(await reply(state_of(request), req, started, stream.send))


@bp.post("/api/generate")
async def generate(request):
    return await _serve_native(request, GenerateRequest.parse, generate_reply)


async def generate_reply(state: ServerState, req: GenerateRequest, started: int, emit: Emit) -> dict | None:
    """/api/generate on a parsed request: the one reply object, or None once a stream has gone
    through emit. Raises StatusError with Ollama's texts. /v1/completions runs on it too."""
    if not req.model:
        raise APIError("model '' not found", 404)
    spec = await state.lookup(req.model, not_found="model '{name}' not found")

    def shape(reason):
        return {"model": req.model, "created_at": rfc3339_utc(), "response": "", "done": True, "done_reason": reason}

    if not req.prompt and req.keep_alive_given and req.keep_alive == 0:
        return await _load_or_unload(state, spec, req, shape)
    if req.raw and (req.template or req.system or req.context):
        raise APIError("raw mode does not support template, system, or context", 400)
    need = ["completion"] + (["insert"] if req.suffix else []) + (["vision"] if req.images else [])
    check_capabilities(spec, req.model, need, req.think)
    if not req.prompt:
        return await _load_or_unload(state, spec, req, shape)
    grammar = structured_grammar(req.format)
    think = effective_think(spec, req.think)
    opts = resolve_options(state, spec, req.options)

    if req.raw:
        prompt = PromptSpec(raw_prompt=req.prompt, truncate=req.truncate, think=think)
    elif req.suffix:
        # Fill-in-the-middle: only Prompt and Suffix go in, no system or history (§5.6.2).
        if spec.fim is not None:
            prompt = PromptSpec(
                fim=(req.prompt, req.suffix), context=req.context, truncate=req.truncate, return_context=True
            )
        else:
            try:
                # Templates run on a worker thread: a slow one must never stall the event loop.
                text = await asyncio.to_thread(
                    render_go_template, spec.go_template or "", prompt=req.prompt, suffix=req.suffix
                )
            except TemplateError as e:
                raise APIError(f"template error: {e}", 500) from e
            prompt = PromptSpec(raw_prompt=text, context=req.context, truncate=req.truncate, return_context=True)
    elif req.template:
        try:
            text = await asyncio.to_thread(
                render_go_template, req.template, system=req.system or spec.system or "", prompt=req.prompt
            )
        except TemplateError as e:
            raise APIError(f"template error: {e}", 400) from e
        prompt = PromptSpec(
            raw_prompt=text, context=req.context, truncate=req.truncate, return_context=True, think=think
        )
    else:
        messages = []
        system = req.system or spec.system
        if system:
            messages.append({"role": "system", "content": system})
        if not req.context:
            messages.extend(spec.messages)
        messages.append({"role": "user", "content": req.prompt, **({"images": req.images} if req.images else {})})
        prompt = PromptSpec(
            messages=messages,
            context=req.context,
            truncate=req.truncate,
            return_context=True,
            think=think,
            go_template=own_template(spec),
        )
    prompt.grammar = grammar
    prompt.shift = req.shift
    if req.images and prompt.messages is None:  # raw or request-template prompts: images go alongside
        prompt.images = list(req.images)

    def chunk(text, thinking="", calls=None):
        out = {"model": req.model, "created_at": rfc3339_utc(), "response": text}
        if thinking:
            out["thinking"] = thinking
        out["done"] = False
        return out

    def final(done: DoneEvent, metrics: dict, text: str = "", thinking: str = "", calls=None):
        out = {"model": req.model, "created_at": rfc3339_utc(), "response": text}
        if thinking:
            out["thinking"] = thinking
        out["done"] = True
        out["done_reason"] = metrics.pop("done_reason")
        if done.context is not None:
            out["context"] = done.context
        out.update(metrics)
        return out

    gen = await start_generation(
        state,
        spec,
        prompt,
        opts,
        keep_alive=req.keep_alive,
        started=started,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
    )
    return await _run(gen, chunk, final, req.stream, req.logprobs, emit)


def chat_message(text: str, thinking: str = "", calls: list | None = None) -> dict:
    message = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return message


@bp.post("/api/chat")
async def chat(request):
    return await _serve_native(request, ChatRequest.parse, chat_reply)


async def chat_reply(state: ServerState, req: ChatRequest, started: int, emit: Emit) -> dict | None:
    """/api/chat on a parsed request, shaped like generate_reply."""
    if not req.model:
        raise APIError("model is required", 400)
    spec = await state.lookup(req.model, not_found="model '{name}' not found")

    def shape(reason):
        return {
            "model": req.model,
            "created_at": rfc3339_utc(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reason,
        }

    if not req.messages:
        if req.keep_alive_given and req.keep_alive == 0:
            return await _load_or_unload(state, spec, req, shape)
        if "completion" not in spec.capabilities:
            raise APIError(f'"{req.model}" does not support chat', 400)
        return await _load_or_unload(state, spec, req, shape)
    prompt, opts = prepare_chat(state, spec, req)

    def chunk(text, thinking="", calls=None):
        return {
            "model": req.model,
            "created_at": rfc3339_utc(),
            "message": chat_message(text, thinking, calls),
            "done": False,
        }

    def final(done: DoneEvent, metrics: dict, text: str = "", thinking: str = "", calls=None):
        out = {
            "model": req.model,
            "created_at": rfc3339_utc(),
            "message": chat_message(text, thinking, calls),
            "done": True,
        }
        out["done_reason"] = metrics.pop("done_reason")
        out.update(metrics)
        return out

    gen = await start_generation(
        state,
        spec,
        prompt,
        opts,
        keep_alive=req.keep_alive,
        started=started,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
    )
    return await _run(gen, chunk, final, req.stream, req.logprobs, emit)
