"""Anthropic Messages API: POST /v1/messages, translated onto the native chat request and engine.

Follows Ollama's anthropic layer (system and content blocks to native messages, tool_use and
tool_result to native tool calls and tool messages, `thinking` to `think`), with Anthropic's SSE
event sequence and error envelope.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import secrets
import time

from sanic import Blueprint

from ..engine.jobs import DoneEvent, ErrorEvent, TextEvent
from ..errors import StatusError
from ..parsers.stops import StopMatcher
from . import sse
from .errors import APIError, dumps, json_body
from .openai_convert import OpenAIFields, go_type
from .protocol import ChatRequest, Fields, Message, parse_body
from .service import Generation, prepare_chat, start_generation
from .state import state_of

bp = Blueprint("anthropic")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict:
    return {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_" + secrets.token_hex(12),
    }


def anthropic_error(status: int, message: str):
    return json_body(error_body(status, message), status)


def anthropic_errors(handler):
    @functools.wraps(handler)
    async def wrapped(request, *args, **kwargs):
        try:
            return await handler(request, *args, **kwargs)
        except StatusError as e:
            return anthropic_error(e.status, e.message)

    return wrapped


# --- request ---------------------------------------------------------------------------------


def _image(source) -> bytes:
    if not isinstance(source, dict):
        raise APIError("invalid image source", 400)
    if source.get("type") != "base64":
        raise APIError(f"invalid image source type: {source.get('type') or ''}. Only base64 images are supported.", 400)
    try:
        return base64.b64decode(source.get("data") or "", validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(f"invalid base64 image data: {e}", 400) from e


def _tool_result_content(content) -> tuple[str, list[bytes]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text, images = [], []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "image":
            images.append(_image(block.get("source")))
    return "".join(text), images


def _blocks(content) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise APIError(
            f"json: cannot unmarshal {go_type(content)} into Go struct field MessageParam.messages.content of type []anthropic.ContentBlock",
            400,
        )
    return content


def convert_message(raw: dict, tool_names: dict[str, str]) -> list[Message]:
    """One Anthropic message → native messages: tool results become `tool` messages (before the
    user's text, which answers them), everything else one message of the same role."""
    role = str(raw.get("role") or "").lower()
    text, images, calls, thinking, results = [], [], [], "", []
    for block in _blocks(raw.get("content")):
        kind = block.get("type")
        # Its string fields are refused like Go's decoder when they hold another JSON type.
        fields = Fields(block, "ContentBlock.messages.content")
        if kind == "text":
            text.append(fields.str("text"))
        elif kind == "image":
            images.append(_image(block.get("source")))
        elif kind == "tool_use":
            if not fields.str("id"):
                raise APIError("tool_use block missing required 'id' field", 400)
            if not fields.str("name"):
                raise APIError("tool_use block missing required 'name' field", 400)
            tool_names[block["id"]] = block["name"]
            calls.append(
                {"id": block["id"], "function": {"name": block["name"], "arguments": block.get("input") or {}}}
            )
        elif kind == "tool_result":
            content, result_images = _tool_result_content(block.get("content"))
            call_id = fields.str("tool_use_id")
            # Ollama leaves tool_name empty here; templates that print the tool's name need it.
            results.append(
                Message(
                    role="tool",
                    content=content,
                    images=result_images,
                    tool_call_id=call_id,
                    tool_name=tool_names.get(call_id, ""),
                )
            )
        elif kind == "thinking":
            thinking = fields.str("thinking")
        # redacted_thinking, documents and server tool blocks carry nothing a local model can use
    out = results if role == "user" else []
    if text or images or calls or thinking:
        out.append(Message(role=role, content="".join(text), images=images, tool_calls=calls, thinking=thinking))
    if role != "user":
        out.extend(results)
    return out


def _tool(raw) -> dict | None:
    if not isinstance(raw, dict):
        raise APIError(
            f"json: cannot unmarshal {go_type(raw)} into Go struct field MessagesRequest.tools of type anthropic.Tool",
            400,
        )
    if str(raw.get("type") or "").startswith("web_search"):
        return None  # Ollama runs these through ollama.com; a local server cannot search
    schema = raw.get("input_schema")
    if schema is not None and not isinstance(schema, dict):
        raise APIError(
            f'invalid input_schema for tool "{raw.get("name", "")}": json: cannot unmarshal '
            f"{go_type(schema)} into Go value of type api.ToolFunctionParameters",
            400,
        )
    return {
        "type": "function",
        "function": {
            "name": raw.get("name") or "",
            "description": raw.get("description") or "",
            "parameters": schema or {},
        },
    }


def _think(f: OpenAIFields):
    thinking = f.obj("thinking", "anthropic.ThinkingConfig") or {}
    if thinking.get("type") == "enabled":
        return True
    if thinking.get("type") == "disabled":
        return False
    effort = str((f.obj("output_config", "anthropic.OutputConfig") or {}).get("effort") or "").strip().lower()
    effort = "high" if effort == "xhigh" else effort
    return effort if effort in ("low", "medium", "high", "max") else None


def _content_length(content) -> int:
    """Bytes of a system or message content as Ollama's countAnyContent counts them: text and
    thinking of each block, whole JSON for tool_use and tool_result blocks."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if not isinstance(content, list):
        return len(dumps(content).encode())
    total = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                total += len(block[key].encode())
        if block.get("type") in ("tool_use", "tool_result"):
            total += len(dumps(block).encode())
    return total


def _estimate_tokens(body: dict) -> int:
    """Ollama's len/4 guess (EstimateCountTokens): what count_tokens answers, and the input count
    message_start reports before the real prompt count is known."""
    total = _content_length(body.get("system"))
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    for m in messages:
        if isinstance(m, dict):
            total += len(str(m.get("role") or "").encode()) + _content_length(m.get("content"))
    for t in body.get("tools") if isinstance(body.get("tools"), list) else []:
        if isinstance(t, dict):
            total += sum(len(str(t.get(k) or "").encode()) for k in ("name", "description"))
            total += len(dumps(t["input_schema"]).encode()) if t.get("input_schema") is not None else 0
    tokens = total // 4
    return 1 if tokens == 0 and (messages or body.get("system") is not None) else tokens


class MessagesRequest:
    def __init__(self, body: dict):
        f = OpenAIFields(body, "MessagesRequest")
        self.model = f.str("model")
        max_tokens = f.int("max_tokens")
        raw_messages = f.list("messages", "[]anthropic.MessageParam") or []
        self.stream = bool(f.bool("stream"))
        if not self.model:
            raise APIError("model is required", 400)
        if max_tokens <= 0:
            raise APIError("max_tokens is required and must be positive", 400)
        if not raw_messages:
            raise APIError("messages is required", 400)
        messages: list[Message] = []
        system = body.get("system")
        if isinstance(system, list):
            system = "".join(b.get("text") or "" for b in system if isinstance(b, dict) and b.get("type") == "text")
        if isinstance(system, str) and system:
            messages.append(Message(role="system", content=system))
        tool_names: dict[str, str] = {}
        for raw in raw_messages:
            if not isinstance(raw, dict):
                raise APIError(
                    f"json: cannot unmarshal {go_type(raw)} into Go struct field MessagesRequest.messages of type anthropic.MessageParam",
                    400,
                )
            messages.extend(convert_message(raw, tool_names))
        self.overrides: dict = {"num_predict": max_tokens}
        for key, option in (("temperature", "temperature"), ("top_p", "top_p")):
            value = f.float(key)
            if value is not None:
                self.overrides[option] = value
        if f.maybe_int("top_k") is not None:
            self.overrides["top_k"] = f.int("top_k")
        stops = f.list("stop_sequences", "[]string") or []
        for s in stops:
            if not isinstance(s, str):
                f._fail("stop_sequences", s, "string")
        # Matched here rather than in the engine: Anthropic reports which sequence stopped the
        # answer, and the engine's done_reason cannot tell a stop string from the end token.
        self.stop_sequences = [s for s in stops if s]
        tools = [t for t in (_tool(t) for t in f.list("tools", "[]anthropic.Tool") or []) if t]
        self.native = ChatRequest(
            model=self.model, messages=messages, tools=tools or None, stream=self.stream, think=_think(f)
        )
        self.estimated_input = _estimate_tokens(body)


# --- response --------------------------------------------------------------------------------


class _Stops(StopMatcher):
    """The engine's stop matcher, remembering which sequence matched."""

    matched: str | None = None

    def feed(self, text: str) -> str:
        seen = self.pending + text
        out = super().feed(text)
        if self.stopped and self.matched is None:
            self.matched = next((s for s in self.stops if seen.startswith(s, len(out))), "")
        return out


class MessageWriter:
    """Engine events → Anthropic stream events; the same events build the non-streamed message, so
    both shapes always agree. Blocks follow Ollama's converter: thinking, then text, each tool call
    a complete tool_use block (one input_json_delta with the whole arguments)."""

    def __init__(self, model: str, estimated_input: int, stop_sequences: list[str]):
        self.id = "msg_" + secrets.token_hex(12)
        self.model = model
        self.estimated_input = estimated_input
        self.stops = _Stops(stop_sequences) if stop_sequences else None
        self.content: list[dict] = []
        self.open: str | None = None  # "thinking" or "text" while such a block is open
        self.thinking_done = False
        self.tool_used = False
        self.tokens = 0

    @property
    def index(self) -> int:
        return len(self.content) - 1

    def start(self) -> str:
        return sse.event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": self.estimated_input, "output_tokens": 0},
                },
            },
        )

    def _open(self, block: dict) -> str:
        self.content.append(json.loads(dumps(block)))
        return sse.event(
            "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )

    def _delta(self, delta: dict) -> str:
        return sse.event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def _close(self) -> str:
        self.open = None
        return sse.event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _text(self, text: str) -> list[str]:
        out = []
        if self.open == "thinking":
            self.thinking_done = True
            out.append(self._close())
        if self.open != "text":
            self.open = "text"
            out.append(self._open({"type": "text", "text": ""}))
        self.content[-1]["text"] += text
        out.append(self._delta({"type": "text_delta", "text": text}))
        return out

    def feed(self, ev: TextEvent) -> list[str]:
        out = []
        self.tokens += len(ev.logprobs or [])
        text = ev.text
        if self.stops is not None:
            text = self.stops.feed(text)
        if ev.thinking and not self.thinking_done:
            if self.open == "text":
                out.append(self._close())
            if self.open != "thinking":
                self.open = "thinking"
                # `signature` is empty: local reasoning is not signed, but SDK types expect the key.
                out.append(self._open({"type": "thinking", "thinking": "", "signature": ""}))
            self.content[-1]["thinking"] += ev.thinking
            out.append(self._delta({"type": "thinking_delta", "thinking": ev.thinking}))
        if text:
            out.extend(self._text(text))
        for tc in ev.tool_calls or []:
            if self.open == "thinking":
                self.thinking_done = True
            if self.open:
                out.append(self._close())
            fn = tc.get("function") or {}
            args = fn.get("arguments") or {}
            out.append(
                self._open(
                    {"type": "tool_use", "id": tc.get("id") or sse.call_id(), "name": fn.get("name", ""), "input": {}}
                )
            )
            self.content[-1]["input"] = args
            out.append(self._delta({"type": "input_json_delta", "partial_json": dumps(args)}))
            out.append(self._close())
            self.tool_used = True
        return out

    @property
    def stopped(self) -> bool:
        return self.stops is not None and self.stops.stopped

    def finish(self, done: DoneEvent | None, gen: Generation) -> tuple[list[str], dict]:
        """Closing events and the final fields. `done` is None when a stop sequence cut the
        generation short: the engine never reports then, so output tokens are the ones counted."""
        out = []
        if self.stops is not None and not self.stops.stopped:
            tail = self.stops.flush()
            if tail:
                out.extend(self._text(tail))
        if self.open:
            out.append(self._close())
        if self.tool_used:
            reason = "tool_use"
        elif self.stopped:
            reason = "stop_sequence"
        elif done is None:
            reason = None
        else:
            reason = {"stop": "end_turn", "length": "max_tokens", "": None}.get(done.done_reason, "stop_sequence")
        if done is not None:
            m = gen.metrics()
            usage = {"input_tokens": m.prompt_eval_count, "output_tokens": m.eval_count}
        else:
            usage = {"input_tokens": self.estimated_input, "output_tokens": self.tokens}
        final = {"stop_reason": reason, "stop_sequence": self.stops.matched if self.stopped else None, "usage": usage}
        out.append(
            sse.event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": final["stop_reason"], "stop_sequence": final["stop_sequence"]},
                    "usage": usage,
                },
            )
        )
        out.append(sse.event("message_stop", {"type": "message_stop"}))
        return out, final

    def message(self, final: dict) -> dict:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content,
            **final,
        }


