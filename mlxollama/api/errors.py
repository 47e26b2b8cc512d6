"""Ollama's error shape: {"error": "..."} with the status the reference gives (§1.5)."""

from __future__ import annotations

import json

from sanic import response

from ..errors import StatusError


class APIError(StatusError):
    """A request refused at the API boundary, before any engine work."""


def json_body(data, status: int = 200) -> response.HTTPResponse:
    return response.HTTPResponse(dumps(data), status=status, content_type="application/json; charset=utf-8")


def error_response(status: int, message: str) -> response.HTTPResponse:
    return json_body({"error": message}, status)


def dumps(data) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def plain(text: str, status: int) -> response.HTTPResponse:
    return response.HTTPResponse(text, status=status, content_type="text/plain; charset=utf-8")
