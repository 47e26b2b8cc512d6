"""The `mlxollama` command line, shaped like `ollama`: `commands` parses and dispatches, the rest serve it."""

from .commands import main

__all__ = ["main"]
