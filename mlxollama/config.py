"""Every environment variable mlxollama reads, in one place (like Ollama's envconfig).

No other module touches os.environ: the server reads its settings once, at start-up, into
`Config`; the command line, the service helper and pull/import call the small functions below,
which read the variable when called. Ollama's names and parsing rules where Ollama has the
variable (reference §14); values are trimmed of spaces and quotes, as Ollama's `Var` does.

Server (`Config.from_env`):

| Variable | Default | Field: meaning |
|---|---|---|
| OLLAMA_HOST | 127.0.0.1:11434 | host, port: bind address, parsed like Ollama's |
| MLXOLLAMA_MODELS | ~/.mlxollama/models | models_dir: our store |
| OLLAMA_KEEP_ALIVE | 5m | keep_alive_ns: idle time before unload (duration or seconds; negative = forever) |
| OLLAMA_ORIGINS | | origins: extra CORS origins, comma separated |
| OLLAMA_CONTEXT_LENGTH | from memory | context_length: default num_ctx; unset, chosen from the backend memory as Ollama 0.15.5+ does (`default_context_length`) |
| MLXOLLAMA_BACKEND_MEMORY | detected | backend_memory: bytes the default num_ctx is sized from (Metal's recommended working set, a CUDA GPU's memory; 0 on the CPU backend, like Ollama without a GPU) |
| OLLAMA_DEBUG | | debug: 0 info, 1 debug (1/true), 2 trace (as Ollama: 0/false and junk are off) |
| OLLAMA_MAX_QUEUE | 512 | max_queue: pending requests before 503 |
| OLLAMA_NUM_PARALLEL | 8 | num_parallel: sequences one model decodes together |
| OLLAMA_MAX_LOADED_MODELS | 0 (scheduler's 3) | max_loaded_models: models resident at once |
| OLLAMA_NOPRUNE | | noprune: keep unreferenced blobs and replaced layers |
| MLXOLLAMA_REPORTED_VERSION | 0.14.0 | reported_version: what /api/version says |
| MLXOLLAMA_MEMORY_BUDGET | 75% of memory | memory_budget: bytes loaded models may use |
| MLXOLLAMA_CPU_DENSE | auto: a quarter of the memory budget | cpu_dense: on the CPU backend, models whose float32 weights fit this many bytes are dequantized at load (prompts run through BLAS; auto only with OpenBLAS loaded); 0/off none, 1/on all |
| MLXOLLAMA_PREFILL_STEP | 512 | prefill_step: prompt tokens per prefill step |
| MLXOLLAMA_PROMPT_CACHE_ENTRIES | 16 | prompt_cache_entries: prompt (KV) caches kept |
| MLXOLLAMA_PROMPT_CACHE_BYTES | 1 GiB | prompt_cache_bytes: bytes those caches may hold |
| MLXOLLAMA_PROMPT_CACHE_DIR | <models>/cache/prompts | prompt_cache_dir: the prompt cache's disk tier (engine/diskcache.py), so caches outlive a restart |
| MLXOLLAMA_PROMPT_CACHE_DISK | 4 GiB | prompt_cache_disk: bytes that folder may hold (least recently used files go first); 0 turns the disk tier off |
| OLLAMA_KV_CACHE_TYPE | f16 | kv_cache_type: KV cache element type, as Ollama's: f16 (the model's dtype), q8_0 or q4_0 (MLX 8-bit caches in groups of 64, 4-bit in groups of 32); unknown values log a warning and use f16 (engine/kvcache.py); a model's `PARAMETER kv_cache_type` overrides it |
| MLXOLLAMA_EXIT_WITH_PARENT | | `exit_with_parent()`: test harnesses; stop when the parent process goes |
| MLXOLLAMA_DISTRIBUTED | auto | distributed: under mlx.launch, how a model is split over the ranks: tensor, pipeline, or unset for tensor where the model can, else pipeline (engine/distributed.py) |
| MLXOLLAMA_DISTRIBUTED_TIMEOUT | 60 | distributed_timeout: seconds a collective may block before the group is declared down |
| MLXOLLAMA_DISTRIBUTED_MIN_SIZE | a quarter of the memory budget | distributed_min_size: models smaller than this many bytes run on rank 0 alone (0: shard every model that can be) |
| MLXOLLAMA_TEST_FAULT | | test_faults: tests only; a prompt holding `mlxollama-test-fault:<kind>` makes the engine fail (engine/llm.py) |

Pull and import (read at each use; the convert code runs without a Config):

| OLLAMA_MODELS | ~/.ollama/models | `ollama_models_dir()`: Ollama's own store, read only |
| MLXOLLAMA_REGISTRY | registry.ollama.ai | `registry_override()`: registry for names without a host |

Command line and service:

| OLLAMA_HOST | 127.0.0.1:11434 | `client_host()`: the server the CLI talks to |
| OLLAMA_NOHISTORY | | `no_history()`: interactive mode keeps no history file |
| OLLAMA_DEBUG | | `debug_level()`: the CLI shows tracebacks of unexpected errors |
| MLXOLLAMA_SERVICE_OS | detected | `service_os_override()`: darwin or linux |
| MLXOLLAMA_SVC_<KEY> | | `service_template_values()`: values the install script renders |
| XDG_CONFIG_HOME | ~/.config | `xdg_config_home()`: where the systemd user unit lives |
| OLLAMA_*, MLXOLLAMA_* | | `server_variables()`: passed to every rank `mlxollama serve --hostfile` starts |
| (all) | | `child_environment()`: passed on to the agent `mlxollama launch` starts |

Read by others, not by this package: HF_ENDPOINT and HF_TOKEN (huggingface_hub),
OPENBLAS_NUM_THREADS (the OpenBLAS scripts/_setup.sh preloads), and the
scripts' MLXOLLAMA_MLX_EXTRA, MLXOLLAMA_NO_OPENBLAS and MLXOLLAMA_SERVICE_WAIT.

Only the standard library is imported here: the service scripts import this with a bare Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from .durations import MINUTE, parse_env_keep_alive

DEFAULT_PORT = 11434
# /api/version must be a numeric semver >= 0.6.4 (VS Code Copilot parses it): the first Ollama
# release whose API surface we serve whole. 0.14.0 added /v1/messages (Claude Code); Codex
# refuses anything below 0.13.4, the first with /v1/responses (README "Coding agents").
DEFAULT_REPORTED_VERSION = "0.14.0"
# Sequences decoded together. Ollama defaults to 1; on MLX a batch step costs little more
# than a single one on a GPU, so we batch by default (see docs/benchmarks.md).
DEFAULT_NUM_PARALLEL = 8

Env = Mapping[str, str]


def _clean(value: str | None) -> str:
    return (value or "").strip().strip("\"'").strip()


def _var(name: str, env: Env | None) -> str:
    """One variable, trimmed like Ollama's envconfig.Var; `env` stands in for os.environ in tests."""
    return _clean((os.environ if env is None else env).get(name))


