"""Building stored models: /api/create, the conversion steps pull shares, and `convert_path`.

Every model we build comes through here: /api/create, `mlxollama convert` and the bundled models
(`convert_path`), pulls (`convert_gguf`, `convert_checkpoint`, `import_ollama_model`) and test
fixtures (`package_model_dir`). Each config blob comes from `model_config`.

Everything here is synchronous (run it in a worker thread) and reports progress through an
`emit(dict)` callback with Ollama's status objects. Weight conversions run one at a time
(`CONVERT_LOCK`): each holds a whole model in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from ..errors import StatusError
from ..store import (
    InvalidName,
    Layer,
    Manifest,
    ModelName,
    Store,
    StoredManifest,
    build_config_blob,
    format_parameter_size,
    is_orphaned_temp,
    is_valid_digest,
    media,
    owned_temp_prefix,
    validate_digest,
)
from .quantize import QUANTIZE_ERROR, QuantizeError, QuantSpec, parse_quantize, read_safetensors_header

log = logging.getLogger("mlxollama.convert")
Emit = Callable[[dict], None]
CONVERT_LOCK = threading.Lock()
WORK_PREFIX = ".tmp-mlxollama-work-"
# Our config blob records which GGUF a model was converted from, so a re-pull (or a pull of another
# tag sharing that GGUF) reuses the conversion instead of downloading the GGUF again.
SOURCE_KEY = "mlxollama_source_digest"

TEXT_LAYER_TYPES = frozenset({media.TEMPLATE, media.PROMPT, media.SYSTEM, media.PARAMS, media.MESSAGES, media.LICENSE})
_TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
}


class ManageError(StatusError):
    """A model-management failure (used as the HTTP status when nothing was streamed yet)."""


def _noop(_: dict) -> None:
    pass


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------------------ work folders


@contextmanager
def work_dir(store: Store, kind: str = "convert") -> Iterator[Path]:
    """A scratch folder inside the store root, so finished files move into blobs/ by rename. Its name
    carries our pid, so a sweep can tell a killed process's folder from one still in use."""
    store.root.mkdir(parents=True, exist_ok=True)
    sweep_work_dirs(store)
    path = store.root / f"{owned_temp_prefix(WORK_PREFIX)}{kind}-{uuid.uuid4().hex}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_work_dirs(store: Store, max_age: float = 24 * 3600) -> list[Path]:
    """Remove work folders a crash left behind: at once when the process that made them is gone,
    else (folders without a pid, or a pid we cannot check) once they are a day old."""
    try:
        entries = list(os.scandir(store.root))
    except OSError:
        return []
    now = time.time()
    removed = []
    for e in entries:
        if not e.name.startswith(WORK_PREFIX):
            continue
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
            if is_orphaned_temp(e.name) or now - e.stat(follow_symlinks=False).st_mtime > max_age:
                shutil.rmtree(e.path, ignore_errors=True)
                removed.append(Path(e.path))
        except OSError:
            pass
    return removed


# ------------------------------------------------------------------------------ layers


def media_type_for(relative_name: str) -> str:
    """The layer type of one file of an MLX model folder."""
    base = relative_name.rsplit("/", 1)[-1]
    if base.endswith(".safetensors"):
        return media.MLX_WEIGHTS
    if relative_name == "config.json":
        return media.MLX_CONFIG
    if base in _TOKENIZER_FILES:
        return media.MLX_TOKENIZER
    return media.MLX_FILE


@dataclass
class LayerSet:
    """Layers in manifest order plus the create statuses Ollama prints for them."""

    layers: list[Layer] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def add_existing(self, layer: Layer) -> None:
        self.layers.append(layer)
        self.statuses.append(f"using existing layer {layer.digest}")

    def add_file(self, store: Store, path: Path, name: str, *, move: bool = False, from_: str | None = None) -> Layer:
        digest = _sha256_file(path)
        existed = store.has_blob(digest)
        if not existed:
            store.add_blob_from_path(path, move=move, expected_digest=digest)
        size = store.blob_size(digest) or 0
        layer = Layer(media_type_for(name), digest, size, name=name, from_=from_)
        self.layers.append(layer)
        self.statuses.append(f"{'using existing' if existed else 'creating new'} layer {digest}")
        return layer

    def add_text(self, store: Store, media_type: str, text: str) -> Layer:
        data = text.encode("utf-8")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        existed = store.has_blob(digest)
        digest, size = store.write_blob(data)
        layer = Layer(media_type, digest, size)
        self.layers.append(layer)
        self.statuses.append(f"{'using existing' if existed else 'creating new'} layer {digest}")
        return layer

    def add_dir(self, store: Store, model_dir: Path, *, move: bool = True) -> None:
        for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
            self.add_file(store, path, path.relative_to(model_dir).as_posix(), move=move)

    def remove_types(self, types: frozenset[str] | set[str]) -> None:
        keep = [(l, s) for l, s in zip(self.layers, self.statuses) if l.media_type not in types]
        self.layers = [l for l, _ in keep]
        self.statuses = [s for _, s in keep]


def referenced_digests(store: Store) -> set[str]:
    return {d for m in store.list_models() for d in m.manifest.digests()}


def prune_unreferenced(store: Store, digests: set[str]) -> list[str]:
    """Delete those of `digests` no manifest references any more (Ollama's removeLayers)."""
    removed = []
    with store.lock:
        refs = referenced_digests(store)
        for d in sorted(set(digests) - refs):
            try:
                store.blob_path(d).unlink()
                removed.append(d)
            except (FileNotFoundError, ValueError):
                pass
    return removed


