"""Ollama's own MLX model format (the library's `-mlx` tags) → an MLX folder mlx-lm loads.

What Ollama's MLX engine stores (read from ollama/ollama's x/create, x/mlxrunner and x/quant):

- the manifest config is Ollama's usual config blob with ``model_format: "safetensors"`` and
  ``file_type`` the quantization it applied (``int4``, ``int8``, ``mxfp4``, ``mxfp8``, ``nvfp4``
  or empty);
- every weight is an ``application/vnd.ollama.image.tensor`` layer whose ``name`` is the tensor's
  Hugging Face name and whose blob is a small safetensors file holding that tensor under the same
  name (Ollama's writer stacks per-expert MoE weights into one ``[experts, out, in]`` tensor per
  projection, in a blob named after the expert group; a checkpoint that already stacks them, as
  Qwen3.5's and Gemma4's fused ``experts.gate_up_proj``, keeps its tensors);
- a quantized weight ``X.weight`` is what ``mlx.core.quantize`` returns, stored as ``X.weight``
  (uint32 words), ``X.weight.scale`` and, for affine, ``X.weight.bias``; the blob's
  ``__metadata__`` says ``quant_type`` and ``group_size`` (or ``X.weight.quant_type`` /
  ``X.weight.group_size`` per tensor when a blob mixes types); an imported NVFP4 checkpoint adds
  ``X.weight.global_scale``;
- every ``*.json`` of the Hugging Face folder (``config.json``, ``tokenizer.json``, ...) is an
  ``application/vnd.ollama.image.json`` layer named by its file name.

mlx-lm's packing is the same (Ollama quantizes with MLX itself), so nothing is repacked: tensors
are renamed onto mlx-lm's ``X.scales`` / ``X.biases`` (fused experts split by byte ranges, which
mlx-lm's sanitize does only for plain arrays; experts Ollama stacked renamed onto mlx-lm's switch
modules) and their bytes copied, blob by blob, into the folder's safetensors files (Hugging Face
names stay: mlx-lm's sanitize maps them when it loads, as for any Hugging Face checkpoint); the
quantization of each layer goes into config.json the way mlx-lm writes it. One exception: an MLA
``kv_b_proj`` (GLM-4.7-Flash) is dequantized, as Ollama's runtime does before splitting it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store import Layer, ModelName, Store, StoredManifest, media
from .create import (
    TEXT_LAYER_TYPES,
    Emit,
    LayerSet,
    ManageError,
    _count_parameters,
    find_converted,
    mlx_layers,
    model_config,
    work_dir,
    write_model,
)
from .hf import UnsupportedCheckpoint, check_supported

log = logging.getLogger("mlxollama.convert")

# model_type values whose Ollama tensor layout is checked here against mlx-lm (logits of tiny
# checkpoints). Ollama's MLX importer keeps Hugging Face's names and layout for every
# architecture (its per-architecture "import transforms" only choose quantization types), so
# mlx-lm's sanitize reads them as it reads a Hugging Face checkpoint: Llama, Qwen3, Gemma3 (text
# and multimodal: the vision tower is dropped), Qwen3.5 (zero-centred norms and conv1d in Hugging
# Face's layout) and Gemma4 (per-layer inputs, shared K/V layers), their MoE sizes' fused experts
# split below; GLM-4.7-Flash (glm4_moe_lite: MLA, its kv_b_proj dequantized below), Nemotron-H
# (Mamba-2 mixers, conv1d in Hugging Face's layout) and Laguna, whose per-expert tensors Ollama
# stacked are renamed below onto mlx-lm's. Not admitted: cohere2-moe (mlx-lm has no model class).
SUPPORTED_MODEL_TYPES = (
    "gemma3",
    "gemma3_text",
    "gemma4",
    "glm4_moe_lite",
    "laguna",
    "llama",
    "nemotron_h",
    "qwen3",
    "qwen3_5",
    "qwen3_5_moe",
)

# Ollama's quantization types (x/quant): group size, bits, MLX mode.
QUANT_TYPES: dict[str, tuple[int, int, str]] = {
    "int4": (64, 4, "affine"),
    "int8": (64, 8, "affine"),
    "mxfp4": (32, 4, "mxfp4"),
    "mxfp8": (32, 8, "mxfp8"),
    "nvfp4": (16, 4, "nvfp4"),
}
_ALIASES = {"q4": "int4", "fp4": "int4", "q8": "int8", "fp8": "int8"}

# Ollama's fixed names for a draft model's layers (x/create/client: Draft.TensorPrefix, Config).
DRAFT_TENSOR_PREFIX = "draft."
DRAFT_CONFIG_PREFIX = "draft/"

_SHARD_BYTES = 4 << 30
_COPY_CHUNK = 8 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.json$")


def canonical_quant(quant_type: str) -> str:
    q = quant_type.strip().lower()
    return _ALIASES.get(q, q)


def source_digest(manifest_layers: list[Layer]) -> str:
    """What identifies an Ollama MLX model's weights and side files, so a re-pull (or another tag of
    the same weights) reuses the earlier conversion without downloading anything."""
    parts = sorted(
        f"{l.media_type}|{l.name or ''}|{l.digest}"
        for l in manifest_layers
        if l.media_type in (media.OLLAMA_TENSOR, media.OLLAMA_JSON)
    )
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def is_draft(layer: Layer) -> bool:
    """A layer of the speculative-decoding draft model Ollama can store beside the model (its
    tensors named `draft.*`, its JSON files `draft/*`): not used here, so not downloaded."""
    name = layer.name or ""
    return (layer.media_type == media.OLLAMA_TENSOR and name.startswith(DRAFT_TENSOR_PREFIX)) or (
        layer.media_type == media.OLLAMA_JSON and name.startswith(DRAFT_CONFIG_PREFIX)
    )


def json_layers(manifest_layers: list[Layer]) -> dict[str, Layer]:
    out: dict[str, Layer] = {}
    for l in manifest_layers:
        if l.media_type != media.OLLAMA_JSON or is_draft(l):
            continue
        if not l.name or not _SAFE_NAME.match(l.name) or l.name in (".json", "..json"):
            raise ManageError(f"pull model: invalid config layer name {l.name!r}", 400)
        out[l.name] = l
    return out


def check_architecture(hf_config: dict) -> str:
    """The model_type, or a 400 naming the architecture when it cannot be imported; called with the
    model's config.json, before any weight downloads."""
    model_type = str(hf_config.get("model_type") or "")
    archs = hf_config.get("architectures") or []
    named = model_type or (str(archs[0]) if archs else "unknown")
    try:
        check_supported(hf_config)
    except UnsupportedCheckpoint as e:
        log.info("refusing Ollama MLX model: %s", e)
        raise ManageError(f'unsupported model architecture "{named}": mlx-lm has no model class for it', 400) from e
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ManageError(
            f'unsupported model architecture "{named}": mlxollama converts Ollama MLX models of '
            f"{', '.join(SUPPORTED_MODEL_TYPES)}",
            400,
        )
    return model_type


