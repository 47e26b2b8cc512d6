"""Option values a client may send that the sampler cannot take: clamped as Ollama clamps them,
refused with a 400 when no number could mean them, and never passed on out of range."""

from __future__ import annotations

import math

import pytest

from mlxollama.errors import StatusError
from mlxollama.options import FLOAT32_MAX, INT64_MAX, INT64_MIN, MAX_NUM_CTX, Options, OptionTypeError, validate_options


def merged(**request) -> Options:
    return Options.merged(validate_options(request), num_ctx=4096)


@pytest.mark.parametrize(
    "key, given, expected",
    [
        ("temperature", -3.0, 0.0),  # Ollama's sampler: temperature < 0 is 0
        ("top_p", 7.0, 1.0),  # top_p and min_p are kept within [0, 1]
        ("top_p", -1.0, 0.0),
        ("min_p", -1.0, 0.0),
        ("min_p", 2.0, 1.0),
        ("top_k", -3, 0),  # <= 0 disables it
        ("repeat_last_n", -5, -1),  # any negative is "the whole window"
        ("num_ctx", -5, 4),  # Ollama clamps num_ctx to >= 4
        ("num_ctx", 1 << 70, MAX_NUM_CTX),
        ("seed", 1 << 70, INT64_MAX),  # Go's int64 option: saturated, never wrapped into MLX
        ("seed", -(1 << 70), INT64_MIN),
        ("num_predict", 1 << 70, INT64_MAX),
        ("temperature", 1e300, FLOAT32_MAX),  # a float32 option
    ],
)
def test_out_of_range_values_are_clamped(key, given, expected):
    assert validate_options({key: given})[key] == expected
    assert getattr(merged(**{key: given}), key) == expected


def test_model_params_and_api_overrides_are_clamped_too():
    opts = Options.merged({"min_p": -1}, {"top_p": 3}, {"temperature": -1}, num_ctx=4096)
    assert (opts.min_p, opts.top_p, opts.temperature) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("key", ["num_batch", "num_keep", "num_thread", "typical_p", "num_gpu", "main_gpu"])
def test_options_the_engine_does_not_use_are_kept_as_given(key):
    assert validate_options({key: -1})[key] == -1


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", ["temperature", "top_p", "num_predict", "seed"])
def test_non_finite_numbers_are_a_400(key, value):
    with pytest.raises(StatusError) as caught:
        validate_options({key: value})
    assert caught.value.status == 400 and key in caught.value.message


def test_wrong_types_stay_ollamas_500():
    with pytest.raises(OptionTypeError, match='option "top_k" must be of type integer'):
        validate_options({"top_k": "many"})
    with pytest.raises(OptionTypeError, match='option "temperature" must be of type float32'):
        validate_options({"temperature": True})


def test_valid_values_pass_unchanged():
    given = {
        "temperature": 0.7,
        "top_p": 0.95,
        "min_p": 0.05,
        "top_k": 20,
        "seed": 42,
        "num_predict": 16,
        "repeat_last_n": 0,
        "num_ctx": 8192,
    }
    assert validate_options(given) == given


def test_samplers_never_get_a_value_their_compiled_filters_refuse():
    """mlx-lm's compiled filters raise (and poison the global random state) on these."""
    from mlxollama.engine.sampling import SamplerSettings

    vocab = 384
    s = SamplerSettings.of(merged(top_k=10**9, min_p=2.0, top_p=7.0, temperature=1e-300), vocab)
    assert s.top_k == 0 and s.min_p == 1.0 and s.top_p == 0.0 and s.temperature == 0.0
    s = SamplerSettings.of(merged(top_k=vocab - 1, min_p=-1.0, top_p=0.5, temperature=0.8), vocab)
    assert (s.top_k, s.min_p, s.top_p, s.temperature) == (vocab - 1, 0.0, 0.5, 0.8)
    assert (
        SamplerSettings.of(merged(top_p=0.0, temperature=0.8), vocab).temperature == 0.0
    )  # Ollama keeps the top token


def test_seeded_sampling_takes_any_64_bit_seed():
    import mlx.core as mx

    from mlxollama.engine.sampling import make_request_sampler

    logprobs = mx.log(mx.softmax(mx.arange(16, dtype=mx.float32)[None] / 4, axis=-1))
    for seed in (INT64_MAX, INT64_MIN, -5, 0):
        sampler = make_request_sampler(merged(seed=seed, temperature=1.0, top_k=10**9), 16)
        token = sampler(logprobs).item()
        assert 0 <= token < 16
        again = make_request_sampler(merged(seed=seed, temperature=1.0), 16)(logprobs).item()
        assert again == token


def test_penalty_options_that_mean_nothing_leave_logits_alone():
    import mlx.core as mx

    from mlxollama.engine.sampling import make_request_processors

    logits = mx.array([[1.0, -2.0, 3.0]])
    for opts in (merged(repeat_penalty=0.0), merged(repeat_penalty=-1.0), merged(repeat_last_n=-7, repeat_penalty=1.0)):
        out = logits
        for p in make_request_processors(opts):
            out = p(mx.array([0, 1, 2]), out)
        assert out.tolist() == logits.tolist()
    opts = merged(repeat_last_n=-7, repeat_penalty=2.0, num_ctx=8)
    (processor,) = make_request_processors(opts)
    assert processor(mx.array([0]), logits).tolist() == [[0.5, -2.0, 3.0]]