def write_model(
    store: Store,
    name: ModelName,
    layer_set: LayerSet,
    config: dict,
    emit: Emit,
    *,
    noprune: bool = False,
    print_statuses: bool = True,
    announce_prune: bool = False,
    raw_manifest: bytes | None = None,
) -> StoredManifest:
    config_layer = store.add_config(config) if raw_manifest is None else None
    if print_statuses:
        for s in layer_set.statuses:
            emit({"status": s})
    emit({"status": "writing manifest"})
    with store.lock:
        old = store.get_manifest(name)
        store.write_manifest(
            name, raw_manifest if raw_manifest is not None else Manifest(config=config_layer, layers=layer_set.layers)
        )
    if old is not None and not noprune:
        if prune_unreferenced(store, set(old.manifest.digests())) and announce_prune:
            emit({"status": "removing unused layers"})
    stored = store.get_manifest(name)
    assert stored is not None
    return stored


# ------------------------------------------------------------------------------ configs


def _count_parameters(model_dir: Path, config: dict) -> int:
    quant = config.get("quantization") or {}
    bits = int(quant.get("bits", 0) or 0) if isinstance(quant, dict) else 0
    total = 0
    for st in sorted(Path(model_dir).rglob("*.safetensors")):
        header = read_safetensors_header(st)
        names = set(header)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            n = 1
            for d in info.get("shape", []):
                n *= int(d)
            stem = key.rsplit(".", 1)[0]
            if key.endswith((".scales", ".biases")) and f"{stem}.weight" in names:
                continue  # quantization side data, not parameters
            if info.get("dtype") == "U32" and f"{stem}.scales" in names:
                layer_bits = bits
                per_layer = quant.get(stem) if isinstance(quant, dict) else None
                if isinstance(per_layer, dict):
                    layer_bits = int(per_layer.get("bits", bits))
                n = n * 32 // (layer_bits or 4)
            total += n
    return total


def _file_type(config: dict, model_dir: Path) -> str:
    quant = config.get("quantization")
    if isinstance(quant, dict) and quant:
        mode = quant.get("mode", "affine")
        return mode.upper() if mode != "affine" else f"Q{quant.get('bits', 4)}"
    from .quantize import source_dtype_name

    return source_dtype_name(model_dir)


def model_config(
    *,
    family: str,
    parameter_count: int,
    file_type: str,
    context_length: int | None = 0,
    embedding_length: int | None = 0,
    capabilities: list[str] | None = None,
    source_digest: str | None = None,
    base: dict | None = None,
) -> dict:
    """The config blob of every model we convert. `base`: the Ollama config of the model it was
    converted from (a pulled GGUF), whose family, families and size it keeps."""
    base = base or {}
    family = base.get("model_family") or family
    return build_config_blob(
        model_format="mlx",
        model_family=family,
        model_families=base.get("model_families") or ([family] if family else None),
        model_type=base.get("model_type") or format_parameter_size(parameter_count),
        file_type=file_type,
        capabilities=capabilities,
        context_length=context_length or 0,
        embedding_length=embedding_length or 0,
        extra={SOURCE_KEY: source_digest} if source_digest else None,
    )


def mlx_dir_config(
    model_dir: Path,
    *,
    file_type: str = "",
    family: str = "",
    parameter_count: int | None = None,
    context_length: int | None = None,
    embedding_length: int | None = None,
) -> dict:
    """model_config for an MLX folder; explicit values win over what its config.json says."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}

    def pick(key):
        return cfg.get(key) or text_cfg.get(key)

    return model_config(
        family=family or str(cfg.get("model_type", "")),
        parameter_count=_count_parameters(model_dir, cfg) if parameter_count is None else parameter_count,
        file_type=file_type or _file_type(cfg, model_dir),
        context_length=context_length or pick("max_position_embeddings"),
        embedding_length=embedding_length or pick("hidden_size"),
    )


# ------------------------------------------------------------------------------ conversions


def supported_gguf_architectures() -> list[str]:
    from .gguf import ARCHITECTURES
    from .gguf_encoder import ENCODER_ARCHITECTURES
    from .gguf_vision import VISION_FAMILIES

    return sorted({*ARCHITECTURES, *ENCODER_ARCHITECTURES, *VISION_FAMILIES})


def check_gguf_architecture(arch: str) -> None:
    """Fail before a large download when the registry's config names an architecture we cannot convert."""
    if not arch:
        return
    supported = supported_gguf_architectures()
    if arch not in supported:
        raise ManageError(
            f'unsupported model architecture "{arch}": mlxollama converts GGUF models of {", ".join(supported)}', 400
        )


def _quantize_status(src_type: str, spec: QuantSpec, emit: Emit):
    status = f"quantizing {src_type} model to {spec.name}"

    def progress(done: int, total: int) -> None:
        emit({"status": status, "digest": "0000000000000000000", "total": total, "completed": done})

    return progress


def apply_quantize(src: Path, out: Path, spec: QuantSpec, emit: Emit) -> Path:
    from .quantize import quantize_dir, source_dtype_name

    src_type = source_dtype_name(src)
    if src_type == "quantized":
        raise ManageError(QUANTIZE_ERROR, 500)
    try:
        quantize_dir(src, out, spec, _quantize_status(src_type, spec, emit))
    except QuantizeError as e:
        raise ManageError(str(e), e.status) from e
    emit({"status": "verifying conversion"})
    return out


def apply_adapter(src: Path, adapter_dir: Path, out: Path, emit: Emit) -> Path:
    from .quantize import fuse_adapter

    emit({"status": "converting adapter"})
    try:
        fuse_adapter(src, adapter_dir, out)
    except QuantizeError as e:
        raise ManageError(str(e), e.status) from e
    return out