def parse_host(value: str | None) -> tuple[str, str, int]:
    """OLLAMA_HOST → (scheme, host, port) with Ollama's rules (reference §1.1)."""
    raw = _clean(value)
    scheme = "http"
    default_port = DEFAULT_PORT
    if "://" in raw:
        scheme, _, raw = raw.partition("://")
        default_port = 443 if scheme == "https" else 80
    raw = raw.split("/", 1)[0]  # a path part is a client-side prefix only
    if not raw:
        return scheme, "127.0.0.1", default_port
    parts = urlsplit(f"//{raw}")
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    if raw.startswith(":"):
        host = "127.0.0.1"
    return scheme, host, port


def total_memory() -> int:
    """Physical memory in bytes (unified memory on Apple Silicon); 0 where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


_GO_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_GO_FALSE = ("0", "f", "F", "false", "FALSE", "False")


def parse_bool(value: str | None) -> bool:
    """Go ParseBool, with Ollama's twist: an unparseable non-empty value counts as true."""
    v = _clean(value)
    return bool(v) and v not in _GO_FALSE


def parse_debug(value: str | None) -> int:
    """OLLAMA_DEBUG as Ollama's LogLevel reads it: 0 info, 1 debug, 2 (or more) trace.

    A Go boolean true is debug; otherwise a non-zero integer is that many levels below info;
    false, 0 and anything unparseable leave logging at info.
    """
    v = _clean(value)
    if v in _GO_TRUE:
        return 1
    try:
        return max(0, int(v))
    except ValueError:
        return 0


