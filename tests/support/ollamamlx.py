"""A Hugging Face folder written as one of Ollama's `-mlx` tags, following the rules of Ollama's
MLX importer (ollama/ollama x/create, x/quant; read there, written here):

- one `application/vnd.ollama.image.tensor` layer per tensor, named by its Hugging Face name,
  holding a safetensors file with that one tensor (per-expert MoE weights stacked per projection
  into one blob named after the expert group);
- with a quantization, the tensors its default policy picks are replaced by mlx's quantize()
  output stored as `X.weight`, `X.weight.scale`, `X.weight.bias` with `quant_type` and
  `group_size` in the blob's metadata;
- every `*.json` of the folder but the shard index as an `application/vnd.ollama.image.json`
  layer named by its file name; the config blob says `model_format: safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from .fakeregistry import CONFIG, MANIFEST_V2, FakeRegistry

TENSOR = "application/vnd.ollama.image.tensor"
JSON = "application/vnd.ollama.image.json"

# x/quant: canonical type -> (group size, bits, mode)
QUANT = {
    "int4": (64, 4, "affine"),
    "int8": (64, 8, "affine"),
    "mxfp4": (32, 4, "mxfp4"),
    "mxfp8": (32, 8, "mxfp8"),
    "nvfp4": (16, 4, "nvfp4"),
}


def _eight_bit(q: str) -> str:
    return "int8" if q in ("int4", "int8") else "mxfp8"


def _aligned(shape: tuple[int, ...], q: str) -> bool:
    return shape[-1] % {"nvfp4": 16, "int4": 64, "int8": 64}.get(q, 32) == 0


def _stacked_expert(name: str) -> bool:
    if name.endswith((".bias", ".scale", ".qbias")):
        return False
    return any(m in name for m in (".experts.", ".mlp.switch_mlp.", ".mlp.shared_experts.", ".mixer.shared_experts."))


def _should_quantize(name: str) -> bool:
    if "audio_tower" in name or "embed_audio" in name or "embed" in name:
        return False
    if "norm" in name or "ln_" in name or name.endswith(".bias"):
        return False
    return name.endswith(".weight")


def tensor_quantization(name: str, shape: tuple[int, ...], q: str) -> str:
    """Ollama's default policy (GetTensorQuantization) for one tensor; "" keeps it as it is."""
    stacked = _stacked_expert(name)
    if not stacked and not _should_quantize(name):
        return ""
    if len(shape) != 2 and not (len(shape) == 3 and stacked):
        return ""
    n = 1
    for d in shape:
        n *= d
    if n < 1024:
        return ""
    if name.endswith((".mlp.gate.weight", ".mixer.gate.weight", ".shared_expert_gate.weight", ".router.proj.weight")):
        return ""
    if name.endswith("lm_head.weight"):
        return _eight_bit(q) if _aligned(shape, _eight_bit(q)) else ""
    if "vision" in name or "visual" in name:
        return ""
    if not _aligned(shape, q):
        return ""
    if q == "int4" or (q in ("nvfp4", "mxfp4") and not stacked):
        if any(p in name for p in (".v_proj", ".k_proj", "down_proj")) and _aligned(shape, _eight_bit(q)):
            return _eight_bit(q)
    return q


def _use_more_bits(layer: int, layers: int) -> bool:
    first, last = layers // 8, 7 * layers // 8
    return layer < first or layer >= last or (first <= layer < last and (layer - first) % 3 == 2)


def gemma4_quantization(name: str, shape: tuple[int, ...], q: str, layers: int, experts: int) -> str:
    """Ollama's gemma4 import policy (x/create/gemma4.go, quantpolicy.go): the token embedding and,
    in the input/output and every third layer, v/down projections go 8-bit; else the default."""
    if name.endswith("embed_tokens.weight") and "per_layer" not in name:
        for t in (_eight_bit(q), q):
            if _aligned(shape, t):
                return t
        return ""
    sensitive = not ("vision" in name or "visual" in name or "audio_tower" in name or "embed_audio" in name) and any(
        p in name for p in (".v_proj", ".k_proj", "down_proj")
    )
    if sensitive and _eight_bit(q) != q:
        promote = False
        if layers:
            if experts == 8 and (".v_proj" in name or ".k_proj" in name):
                promote = True
            elif ".k_proj" not in name:
                m = re.search(r"\.layers\.(\d+)\.", name)
                promote = bool(m) and _use_more_bits(int(m.group(1)), layers)
        for t in ([_eight_bit(q)] if promote else []) + [q]:
            if _aligned(shape, t):
                return t
        return ""
    return tensor_quantization(name, shape, q)