# ------------------------------------------------------------------------------ assembly


@dataclass
class _Piece:
    name: str  # mlx-lm name
    blob: Path
    dtype: str
    shape: list[int]
    ranges: list[tuple[int, int]]  # absolute file offsets, concatenated in order

    @property
    def size(self) -> int:
        return sum(end - start for start, end in self.ranges)


@dataclass
class _Plan:
    pieces: list[_Piece] = field(default_factory=list)
    quant: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # module -> params


def _blob_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError("not a safetensors file")
        return json.loads(f.read(n)), 8 + n


def _quant_params(meta: dict, tensor: str, shapes: dict[str, list[int]]) -> tuple[int, int, str]:
    qt = canonical_quant(str(meta.get(f"{tensor}.quant_type") or meta.get("quant_type") or ""))
    gs = meta.get(f"{tensor}.group_size") or meta.get("group_size")
    if qt:
        if qt not in QUANT_TYPES:
            raise ManageError(f'unsupported quantization type "{qt}"', 400)
        group, bits, mode = QUANT_TYPES[qt]
        return (int(gs) if gs else group), bits, mode
    # No metadata: affine, inferred from the shapes as Ollama's loader does.
    cols, scale_cols = shapes[tensor][-1], shapes[tensor + ".scale"][-1]
    group4, group8 = cols * 8 // scale_cols, cols * 4 // scale_cols
    common = (16, 32, 64, 128)
    if group4 == 32 or (group4 in common and group8 not in common):
        return group4, 4, "affine"
    if group8 == 64 or (group8 in common and group4 not in common):
        return group8, 8, "affine"
    raise ManageError(f"cannot tell how tensor {tensor} is quantized", 400)


