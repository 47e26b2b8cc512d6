"""The Sanic application: routing quirks, CORS and Host checks, error mapping (reference §1)."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket

from sanic import Request, Sanic, response
from sanic.exceptions import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, SanicException

from ..engine.scheduler import SHUTTING_DOWN
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


# Schemes an exact OLLAMA_ORIGINS entry may use (gin-contrib/cors with AllowBrowserExtensions).
_ORIGIN_SCHEMES = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)


class OriginPolicy:
    """CORS origins as Ollama's gin-contrib/cors (AllowWildcard) matches them: `*` alone allows
    every origin; an entry with one `*` matches any origin starting with the text before it and
    ending with the text after it; any other entry is an exact origin, compared lowercased. No
    other character is special: `http://[::1]:3000` is an ordinary origin."""

    def __init__(self, entries: list[str]):
        self.allow_all = "*" in entries
        self.exact: set[str] = set()
        self.wildcards: list[tuple[str, str]] = []
        for entry in entries:
            stars = entry.count("*")
            if stars > 1 or (stars == 0 and not entry.startswith(_ORIGIN_SCHEMES)):
                # Ollama refuses to start on these; we leave the entry out and say so.
                log.warning(
                    "ignoring origin %r: use one '*' at most, or start with one of %s",
                    entry,
                    ", ".join(_ORIGIN_SCHEMES),
                )
            elif stars:
                before, after = entry.split("*")
                self.wildcards.append((before, after))
            else:
                self.exact.add(entry.strip().lower())

    def allows(self, origin: str) -> bool:
        if self.allow_all or origin in self.exact:
            return True
        return any(origin.startswith(before) and origin.endswith(after) for before, after in self.wildcards)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def split_host_port(hostport: str) -> str:
    """The host of a Host header as Ollama reads it: Go's net.SplitHostPort, or the whole value
    when that fails (so a bracketed IPv6 address without a port stays bracketed)."""
    colon = hostport.rfind(":")
    if colon < 0:
        return hostport
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != colon:
            return hostport
        host, rest_from = hostport[1:end], end + 1
    else:
        host, rest_from = hostport[:colon], 0
        if ":" in host:
            return hostport
    if "[" in hostport[1 if rest_from else 0 :] or "]" in hostport[rest_from:]:
        return hostport
    return host


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address):
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


# Go's netip IsPrivate: RFC 1918 and RFC 4193 only (Python's is_private also takes link-local,
# documentation and other reserved ranges, which Ollama does not).
_GO_PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


def _is_interface_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `ip` is assigned to one of this machine's interfaces: binding to it succeeds
    only then (multicast is bindable too but is never an interface's own address)."""
    if ip.is_multicast or getattr(ip, "ipv4_mapped", None) is not None or getattr(ip, "scope_id", None):
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))
        return True
    except OSError:
        return False


def host_allowed(host_header: str, is_local_address=_is_interface_address) -> bool:
    """Ollama's allowedHostsMiddleware for a server on a loopback address: the Host header must
    name this machine (DNS-rebinding defence)."""
    host = split_host_port(host_header)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        plain = _unmapped(ip)
        if (
            plain.is_loopback
            or any(plain in net for net in _GO_PRIVATE if net.version == plain.version)
            or str(ip) in ("0.0.0.0", "::")
            or is_local_address(ip)
        ):
            return True
    host = host.lower()
    if host in ("", "localhost") or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        return host == socket.gethostname().lower()
    except OSError:
        return False


def create_app(state: ServerState, name: str = "mlxollama") -> Sanic:
    app = Sanic(name, request_class=OllamaRequest)
    # JSON bodies are read whole before parsing: bound them (413). Blob uploads stream to disk and
    # Sanic lifts the limit for streaming handlers.
    app.config.REQUEST_MAX_SIZE = MAX_JSON_BODY
    app.config.RESPONSE_TIMEOUT = 7 * 24 * 3600  # generation on a slow machine may take a long time
    app.config.REQUEST_TIMEOUT = 3600
    app.config.KEEP_ALIVE_TIMEOUT = 30
    # On shutdown, running generations are ended first (server.py); what is still open after
    # this long (a pull's progress stream, a slow client) is cut.
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 1.0
    app.config.NOISY_EXCEPTIONS = False
    app.ctx.state = state
    origins = OriginPolicy(list(state.config.origins) + _DEFAULT_ORIGINS)
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
        if state.scheduler.closing:
            return error_response(503, SHUTTING_DOWN)
        origin = request.headers.get("origin")
        if origin:
            host = request.headers.get("host", "")
            same = origin in (f"http://{host}", f"https://{host}")
            if not same and not origins.allows(origin):
                return response.empty(status=403)
            request.ctx.cors_origin = "*" if origins.allow_all else origin
            if request.method == "OPTIONS":
                return response.empty(
                    status=204,
                    headers={
                        "Access-Control-Allow-Origin": request.ctx.cors_origin,
                        "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
                        "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                        "Access-Control-Max-Age": "43200",
                    },
                )
        if guard_host and not host_allowed(request.headers.get("host", "")):
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
