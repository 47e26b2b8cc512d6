"""Every environment variable is read in mlxollama/config.py, with Ollama's parsing rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlxollama import config as cfg
from mlxollama.config import Config
from mlxollama.durations import FOREVER_NS, MINUTE, SECOND

PACKAGE = Path(cfg.__file__).resolve().parent
README = PACKAGE.parent / "README.md"
ENV_ACCESS = re.compile(r"\benviron\b|\bgetenv\b")


def test_defaults_when_nothing_is_set():
    c = Config.from_env({})
    assert (c.host, c.port) == ("127.0.0.1", 11434)
    assert c.models_dir == Path.home() / ".mlxollama" / "models"
    assert c.keep_alive_ns == 5 * MINUTE
    assert c.origins == [] and c.context_length == 4096 and c.debug == 0
    assert c.max_queue == 512 and c.num_parallel == 8 and c.max_loaded_models == 0
    assert c.reported_version == "0.14.0" and c.noprune is False
    assert c.memory_budget > 0
    assert (c.prefill_step, c.prompt_cache_entries, c.prompt_cache_bytes) == (512, 16, 1 << 30)


def test_every_server_variable_is_read(tmp_path):
    c = Config.from_env(
        {
            "OLLAMA_HOST": "0.0.0.0:11555",
            "MLXOLLAMA_MODELS": str(tmp_path / "store"),
            "OLLAMA_KEEP_ALIVE": "10m",
            "OLLAMA_ORIGINS": "chrome-extension://*,http://app.example",
            "OLLAMA_CONTEXT_LENGTH": "8192",
            "OLLAMA_DEBUG": "1",
            "OLLAMA_MAX_QUEUE": "7",
            "OLLAMA_NUM_PARALLEL": "3",
            "OLLAMA_MAX_LOADED_MODELS": "2",
            "MLXOLLAMA_REPORTED_VERSION": "0.9.9",
            "OLLAMA_NOPRUNE": "true",
            "MLXOLLAMA_MEMORY_BUDGET": "123456",
            "MLXOLLAMA_PREFILL_STEP": "128",
            "MLXOLLAMA_PROMPT_CACHE_ENTRIES": "0",
            "MLXOLLAMA_PROMPT_CACHE_BYTES": "4096",
        }
    )
    assert (c.host, c.port) == ("0.0.0.0", 11555)
    assert c.models_dir == tmp_path / "store"
    assert c.keep_alive_ns == 10 * MINUTE
    assert c.origins == ["chrome-extension://*", "http://app.example"]
    assert c.context_length == 8192 and c.debug == 1
    assert c.max_queue == 7 and c.num_parallel == 3 and c.max_loaded_models == 2
    assert c.reported_version == "0.9.9" and c.noprune is True
    assert c.memory_budget == 123456
    assert (c.prefill_step, c.prompt_cache_entries, c.prompt_cache_bytes) == (128, 0, 4096)


@pytest.mark.parametrize(
    "value, level",
    [
        ("", 0),
        ("0", 0),
        ("false", 0),
        ("FALSE", 0),
        ("f", 0),
        ("no", 0),
        ("junk", 0),
        ("-1", 0),
        ("1", 1),
        ("true", 1),
        ("True", 1),
        ("t", 1),
        (" '1' ", 1),
        ("2", 2),
    ],
)
def test_ollama_debug_levels_as_ollama_reads_them(value, level):
    """Ollama's LogLevel: Go booleans, then an integer (2 = trace); 0, false and junk stay at info."""
    assert Config.from_env({"OLLAMA_DEBUG": value}).debug == level
    assert cfg.debug_level({"OLLAMA_DEBUG": value}) == level


@pytest.mark.parametrize(
    "value, host, port",
    [
        ("", "127.0.0.1", 11434),
        ("0.0.0.0", "0.0.0.0", 11434),
        (":8080", "127.0.0.1", 8080),
        ('"127.0.0.1:1234"', "127.0.0.1", 1234),
        ("http://example.com", "example.com", 80),
        ("https://example.com/prefix", "example.com", 443),
        ("[::1]:9000", "::1", 9000),
    ],
)
def test_ollama_host(value, host, port):
    c = Config.from_env({"OLLAMA_HOST": value})
    assert (c.host, c.port) == (host, port)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("-1", FOREVER_NS),
        ("30", 30 * SECOND),
        ("1h", 60 * MINUTE),
        ("soon", 5 * MINUTE),
    ],
)
def test_keep_alive(value, expected):
    assert Config.from_env({"OLLAMA_KEEP_ALIVE": value}).keep_alive_ns == expected


