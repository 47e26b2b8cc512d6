"""History truncation: the old rule (drop the oldest non-system messages until the prompt fits,
keep the last), found with a bounded number of renders, and stoppable when the client is gone."""

from __future__ import annotations

import time

import pytest

from mlxollama.engine import prompt as prompt_module
from mlxollama.engine.jobs import PromptSpec
from mlxollama.engine.prompt import PromptCancelled, build_prompt_tokens, encode, render_chat

from ..support.tinymodels import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(out)
    return load_tokenizer(out)


def conversation(n: int, *, system_every: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        role = "system" if system_every and i % system_every == 0 else ("user" if i % 2 == 0 else "assistant")
        out.append({"role": role, "content": f"message number {i} says hello"})
    return out


def linear_rule(tokenizer, messages, num_ctx) -> list[int]:
    """Today's rule written the obvious way, one render per dropped message."""
    for k in range(len(messages)):
        kept = [m for m in messages[:k] if m["role"] == "system"] + messages[k:]
        tokens = encode(tokenizer, render_chat(tokenizer, kept), special=False)
        if len(tokens) < num_ctx or k == len(messages) - 1:
            return tokens
    raise AssertionError


@pytest.mark.parametrize(
    "n, num_ctx, system_every",
    [
        (2, 20, 0),
        (7, 60, 0),
        (30, 200, 0),
        (30, 200, 4),
        (61, 333, 7),
        (40, 5, 0),
        (40, 10_000, 0),
    ],
)
def test_bisection_keeps_the_same_messages_as_the_linear_rule(tokenizer, n, num_ctx, system_every):
    messages = conversation(n, system_every=system_every)
    spec = PromptSpec(messages=messages)
    got = build_prompt_tokens(tokenizer, spec, num_ctx)
    expected = linear_rule(tokenizer, messages, num_ctx)
    if len(expected) >= num_ctx:  # even the last message alone does not fit: its end is kept
        expected = expected[len(expected) - (num_ctx - 1) :]
    assert got == expected


def test_renders_grow_with_the_log_of_the_history(tokenizer, monkeypatch):
    calls = []
    real = prompt_module.render_chat

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prompt_module, "render_chat", counting)
    build_prompt_tokens(tokenizer, PromptSpec(messages=conversation(4000)), 300)
    assert len(calls) <= 2 + 13  # the full render, then at most ceil(log2(4000)) + 1


def test_a_long_history_is_truncated_quickly(tokenizer):
    started = time.monotonic()
    tokens = build_prompt_tokens(tokenizer, PromptSpec(messages=conversation(10_000)), 2048)
    assert 0 < len(tokens) < 2048
    assert time.monotonic() - started < 30  # the old rule took minutes


def test_a_cancelled_request_stops_building_its_prompt(tokenizer):
    polls = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(PromptCancelled):
        build_prompt_tokens(tokenizer, PromptSpec(messages=conversation(2000)), 100, cancelled=cancelled)
    assert len(polls) == 2
