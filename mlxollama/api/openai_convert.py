"""OpenAI request and response conversion (reference §6), kept apart from the HTTP handlers.

Pure functions over decoded JSON: an OpenAI body becomes the native request (ChatRequest or
GenerateRequest) and its options, with Ollama's conversion rules and error texts; native results
become OpenAI's JSON shapes. The Sanic handlers and SSE writers live in openai.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

from .errors import APIError, dumps
from .protocol import ChatRequest, Fields, GenerateRequest, Message
from .sse import call_id

FINGERPRINT = "fp_ollama"


def error_body(status: int, message: str) -> dict:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# --- request fields --------------------------------------------------------------------------


def go_type(value) -> str:
    """Go's %T of a decoded JSON value, which Ollama's conversion errors print."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


class OpenAIFields(Fields):
    """Typed reads failing with gin's binding text, plus the optional numbers OpenAI uses."""

    def float(self, key: str) -> float | None:
        v = self.body.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self._fail(key, v, "float64")
        return float(v)

    def maybe_int(self, key: str) -> int | None:
        return None if self.body.get(key) is None else self.int(key)


def sampling_options(f: OpenAIFields, *, completion: bool) -> dict:
    """OpenAI sampling fields as native options, with Ollama's defaults: temperature and top_p
    are 1.0 when absent (overriding the Modelfile), as OpenAI's own defaults are."""
    opts: dict = {}
    stop = f.body.get("stop")
    if isinstance(stop, str):
        opts["stop"] = [stop]
    elif isinstance(stop, list):
        if completion:
            for s in stop:
                if not isinstance(s, str):
                    raise APIError(f"invalid type for 'stop' field: {go_type(s)}", 400)
        opts["stop"] = [s for s in stop if isinstance(s, str)]
    max_tokens = f.maybe_int("max_tokens")
    if max_tokens is None and not completion:
        # Ollama reads only max_tokens; newer SDKs send max_completion_tokens instead.
        max_tokens = f.maybe_int("max_completion_tokens")
    if max_tokens is not None:
        opts["num_predict"] = max_tokens
    temperature = f.float("temperature")
    opts["temperature"] = 1.0 if temperature is None else temperature
    seed = f.maybe_int("seed")
    if seed is not None:
        opts["seed"] = seed
    for key in ("frequency_penalty", "presence_penalty"):
        value = f.float(key)
        if value is not None:
            opts[key] = value
        elif completion:
            opts[key] = 0.0
    top_p = f.float("top_p")
    opts["top_p"] = top_p if top_p is not None and not (completion and top_p == 0) else 1.0
    return opts


_IMAGE_PREFIXES = ("data:;base64,",) + tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp"))