def _blob(arrays: dict[str, mx.array], metadata: dict[str, str] | None) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "blob.safetensors"
        mx.save_safetensors(str(path), arrays, metadata=metadata or {})
        return path.read_bytes()


# x/create ExpertGroupPrefix: where a layer's per-expert weights are grouped, under which layer prefixes
_EXPERT_MARKERS = (
    ".mlp.experts.",
    ".mlp.shared_experts.",
    ".mlp.switch_mlp.",
    ".moe.experts.",
    ".mixer.experts.",
    ".mixer.shared_experts.",
)
_EXPERT_LAYER = re.compile(
    r"^(?:model\.language_model\.backbone\.|model\.language_model\.|language_model(?:\.model)?\.|"
    r"language_model\.backbone\.|model\.|backbone\.|mtp\.)?layers\.\d+$"
)


def _expert_group(name: str) -> tuple[str, int, str] | None:
    """(group, expert index, projection) of a per-expert weight Ollama stacks, e.g.
    `model.layers.1.mlp.experts.3.down_proj.weight` -> (`model.layers.1.mlp.experts`, 3, `down_proj`)."""
    if not name.endswith(".weight"):
        return None
    for marker in _EXPERT_MARKERS:
        at = name.find(marker)
        if at < 0 or not _EXPERT_LAYER.match(name[:at]):
            continue
        index, _, proj = name[at + len(marker) : -len(".weight")].partition(".")
        return (name[:at] + marker[:-1], int(index), proj) if index.isdigit() and proj else None
    return None


def _layer(name: str) -> int:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def _more_bits(layer: int, layers: int, middle_end: int) -> bool:
    """quantpolicy.go useMoreBitsWithMiddleEnd: the first and last eighth of the layers, and every
    third layer before middle_end."""
    if layer < 0 or layers <= 0:
        return False
    first, last = layers // 8, 7 * layers // 8
    return layer < first or layer >= last or (first <= layer < middle_end and (layer - first) % 3 == 2)


def _promote_embedding(shape: tuple[int, ...], q: str) -> str:
    return _eight_bit(q) if _aligned(shape, _eight_bit(q)) else ""


