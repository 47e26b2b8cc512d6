"""Separating reasoning from the answer (reference §7).

Plain Python (no MLX): a streaming splitter over generated text, plus the tag pairs models use.
"""

from __future__ import annotations

from .holdback import held_back

# Tag pairs in order of preference. A template that names both tags of a pair thinks that way.
THINK_TAGS = [
    ("<think>", "</think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
    ("<|channel>thought", "<channel|>"),  # Gemma 4
    ("[THINK]", "[/THINK]"),  # Magistral
    ("<|open|>think<|sep|>", "<|close|>think<|sep|>"),
]


def template_think_tags(template: str | None) -> tuple[str, str] | None:
    """The thinking tags a Jinja chat template writes, if it writes any."""
    text = template or ""
    for start, end in THINK_TAGS:
        if start in text and end in text:
            return start, end
    if "<|channel>" in text and "<channel|>" in text:
        return "<|channel>thought", "<channel|>"
    return None


def template_supports_thinking(template: str | None) -> bool:
    return template_think_tags(template) is not None


def infer_think_tags(tokenizer, template: str | None) -> tuple[str, str] | None:
    """mlx-lm's reading of the vocabulary first (it knows multi-token markers), else the template.

    A vocabulary that merely contains <think> does not make a model think: the template must
    use the tags too, which is also what the `thinking` capability is derived from.
    """
    from_template = template_think_tags(template)
    if from_template is None:
        return None
    start = getattr(tokenizer, "think_start", None)
    end = getattr(tokenizer, "think_end", None)
    if start and end and start in (template or "") and end in (template or ""):
        return start, end
    return from_template


def prompt_opens_thinking(prompt_tail: str, tags: tuple[str, str]) -> bool:
    """Templates that pre-open the reasoning block leave the prompt ending in the opening tag."""
    return prompt_tail.rstrip().endswith(tags[0])


def template_kwargs_for(think) -> dict:
    """Jinja variables that switch thinking (reference §11.3): enable_thinking (Qwen3 and most
    others), reasoning_effort for level-aware templates (gpt-oss)."""
    if think is None:
        return {}
    out = {"enable_thinking": think is not False}
    if isinstance(think, str):
        out["reasoning_effort"] = "high" if think == "max" else think
    return out


class ThinkingParser:
    """Splits streamed text into (thinking, content) the way Ollama's thinking parser does:
    leading whitespace before the opening tag is ignored, whitespace right after either tag is
    swallowed, output that does not start with the opening tag is all content, and a tag split
    across chunks is held back until it is decided."""

    LOOKING, EAT_AFTER_OPEN, THINKING, EAT_AFTER_CLOSE, DONE = range(5)

    def __init__(self, open_tag: str, close_tag: str, *, opened: bool = False):
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.state = self.EAT_AFTER_OPEN if opened else self.LOOKING
        self.acc = ""

    @property
    def thinking_done(self) -> bool:
        return self.state in (self.EAT_AFTER_CLOSE, self.DONE)

    def add(self, text: str) -> tuple[str, str]:
        self.acc += text
        thinking, content = [], []
        while True:
            t, c, again = self._eat()
            thinking.append(t)
            content.append(c)
            if not again:
                return "".join(thinking), "".join(content)

    def flush(self) -> tuple[str, str]:
        """End of generation: whatever is held back was not a tag after all."""
        acc, self.acc = self.acc, ""
        if self.state in (self.EAT_AFTER_OPEN, self.THINKING):
            return acc, ""
        if self.state == self.LOOKING:
            return "", acc
        return "", acc.lstrip() if self.state == self.EAT_AFTER_CLOSE else acc

    def _eat(self) -> tuple[str, str, bool]:
        acc = self.acc
        if self.state == self.LOOKING:
            trimmed = acc.lstrip()
            if trimmed.startswith(self.open_tag):
                self.acc = trimmed[len(self.open_tag) :].lstrip()
                self.state = self.THINKING if self.acc else self.EAT_AFTER_OPEN
                return "", "", True
            if not trimmed or self.open_tag.startswith(trimmed):
                return "", "", False
            self.state = self.DONE
            self.acc = ""
            return "", acc, False
        if self.state == self.EAT_AFTER_OPEN:
            trimmed = acc.lstrip()
            self.acc = trimmed
            if not trimmed:
                return "", "", False
            self.state = self.THINKING
            return "", "", True
        if self.state == self.THINKING:
            cut = acc.find(self.close_tag)
            if cut >= 0:
                thinking = acc[:cut]
                rest = acc[cut + len(self.close_tag) :].lstrip()
                self.acc = ""
                self.state = self.DONE if rest else self.EAT_AFTER_CLOSE
                return thinking, rest, False
            hold = held_back(acc, self.close_tag)
            self.acc = acc[len(acc) - hold :] if hold else ""
            return acc[: len(acc) - hold], "", False
        if self.state == self.EAT_AFTER_CLOSE:
            trimmed = acc.lstrip()
            self.acc = ""
            if trimmed:
                self.state = self.DONE
            return "", trimmed, False
        self.acc = ""
        return "", acc, False