async def _next(gen: Generation, writer: MessageWriter):
    """The next engine event, or None once a stop sequence has ended the answer."""
    if writer.stopped:
        gen.close()
        return None
    return await gen.next_event()


@bp.post("/v1/messages")
@anthropic_errors
async def messages(request):
    started = time.perf_counter_ns()
    state = state_of(request)
    req = MessagesRequest(parse_body(request.body))
    spec = await state.lookup(req.model, not_found="model '{name}' not found")
    if req.native.think not in (None, False) and "thinking" not in spec.capabilities:
        # Ollama relaxes thinking for this API: agents such as Claude Code ask for it on every model.
        req.native.think = None
    prompt, opts = prepare_chat(state, spec, req.native, req.overrides)
    # Logprobs are only asked for to count output tokens when a stop sequence ends the answer early.
    gen = await start_generation(
        state, spec, prompt, opts, keep_alive=None, started=started, logprobs=bool(req.stop_sequences), top_logprobs=0
    )
    writer = MessageWriter(req.model, req.estimated_input, req.stop_sequences)
    try:
        event = await gen.next_event()
        if isinstance(event, ErrorEvent):
            return anthropic_error(event.status, event.message)
        if not req.stream:
            while isinstance(event, TextEvent):
                writer.feed(event)
                event = await _next(gen, writer)
            if isinstance(event, ErrorEvent):
                return anthropic_error(event.status, event.message)
            _, final = writer.finish(event, gen)
            return json_body(writer.message(final))
        response = await sse.open_stream(request)
        await response.send(writer.start())
        while isinstance(event, TextEvent):
            for chunk in writer.feed(event):
                await response.send(chunk)
            event = await _next(gen, writer)
        if isinstance(event, ErrorEvent):
            await response.send(
                sse.event(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": _ERROR_TYPES.get(event.status, "api_error"), "message": event.message},
                    },
                )
            )
        else:
            events, _ = writer.finish(event, gen)
            for chunk in events:
                await response.send(chunk)
        await response.eof()
    finally:
        gen.close()


@bp.post("/v1/messages/count_tokens")
@anthropic_errors
async def count_tokens(request):
    """Claude Code sizes its context with this. Ollama's own server has no such route (its Claude
    Desktop gateway answers it with the len/4 estimate); the estimate is what we answer too, since
    an exact count would need the model loaded."""
    body = parse_body(request.body)
    f = OpenAIFields(body, "CountTokensRequest")
    model = f.str("model")
    f.list("messages", "[]anthropic.MessageParam")
    if not model:
        raise APIError("model is required", 400)
    await state_of(request).lookup(model, not_found="model '{name}' not found")
    return json_body({"input_tokens": _estimate_tokens(body)})
