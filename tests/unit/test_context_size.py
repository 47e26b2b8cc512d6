"""The default window Ollama 0.15.5+ sizes from memory, and the arithmetic of context shift."""

from __future__ import annotations

import pytest

from mlxollama.api.protocol import ChatRequest, GenerateRequest
from mlxollama.config import GIB, Config, default_context_length
from mlxollama.engine.llm import generation_limit, shifted_window


@pytest.mark.parametrize(
    "memory, num_ctx",
    [
        (0, 4096),
        (8 * GIB, 4096),
        (23 * GIB - 1, 4096),
        (23 * GIB, 32768),  # a 24 GiB GPU that reports a little less still gets the middle tier
        (36 * GIB, 32768),
        (47 * GIB - 1, 32768),
        (47 * GIB, 262144),
        (192 * GIB, 262144),
    ],
)
def test_context_sizing_picks_each_tier_from_a_stated_memory_figure(memory, num_ctx):
    assert default_context_length(memory) == num_ctx
    c = Config.from_env({"MLXOLLAMA_BACKEND_MEMORY": str(memory)})
    assert (c.context_length, c.backend_memory) == (num_ctx, memory)


def test_the_server_measures_the_backend_only_when_nothing_is_stated():
    asked = []

    def probe() -> int:
        asked.append(True)
        return 64 * GIB

    assert Config.from_env({}, backend_memory=probe).context_length == 262144 and asked == [True]
    asked.clear()
    # OLLAMA_CONTEXT_LENGTH wins over memory, as in Ollama
    assert Config.from_env({"OLLAMA_CONTEXT_LENGTH": "8192"}, backend_memory=probe).context_length == 8192
    # a stated figure replaces the measurement (0: a machine without GPU memory)
    assert Config.from_env({"MLXOLLAMA_BACKEND_MEMORY": "0"}, backend_memory=probe).context_length == 4096
    assert asked == []
    # commands that run no model (import, convert) pass no probe: no MLX call, Ollama's base tier
    assert Config.from_env({}).context_length == 4096


def test_the_cpu_backend_has_no_gpu_memory_to_size_from():
    import mlx.core as mx

    from mlxollama.engine.device import backend_memory

    if mx.default_device() == mx.cpu:
        assert backend_memory() == 0  # Ollama without a GPU stays at 4096
    else:
        assert backend_memory() > 0


@pytest.mark.parametrize(
    "num_keep, expected",
    [
        (4, list(range(4)) + list(range(18, 32))),  # keep 4, drop (32 - 4) / 2 = 14 of the oldest
        (0, list(range(16, 32))),
        (31, list(range(31))),  # num_keep is held below num_ctx: at least one token always goes
        (100, list(range(31))),
    ],
)
def test_a_full_window_keeps_num_keep_and_drops_the_oldest_half_of_the_rest(num_keep, expected):
    assert shifted_window(list(range(32)), num_keep, 32) == expected


def test_a_window_with_room_to_spare_drops_only_what_frees_half():
    # 28 of 32 used, 4 free; half of (32 - 4) = 14 must be free: drop 10
    assert shifted_window(list(range(28)), 4, 32) == list(range(4)) + list(range(14, 28))


@pytest.mark.parametrize("num_predict, limit", [(-1, 320), (-2, 320), (0, 0), (100, 100), (320, 320), (5000, 320)])
def test_generation_is_bounded_at_ten_windows(num_predict, limit):
    assert generation_limit(num_predict, 32) == limit


@pytest.mark.parametrize("parse", [GenerateRequest.parse, ChatRequest.parse])
def test_shift_is_a_request_field_that_defaults_to_true(parse):
    assert parse({"model": "m"}).shift is True
    assert parse({"model": "m", "shift": None}).shift is True
    assert parse({"model": "m", "shift": False}).shift is False
