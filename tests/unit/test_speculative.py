"""The pure parts of speculative decoding: which drafted tokens a round keeps, the DRAFT field and
command, and the draft_num_predict option."""

from __future__ import annotations

import pytest

from mlxollama.convert.create import ManageError, parse_create_request
from mlxollama.convert.modelfile import Command, format_modelfile, parse, to_create_fields
from mlxollama.engine.speculative import accepted_prefix, round_tokens
from mlxollama.options import MAX_DRAFT_NUM_PREDICT, Options, validate_options

EOS = 9


def test_the_agreed_run_is_the_common_leading_tokens():
    assert accepted_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert accepted_prefix([1, 2, 3], [1, 5, 3, 4]) == 1
    assert accepted_prefix([1, 2, 3], [7, 2, 3, 4]) == 0
    assert accepted_prefix([], [7]) == 0


def test_a_round_keeps_the_agreed_run_and_the_models_next_token():
    # all three drafts agreed: they and the model's fourth token
    assert round_tokens([1, 2, 3], [1, 2, 3, 4], remaining=10, stop_ids={EOS}) == ([1, 2, 3, 4], None)
    # the second draft was wrong: the model's own second token replaces it, the rest is dropped
    assert round_tokens([1, 2, 3], [1, 5, 6, 4], remaining=10, stop_ids={EOS}) == ([1, 5], None)
    # nothing drafted (one token left): the model's token alone
    assert round_tokens([], [4], remaining=1, stop_ids={EOS}) == ([4], "length")


def test_a_round_ends_at_a_stop_token_or_at_the_limit():
    assert round_tokens([1, EOS, 3], [1, EOS, 3, 4], remaining=10, stop_ids={EOS}) == ([1, EOS], "stop")
    assert round_tokens([1, 2, 3], [1, 2, 3, 4], remaining=2, stop_ids={EOS}) == ([1, 2], "length")
    # the model's own stop token after an agreed run
    assert round_tokens([1, 2], [1, 2, EOS], remaining=10, stop_ids={EOS}) == ([1, 2, EOS], "stop")


def test_draft_in_a_modelfile_and_in_a_create_request():
    assert to_create_fields(parse("FROM base\nDRAFT small:q4\n")) == {"from": "base", "draft": "small:q4"}
    assert parse_create_request({"model": "m", "from": "base", "draft": "small"}).draft == "small"
    assert parse_create_request({"model": "m", "modelfile": "FROM base\nDRAFT small\n"}).draft == "small"
    assert parse_create_request({"model": "m", "from": "base"}).draft == ""
    with pytest.raises(ManageError) as e:
        parse_create_request({"model": "m", "from": "base", "draft": ["small"]})
    assert e.value.status == 400 and "CreateRequest.draft" in e.value.message
    # /api/show writes it back as Ollama's Modelfile writer does
    assert format_modelfile([Command("model", "base"), Command("draft", "small:latest")]) == (
        "FROM base\nDRAFT small:latest\n"
    )


def test_draft_num_predict_is_an_integer_option_kept_in_range():
    assert Options().draft_num_predict == 4  # Ollama's default
    assert validate_options({"draft_num_predict": 2}) == {"draft_num_predict": 2}
    assert validate_options({"draft_num_predict": -3}) == {"draft_num_predict": 0}  # off, as in Ollama
    assert validate_options({"draft_num_predict": 10**9}) == {"draft_num_predict": MAX_DRAFT_NUM_PREDICT}
    with pytest.raises(ValueError, match='option "draft_num_predict" must be of type integer'):
        validate_options({"draft_num_predict": "many"})
    assert to_create_fields(parse("FROM x\nPARAMETER draft_num_predict 6\n")) == {
        "from": "x",
        "parameters": {"draft_num_predict": 6},
    }
