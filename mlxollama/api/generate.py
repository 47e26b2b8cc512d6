"""POST /api/generate and POST /api/chat (reference §5.6, §5.7)."""

from __future__ import annotations

import time

from sanic import Blueprint

from ..engine.catalog import ModelSpec
from ..engine.gotemplate import TemplateError
from ..engine.gotemplate import render as render_go_template
from ..engine.jobs import DoneEvent, EngineError, ErrorEvent, PromptSpec, TextEvent
from ..timefmt import rfc3339_utc
from .errors import APIError, dumps, error_response, json_body
from .protocol import ChatRequest, GenerateRequest, check_format, parse_body
from .service import Generation, check_capabilities, resolve_options, start_generation
from .state import ServerState, state_of

bp = Blueprint("generate")


def _check_structured(fmt) -> None:
    check_format(fmt)
    if fmt not in (None, ""):
        # Enforcing JSON output needs constrained decoding; until it lands, say so rather
        # than return text that may not parse.
        raise APIError(400, "structured outputs (format) are not supported by this server yet")


async def _run(request, gen: Generation, chunk, final, stream: bool, want_logprobs: bool):
    """Write a generation as Ollama NDJSON (or one object for stream:false)."""
    try:
        event = await gen.next_event()
        if isinstance(event, ErrorEvent):
            return error_response(event.status, event.message)
        if not stream:
            pieces, logprobs = [], []
            while isinstance(event, TextEvent):
                pieces.append(event.text)
                logprobs.extend(event.logprobs or [])
                event = await gen.next_event()
            if isinstance(event, ErrorEvent):
                return error_response(event.status, event.message)
            out = final(event, gen.metrics().ollama_fields(), "".join(pieces))
            if want_logprobs:
                out["logprobs"] = logprobs
            return json_body(out)
        response = await request.respond(content_type="application/x-ndjson")
        while True:
            if isinstance(event, TextEvent):
                piece = chunk(event.text)
                if event.logprobs:
                    piece["logprobs"] = event.logprobs
                await response.send(dumps(piece) + "\n")
            elif isinstance(event, DoneEvent):
                await response.send(dumps(final(event, gen.metrics().ollama_fields())) + "\n")
                break
            else:
                await response.send(dumps({"error": event.message}) + "\n")
                break
            event = await gen.next_event()
        await response.eof()
    finally:
        gen.close()


async def _load_or_unload(state: ServerState, spec: ModelSpec, req, shape) -> dict:
    if req.keep_alive_given and req.keep_alive == 0:
        await state.scheduler.unload(spec)
        return shape("unload")
    try:
        runner = await state.scheduler.acquire(spec, req.keep_alive, state.config.context_length)
    except EngineError as e:
        raise APIError(e.status, e.message) from e
    state.scheduler.release(runner)
    return shape("load")


@bp.post("/api/generate")
async def generate(request):
    started = time.perf_counter_ns()
    state = state_of(request)
    req = GenerateRequest.parse(parse_body(request.body))
    if not req.model:
        raise APIError(404, "model '' not found")
    spec = await state.lookup(req.model, not_found="model '{name}' not found")

    def shape(reason):
        return {"model": req.model, "created_at": rfc3339_utc(), "response": "", "done": True, "done_reason": reason}

    if not req.prompt and req.keep_alive_given and req.keep_alive == 0:
        return json_body(await _load_or_unload(state, spec, req, shape))
    if req.raw and (req.template or req.system or req.context):
        raise APIError(400, "raw mode does not support template, system, or context")
    need = ["completion"] + (["insert"] if req.suffix else []) + (["vision"] if req.images else [])
    check_capabilities(spec, req.model, need, req.think)
    if not req.prompt:
        return json_body(await _load_or_unload(state, spec, req, shape))
    _check_structured(req.format)
    opts = resolve_options(state, spec, req.options)

    if req.raw:
        prompt = PromptSpec(raw_prompt=req.prompt, truncate=req.truncate)
    elif req.template:
        try:
            text = render_go_template(req.template, system=req.system or spec.system or "", prompt=req.prompt)
        except TemplateError as e:
            raise APIError(400, f"template error: {e}") from e
        prompt = PromptSpec(raw_prompt=text, context=req.context, truncate=req.truncate, return_context=True)
    else:
        messages = []
        system = req.system or spec.system
        if system:
            messages.append({"role": "system", "content": system})
        if not req.context:
            messages.extend(spec.messages)
        messages.append({"role": "user", "content": req.prompt})
        prompt = PromptSpec(messages=messages, context=req.context, truncate=req.truncate, return_context=True)

    def chunk(text):
        return {"model": req.model, "created_at": rfc3339_utc(), "response": text, "done": False}

    def final(done: DoneEvent, metrics: dict, text: str = ""):
        out = {"model": req.model, "created_at": rfc3339_utc(), "response": text, "done": True}
        out["done_reason"] = metrics.pop("done_reason")
        if done.context is not None:
            out["context"] = done.context
        out.update(metrics)
        return out

    gen = await start_generation(state, spec, prompt, opts, keep_alive=req.keep_alive, started=started,
                                 logprobs=req.logprobs, top_logprobs=req.top_logprobs)
    return await _run(request, gen, chunk, final, req.stream, req.logprobs)


def prepare_chat(state: ServerState, spec: ModelSpec, req: ChatRequest, overrides: dict | None = None):
    """Checks and prompt assembly shared by /api/chat and the OpenAI/Anthropic layers.
    Returns (PromptSpec, Options); raises APIError with Ollama's texts."""
    if "completion" not in spec.capabilities:
        raise APIError(400, f'"{req.model}" does not support chat')
    need = ["completion"] + (["tools"] if req.tools else []) + (["vision"] if any(m.images for m in req.messages) else [])
    check_capabilities(spec, req.model, need, req.think)
    _check_structured(req.format)
    opts = resolve_options(state, spec, req.options, overrides)
    messages = list(spec.messages) + [m.for_template() for m in req.messages]
    if spec.system and req.messages[0].role != "system":
        messages.insert(0, {"role": "system", "content": spec.system})
    return PromptSpec(messages=messages, tools=req.tools or None, truncate=req.truncate), opts


@bp.post("/api/chat")
async def chat(request):
    started = time.perf_counter_ns()
    state = state_of(request)
    req = ChatRequest.parse(parse_body(request.body))
    if not req.model:
        raise APIError(400, "model is required")
    spec = await state.lookup(req.model, not_found="model '{name}' not found")

    def shape(reason):
        return {"model": req.model, "created_at": rfc3339_utc(),
                "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": reason}

    if not req.messages:
        if req.keep_alive_given and req.keep_alive == 0:
            return json_body(await _load_or_unload(state, spec, req, shape))
        if "completion" not in spec.capabilities:
            raise APIError(400, f'"{req.model}" does not support chat')
        return json_body(await _load_or_unload(state, spec, req, shape))
    prompt, opts = prepare_chat(state, spec, req)

    def chunk(text):
        return {"model": req.model, "created_at": rfc3339_utc(),
                "message": {"role": "assistant", "content": text}, "done": False}

    def final(done: DoneEvent, metrics: dict, text: str = ""):
        out = {"model": req.model, "created_at": rfc3339_utc(),
               "message": {"role": "assistant", "content": text}, "done": True}
        out["done_reason"] = metrics.pop("done_reason")
        out.update(metrics)
        return out

    gen = await start_generation(state, spec, prompt, opts, keep_alive=req.keep_alive, started=started,
                                 logprobs=req.logprobs, top_logprobs=req.top_logprobs)
    return await _run(request, gen, chunk, final, req.stream, req.logprobs)
