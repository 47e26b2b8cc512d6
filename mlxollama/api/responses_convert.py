"""OpenAI Responses API conversion (POST /v1/responses), kept apart from the HTTP handler.

Stateless, as Ollama serves it: `input` (a string or items) and `instructions` become the native
ChatRequest; engine events become the Responses object or its SSE event sequence. Ollama's rules
and texts: temperature defaults to 1.0, top_p to the model's, `reasoning.effort` maps to `think`,
`text.format` json_schema becomes `format`, tool_choice is echoed as "auto" and not acted on, and
no response is stored (`previous_response_id` and `conversation` are not followed).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

from .errors import APIError, dumps
from .openai_convert import OpenAIFields, decode_image_url, think_from_effort
from .protocol import ChatRequest, Message
from .sse import call_id

_STRUCT = "ResponsesRequest"


def _field(body: dict, key: str, kind: type | tuple, go_target: str):
    """A typed optional field, failing with gin's binding text."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool:
        ok = False
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise APIError(
            f"json: cannot unmarshal {_go_json_kind(value)} into Go struct field {_STRUCT}.{key} of type {go_target}",
            400,
        )
    return value


def _go_json_kind(value) -> str:
    """The JSON kind Go's decoder names for a value it cannot put into a field."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# --- request ---------------------------------------------------------------------------------


def _content(raw, where: str) -> tuple[str, list[bytes]]:
    """Message content: a string, or input_text / output_text / input_image / input_file parts."""
    if raw is None:
        return "", []
    if isinstance(raw, str):
        return raw, []
    if not isinstance(raw, list):
        raise APIError(
            f"{where} must be a string or array: json: cannot unmarshal {_go_json_kind(raw)} "
            "into Go value of type []json.RawMessage",
            400,
        )
    text, images = [], []
    for i, part in enumerate(raw):
        if not isinstance(part, dict):
            raise APIError(
                f"{where}[{i}]: json: cannot unmarshal {_go_json_kind(part)} into Go value of type "
                'struct { Type string "json:\\"type\\"" }',
                400,
            )
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            value = part.get("text")
            text.append(value if isinstance(value, str) else "")
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and url:  # a file_id cannot be resolved here, as in Ollama
                images.append(decode_image_url(url))
        elif kind == "input_file":
            raise APIError("file inputs are not currently supported", 400)
        else:
            raise APIError(f"{where}[{i}]: unknown content type: {kind if isinstance(kind, str) else ''}", 400)
    return "".join(text), images


def _arguments(raw) -> dict:
    if raw in (None, ""):
        return {}
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise APIError(f"failed to parse function call arguments: {e.msg}", 400) from e
        if isinstance(value, dict):
            return value
        raise APIError(
            f"failed to parse function call arguments: json: cannot unmarshal {_go_json_kind(value)} "
            "into Go value of type api.ToolCallFunctionArguments",
            400,
        )
    raise APIError(
        f"input: json: cannot unmarshal {_go_json_kind(raw)} into Go struct field "
        "ResponsesFunctionCall.arguments of type string",
        400,
    )


def _item_type(item: dict) -> str:
    kind = item.get("type")
    if kind in (None, "") and item.get("role"):
        return "message"  # the shorthand {"role": ..., "content": ...}
    return kind if isinstance(kind, str) else ""


def convert_input(raw) -> list[Message]:
    """`input` as native messages, with Ollama's merging: reasoning items attach their text to the
    next assistant turn, function calls join the assistant message before them, and an assistant
    message replayed between a call and its output folds into the call's message."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [Message(role="user", content=raw)]
    if not isinstance(raw, list):
        raise APIError(
            f"input must be a string or array: json: cannot unmarshal {_go_json_kind(raw)} "
            "into Go value of type []json.RawMessage",
            400,
        )
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise APIError(
                f"input[{i}]: json: cannot unmarshal {_go_json_kind(item)} into Go value of type "
                'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }',
                400,
            )
        kind = _item_type(item)
        if kind not in ("message", "function_call", "function_call_output", "reasoning", "web_search_call"):
            raise APIError(
                f"input[{i}]: "
                + (
                    f"unknown input item type: {json.dumps(kind)}"
                    if kind
                    else "input item missing required 'type' field"
                ),
                400,
            )
        items.append((kind, item))

    messages: list[Message] = []
    names: dict[str, str] = {}  # call id → function name, for templates that print the tool's name
    pending_thinking = ""
    for i, (kind, item) in enumerate(items):
        if kind == "reasoning":
            content = item.get("encrypted_content")
            # Ollama hands its reasoning back as plain text in encrypted_content.
            pending_thinking = content if isinstance(content, str) else ""
        elif kind == "message":
            role = item.get("role") if isinstance(item.get("role"), str) else ""
            text, images = _content(item.get("content"), f"input[{i}]: content")
            msg = Message(role=role, content=text, images=images)
            if role == "assistant" and pending_thinking:
                msg.thinking, pending_thinking = pending_thinking, ""
            following = items[i + 1] if i + 1 < len(items) else None
            answered = following[1].get("call_id") if following and following[0] == "function_call_output" else ""
            last = messages[-1] if messages else None
            if (
                role == "assistant"
                and answered
                and last is not None
                and last.role == "assistant"
                and any(tc.get("id") == answered for tc in last.tool_calls)
            ):
                if last.content and msg.content:
                    last.content += "\n"
                last.content += msg.content
                last.images.extend(msg.images)
                if msg.thinking:
                    last.thinking = msg.thinking
                continue
            messages.append(msg)
        elif kind == "function_call":
            name = item.get("name") if isinstance(item.get("name"), str) else ""
            cid = item.get("call_id") if isinstance(item.get("call_id"), str) else ""
            call = {"id": cid, "function": {"name": name, "arguments": _arguments(item.get("arguments"))}}
            if not cid:
                del call["id"]
            names[cid] = name
            if messages and messages[-1].role == "assistant":
                messages[-1].tool_calls.append(call)
                target = messages[-1]
            else:
                target = Message(role="assistant", tool_calls=[call])
                messages.append(target)
            if pending_thinking:
                target.thinking, pending_thinking = pending_thinking, ""
        elif kind == "function_call_output":
            cid = item.get("call_id") if isinstance(item.get("call_id"), str) else ""
            output = item.get("output")
            if isinstance(output, list):
                text, images = _content(output, f"input[{i}]: output")
            elif isinstance(output, str) or output is None:
                text, images = output or "", []
            else:
                raise APIError(
                    f"input[{i}]: output must be a string or array: json: cannot unmarshal "
                    f"{_go_json_kind(output)} into Go value of type []json.RawMessage",
                    400,
                )
            messages.append(
                Message(role="tool", content=text, images=images, tool_call_id=cid, tool_name=names.get(cid, ""))
            )
        # web_search_call items are history metadata: the assistant message after one holds its result
    if pending_thinking:
        messages.append(Message(role="assistant", thinking=pending_thinking))
    return messages


