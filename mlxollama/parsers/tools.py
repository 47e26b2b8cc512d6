"""Tool calls parsed out of generated text (reference §8).

mlx-lm's per-family parsers read the text between a model's tool-call markers; this module finds
those markers in a token stream, and covers the families mlx-lm has no parser for: Hermes-style
`<tool_call>{json}</tool_call>` and bare JSON calls (Llama 3.x, optionally after <|python_tag|>).
Plain Python, no MLX.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Any, Callable

from .holdback import held_back

PYTHON_TAG = "<|python_tag|>"
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_call_id(mistral: bool = False) -> str:
    """Ollama's form: call_ plus 8 random [a-z0-9]. Mistral's templates reject any id in the
    history that is not exactly 9 alphanumerics, so its calls get ids of that shape."""
    if mistral:
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class ToolParseError(ValueError):
    pass


def _arguments(value) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise ToolParseError(f"arguments are not JSON: {value!r}") from e
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ToolParseError(f"arguments are not an object: {value!r}")
    return value


def call_from_object(obj: Any) -> dict | None:
    """{"name", "arguments"|"parameters"} (arguments as object or JSON text) or None."""
    if not isinstance(obj, dict):
        return None
    fn = obj.get("function") if isinstance(obj.get("function"), dict) else obj
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = fn.get("arguments", fn.get("parameters"))
    out = {"name": name, "arguments": _arguments(args)}
    if isinstance(obj.get("id"), str) and obj["id"]:
        out["id"] = obj["id"]
    return out


def _json_values(text: str) -> list:
    """Every JSON value in text, in order, allowing whitespace and ; or , between them."""
    decoder = json.JSONDecoder()
    values, pos = [], 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n;,":
            pos += 1
        if pos >= len(text):
            return values
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ToolParseError(f"not JSON: {text!r}") from e
        values.append(value)


def parse_json_calls(text: str, tools=None) -> list[dict]:
    """Hermes / Qwen2.5 bodies: one or more JSON objects, or a list of them."""
    out = []
    for value in _json_values(text.strip()):
        for item in value if isinstance(value, list) else [value]:
            call = call_from_object(item)
            if call is None:
                raise ToolParseError(f"not a tool call: {item!r}")
            out.append(call)
    if not out:
        raise ToolParseError("empty tool call")
    return out


@dataclass(frozen=True)
class ToolFormat:
    """How one model family marks tool calls. start == "" means bare JSON output."""

    start: str
    end: str
    parse: Callable[[str, Any], Any]
    source: str  # which parser, for logs and tests


BARE_JSON = ToolFormat("", "", parse_json_calls, "json")
HERMES = ToolFormat("<tool_call>", "</tool_call>", parse_json_calls, "hermes")


def infer_tool_format(tokenizer, template: str | None) -> ToolFormat:
    """mlx-lm's parser where it recognised the family, ours where it did not."""
    parser = getattr(tokenizer, "tool_parser", None)
    start = getattr(tokenizer, "tool_call_start", None)
    if parser is not None and start:
        module = getattr(parser, "__module__", "") or ""
        return ToolFormat(
            start, getattr(tokenizer, "tool_call_end", None) or "", parser, module.rsplit(".", 1)[-1] or "mlx-lm"
        )
    if "<tool_call>" in (template or ""):
        return HERMES
    return BARE_JSON


def _normalize(parsed) -> list[dict]:
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        call = call_from_object(item)
        if call is None:
            raise ToolParseError(f"not a tool call: {item!r}")
        calls.append(call)
    return calls


def _balanced_end(text: str) -> int:
    """Index just past the first complete {...} or [...] value at the start of text, or -1."""
    depth, in_str, esc = 0, False, False
    for i, c in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