# Stacked experts with gate and up fused ([experts, 2 * intermediate, in], Hugging Face's layout
# for these model types): mlx-lm's sanitize splits them only when they are plain arrays, so they
# are split here -- per expert, the first and second half of its rows, packed words, scales and
# biases alike -- and named as mlx-lm's sanitize would name them. model_type -> (source, target)
FUSED_EXPERTS = {"qwen3_5_moe": ("mlp.experts", "mlp.switch_mlp"), "gemma4": ("experts", "experts.switch_glu")}

# Ollama's writer stacks a layer's per-expert weights (`<layer>.mlp.experts.<e>.<proj>.weight`) into
# one `<layer>.mlp.experts.<proj>.weight` [experts, out, in] (x/create: ExpertGroupPrefix, stack_experts);
# mlx-lm's sanitize stacks only per-expert tensors, so stacked ones are renamed here onto mlx-lm's
# modules -- and Laguna's bare router onto its `gate.proj`, so that a quantized router's scales follow
# it. model_type -> (module path pattern, replacement).
_EXPERTS = r"^(.*\.layers\.\d+\.mlp)\.experts\.(gate_proj|up_proj|down_proj)$"
MODULE_RENAMES: dict[str, tuple[tuple[re.Pattern[str], str], ...]] = {
    "glm4_moe_lite": ((re.compile(_EXPERTS), r"\1.switch_mlp.\2"),),
    "laguna": (
        (re.compile(_EXPERTS), r"\1.switch_mlp.\2"),
        (re.compile(r"^(.*\.layers\.\d+\.mlp)\.gate$"), r"\1.gate.proj"),
    ),
    "nemotron_h": (  # relu² experts: up and down only, mlx-lm's SwitchMLP fc1 and fc2
        (re.compile(r"^(.*\.layers\.\d+\.mixer)\.experts\.up_proj$"), r"\1.switch_mlp.fc1"),
        (re.compile(r"^(.*\.layers\.\d+\.mixer)\.experts\.down_proj$"), r"\1.switch_mlp.fc2"),
    ),
}

# Quantized modules written back as plain weights: GLM-4.7-Flash's MLA kv_b_proj, which mlx-lm's
# sanitize splits into the per-head absorbed matrices (embed_q, unembed_out) only from a float or
# affine weight (re-quantizing those with its default type). Ollama's runtime dequantizes it, whatever
# its type, and runs the split matrices unquantized (x/models/glm4_moe_lite: sanitizeMLAWeights), as
# they run here.
DEQUANTIZED = {"glm4_moe_lite": re.compile(r"\.self_attn\.kv_b_proj$")}


def _module_name(module: str, model_type: str) -> str:
    for pattern, replacement in MODULE_RENAMES.get(model_type, ()):
        module, n = pattern.subn(replacement, module)
        if n:
            break
    return module


def plan_tensors(blobs: list[Path], model_type: str = "", scratch: Path | None = None) -> _Plan:
    """Where each mlx-lm tensor's bytes lie in the blobs, and each quantized module's parameters
    (a dequantized weight is written to a file in ``scratch`` and read from there)."""
    plan = _Plan()
    seen: set[str] = set()
    for blob in blobs:
        try:
            _plan_blob(blob, plan, seen, model_type, scratch)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError) as e:
            log.info("tensor blob %s unreadable: %r", blob.name, e)
            raise ManageError("pull model: a tensor layer is not a safetensors file", 400) from e
    return plan


def _dequantize(blob: Path, tensor: str, params: tuple[int, int, str], scratch: Path) -> Path:
    """The quantized ``tensor`` of ``blob`` as a plain weight (the dtype mx.dequantize gives, as in
    Ollama's runtime), alone in a new safetensors file in ``scratch``."""
    import mlx.core as mx

    group, bits, mode = params
    arrays = mx.load(str(blob), format="safetensors")  # store blobs have no file extension
    weight = mx.dequantize(
        arrays[tensor],
        arrays[tensor + ".scale"],
        arrays.get(tensor + ".bias"),
        group_size=group,
        bits=bits,
        mode=mode,
        global_scale=arrays.get(tensor + ".global_scale") if mode == "nvfp4" else None,
    )
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"{sum(1 for _ in scratch.iterdir())}.safetensors"
    mx.save_safetensors(str(out), {tensor: weight})
    return out


