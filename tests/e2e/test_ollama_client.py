"""The official `ollama` Python client against a live server, on the real SmolLM2 import.

This CPU decodes SmolLM2 at a few tokens per second, so prompts are short and num_predict small.
"""

from __future__ import annotations

import ollama
import pytest

GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(server, smollm):
    return ollama.Client(host=server.url)


def test_list_and_show(client, smollm):
    names = [m.model for m in client.list().models]
    assert smollm in names
    info = client.show(smollm)
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.context_length"] == 8192
    assert "completion" in info.capabilities
    assert info.details.family == "llama"
    assert info.details.quantization_level == "Q4_1"
    assert info.details.parameter_size.endswith("M")
    assert "<|im_start|>" in info.template


def test_capital_of_france(client, smollm):
    r = client.generate(model=smollm, prompt="What is the capital of France?", options=GREEDY)
    assert "Paris" in r.response
    assert r.done and r.eval_count <= GREEDY["num_predict"]


def test_greedy_output_is_deterministic(client, smollm):
    a = client.chat(model=smollm, messages=[{"role": "user", "content": "Name a color."}], options=GREEDY)
    b = client.chat(model=smollm, messages=[{"role": "user", "content": "Name a color."}], options=GREEDY)
    assert a.message.content == b.message.content and a.message.content.strip()


def test_num_predict_caps_eval_count(client, smollm):
    r = client.generate(
        model=smollm, prompt="Write a long poem about the sea.", options={"temperature": 0, "num_predict": 4}
    )
    assert r.eval_count == 4 and r.done_reason == "length"


def test_stop_strings(client, smollm):
    prompt = "List the numbers from 1 to 10 separated by commas."
    full = client.generate(model=smollm, prompt=prompt, options={"temperature": 0, "num_predict": 12}).response
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[3]  # spans a token boundary in the middle of the greedy answer
    cut = client.generate(model=smollm, prompt=prompt, options={"temperature": 0, "num_predict": 12, "stop": [stop]})
    assert stop not in cut.response
    assert cut.response == full[: full.index(stop)]
    assert cut.done_reason == "stop"


def test_streaming_chat(client, smollm):
    parts = list(
        client.chat(
            model=smollm,
            messages=[{"role": "user", "content": "Say hello."}],
            options={"temperature": 0, "num_predict": 6},
            stream=True,
        )
    )
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert all(not p.done for p in parts[:-1])
    text = "".join(p.message.content for p in parts)
    whole = client.chat(
        model=smollm, messages=[{"role": "user", "content": "Say hello."}], options={"temperature": 0, "num_predict": 6}
    )
    assert text == whole.message.content


def test_streaming_generate_and_ps(client, smollm):
    parts = list(client.generate(model=smollm, prompt="Hi", options={"num_predict": 3}, stream=True))
    assert parts[-1].done
    loaded = client.ps().models
    entry = next(m for m in loaded if m.model == smollm)
    assert entry.size > 0 and entry.context_length > 0 and entry.expires_at is not None
    client.generate(model=smollm, prompt="", keep_alive=0)
    assert smollm not in [m.model for m in client.ps().models]


def test_unknown_model_raises_response_error(client):
    with pytest.raises(ollama.ResponseError) as exc:
        client.generate(model="does-not-exist", prompt="x")
    assert exc.value.status_code == 404
    assert "not found" in exc.value.error
