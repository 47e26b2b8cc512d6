"""mlxollama: an Ollama-compatible model server on MLX."""

__version__ = "0.1.0"