def decode_image_url(url: str) -> bytes:
    if url.startswith(("http://", "https://")):
        raise APIError("image URLs are not currently supported, please use base64 encoded data instead", 400)
    prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise APIError("invalid image input", 400)
    try:
        return base64.b64decode(url[len(prefix) :], validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError("invalid image input", 400) from e


def _content_parts(parts: list) -> tuple[str, list[bytes]]:
    """Ollama turns each part into its own message and its Go templates then merge same-role
    neighbours with a blank line; the Jinja templates used here do not merge, so the parts are
    joined into one message the same way up front."""
    texts, images = [], []
    for part in parts:
        if not isinstance(part, dict):
            raise APIError("invalid message format", 400)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise APIError("invalid message format", 400)
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if not isinstance(url, str):
                raise APIError("invalid message format", 400)
            images.append(decode_image_url(url))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise APIError("invalid input_audio format", 400)
            if not isinstance(audio.get("data"), str):
                raise APIError("invalid input_audio format: missing data", 400)
            try:
                images.append(base64.b64decode(audio["data"], validate=True))
            except (binascii.Error, ValueError) as e:
                raise APIError(f"invalid input_audio base64 data: {e}", 400) from e
        else:
            raise APIError("invalid message format", 400)
    return "\n\n".join(texts), images


def _tool_calls_in(raw: list) -> list[dict]:
    calls = []
    for tc in raw:
        if not isinstance(tc, dict):
            raise APIError(
                f"json: cannot unmarshal {go_type(tc)} into Go struct field Message.messages.tool_calls of type openai.ToolCall",
                400,
            )
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        args = fn.get("arguments")
        if not isinstance(args, dict):
            try:
                args = json.loads(args) if isinstance(args, str) else None
            except json.JSONDecodeError:
                args = None
            if not isinstance(args, dict):
                raise APIError("invalid tool call arguments", 400)
        call = {"function": {"name": fn.get("name") or "", "arguments": args}}
        if tc.get("id"):
            call["id"] = tc["id"]
        calls.append(call)
    return calls


def _tool_name_for(raw_messages: list, call_id: str) -> str:
    for m in reversed(raw_messages):  # the last call with that id wins, as in Ollama
        for tc in (m.get("tool_calls") or []) if isinstance(m, dict) else []:
            if isinstance(tc, dict) and tc.get("id") == call_id:
                return (tc.get("function") or {}).get("name") or ""
    return ""


def convert_messages(raw: list) -> list[Message]:
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise APIError(
                f"json: cannot unmarshal {go_type(item)} into Go struct field ChatCompletionRequest.messages of type openai.Message",
                400,
            )
        f = OpenAIFields(item, "Message")
        role = f.str("role").lower()
        content = item.get("content")
        raw_calls = f.list("tool_calls", "[]openai.ToolCall")
        tool_call_id = f.str("tool_call_id")
        tool_name = ""
        if role == "tool":
            tool_name = f.str("name") or (_tool_name_for(raw, tool_call_id) if tool_call_id else "")
        if isinstance(content, str):
            text, images = content, []
        elif isinstance(content, list):
            text, images = _content_parts(content)
        elif raw_calls is None:  # content may only be missing on a tool-calling turn
            raise APIError(f"invalid message content type: {go_type(content)}", 400)
        else:
            text, images = "", []
        out.append(
            Message(
                role=role,
                content=text,
                thinking=f.str("reasoning"),
                images=images,
                tool_calls=_tool_calls_in(raw_calls or []),
                tool_name=tool_name,
                tool_call_id=tool_call_id,
            )
        )
    return out


def response_format(rf: dict | None):
    if not rf:
        return None
    kind = str(rf.get("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and isinstance(rf.get("json_schema"), dict):
        return rf["json_schema"].get("schema")
    return None


_EFFORT = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def think_from_effort(f: OpenAIFields):
    reasoning = f.obj("reasoning", "openai.Reasoning")
    if reasoning is not None:  # the object wins over reasoning_effort, even with no effort in it
        effort = reasoning.get("effort") or ""
        if not isinstance(effort, str):
            raise APIError(
                f"json: cannot unmarshal {go_type(effort)} into Go struct field Reasoning.reasoning.effort of type string",
                400,
            )
    else:
        effort = f.str("reasoning_effort")
    if not effort:
        return None
    if effort not in _EFFORT:
        raise APIError(
            f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")',
            400,
        )
    return _EFFORT[effort]


def _tools(f: OpenAIFields) -> list[dict]:
    tools = f.list("tools", "[]api.Tool") or []
    for t in tools:
        if not isinstance(t, dict):
            f._fail("tools", t, "api.Tool")
    return tools


def chat_request(body: dict) -> tuple[ChatRequest, dict, bool]:
    """(native request, OpenAI sampling overrides, include_usage)."""
    f = OpenAIFields(body, "ChatCompletionRequest")
    raw_messages = f.list("messages", "[]openai.Message") or []
    if not raw_messages:
        raise APIError("[] is too short - 'messages'", 400)
    stream_options = f.obj("stream_options", "openai.StreamOptions") or {}
    top_logprobs = f.int("top_logprobs")
    req = ChatRequest(
        model=f.str("model"),
        messages=convert_messages(raw_messages),
        tools=_tools(f) or None,  # tool_choice is ignored, as by Ollama
        stream=f.bool("stream"),  # OpenAI semantics: off unless asked
        format=response_format(f.obj("response_format", "openai.ResponseFormat")),
        think=think_from_effort(f),
        logprobs=bool(f.bool("logprobs")),
        top_logprobs=top_logprobs,
    )
    if not 0 <= top_logprobs <= 20:
        raise APIError("top_logprobs must be between 0 and 20", 400)
    return req, sampling_options(f, completion=False), bool(stream_options.get("include_usage"))


# --- response shapes -------------------------------------------------------------------------


def openai_logprobs(entries: list[dict]) -> list[dict]:
    """Native entries already have OpenAI's token/logprob/bytes; OpenAI always carries
    `bytes` and `top_logprobs`, which the native API omits when empty."""
    out = []
    for e in entries:
        item = {"token": e.get("token", ""), "logprob": e.get("logprob", 0.0), "bytes": e.get("bytes")}
        item["top_logprobs"] = [
            {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0), "bytes": t.get("bytes")}
            for t in e.get("top_logprobs") or []
        ]
        out.append(item)
    return out


class ToolCallNumbering:
    """Native tool calls as OpenAI's: arguments as JSON text, a type, an id and a stream-wide index."""

    def __init__(self) -> None:
        self.count = 0

    def convert(self, calls: list[dict]) -> list[dict]:
        out = []
        for tc in calls:
            fn = tc.get("function") or {}
            index = fn.get("index", self.count)
            self.count += 1
            out.append(
                {
                    "id": tc.get("id") or call_id(),
                    "index": index,
                    "type": "function",
                    "function": {"name": fn.get("name", ""), "arguments": dumps(fn.get("arguments") or {})},
                }
            )
        return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# --- completions -----------------------------------------------------------------------------


def legacy_logprobs(entries: list[dict], offset: int) -> tuple[dict, int]:
    """Native entries in the legacy completions shape (parallel lists)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e.get("token", ""))
        out["token_logprobs"].append(e.get("logprob", 0.0))
        out["top_logprobs"].append({t.get("token", ""): t.get("logprob", 0.0) for t in e.get("top_logprobs") or []})
        out["text_offset"].append(offset)
        offset += len(e.get("token", ""))
    return out, offset


def completion_request(body: dict) -> tuple[GenerateRequest, bool]:
    """(native /api/generate request, include_usage). The native body is parsed as /api/generate
    parses its own, as Ollama's middleware does, so its checks and texts stay native."""
    f = OpenAIFields(body, "CompletionRequest")
    stream = bool(f.bool("stream"))
    stream_options = f.obj("stream_options", "openai.StreamOptions") or {}
    native = {
        "model": f.str("model"),
        "prompt": f.str("prompt"),
        "suffix": f.str("suffix"),
        "stream": stream,
        "options": sampling_options(f, completion=True),
    }
    logprobs = f.maybe_int("logprobs")
    if logprobs is not None and logprobs > 0:
        native["logprobs"] = True
        native["top_logprobs"] = logprobs
    return GenerateRequest.parse(native), bool(stream_options.get("include_usage"))


# --- embeddings ------------------------------------------------------------------------------


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embed_request(body: dict) -> tuple[str, list[str], int, str]:
    """(model, texts, dimensions, encoding_format) of a /v1/embeddings body."""
    f = OpenAIFields(body, "EmbedRequest")
    model = f.str("model")
    dimensions = f.int("dimensions")
    encoding = f.str("encoding_format")
    if encoding and encoding.lower() not in ("float", "base64"):
        raise APIError(f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64'].", 400)
    raw = body.get("input")
    if raw == "":
        raw = [""]
    if raw is None or raw == []:
        raise APIError("invalid input", 400)
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        texts = list(raw)
    else:  # token arrays are not supported, as in Ollama
        raise APIError("invalid input type", 400)
    if not model:
        raise APIError("model '' not found", 404)
    return model, texts, dimensions, encoding.lower()


def embedding_list(model: str, vectors: list[list[float]], prompt_tokens: int, as_base64: bool) -> dict:
    data = [
        {"object": "embedding", "embedding": _base64_floats(v) if as_base64 else v, "index": i}
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
