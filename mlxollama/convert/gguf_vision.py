"""Vision models from GGUF (issue 17): a text GGUF plus its vision tower → an mlx-vlm model folder.

The Ollama registry ships a vision model two ways:

* one multimodal GGUF with the tower (`v.*`, `mm.*`) beside the text model, named by Ollama's own
  converter (convert_gemma3.go: `v.patch_embedding`, `v.blk.N.layer_norm1`, `mm.mm_input_projection`,
  keys `gemma3.vision.*`; convert_qwen25vl.go: architecture `qwen25vl`, `v.patch_embd_0/1`,
  `v.merger.*`, keys `qwen25vl.vision.*`) — the library's gemma3 and qwen2.5vl tags;
* a text GGUF plus a projector layer (`application/vnd.ollama.image.projector`): an mmproj GGUF
  written by llama.cpp's convert_hf_to_gguf.py (architecture `clip`, keys `clip.vision.*`, names
  from gguf-py's MMPROJ table: `v.patch_embd`, `v.blk.N.ln1`, `mm.input_projection`, `mm.0`) — the
  form of Hugging Face GGUF repos and of `/api/create` with a model and an mmproj file.

The text model goes through the GGUF importer (gguf.py) under mlx-vlm's `language_model.` prefix;
the tower's tensors are read back into Hugging Face's layout (what llama.cpp split is joined: Qwen's
q/k/v into qkv, its two temporal patch kernels into one Conv3d; gemma's projector norm loses the
+1 both converters add) and written with mlx-vlm's names, unquantized, as the file held them. The
processor files mlx-vlm needs are rebuilt from the metadata (image size, mean/std, patch size,
tokens per image) and the text GGUF's vocabulary (the family's image tokens).

Converted: gemma3 and qwen2.5-vl, both forms (llama.cpp's qwen2.5-vl: text architecture `qwen2vl`
+ mmproj `qwen2.5vl_merger`). Other vision families are refused by name (`vision_refusal`), before a
pull downloads them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from .gguf import (
    ARCHITECTURES,
    ArchSpec,
    GGUFImport,
    UnsupportedGGUF,
    _dequantized,
    _qwen2_config,
    import_gguf,
    read_metadata,
)

log = logging.getLogger(__name__)

# Text GGUF architecture -> the mlx-vlm model_type we build for it.
VISION_FAMILIES = {"gemma3": "gemma3", "qwen2vl": "qwen2_5_vl", "qwen25vl": "qwen2_5_vl", "mistral3": "mistral3"}
# Those whose llama.cpp mmproj (a projector layer or file) converts; mistral3's only in Ollama's one file.
PROJECTOR_FAMILIES = frozenset({"gemma3", "qwen2vl"})
CONVERTED_NAMES = "gemma3, qwen2.5-vl and mistral-small3.x"
# Vision families of Ollama's library whose tower we do not convert, by their GGUF architecture (a
# model layer carrying its tower, or the text architecture next to a projector layer).
_NOT_CONVERTED = {
    "qwen3vl": "qwen3-vl",
    "qwen3vlmoe": "qwen3-vl",
    "mllama": "llama3.2-vision",
}
# (gemma3n is not here: the library's gemma3n tags are text only -- Ollama's converter leaves its
# vision and audio towers out -- and import as a text model, gguf_hybrid.py; with a projector layer
# it is refused like any family whose tower is not converted.)
_LANGUAGE_PREFIX = "language_model."
VISION_WEIGHTS = "model-vision.safetensors"


def vision_source_key(model_digest: str, projector_digest: str | None) -> str:
    """What a conversion that may include a tower records as its source: not the model digest alone,
    so a text-only conversion of the same GGUF (made before images were converted) is not reused."""
    return f"{model_digest}+{projector_digest}" if projector_digest else f"{model_digest}+vision"


def source_key_for(text_gguf: Path, model_digest: str, projector_digest: str | None) -> str:
    """The source key of a GGUF conversion: `vision_source_key` for a family whose tower we convert."""
    if projector_digest:
        return vision_source_key(model_digest, projector_digest)
    try:
        arch = _architecture(_reader(text_gguf))
    except (ValueError, OSError, IndexError, KeyError):
        return model_digest
    return vision_source_key(model_digest, None) if arch in VISION_FAMILIES else model_digest


def vision_refusal(family: str, has_projector: bool) -> str | None:
    """Why a registry model of `family` cannot be pulled (None: it can), decided from the config blob
    and the manifest alone, before any download."""
    if family in _NOT_CONVERTED:
        what = _NOT_CONVERTED[family]
    elif has_projector and family not in PROJECTOR_FAMILIES:
        what = f"{family} with a projector" if family else "a model with a projector"
    else:
        return None
    return (
        f"vision model ({what}) cannot be converted to MLX: mlxollama converts the vision models of {CONVERTED_NAMES}"
    )


# ------------------------------------------------------------------------------ GGUF headers


def _reader(path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(str(path), "r")


def _scalars(reader: gguf.GGUFReader) -> dict[str, Any]:
    """The file's scalar key/values (not its vocabulary arrays: reading those takes seconds)."""
    return {
        k: f.contents()
        for k, f in reader.fields.items()
        if f.types and f.types[0] != gguf.GGUFValueType.ARRAY and not k.startswith("GGUF.")
    }


