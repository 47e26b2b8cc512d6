"""Dense float32 weights for the CPU backend, chosen at load time (never in the store).

MLX's CPU quantized matmul does not use BLAS, while a float32 matmul goes through sgemm: with
an OpenBLAS preloaded (scripts/_setup.sh) SmolLM2 prefills 13-24x faster dense than quantized
(64-512-token prompts on 2 cores) and decodes 1.3-1.4x faster (docs/benchmarks.md). Dense weights take
8x (4-bit) or 4x (8-bit) the memory, so only models whose float32 size fits a budget
(MLXOLLAMA_CPU_DENSE, by default a quarter of the memory budget) are dequantized; larger ones
keep their quantized weights. On Metal and CUDA nothing changes: there, memory bandwidth rules
and the quantized kernels are fast. With MLX's bundled reference BLAS dense weights buy nothing
(same prefill, half the decode speed), so the automatic choice also wants a fast BLAS loaded.
"""

from __future__ import annotations

import ctypes
import sys

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from ..config import CPU_DENSE_AUTO

# Share of the memory budget that dense copies may take when MLXOLLAMA_CPU_DENSE is not set:
# room is left for KV caches and for other loaded models.
AUTO_SHARE = 4


def dense_budget(setting: int, memory_budget: int) -> int:
    """Bytes a model's dense float32 weights may take: the setting, or the automatic share."""
    return memory_budget // AUTO_SHARE if setting == CPU_DENSE_AUTO else max(0, setting)


def _quantized(module) -> bool:
    return isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))


def _dense_shape(module) -> tuple[int, int]:
    rows, packed = module.weight.shape
    return rows, packed * 32 // module.bits


def dense_size(model: nn.Module) -> int:
    """Bytes the model's parameters take once its quantized layers are float32."""
    quantized = [m for _, m in model.named_modules() if _quantized(m)]
    packed = {id(a) for m in quantized for a in (m.weight, m.scales, m.get("biases")) if a is not None}
    rest = sum(
        v.size * 4 if mx.issubdtype(v.dtype, mx.floating) else v.nbytes
        for _, v in tree_flatten(model.parameters())
        if id(v) not in packed
    )
    return rest + sum(4 * rows * cols for rows, cols in map(_dense_shape, quantized))


def has_quantized_layers(model: nn.Module) -> bool:
    return any(_quantized(m) for _, m in model.named_modules())


def should_densify(size: int, budget: int, on_cpu: bool, fast_blas: bool = True) -> bool:
    """The per-backend choice: dense only on the CPU, within the budget, and with a fast sgemm."""
    return on_cpu and fast_blas and budget > 0 and size <= budget


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def fast_blas_loaded() -> bool:
    """Whether MLX's float matmuls run through a real BLAS rather than its Linux wheel's reference one.

    MLX calls cblas_sgemm through the dynamic linker, so a library in the global scope (an
    LD_PRELOAD of OpenBLAS, scripts/_setup.sh) takes the place of the one bundled in mlx_cpu.libs,
    which Python loads privately with libmlx. Elsewhere (macOS: Accelerate) the BLAS is fast.
    """
    if not sys.platform.startswith("linux"):
        return True
    try:
        libc = ctypes.CDLL(None)
        address = ctypes.cast(libc.cblas_sgemm, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return False  # only libmlx's own reference BLAS has it
    info = _DlInfo()
    if not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.dli_fname:
        return False
    return "mlx_cpu.libs" not in info.dli_fname.decode(errors="replace")


def _dequantized(module) -> mx.array:
    weight = mx.dequantize(
        module.weight,
        module.scales,
        module.get("biases"),
        group_size=module.group_size,
        bits=module.bits,
        mode=module.mode,
        dtype=mx.float32,
    )
    mx.eval(weight)  # one layer at a time: the packed and the dense copy coexist only briefly
    return weight


def densify(model: nn.Module) -> int:
    """Replace quantized linear and embedding layers by float32 ones; returns how many."""
    count = 0

    def replace(_path, module):
        nonlocal count
        if isinstance(module, nn.QuantizedLinear):
            rows, cols = _dense_shape(module)
            dense = nn.Linear(cols, rows, bias="bias" in module)
            dense.weight = _dequantized(module)
            if "bias" in module:
                dense.bias = module.bias.astype(mx.float32)
        elif isinstance(module, nn.QuantizedEmbedding):
            dense = nn.Embedding(*_dense_shape(module))
            dense.weight = _dequantized(module)
        else:
            return module
        count += 1
        return dense

    leaves = tree_map_with_path(replace, model.leaf_modules(), is_leaf=nn.Module.is_module)
    model.update_modules(leaves)
    return count