def nemotron_h_quantization(name: str, shape: tuple[int, ...], q: str, layers: int) -> str:
    """Ollama's Nemotron-H import policy (x/create/nemotron_h.go): the router and conv1d stay as they
    are; embeddings and lm_head go 8-bit; with an fp4 type, attention always and the out/down
    projections of the promoted layers go mxfp8; else the default."""
    if name.startswith(("vision_model.", "mlp1.", "sound_encoder.", "sound_projection.")):
        return ""
    if name.endswith((".mixer.gate.weight", ".mixer.conv1d.weight")):
        return ""
    if name.endswith(("embeddings.weight", "lm_head.weight")):
        return _promote_embedding(shape, q)
    if q in ("nvfp4", "mxfp4"):
        attention = name.endswith(tuple(f".mixer.{p}_proj.weight" for p in "qkvo"))
        sensitive = attention or name.endswith(
            (".mixer.out_proj.weight", ".mixer.down_proj.weight", ".mixer.shared_experts.down_proj.weight")
        )
        sensitive = sensitive or (".mixer.experts." in name and name.endswith(".down_proj.weight"))
        if sensitive:
            layer = _layer(name)
            promote = attention or layer < 0 or _more_bits(layer, layers, 7 * layers // 8)
            if promote and _aligned(shape, "mxfp8"):
                return "mxfp8"
            return q if _aligned(shape, q) else ""
    return tensor_quantization(name, shape, q)


def laguna_quantization(name: str, shape: tuple[int, ...], q: str, dense: set[int], layers: int) -> str:
    """Ollama's Laguna import policy (x/create/laguna.go) for the fp types (int4/int8 take the
    default): embeddings and lm_head 8-bit; router kept; attention, dense MLPs and experts at the
    requested type (mxfp8: attention kept), shared-expert down projections promoted on a cadence
    (mxfp8: kept), routed ones under mxfp8 kept on that cadence."""
    if q not in ("nvfp4", "mxfp4", "mxfp8"):
        return tensor_quantization(name, shape, q)
    layer = _layer(name)

    def requested() -> str:  # the default's type without its blanket 8-bit promotion
        t = tensor_quantization(name, shape, q)
        return q if t != q and t == _eight_bit(q) else t

    promote_down = _more_bits(layer, layers, layers // 2 - 4)
    attention = any(f".self_attn.{p}_proj.weight" in name for p in "qkvog")
    projection = name.endswith((".gate_proj.weight", ".up_proj.weight", ".down_proj.weight"))
    if (name.endswith("embed_tokens.weight") and "per_layer" not in name) or name.endswith("lm_head.weight"):
        return _promote_embedding(shape, q)
    if name.endswith(".mlp.gate.weight"):
        return ""
    if attention:
        return "" if q == "mxfp8" else requested()
    if any(f".mlp.{p}.weight" in name for p in ("gate_proj", "up_proj", "down_proj")) and layer in dense:
        return requested()
    if q == "mxfp8" and ".mlp.experts." in name and name.endswith(".down_proj.weight"):
        return "" if promote_down else requested()
    if ".mlp.shared_expert.down_proj.weight" in name:
        if q == "mxfp8":
            return ""
        return tensor_quantization(name, shape, q) if promote_down else requested()
    if projection and (".mlp.shared_expert." in name or ".mlp.experts." in name):
        return requested()
    return ""


def _laguna_dense_layers(config: dict) -> set[int]:
    dense = {i for i, t in enumerate(config.get("mlp_layer_types") or []) if t == "dense"}
    dense |= set(config.get("mlp_only_layers") or [])
    return dense or {0}


# Architectures whose import transform (x/create/qwen35.go) keeps the low-rank linear-attention
# projections at source precision.
_QWEN35 = ("Qwen3_5", "Qwen3Next")


def _qwen35_low_rank(name: str) -> bool:
    return name.endswith((".linear_attn.in_proj_a.weight", ".linear_attn.in_proj_b.weight", ".in_proj_ba.weight"))


def ollama_mlx_layers(hf_dir: Path, quantize: str = "") -> tuple[list[tuple[str, str, bytes]], dict[str, str]]:
    """(mediaType, name, blob) in Ollama's layer order, and which tensors were quantized to what."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    qwen35 = arch.startswith(_QWEN35)
    text = config.get("text_config") or config
    gemma4 = arch.startswith("Gemma4")
    num_layers = text.get("num_hidden_layers") or 0
    weights: dict[str, mx.array] = {}
    for f in sorted(Path(hf_dir).glob("model*.safetensors")):
        weights.update(mx.load(str(f)))
    layers: list[tuple[str, str, bytes]] = []
    chosen: dict[str, str] = {}

    def quantized(name: str, w: mx.array) -> dict[str, mx.array]:
        q = tensor_quantization(name, tuple(w.shape), quantize) if quantize else ""
        if qwen35 and _qwen35_low_rank(name):
            q = ""
        if gemma4 and quantize:
            q = gemma4_quantization(name, tuple(w.shape), quantize, num_layers, text.get("num_experts") or 0)
        if arch.startswith("NemotronH") and quantize:
            q = nemotron_h_quantization(name, tuple(w.shape), quantize, num_layers)
        if arch == "LagunaForCausalLM" and quantize:
            n = num_layers or len(config.get("mlp_layer_types") or []) or 40
            q = laguna_quantization(name, tuple(w.shape), quantize, _laguna_dense_layers(config), n)
        if not q:
            return {name: w}
        chosen[name] = q
        group, bits, mode = QUANT[q]
        if w.dtype not in (mx.bfloat16, mx.float16, mx.float32):
            w = w.astype(mx.bfloat16)
        out = mx.quantize(w, group_size=group, bits=bits, mode=mode)
        parts = {name: out[0], name + ".scale": out[1]}
        if len(out) > 2 and out[2] is not None:
            parts[name + ".bias"] = out[2]
        return parts

    groups: dict[str, dict[str, list[tuple[int, mx.array]]]] = {}
    for name in sorted(weights):
        g = _expert_group(name)
        if g:
            groups.setdefault(g[0], {}).setdefault(g[2], []).append((g[1], weights[name]))
            continue
        parts = quantized(name, weights[name])
        meta = None
        if name in chosen:
            meta = {"quant_type": chosen[name], "group_size": str(QUANT[chosen[name]][0])}
        layers.append((TENSOR, name, _blob(parts, meta)))
    for prefix in sorted(groups):
        stacked = {
            f"{prefix}.{proj}.weight": mx.stack([w for _, w in sorted(ws, key=lambda e: e[0])])
            for proj, ws in sorted(groups[prefix].items())
        }
        parts: dict[str, mx.array] = {}
        for name, w in stacked.items():
            parts.update(quantized(name, w))
        types = {chosen.get(n, "") for n in stacked}
        if len(types) == 1:
            q = types.pop()
            meta = {"quant_type": q, "group_size": str(QUANT[q][0])} if q else None
            layers.append((TENSOR, prefix, _blob(parts, meta)))
        else:  # mixed precisions: one blob per projection
            for name in stacked:
                q = chosen.get(name, "")
                meta = {"quant_type": q, "group_size": str(QUANT[q][0])} if q else None
                own = {k: v for k, v in parts.items() if k == name or k.startswith(name + ".")}
                layers.append((TENSOR, name, _blob(own, meta)))
    for f in sorted(Path(hf_dir).glob("*.json")):
        if f.name != "model.safetensors.index.json":
            layers.append((JSON, f.name, f.read_bytes()))
    return layers, chosen


def ollama_config(quantize: str = "") -> dict:
    """The config blob Ollama's MLX importer writes (types/model ConfigV2)."""
    return {
        "model_format": "safetensors",
        "model_family": "",
        "model_families": None,
        "model_type": "",
        "file_type": quantize,
        "capabilities": ["completion"],
        "architecture": "",
        "os": "",
    }


def serve(
    registry: FakeRegistry,
    repo: str,
    tag: str,
    layers: list[tuple[str, str, bytes]],
    config: dict,
    extra: list[tuple[str, bytes]] = (),
) -> dict:
    """Put a manifest with named layers (plus unnamed `extra` ones: template, params, ...) on the
    loopback registry; returns the manifest."""
    cfg = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG, "digest": registry.add_blob(cfg), "size": len(cfg)},
        "layers": [
            {"mediaType": mt, "digest": registry.add_blob(data), "size": len(data), "name": name}
            for mt, name, data in layers
        ]
        + [{"mediaType": mt, "digest": registry.add_blob(data), "size": len(data)} for mt, data in extra],
    }
    registry.manifests[(repo, tag)] = json.dumps(manifest).encode()
    return manifest


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_gemma3_multimodal(out: Path, *, seed: int = 0) -> Path:
    """A tiny Gemma3ForConditionalGeneration folder as the Hugging Face repos of gemma3 4b/12b/27b
    hold it (the names Ollama's gemma3 loader reads: `language_model.model.*`, plus a vision tower
    and projector), with the text weights of tinyhf's gemma3 checkpoint, which `out/text` keeps."""
    from . import tinyhf as th

    text_dir = th.build_hf_checkpoint(out / "text", "gemma3", seed=seed)
    text_cfg = json.loads((text_dir / "config.json").read_text())
    text_cfg.pop("architectures", None)
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text_cfg,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 64, "patch_size": 14},
        "mm_tokens_per_image": 4,
        "vocab_size": text_cfg["vocab_size"],
        "eos_token_id": text_cfg["eos_token_id"],
        "torch_dtype": text_cfg["torch_dtype"],
    }
    weights = {f"language_model.{k}": v for k, v in mx.load(str(text_dir / "model.safetensors")).items()}
    key = mx.random.key(seed)
    for name, shape in (
        ("vision_tower.vision_model.embeddings.patch_embedding.weight", (64, 14, 14, 3)),
        ("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight", (64, 64)),
        ("multi_modal_projector.mm_input_projection_weight", (64, text_cfg["hidden_size"])),
        ("multi_modal_projector.mm_soft_emb_norm.weight", (64,)),
    ):
        weights[name] = (mx.random.normal(shape, key=key) * 0.02).astype(mx.bfloat16)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    for f in text_dir.glob("*.json"):
        if f.name != "config.json":
            (out / f.name).write_bytes(f.read_bytes())
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def tiny_checkpoint(model_type: str, out: Path, *, seed: int = 0) -> Path | None:
    """A tiny Hugging Face folder of that model_type (tests/support/tinyhf.py's, or the multimodal
    gemma3 above), or None."""
    from . import tinyhf as th

    if model_type == "gemma3":
        return build_gemma3_multimodal(out, seed=seed)
    if model_type in ("qwen3_5", "qwen3_5_moe"):
        return build_qwen3_5(out, seed=seed, moe=model_type == "qwen3_5_moe")
    if model_type == "gemma4":
        return build_gemma4(out, seed=seed, moe=True)
    builders = {"glm4_moe_lite": build_glm4_moe_lite, "nemotron_h": build_nemotron_h, "laguna": build_laguna}
    if model_type in builders:
        return builders[model_type](out, seed=seed)
    names = [name for name, cfg in th.CONFIGS.items() if cfg["model_type"] == model_type]
    return th.build_hf_checkpoint(out, names[0], seed=seed) if names else None


