"""The CPU dense-weights choice (engine/cpu_dense.py): the setting, the budget, the per-backend rule,
and dequantizing in-memory layers. No server, no stored model."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxollama.config import CPU_DENSE_ALL, CPU_DENSE_AUTO, Config, parse_cpu_dense
from mlxollama.engine.cpu_dense import dense_budget, dense_size, densify, has_quantized_layers, should_densify

GiB = 1 << 30


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, CPU_DENSE_AUTO),
        ("", CPU_DENSE_AUTO),
        ("auto", CPU_DENSE_AUTO),
        (" AUTO ", CPU_DENSE_AUTO),
        ("junk", CPU_DENSE_AUTO),
        ("-5", CPU_DENSE_AUTO),
        ("0", 0),
        ("off", 0),
        ("false", 0),
        ("OFF", 0),
        ("no", 0),
        ("1", CPU_DENSE_ALL),
        ("on", CPU_DENSE_ALL),
        ("true", CPU_DENSE_ALL),
        ("yes", CPU_DENSE_ALL),
        ("2000000000", 2_000_000_000),
        ('"8589934592"', 8 * GiB),
    ],
)
def test_setting_parses(value, expected):
    assert parse_cpu_dense(value) == expected


def test_config_reads_the_variable():
    assert Config.from_env({}).cpu_dense == CPU_DENSE_AUTO
    assert Config.from_env({"MLXOLLAMA_CPU_DENSE": "off"}).cpu_dense == 0
    assert Config.from_env({"MLXOLLAMA_CPU_DENSE": "123456789"}).cpu_dense == 123456789


def test_budget_is_a_quarter_of_the_memory_budget_by_default():
    assert dense_budget(CPU_DENSE_AUTO, 16 * GiB) == 4 * GiB
    assert dense_budget(0, 16 * GiB) == 0
    assert dense_budget(3 * GiB, 16 * GiB) == 3 * GiB  # an explicit budget is not capped by the memory budget
    assert dense_budget(CPU_DENSE_ALL, 16 * GiB) == CPU_DENSE_ALL


@pytest.mark.parametrize(
    "size,budget,on_cpu,expected",
    [
        (500 << 20, 4 * GiB, True, True),  # SmolLM2-135M's ~540 MB fits the automatic budget
        (4 * GiB, 4 * GiB, True, True),  # exactly at the budget
        (4 * GiB + 1, 4 * GiB, True, False),  # larger models keep their quantized weights
        (1, 0, True, False),  # MLXOLLAMA_CPU_DENSE=off
        (0, 0, True, False),
        (500 << 20, CPU_DENSE_ALL, False, False),  # Metal / CUDA: never, whatever the budget
        (1, 4 * GiB, False, False),
    ],
)
def test_choice_per_backend(size, budget, on_cpu, expected):
    assert should_densify(size, budget, on_cpu) is expected


def test_no_dense_weights_without_a_fast_blas():
    # MLX's bundled reference BLAS: dense prefill is no faster and decode is half as fast.
    assert not should_densify(500 << 20, 4 * GiB, True, fast_blas=False)
    assert should_densify(500 << 20, 4 * GiB, True, fast_blas=True)


def test_engine_settings_keep_the_automatic_choice_apart():
    from mlxollama.engine.llm import EngineSettings

    auto = EngineSettings.from_config(Config.from_env({"MLXOLLAMA_MEMORY_BUDGET": str(8 * GiB)}))
    assert auto.cpu_dense_bytes == 2 * GiB and auto.cpu_dense_auto
    explicit = EngineSettings.from_config(Config.from_env({"MLXOLLAMA_CPU_DENSE": "on"}))
    assert explicit.cpu_dense_bytes == CPU_DENSE_ALL and not explicit.cpu_dense_auto


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(96, 64)
        self.proj = nn.Linear(64, 128, bias=True)
        self.head = nn.Linear(128, 96, bias=False)
        self.norm = nn.RMSNorm(64)

    def __call__(self, ids):
        return self.head(nn.gelu(self.proj(self.norm(self.embed(ids)))))


@pytest.mark.parametrize("bits", [4, 8])
def test_densify_keeps_the_function_and_reports_the_float32_size(bits):
    mx.random.seed(3)
    model = _Tiny()
    nn.quantize(model, group_size=32, bits=bits)
    model.update(dict(proj=dict(bias=mx.random.normal((128,)))))
    ids = mx.array([[1, 5, 9, 40, 95]])
    before = model(ids)
    assert has_quantized_layers(model)
    expected = 4 * (96 * 64 + 64 * 128 + 128 + 128 * 96 + 64)  # embedding, proj + bias, head, norm
    assert dense_size(model) == expected

    assert densify(model) == 3
    assert not has_quantized_layers(model)
    assert type(model.embed) is nn.Embedding and type(model.proj) is nn.Linear and type(model.head) is nn.Linear
    assert "bias" in model.proj and "bias" not in model.head
    assert all(v.dtype == mx.float32 for _, v in model.parameters()["proj"].items())
    assert dense_size(model) == expected
    after = model(ids)
    assert mx.abs(after - before).max().item() <= 1e-4 * max(1.0, mx.abs(before).max().item())