def test_bad_numbers_fall_back_to_defaults():
    c = Config.from_env(
        {
            "OLLAMA_MAX_QUEUE": "lots",
            "OLLAMA_CONTEXT_LENGTH": "0",
            "OLLAMA_NUM_PARALLEL": "0",
            "MLXOLLAMA_PREFILL_STEP": "-4",
            "MLXOLLAMA_MEMORY_BUDGET": "x",
        }
    )
    assert (c.max_queue, c.context_length, c.num_parallel, c.prefill_step) == (512, 4096, 8, 512)
    assert c.memory_budget == cfg.default_memory_budget()


def test_read_when_called_variables(tmp_path):
    assert cfg.ollama_models_dir({}) == Path.home() / ".ollama" / "models"
    assert cfg.ollama_models_dir({"OLLAMA_MODELS": str(tmp_path)}) == tmp_path
    assert cfg.registry_override({}) == ""
    assert cfg.registry_override({"MLXOLLAMA_REGISTRY": " http://127.0.0.1:9/ "}) == "http://127.0.0.1:9"
    assert cfg.client_host({"OLLAMA_HOST": "'0.0.0.0:1'"}) == "0.0.0.0:1"
    assert cfg.exit_with_parent({"MLXOLLAMA_EXIT_WITH_PARENT": "1"})
    assert not cfg.exit_with_parent({})
    assert cfg.service_os_override({"MLXOLLAMA_SERVICE_OS": " Darwin "}) == "darwin"
    assert cfg.service_template_values(("ROOT", "PATH"), {"MLXOLLAMA_SVC_ROOT": "/a b/ "}) == {
        "ROOT": "/a b/ ",
        "PATH": "",
    }
    assert cfg.xdg_config_home({}) == Path.home() / ".config"
    assert cfg.xdg_config_home({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path


@pytest.mark.parametrize("value, off", [("", False), ("0", False), ("false", False), ("1", True), ("yes", True)])
def test_nohistory_is_an_ollama_bool(value, off):
    assert cfg.no_history({"OLLAMA_NOHISTORY": value}) is off


def test_engine_settings_come_from_the_config():
    from mlxollama.engine.llm import EngineSettings

    c = Config.from_env(
        {
            "OLLAMA_NUM_PARALLEL": "2",
            "MLXOLLAMA_PREFILL_STEP": "64",
            "MLXOLLAMA_PROMPT_CACHE_ENTRIES": "3",
            "MLXOLLAMA_PROMPT_CACHE_BYTES": "99",
            "MLXOLLAMA_CPU_DENSE": "12345",
        }
    )
    assert EngineSettings.from_config(c) == EngineSettings(2, 64, 3, 99, cpu_dense_bytes=12345)


def test_no_module_but_config_reads_the_environment():
    readers = [
        str(p.relative_to(PACKAGE.parent))
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "config.py" or p.parent != PACKAGE
        if ENV_ACCESS.search(p.read_text(encoding="utf-8"))
    ]
    assert readers == []


def _names_read_in_config() -> set[str]:
    source = (PACKAGE / "config.py").read_text(encoding="utf-8")
    return set(re.findall(r'var\("([A-Z_]+)"', source))


def test_config_documents_every_variable_it_reads():
    names = _names_read_in_config()
    assert {"OLLAMA_HOST", "OLLAMA_DEBUG", "OLLAMA_MODELS", "XDG_CONFIG_HOME"} <= names  # the scan works
    documented = set(re.findall(r"^\| ([A-Z_]+) \|", cfg.__doc__, re.M))
    assert names - documented == set()
    assert documented - names == set()


def test_readme_table_names_only_variables_that_exist():
    """README's Configuration table: every variable is read in config.py or named there as read elsewhere."""
    table = README.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("\n\n", 2)[1]
    in_readme = set(re.findall(r"`([A-Z][A-Z_]+)`", table))
    assert "OLLAMA_HOST" in in_readme
    unknown = {n for n in in_readme if n not in _names_read_in_config() and n not in cfg.__doc__}
    assert unknown == set()
    server_side = {"OLLAMA_KEEP_ALIVE", "OLLAMA_NUM_PARALLEL", "MLXOLLAMA_PREFILL_STEP", "OLLAMA_DEBUG"}
    assert server_side <= in_readme
