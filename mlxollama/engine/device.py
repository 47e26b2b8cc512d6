"""What the MLX backend offers models, read once at server start (the default context size)."""

from __future__ import annotations

import logging

log = logging.getLogger("mlxollama.engine")

# mx.device_info() keys, best first: Metal's budget for one process's GPU working set (what
# Ollama's Metal discovery reports as the GPU's memory), then a CUDA device's memory.
_MEMORY_KEYS = ("max_recommended_working_set_size", "total_memory", "memory_size")


def backend_memory() -> int:
    """Bytes of GPU (or unified) memory MLX can give models; 0 on the CPU backend, which Ollama
    treats as having no GPU memory at all (so its default context stays at 4096)."""
    try:
        import mlx.core as mx

        if mx.default_device() == mx.cpu:
            return 0
        info = mx.device_info()
    except Exception:  # noqa: BLE001 - no backend to ask: size as Ollama does without a GPU
        log.debug("could not read the backend's memory", exc_info=True)
        return 0
    return next((int(info[k]) for k in _MEMORY_KEYS if info.get(k)), 0)