def parse_uint(value: str | None, default: int) -> int:
    v = _clean(value)
    if not v:
        return default
    try:
        n = int(v)
    except ValueError:
        return default
    return n if n >= 0 else default


CPU_DENSE_AUTO = -1
CPU_DENSE_ALL = 1 << 62


def parse_cpu_dense(value: str | None) -> int:
    """MLXOLLAMA_CPU_DENSE: a byte budget; CPU_DENSE_AUTO when unset, `auto` or unparseable."""
    v = _clean(value).lower()
    if v in ("off", "no") or v in (f.lower() for f in _GO_FALSE):
        return 0
    if v in ("on", "yes") or v in (t.lower() for t in _GO_TRUE):
        return CPU_DENSE_ALL
    return parse_uint(v, CPU_DENSE_AUTO) if v != "auto" else CPU_DENSE_AUTO


GIB = 1 << 30


def parse_distributed(value: str | None) -> str:
    """MLXOLLAMA_DISTRIBUTED: tensor or pipeline; anything else chooses per model."""
    v = _clean(value).lower()
    return v if v in ("tensor", "pipeline") else ""


def default_context_length(memory: int) -> int:
    """Ollama 0.15.5+'s default num_ctx when OLLAMA_CONTEXT_LENGTH is unset, from the memory the
    backend can use (server/routes.go: thresholds just under 48 and 24 GiB, so a 48 GiB machine
    that reports a little less still counts). MLX caches grow as tokens arrive, so a large
    window costs nothing until a conversation fills it; each model caps it at its trained length."""
    if memory >= 47 * GIB:
        return 262144
    if memory >= 23 * GIB:
        return 32768
    return 4096


def default_memory_budget() -> int:
    # Loaded models may use this much before idle ones are evicted; three quarters of the
    # machine leaves room for the OS and for KV caches that grow during generation.
    return int(0.75 * total_memory()) or (1 << 62)


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models_dir: Path = field(default_factory=lambda: Path.home() / ".mlxollama" / "models")
    keep_alive_ns: int = 5 * MINUTE
    origins: list[str] = field(default_factory=list)
    context_length: int = 4096
    backend_memory: int = 0  # what context_length was sized from when OLLAMA_CONTEXT_LENGTH is unset
    debug: int = 0
    max_queue: int = 512
    num_parallel: int = DEFAULT_NUM_PARALLEL
    max_loaded_models: int = 0  # 0: the scheduler's default
    reported_version: str = DEFAULT_REPORTED_VERSION
    noprune: bool = False
    memory_budget: int = field(default_factory=default_memory_budget)
    cpu_dense: int = CPU_DENSE_AUTO
    prefill_step: int = 512
    prompt_cache_entries: int = 16
    prompt_cache_bytes: int = 1 << 30
    prompt_cache_dir: Path | None = None  # None: <models_dir>/cache/prompts
    prompt_cache_disk: int = 4 * GIB
    kv_cache_type: str = ""  # checked (and warned about) where a model loads, as Ollama does
    test_faults: bool = False
    distributed: str = ""  # "", "tensor" or "pipeline"
    distributed_timeout: float = 60.0
    distributed_min_size: int = -1  # -1: a quarter of memory_budget

    @classmethod
    def from_env(cls, env: Env | None = None, *, backend_memory: Callable[[], int] | None = None) -> "Config":
        """`backend_memory` measures the accelerator (engine/device.py); only the server passes it,
        and it runs only when neither OLLAMA_CONTEXT_LENGTH nor MLXOLLAMA_BACKEND_MEMORY is set."""

        def var(name: str) -> str:
            return _var(name, env)

        memory = parse_uint(var("MLXOLLAMA_BACKEND_MEMORY"), -1)
        context_length = parse_uint(var("OLLAMA_CONTEXT_LENGTH"), 0)
        if memory < 0:
            memory = backend_memory() if backend_memory is not None and not context_length else 0

        _, host, port = parse_host(var("OLLAMA_HOST"))
        models = var("MLXOLLAMA_MODELS")
        return cls(
            host=host,
            port=port,
            models_dir=Path(models).expanduser() if models else Path.home() / ".mlxollama" / "models",
            keep_alive_ns=parse_env_keep_alive(var("OLLAMA_KEEP_ALIVE")),
            origins=[o for o in var("OLLAMA_ORIGINS").split(",") if o],
            context_length=context_length or default_context_length(memory),
            backend_memory=memory,
            debug=parse_debug(var("OLLAMA_DEBUG")),
            max_queue=parse_uint(var("OLLAMA_MAX_QUEUE"), 512),
            num_parallel=parse_uint(var("OLLAMA_NUM_PARALLEL"), 0) or DEFAULT_NUM_PARALLEL,
            max_loaded_models=parse_uint(var("OLLAMA_MAX_LOADED_MODELS"), 0),
            reported_version=var("MLXOLLAMA_REPORTED_VERSION") or DEFAULT_REPORTED_VERSION,
            noprune=parse_bool(var("OLLAMA_NOPRUNE")),
            memory_budget=parse_uint(var("MLXOLLAMA_MEMORY_BUDGET"), 0) or default_memory_budget(),
            cpu_dense=parse_cpu_dense(var("MLXOLLAMA_CPU_DENSE")),
            prefill_step=parse_uint(var("MLXOLLAMA_PREFILL_STEP"), 0) or 512,
            prompt_cache_entries=parse_uint(var("MLXOLLAMA_PROMPT_CACHE_ENTRIES"), 16),
            prompt_cache_bytes=parse_uint(var("MLXOLLAMA_PROMPT_CACHE_BYTES"), 1 << 30),
            prompt_cache_dir=Path(cache_dir).expanduser() if (cache_dir := var("MLXOLLAMA_PROMPT_CACHE_DIR")) else None,
            prompt_cache_disk=parse_uint(var("MLXOLLAMA_PROMPT_CACHE_DISK"), 4 * GIB),
            kv_cache_type=var("OLLAMA_KV_CACHE_TYPE").lower(),
            test_faults=parse_bool(var("MLXOLLAMA_TEST_FAULT")),
            distributed=parse_distributed(var("MLXOLLAMA_DISTRIBUTED")),
            distributed_timeout=float(parse_uint(var("MLXOLLAMA_DISTRIBUTED_TIMEOUT"), 0) or 60),
            distributed_min_size=parse_uint(var("MLXOLLAMA_DISTRIBUTED_MIN_SIZE"), -1),
        )