class ToolCallParser:
    """Streams text in, gives back (content, tool_calls) with calls whole and never in content.

    Tagged formats: content flows until the start marker (a marker split across chunks is held
    back), the call body is buffered to the end marker and parsed. Bare JSON (Ollama's `{` tag
    rule): calls are only looked for when the first non-whitespace output is `{`, `[` or
    <|python_tag|>; JSON that is not a call to a known tool is content after all.
    """

    def __init__(self, fmt: ToolFormat, tools: list[dict] | None):
        self.fmt = fmt
        self.tools = tools or []
        self.names = {t.get("function", {}).get("name") for t in self.tools if isinstance(t, dict)}
        self.buffer = ""
        self.in_call = False
        self.done = False  # bare JSON: decided that this output is plain content
        self.count = 0
        self.eat_space = False

    def _finish_calls(self, calls: list[dict]) -> list[dict]:
        out = []
        for c in calls:
            out.append(
                {
                    "id": c.get("id") or new_call_id(self.fmt.source == "mistral"),
                    "function": {"index": self.count, "name": c["name"], "arguments": c["arguments"]},
                }
            )
            self.count += 1
        return out

    def add(self, text: str) -> tuple[str, list[dict]]:
        if self.done:
            return text, []
        self.buffer += text
        if self.fmt.start:
            return self._tagged(final=False)
        return self._bare(final=False)

    def flush(self) -> tuple[str, list[dict]]:
        if self.done:
            out, self.buffer = self.buffer, ""
            return out, []
        if self.fmt.start:
            return self._tagged(final=True)
        return self._bare(final=True)

    # -- tagged ------------------------------------------------------------------------------

    def _parse_body(self, body: str) -> list[dict]:
        try:
            return _normalize(self.fmt.parse(body, self.tools))
        except Exception as e:  # noqa: BLE001 - every family parser fails in its own way
            raise ToolParseError(str(e)) from e

    def _tagged(self, final: bool) -> tuple[str, list[dict]]:
        start, end = self.fmt.start, self.fmt.end
        content, calls = [], []

        def emit(piece: str) -> None:
            # Whitespace right after a call (between calls, or before EOS) is not an answer.
            if self.count:
                if self.eat_space:
                    piece = piece.lstrip()
                self.eat_space = self.eat_space and not piece
            content.append(piece)

        while True:
            if not self.in_call:
                i = self.buffer.find(start)
                if i < 0:
                    hold = 0 if final else held_back(self.buffer, start)
                    piece = self.buffer[: len(self.buffer) - hold]
                    self.buffer = self.buffer[len(piece) :]
                    emit(piece)
                    break
                emit(self.buffer[:i])
                self.buffer = self.buffer[i + len(start) :]
                self.in_call = True
            # Without an end marker (Mistral) the calls run to the end of the output.
            j = self.buffer.find(end) if end else -1
            if j < 0 and not final:
                break
            body = self.buffer if j < 0 else self.buffer[:j]
            # Several start markers in one unterminated run: each one starts another call.
            bodies = body.split(start) if not end else [body]
            self.buffer = "" if j < 0 else self.buffer[j + len(end) :]
            self.in_call = False
            for b in bodies:
                try:
                    calls.extend(self._finish_calls(self._parse_body(b)))
                    self.eat_space = True
                except ToolParseError:
                    # Not a call after all: show the text rather than lose it.
                    emit(start + b + (end if j >= 0 else ""))
            if j < 0:
                break
        return "".join(content), calls

    # -- bare JSON ---------------------------------------------------------------------------

    def _bare(self, final: bool) -> tuple[str, list[dict]]:
        calls: list[dict] = []

        def give_up(trimmed: str) -> tuple[str, list[dict]]:
            # Before any call the whole held-back text is the answer; after calls, only the rest.
            out = trimmed if self.count else self.buffer
            self.buffer = ""
            return out, calls

        while True:
            trimmed = self.buffer.lstrip(" \t\r\n;," if self.count else " \t\r\n")
            if trimmed.startswith(PYTHON_TAG):
                trimmed = trimmed[len(PYTHON_TAG) :].lstrip()
            elif trimmed and PYTHON_TAG.startswith(trimmed) and not final:
                return "", calls
            if not trimmed:
                return give_up("") if final else ("", calls)
            if trimmed[0] not in "{[":
                self.done = True
                return give_up(trimmed)
            n = _balanced_end(trimmed)
            if n < 0:
                return give_up("") if final else ("", calls)
            found = self._bare_calls(trimmed[:n])
            if found is None:
                self.done = True
                return give_up(trimmed)
            calls.extend(self._finish_calls(found))
            self.buffer = trimmed[n:]

    def _bare_calls(self, text: str) -> list[dict] | None:
        try:
            calls = parse_json_calls(text)
        except ToolParseError:
            return None
        if self.names and any(c["name"] not in self.names for c in calls):
            return None  # JSON that happens to have a "name" is an answer, not a call
        return calls
