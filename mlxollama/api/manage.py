"""Model management: /api/pull, /api/push, /api/create, /api/blobs/:digest, /api/copy, /api/delete
(reference §5.10-§5.15). The work itself lives in mlxollama.convert; this is request parsing and
Ollama's progress streaming (NDJSON lines, or with `stream:false` the last line / an HTTP error)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
from typing import Any, Awaitable, Callable

from sanic import Blueprint, response

from ..convert.create import ManageError, create_model, parse_create_request
from ..errors import StatusError
from ..store import DigestMismatch, InvalidDigest, InvalidName, ModelName, validate_digest
from .errors import APIError, dumps, error_response, json_body
from .protocol import Fields, parse_body
from .state import ServerState, state_of

log = logging.getLogger("mlxollama.manage")
bp = Blueprint("manage")

UPLOAD_BATCH = 8 << 20  # bytes gathered before a disk write leaves the event loop


class JobCancelled(Exception):
    pass


class Job:
    """A background operation's progress objects, handed from any thread to the response writer."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False

    def _put(self, obj: dict | None) -> None:
        # Straight in from the loop's own thread, so a following error line cannot overtake it.
        if threading.get_ident() == self.loop_thread:
            self.queue.put_nowait(obj)
        else:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, obj)

    def emit(self, obj: dict) -> None:
        if self.cancelled:
            raise JobCancelled()  # stops a conversion thread at its next progress report
        self._put(obj)

    async def run(self, work: Callable[["Job"], Awaitable[None]]) -> None:
        try:
            await work(self)
            self.emit({"status": "success"})
        except JobCancelled:
            pass
        except StatusError as e:
            self._put({"error": e.message, "_status": e.status})
        except Exception as e:  # noqa: BLE001 - reported to the client like Ollama's free-text 500s
            log.exception("management operation failed")
            self._put({"error": str(e) or type(e).__name__, "_status": 500})
        finally:
            self._put(None)


async def _respond(request, work: Callable[[Job], Awaitable[None]], stream: bool):
    job = Job()
    task = asyncio.create_task(job.run(work))
    try:
        first = await job.queue.get()
        if not stream:
            last: dict[str, Any] = first or {}
            item = first
            while item is not None:
                if "error" in item:
                    return error_response(item.get("_status") or 500, item["error"])
                last = item
                item = await job.queue.get()
            return json_body(last)
        if first is not None and "error" in first:
            # Nothing streamed yet: a proper HTTP error, as Ollama's streamResponse does.
            return error_response(first.get("_status") or 500, first["error"])
        resp = await request.respond(content_type="application/x-ndjson")
        item = first
        while item is not None:
            if "error" in item:
                await resp.send(dumps({"error": item["error"]}) + "\n")
                break
            await resp.send(dumps(item) + "\n")
            item = await job.queue.get()
        await resp.eof()
        return None
    finally:
        if not task.done():
            # The client went away: stop the work (a pull keeps its partial files for a resume).
            job.cancelled = True
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


def _noprune(state: ServerState) -> bool:
    return bool(state.config.noprune)


# --------------------------------------------------------------------------------- pull / push


async def pull_model(state: ServerState, name: ModelName, insecure: bool, job: Job) -> None:
    """Pick the source: the user's Ollama store, Hugging Face, or an Ollama-compatible registry."""
    from ..convert import hfpull, ollama_store, registry

    store, noprune = state.store, _noprune(state)
    local = await asyncio.to_thread(ollama_store.find, name)
    if local is not None:
        await asyncio.to_thread(ollama_store.import_from_ollama, store, name, local, job.emit, noprune)
    elif hfpull.is_hf_name(name):
        await asyncio.to_thread(hfpull.pull_hf, store, name, job.emit, noprune=noprune)
    else:
        await registry.pull_registry(store, name, insecure=insecure, emit=job.emit, noprune=noprune)


def _registry_request(request, struct: str, *, required: bool = False) -> tuple[ModelName, bool, bool]:
    """(name, insecure, stream) of a pull or push; push answers an empty name with `model is required`,
    pull with `invalid model name`, as Ollama does."""
    f = Fields(parse_body(request.body), struct)
    text = f.model()
    if required and not text:
        raise APIError("model is required", 400)
    insecure = bool(f.bool("insecure"))
    stream = f.bool("stream", True) is not False
    try:
        return ModelName.parse(text), insecure, stream
    except InvalidName:
        raise APIError("invalid model name", 400) from None


@bp.post("/api/pull")
async def pull(request):
    state = state_of(request)
    name, insecure, stream = _registry_request(request, "PullRequest")

    async def work(job: Job) -> None:
        await pull_model(state, name, insecure, job)

    return await _respond(request, work, stream)


