"""POST /v1/responses: the OpenAI Responses API as Ollama serves it (stateless).

A translation layer like openai.py: the body becomes a native ChatRequest (responses_convert.py)
and runs through the same preparation and engine as /api/chat; events are reshaped into the
Responses object or its SSE event sequence. Errors before the first byte use OpenAI's envelope.
"""

from __future__ import annotations

import time

from sanic import Blueprint

from ..engine.jobs import ErrorEvent, TextEvent
from . import sse
from .errors import APIError, json_body
from .openai import openai_error, openai_errors
from .protocol import parse_body
from .responses_convert import ResponseBuilder, responses_request
from .service import acquire_runner, prepare_chat, start_generation
from .state import state_of

bp = Blueprint("responses")


@bp.post("/v1/responses")
@openai_errors
async def responses(request):
    started = time.perf_counter_ns()
    state = state_of(request)
    req = responses_request(parse_body(request.body))
    if not req.native.model:
        raise APIError("model is required", 400)
    spec = await state.lookup(req.native.model, not_found="model '{name}' not found")
    builder = ResponseBuilder(req, req.native.model)
    if not req.native.messages:
        # Ollama's chat handler only loads the model for an empty conversation; the reply is empty.
        if "completion" not in spec.capabilities:
            raise APIError(f'"{req.native.model}" does not support chat', 400)
        runner, _ = await acquire_runner(state, spec, None, state.config.context_length)
        state.scheduler.release(runner)
        if not req.stream:
            return json_body(builder.whole("", "", [], 0, 0))
        response = await sse.open_stream(request)
        for name, data in builder.start() + builder.finish(0, 0):
            await response.send(sse.event(name, data))
        await response.eof()
        return None
    prompt, opts = prepare_chat(state, spec, req.native, req.overrides)
    gen = await start_generation(state, spec, prompt, opts, keep_alive=None, started=started)
    try:
        event = await gen.next_event()
        if isinstance(event, ErrorEvent):
            return openai_error(event.status, event.message)
        if not req.stream:
            whole = await gen.collect(event)
            if isinstance(whole.end, ErrorEvent):
                return openai_error(whole.end.status, whole.end.message)
            m = gen.metrics()
            return json_body(
                builder.whole(whole.text, whole.thinking, whole.tool_calls, m.prompt_eval_count, m.eval_count)
            )
        response = await sse.open_stream(request)
        events = builder.start()
        while isinstance(event, TextEvent):
            events += builder.feed(event.thinking, event.text, event.tool_calls or [])
            for name, data in events:
                await response.send(sse.event(name, data))
            events = []
            event = await gen.next_event()
        if isinstance(event, ErrorEvent):
            events += builder.failed(event.status, event.message)
        else:
            m = gen.metrics()
            events += builder.finish(m.prompt_eval_count, m.eval_count)
        for name, data in events:
            await response.send(sse.event(name, data))
        await response.eof()
    finally:
        gen.close()
