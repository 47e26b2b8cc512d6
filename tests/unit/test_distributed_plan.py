"""How a group splits a model, and the mlx.launch command `mlxollama serve --hostfile` runs (issue 18)."""

from __future__ import annotations

import pytest

from mlxollama.cli.cluster import launch_command
from mlxollama.config import Config, parse_distributed, server_variables


def llama(heads: int, kv_heads: int, layers: int) -> dict:
    return {
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
    }


@pytest.mark.parametrize(
    "config, size, modes",
    [
        (llama(4, 2, 2), 2, ["tensor", "pipeline"]),
        (llama(9, 3, 30), 2, ["pipeline"]),  # SmolLM2: heads do not divide, layers do
        (llama(4, 2, 1), 2, ["tensor"]),  # fewer layers than ranks
        (llama(8, 8, 32), 3, ["pipeline"]),
        ({"model_type": "no-such-architecture"}, 2, []),
    ],
)
def test_supported_modes(config, size, modes):
    from mlxollama.engine.distributed import supported_modes

    assert supported_modes(config, size) == modes


def test_the_asked_for_mode_wins_when_possible():
    from mlxollama.engine.distributed import choose_mode

    assert choose_mode(llama(4, 2, 2), 2, "pipeline") == "pipeline"
    assert choose_mode(llama(4, 2, 2), 2, "") == "tensor"
    assert choose_mode(llama(9, 3, 30), 2, "tensor") == "pipeline"


def test_distributed_settings():
    c = Config.from_env(
        {
            "MLXOLLAMA_DISTRIBUTED": " Pipeline ",
            "MLXOLLAMA_DISTRIBUTED_TIMEOUT": "5",
            "MLXOLLAMA_DISTRIBUTED_MIN_SIZE": "0",
        }
    )
    assert (c.distributed, c.distributed_timeout, c.distributed_min_size) == ("pipeline", 5.0, 0)
    d = Config.from_env({})
    assert (d.distributed, d.distributed_timeout, d.distributed_min_size) == ("", 60.0, -1)
    assert parse_distributed("sideways") == ""


def test_hostfile_launch_forwards_the_server_settings():
    env = server_variables({"OLLAMA_HOST": "0.0.0.0:11434", "MLXOLLAMA_DISTRIBUTED": "tensor", "HOME": "/x"})
    assert env == {"OLLAMA_HOST": "0.0.0.0:11434", "MLXOLLAMA_DISTRIBUTED": "tensor"}
    cmd = launch_command("hosts.json", "jaccl", env)
    assert cmd[1:3] == ["--hostfile", "hosts.json"] and cmd[cmd.index("--backend") + 1] == "jaccl"
    assert "OLLAMA_HOST=0.0.0.0:11434" in cmd and "HOME=/x" not in cmd
    assert cmd[-4:] == ["--", "-m", "mlxollama.cli", "serve"]
