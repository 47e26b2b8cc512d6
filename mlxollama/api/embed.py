"""POST /api/embed and the legacy POST /api/embeddings (reference §5.8, §5.9)."""

from __future__ import annotations

import time

from sanic import Blueprint

from ..engine.jobs import EmbedJob, ErrorEvent
from .errors import APIError, json_body
from .protocol import Fields, parse_body
from .service import acquire_runner, resolve_options
from .state import ServerState, state_of

bp = Blueprint("embed")

NOT_FOUND = 'model "{name}" not found, try pulling it first'


async def embed_texts(
    state: ServerState,
    spec,
    texts,
    *,
    truncate,
    normalize,
    dimensions,
    keep_alive,
    options,
    error_status: int | None = None,
):
    """Embed texts with the model loaded (or kept loaded) -> (EmbedResult or None for no texts,
    load duration in ns). The native endpoints and /v1/embeddings all run on this."""
    opts = resolve_options(state, spec, options)
    runner, load_ns = await acquire_runner(state, spec, keep_alive, opts.num_ctx)
    try:
        if not texts:
            return None, load_ns
        job = EmbedJob(texts, truncate=truncate, normalize=normalize, dimensions=dimensions, num_ctx=opts.num_ctx)
        runner.submit(job)
        try:
            result = await job.events.get()
        finally:
            job.cancel()
        if isinstance(result, ErrorEvent):
            raise APIError(result.message, error_status or result.status)
        return result, load_ns
    finally:
        state.scheduler.release(runner)


@bp.post("/api/embed")
async def embed(request):
    started = time.perf_counter_ns()
    state = state_of(request)
    body = parse_body(request.body)
    f = Fields(body, "EmbedRequest")
    model = f.model()
    if not model:
        raise APIError("model '' not found", 404)
    raw_input = body.get("input")
    if raw_input is None or raw_input == "":
        texts: list[str] = []
    elif isinstance(raw_input, str):
        texts = [raw_input]
    elif isinstance(raw_input, list) and all(isinstance(t, str) for t in raw_input):
        texts = list(raw_input)
    else:
        raise APIError("invalid input type", 400)
    truncate = f.bool("truncate", True)
    dimensions = f.int("dimensions")
    keep_alive = f.keep_alive()
    options = f.obj("options")
    spec = await state.lookup(model, not_found=NOT_FOUND)
    result, load_ns = await embed_texts(
        state,
        spec,
        texts,
        truncate=truncate,
        normalize=True,
        dimensions=dimensions,
        keep_alive=keep_alive,
        options=options,
    )
    if result is None:
        return json_body({"model": model, "embeddings": []})
    out = {
        "model": model,
        "embeddings": result.vectors,
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": load_ns,
        "prompt_eval_count": result.prompt_eval_count,
    }
    return json_body({k: v for k, v in out.items() if v or k == "embeddings"})


@bp.post("/api/embeddings")
async def embeddings(request):
    state = state_of(request)
    f = Fields(parse_body(request.body), "EmbeddingRequest")
    model = f.model()
    if not model:
        raise APIError("model is required", 400)
    prompt = f.str("prompt")
    keep_alive = f.keep_alive()
    options = f.obj("options")
    spec = await state.lookup(model, not_found=NOT_FOUND)
    # The legacy endpoint returns the raw pooled vector and never truncates (too long is a 500).
    result, _ = await embed_texts(
        state,
        spec,
        [prompt] if prompt else [],
        truncate=False,
        normalize=False,
        dimensions=0,
        keep_alive=keep_alive,
        options=options,
        error_status=500,
    )
    return json_body({"embedding": result.vectors[0] if result else []})