def _architecture(reader: gguf.GGUFReader) -> str:
    field = reader.fields.get("general.architecture")
    return str(field.contents()) if field is not None else ""


def architecture_of(path: Path) -> str:
    """general.architecture of a GGUF file ("" when it is not one)."""
    try:
        return _architecture(_reader(path))
    except (ValueError, OSError, IndexError, KeyError):
        return ""


def _uint(meta: Mapping[str, Any], key: str) -> int:
    v = meta.get(key)
    return int(v) if isinstance(v, (int, np.integer)) else 0


def is_projector(meta: Mapping[str, Any]) -> bool:
    """Ollama's isProjectorGGUF: general.type projector/mmproj, a vision block count without a text
    one, or a `clip` file with an encoder and no blocks of its own."""
    if str(meta.get("general.type", "")) in ("projector", "mmproj"):
        return True
    arch = str(meta.get("general.architecture", ""))
    if _uint(meta, f"{arch}.block_count") == 0 and _uint(meta, f"{arch}.vision.block_count") > 0:
        return True
    return (
        arch == "clip"
        and _uint(meta, "clip.block_count") == 0
        and bool(meta.get("clip.has_vision_encoder") or meta.get("clip.has_audio_encoder"))
    )


def is_projector_file(path: Path) -> bool:
    try:
        return is_projector(_scalars(_reader(path)))
    except (ValueError, OSError, IndexError, KeyError):
        return False


def vision_import_wanted(text_gguf: Path, projector: Path | None) -> bool:
    """Whether this GGUF (and projector) is a vision model we convert with its tower: a projector
    beside it, or `v.*` tensors inside a converted family's file. A projector for another family is
    refused; a tower inside another family's file is left out, the text model imported (as before)."""
    reader = _reader(text_gguf)
    arch = _architecture(reader)
    if projector is not None:
        why = vision_refusal(arch, True)
        if why:
            raise UnsupportedGGUF(why)
        if importlib.util.find_spec("mlx_vlm") is None:
            raise UnsupportedGGUF("vision models need mlx-vlm, which is not installed")
        return True
    # (a family without a text-only import of its own, e.g. qwen2vl, goes here too: the vision
    # importer says what is missing)
    tower = arch in VISION_FAMILIES and (
        arch not in ARCHITECTURES or any(t.name.startswith(("v.", "mm.")) for t in reader.tensors)
    )
    if tower and importlib.util.find_spec("mlx_vlm") is None:
        log.warning("%s: mlx-vlm is not installed; importing the text model without its vision tower", arch)
        return False
    return tower


# ------------------------------------------------------------------------------ the tower


@dataclass
class _Tower:
    """The vision tensors and key/values of one source, in one naming: "clip" (llama.cpp's mmproj) or
    "ollama" (Ollama's in-file names, keys under the text architecture)."""

    naming: str
    meta: Mapping[str, Any]
    tensors: dict[str, Any]
    arch: str  # key prefix of the vision keys: "clip" or the text architecture

    def key(self, name: str, default: Any = None) -> Any:
        v = self.meta.get(f"{self.arch}.vision.{name}")
        return default if v is None else v

    def array(self, name: str) -> np.ndarray:
        t = self.tensors.get(name)
        if t is None:
            raise UnsupportedGGUF(f"the vision tower lacks tensor {name!r}")
        return _as_stored(t)


