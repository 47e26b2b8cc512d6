"""The Sanic application: routing quirks, CORS and Host checks, error mapping (reference §1)."""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import re
import socket

from sanic import Request, Sanic, response
from sanic.exceptions import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, SanicException

from ..errors import StatusError
from .errors import error_response, plain
from .state import ServerState

log = logging.getLogger("mlxollama.api")

_DEFAULT_ORIGINS = [
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for scheme in ("http", "https")
    for port in ("", ":*")
] + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]

# Large enough for several high-resolution images in base64 and agent-sized prompts.
MAX_JSON_BODY = 512 << 20

_ALLOW_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, x-stainless-arch, "
    "x-stainless-async, x-stainless-custom-poll-interval, x-stainless-helper-method, x-stainless-lang, "
    "x-stainless-os, x-stainless-package-version, x-stainless-poll-helper, x-stainless-retry-count, "
    "x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout"
)


class OllamaRequest(Request):
    """Collapses repeated slashes before routing: `//api/chat` from a base URL ending in `/`
    works directly instead of Ollama's 301 that turns a POST into a GET."""

    def __init__(self, url_bytes: bytes, *args, **kwargs):
        if b"//" in url_bytes:
            path, sep, query = url_bytes.partition(b"?")
            url_bytes = re.sub(rb"/{2,}", b"/", path) + sep + query
        super().__init__(url_bytes, *args, **kwargs)


def _origin_allowed(origin: str, allowed: list[str]) -> bool:
    return any(a == "*" or fnmatch.fnmatchcase(origin, a) for a in allowed)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_allowed(host_header: str) -> bool:
    host = host_header
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower()
    if not host or host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        if host == socket.gethostname().lower():
            return True
    except OSError:
        pass
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def create_app(state: ServerState, name: str = "mlxollama") -> Sanic:
    app = Sanic(name, request_class=OllamaRequest)
    # JSON bodies are read whole before parsing: bound them (413). Blob uploads stream to disk and
    # Sanic lifts the limit for streaming handlers.
    app.config.REQUEST_MAX_SIZE = MAX_JSON_BODY
    app.config.RESPONSE_TIMEOUT = 7 * 24 * 3600  # generation on a slow machine may take a long time
    app.config.REQUEST_TIMEOUT = 3600
    app.config.KEEP_ALIVE_TIMEOUT = 30
    app.config.NOISY_EXCEPTIONS = False
    app.ctx.state = state
    allowed_origins = list(state.config.origins) + _DEFAULT_ORIGINS
    guard_host = _is_loopback(state.config.host)

    from . import anthropic, embed, generate, manage, models, openai, responses

    app.blueprint(models.bp)
    app.blueprint(manage.bp)
    app.blueprint(generate.bp)
    app.blueprint(embed.bp)
    app.blueprint(openai.bp)
    app.blueprint(anthropic.bp)
    app.blueprint(responses.bp)

    @app.on_request(priority=100)
    async def cors_and_host(request: Request):
        origin = request.headers.get("origin")
        if origin:
            host = request.headers.get("host", "")
            same = origin in (f"http://{host}", f"https://{host}")
            if not same and not _origin_allowed(origin, allowed_origins):
                return response.empty(status=403)
            request.ctx.cors_origin = "*" if "*" in allowed_origins else origin
            if request.method == "OPTIONS":
                return response.empty(status=204, headers={
                    "Access-Control-Allow-Origin": request.ctx.cors_origin,
                    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
                    "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                    "Access-Control-Max-Age": "43200",
                })
        if guard_host and not _host_allowed(request.headers.get("host", "")):
            return response.empty(status=403)
        if request.method == "OPTIONS":
            return response.empty(status=204)

    @app.on_response
    async def cors_headers(request: Request, resp):
        origin = getattr(request.ctx, "cors_origin", None)
        if origin and resp is not None:
            resp.headers["Access-Control-Allow-Origin"] = origin

    @app.exception(StatusError)
    async def status_error(request, exc: StatusError):
        return error_response(exc.status, exc.message)

    @app.exception(NotFound)
    async def not_found(request, exc):
        return plain("404 page not found", 404)

    @app.exception(MethodNotAllowed)
    async def not_allowed(request, exc):
        return plain("405 method not allowed", 405)

    @app.exception(PayloadTooLarge, BadRequest)
    async def bad_request(request, exc: SanicException):
        return error_response(exc.status_code, str(exc))

    @app.exception(Exception)
    async def internal(request, exc: Exception):
        if isinstance(exc, SanicException):
            return error_response(exc.status_code, str(exc))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, str(exc) or type(exc).__name__)

    return app
