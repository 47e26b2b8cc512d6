"""Request bodies parsed and checked into dataclasses (reference §1.3, §5.6, §5.7).

Wrong JSON types get Go's decoder wording, since that is what Ollama clients display.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..durations import DurationError, parse_keep_alive
from .errors import APIError

THINK_LEVELS = ("high", "medium", "low", "max")

_JSON_TYPE = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object"}


def _json_type(value) -> str:
    return _JSON_TYPE.get(type(value), "value")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str):
    # NaN and Infinity are not JSON: Go's decoder refuses them where Python's accepts them.
    raise APIError(f"invalid character {name[0]!r} looking for beginning of value", 400)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise APIError(f"json: cannot unmarshal number {text} into Go value of type float64", 400)
    return value


def _replace_lone_surrogates(value):
    """Go turns invalid UTF-16 escapes (a lone \\ud800) into U+FFFD; Python keeps them, and they
    cannot be encoded later. Iterative, so no body the decoder accepts is too deep for it."""
    root = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, str):
            container[key] = _LONE_SURROGATE.sub("\ufffd", item)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
        elif isinstance(item, dict):
            fixed = {(_LONE_SURROGATE.sub("\ufffd", k) if isinstance(k, str) else k): v for k, v in item.items()}
            container[key] = fixed
            stack.extend((fixed, k) for k in fixed)
    return root[0]


def parse_body(raw: bytes) -> dict:
    if not raw or not raw.strip():
        raise APIError("missing request body", 400)
    # Go's decoder replaces invalid UTF-8 with U+FFFD rather than refusing the request.
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        if e.pos >= len(e.doc.rstrip()):
            raise APIError("unexpected EOF", 400) from e
        ch = e.doc[e.pos] if e.pos < len(e.doc) else ""
        raise APIError(f"invalid character {ch!r} looking for beginning of value", 400) from e
    except RecursionError as e:
        # Python's decoder gives up near its recursion limit (~1,000 levels), well before Go's 10,000:
        # the same refusal with Go's text, a little earlier.
        raise APIError("exceeded max depth", 400) from e
    if _SURROGATE_ESCAPE.search(text):  # only escapes can carry a surrogate into the decoded body
        body = _replace_lone_surrogates(body)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise APIError(f"json: cannot unmarshal {_json_type(body)} into Go value of type api.Request", 400)
    return body


class Fields:
    """Typed access to a decoded body, failing like Go's json.Unmarshal."""

    def __init__(self, body: dict, struct: str):
        self.body = body
        self.struct = struct

    def _fail(self, key: str, value, go_type: str):
        raise APIError(
            f"json: cannot unmarshal {_json_type(value)} into Go struct field {self.struct}.{key} of type {go_type}",
            400,
        )

    def str(self, key: str, default: str = "") -> str:
        v = self.body.get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            self._fail(key, v, "string")
        return v

    def bool(self, key: str, default: bool | None = False) -> bool | None:
        v = self.body.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            self._fail(key, v, "bool")
        return v

    def int(self, key: str, default: int = 0) -> int:
        v = self.body.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            self._fail(key, v, "int")
        return int(v)

    def list(self, key: str, go_type: str) -> list | None:
        v = self.body.get(key)
        if v is None:
            return None
        if not isinstance(v, list):
            self._fail(key, v, go_type)
        return v

    def obj(self, key: str, go_type: str = "map[string]interface {}") -> dict | None:
        v = self.body.get(key)
        if v is None:
            return None
        if not isinstance(v, dict):
            self._fail(key, v, go_type)
        return v

    def model(self) -> str:
        """`model`, or the deprecated `name` when `model` is empty (reference §16.4)."""
        return self.str("model") or self.str("name")

    def keep_alive(self) -> int | None:
        try:
            return parse_keep_alive(self.body.get("keep_alive"))
        except DurationError as e:
            raise APIError(str(e), 400) from e

    def think(self) -> bool | str | None:
        v = self.body.get("think")
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, str) and v in THINK_LEVELS:
            return v
        if isinstance(v, str):
            raise APIError(f'invalid think value: "{v}" (must be "high", "medium", "low", "max", true, or false)', 400)
        self._fail("think", v, "api.ThinkValue")

    def images(self, key: str = "images", struct_field: str | None = None) -> list[bytes]:
        items = self.list(key, "[]api.ImageData") or []
        return [decode_image(img, self, key) for img in items]


def decode_image(img, fields: Fields, key: str) -> bytes:
    if not isinstance(img, str):
        fields._fail(key, img, "api.ImageData")
    data = img.replace("\n", "").replace("\r", "")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        bad = next((i for i, c in enumerate(data) if not (c.isalnum() or c in "+/=")), len(data))
        raise APIError(f"illegal base64 data at input byte {bad}", 400) from e


