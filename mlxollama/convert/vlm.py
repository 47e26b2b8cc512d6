"""Vision-language checkpoints (issue 17) → the mlx-vlm model folder the engine's vision runner
loads: config.json with its `vision_config`, safetensors in mlx-vlm's names, the tokenizer and the
image processor's files.

An MLX VLM folder (mlx-vlm's writer: "format: mlx" weights or a `quantization` key) is stored as it
is; a Hugging Face safetensors VLM goes through mlx-vlm's own converter (`mlx_vlm.convert`: its
loader's sanitize renames the weights, its quantizer keeps the vision tower in float as mlx-vlm
does), quantized when asked. Code in a checkpoint is never run: a config naming a `model_file`, or
`auto_map` entries for remote processors, is refused, and *.py files are not kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import struct
from pathlib import Path
from typing import Any

from ..engine.catalog import is_vision_tensor
from . import hf
from .create import CONVERT_LOCK, Converted, Emit, ManageError, mlx_dir_config
from .quantize import QUANTIZE_ERROR, QuantSpec

log = logging.getLogger("mlxollama.convert")

# Processor and generation side files mlx-vlm reads next to the weights (besides the tokenizer's).
_KEEP_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".tiktoken")


def _config(src: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((src / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _tensor_names(src: Path) -> list[str]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        try:
            return list((json.loads(index.read_text()).get("weight_map") or {}).keys())
        except (OSError, ValueError, AttributeError):
            pass
    names = []
    for f in sorted(src.glob("*.safetensors")):
        try:
            names += [k for k in hf._safetensors_header(f) if k != "__metadata__"]
        except (OSError, ValueError, struct.error):
            continue
    return names


def is_vision_checkpoint(src: str | Path) -> bool:
    """A safetensors folder with a vision tower: a `vision_config` in config.json and the tower's
    weights beside the text model's (a text-only export of a multimodal model keeps the first)."""
    src = Path(src)
    vision = _config(src).get("vision_config")
    return isinstance(vision, dict) and bool(vision) and any(is_vision_tensor(n) for n in _tensor_names(src))


def _model_type(config: dict[str, Any]) -> str:
    try:
        from mlx_vlm.utils import get_model_type
    except ImportError:
        return str(config.get("model_type") or "")
    return get_model_type(config) or ""


def check_supported(config: dict[str, Any]) -> str:
    """mlx-vlm's model_type for `config`; UnsupportedCheckpoint when mlx-vlm has no model class
    for it or the checkpoint would need its own Python code."""
    import importlib.util

    arch = hf._architecture(config)
    if config.get("model_file") or config.get("auto_map"):
        raise hf.UnsupportedCheckpoint(
            f"architecture {arch!r} needs the checkpoint's own Python code, which is not run"
        )
    try:
        import mlx_vlm  # noqa: F401
    except ImportError as e:
        raise hf.UnsupportedCheckpoint("vision models need mlx-vlm, which is not installed") from e
    model_type = _model_type(config)
    if not model_type or importlib.util.find_spec(f"mlx_vlm.models.{model_type}") is None:
        names = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise hf.UnsupportedCheckpoint(f"vision architecture {arch!r} ({names}) is not supported by mlx-vlm")
    return model_type


def _check_side_files(src: Path) -> None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            cfg = json.loads((src / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise hf.UnsupportedCheckpoint(f"{name} names the checkpoint's own Python code, which is not run")


def _copy(src: Path, out: Path) -> None:
    """The MLX folder's top-level files, hard-linked where possible (no code, no foreign weights)."""
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name in ("README.md", "model_info.json"):
            continue
        if p.name.endswith(".safetensors") or p.name.endswith(_KEEP_SUFFIXES):
            hf._link_or_copy(p, out / p.name)


def _run_converter(src: Path, out: Path, quantize: QuantSpec | None) -> None:
    """mlx-vlm's converter on a local folder: cast and/or quantize (vision tower kept in float)."""
    from mlx_vlm.convert import convert

    kwargs: dict[str, Any] = {}
    if quantize is not None and quantize.is_cast:
        kwargs["dtype"] = quantize.dtype
    elif quantize is not None:
        kwargs.update(quantize=True, q_bits=quantize.bits, q_group_size=quantize.group_size, q_mode=quantize.mode)
    quiet = io.StringIO()  # mlx-vlm prints progress lines; keep them out of the server's stdout
    try:
        with contextlib.redirect_stdout(quiet):
            convert(str(src), mlx_path=str(out), trust_remote_code=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever mlx-vlm raises, the client gets one 400 line
        log.info("mlx-vlm conversion of %s failed: %s", src.name, e, exc_info=True)
        detail = " ".join(str(e).split())[:400] or type(e).__name__
        raise hf.UnsupportedCheckpoint(f"mlx-vlm cannot convert the checkpoint: {detail}") from e
    log.debug("mlx-vlm: %s", quiet.getvalue().strip())
    # The converter copies the source's Python files and sub-folders; none of them is run here.
    for p in list(out.iterdir()):
        if p.suffix == ".py" or p.name == "README.md":
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    for name in ("chat_template.jinja", "chat_template.json"):
        if not (out / name).exists() and (src / name).is_file() and hf._chat_template(out) is None:
            shutil.copy(src / name, out / name)


def convert_vision(
    src: Path, work: Path, emit: Emit, *, quantize: QuantSpec | None = None, adapter_dir: Path | None = None
) -> Converted:
    """A vision checkpoint folder → mlx-vlm folder + config blob (family and `clip` in families,
    as Ollama lists a model with a projector)."""
    if adapter_dir is not None:
        raise ManageError("adapters are not supported for vision models", 400)
    config = _config(src)
    try:
        check_supported(config)
        _check_side_files(src)
    except hf.UnsupportedCheckpoint as e:
        raise ManageError(str(e), 400) from e
    quantized = hf._is_quantized(config)
    if quantize is not None and quantized:
        raise ManageError(QUANTIZE_ERROR, 500)
    mlx_layout = hf.is_mlx_checkpoint(src)
    out = work / "vision"
    with CONVERT_LOCK:
        try:
            if mlx_layout and quantize is None:
                _copy(src, out)
            else:
                emit({"status": "converting model"})
                if quantize is not None and not quantize.is_cast:
                    emit({"status": f"quantizing model to {quantize.name}"})
                _run_converter(src, out, quantize)
        except hf.UnsupportedCheckpoint as e:
            raise ManageError(str(e), 400) from e
    saved = _config(out)
    if quantize is not None:
        file_type = quantize.name
    elif isinstance(saved.get("quantization"), dict):
        file_type = hf._quant_file_type(saved["quantization"])
    else:
        file_type = hf._dtype_file_type(out)
    result = hf._result(out, saved, file_type)  # writes model_info.json (text model's fields)
    return Converted(out, vision_config_blob(out, result, file_type))


def vision_config_blob(model_dir: Path, result: hf.HFImport, file_type: str) -> dict:
    """The config blob of a stored vision model: `clip` in its families, as Ollama lists a model with
    a projector, and `vision` in its capabilities, which is what marks it for the vision runner
    (engine/catalog.py)."""
    blob = mlx_dir_config(
        model_dir,
        family=result.architecture,
        parameter_count=result.parameter_count,
        file_type=file_type,
        context_length=result.context_length or None,
        embedding_length=result.embedding_length or None,
    )
    if result.architecture:
        blob["model_families"] = [result.architecture, "clip"]
    blob["capabilities"] = ["completion", "vision"]
    return blob