def _expand_tool(tool, prefix: str = "") -> list[dict]:
    """A Responses tool (flat: name/description/parameters at the top) as native tools. A
    `namespace` groups member functions; they become flat tools named `namespace.member`."""
    if not isinstance(tool, dict):
        raise APIError(
            f"json: cannot unmarshal {_go_json_kind(tool)} into Go struct field {_STRUCT}.tools of type "
            "openai.ResponsesTool",
            400,
        )
    kind = tool.get("type") if isinstance(tool.get("type"), str) else ""
    name = tool.get("name") if isinstance(tool.get("name"), str) else ""
    if kind == "namespace":
        inner = prefix + name + "." if name else prefix
        members = tool.get("tools") or []
        if not isinstance(members, list):
            raise APIError(
                f"json: cannot unmarshal {_go_json_kind(members)} into Go struct field "
                "ResponsesTool.tools.tools of type []openai.ResponsesTool",
                400,
            )
        return [t for member in members for t in _expand_tool(member, inner)]
    params = tool.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise APIError(
            f"json: cannot unmarshal {_go_json_kind(params)} into Go struct field "
            "ResponsesTool.tools.parameters of type map[string]interface {}",
            400,
        )
    description = tool.get("description") if isinstance(tool.get("description"), str) else ""
    full = name if not prefix or name.startswith(prefix) else prefix + name
    return [{"type": kind, "function": {"name": full, "description": description, "parameters": params or {}}}]


