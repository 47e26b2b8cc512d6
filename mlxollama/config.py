"""Server configuration from the environment, under Ollama's names where Ollama has one (reference §14)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .durations import MINUTE, parse_env_keep_alive

DEFAULT_PORT = 11434
# /api/version must be a numeric semver >= 0.6.4 (VS Code Copilot parses it); this is the
# Ollama release whose behaviour we follow.
DEFAULT_REPORTED_VERSION = "0.13.0"


def _clean(value: str | None) -> str:
    return (value or "").strip().strip("\"'").strip()


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


def parse_bool(value: str | None) -> bool:
    """Go ParseBool, with Ollama's twist: an unparseable non-empty value counts as true."""
    v = _clean(value)
    if not v:
        return False
    if v in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    return True


def parse_uint(value: str | None, default: int) -> int:
    v = _clean(value)
    if not v:
        return default
    try:
        n = int(v)
    except ValueError:
        return default
    return n if n >= 0 else default


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models_dir: Path = field(default_factory=lambda: Path.home() / ".mlxollama" / "models")
    keep_alive_ns: int = 5 * MINUTE
    origins: list[str] = field(default_factory=list)
    context_length: int = 4096
    debug: int = 0
    max_queue: int = 512
    num_parallel: int = 0  # 0: the engine's own default (it batches; see EngineSettings)
    max_loaded_models: int = 0
    reported_version: str = DEFAULT_REPORTED_VERSION
    noprune: bool = False
    # Loaded models may use this much before idle ones are evicted; three quarters of the
    # machine leaves room for the OS and for KV caches that grow during generation.
    memory_budget: int = field(default_factory=lambda: int(0.75 * total_memory()) or (1 << 62))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Config":
        env = os.environ if env is None else env
        _, host, port = parse_host(env.get("OLLAMA_HOST"))
        models = _clean(env.get("MLXOLLAMA_MODELS"))
        debug_raw = _clean(env.get("OLLAMA_DEBUG"))
        debug = 2 if debug_raw == "2" else (1 if parse_bool(debug_raw) else 0)
        origins = [o for o in (env.get("OLLAMA_ORIGINS") or "").split(",") if o]
        return cls(
            host=host,
            port=port,
            models_dir=Path(models).expanduser() if models else Path.home() / ".mlxollama" / "models",
            keep_alive_ns=parse_env_keep_alive(env.get("OLLAMA_KEEP_ALIVE")),
            origins=origins,
            context_length=parse_uint(env.get("OLLAMA_CONTEXT_LENGTH"), 4096) or 4096,
            debug=debug,
            max_queue=parse_uint(env.get("OLLAMA_MAX_QUEUE"), 512),
            num_parallel=parse_uint(env.get("OLLAMA_NUM_PARALLEL"), 0),
            max_loaded_models=parse_uint(env.get("OLLAMA_MAX_LOADED_MODELS"), 0),
            reported_version=_clean(env.get("MLXOLLAMA_REPORTED_VERSION")) or DEFAULT_REPORTED_VERSION,
            noprune=parse_bool(env.get("OLLAMA_NOPRUNE")),
            memory_budget=parse_uint(env.get("MLXOLLAMA_MEMORY_BUDGET"), 0) or int(0.75 * total_memory()) or (1 << 62),
        )