@bp.post("/api/push")
async def push(request):
    from ..convert.registry import push_registry

    state = state_of(request)
    name, insecure, stream = _registry_request(request, "PushRequest", required=True)

    async def work(job: Job) -> None:
        await push_registry(state.store, name, insecure=insecure, emit=job.emit)

    return await _respond(request, work, stream)


# --------------------------------------------------------------------------------- create


@bp.post("/api/create")
async def create(request):
    state = state_of(request)
    body = parse_body(request.body)
    fields = Fields(body, "CreateRequest")
    stream = fields.bool("stream", True) is not False
    fields.str("from")  # a non-string fails to decode, as in Go
    req = parse_create_request(body)
    for rel, digest in {**(req.files or {}), **(req.adapters or {})}.items():
        if not state.store.has_blob(digest):  # a request error, before anything streams (as in Ollama)
            raise APIError(f"blob not found for {rel} (digest {digest})", 400)

    async def work(job: Job) -> None:
        if req.from_:
            # Always a model name, as in Ollama: a path is an invalid name and is never looked at, so
            # the answer cannot tell whether it exists on the server.
            try:
                base = ModelName.parse(req.from_)
            except InvalidName:
                raise ManageError("invalid model name", 400) from None
            if state.store.resolve(base) is None:
                # Ollama pulls a missing base first; its progress shows in this stream.
                await pull_model(state, base, False, job)
        await asyncio.to_thread(create_model, state.store, req, job.emit, noprune=_noprune(state))

    return await _respond(request, work, stream)


# --------------------------------------------------------------------------------- blobs


def _blob_digest(raw: str) -> str:
    try:
        return validate_digest(raw)
    except InvalidDigest:
        raise APIError("invalid digest format", 400) from None


@bp.route("/api/blobs/<digest>", methods=["HEAD"])
async def head_blob(request, digest: str):
    d = _blob_digest(digest)
    return response.empty(status=200 if state_of(request).store.has_blob(d) else 404)


@bp.post("/api/blobs/<digest>", stream=True)
async def post_blob(request, digest: str):
    store = state_of(request).store
    d = _blob_digest(digest)
    if store.has_blob(d):
        # Read and drop the body: answering mid-upload breaks the client's send.
        while await request.stream.read() is not None:
            pass
        return response.empty(status=200)
    writer = await asyncio.to_thread(store.blob_writer, d)
    try:
        batch: list[bytes] = []
        size = 0
        while True:
            chunk = await request.stream.read()
            if chunk is None:
                break
            batch.append(chunk)
            size += len(chunk)
            if size >= UPLOAD_BATCH:
                data, batch, size = b"".join(batch), [], 0
                await asyncio.to_thread(writer.write, data)
        if batch:
            await asyncio.to_thread(writer.write, b"".join(batch))
        await asyncio.to_thread(writer.commit)
    except DigestMismatch as e:
        raise APIError(str(e), 400) from e
    finally:
        writer.__exit__(None)  # deletes the temp file unless committed
    return response.empty(status=201)


# --------------------------------------------------------------------------------- copy / delete


def _go_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


@bp.post("/api/copy")
async def copy(request):
    store = state_of(request).store
    f = Fields(parse_body(request.body), "CopyRequest")
    src_text, dst_text = f.str("source"), f.str("destination")
    try:
        src = ModelName.parse(src_text)
    except InvalidName:
        raise APIError(f"source {_go_quote(src_text)} is invalid", 400) from None
    try:
        dst = ModelName.parse(dst_text)
    except InvalidName:
        raise APIError(f"destination {_go_quote(dst_text)} is invalid", 400) from None
    if store.resolve(src) is None:
        raise APIError(f"model {_go_quote(src_text)} not found", 404)
    try:
        await asyncio.to_thread(store.copy, src, dst)
    except LookupError:
        raise APIError(f"model {_go_quote(src_text)} not found", 404) from None
    return response.empty(status=200)


@bp.delete("/api/delete")
async def delete(request):
    state = state_of(request)
    store = state.store
    f = Fields(parse_body(request.body), "DeleteRequest")
    text = f.model()
    if not text:
        raise APIError("model is required", 400)
    try:
        name = ModelName.parse(text)
    except InvalidName:
        raise APIError(f"name {_go_quote(text)} is invalid", 400) from None
    spec = await state.lookup(text, not_found="model '{name}' not found")
    await state.scheduler.unload(spec)
    try:
        await asyncio.to_thread(store.delete, name)
    except LookupError:
        raise APIError(f"model '{text}' not found", 404) from None
    # The linked run folder of this manifest is stale unless a copy still has the same digest.
    if not any(m.digest_hex == spec.digest_hex for m in await asyncio.to_thread(store.list_models)):
        shutil.rmtree(state.run_dir / spec.digest_hex, ignore_errors=True)
    return response.empty(status=200)
