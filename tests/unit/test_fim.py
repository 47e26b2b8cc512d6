"""Fill-in-the-middle tables and prompts (mlxollama/engine/fim.py) on tiny tokenizers."""

from __future__ import annotations

import json

import pytest

from mlxollama.engine.fim import FIM_FORMATS, fim_format_for, fim_format_in_text, fim_tokens

from ..support.tinytemplates import build_family_model


def test_fim_formats_detected_from_tokenizer_files():
    for fmt in FIM_FORMATS:
        added = [{"id": i, "content": t} for i, t in enumerate(fmt.tokens)]
        assert fim_format_in_text([json.dumps({"added_tokens": added}, ensure_ascii=False)]) is fmt
        assert fim_format_in_text([json.dumps({"added_tokens": added})]) is fmt  # \\u-escaped
        assert ".Suffix" in fmt.go_template
    assert fim_format_in_text(['{"<|im_start|>": 1, "<fim_prefix>": 2}']) is None


def test_fim_prompt_tokens(tmp_path):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tok = load_tokenizer(build_family_model(tmp_path / "sc", "starcoder"))
    fmt = fim_format_for(tok)
    assert fmt.name == "starcoder"
    ids = fim_tokens(tok, fmt, "def add(a, b):\n    ", "\n\nprint(add(1, 2))")
    assert tok.decode(ids) == "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))<fim_middle>"
    # over the limit the far ends go: the start of the prefix, the end of the suffix
    short = fim_tokens(tok, fmt, "x = 1\n" * 50 + "def f():", "\n    return 1\n" * 50, limit=40)
    assert len(short) <= 40
    text = tok.decode(short)
    assert (
        text.startswith("<fim_prefix>")
        and "def f():<fim_suffix>\n    return 1" in text
        and text.endswith("<fim_middle>")
    )


@pytest.mark.parametrize("fmt", FIM_FORMATS, ids=lambda f: f.name)
def test_fim_token_order_per_family(tmp_path, fmt):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from ..support.tinytemplates import Family, build_tokenizer

    build_tokenizer(tmp_path, Family(fmt.name, None, ["<eos>", *fmt.tokens, *fmt.stops], "<eos>"))
    tok = load_tokenizer(tmp_path)
    assert fim_format_for(tok) is fmt
    text = tok.decode(fim_tokens(tok, fmt, "PRE", "SUF"))
    if fmt.middle is None:  # Codestral: suffix first, the model continues the prefix
        assert text == f"{fmt.suffix}SUF{fmt.prefix}PRE"
    else:
        assert text == f"{fmt.prefix}PRE{fmt.suffix}SUF{fmt.middle}"