def draft_layers(hf_dir: Path) -> list[tuple[str, str, bytes]]:
    """A draft model's layers as Ollama stores them beside the model (x/create CreateDraftLayers:
    tensor and blob names prefixed `draft.`, JSON files named `draft/<file>`), unquantized."""
    weights: dict[str, mx.array] = {}
    for f in sorted(Path(hf_dir).glob("model*.safetensors")):
        weights.update(mx.load(str(f)))
    layers = [(TENSOR, f"draft.{n}", _blob({f"draft.{n}": w}, None)) for n, w in sorted(weights.items())]
    layers += [(JSON, f"draft/{f.name}", f.read_bytes()) for f in sorted(Path(hf_dir).glob("*.json"))]
    return layers


QWEN3_5_CONFIG = {
    "architectures": ["Qwen3_5ForConditionalGeneration"],
    "model_type": "qwen3_5",
    "text_config": {
        "model_type": "qwen3_5_text",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,  # three gated-delta-net layers, then full attention
        "full_attention_interval": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "linear_num_value_heads": 4,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 64,
        "linear_value_head_dim": 64,
        "linear_conv_kernel_dim": 4,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "default",
            "mrope_section": [11, 11, 10],
            "rope_theta": 10000000,
            "partial_rotary_factor": 0.25,
        },
    },
    "vision_config": {"depth": 1, "hidden_size": 64},
}

