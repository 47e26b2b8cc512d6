"""Hugging Face safetensors checkpoints -> MLX model folders, with mlx-lm's own
loader, quantizer and writer (the same path as ``mlx_lm.convert``), offline on
a local folder.  Also recognises folders that already are MLX models.

``file_type`` (Ollama's ``quantization_level``): the requested choice's name
when quantizing ("4bit", "8bit", "MXFP4", or the Ollama name asked for, e.g.
"Q4_K_M"); otherwise what the weights are: "BF16" / "F16" / "F32", or for an
already quantized checkpoint "<bits>bit" (affine) / "MXFP4" / "NVFP4" / "MXFP8".
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

QUANTIZE_ERROR = "quantization is only supported for F16, BF16 and F32 models"

# Ollama's GGUF names map by bits per weight: MLX affine 4-bit with 64-groups
# (fp16 scale + bias) is 4.5 bpw like Q4_0 / Q4_K_S; Q4_K_M is a little more;
# 8-bit/64 is 8.5 bpw like Q8_0.
QUANTIZE_CHOICES: dict[str, dict | None] = {
    "4bit": {"bits": 4, "group_size": 64},
    "8bit": {"bits": 8, "group_size": 64},
    "mxfp4": {"bits": 4, "group_size": 32, "mode": "mxfp4"},
    "bf16": {"dtype": "bfloat16"},
    "f16": {"dtype": "float16"},
    "fp16": {"dtype": "float16"},
    "f32": {"dtype": "float32"},
    "q4_0": {"bits": 4, "group_size": 64},
    "q4_K_M": {"bits": 4, "group_size": 64},
    "q4_K_S": {"bits": 4, "group_size": 64},
    "q8_0": {"bits": 8, "group_size": 64},
}
_CHOICE_FILE_TYPE = {
    "4bit": "4bit",
    "8bit": "8bit",
    "mxfp4": "MXFP4",
    "bf16": "BF16",
    "f16": "F16",
    "fp16": "F16",
    "f32": "F32",
    "q4_0": "Q4_0",
    "q4_K_M": "Q4_K_M",
    "q4_K_S": "Q4_K_S",
    "q8_0": "Q8_0",
}
_DTYPE_FILE_TYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "BF16": "BF16", "F16": "F16", "F32": "F32"}
_CONVERSION_DTYPES = ("float16", "bfloat16", "float32")

# Weight formats mlx-lm cannot read; a repo carrying them next to safetensors
# keeps only the safetensors.
_FOREIGN_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5", ".onnx", ".ot", ".npz")


class UnsupportedCheckpoint(ValueError):
    """The folder is not a checkpoint mlx-lm can load (architecture, weight format)."""


@dataclass
class HFImport:
    architecture: str
    file_type: str
    parameter_count: int
    context_length: int
    embedding_length: int
    chat_template: str | None
    files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# inspection


def _read_config(src: Path) -> dict[str, Any]:
    try:
        return json.loads((src / "config.json").read_text())
    except FileNotFoundError:
        raise UnsupportedCheckpoint(f"no config.json in {src}") from None
    except (OSError, ValueError) as e:
        raise UnsupportedCheckpoint(f"unreadable config.json in {src}: {e}") from e


def _text_get(config: dict[str, Any], key: str) -> Any:
    """A config value, or the text model's for multimodal wrappers (gemma3, mistral3)."""
    v = config.get(key)
    if v is None:
        v = (config.get("text_config") or {}).get(key)
    return v


def _architecture(config: dict[str, Any]) -> str:
    """Ollama's general.architecture for a safetensors model."""
    mt = config.get("model_type")
    if mt:
        return str(mt)
    archs = config.get("architectures") or []
    if archs:
        name = str(archs[0])
        for suffix in ("ForCausalLM", "ForConditionalGeneration"):
            name = name.removesuffix(suffix)
        return name.lower()
    return ""


def check_supported(config: dict[str, Any]) -> None:
    """Raise UnsupportedCheckpoint unless mlx-lm has a model class for ``config``."""
    from mlx_lm.utils import _get_classes

    arch = _architecture(config)
    if config.get("model_file"):
        raise UnsupportedCheckpoint(f"architecture {arch!r} needs the checkpoint's own Python code, which is not run")
    if not config.get("model_type"):
        raise UnsupportedCheckpoint(f"architecture {arch or 'unknown'!r}: config.json has no model_type")
    try:
        _get_classes(config)
    except (ValueError, ImportError) as e:
        names = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise UnsupportedCheckpoint(f"architecture {arch!r} ({names}) is not supported by mlx-lm") from e


