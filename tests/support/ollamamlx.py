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


def _expert_group(name: str) -> tuple[str, int, str] | None:
    m = re.match(r"^(.*\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight$", name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


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
            layers = text.get("num_hidden_layers") or 0
            q = gemma4_quantization(name, tuple(w.shape), quantize, layers, text.get("num_experts") or 0)
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