# Hugging Face stores these RMSNorm weights as offsets from 1 (mlx-lm adds 1 when it loads).
_QWEN35_OFFSET_NORMS = (
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
)


QWEN3_5_MOE_CONFIG = json.loads(json.dumps(QWEN3_5_CONFIG))
QWEN3_5_MOE_CONFIG.update(architectures=["Qwen3_5MoeForConditionalGeneration"], model_type="qwen3_5_moe")
QWEN3_5_MOE_CONFIG["text_config"].update(
    model_type="qwen3_5_moe_text",
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=128,
    shared_expert_intermediate_size=128,
    decoder_sparse_step=1,
)


def build_qwen3_5(out: Path, *, seed: int = 0, moe: bool = False) -> Path:
    """A tiny Qwen3_5ForConditionalGeneration (or, moe, Qwen3_5MoeForConditionalGeneration) folder
    in Hugging Face's layout (the inverse of mlx-lm's sanitize: `model.language_model.*` names,
    conv1d as [C, 1, K], norms as offsets from 1, each layer's experts as one fused
    `experts.gate_up_proj` [experts, 2 * intermediate, hidden] and one `experts.down_proj`),
    random weights from mlx-lm's own parameter shapes."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    from . import tinyhf as th
    from .tinymodels import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    config = json.loads(json.dumps(QWEN3_5_MOE_CONFIG if moe else QWEN3_5_CONFIG))
    config["text_config"].update(vocab_size=len(vocab), eos_token_id=vocab[th.EOS])
    config["torch_dtype"] = "bfloat16"
    config["eos_token_id"] = vocab[th.EOS]
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(json.loads(json.dumps(config))))
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    weights = th._random_weights("qwen3_5", shapes, np.random.default_rng(seed))
    for gate in [k for k in weights if k.endswith(".switch_mlp.gate_proj.weight")]:
        mlp = gate.removesuffix(".switch_mlp.gate_proj.weight")
        up = weights.pop(f"{mlp}.switch_mlp.up_proj.weight")
        weights[f"{mlp}.experts.gate_up_proj"] = np.concatenate([weights.pop(gate), up], axis=-2)
        weights[f"{mlp}.experts.down_proj"] = weights.pop(f"{mlp}.switch_mlp.down_proj.weight")
    hf: dict[str, mx.array] = {}
    for name, w in weights.items():
        if "conv1d.weight" in name:
            w = np.swapaxes(w, 1, 2)
        elif name.endswith(_QWEN35_OFFSET_NORMS) and w.ndim == 1:
            w = w - 1.0
        if name.startswith("language_model.model."):
            name = "model.language_model." + name.removeprefix("language_model.model.")
        else:
            name = name.removeprefix("language_model.")
        hf[name] = mx.array(w).astype(mx.bfloat16)
    # a vision block, as the multimodal repos hold (mlx-lm drops `model.visual.*`)
    hf["model.visual.blocks.0.attn.qkv.weight"] = (mx.random.normal((192, 64), key=mx.random.key(seed)) * 0.1).astype(
        mx.bfloat16
    )
    mx.save_safetensors(str(out / "model.safetensors"), hf, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": vocab[th.EOS]}))
    return out


GEMMA4_CONFIG = {
    "architectures": ["Gemma4ForConditionalGeneration"],
    "model_type": "gemma4",
    "text_config": {
        "model_type": "gemma4_text",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "num_attention_heads": 4,
        "head_dim": 64,
        "global_head_dim": 128,
        "num_key_value_heads": 2,
        "num_global_key_value_heads": 2,
        "num_kv_shared_layers": 1,  # the last layer reuses an earlier one's K/V
        "hidden_size_per_layer_input": 64,
        "sliding_window": 4,
        "sliding_window_pattern": 2,
        "max_position_embeddings": 2048,
        "final_logit_softcapping": 30.0,
        "use_double_wide_mlp": True,
        "enable_moe_block": False,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
    },
    "vision_config": {"hidden_size": 64},
}


def build_gemma4(out: Path, *, seed: int = 0, moe: bool = False) -> Path:
    """A tiny Gemma4ForConditionalGeneration folder (moe: with an expert block in every layer):
    mlx-lm's parameter names under Hugging Face's `model.language_model.` (the suffixes Ollama's
    gemma4 loader reads too), experts fused as `experts.gate_up_proj` [experts, 2 * intermediate,
    hidden] and `experts.down_proj`, a vision tensor mlx-lm drops, random weights from mlx-lm's own
    shapes."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    from . import tinyhf as th
    from .tinymodels import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    config = json.loads(json.dumps(GEMMA4_CONFIG))
    config["text_config"].update(vocab_size=len(vocab), vocab_size_per_layer_input=len(vocab))
    if moe:
        config["text_config"].update(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=128)
    config.update(vocab_size=len(vocab), eos_token_id=vocab[th.EOS], torch_dtype="bfloat16")
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(json.loads(json.dumps(config))))
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    rng = np.random.default_rng(seed)
    weights = th._random_weights("gemma4", shapes, rng)
    for name in weights:
        if name.endswith("layer_scalar"):
            weights[name] = rng.uniform(0.5, 1.5, shapes[name]).astype(np.float32)
        elif "embed_tokens" in name:  # gemma scales embeddings up by sqrt(width)
            weights[name] = weights[name] / np.sqrt(shapes[name][-1])
    for gate in [k for k in weights if k.endswith(".experts.switch_glu.gate_proj.weight")]:
        experts = gate.removesuffix(".switch_glu.gate_proj.weight")
        up = weights.pop(f"{experts}.switch_glu.up_proj.weight")
        weights[f"{experts}.gate_up_proj"] = np.concatenate([weights.pop(gate), up], axis=-2)
        weights[f"{experts}.down_proj"] = weights.pop(f"{experts}.switch_glu.down_proj.weight")
    hf = {
        "model.language_model." + name.removeprefix("language_model.model."): mx.array(w).astype(mx.bfloat16)
        for name, w in weights.items()
    }
    hf["model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"] = mx.zeros((64, 64), mx.bfloat16)
    mx.save_safetensors(str(out / "model.safetensors"), hf, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": vocab[th.EOS]}))
    return out


def _mlx_lm_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(json.loads(json.dumps(config))))
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def _unstack_experts(weights: dict[str, np.ndarray], switch: str, experts: str, names: dict[str, str]) -> None:
    """mlx-lm's stacked `<switch>.<proj>.weight` [experts, out, in] back to Hugging Face's one tensor per
    expert, `<experts>.<e>.<hf proj>.weight` (names: mlx-lm projection -> Hugging Face's)."""
    for name in [k for k in weights if f".{switch}." in k]:
        prefix, rest = name.split(f".{switch}.")
        proj = rest.removesuffix(".weight")
        stacked = weights.pop(name)
        for e in range(stacked.shape[0]):
            weights[f"{prefix}.{experts}.{e}.{names.get(proj, proj)}.weight"] = stacked[e]


