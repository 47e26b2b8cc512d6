"""The HTTP side of the command line: where the server is, and errors turned into one-line messages."""

from __future__ import annotations

from ..config import client_host, parse_host

# httpx and ollama are imported inside the functions: server_url() must work with a bare Python,
# because the service scripts call it before (or without) the virtual environment.

NOT_RUNNING = "could not connect to mlxollama server, is it running?"


class CLIError(Exception):
    """Printed as `Error: <message>`, exit status 1."""


def server_url(value: str | None = None) -> str:
    """OLLAMA_HOST → the URL a client connects to, parsed by the same rules the server binds with."""
    raw = client_host() if value is None else value
    raw = (raw or "").strip().strip("\"'").strip()
    scheme, host, port = parse_host(raw)
    # a bind-to-all address is not something to connect to; its loopback is
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    rest = raw.split("://", 1)[-1]
    path = rest.split("/", 1)[1] if "/" in rest else ""
    path = "/" + path.strip("/") if path.strip("/") else ""
    return f"{scheme}://{host}:{port}{path}"


def client():
    import httpx
    import ollama

    # No overall timeout: a first load or a long answer may legitimately take minutes.
    return ollama.Client(host=server_url(), timeout=httpx.Timeout(None, connect=10.0))


def is_connect_error(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    # ollama-python turns httpx.ConnectError into the builtin ConnectionError on non-stream calls
    return isinstance(exc, ConnectionError) and not isinstance(exc, (BrokenPipeError,))


def error_message(exc: BaseException) -> str | None:
    """The text after `Error: ` for errors a user can act on; None for real bugs."""
    import httpx
    import ollama

    if is_connect_error(exc):
        return NOT_RUNNING
    if isinstance(exc, ollama.ResponseError):
        return str(exc.error).strip() or f"status {exc.status_code}"
    if isinstance(exc, CLIError):
        return str(exc)
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return None


def raw_show(c, model: str, **extra) -> dict:
    """/api/show as plain JSON: the typed ShowResponse drops `system`, `messages` and others."""
    # _request_raw is the client's own error-mapping transport (ResponseError / ConnectionError).
    return c._request_raw("POST", "/api/show", json={"model": model, **extra}).json()