def _as_stored(t: Any) -> np.ndarray:
    """A tower tensor in Hugging Face's layout, float16 when the file held F16 (or F32 values that
    float16 holds exactly: llama.cpp widens some small tensors to F32), else float32."""
    w = _dequantized(t)
    return w.astype(np.float16) if QT(t.tensor_type) == QT.F16 else _narrowed(w)


def _narrowed(w: np.ndarray) -> np.ndarray:
    """float16 when it holds every value exactly, else float32."""
    half = w.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), w) else w.astype(np.float32)


# Tower tensors per family: (mlx-vlm module, llama.cpp mmproj name, Ollama in-file name); "{n}": a block.
_GEMMA3_TENSORS = [
    ("vision_tower.vision_model.embeddings.patch_embedding", "v.patch_embd", "v.patch_embedding"),
    ("vision_tower.vision_model.embeddings.position_embedding", "v.position_embd", "v.position_embedding"),
    ("vision_tower.vision_model.post_layernorm", "v.post_ln", "v.post_layernorm"),
    ("multi_modal_projector.mm_soft_emb_norm", "mm.soft_emb_norm", "mm.mm_soft_emb_norm"),
    ("multi_modal_projector.mm_input_projection", "mm.input_projection", "mm.mm_input_projection"),
    *(
        (f"vision_tower.vision_model.encoder.layers.{{n}}.{hf}", f"v.blk.{{n}}.{clip}", f"v.blk.{{n}}.{ollama}")
        for hf, clip, ollama in (
            ("self_attn.q_proj", "attn_q", "attn_q"),
            ("self_attn.k_proj", "attn_k", "attn_k"),
            ("self_attn.v_proj", "attn_v", "attn_v"),
            ("self_attn.out_proj", "attn_out", "attn_output"),
            ("layer_norm1", "ln1", "layer_norm1"),
            ("layer_norm2", "ln2", "layer_norm2"),
            ("mlp.fc1", "ffn_up", "mlp.fc1"),
            ("mlp.fc2", "ffn_down", "mlp.fc2"),
        )
    ),
]
_MISTRAL3_TENSORS = [
    ("vision_tower.vision_model.patch_conv", None, "v.patch_conv"),
    ("vision_tower.vision_model.ln_pre", None, "v.encoder_norm"),
    ("multi_modal_projector.norm", None, "mm.norm"),
    ("multi_modal_projector.patch_merger.merging_layer", None, "mm.patch_merger.merging_layer"),
    ("multi_modal_projector.linear_1", None, "mm.linear_1"),
    ("multi_modal_projector.linear_2", None, "mm.linear_2"),
    *(
        (f"vision_tower.vision_model.transformer.layers.{{n}}.{hf}", None, f"v.blk.{{n}}.{ollama}")
        for hf, ollama in (
            ("attention.q_proj", "attn_q"),
            ("attention.k_proj", "attn_k"),
            ("attention.v_proj", "attn_v"),
            ("attention.o_proj", "attn_output"),
            ("attention_norm", "attn_norm"),
            ("ffn_norm", "ffn_norm"),
            ("feed_forward.gate_proj", "ffn_gate"),
            ("feed_forward.up_proj", "ffn_up"),
            ("feed_forward.down_proj", "ffn_down"),
        )
    ),
]
_QWEN25VL_TENSORS = [
    ("vision_tower.merger.ln_q", "v.post_ln", "v.merger.ln_q"),
    ("vision_tower.merger.mlp.0", "mm.0", "v.merger.mlp.0"),
    ("vision_tower.merger.mlp.2", "mm.2", "v.merger.mlp.2"),
    *(
        (f"vision_tower.blocks.{{n}}.{hf}", f"v.blk.{{n}}.{clip}", f"v.blk.{{n}}.{clip}")
        for hf, clip in (
            ("attn.proj", "attn_out"),
            ("norm1", "ln1"),
            ("norm2", "ln2"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        )
    ),
]


def _renamer(table: list[tuple[str, str, str | None]], naming: str) -> Callable[[str], str | None]:
    """GGUF module name -> mlx-vlm module name, by the table's column for `naming`."""
    column = 1 if naming == "clip" else 2
    patterns = []
    for row in table:
        source = row[column]
        if source is None:
            continue
        regex = re.escape(source).replace(r"\{n\}", r"(\d+)")
        patterns.append((re.compile(f"^{regex}$"), row[0]))

    def rename(module: str) -> str | None:
        for regex, target in patterns:
            m = regex.match(module)
            if m:
                return target.replace("{n}", m.group(1)) if m.groups() else target
        return None

    return rename


def _split_name(name: str) -> tuple[str, str]:
    module, _, suffix = name.rpartition(".")
    return (module, suffix) if suffix in ("weight", "bias") else (name, "")


def _mlx_vlm_place(rename: Callable[[str], str | None], name: str, family: str) -> tuple[str, str]:
    """A tower tensor's mlx-vlm module and its suffix (weight or bias); a tensor with no place is refused."""
    module, suffix = _split_name(name)
    target = rename(module)
    if target is None or not suffix:
        raise UnsupportedGGUF(f"{family}: vision tensor {name!r} has no place in mlx-vlm's model")
    return target, suffix


def _gemma3_tower(tower: _Tower) -> dict[str, np.ndarray]:
    rename = _renamer(_GEMMA3_TENSORS, tower.naming)
    out: dict[str, np.ndarray] = {}
    for name in tower.tensors:
        target, suffix = _mlx_vlm_place(rename, name, "gemma3")
        w = tower.array(name)
        if target.endswith("mm_input_projection"):
            out["multi_modal_projector.mm_input_projection_weight"] = w  # (vision width, text width) as HF holds it
            continue
        if target.endswith("mm_soft_emb_norm"):
            w = _narrowed(w.astype(np.float32) - np.float32(1.0))  # both converters store 1 + w
        out[f"{target}.{suffix}"] = w
    return out


def _mistral3_tower(tower: _Tower) -> dict[str, np.ndarray]:
    rename = _renamer(_MISTRAL3_TENSORS, tower.naming)
    out: dict[str, np.ndarray] = {}
    for name in tower.tensors:
        target, suffix = _mlx_vlm_place(rename, name, "mistral3")
        out[f"{target}.{suffix}"] = tower.array(name)  # (Ollama's converter permutes only the text q/k)
    return out


def _qwen25vl_tower(tower: _Tower) -> dict[str, np.ndarray]:
    rename = _renamer(_QWEN25VL_TENSORS, tower.naming)
    # the Conv3d kernel over two frames, split into two Conv2d kernels: llama.cpp's and Ollama's names
    frames = ("v.patch_embd.weight", "v.patch_embd.weight.1")
    if tower.naming == "ollama":
        frames = ("v.patch_embd_0.weight", "v.patch_embd_1.weight")
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name in tower.tensors:
        if name in frames:
            continue
        module, suffix = _split_name(name)
        m = re.match(r"^v\.blk\.(\d+)\.attn_([qkv])$", module)
        if m and suffix:  # llama.cpp split the fused qkv rows into q, k and v
            qkv.setdefault((m.group(1), suffix), {})[m.group(2)] = tower.array(name)
            continue
        target, suffix = _mlx_vlm_place(rename, name, "qwen2.5-vl")
        out[f"{target}.{suffix}"] = tower.array(name)
    for (block, suffix), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise UnsupportedGGUF(f"qwen2.5-vl: block {block} lacks part of its q/k/v {suffix}")
        out[f"vision_tower.blocks.{block}.attn.qkv.{suffix}"] = np.concatenate([parts[p] for p in "qkv"])
    first, second = (tower.array(f) for f in frames)
    if first.ndim != 4 or first.shape != second.shape:
        raise UnsupportedGGUF(f"qwen2.5-vl: patch kernels of shapes {first.shape}, {second.shape}")
    out["vision_tower.patch_embed.proj.weight"] = np.stack([first, second], axis=2)  # (out, in, t, h, w)
    return out


# ------------------------------------------------------------------------------ configs


def _tokens(meta: Mapping[str, Any]) -> dict[str, int]:
    return {str(t): i for i, t in enumerate(meta.get("tokenizer.ggml.tokens") or [])}


def _token_id(vocab: Mapping[str, int], token: str, family: str) -> int:
    if token not in vocab:
        raise UnsupportedGGUF(f"{family}: the vocabulary has no {token} token, which images need")
    return vocab[token]


def _floats(v: Any, default: list[float]) -> list[float]:
    if v is None:
        return default
    return [float(str(np.float32(x))) for x in v]


def _text_config(out: Path) -> dict[str, Any]:
    cfg = json.loads((out / "config.json").read_text())
    return cfg


def _gemma3_configs(tower: _Tower, text: dict[str, Any], vocab: Mapping[str, int], meta: Mapping[str, Any]):
    image_size = int(tower.key("image_size", 896))
    patch = int(tower.key("patch_size", 14))
    per_side = image_size // patch
    if tower.naming == "clip":
        scale = int(tower.meta.get("clip.vision.projector.scale_factor") or 4)
        tokens = (per_side // scale) ** 2
        mean = _floats(tower.key("image_mean"), [0.5, 0.5, 0.5])
        std = _floats(tower.key("image_std"), [0.5, 0.5, 0.5])
    else:  # Ollama's gemma3 normalises as SigLIP does: mean and std 0.5
        tokens = int(meta.get(f"{tower.arch}.mm.tokens_per_image") or 256)
        mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    side = int(round(tokens**0.5))
    if side * side != tokens or side == 0 or per_side % side:
        raise UnsupportedGGUF(f"gemma3: {tokens} tokens per image do not pool a {per_side}x{per_side} patch grid")
    vision = {
        "model_type": "siglip_vision_model",
        "num_hidden_layers": int(tower.key("block_count")),
        "hidden_size": int(tower.key("embedding_length")),
        "intermediate_size": int(tower.key("feed_forward_length")),
        "num_attention_heads": int(tower.key("attention.head_count")),
        "patch_size": patch,
        "image_size": image_size,
        "num_channels": int(tower.key("num_channels", 3)),
        "layer_norm_eps": float(str(np.float32(tower.key("attention.layer_norm_epsilon", 1e-6)))),
    }
    text_config = {
        **text,
        "model_type": "gemma3_text",
        "rope_global_base_freq": text.get("rope_theta", 1_000_000.0),
        "mm_tokens_per_image": tokens,
    }
    pad = meta.get("tokenizer.ggml.padding_token_id")
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text_config,
        "vision_config": vision,
        "hidden_size": text["hidden_size"],
        "mm_tokens_per_image": tokens,
        "image_token_index": _token_id(vocab, "<image_soft_token>", "gemma3"),
        "boi_token_index": _token_id(vocab, "<start_of_image>", "gemma3"),
        "eoi_token_index": _token_id(vocab, "<end_of_image>", "gemma3"),
        "pad_token_id": int(pad) if pad is not None else 0,
        "vocab_size": text["vocab_size"],
    }
    pre = {
        "image_processor_type": "Gemma3ImageProcessor",
        "processor_class": "Gemma3Processor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,  # bilinear, as Gemma3ImageProcessor
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": True,
        "do_pan_and_scan": None,
    }
    proc = {"processor_class": "Gemma3Processor", "image_seq_length": tokens}
    specials = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    return config, pre, proc, specials


def _qwen25vl_configs(tower: _Tower, text: dict[str, Any], vocab: Mapping[str, int], meta: Mapping[str, Any]):
    depth = int(tower.key("block_count"))
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if tower.naming == "clip":
        sections = [int(x) for x in (meta.get("qwen2vl.rope.dimension_sections") or [])]
        if len(sections) < 3 or not any(sections):
            raise UnsupportedGGUF("qwen2vl: the GGUF has no rope.dimension_sections (M-RoPE)")
        # llama.cpp keeps the period of the full-attention blocks: every pattern-th block
        pattern = int(tower.key("n_wa_pattern") or 0)
        full = [i for i in range(depth) if pattern and (i + 1) % pattern == 0]
        ffn = int(tower.key("feed_forward_length"))
        out_width = int(tower.key("projection_dim", text["hidden_size"]))
        mean = _floats(tower.key("image_mean"), [0.48145466, 0.4578275, 0.40821073])
        std = _floats(tower.key("image_std"), [0.26862954, 0.26130258, 0.27577711])
    else:  # Ollama's file: Qwen2.5-VL's sections (its engine has them built in), widths from the tensors
        sections = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]
        full = [int(x) for x in tower.key("fullatt_block_indexes", [7, 15, 23, 31])]
        ffn = int(tower.tensors["v.blk.0.ffn_gate.weight"].shape[1])
        out_width = int(tower.tensors["v.merger.mlp.2.weight"].shape[1])
        mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # CLIP's
    patch = int(tower.key("patch_size", 14))
    vision = {
        "model_type": "qwen2_5_vl",
        "depth": depth,
        "hidden_size": int(tower.key("embedding_length")),
        "intermediate_size": ffn,
        "out_hidden_size": out_width,
        "num_heads": int(tower.key("attention.head_count")),
        "patch_size": patch,
        "spatial_patch_size": patch,
        "spatial_merge_size": int(tower.key("spatial_merge_size", 2)),
        "temporal_patch_size": 2,  # both converters split exactly two frames
        "window_size": int(tower.key("window_size", 112)),  # Qwen2.5-VL's, when the file does not say
        "fullatt_block_indexes": full,
        "in_channels": 3,
        "tokens_per_second": 2,
    }
    merge = vision["spatial_merge_size"]
    config = {
        **text,
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "rope_scaling": {"type": "mrope", "mrope_section": sections[:3]},
        "vision_config": vision,
        "image_token_id": _token_id(vocab, "<|image_pad|>", "qwen2.5-vl"),
        "video_token_id": _token_id(vocab, "<|video_pad|>", "qwen2.5-vl"),
        "vision_start_token_id": _token_id(vocab, "<|vision_start|>", "qwen2.5-vl"),
        "vision_end_token_id": _token_id(vocab, "<|vision_end|>", "qwen2.5-vl"),
        "vision_token_id": _token_id(vocab, "<|vision_pad|>", "qwen2.5-vl"),
    }
    unit = patch * merge
    pre = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": True,
        "patch_size": patch,
        "temporal_patch_size": 2,
        "merge_size": merge,
        # the file's pixel bounds, else its converter's engine's: llama.cpp's are Qwen2.5-VL's (4 and
        # 16384 merged units), Ollama's 56x56 and 2 Mi pixels
        "min_pixels": int(tower.key("image_min_pixels") or (4 * unit * unit if tower.naming == "clip" else 56 * 56)),
        "max_pixels": int(
            tower.key("image_max_pixels")
            or tower.key("max_pixels")
            or (16384 * unit * unit if tower.naming == "clip" else 2 << 20)
        ),
    }
    proc = {"processor_class": "Qwen2_5_VLProcessor"}
    specials = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    return config, pre, proc, specials


