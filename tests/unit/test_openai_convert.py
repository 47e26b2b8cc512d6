"""OpenAI request conversion as plain functions: no server, no Sanic request."""

import base64

import pytest

from mlxollama.api import openai_convert
from mlxollama.api.errors import APIError
from mlxollama.api.openai_convert import chat_request, completion_request, embed_request
from mlxollama.api.protocol import GenerateRequest

PNG = b"\x89PNG\r\n\x1a\nfake"


def test_chat_request_becomes_the_native_request_and_overrides():
    body = {
        "model": "m",
        "max_tokens": -1,
        "stop": "END",
        "stream": True,
        "stream_options": {"include_usage": True},
        "reasoning_effort": "high",
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
                    },
                    {"type": "text", "text": "really"},
                ],
            },
        ],
    }
    req, overrides, include_usage = chat_request(body)
    assert (req.model, req.stream, req.think, req.format, include_usage) == ("m", True, "high", "json", True)
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[1].content == "what is this?\n\nreally"
    assert req.messages[1].images == [PNG]
    # max_tokens passes through as num_predict, negative included, as in Ollama; temperature and
    # top_p default to OpenAI's 1.0
    assert overrides == {"stop": ["END"], "num_predict": -1, "temperature": 1.0, "top_p": 1.0}


def test_tool_turns_keep_their_ids_and_names():
    req, _, _ = chat_request(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
        }
    )
    call, result = req.messages
    assert call.tool_calls == [{"id": "call_1", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    assert (result.tool_name, result.tool_call_id, result.content) == ("weather", "call_1", "sunny")


@pytest.mark.parametrize(
    "body, message",
    [
        ({"model": "m", "messages": []}, "[] is too short - 'messages'"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}],
            },
            "image URLs are not currently supported, please use base64 encoded data instead",
        ),
        (
            {"model": "m", "reasoning_effort": "huge", "messages": [{"role": "user", "content": "hi"}]},
            'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")',
        ),
    ],
)
def test_chat_request_refusals_carry_ollamas_text(body, message):
    with pytest.raises(APIError) as e:
        chat_request(body)
    assert (e.value.status, e.value.message) == (400, message)


def test_completion_request_is_a_parsed_generate_request():
    req, include_usage = completion_request(
        {"model": "m", "prompt": "def f(", "suffix": "return 1", "max_tokens": 5, "logprobs": 2, "stream": True}
    )
    assert isinstance(req, GenerateRequest)
    assert (req.model, req.prompt, req.suffix, req.stream, req.logprobs, req.top_logprobs) == (
        "m",
        "def f(",
        "return 1",
        True,
        True,
        2,
    )
    assert req.options["num_predict"] == 5
    assert include_usage is False


def test_embed_request_and_list():
    assert embed_request({"model": "e", "input": "hi", "encoding_format": "BASE64"}) == ("e", ["hi"], 0, "base64")
    with pytest.raises(APIError, match="invalid input type"):
        embed_request({"model": "e", "input": [[1, 2]]})
    out = openai_convert.embedding_list("e", [[1.0, 0.5]], 3, as_base64=True)
    assert base64.b64decode(out["data"][0]["embedding"]) == b"\x00\x00\x80?\x00\x00\x00?"
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_conversion_module_holds_no_http_code():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(openai_convert.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] == "sanic"}
    assert "request" not in {a.arg for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for a in n.args.args}