def convert_tools(raw: list) -> list[dict]:
    """Ollama turns a `web_search` tool into its own cloud search loop; a local server cannot
    search, so that tool is left out (as the Anthropic layer leaves out web_search tools)."""
    tools = []
    for t in raw:
        if isinstance(t, dict) and t.get("type") == "web_search":
            continue
        tools.extend(_expand_tool(t))
    return tools


@dataclass
class ResponsesRequest:
    """A parsed /v1/responses body: the native request, OpenAI's option overrides, and what the
    Responses object echoes back."""

    native: ChatRequest
    overrides: dict
    instructions: str = ""
    tools: list = field(default_factory=list)
    text_format: dict = field(default_factory=lambda: {"type": "text"})
    reasoning: dict | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_output_tokens: int | None = None
    truncation: str = "disabled"
    background: bool = False

    @property
    def stream(self) -> bool:
        return bool(self.native.stream)


def responses_request(body: dict) -> ResponsesRequest:
    model = _field(body, "model", str, "string") or ""
    instructions = _field(body, "instructions", str, "string") or ""
    stream = _field(body, "stream", bool, "bool")
    background = _field(body, "background", bool, "bool") or False
    temperature = _field(body, "temperature", (int, float), "float64")
    top_p = _field(body, "top_p", (int, float), "float64")
    max_output = body.get("max_output_tokens")
    if max_output is not None and (
        isinstance(max_output, bool)
        or not isinstance(max_output, (int, float))
        or (isinstance(max_output, float) and not max_output.is_integer())
    ):
        raise APIError(
            f"json: cannot unmarshal {_go_json_kind(max_output)} into Go struct field "
            f"{_STRUCT}.max_output_tokens of type int",
            400,
        )
    truncation = _field(body, "truncation", str, "string")
    reasoning = _field(body, "reasoning", dict, "openai.ResponsesReasoning")
    text = _field(body, "text", dict, "openai.ResponsesText")
    raw_tools = _field(body, "tools", list, "[]openai.ResponsesTool") or []

    messages = convert_input(body.get("input"))
    if instructions:
        messages.insert(0, Message(role="system", content=instructions))

    overrides: dict = {"temperature": 1.0 if temperature is None else float(temperature)}
    if top_p is not None:  # Ollama leaves top_p to the model when absent
        overrides["top_p"] = float(top_p)
    if max_output is not None:
        overrides["num_predict"] = int(max_output)

    text_format = {"type": "text"}
    fmt = None
    if text is not None:
        raw_format = text.get("format")
        if raw_format is not None and not isinstance(raw_format, dict):
            raise APIError(
                f"json: cannot unmarshal {_go_json_kind(raw_format)} into Go struct field "
                "ResponsesText.text.format of type openai.ResponsesTextFormat",
                400,
            )
        if raw_format:
            text_format = {
                k: raw_format[k] for k in ("type", "name", "schema", "strict") if raw_format.get(k) is not None
            }
            if raw_format.get("type") == "json_schema" and raw_format.get("schema") is not None:
                fmt = raw_format["schema"]

    tools = convert_tools(raw_tools)
    native = ChatRequest(
        model=model,
        messages=messages,
        tools=tools or None,
        stream=bool(stream),
        format=fmt,
        think=think_from_effort(OpenAIFields(body, _STRUCT)),
    )
    echo_reasoning = None
    if reasoning and (reasoning.get("effort") or reasoning.get("summary")):
        echo_reasoning = {"effort": reasoning.get("effort") or None, "summary": reasoning.get("summary") or None}
    return ResponsesRequest(
        native=native,
        overrides=overrides,
        instructions=instructions,
        tools=raw_tools,
        text_format=text_format,
        reasoning=echo_reasoning,
        temperature=overrides["temperature"],
        top_p=float(top_p) if top_p is not None else 1.0,
        max_output_tokens=int(max_output) if max_output is not None else None,
        truncation=truncation or "disabled",
        background=background,
    )