def _split_rows(t: dict, start: int, end: int) -> tuple[list[int], list[tuple[int, int]], list[tuple[int, int]]]:
    """The [experts, 2n, ...] tensor's first and second n rows of every expert: shape, byte ranges."""
    shape = [int(d) for d in t["shape"]]
    experts, rows = shape[0], shape[1]
    if len(shape) != 3 or rows % 2 or (end - start) % (experts * rows):
        raise ValueError(f"fused experts of shape {shape}")
    row = (end - start) // (experts * rows)
    half = rows // 2 * row
    first = [(start + e * 2 * half, start + e * 2 * half + half) for e in range(experts)]
    second = [(a + half, b + half) for a, b in first]
    return [experts, rows // 2, shape[2]], first, second


def _plan_blob(blob: Path, plan: _Plan, seen: set[str], model_type: str, scratch: Path | None) -> None:
    fused = FUSED_EXPERTS.get(model_type)
    dequantized = DEQUANTIZED.get(model_type)
    header, data_start = _blob_header(blob)
    meta = header.pop("__metadata__", None) or {}
    shapes = {k: list(v.get("shape", [])) for k, v in header.items()}

    def add(
        dst: str,
        src: str,
        ranges: list[tuple[int, int]] | None = None,
        shape: list[int] | None = None,
        file: Path | None = None,  # another safetensors file than the blob
    ) -> None:
        if dst in seen:
            raise ManageError(f"pull model: tensor {dst} appears twice", 400)
        seen.add(dst)
        tensors, start = _blob_header(file) if file else (header, data_start)
        t = tensors[src]
        begin, end = (int(x) for x in t["data_offsets"])
        if not 0 <= begin <= end:
            raise ManageError(f"pull model: tensor {src} has invalid data offsets", 400)
        ranges = ranges or [(start + begin, start + end)]
        plan.pieces.append(_Piece(dst, file or blob, t["dtype"], shape or list(t["shape"]), ranges))

    def offsets(src: str) -> tuple[int, int]:
        begin, end = (int(x) for x in header[src]["data_offsets"])
        return data_start + begin, data_start + end

    for key in header:
        base, _, suffix = key.rpartition(".")
        if suffix in ("scale", "bias", "global_scale") and base + ".scale" in header and base in header:
            continue  # side data of a quantized tensor, written with it below
        quantized = key + ".scale" in header
        module = key.removesuffix(".weight")
        parts = {".weight": key}  # mlx-lm suffix -> source tensor
        if quantized:
            parts[".scales"] = key + ".scale"
            if key + ".bias" in header:
                parts[".biases"] = key + ".bias"
            if key + ".global_scale" in header:
                parts[".global_scale"] = key + ".global_scale"
        if fused and key.endswith(f".{fused[0]}.gate_up_proj"):
            prefix = key.removesuffix(f".{fused[0]}.gate_up_proj")
            for suffix, src in parts.items():
                shape, gate, up = _split_rows(header[src], *offsets(src))
                add(f"{prefix}.{fused[1]}.gate_proj{suffix}", src, gate, shape)
                add(f"{prefix}.{fused[1]}.up_proj{suffix}", src, up, shape)
            if quantized:
                for proj in ("gate_proj", "up_proj"):
                    plan.quant[f"{prefix}.{fused[1]}.{proj}"] = _quant_params(meta, key, shapes)
            continue
        if fused and key.endswith(f".{fused[0]}.down_proj"):
            module = key.removesuffix(f".{fused[0]}.down_proj") + f".{fused[1]}.down_proj"
        elif quantized and not key.endswith(".weight"):
            raise ManageError(f"pull model: quantized tensor {key} is not a weight", 400)
        elif not quantized:
            add(_module_name(module, model_type) + ".weight" if key.endswith(".weight") else key, key)
            continue
        module = _module_name(module, model_type)
        if quantized:
            params = _quant_params(meta, key, shapes)
            if dequantized and dequantized.search(module):
                if scratch is None:
                    raise ValueError(f"no scratch folder to dequantize {key} into")
                add(module + ".weight", key, file=_dequantize(blob, key, params, scratch))
                continue
            plan.quant[module] = params
        for suffix, src in parts.items():
            add(module + suffix, src)


def _write_shards(pieces: list[_Piece], out: Path) -> list[str]:
    shards: list[list[_Piece]] = [[]]
    size = 0
    for p in pieces:
        if shards[-1] and size + p.size > _SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += p.size
    names = []
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "mlx"}}
        offset = 0
        for p in shard:
            header[p.name] = {"dtype": p.dtype, "shape": p.shape, "data_offsets": [offset, offset + p.size]}
            offset += p.size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        buf = memoryview(bytearray(_COPY_CHUNK))  # one buffer: a blob never sits whole in memory
        with open(out / fname, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for p in shard:  # bytes are copied as they are
                with open(p.blob, "rb") as src:
                    for start, end in p.ranges:
                        src.seek(start)
                        left = end - start
                        while left:
                            n = src.readinto(buf[: min(_COPY_CHUNK, left)])
                            if not n:
                                raise ManageError("pull model: a tensor layer is shorter than its header says", 400)
                            f.write(buf[:n])
                            left -= n
        names.append(fname)
    return names


def _quantization_config(quant: dict[str, tuple[int, int, str]]) -> dict | None:
    if not quant:
        return None
    (group, bits, mode), _ = Counter(quant.values()).most_common(1)[0]
    cfg: dict[str, Any] = {"group_size": group, "bits": bits, "mode": mode}
    for module, (g, b, m) in sorted(quant.items()):
        if (g, b, m) != (group, bits, mode):
            cfg[module] = {"group_size": g, "bits": b, "mode": m}
    return cfg


def assemble(store: Store, manifest_layers: list[Layer], out: Path) -> dict:
    """Write the MLX folder for a pulled Ollama MLX model (its blobs are in the store); returns its
    config.json."""
    jsons = json_layers(manifest_layers)
    if "config.json" not in jsons:
        raise ManageError("pull model: the model has no config.json layer", 400)
    if "tokenizer.json" not in jsons:
        raise ManageError("pull model: the model has no tokenizer.json layer", 400)
    try:
        config = json.loads(store.blob_path(jsons["config.json"].digest).read_bytes())
    except ValueError as e:
        raise ManageError("pull model: config.json is not valid JSON", 400) from e
    if not isinstance(config, dict):
        raise ManageError("pull model: config.json is not a JSON object", 400)
    out.mkdir(parents=True, exist_ok=True)
    tensors = [l for l in manifest_layers if l.media_type == media.OLLAMA_TENSOR and not is_draft(l)]
    blobs = list(dict.fromkeys(store.blob_path(l.digest) for l in tensors))  # a shared blob is read once
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".dequantized-") as scratch:
        plan = plan_tensors(blobs, str(config.get("model_type") or ""), Path(scratch))
        _write_shards(plan.pieces, out)
    for name, layer in jsons.items():
        if name in ("config.json", "model.safetensors.index.json"):
            continue
        shutil.copyfile(store.blob_path(layer.digest), out / name)
    qcfg = _quantization_config(plan.quant)
    for key in ("quantization", "quantization_config"):
        config.pop(key, None)
        if qcfg:
            config[key] = qcfg
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return config