@dataclass
class Message:
    role: str
    content: str = ""
    thinking: str = ""
    images: list[bytes] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)
    tool_name: str = ""
    tool_call_id: str = ""

    def for_template(self) -> dict:
        """The message as the engine renders it; its images travel with it (the vision engine places them)."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        for key in ("thinking", "tool_calls", "tool_name", "tool_call_id", "images"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        return d


def _tool_call(raw, struct: str) -> dict:
    if not isinstance(raw, dict):
        raise APIError(
            f"json: cannot unmarshal {_json_type(raw)} into Go struct field {struct}.tool_calls of type api.ToolCall",
            400,
        )
    fn = raw.get("function") or {}
    if not isinstance(fn, dict):
        raise APIError(
            f"json: cannot unmarshal {_json_type(fn)} into Go struct field ToolCall.function of type api.ToolCallFunction",
            400,
        )
    args = fn.get("arguments", {})
    if isinstance(args, str):
        # Lenient where Ollama is strict: OpenAI-style histories carry arguments as JSON text.
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise APIError(
                "json: cannot unmarshal string into Go struct field ToolCallFunction.arguments of type api.ToolCallFunctionArguments",
                400,
            ) from e
    if not isinstance(args, dict):
        raise APIError(
            f"json: cannot unmarshal {_json_type(args)} into Go struct field ToolCallFunction.arguments of type api.ToolCallFunctionArguments",
            400,
        )
    call = {"function": {"name": fn.get("name", ""), "arguments": args}}
    if "index" in fn:
        call["function"]["index"] = fn["index"]
    if raw.get("id"):
        call["id"] = raw["id"]
    return call


def parse_messages(fields: Fields) -> list[Message]:
    raw = fields.list("messages", "[]api.Message") or []
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise APIError(
                f"json: cannot unmarshal {_json_type(item)} into Go struct field ChatRequest.messages of type api.Message",
                400,
            )
        f = Fields(item, "Message")
        out.append(
            Message(
                role=f.str("role").lower(),
                content=f.str("content"),
                thinking=f.str("thinking"),
                images=f.images(),
                tool_calls=[_tool_call(tc, "Message") for tc in (f.list("tool_calls", "[]api.ToolCall") or [])],
                tool_name=f.str("tool_name"),
                tool_call_id=f.str("tool_call_id"),
            )
        )
    return out


def check_format(value) -> None:
    if value is None or value == "" or value == "json" or isinstance(value, dict):
        return
    raise APIError(
        f'invalid format: {json.dumps(json.dumps(value))}; expected "json" or a valid JSON Schema object', 500
    )


@dataclass(kw_only=True)
class _GenerationRequest:
    """The fields /api/generate and /api/chat share."""

    model: str
    stream: bool = True
    format: Any = None
    options: dict | None = None
    keep_alive: int | None = None
    keep_alive_given: bool = False
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True
    shift: bool = True


def _generation_fields(f: Fields, body: dict) -> dict:
    return dict(
        model=f.model(),
        stream=f.bool("stream", True),
        format=body.get("format"),
        options=f.obj("options"),
        keep_alive=f.keep_alive(),
        keep_alive_given=body.get("keep_alive") is not None,
        think=f.think(),
        logprobs=f.bool("logprobs"),
        top_logprobs=f.int("top_logprobs"),
        truncate=f.bool("truncate", True),
        shift=f.bool("shift", True),
    )


def _checked(req):
    if not 0 <= req.top_logprobs <= 20:
        raise APIError("top_logprobs must be between 0 and 20", 400)
    return req


@dataclass(kw_only=True)
class GenerateRequest(_GenerationRequest):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] | None = None
    raw: bool = False
    images: list[bytes] = field(default_factory=list)

    @classmethod
    def parse(cls, body: dict) -> "GenerateRequest":
        f = Fields(body, "GenerateRequest")
        context = f.list("context", "[]int")
        if context is not None and not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
            raise APIError("json: cannot unmarshal value into Go struct field GenerateRequest.context of type int", 400)
        return _checked(
            cls(
                prompt=f.str("prompt"),
                suffix=f.str("suffix"),
                system=f.str("system"),
                template=f.str("template"),
                context=context,
                raw=f.bool("raw"),
                images=f.images(),
                **_generation_fields(f, body),
            )
        )


@dataclass(kw_only=True)
class ChatRequest(_GenerationRequest):
    messages: list[Message] = field(default_factory=list)
    tools: list[dict] | None = None

    @classmethod
    def parse(cls, body: dict) -> "ChatRequest":
        f = Fields(body, "ChatRequest")
        return _checked(
            cls(
                messages=parse_messages(f),
                tools=f.list("tools", "api.Tools"),
                **_generation_fields(f, body),
            )
        )
