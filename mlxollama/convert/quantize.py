"""Create-time weight transforms on MLX model folders: quantization and LoRA adapter fusion.

Ollama's GGUF quantization names map onto MLX affine quantization by bits per weight, as
convert/hf.py does: 4-bit with 64-element groups (fp16 scale + bias) is 4.5 bpw like Q4_0 and
Q4_K_S, 8-bit/64 is 8.5 bpw like Q8_0; `4bit`/`8bit`/`mxfp4` are MLX's own modes.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")
# Describes the source GGUF's tensor types; wrong once weights are rewritten.
STALE_AFTER_REWRITE = ("gguf_tensors.json",)

QUANTIZE_ERROR = "quantization is only supported for F16, BF16 and F32 models"


class QuantizeError(ValueError):
    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class QuantSpec:
    name: str  # what /api/show reports as quantization_level
    bits: int = 0
    group_size: int = 0
    mode: str = "affine"
    dtype: str = ""  # a plain float cast instead of quantization

    @property
    def is_cast(self) -> bool:
        return bool(self.dtype)


_SPECS = {
    "Q4_0": QuantSpec("Q4_0", 4, 64),
    "Q4_1": QuantSpec("Q4_1", 4, 64),
    "Q4_K": QuantSpec("Q4_K_M", 4, 64),
    "Q4_K_M": QuantSpec("Q4_K_M", 4, 64),
    "Q4_K_S": QuantSpec("Q4_K_S", 4, 64),
    "Q8_0": QuantSpec("Q8_0", 8, 64),
    "4BIT": QuantSpec("4bit", 4, 64),
    "8BIT": QuantSpec("8bit", 8, 64),
    "MXFP4": QuantSpec("MXFP4", 4, 32, "mxfp4"),
    "F16": QuantSpec("F16", dtype="float16"),
    "BF16": QuantSpec("BF16", dtype="bfloat16"),
    "F32": QuantSpec("F32", dtype="float32"),
}
SUPPORTED = "F32, F16, BF16, Q4_0, Q4_1, Q4_K_S, Q4_K_M, Q8_0, 4bit, 8bit, mxfp4"


def parse_quantize(value: str) -> QuantSpec:
    """Ollama spells these case-insensitively (`q4_K_M`, `Q8_0`, `q4_k`)."""
    spec = _SPECS.get(value.strip().upper())
    if spec is None:
        # Same opening as Ollama's message, which clients match on; our list of types.
        raise QuantizeError(f"unsupported quantization type {value.upper()} - supported types are {SUPPORTED}")
    return spec


def source_dtype_name(model_dir: Path) -> str:
    """F16 / BF16 / F32 of an unquantized folder (for the `quantizing F16 model to Q4_K_M` status)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("quantization"):
        return "quantized"
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "")
    for st in sorted(Path(model_dir).glob("*.safetensors")):
        header = read_safetensors_header(st)
        for key, info in header.items():
            if key != "__metadata__" and len(info.get("shape", [])) == 2:
                return {"F16": "F16", "BF16": "BF16", "F32": "F32"}.get(info.get("dtype", ""), info.get("dtype", "F16"))
    return {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}.get(dtype, "F16")


def read_safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"{path.name} is not a safetensors file")
        return json.loads(f.read(n))


def _copy_side_files(src: Path, out: Path) -> None:
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if not p.is_file() or rel.as_posix() in STALE_AFTER_REWRITE or rel.as_posix() == "config.json":
            continue
        if any(p.match(pattern) for pattern in WEIGHT_FILES):
            continue
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest)


Progress = Callable[[int, int], None]  # (completed, total)


def _save(model, config: dict, src: Path, out: Path) -> None:
    from mlx_lm.utils import save_config, save_model

    out.mkdir(parents=True, exist_ok=True)
    _copy_side_files(src, out)
    save_model(out, model, donate_model=True)
    save_config(dict(config), out / "config.json")


def quantize_dir(src: Path, out: Path, spec: QuantSpec, progress: Progress | None = None) -> None:
    """Write a quantized (or cast) copy of the MLX model folder `src` to `out`."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import load_model, quantize_model

    src, out = Path(src), Path(out)
    config = json.loads((src / "config.json").read_text())
    if config.get("quantization"):
        raise QuantizeError(QUANTIZE_ERROR)
    model, config = load_model(src, lazy=True)
    total = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    if progress:
        progress(0, total)
    if spec.is_cast:
        dtype = getattr(mx, spec.dtype)
        model.update(
            tree_map(
                lambda x: x.astype(dtype) if isinstance(x, mx.array) and mx.issubdtype(x.dtype, mx.floating) else x,
                model.parameters(),
            )
        )
        config = {**config, "torch_dtype": spec.dtype}
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints a bits-per-weight line
            model, config = quantize_model(model, config, spec.group_size, spec.bits, mode=spec.mode)
    _save(model, config, src, out)
    if progress:
        progress(total, total)


def fuse_adapter(src: Path, adapter_dir: Path, out: Path) -> None:
    """Fold an mlx-lm LoRA/DoRA adapter into the weights (quantized bases stay quantized)."""
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load_model

    src, adapter_dir, out = Path(src), Path(adapter_dir), Path(out)
    if not (adapter_dir / "adapter_config.json").is_file() or not (adapter_dir / "adapters.safetensors").is_file():
        raise QuantizeError(
            "unsupported adapter: only mlx-lm LoRA adapters (adapter_config.json + adapters.safetensors) can be applied",
            400,
        )
    model, config = load_model(src, lazy=True)
    try:
        model = load_adapters(model, str(adapter_dir))
    except (ValueError, KeyError, AttributeError) as e:
        raise QuantizeError(f"adapter does not fit the model: {e}", 400) from e
    fused = [(n, m.fuse(dequantize=False)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    _save(model, config, src, out)
