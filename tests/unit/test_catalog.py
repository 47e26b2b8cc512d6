"""Capabilities derived from templates and tokens (mlxollama/engine/catalog.py derive_capabilities)."""

from __future__ import annotations

from mlxollama.engine.catalog import derive_capabilities

from ..support.tinytemplates import GPTOSS_TEMPLATE, LLAMA31_TEMPLATE, QWEN3_TEMPLATE, QWEN25_TEMPLATE, R1_TEMPLATE


def test_capabilities_follow_templates_and_tokens():
    assert derive_capabilities("llm", QWEN25_TEMPLATE, None) == ["completion", "tools"]
    assert derive_capabilities("llm", QWEN3_TEMPLATE, None) == ["completion", "tools", "thinking"]
    assert derive_capabilities("llm", LLAMA31_TEMPLATE, None) == ["completion", "tools"]
    assert derive_capabilities("llm", R1_TEMPLATE, None) == ["completion", "thinking"]
    assert derive_capabilities("llm", GPTOSS_TEMPLATE, None) == ["completion", "tools", "thinking"]
    assert derive_capabilities("llm", None, None, fim=True) == ["completion", "insert"]
    assert derive_capabilities("llm", "{{ messages }}", "{{ .Prompt }}") == ["completion"]
    assert derive_capabilities("embedding", QWEN3_TEMPLATE, None) == ["embedding"]