def _is_quantized(config: dict[str, Any]) -> bool:
    tc = config.get("text_config") or {}
    return any(k in c for c in (config, tc) for k in ("quantization", "quantization_config"))


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > 100 << 20:
            raise UnsupportedCheckpoint(f"{path.name}: implausible safetensors header size {n}")
        return json.loads(f.read(n))


def _weight_files(src: Path) -> list[Path]:
    return sorted(p for p in src.glob("*.safetensors") if p.is_file())


def is_mlx_checkpoint(src_dir: str | Path) -> bool:
    """Already an MLX model: config.json has mlx-lm's "quantization" key, or
    the weights were written by MLX (safetensors metadata format "mlx"; HF's
    say "pt"), so their names are MLX's."""
    src = Path(src_dir)
    try:
        config = json.loads((src / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if "quantization" in config:
        return True
    files = _weight_files(src)
    if not files:
        return False
    try:
        meta = _safetensors_header(files[0]).get("__metadata__") or {}
    except (OSError, ValueError, struct.error):
        return False
    return meta.get("format") == "mlx"


def count_parameters(model_dir: Path, config: dict[str, Any]) -> int:
    """Parameters counted from the safetensors headers' tensor shapes; packed
    quantized weights count as their unpacked element count, their scales and
    biases not at all."""
    shapes: dict[str, list[int]] = {}
    for f in _weight_files(model_dir):
        for name, spec in _safetensors_header(f).items():
            if name != "__metadata__":
                shapes[name] = spec["shape"]
    qcfg = config.get("quantization") or {}
    total = 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= int(d)
        if name.endswith((".scales", ".biases")) and name.rsplit(".", 1)[0] + ".weight" in shapes:
            continue
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and f"{module}.scales" in shapes:
            per_layer = qcfg.get(module)
            bits = per_layer.get("bits") if isinstance(per_layer, dict) else qcfg.get("bits")
            n = n * 32 // int(bits or 4)
        total += n
    return total


def _dtype_file_type(model_dir: Path) -> str:
    by_dtype: Counter[str] = Counter()
    for f in _weight_files(model_dir):
        for name, spec in _safetensors_header(f).items():
            if name != "__metadata__" and len(spec["shape"]) >= 2:
                n = 1
                for d in spec["shape"]:
                    n *= int(d)
                by_dtype[spec["dtype"]] += n
    if not by_dtype:
        return "unknown"
    return _DTYPE_FILE_TYPE.get(by_dtype.most_common(1)[0][0], by_dtype.most_common(1)[0][0])


def _quant_file_type(qcfg: dict[str, Any]) -> str:
    mode = qcfg.get("mode", "affine")
    if mode != "affine":
        return str(mode).upper()
    return f"{qcfg.get('bits', 4)}bit"


def model_info(config: dict[str, Any], parameter_count: int) -> dict[str, Any]:
    """/api/show model_info for a safetensors model: Ollama's mapping from config.json."""
    arch = _architecture(config)
    info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": int(parameter_count)}
    for key, hf_key in (
        ("context_length", "max_position_embeddings"),
        ("embedding_length", "hidden_size"),
        ("block_count", "num_hidden_layers"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("feed_forward_length", "intermediate_size"),
        ("vocab_size", "vocab_size"),
    ):
        v = _text_get(config, hf_key)
        if v is not None:
            info[f"{arch}.{key}"] = v
    return info


def _chat_template(model_dir: Path) -> str | None:
    try:
        tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tc = {}
    template = tc.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template:
        return str(template)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    if (model_dir / "chat_template.json").is_file():
        try:
            return json.loads((model_dir / "chat_template.json").read_text()).get("chat_template") or None
        except ValueError:
            return None
    return None


def _result(out: Path, config: dict[str, Any], file_type: str) -> HFImport:
    parameter_count = count_parameters(out, config)
    info = model_info(config, parameter_count)
    (out / "model_info.json").write_text(json.dumps(info, indent=2))
    arch = info["general.architecture"]
    return HFImport(
        architecture=arch,
        file_type=file_type,
        parameter_count=parameter_count,
        context_length=int(info.get(f"{arch}.context_length") or 0),
        embedding_length=int(info.get(f"{arch}.embedding_length") or 0),
        chat_template=_chat_template(out),
        files=sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()),
    )


def parse_quantize(quantize: str | None) -> tuple[str, dict] | None:
    """(canonical choice name, its parameters); Ollama spells these case-insensitively."""
    if quantize is None:
        return None
    for name, spec in QUANTIZE_CHOICES.items():
        if name.lower() == str(quantize).lower():
            return name, dict(spec or {})
    raise ValueError(f"unsupported quantization type {quantize} - supported types are {', '.join(QUANTIZE_CHOICES)}")


# --------------------------------------------------------------------------
# conversion


def _clean_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # mlx-lm loads every model*.safetensors: drop shards of an earlier conversion.
    for stale in [*out.glob("model*.safetensors"), out / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)


def convert_hf_checkpoint(src_dir: str | Path, out_dir: str | Path, *, quantize: str | None = "4bit") -> HFImport:
    """Convert the Hugging Face checkpoint in ``src_dir`` into an mlx-lm model
    folder ``out_dir`` (config.json, model*.safetensors + index, tokenizer
    files, chat template, model_info.json).  ``quantize``: a QUANTIZE_CHOICES
    name, or None to keep the checkpoint's dtype (its config's torch_dtype, as
    mlx_lm.convert does)."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path
    from mlx_lm.utils import load, quantize_model, save

    src, out = Path(src_dir), Path(out_dir)
    config = _read_config(src)
    choice = parse_quantize(quantize)
    check_supported(config)
    if not _weight_files(src):
        raise UnsupportedCheckpoint(f"no *.safetensors weights in {src} (PyTorch .bin checkpoints are not supported)")
    if choice is not None and _is_quantized(config):
        raise ValueError(QUANTIZE_ERROR)
    _clean_out(out)

    quiet = io.StringIO()  # mlx-lm prints progress lines; keep them out of the server's stdout
    try:
        with contextlib.redirect_stdout(quiet):
            model, tokenizer, cfg = load(str(src), return_config=True, lazy=True)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise UnsupportedCheckpoint(f"mlx-lm cannot load {src.name}: {e}") from e

    spec = choice[1] if choice else {}
    dtype = spec.get("dtype")
    if dtype is None:
        dtype = cfg.get("torch_dtype") or cfg.get("dtype") or (cfg.get("text_config") or {}).get("dtype")
    if dtype in _CONVERSION_DTYPES:
        target = getattr(mx, dtype)
        cast_predicate = getattr(model, "cast_predicate", lambda _: True)

        def cast(path: str, v: Any) -> Any:
            if cast_predicate(path) and mx.issubdtype(v.dtype, mx.floating):
                return v.astype(target)
            return v

        model.update(tree_map_with_path(cast, model.parameters()))

    if "bits" in spec:
        with contextlib.redirect_stdout(quiet):
            model, cfg = quantize_model(model, cfg, spec["group_size"], spec["bits"], mode=spec.get("mode", "affine"))
    with contextlib.redirect_stdout(quiet):
        save(out, src, model, tokenizer, cfg, donate_model=True)
    log.debug("mlx-lm: %s", quiet.getvalue().strip())
    # save() writes a generic model card; nothing in it describes this model.
    (out / "README.md").unlink(missing_ok=True)
    if _chat_template(out) is None:
        for name in ("chat_template.jinja", "chat_template.json"):
            if (src / name).is_file():
                shutil.copy(src / name, out / name)

    saved = json.loads((out / "config.json").read_text())
    if choice is not None and "bits" in spec:
        file_type = _CHOICE_FILE_TYPE[choice[0]]
    elif "quantization" in saved:
        file_type = _quant_file_type(saved["quantization"])
    else:
        file_type = _dtype_file_type(out)
    return _result(out, saved, file_type)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_mlx_checkpoint(src_dir: str | Path, out_dir: str | Path) -> HFImport:
    """An MLX model folder taken as it is (top-level files, hard-linked where
    possible) plus a synthesised model_info.json."""
    src, out = Path(src_dir), Path(out_dir)
    config = _read_config(src)
    check_supported(config)
    if not _weight_files(src):
        raise UnsupportedCheckpoint(f"no *.safetensors weights in {src}")
    _clean_out(out)
    for p in sorted(src.iterdir()):
        if (
            not p.is_file()
            or p.name.startswith(".")
            or p.name in ("README.md", "model_info.json")
            or p.name.endswith(_FOREIGN_WEIGHTS)
        ):
            continue
        _link_or_copy(p, out / p.name)
    if "quantization" in config:
        file_type = _quant_file_type(config["quantization"])
    else:
        file_type = _dtype_file_type(out)
    return _result(out, config, file_type)