# --- read when called: start-up, pull/import, command line, service -----------------------------


def exit_with_parent(env: Env | None = None) -> bool:
    return parse_bool(_var("MLXOLLAMA_EXIT_WITH_PARENT", env))


def ollama_models_dir(env: Env | None = None) -> Path:
    configured = _var("OLLAMA_MODELS", env)
    return Path(configured).expanduser() if configured else Path.home() / ".ollama" / "models"


def registry_override(env: Env | None = None) -> str:
    """MLXOLLAMA_REGISTRY without a trailing slash: a host[:port] or a full scheme://host; '' if unset."""
    return _var("MLXOLLAMA_REGISTRY", env).rstrip("/")


def client_host(env: Env | None = None) -> str:
    return _var("OLLAMA_HOST", env)


def no_history(env: Env | None = None) -> bool:
    return parse_bool(_var("OLLAMA_NOHISTORY", env))


def debug_level(env: Env | None = None) -> int:
    return parse_debug(_var("OLLAMA_DEBUG", env))


def service_os_override(env: Env | None = None) -> str:
    return _var("MLXOLLAMA_SERVICE_OS", env).lower()


def service_template_values(keys: Iterable[str], env: Env | None = None) -> dict[str, str]:
    # Raw, not trimmed: a path may legitimately end in a space or hold quotes.
    source = os.environ if env is None else env
    return {k: source.get(f"MLXOLLAMA_SVC_{k}", "") for k in keys}


def xdg_config_home(env: Env | None = None) -> Path:
    configured = _var("XDG_CONFIG_HOME", env)
    return Path(configured) if configured else Path.home() / ".config"


def server_variables(env: Env | None = None) -> dict[str, str]:
    """The OLLAMA_* and MLXOLLAMA_* settings set here, for every rank `mlxollama serve --hostfile` starts."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k.startswith(("OLLAMA_", "MLXOLLAMA_"))}


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for a program `mlxollama launch` starts: ours, with its settings on top."""
    return {**os.environ, **extra}