@dataclass
class Converted:
    model_dir: Path
    config: dict
    owned: bool = True  # model_dir is our scratch output (its files may be moved into the store)


def convert_gguf(
    gguf_path: Path,
    work: Path,
    emit: Emit,
    *,
    quantize: QuantSpec | None = None,
    adapter_dir: Path | None = None,
    source_digest: str | None = None,
    base_config: dict | None = None,
    projector_path: Path | None = None,
) -> Converted:
    """GGUF file → MLX folder (+ optional adapter fusion and quantization) and its config blob.
    A vision model (the tower in the file, or `projector_path`'s mmproj GGUF) → an mlx-vlm folder."""
    from .gguf import UnsupportedGGUF, import_gguf
    from .gguf_encoder import is_encoder_architecture, read_architecture
    from .gguf_vision import vision_import_wanted

    try:
        vision = vision_import_wanted(gguf_path, projector_path)
    except UnsupportedGGUF as e:
        raise ManageError(str(e), 400) from e
    except (ValueError, IndexError, KeyError) as e:  # not a GGUF: the importer below says so in Ollama's words
        log.info("GGUF header unreadable: %s", e)
        vision = False
    if vision:
        return _convert_gguf_vision(
            gguf_path, projector_path, work, emit, quantize, adapter_dir, source_digest, base_config
        )

    try:
        if is_encoder_architecture(read_architecture(gguf_path)):  # bert, nomic-bert: our MLX encoder
            return _convert_gguf_encoder(
                gguf_path,
                work,
                emit,
                quantize=quantize,
                adapter_dir=adapter_dir,
                source_digest=source_digest,
                base_config=base_config,
            )
    except (ValueError, IndexError, KeyError) as e:  # not a GGUF: the importer below says so in Ollama's words
        log.info("GGUF header unreadable: %s", e)
    out = work / "mlx"
    emit({"status": "converting to mlx"})
    with CONVERT_LOCK:
        try:
            result = import_gguf(gguf_path, out)
        except UnsupportedGGUF as e:
            raise ManageError(str(e), 400) from e
        except ValueError as e:  # not a GGUF at all: Ollama's text; the reader's detail may name a path
            log.info("GGUF import failed: %s", e)
            raise ManageError("supplied file was not in GGUF format", 400) from e
        model_dir, file_type = _transform(out, work, emit, quantize, adapter_dir)
    config = model_config(
        family=result.architecture,
        parameter_count=result.parameter_count,
        file_type=file_type or (base_config or {}).get("file_type") or result.file_type,
        context_length=result.context_length,
        embedding_length=result.embedding_length,
        source_digest=source_digest,
        base=base_config,
    )
    return Converted(model_dir, config)


def _untransformed_gguf_config(
    result, capabilities: list[str], source_digest: str | None, base_config: dict | None
) -> dict:
    """model_config for a GGUF import kept as it is (no quantization, no adapter): the file type is
    the pulled model's, else the GGUF's own."""
    return model_config(
        family=result.architecture,
        parameter_count=result.parameter_count,
        file_type=(base_config or {}).get("file_type") or result.file_type,
        context_length=result.context_length,
        embedding_length=result.embedding_length,
        capabilities=capabilities,
        source_digest=source_digest,
        base=base_config,
    )


def _convert_gguf_vision(
    gguf_path: Path,
    projector_path: Path | None,
    work: Path,
    emit: Emit,
    quantize: QuantSpec | None,
    adapter_dir: Path | None,
    source_digest: str | None,
    base_config: dict | None,
) -> Converted:
    """A GGUF vision model → mlx-vlm folder (gguf_vision.py); config blob as for a vision checkpoint:
    `clip` among the families (Ollama's mark of a projector) and `vision` in the capabilities."""
    from .gguf import UnsupportedGGUF
    from .gguf_vision import import_gguf_vision

    if quantize is not None:
        raise ManageError("quantization is not supported for vision models imported from GGUF", 400)
    if adapter_dir is not None:
        raise ManageError("adapters are not supported for vision models", 400)
    out = work / "vision"
    emit({"status": "converting to mlx"})
    with CONVERT_LOCK:
        try:
            result = import_gguf_vision(gguf_path, projector_path, out)
        except UnsupportedGGUF as e:
            raise ManageError(str(e), 400) from e
        except ValueError as e:
            log.info("GGUF vision import failed: %s", e)
            raise ManageError("supplied file was not in GGUF format", 400) from e
    config = _untransformed_gguf_config(result, ["completion", "vision"], source_digest, base_config)
    families = [f for f in config.get("model_families") or [result.architecture] if f != "clip"]
    config["model_families"] = [*families, "clip"]
    return Converted(out, config)


def _convert_gguf_encoder(
    gguf_path: Path,
    work: Path,
    emit: Emit,
    *,
    quantize: QuantSpec | None,
    adapter_dir: Path | None,
    source_digest: str | None,
    base_config: dict | None,
) -> Converted:
    """A GGUF sentence encoder → the folder engine/encoder.py runs (weights kept unquantized)."""
    from .gguf_encoder import import_gguf_encoder

    if quantize is not None:
        raise ManageError("quantization is not supported for embedding models", 400)
    if adapter_dir is not None:
        raise ManageError("adapters are not supported for embedding models", 400)
    out = work / "encoder"
    emit({"status": "converting to mlx"})
    with CONVERT_LOCK:
        try:
            result = import_gguf_encoder(gguf_path, out)
        except ValueError as e:  # UnsupportedEncoderGGUF, UnsupportedEncoder: messages carry no paths
            raise ManageError(str(e), 400) from e
    config = _untransformed_gguf_config(result, ["embedding"], source_digest, base_config)
    return Converted(out, config)