# --- response --------------------------------------------------------------------------------


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)] if status == "completed" else [],
    }


def _reasoning_item(item_id: str, thinking: str) -> dict:
    # Local reasoning is not encrypted: Ollama returns it as plain text so clients can send it back.
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": thinking}],
        "encrypted_content": thinking,
    }


def _call_item(item_id: str, call: dict, status: str = "completed") -> dict:
    fn = call.get("function") or {}
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or call_id(),
        "name": fn.get("name", ""),
        "arguments": dumps(fn.get("arguments") or {}),
    }


def responses_usage(prompt_tokens: int, output_tokens: int) -> dict:
    return {
        "input_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "total_tokens": prompt_tokens + output_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


class ResponseBuilder:
    """Engine events → a Responses object, or the Responses SSE events (Ollama's converter: the
    reasoning item first, then each tool call as a complete function_call item, or else one
    message item; text after a tool call is dropped). `sequence_number` counts every event."""

    def __init__(self, req: ResponsesRequest, model: str):
        self.req = req
        self.model = model
        self.id = f"resp_{random.randrange(999999)}"
        self.item_id = f"msg_{random.randrange(999999)}"
        self.sequence = 0
        self.output_index = 0
        self.items: list[dict] = []  # completed items before the message, in output order
        self.thinking = ""
        self.reasoning_id = ""
        self.text = ""
        self.text_started = False
        self.calls_sent = False

    # the response object -----------------------------------------------------------------

    def response(self, status: str, output: list, usage: dict | None) -> dict:
        tools = [
            {
                "type": t.get("type"),
                "name": t.get("name"),
                "description": t.get("description"),
                "strict": t.get("strict"),
                "parameters": t.get("parameters"),
            }
            for t in self.req.tools
            if isinstance(t, dict)
        ]
        return {
            "id": self.id,
            "object": "response",
            "created_at": int(time.time()),
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": None,
            "instructions": self.req.instructions or None,
            "output": output,
            "error": None,
            "tools": tools,
            "tool_choice": "auto",
            "truncation": self.req.truncation,
            "parallel_tool_calls": True,
            "text": {"format": self.req.text_format},
            "top_p": self.req.top_p,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": self.req.temperature,
            "reasoning": self.req.reasoning,
            "usage": usage,
            "max_output_tokens": self.req.max_output_tokens,
            "max_tool_calls": None,
            "store": False,
            "background": self.req.background,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def whole(self, text: str, thinking: str, calls: list, prompt_tokens: int, output_tokens: int) -> dict:
        """The non-streamed reply."""
        output = []
        if thinking:
            output.append(_reasoning_item(f"rs_{self.id}", thinking))
        if calls:
            output.extend(_call_item(f"fc_{self.id}_{i}", c) for i, c in enumerate(calls))
        else:
            output.append(_message_item(self.item_id, text))
        return self.response("completed", output, responses_usage(prompt_tokens, output_tokens))

    # streaming ---------------------------------------------------------------------------

    def _event(self, kind: str, **data) -> tuple[str, dict]:
        data = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return kind, data

    def start(self) -> list[tuple[str, dict]]:
        return [
            self._event("response.created", response=self.response("in_progress", [], None)),
            self._event("response.in_progress", response=self.response("in_progress", [], None)),
        ]

    def _finish_reasoning(self) -> list[tuple[str, dict]]:
        if not self.reasoning_id:
            return []
        item = _reasoning_item(self.reasoning_id, self.thinking)
        index = self.output_index
        events = [
            self._event(
                "response.reasoning_summary_text.done",
                item_id=self.reasoning_id,
                output_index=index,
                summary_index=0,
                text=self.thinking,
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]
        self.items.append(item)
        self.reasoning_id, self.thinking = "", ""
        self.output_index += 1
        return events

    def feed(self, thinking: str, text: str, calls: list) -> list[tuple[str, dict]]:
        events = []
        if thinking:
            if not self.reasoning_id:
                self.reasoning_id = f"rs_{random.randrange(999999)}"
                events.append(
                    self._event(
                        "response.output_item.added",
                        output_index=self.output_index,
                        item={"id": self.reasoning_id, "type": "reasoning", "summary": []},
                    )
                )
            self.thinking += thinking
            events.append(
                self._event(
                    "response.reasoning_summary_text.delta",
                    item_id=self.reasoning_id,
                    output_index=self.output_index,
                    summary_index=0,
                    delta=thinking,
                )
            )
        if calls:
            events.extend(self._finish_reasoning())
            for i, call in enumerate(calls):
                item_id = f"fc_{random.randrange(999999)}_{i}"
                item = _call_item(item_id, call)
                index = self.output_index + i
                events += [
                    self._event(
                        "response.output_item.added",
                        output_index=index,
                        item={**item, "status": "in_progress", "arguments": ""},
                    ),
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item_id,
                        output_index=index,
                        delta=item["arguments"],
                    ),
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=item_id,
                        output_index=index,
                        arguments=item["arguments"],
                    ),
                    self._event("response.output_item.done", output_index=index, item=item),
                ]
                self.items.append(item)
            self.output_index += len(calls)
            self.calls_sent = True
        elif text and not self.calls_sent:
            events.extend(self._finish_reasoning())
            if not self.text_started:
                self.text_started = True
                events += [
                    self._event(
                        "response.output_item.added",
                        output_index=self.output_index,
                        item=_message_item(self.item_id, "", status="in_progress"),
                    ),
                    self._event(
                        "response.content_part.added",
                        item_id=self.item_id,
                        output_index=self.output_index,
                        content_index=0,
                        part=_text_part(""),
                    ),
                ]
            self.text += text
            events.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self.item_id,
                    output_index=self.output_index,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
        return events

    def finish(self, prompt_tokens: int, output_tokens: int) -> list[tuple[str, dict]]:
        events = self._finish_reasoning()
        output = list(self.items)
        if self.text_started and not self.calls_sent:
            item = _message_item(self.item_id, self.text)
            events += [
                self._event(
                    "response.output_text.done",
                    item_id=self.item_id,
                    output_index=self.output_index,
                    content_index=0,
                    text=self.text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=self.item_id,
                    output_index=self.output_index,
                    content_index=0,
                    part=_text_part(self.text),
                ),
                self._event("response.output_item.done", output_index=self.output_index, item=item),
            ]
            output.append(item)
        events.append(
            self._event(
                "response.completed",
                response=self.response("completed", output, responses_usage(prompt_tokens, output_tokens)),
            )
        )
        return events

    def failed(self, status: int, message: str) -> list[tuple[str, dict]]:
        """A mid-stream engine error: Ollama's writer loses it; `response.failed` is what the SDKs
        and Codex stop on, with the error in the response object."""
        response = self.response("failed", list(self.items), None)
        response["error"] = {"code": "server_error" if status >= 500 else "invalid_request", "message": message}
        return [self._event("response.failed", response=response)]