def _mistral3_configs(tower: _Tower, text: dict[str, Any], vocab: Mapping[str, int], meta: Mapping[str, Any]):
    if tower.naming != "ollama":
        raise UnsupportedGGUF("mistral3: only the Ollama library's one-file form is converted with images")
    if text.get("model_type") != "llama":
        raise UnsupportedGGUF(f"mistral3: a {text.get('model_type')} text model is not converted with images")
    arch = tower.arch
    hidden, heads = int(tower.key("embedding_length")), int(tower.key("attention.head_count"))
    image_size, patch = int(tower.key("image_size", 1540)), int(tower.key("patch_size", 14))
    vision = {
        "model_type": "pixtral",
        "num_hidden_layers": int(tower.key("block_count")),
        "hidden_size": hidden,
        "head_dim": int(tower.key("attention.key_length") or hidden // heads),
        "intermediate_size": int(tower.key("feed_forward_length")),
        "num_attention_heads": heads,
        "image_size": image_size,
        "patch_size": patch,
        "rope_theta": float(tower.key("rope.freq_base", 10000.0)),
        "num_channels": int(tower.key("num_channels", 3)),
    }
    merge = int(meta.get(f"{arch}.spatial_merge_size") or 2)
    for token in ("[IMG]", "[IMG_BREAK]", "[IMG_END]"):
        _token_id(vocab, token, "mistral3")
    image_token = meta.get(f"{arch}.image_token_index")
    config = {
        "architectures": ["Mistral3ForConditionalGeneration"],
        "model_type": "mistral3",
        # (mlx-vlm's mistral language model wants head_dim spelled out)
        "text_config": {
            **text,
            "model_type": "mistral",
            "head_dim": text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"],
        },
        "vision_config": vision,
        "image_token_index": int(image_token) if image_token is not None else vocab["[IMG]"],
        "spatial_merge_size": merge,
        "multimodal_projector_bias": bool(meta.get(f"{arch}.mm.projector_bias") or False),
        "projector_hidden_act": str(meta.get(f"{arch}.mm.projector_hidden_act") or "gelu"),
        "vision_feature_layer": -1,  # Mistral Small 3.x's; Ollama's file does not say
        "vocab_size": text["vocab_size"],
    }
    pre = {
        "image_processor_type": "PixtralImageProcessor",
        "processor_class": "PixtralProcessor",
        "do_resize": True,
        "size": {"longest_edge": image_size},
        "patch_size": {"height": patch, "width": patch},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],  # Pixtral's (CLIP's), as Ollama's engine uses
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    proc = {
        "processor_class": "PixtralProcessor",
        "image_token": "[IMG]",
        "image_break_token": "[IMG_BREAK]",
        "image_end_token": "[IMG_END]",
        "patch_size": patch,
        "spatial_merge_size": merge,
    }
    return config, pre, proc, {}


_FAMILY = {
    "mistral3": (_mistral3_tower, _mistral3_configs),
    "gemma3": (_gemma3_tower, _gemma3_configs),
    "qwen2_5_vl": (_qwen25vl_tower, _qwen25vl_configs),
}
# The text model's spec per text architecture (qwen2vl's text model is qwen2 with M-RoPE sections,
# which config.json carries; mlx-lm's qwen2 class checks its tensors).
_TEXT_SPECS: dict[str, ArchSpec] = {
    "qwen2vl": ArchSpec(_qwen2_config),
    "qwen25vl": ArchSpec(_qwen2_config, table_arch="qwen2vl"),  # Ollama's: the same text tensor names
}


def _vlm_parameter_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """mlx-vlm's parameters (name -> shape) for this config; MLX builds the module lazily."""
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    cfg = json.loads(json.dumps(config))
    try:
        arch, _ = get_model_and_args(json.loads(json.dumps(cfg)))
        cfg.setdefault("text_config", {})
        model_config = arch.ModelConfig.from_dict(cfg)
        model_config = update_module_configs(model_config, arch, cfg, ["text", "vision", "projector"])
        model = arch.Model(model_config)
    except Exception as e:  # a config mlx-vlm rejects is a GGUF we cannot import
        log.warning("mlx-vlm cannot build %s from the GGUF's config: %s", config.get("model_type"), e)
        raise UnsupportedGGUF(f"{config.get('model_type')}: mlx-vlm cannot build this configuration") from e
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def _mlx_layout(name: str, w: np.ndarray) -> tuple[int, ...]:
    """The shape mlx-vlm's sanitize gives a Hugging Face convolution kernel (channels last)."""
    if name.endswith(("patch_embedding.weight", "patch_conv.weight")) and w.ndim == 4:
        return (w.shape[0], w.shape[2], w.shape[3], w.shape[1])
    if name.endswith("patch_embed.proj.weight") and w.ndim == 5:
        return (w.shape[0], w.shape[2], w.shape[3], w.shape[4], w.shape[1])
    return tuple(w.shape)


def _check_tower(weights: Mapping[str, np.ndarray], params: Mapping[str, tuple[int, ...]], family: str) -> None:
    tower = {k: v for k, v in params.items() if not k.startswith(_LANGUAGE_PREFIX)}
    for name, w in weights.items():
        if name not in tower:
            raise UnsupportedGGUF(f"{family}: vision tensor {name!r} has no place in mlx-vlm's model")
        if _mlx_layout(name, w) != tower[name]:
            raise UnsupportedGGUF(f"{family}: {name} has shape {list(w.shape)}, mlx-vlm expects {list(tower[name])}")
    missing = sorted(set(tower) - set(weights))
    if missing:
        raise UnsupportedGGUF(f"{family}: the vision tower lacks {', '.join(missing[:4])}")


# ------------------------------------------------------------------------------ files


def _safetensors_tensor(path: Path, name: str) -> np.ndarray | None:
    """One tensor of a safetensors file, read alone (the shard may be many GiB)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        info = header.get(name)
        if info is None:
            return None
        start, end = info["data_offsets"]
        f.seek(8 + n + start)
        dtype = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16, "U32": np.uint32}[info["dtype"]]
        return np.frombuffer(f.read(end - start), dtype=dtype).reshape(info["shape"])


def _weight_files(out: Path) -> list[Path]:
    index = out / "model.safetensors.index.json"
    if index.is_file():
        return [out / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return sorted(out.glob("model*.safetensors"))


def _tied_head(out: Path, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """mlx-vlm's gemma3 always builds lm_head and fills it from the embedding's weight; a quantized
    embedding's scales and biases must come with it, or lm_head is loaded as a float matrix."""
    embed = f"{_LANGUAGE_PREFIX}model.embed_tokens"
    out_arrays: dict[str, np.ndarray] = {}
    for f in _weight_files(out):
        for part in ("scales", "biases"):
            a = _safetensors_tensor(f, f"{embed}.{part}")
            if a is not None:
                out_arrays[f"{_LANGUAGE_PREFIX}lm_head.{part}"] = a
    quant = config.get("quantization")
    if out_arrays and isinstance(quant, dict) and isinstance(quant.get(embed), dict):
        quant[f"{_LANGUAGE_PREFIX}lm_head"] = dict(quant[embed])
    return out_arrays


def _write_weights(out: Path, arrays: Mapping[str, np.ndarray]) -> str:
    import mlx.core as mx

    mx.save_safetensors(str(out / VISION_WEIGHTS), {k: mx.array(v) for k, v in arrays.items()}, {"format": "mlx"})
    index = out / "model.safetensors.index.json"
    if index.is_file():  # mlx-vlm reads the shards the index names: name this file too
        data = json.loads(index.read_text())
        data["weight_map"].update({k: VISION_WEIGHTS for k in arrays})
        index.write_text(json.dumps(data, indent=2))
    return VISION_WEIGHTS


def _patch_tokenizer(out: Path, specials: Mapping[str, str], processor_class: str) -> None:
    """The image tokens' names the family's processor reads off the tokenizer."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["extra_special_tokens"] = dict(specials)
    cfg["processor_class"] = processor_class
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------ import


def import_gguf_vision(text_gguf: str | Path, projector: str | Path | None, out_dir: str | Path) -> GGUFImport:
    """A text GGUF with its tower (in the file, or the `projector` mmproj GGUF) → an mlx-vlm folder."""
    text_gguf, out = Path(text_gguf), Path(out_dir)
    text_reader = _reader(text_gguf)
    meta, _ = read_metadata(text_reader)
    arch = str(meta.get("general.architecture", ""))
    family = VISION_FAMILIES.get(arch)
    if family is None:
        raise UnsupportedGGUF(vision_refusal(arch, True) or f"{arch}: not a vision model mlxollama converts")
    if projector is not None:
        proj_reader = _reader(Path(projector))
        proj_meta, _ = read_metadata(proj_reader)
        if not is_projector(proj_meta):
            raise UnsupportedGGUF("the projector file is not a vision projector GGUF")
        kind = str(proj_meta.get("clip.projector_type") or proj_meta.get("clip.vision.projector_type") or "")
        want = {"gemma3": ("gemma3",), "qwen2_5_vl": ("qwen2.5vl_merger",)}.get(family, ())
        if kind not in want:
            raise UnsupportedGGUF(f"{arch}: a projector of type {kind!r} does not belong to this model")
        tower = _Tower("clip", proj_meta, {t.name: t for t in proj_reader.tensors}, "clip")
        tower_count = sum(int(t.n_elements) for t in proj_reader.tensors)
    else:
        tensors = {t.name: t for t in text_reader.tensors if t.name.startswith(("v.", "mm."))}
        if not tensors:
            raise UnsupportedGGUF(f"{arch}: the GGUF has no vision tower and no projector was given")
        tower = _Tower("ollama", meta, tensors, arch)
        tower_count = 0  # the text import counts every tensor of the file
    build_tower, build_configs = _FAMILY[family]
    vision_weights = build_tower(tower)  # before the text import: a foreign tower fails fast

    spec = _TEXT_SPECS.get(arch) or ARCHITECTURES[arch]
    result = import_gguf(text_gguf, out, spec=spec, write_prefix=_LANGUAGE_PREFIX)
    text = _text_config(out)
    quant = {k: text.pop(k) for k in ("quantization", "quantization_config") if k in text}
    eos, bos = text.pop("eos_token_id", None), text.pop("bos_token_id", None)
    config, pre, proc, specials = build_configs(tower, text, _tokens(meta), meta)
    config.update(quant)
    if eos is not None:
        config["eos_token_id"] = eos
    if bos is not None:
        config["bos_token_id"] = bos
    _check_tower(vision_weights, _vlm_parameter_shapes(config), family)
    if family == "gemma3":
        vision_weights.update(_tied_head(out, config))
    files = [_write_weights(out, vision_weights)]
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2))
    _patch_tokenizer(out, specials, proc["processor_class"])
    log.info("%s: imported the text model and a %d-tensor vision tower for mlx-vlm", arch, len(vision_weights))
    return GGUFImport(
        architecture=arch,
        file_type=result.file_type,
        parameter_count=result.parameter_count + tower_count,
        context_length=result.context_length,
        embedding_length=result.embedding_length,
        chat_template=result.chat_template,
        files=[*result.files, *files, "preprocessor_config.json", "processor_config.json"],
    )
