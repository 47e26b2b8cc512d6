"""gpt-oss's "harmony" output: messages on channels instead of tags (reference §7.3, §8.3).

`<|channel|>analysis<|message|>…<|end|>` is reasoning, `final` (and `commentary` without a
recipient) is the answer, and a message addressed `to=functions.NAME` is a tool call whose body is
the JSON arguments. The generation prompt ends in `<|start|>assistant`, so parsing starts inside
that header, as Ollama's parser does. Plain Python, no MLX.
"""

from __future__ import annotations

import re

from .holdback import held_back
from .tools import ToolParseError, _arguments, new_call_id

START, MESSAGE, CHANNEL, CONSTRAIN = "<|start|>", "<|message|>", "<|channel|>", "<|constrain|>"
ENDS = ("<|end|>", "<|call|>", "<|return|>")
# When the answer starts: the grammar of a `format` request waits for this (after reasoning).
FINAL_HEADER = "<|channel|>final<|message|>"


def is_harmony_template(template: str | None) -> bool:
    t = template or ""
    return all(tag in t for tag in (START, MESSAGE, CHANNEL))


def parse_header(raw: str) -> tuple[str, str, str]:
    """(role, channel, recipient) from e.g. `assistant to=functions.f<|channel|>commentary json`."""
    raw = raw.replace(CONSTRAIN, " " + CONSTRAIN, 1).strip()
    channel = ""
    i = raw.find(CHANNEL)
    if i >= 0:
        after = raw[i + len(CHANNEL) :]
        m = re.match(r"\S*", after)
        channel = m.group(0)
        raw = (raw[:i] + after[len(channel) :]).strip()
    words = raw.split()
    role = words[0] if words else ""
    recipient = ""
    if role.startswith("to="):
        role, recipient = "tool", role[3:]
    elif len(words) > 1 and words[1].startswith("to="):
        recipient = words[1][3:]
    return role, channel, recipient


class HarmonyParser:
    """Streams text in, gives back (content, thinking, tool_calls)."""

    LOOK, HEADER, BODY = range(3)

    def __init__(self):
        self.acc = ""
        self.state = self.HEADER
        self.header = "assistant"  # the prompt's implicit `<|start|>assistant`
        self.route = "content"
        self.recipient = ""
        self.call_body = ""
        self.count = 0

    def _open(self, header: str) -> None:
        _, channel, recipient = parse_header(header)
        self.recipient = recipient
        if recipient:
            self.route = "call"
        elif channel == "analysis":
            self.route = "thinking"
        else:
            self.route = "content"
        self.call_body = ""

    def _close(self, content: list, calls: list) -> None:
        if self.route == "call":
            name = self.recipient.removeprefix("functions.")
            try:
                args = _arguments(self.call_body.strip() or "{}")
                calls.append({"id": new_call_id(), "function": {"index": self.count, "name": name, "arguments": args}})
                self.count += 1
            except ToolParseError:
                content.append(self.call_body)
        self.route = "content"
        self.call_body = ""

    def _emit(self, text: str, content: list, thinking: list) -> None:
        if self.route == "thinking":
            thinking.append(text)
        elif self.route == "call":
            self.call_body += text
        else:
            content.append(text)

    def feed(self, text: str, final: bool = False) -> tuple[str, str, list[dict]]:
        self.acc += text
        content: list[str] = []
        thinking: list[str] = []
        calls: list[dict] = []
        while True:
            if self.state == self.LOOK:
                i = self.acc.find(START)
                if i < 0:
                    hold = 0 if final else held_back(self.acc, START)
                    stray, self.acc = self.acc[: len(self.acc) - hold], self.acc[len(self.acc) - hold :]
                    content.append(stray)
                    break
                content.append(self.acc[:i])
                self.acc = self.acc[i + len(START) :]
                self.header = ""
                self.state = self.HEADER
            if self.state == self.HEADER:
                i = self.acc.find(MESSAGE)
                if i < 0:
                    if final:  # never became a message: show what there is
                        content.append(self.acc if self.header == "assistant" else self.header + self.acc)
                        self.acc = ""
                    break
                self._open(self.header + self.acc[:i])
                self.acc = self.acc[i + len(MESSAGE) :]
                self.state = self.BODY
            if self.state == self.BODY:
                cuts = [(self.acc.find(t), t) for t in ENDS if t in self.acc]
                if not cuts:
                    hold = 0 if final else held_back(self.acc, ENDS)
                    self._emit(self.acc[: len(self.acc) - hold], content, thinking)
                    self.acc = self.acc[len(self.acc) - hold :]
                    if final:
                        self._close(content, calls)
                    break
                i, tag = min(cuts)
                self._emit(self.acc[:i], content, thinking)
                self._close(content, calls)
                self.acc = self.acc[i + len(tag) :]
                self.state = self.LOOK
        return "".join(content), "".join(thinking), calls

    def flush(self) -> tuple[str, str, list[dict]]:
        return self.feed("", final=True)