def _file_type(original_config: dict, config: dict) -> str:
    """Ollama's file_type as it is (what its /api/show reports); our dtype name for an older config."""
    ft = str(original_config.get("file_type") or "")
    if ft:
        return ft
    q = config.get("quantization")
    if isinstance(q, dict):
        return next((k for k, v in QUANT_TYPES.items() if v == (q["group_size"], q["bits"], q["mode"])), "")
    return {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(str(config.get("torch_dtype")), "")


def import_pulled(
    store: Store,
    name: ModelName,
    *,
    manifest_layers: list[Layer],
    original_config: dict,
    reuse: StoredManifest | None,
    emit: Emit,
    noprune: bool = False,
) -> StoredManifest:
    """Store the pulled model as our MLX layers plus its template/params/system/license layers."""
    source = source_digest(manifest_layers)
    text_layers = [l for l in manifest_layers if l.media_type in TEXT_LAYER_TYPES]
    with work_dir(store, "import") as work:
        ls = LayerSet()
        if reuse is not None:
            for layer in mlx_layers(reuse):
                ls.add_existing(layer)
            config = reuse.read_config()
        else:
            emit({"status": "converting to mlx"})
            out = work / "mlx"
            hf_config = assemble(store, manifest_layers, out)
            text = hf_config.get("text_config") if isinstance(hf_config.get("text_config"), dict) else {}
            config = model_config(
                family=str(hf_config.get("model_type") or ""),
                parameter_count=_count_parameters(out, hf_config),
                file_type=_file_type(original_config, hf_config),
                context_length=hf_config.get("max_position_embeddings") or text.get("max_position_embeddings"),
                embedding_length=hf_config.get("hidden_size") or text.get("hidden_size"),
                source_digest=source,
                base=original_config,
            )
            ls.add_dir(store, out, move=True)
        for layer in text_layers:
            ls.add_existing(layer)
        return write_model(store, name, ls, config, emit, noprune=noprune, print_statuses=False, announce_prune=True)


def find_import(store: Store, manifest_layers: list[Layer]) -> StoredManifest | None:
    return find_converted(store, source_digest(manifest_layers))