def _write_tiny(out: Path, config: dict, weights: dict[str, np.ndarray], keep_f32: tuple[str, ...] = ()) -> Path:
    """config.json, generation_config.json and model.safetensors (bfloat16 but the `keep_f32` tensors,
    as the Hugging Face repos keep their router biases and SSM decays)."""
    from . import tinyhf as th

    arrays = {
        k: mx.array(w).astype(mx.float32 if k.endswith(keep_f32) else mx.bfloat16) for k, w in sorted(weights.items())
    }
    mx.save_safetensors(str(out / "model.safetensors"), arrays, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": config["eos_token_id"]}))
    assert config["vocab_size"] == th.VOCAB
    return out


def _tiny_config(out: Path, base: dict) -> dict:
    from . import tinyhf as th
    from .tinymodels import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    return {
        **json.loads(json.dumps(base)),
        "vocab_size": len(vocab),
        "eos_token_id": vocab[th.EOS],
        "torch_dtype": "bfloat16",
    }


def _norms_near_one(weights: dict[str, np.ndarray], rng) -> None:
    for name, w in weights.items():
        if "norm" in name and w.ndim == 1:
            weights[name] = rng.uniform(0.6, 1.4, w.shape).astype(np.float32)


# GLM-4.7-Flash's shape (Glm4MoeLiteForCausalLM), small: MLA with a q LoRA, one dense layer then MoE
# layers (sigmoid router with a correction bias, a shared expert), and the multi-token-prediction
# layer the Hugging Face repo stores after the last one (model.layers.<num_hidden_layers>.*).
GLM4_MOE_LITE_CONFIG = {
    "architectures": ["Glm4MoeLiteForCausalLM"],
    "model_type": "glm4_moe_lite",
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_shared_experts": 1,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "routed_scaling_factor": 1.8,
    "kv_lora_rank": 64,
    "q_lora_rank": 128,
    "qk_rope_head_dim": 32,
    "qk_nope_head_dim": 64,
    "v_head_dim": 64,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "norm_topk_prob": True,
    "n_group": 1,
    "topk_group": 1,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 1,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "partial_rotary_factor": 1.0,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 1,
}


def build_glm4_moe_lite(out: Path, *, seed: int = 0) -> Path:
    """A tiny GLM-4.7-Flash folder in Hugging Face's layout: kv_b_proj whole (mlx-lm splits it into
    embed_q / unembed_out), one tensor per expert, and an MTP layer mlx-lm leaves out."""
    from . import tinyhf as th

    config = _tiny_config(out, GLM4_MOE_LITE_CONFIG)
    shapes = _mlx_lm_shapes(config)
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    for layer in range(layers):
        attn = f"model.layers.{layer}.self_attn"
        shapes.pop(f"{attn}.embed_q.weight")
        shapes.pop(f"{attn}.unembed_out.weight")
        rows = heads * (config["qk_nope_head_dim"] + config["v_head_dim"])
        shapes[f"{attn}.kv_b_proj.weight"] = (rows, config["kv_lora_rank"])
    hidden = config["hidden_size"]
    mtp = f"model.layers.{layers}"
    shapes.update(
        {
            f"{mtp}.eh_proj.weight": (hidden, 2 * hidden),
            f"{mtp}.enorm.weight": (hidden,),
            f"{mtp}.hnorm.weight": (hidden,),
            f"{mtp}.shared_head.norm.weight": (hidden,),
        }
    )
    rng = np.random.default_rng(seed)
    weights = th._random_weights("glm4_moe_lite", shapes, rng)
    _norms_near_one(weights, rng)
    _unstack_experts(weights, "switch_mlp", "experts", {})
    return _write_tiny(out, config, weights, keep_f32=("e_score_correction_bias",))


# Nemotron-3-Nano's shape (NemotronHForCausalLM), small: Mamba-2 mixers (M), attention (*), relu²
# MoE with a shared expert and a sigmoid router (E) and a dense relu² MLP (-), one per layer.
NEMOTRON_H_CONFIG = {
    "architectures": ["NemotronHForCausalLM"],
    "model_type": "nemotron_h",
    "hybrid_override_pattern": "M*EME-",
    "num_hidden_layers": 6,
    "hidden_size": 256,
    "intermediate_size": 512,
    "max_position_embeddings": 2048,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "attention_bias": False,
    "mamba_num_heads": 8,
    "mamba_head_dim": 32,
    "mamba_proj_bias": False,
    "ssm_state_size": 32,
    "conv_kernel": 4,
    "n_groups": 2,
    "mlp_bias": False,
    "layer_norm_epsilon": 1e-5,
    "use_bias": False,
    "use_conv_bias": True,
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "moe_intermediate_size": 128,
    "moe_shared_expert_intermediate_size": 256,
    "n_group": 1,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "topk_group": 1,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "tie_word_embeddings": False,
}


def build_nemotron_h(out: Path, *, seed: int = 0) -> Path:
    """A tiny Nemotron-H folder in Hugging Face's layout: conv1d kernels as [channels, 1, width], one
    tensor per expert (`mixer.experts.<e>.up_proj` / `down_proj`), float32 A_log."""
    from . import tinyhf as th

    config = _tiny_config(out, NEMOTRON_H_CONFIG)
    rng = np.random.default_rng(seed)
    weights = th._random_weights("nemotron_h", _mlx_lm_shapes(config), rng)
    _norms_near_one(weights, rng)
    for name, w in list(weights.items()):
        if name.endswith(".A_log"):
            weights[name] = np.log(rng.uniform(1, 16, w.shape)).astype(np.float32)
        elif name.endswith(".D"):
            weights[name] = rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
        elif name.endswith(".dt_bias"):
            weights[name] = rng.uniform(-1, 1, w.shape).astype(np.float32)
        elif name.endswith("conv1d.weight"):
            weights[name] = np.ascontiguousarray(np.moveaxis(w, 2, 1))
    _unstack_experts(weights, "switch_mlp", "experts", {"fc1": "up_proj", "fc2": "down_proj"})
    return _write_tiny(out, config, weights, keep_f32=("e_score_correction_bias", ".A_log"))


# Laguna-XS.2's shape (LagunaForCausalLM), small: per-layer head counts, softplus-gated attention with
# q/k norms, full (YaRN, half the head rotated) and sliding-window layers, a dense first layer then
# MoE layers (sigmoid router, correction bias under `experts.`, a shared expert).
LAGUNA_CONFIG = {
    "architectures": ["LagunaForCausalLM"],
    "model_type": "laguna",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_attention_heads_per_layer": [8, 4, 4],
    "num_key_value_heads": 2,
    "head_dim": 64,
    "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
    "mlp_layer_types": ["dense", "sparse", "sparse"],
    "sliding_window": 4,
    "gating": True,
    "qkv_bias": False,
    "attention_bias": False,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 128,
    "shared_expert_intermediate_size": 128,
    "moe_routed_scaling_factor": 2.5,
    "moe_router_score_func": "sigmoid",
    "rope_parameters": {
        "full_attention": {
            "rope_type": "yarn",
            "rope_theta": 500000.0,
            "partial_rotary_factor": 0.5,
            "factor": 4.0,
            "original_max_position_embeddings": 8,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        },
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    },
    "tie_word_embeddings": False,
}


def build_laguna(out: Path, *, seed: int = 0) -> Path:
    """A tiny Laguna folder in Hugging Face's layout: the bare router `mlp.gate.weight`, its correction
    bias as `mlp.experts.e_score_correction_bias`, one tensor per expert."""
    from . import tinyhf as th

    config = _tiny_config(out, LAGUNA_CONFIG)
    rng = np.random.default_rng(seed)
    weights = th._random_weights("laguna", _mlx_lm_shapes(config), rng)
    _norms_near_one(weights, rng)
    for name in [k for k in weights if ".mlp.gate." in k]:
        mlp = name.split(".mlp.gate.")[0] + ".mlp"
        if name.endswith(".gate.proj.weight"):
            weights[f"{mlp}.gate.weight"] = weights.pop(name)
        else:
            weights[f"{mlp}.experts.e_score_correction_bias"] = weights.pop(name)
    _unstack_experts(weights, "switch_mlp", "experts", {})
    return _write_tiny(out, config, weights, keep_f32=("e_score_correction_bias",))
