"""Prompt assembly: chat template rendering and Ollama-style truncation (reference §5.7.2).

Works on the tokenizer only (no MLX), so it is cheap to test.
"""

from __future__ import annotations

from ..parsers.thinking import template_kwargs_for
from .fim import fim_format_for, fim_tokens
from .jobs import EngineError, PromptSpec


def to_template_message(m: dict) -> dict:
    out = {"role": m.get("role", "user"), "content": m.get("content", "") or ""}
    if m.get("tool_calls"):
        out["tool_calls"] = [{"type": "function", **tc} for tc in m["tool_calls"]]
    if m.get("tool_name"):
        out["name"] = m["tool_name"]
    if m.get("tool_call_id"):
        out["tool_call_id"] = m["tool_call_id"]
    if m.get("thinking"):
        out["reasoning_content"] = m["thinking"]
    return out


def render_go(template: str, messages: list[dict], tools: list[dict] | None, think) -> str:
    from ..template.ollama import TemplateError, render_messages

    level = think if isinstance(think, str) else ""
    try:
        return render_messages(
            template, messages, None, tools=tools, think=None if think is None else bool(think), think_level=level
        )
    except TemplateError as e:
        raise EngineError(f"template error: {e}", 400) from e


def render_chat(
    tokenizer, messages: list[dict], tools: list[dict] | None = None, think=None, go_template: str | None = None
) -> str:
    if go_template:
        return render_go(go_template, messages, tools, think)
    msgs = [to_template_message(m) for m in messages]
    if not getattr(tokenizer, "has_chat_template", False):
        # Ollama's fallback template is {{ .Prompt }}: the text goes in as it is.
        return "\n\n".join(m["content"] for m in msgs)
    prefill = bool(msgs) and msgs[-1]["role"] == "assistant"
    kwargs = {"tools": tools} if tools else {}
    kwargs.update(template_kwargs_for(think))
    try:
        return tokenizer.apply_chat_template(
            msgs,
            tokenize=False,
            add_generation_prompt=not prefill,
            continue_final_message=prefill,
            **kwargs,
        )
    except Exception as e:  # jinja errors raised by the model's own template
        raise EngineError(f"template error: {e}", 400) from e


def encode(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


class PromptCancelled(Exception):
    """The request was cancelled (its client went away) while its prompt was being built."""


def _never() -> bool:
    return False


def _truncate_messages(tokenizer, messages, tools, think, num_ctx, go_template=None, cancelled=_never) -> list[int]:
    """Drop the oldest non-system messages until the prompt fits; the last message always stays.

    Finds the smallest k for which [system messages among messages[:k]] + messages[k:] fits,
    by bisection: dropping more messages never makes the prompt longer, so the answer is the
    one a scan from k = 0 would find, with O(log n) renders instead of O(n)."""

    def render(k: int) -> list[int]:
        if cancelled():
            raise PromptCancelled()
        kept = [m for m in messages[:k] if m.get("role") == "system"] + messages[k:]
        return encode(tokenizer, render_chat(tokenizer, kept, tools, think, go_template), special=False)

    last = len(messages) - 1
    low, high = 0, last  # messages[last:] is the fallback whether it fits or not
    fitting: dict[int, list[int]] = {}
    while low < high:
        mid = (low + high) // 2
        tokens = render(mid)
        if len(tokens) < num_ctx:
            fitting[mid] = tokens
            high = mid
        else:
            low = mid + 1
    return fitting[low] if low in fitting else render(low)


def build_prompt_tokens(tokenizer, spec: PromptSpec, num_ctx: int, cancelled=_never) -> list[int]:
    """The prompt's token ids; `cancelled()` is polled between renders (raises PromptCancelled)."""
    if spec.fim is not None:
        fmt = fim_format_for(tokenizer)
        if fmt is None:
            raise EngineError("this model has no fill-in-the-middle tokens", 400)
        limit = num_ctx - 1 - len(spec.context or []) if spec.truncate else None
        tokens = fim_tokens(tokenizer, fmt, *spec.fim, limit=limit)
    elif spec.raw_prompt is not None:
        tokens = encode(tokenizer, spec.raw_prompt, special=not spec.context)
    else:
        messages = spec.messages or []
        text = render_chat(tokenizer, messages, spec.tools, spec.think, spec.go_template)
        tokens = encode(tokenizer, text, special=False)
        if len(tokens) >= num_ctx and spec.truncate and len(messages) > 1:
            tokens = _truncate_messages(
                tokenizer, messages, spec.tools, spec.think, num_ctx, spec.go_template, cancelled
            )
    if spec.context:
        tokens = list(spec.context) + tokens
    if len(tokens) >= num_ctx:
        if not spec.truncate:
            raise EngineError("the input length exceeds the context length", 400)
        # Still too long (one huge message, or raw text): keep the end, which is what
        # the model must continue from.
        tokens = tokens[len(tokens) - (num_ctx - 1) :]
    return tokens