def _transform(
    model_dir: Path, work: Path, emit: Emit, quantize: QuantSpec | None, adapter_dir: Path | None
) -> tuple[Path, str]:
    file_type = ""
    if adapter_dir is not None:
        model_dir = apply_adapter(model_dir, adapter_dir, work / "fused", emit)
    if quantize is not None:
        model_dir = apply_quantize(model_dir, work / "quantized", quantize, emit)
        file_type = quantize.name
    return model_dir, file_type


def is_mlx_checkpoint(src: Path) -> bool:
    """Already MLX: mlx-lm's `quantization` key in config.json (or MLX-written weights)."""
    try:
        from .hf import is_mlx_checkpoint as check
    except ImportError:
        check = None
    if check is not None:
        return check(src)
    try:
        cfg = json.loads((src / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "quantization" in cfg


def _is_quantized_dir(src: Path) -> bool:
    try:
        return bool(json.loads((src / "config.json").read_text()).get("quantization"))
    except (OSError, ValueError):
        return False


def convert_checkpoint(
    src: Path,
    work: Path,
    emit: Emit,
    *,
    quantize: QuantSpec | None = None,
    adapter_dir: Path | None = None,
    mlx_layout: bool | None = None,
) -> Converted:
    """A safetensors folder (Hugging Face or MLX layout, or a sentence-transformers embedding
    model) → MLX folder and config blob."""
    if not (src / "config.json").is_file():
        raise ManageError("no config.json in the safetensors files", 400)
    if is_sentence_transformers(src):
        return convert_encoder(src, work, emit, quantize=quantize, adapter_dir=adapter_dir)
    from .vlm import convert_vision, is_vision_checkpoint

    if is_vision_checkpoint(src):  # an mlx-vlm folder: kept as is, or made by mlx-vlm's converter
        return convert_vision(src, work, emit, quantize=quantize, adapter_dir=adapter_dir)
    if mlx_layout is None:
        mlx_layout = is_mlx_checkpoint(src)
    if quantize is not None and _is_quantized_dir(src):
        raise ManageError(QUANTIZE_ERROR, 500)
    try:
        from . import hf
    except ImportError:
        hf = None  # mlx-lm loads MLX folders and plain HF checkpoints of its architectures as they are
    model_dir, result, done_quantize = src, None, False
    with CONVERT_LOCK:
        try:
            if hf is not None and mlx_layout:
                result = hf.copy_mlx_checkpoint(src, work / "mlx")
                model_dir = work / "mlx"
            elif hf is not None:
                emit({"status": "converting model"})
                choice = None
                if quantize is not None and adapter_dir is None:
                    try:
                        choice = hf.parse_quantize(quantize.name.lower()) and quantize.name.lower()
                    except ValueError:
                        choice = None
                result = hf.convert_hf_checkpoint(src, work / "converted", quantize=choice)
                model_dir, done_quantize = work / "converted", choice is not None
        except ValueError as e:  # hf.UnsupportedCheckpoint and friends
            raise ManageError(str(e), 400) from e
        model_dir, file_type = _transform(model_dir, work, emit, None if done_quantize else quantize, adapter_dir)
    kwargs: dict[str, Any] = {"file_type": file_type or (quantize.name if done_quantize else "")}
    if result is not None:
        kwargs.update(
            family=result.architecture or "",
            parameter_count=result.parameter_count or None,
            context_length=result.context_length or None,
            embedding_length=result.embedding_length or None,
        )
        if (
            not kwargs["file_type"]
            and result.file_type
            and model_dir == (work / "mlx" if mlx_layout else work / "converted")
        ):
            kwargs["file_type"] = result.file_type
    return Converted(model_dir, mlx_dir_config(model_dir, **kwargs), model_dir != src)


def is_sentence_transformers(src: Path) -> bool:
    """An embedding model: a sentence-transformers folder, or a bare encoder checkpoint (BERT family)."""
    if (src / "modules.json").is_file() or (src / "sentence_bert_config.json").is_file():
        return True
    try:
        model_type = json.loads((src / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    from ..engine.encoder import SUPPORTED_MODEL_TYPES

    return model_type in SUPPORTED_MODEL_TYPES


def convert_encoder(
    src: Path, work: Path, emit: Emit, *, quantize: QuantSpec | None = None, adapter_dir: Path | None = None
) -> Converted:
    """A sentence-transformers folder → the embedding model our encoder runs (weights unquantized:
    embeddings are sensitive to it)."""
    if quantize is not None:
        raise ManageError("quantization is not supported for embedding models", 400)
    if adapter_dir is not None:
        raise ManageError("adapters are not supported for embedding models", 400)
    from .hf_encoder import convert_sentence_transformers

    out = work / "encoder"
    emit({"status": "converting model"})
    with CONVERT_LOCK:
        try:
            result = convert_sentence_transformers(src, out)
        except ValueError as e:  # EncoderImportError, UnsupportedEncoder: name the folder, not its path
            raise ManageError(str(e).replace(f"{src}: ", "").replace(str(src), src.name), 400) from e
    config = model_config(
        family=result.architecture,
        parameter_count=result.parameter_count,
        file_type=result.file_type,
        context_length=result.context_length,
        embedding_length=result.embedding_length,
        capabilities=["embedding"],
    )
    return Converted(out, config)


def find_converted(store: Store, source_digest: str) -> StoredManifest | None:
    """A stored model converted from this GGUF digest, whose MLX layers can be reused."""
    for stored in store.list_models():
        try:
            if stored.read_config().get(SOURCE_KEY) == source_digest and all(
                store.has_blob(d) for d in stored.manifest.digests()
            ):
                return stored
        except (OSError, ValueError):
            continue
    return None


def mlx_layers(stored: StoredManifest) -> list[Layer]:
    return [l for l in stored.manifest.layers if l.media_type in media.MLX_TYPES]


# ------------------------------------------------------------------------------ /api/create


@dataclass
class CreateRequest:
    """What to build. `from_` only ever names a model and `files`/`adapters` name uploaded blobs, as
    in Ollama; `local_source` (a file or folder on this machine) is for in-process callers only
    (`convert_path`), never filled from a request: a client must not make the server read its files."""

    name: ModelName
    display: str
    from_: str = ""
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    local_source: Path | None = None
    quantize: str = ""
    template: str | None = None
    system: str | None = None
    parameters: dict | None = None
    messages: list[dict] | None = None
    license: list[str] = field(default_factory=list)
    draft: str = ""  # DRAFT: a model in the store that drafts tokens for this one (engine/speculative.py)


def _valid_rel_path(p: str) -> bool:
    # Go's fs.ValidPath plus Ollama's refusal of `\` and `:`.
    if not isinstance(p, str) or p in ("", ".") or "\\" in p or ":" in p or "\x00" in p:
        return False
    if p.startswith("/") or p.endswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in p.split("/"))


def _check_files(files: Any, key: str) -> dict[str, str] | None:
    if files is None:
        return None
    if not isinstance(files, dict):
        raise ManageError(
            f"json: cannot unmarshal {type(files).__name__} into Go struct field CreateRequest.{key} of type map[string]string",
            400,
        )
    for path, digest in files.items():
        if not _valid_rel_path(path):
            raise ManageError("file path must be relative", 400)
        if not isinstance(digest, str) or not digest or not is_valid_digest(digest):
            raise ManageError("invalid digest format", 400)
    return {p: validate_digest(d) for p, d in files.items()}


def parse_create_request(body: dict) -> CreateRequest:
    """Validate what Ollama validates before streaming (400s); the legacy `modelfile` is translated."""
    from .modelfile import ModelfileError, parse, to_create_fields

    body = dict(body)
    name_text = body.get("model") or body.get("name") or ""
    if not isinstance(name_text, str):
        raise ManageError("json: cannot unmarshal into Go struct field CreateRequest.model of type string", 400)
    if not body.get("from") and body.get("files") is None:
        # The old `path` field (a Modelfile on the server) is not read: it would let any client
        # have the server parse, and echo back, files it can read.
        text = body.get("modelfile") or ""
        if isinstance(text, str) and text:
            try:
                fields = to_create_fields(parse(text))
            except ModelfileError as e:
                raise ManageError(str(e), 400) from e
            for k, v in fields.items():
                body.setdefault(k, v)
    files = _check_files(body.get("files"), "files")
    adapters = _check_files(body.get("adapters"), "adapters")
    from_text = body.get("from") or ""
    if not isinstance(from_text, str):
        raise ManageError("json: cannot unmarshal into Go struct field CreateRequest.from of type string", 400)
    try:
        name = ModelName.parse(name_text)
    except InvalidName:
        raise ManageError("invalid model name", 400) from None
    lic = body.get("license")
    licenses = (
        [lic]
        if isinstance(lic, str) and lic
        else [x for x in (lic or []) if isinstance(x, str)]
        if isinstance(lic, list)
        else []
    )
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ManageError(
            "json: cannot unmarshal into Go struct field CreateRequest.parameters of type map[string]interface {}", 400
        )
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise ManageError(
            "json: cannot unmarshal into Go struct field CreateRequest.messages of type []api.Message", 400
        )
    quantize = body.get("quantize") or body.get("quantization") or ""
    draft = body.get("draft") or ""
    if not isinstance(draft, str):
        raise ManageError("json: cannot unmarshal into Go struct field CreateRequest.draft of type string", 400)
    return CreateRequest(
        name=name,
        display=name_text,
        from_=from_text,
        files=files,
        adapters=adapters,
        quantize=quantize if isinstance(quantize, str) else "",
        template=body.get("template") if isinstance(body.get("template"), str) and body.get("template") else None,
        system=body.get("system") if isinstance(body.get("system"), str) and body.get("system") else None,
        parameters=params or None,
        messages=[
            {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
            for m in messages
            if isinstance(m, dict)
        ]
        if messages
        else None,
        license=licenses,
        draft=draft,
    )


# ------------------------------------------------------------------------------ DRAFT

# The config blob's `draft` (Ollama's config.Draft, plus the draft's name: our draft is a model in
# the store rather than a layer of this manifest).
DRAFT_KEY = "draft"


def draft_reference(store: Store, name_text: str, layers: list[Layer]) -> dict:
    """What the config blob records for DRAFT `name_text`; a 400 when the draft is missing, is not a
    text model, or reads another vocabulary (its proposals would be other tokens' ids)."""
    try:
        name = ModelName.parse(name_text)
    except InvalidName:
        raise ManageError("invalid draft model name", 400) from None
    draft = store.get_manifest(name)
    if draft is None:
        raise ManageError(f"draft model '{name_text}' not found", 400)
    config = draft.read_config() or {}
    if "embedding" in (config.get("capabilities") or []) or not draft.layers_by_type(media.MLX_WEIGHTS):
        raise ManageError(f"draft model '{name_text}' is not a text generation model", 400)
    if DRAFT_KEY in config:
        raise ManageError(f"draft model '{name_text}' has a draft of its own; name its main model instead", 400)
    if not same_vocabulary(store, layers, draft.manifest.layers):
        raise ManageError(
            f"draft model '{name_text}' does not share this model's vocabulary: "
            "speculative decoding needs a draft with the same tokenizer",
            400,
        )
    return {
        "model": draft.name.display_shortest(),
        "model_format": "mlx",
        "architecture": config.get("model_family", ""),
    }


def _vocabulary(store: Store, layers: list[Layer]):
    """What decides which id is which token: tokenizer.json's vocabulary and added tokens, else the
    digest of a sentencepiece or vocab file; None when the model carries none of them."""
    by_name = {l.name: l.digest for l in layers if l.media_type == media.MLX_TOKENIZER and l.name}
    if "tokenizer.json" in by_name:
        tok = json.loads(store.blob_path(by_name["tokenizer.json"]).read_text(encoding="utf-8"))
        added = sorted((t.get("id"), t.get("content")) for t in tok.get("added_tokens") or [])
        return ("tokenizer.json", json.dumps((tok.get("model") or {}).get("vocab"), sort_keys=True), added)
    for name in ("tokenizer.model", "vocab.json", "vocab.txt"):
        if name in by_name:
            return (name, by_name[name])
    return None


def same_vocabulary(store: Store, main: list[Layer], draft: list[Layer]) -> bool:
    def tokenizer_json(layers):
        return next((l.digest for l in layers if l.name == "tokenizer.json"), None)

    if tokenizer_json(main) is not None and tokenizer_json(main) == tokenizer_json(draft):
        return True  # the same file (a quantized copy shares it): no need to read it
    ours = _vocabulary(store, main)
    return ours is not None and ours == _vocabulary(store, draft)


def check_template(template: str) -> None:
    from ..template.gotemplate import TemplateError, parse

    try:
        parse(template)
    except TemplateError as e:
        raise ManageError(f"template error: {e}", 400) from e


def _stage(store: Store, files: dict[str, str], dest: Path) -> None:
    for rel, digest in files.items():
        blob = store.blob_path(digest)
        if not blob.is_file():
            raise ManageError(f"blob not found for {rel} (digest {digest})", 400)
        target = dest.joinpath(*PurePosixPath(rel).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(blob, target)
        except OSError:
            shutil.copyfile(blob, target)


def _is_gguf_blob(store: Store, rel: str, digest: str) -> bool:
    if rel.endswith(".gguf"):
        return True
    try:
        with open(store.blob_path(digest), "rb") as f:
            return f.read(4) in (b"GGUF", b"FUGG")
    except OSError:
        return False


def _detect_type(store: Store, files: dict[str, str]) -> str:
    kinds = set()
    for rel, digest in files.items():
        if rel.endswith(".safetensors"):
            kinds.add("safetensors")
        elif _is_gguf_blob(store, rel, digest):
            kinds.add("gguf")
    if len(kinds) > 1:
        raise ManageError("mixed model file types: found both gguf and safetensors inputs", 400)
    return kinds.pop() if kinds else ""


def _apply_modelfile_layers(store: Store, ls: LayerSet, req: CreateRequest, base_params: dict | None) -> None:
    """template/system/license/parameters/messages the way Ollama's createModel layers them."""
    if req.template:
        check_template(req.template)
        ls.remove_types({media.TEMPLATE, media.PROMPT})
        ls.add_text(store, media.TEMPLATE, req.template)
    if req.system:
        ls.remove_types({media.SYSTEM})
        ls.add_text(store, media.SYSTEM, req.system)
    for text in req.license:
        ls.add_text(store, media.LICENSE, text)
    params = dict(req.parameters or {})
    for k, v in (base_params or {}).items():
        params.setdefault(k, v)
    if params:
        ls.remove_types({media.PARAMS})
        ls.add_text(store, media.PARAMS, json.dumps(params, separators=(",", ":"), ensure_ascii=False))
    if req.messages:
        ls.remove_types({media.MESSAGES})
        ls.add_text(store, media.MESSAGES, json.dumps(req.messages, separators=(",", ":"), ensure_ascii=False))


def _adapter_source(store: Store, req: CreateRequest, work: Path) -> Path | None:
    if req.adapters:
        if any(_is_gguf_blob(store, rel, d) for rel, d in req.adapters.items()):
            raise ManageError(
                "unsupported adapter: GGUF LoRA adapters cannot be applied to MLX models; "
                "use an mlx-lm adapter (adapter_config.json + adapters.safetensors)",
                400,
            )
        dest = work / "adapter"
        _stage(store, req.adapters, dest)
        return dest
    return None


def create_model(store: Store, req: CreateRequest, emit: Emit = _noop, *, noprune: bool = False) -> StoredManifest:
    """Build the model `req` describes. A `from` model must already be in the store (the API
    layer pulls it first, as Ollama does); `from` is a model name even when it looks like a path."""
    try:
        spec = parse_quantize(req.quantize) if req.quantize else None
    except QuantizeError as e:
        raise ManageError(str(e), e.status) from e
    if req.template:
        check_template(req.template)
    with work_dir(store, "create") as work:
        try:
            return _create_in(store, req, work, spec, emit, noprune)
        except Exception as e:
            # Converters name the files they fail on: keep the server's own folders out of the answer.
            text = str(e)
            scrubbed = _without_server_paths(text, work, store.root)
            if scrubbed == text:
                raise
            log.info("create of %s failed: %s", req.display, text)
            raise ManageError(scrubbed, e.status if isinstance(e, StatusError) else 500) from e


def _without_server_paths(text: str, work: Path, root: Path) -> str:
    # innermost first; a file keeps its own (uploaded) name
    for folder, label in ((work / "src", "the uploaded files"), (work, "the work folder"), (root, "the store")):
        text = text.replace(f"{folder}{os.sep}", "").replace(str(folder), label)
    return text


def _create_in(
    store: Store, req: CreateRequest, work: Path, spec: QuantSpec | None, emit: Emit, noprune: bool
) -> StoredManifest:
    adapter_dir = _adapter_source(store, req, work)
    base_params: dict | None = None
    if req.local_source is not None:
        conv = _convert_local_path(store, req.local_source, work, emit, spec, adapter_dir)
        ls = LayerSet()
        ls.add_dir(store, conv.model_dir, move=conv.owned)
        config = conv.config
    elif req.from_:
        try:
            base_name = ModelName.parse(req.from_)
        except InvalidName:
            raise ManageError("invalid model name", 400) from None
        base = store.get_manifest(base_name)
        if base is None:
            raise ManageError(f"model '{req.from_}' not found", 404)
        ls, config, base_params = _from_model(store, base, work, emit, spec, adapter_dir)
    elif req.files is not None:
        ls, config = _from_files(store, req.files, work, emit, spec, adapter_dir)
    else:
        raise ManageError("neither 'from' or 'files' was specified", 400)
    _apply_modelfile_layers(store, ls, req, base_params)
    if req.draft:
        config = {**config, DRAFT_KEY: draft_reference(store, req.draft, ls.layers)}
    return write_model(store, req.name, ls, config, emit, noprune=noprune)


def _from_model(
    store: Store, base: StoredManifest, work: Path, emit: Emit, spec: QuantSpec | None, adapter_dir: Path | None
) -> tuple[LayerSet, dict, dict | None]:
    parent = base.name.display_shortest()
    config = base.read_config()
    base_params = None
    ls = LayerSet()
    for layer in base.manifest.layers:
        if layer.media_type == media.PARAMS:
            base_params = json.loads(base.read_blob(layer) or b"{}")
        ls.add_existing(Layer(layer.media_type, layer.digest, layer.size, name=layer.name, from_=parent))
    if spec is not None or adapter_dir is not None:
        files = [l for l in base.manifest.layers if l.media_type in media.MLX_TYPES]
        if not files:
            raise ManageError(f"{parent} has no MLX weights to transform", 400)
        src = work / "base"
        _stage(store, {l.name: l.digest for l in files if l.name}, src)
        if spec is not None and _is_quantized_dir(src):
            raise ManageError(QUANTIZE_ERROR, 500)
        from .vlm import convert_vision, is_vision_checkpoint

        if is_vision_checkpoint(src):  # mlx-vlm quantizes it (the vision tower stays in float)
            out = convert_vision(src, work, emit, quantize=spec, adapter_dir=adapter_dir).model_dir
            file_type = spec.name if spec is not None else ""
        else:
            with CONVERT_LOCK:
                out, file_type = _transform(src, work, emit, spec, adapter_dir)
        old = LayerSet(ls.layers, ls.statuses)
        ls = LayerSet()
        ls.add_dir(store, out, move=True)
        old.remove_types(media.MLX_TYPES)
        ls.layers += old.layers
        ls.statuses += old.statuses
        config = {**config, **({"file_type": file_type} if file_type else {})}
        config.pop(SOURCE_KEY, None)
    return ls, config, base_params


def _from_files(
    store: Store, files: dict[str, str], work: Path, emit: Emit, spec: QuantSpec | None, adapter_dir: Path | None
) -> tuple[LayerSet, dict]:
    if not files:
        raise ManageError("no files provided to convert", 400)
    kind = _detect_type(store, files)
    ls = LayerSet()
    if kind == "gguf":
        from .gguf_vision import is_projector_file, source_key_for

        ggufs = {rel: d for rel, d in files.items() if _is_gguf_blob(store, rel, d)}
        for rel, digest in ggufs.items():
            if not store.blob_path(digest).is_file():
                raise ManageError(f"blob not found for {rel} (digest {digest})", 400)
        # Ollama's create: an mmproj GGUF among the files is the model's projector layer
        projectors = {rel: d for rel, d in ggufs.items() if is_projector_file(store.blob_path(d))}
        models = {rel: d for rel, d in ggufs.items() if rel not in projectors}
        if len(models) != 1 or len(projectors) > 1:
            raise ManageError(
                "only one GGUF model file (and one projector) is supported: split GGUFs cannot be converted", 400
            )
        ((rel, digest),) = models.items()
        projector_digest = next(iter(projectors.values()), None)
        projector = store.blob_path(projector_digest) if projector_digest else None
        emit({"status": "parsing GGUF"})
        blob = store.blob_path(digest)
        source = source_key_for(blob, digest, projector_digest)
        reuse = find_converted(store, source) if spec is None and adapter_dir is None else None
        if reuse is not None:
            for layer in mlx_layers(reuse):
                ls.add_existing(layer)
            return ls, reuse.read_config()
        conv = convert_gguf(
            blob, work, emit, quantize=spec, adapter_dir=adapter_dir, source_digest=source, projector_path=projector
        )
        ls.add_dir(store, conv.model_dir, move=True)
        return ls, conv.config
    if kind == "safetensors":
        src = work / "src"
        _stage(store, files, src)
        conv = convert_checkpoint(src, work, emit, quantize=spec, adapter_dir=adapter_dir)
        ls.add_dir(store, conv.model_dir, move=conv.owned)
        return ls, conv.config
    raise ManageError("unknown type", 400)


def _convert_local_path(
    store: Store, path: Path, work: Path, emit: Emit, spec: QuantSpec | None, adapter_dir: Path | None
) -> Converted:
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic not in (b"GGUF", b"FUGG"):
            raise ManageError("supplied file was not in GGUF format", 400)
        emit({"status": "parsing GGUF"})
        return convert_gguf(path, work, emit, quantize=spec, adapter_dir=adapter_dir, source_digest=_sha256_file(path))
    if path.is_dir():
        ggufs = sorted(p for p in path.glob("*.gguf") if "mmproj" not in p.name.lower())
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            return convert_checkpoint(path, work, emit, quantize=spec, adapter_dir=adapter_dir)
        if len(ggufs) == 1:
            from .gguf import UnsupportedGGUF
            from .gguf_vision import is_projector_file, source_key_for, vision_import_wanted

            # a folder as llama.cpp's repos ship a vision model: the model and its mmproj GGUF (for a
            # family whose tower is not converted, the text model alone, as an hf.co pull does)
            projectors = [p for p in sorted(path.glob("*.gguf")) if p not in ggufs and is_projector_file(p)]
            try:
                with_projector = len(projectors) == 1 and vision_import_wanted(ggufs[0], projectors[0])
            except UnsupportedGGUF:
                with_projector = False
            if with_projector:
                emit({"status": "parsing GGUF"})
                digest, projector_digest = _sha256_file(ggufs[0]), _sha256_file(projectors[0])
                source = source_key_for(ggufs[0], digest, projector_digest)
                return convert_gguf(
                    ggufs[0],
                    work,
                    emit,
                    quantize=spec,
                    adapter_dir=adapter_dir,
                    source_digest=source,
                    projector_path=projectors[0],
                )
            return _convert_local_path(store, ggufs[0], work, emit, spec, adapter_dir)
        if len(ggufs) > 1:
            raise ManageError(f"{path} holds several GGUF files; name the one to convert", 400)
        raise ManageError(f"no GGUF or safetensors model found in {path}", 400)
    raise ManageError(f"{path}: no such file or directory", 400)


def convert_path(
    path: str | os.PathLike,
    name: str,
    quantize: str | None = None,
    store: Store | None = None,
    emit: Emit | None = None,
    *,
    template: str | None = None,
    system: str | None = None,
    noprune: bool = False,
) -> StoredManifest:
    """Convert a local GGUF file, Hugging Face checkpoint folder or MLX folder into the store as `name`
    (what `mlxollama convert PATH --name NAME [--quantize Q]` runs)."""
    if store is None:
        from ..config import Config

        config = Config.from_env()
        config.models_dir.mkdir(parents=True, exist_ok=True)
        store = Store(config.models_dir)
    req = CreateRequest(
        name=ModelName.parse(name),
        display=name,
        local_source=Path(path).expanduser().absolute(),
        quantize=quantize or "",
        template=template,
        system=system,
    )
    try:
        return create_model(store, req, emit or _noop, noprune=noprune)
    except QuantizeError as e:
        raise ManageError(str(e), e.status) from e


def package_model_dir(
    store: Store,
    name: ModelName,
    model_dir: Path,
    *,
    config: dict,
    template: str | None = None,
    system: str | None = None,
    params: dict | None = None,
    messages: list | None = None,
    licenses: list[str] | tuple = (),
    emit: Emit = _noop,
) -> StoredManifest:
    """An MLX folder that already is a model, stored as it is (its files are copied, not moved) with
    the given config blob and text layers, the way create writes them."""
    req = CreateRequest(
        name=name,
        display=name.display_shortest(),
        template=template,
        system=system,
        parameters=params,
        messages=messages,
        license=list(licenses),
    )
    ls = LayerSet()
    ls.add_dir(store, model_dir, move=False)
    _apply_modelfile_layers(store, ls, req, None)
    return write_model(store, name, ls, config, emit)


def import_ollama_model(
    store: Store,
    name: ModelName,
    *,
    gguf_path: Path | None,
    gguf_digest: str,
    text_layers: list[Layer],
    original_config: dict,
    emit: Emit = _noop,
    noprune: bool = False,
    projector_path: Path | None = None,
    source_key: str | None = None,
) -> StoredManifest:
    """An Ollama GGUF model (pulled, or found in an Ollama store) as our MLX layers plus its
    template/params/system/license/messages layers. Reuses an earlier conversion of the same GGUF
    (`source_key`: what identifies it when more than the GGUF goes in, e.g. its projector)."""
    source_key = source_key or gguf_digest
    reuse = find_converted(store, source_key)
    with work_dir(store, "import") as work:
        ls = LayerSet()
        if reuse is not None:
            for layer in mlx_layers(reuse):
                ls.add_existing(layer)
            config = {
                **reuse.read_config(),
                **{
                    k: v
                    for k, v in original_config.items()
                    if k in ("model_family", "model_families", "model_type", "file_type") and v
                },
            }
            config["model_format"] = "mlx"
        else:
            if gguf_path is None:
                raise ManageError("model weights are missing", 500)
            conv = convert_gguf(
                gguf_path,
                work,
                emit,
                source_digest=source_key,
                base_config=original_config,
                projector_path=projector_path,
            )
            ls.add_dir(store, conv.model_dir, move=True)
            config = conv.config
        for layer in text_layers:
            ls.add_existing(layer)
        return write_model(store, name, ls, config, emit, noprune=noprune, print_statuses=False, announce_prune=True)
