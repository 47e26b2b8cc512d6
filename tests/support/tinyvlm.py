"""Tiny random-weight vision-language models in mlx-vlm's layout, built with mlx-vlm's own model
classes: config.json with a `vision_config`, model.safetensors in mlx-vlm's parameter names
(written as MLX writes them), a small byte-level BPE tokenizer that carries the family's image
tokens, and the processor files, so `mlx_vlm.load(folder)` works offline.

The reference for tests is mlx-vlm itself: `reference_logits` formats the prompt with mlx-vlm's
`apply_chat_template`, tokenizes it and preprocesses the images with `prepare_inputs`, and runs
`generate_step` (the prefill `mlx_vlm.generate` runs), returning the first token's
log-probabilities over the vocabulary.

Families: "gemma3" (SigLIP tower, pooled to 4 tokens per image), "qwen2_5_vl" (windowed ViT with
2x2 merging and M-RoPE), "mistral3" (Pixtral tower, patch merger, [IMG_BREAK] rows) and "llava"
(CLIP tower, MLP projector).
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

VOCAB = 512
FAMILIES = ("gemma3", "qwen2_5_vl", "mistral3", "llava")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Why is the sky blue? Paris is the capital of France.",
    "Describe this image. What is in the picture? A red square, a blue circle and a green line.",
    "Hello world! 12345 67890. Ünïcödé text, emoji 🙂 and CJK 你好 in one line.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
] * 20

# Chat templates in the shape of each family's own (the parts that place images and turns), short
# enough to read. Content may be a string or a list of {"type": "image"} / {"type": "text"} items.
_CONTENT = (
    "{%- macro content(c, image) -%}{%- if c is string -%}{{ c }}{%- else -%}{%- for item in c -%}"
    "{%- if item['type'] == 'image' -%}{{ image }}{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
)
_TEMPLATES = {
    "gemma3": _CONTENT + "{{ bos_token }}{% for m in messages %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ content(m['content'], '<start_of_image>') }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    "qwen2_5_vl": _CONTENT + "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ content(m['content'], '<|vision_start|><|image_pad|><|vision_end|>') }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "mistral3": _CONTENT + "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}[INST]{{ content(m['content'], '[IMG]') }}[/INST]"
    "{% elif m['role'] == 'system' %}[SYSTEM_PROMPT]{{ content(m['content'], '') }}[/SYSTEM_PROMPT]"
    "{% else %}{{ content(m['content'], '') }}{{ eos_token }}{% endif %}{% endfor %}",
    "llava": _CONTENT + "{% for m in messages %}{{ m['role'] | upper }}: "
    "{{ content(m['content'], '<image>\n') }}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}",
}

# Special tokens per family, in id order from 0; `pad`/`bos`/`eos` name the roles.
_SPECIAL = {
    "gemma3": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<end_of_image>", "<image_soft_token>"],
    "qwen2_5_vl": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                   "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"],
    "mistral3": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
                 "[IMG_BREAK]", "[IMG_END]"],
    "llava": ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
}  # fmt: skip
_ROLES = {
    "gemma3": {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>"},
    "qwen2_5_vl": {"pad": "<|endoftext|>", "bos": None, "eos": "<|im_end|>"},
    "mistral3": {"pad": "<unk>", "bos": "<s>", "eos": "</s>"},
    "llava": {"pad": "<pad>", "bos": "<s>", "eos": "</s>"},
}
_MEAN, _STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# Pixels per side of the tiny towers' images (4x4 patches of 14).
IMAGE_SIDE = 56

# Model sizes: "tiny" for tests; "small" (gemma3 and qwen2_5_vl) for benchmarks where decoding should
# be compute-bound: a SmolLM2-135M-shaped text model (30 layers, hidden 576, 9/3 heads of 64) and a
# 4-layer SigLIP/ViT-like tower on 224-pixel images (16x16 patches of 14, 64 tokens per image).
SHAPES = ("tiny", "small")
_SMALL_TEXT = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
}
_SMALL_SIDE = 224


def _build_tokenizer(out: Path, family: str) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = _SPECIAL[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.save(str(out / "tokenizer.json"))
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    roles = _ROLES[family]
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": roles["bos"],
        "eos_token": roles["eos"],
        "pad_token": roles["pad"],
        "unk_token": None,
        "model_max_length": 4096,
        "chat_template": _TEMPLATES[family],
    }
    if family == "gemma3":  # Gemma3Processor reads these names off the tokenizer
        cfg["extra_special_tokens"] = {
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        }
    elif family == "qwen2_5_vl":
        cfg["extra_special_tokens"] = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    (out / "special_tokens_map.json").write_text(
        json.dumps({k + "_token": v for k, v in roles.items() if v is not None})
    )
    return {t: vocab[t] for t in specials}


def _configs(family: str, ids: dict[str, int], vocab_size: int, shape: str = "tiny") -> tuple[dict, dict, dict]:
    """(config.json, preprocessor_config.json, processor_config.json)."""
    if shape not in SHAPES or (shape == "small" and family not in ("gemma3", "qwen2_5_vl")):
        raise ValueError(f"shape {shape!r} is not built for {family!r}")
    small = shape == "small"
    text = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        **(_SMALL_TEXT if small else {}),
    }
    image = {
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": _MEAN,
        "image_std": _STD,
        "do_convert_rgb": True,
        "resample": 3,
    }
    if family == "gemma3":
        config = {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "text_config": {
                "model_type": "gemma3_text",
                **text,
                "head_dim": 64 if small else 16,
                "query_pre_attn_scalar": 64 if small else 16,
                "sliding_window": 512,
                "sliding_window_pattern": 6 if small else 2,
                "rope_scaling": None,
                "mm_tokens_per_image": 64 if small else 4,
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "num_hidden_layers": 4 if small else 2,
                "hidden_size": 384 if small else 32,
                "intermediate_size": 1536 if small else 64,
                "num_attention_heads": 6 if small else 2,
                "patch_size": 14,
                "image_size": _SMALL_SIDE if small else IMAGE_SIDE,
                "layer_norm_eps": 1e-6,
            },
            "hidden_size": text["hidden_size"],
            "mm_tokens_per_image": 64 if small else 4,
            "image_token_index": ids["<image_soft_token>"],
            "boi_token_index": ids["<start_of_image>"],
            "eoi_token_index": ids["<end_of_image>"],
            "pad_token_id": ids["<pad>"],
            "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
            "vocab_size": vocab_size,
        }
        pre = {
            **image,
            "image_processor_type": "Gemma3ImageProcessor",
            "processor_class": "Gemma3Processor",
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "resample": 2,
            "size": {"height": _SMALL_SIDE, "width": _SMALL_SIDE}
            if small
            else {"height": IMAGE_SIDE, "width": IMAGE_SIDE},
            "do_pan_and_scan": None,
        }
        proc = {"processor_class": "Gemma3Processor", "image_seq_length": 64 if small else 4}
    elif family == "qwen2_5_vl":
        config = {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            **text,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": False,
            # M-RoPE over (time, height, width): sections of the rotary half (head_dim 16 -> 8)
            "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12] if small else [2, 3, 3]},
            "vision_config": {
                "model_type": "qwen2_5_vl",
                "depth": 4 if small else 2,
                "hidden_size": 384 if small else 32,
                "intermediate_size": 1536 if small else 64,
                "out_hidden_size": text["hidden_size"],
                "num_heads": 6 if small else 2,
                "patch_size": 14,
                "spatial_patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 112 if small else 56,
                "fullatt_block_indexes": [1, 3] if small else [1],
                "in_channels": 3,
                "tokens_per_second": 2,
            },
            "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
            "vision_token_id": ids["<|vision_pad|>"],
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "vocab_size": vocab_size,
        }
        pre = {
            **image,
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            # 28-pixel units: a 56x56 image is 4x4 patches, 4 tokens after 2x2 merging
            "min_pixels": 28 * 28,
            "max_pixels": _SMALL_SIDE * _SMALL_SIDE if small else 4 * IMAGE_SIDE * IMAGE_SIDE,
        }
        proc = {"processor_class": "Qwen2_5_VLProcessor"}
    elif family == "mistral3":
        config = {
            "architectures": ["Mistral3ForConditionalGeneration"],
            "model_type": "mistral3",
            "text_config": {
                "model_type": "mistral",
                **text,
                "head_dim": 16,
                "rope_theta": 1000000.0,
                "tie_word_embeddings": False,
                "sliding_window": None,
            },
            "vision_config": {
                "model_type": "pixtral",
                "num_hidden_layers": 2,
                "hidden_size": 32,
                "head_dim": 16,
                "intermediate_size": 64,
                "num_attention_heads": 2,
                "image_size": IMAGE_SIDE,
                "patch_size": 14,
                "rope_theta": 10000.0,
            },
            "image_token_index": ids["[IMG]"],
            "spatial_merge_size": 2,
            "multimodal_projector_bias": False,
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -1,
            "eos_token_id": ids["</s>"],
            "vocab_size": vocab_size,
        }
        pre = {
            **image,
            "image_processor_type": "PixtralImageProcessor",
            "processor_class": "PixtralProcessor",
            "patch_size": {"height": 14, "width": 14},
            "size": {"longest_edge": IMAGE_SIDE},
        }
        proc = {
            "processor_class": "PixtralProcessor",
            "image_token": "[IMG]",
            "image_break_token": "[IMG_BREAK]",
            "image_end_token": "[IMG_END]",
            "patch_size": 14,
            "spatial_merge_size": 2,
        }
    elif family == "llava":
        config = {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "text_config": {"model_type": "llama", **text, "rope_theta": 10000.0, "tie_word_embeddings": False},
            "vision_config": {
                "model_type": "clip_vision_model",
                "num_hidden_layers": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_attention_heads": 2,
                "image_size": IMAGE_SIDE,
                "patch_size": 14,
                "projection_dim": 64,
                "layer_norm_eps": 1e-5,
            },
            "image_token_index": ids["<image>"],
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "eos_token_id": ids["</s>"],
            "vocab_size": vocab_size,
        }
        pre = {
            **image,
            "image_processor_type": "CLIPImageProcessor",
            "processor_class": "LlavaProcessor",
            "size": {"shortest_edge": IMAGE_SIDE},
            "crop_size": {"height": IMAGE_SIDE, "width": IMAGE_SIDE},
            "do_center_crop": True,
        }
        proc = {
            "processor_class": "LlavaProcessor",
            "image_token": "<image>",
            "patch_size": 14,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
        }
    else:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return config, pre, proc


def _randomize(model, seed: int) -> dict:
    """Random parameters that make every layer matter: norms near 1 (gemma's zero-centred ones
    near 0), matrices scaled by their fan-in, so image features reach the logits."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    rng = np.random.default_rng(seed)
    out = {}
    for name, value in tree_flatten(model.parameters()):
        shape = tuple(value.shape)
        if not mx.issubdtype(value.dtype, mx.floating):
            out[name] = value
            continue
        if "norm" in name or name.endswith(("layernorm.weight", "ln_pre.weight", "ln_post.weight")):
            centre = 0.0 if np.allclose(np.array(value), 0.0) else 1.0
            arr = centre + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias") or len(shape) == 1:
            arr = 0.02 * rng.standard_normal(shape)
        elif "embed_tokens" in name:
            arr = rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            if name.endswith("mm_input_projection_weight"):  # stored (in, out)
                fan_in = shape[0]
            arr = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        out[name] = mx.array(arr.astype(np.float32))
    return out


def build_tiny_vlm(family: str, out: Path, *, seed: int = 0, dtype: str = "float32", shape: str = "tiny") -> Path:
    """A loadable mlx-vlm model folder of `family` with random weights (sized by `shape`, one of
    SHAPES); returns `out`."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = _build_tokenizer(out, family)
    vocab_size = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    config, pre, proc = _configs(family, ids, vocab_size, shape)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    (out / "processor_config.json").write_text(json.dumps(proc, indent=1))
    roles = _ROLES[family]
    eos = config["eos_token_id"]
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": eos, **({"bos_token_id": ids[roles["bos"]]} if roles["bos"] else {})})
    )

    arch, _ = get_model_and_args(json.loads(json.dumps(config)))
    cfg = json.loads(json.dumps(config))
    cfg.setdefault("text_config", {})
    model_config = arch.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(model_config, arch, cfg, ["text", "vision", "perceiver", "projector", "audio"])
    mx.random.seed(seed)
    model = arch.Model(model_config)
    weights = _randomize(model, seed)
    target = getattr(mx, dtype)
    weights = {k: (v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in weights.items()}
    model.update(tree_unflatten(list(weights.items())))
    # mlx-vlm's own writer: "format: mlx" metadata, index file
    from mlx_vlm.utils import save_weights

    save_weights(out, model)
    return out


# ------------------------------------------------------------------------------ the reference


def make_image(seed: int = 0, size: tuple[int, int] = (IMAGE_SIDE, IMAGE_SIDE), fmt: str = "PNG") -> bytes:
    """An encoded RGB image of random blocks, different per seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, size=(max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    arr = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    if arr.shape[0] < h or arr.shape[1] < w:
        arr = np.pad(arr, ((0, h - arr.shape[0]), (0, w - arr.shape[1]), (0, 0)), mode="edge")
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


# Keyword arguments prepare_inputs gives a processor for its tokenizer.
_TEXT_KWARGS = frozenset({"padding", "padding_side", "add_special_tokens", "truncation", "max_length"})


class _ImageKwargsOnly:
    """mlx-vlm 0.7's LlavaProcessor hands the tokenizer's keyword arguments (`padding=`) to the image
    processor, which transformers 5 refuses; this passes it only its own (the upstream fix)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, images, *args, **kwargs):
        return self._inner(images, *args, **{k: v for k, v in kwargs.items() if k not in _TEXT_KWARGS})


@functools.lru_cache(maxsize=8)
def load_vlm(folder: str):
    """mlx_vlm.load of a folder (cached per path: tests ask for the same model many times); llava's
    processor gets the one fix it needs to run under transformers 5 (_ImageKwargsOnly)."""
    from mlx_vlm import load

    model, processor = load(str(folder))
    if model.config.model_type == "llava" and not isinstance(processor.image_processor, _ImageKwargsOnly):
        processor.image_processor = _ImageKwargsOnly(processor.image_processor)
    return model, processor


def _as_image(image):
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(bytes(image))).convert("RGB")
    if isinstance(image, (str, Path)):
        return Image.open(image).convert("RGB")
    return image


def reference_prompt(folder: str | Path, prompt: str | list, num_images: int) -> str:
    """The prompt text mlx_vlm.generate would tokenize: mlx-vlm's apply_chat_template of a user
    message (or a list of messages) with `num_images` images."""
    from mlx_vlm import apply_chat_template

    model, processor = load_vlm(str(folder))
    return apply_chat_template(processor, model.config, prompt, num_images=num_images)


def reference_inputs(folder: str | Path, prompt: str | list, images: Sequence = (), *, formatted: bool = False):
    """mlx-vlm's prepare_inputs of (prompt, images) as mlx_vlm.generate calls it: the dict of
    input_ids, pixel_values, attention_mask and the family's extra arrays."""
    from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

    model, processor = load_vlm(str(folder))
    text = prompt if formatted else reference_prompt(folder, prompt, len(images))
    pil = [_as_image(i) for i in images]
    return prepare_inputs(
        processor,
        images=pil or None,
        prompts=text,
        image_token_index=getattr(model.config, "image_token_index", None),
        add_special_tokens=should_add_special_tokens(model.config.model_type, processor),
        pad_to_uniform_size=False,
    )


def _steps(folder, prompt, images, formatted, n):
    from mlx_vlm.generate import generate_step

    model, _ = load_vlm(str(folder))
    inputs = reference_inputs(folder, prompt, images, formatted=formatted)
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    gen = generate_step(
        inputs["input_ids"], model, inputs.get("pixel_values"), inputs.get("attention_mask"), max_tokens=n, **extra
    )
    return gen


def reference_logits(
    folder: str | Path, prompt: str | list, images: Sequence = (), *, formatted: bool = False
) -> np.ndarray:
    """mlx-vlm's own first-token log-probabilities (float32, [vocab]) for `prompt` (a user message
    text, or a list of messages; with formatted=True the exact prompt text) and `images` (encoded
    bytes, paths or PIL images): what mlx_vlm.generate samples its first token from. Log-softmax of
    the logits, so the argmax and every difference between two tokens are the logits'."""
    import mlx.core as mx

    _token, logprobs = next(iter(_steps(folder, prompt, images, formatted, 1)))
    return np.array(logprobs.astype(mx.float32)).reshape(-1)


def reference_generate(
    folder: str | Path, prompt: str | list, images: Sequence = (), n: int = 8, *, formatted: bool = False
) -> list[int]:
    """mlx-vlm's greedy token ids (temperature 0) for the first `n` steps."""
    return [int(t) for t, _ in _steps(folder, prompt, images, formatted, n)]


# ------------------------------------------------------------------------------ Hugging Face layout

# mlx-vlm's parameter names -> the names the published Hugging Face checkpoints use, per family
# (what mlx-vlm's sanitize maps back): gemma3's and mistral3's checkpoints already use mlx-vlm's.
_HF_PREFIXES = {
    "qwen2_5_vl": (
        ("vision_tower.", "visual."),
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ),
}


def to_hf_layout(family: str, mlx_dir: Path, out: Path) -> Path:
    """The tiny model of `mlx_dir` as its Hugging Face checkpoint would be published: PyTorch's
    convolution layout, Hugging Face's names, tied heads left out, "format: pt" safetensors and a
    `torch_dtype`; the tokenizer and processor files as they are. mlx-vlm's converter reads it."""
    import shutil

    import mlx.core as mx

    mlx_dir, out = Path(mlx_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in mlx_dir.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors") and p.name != "model.safetensors.index.json":
            shutil.copy(p, out / p.name)
    weights = {}
    for f in sorted(mlx_dir.glob("*.safetensors")):
        weights.update(mx.load(str(f)))
    config = json.loads((mlx_dir / "config.json").read_text())
    tied = (config.get("text_config") or config).get("tie_word_embeddings", family == "gemma3")
    hf = {}
    for name, w in weights.items():
        if name.endswith("lm_head.weight") and tied:
            continue
        if name.endswith("patch_embedding.weight") and w.ndim == 4:  # [out, kh, kw, in] -> [out, in, kh, kw]
            w = w.transpose(0, 3, 1, 2)
        elif name.endswith("patch_conv.weight") and w.ndim == 4:
            w = w.transpose(0, 3, 1, 2)
        elif name.endswith("patch_embed.proj.weight") and w.ndim == 5:  # [out, t, h, w, in] -> [out, in, t, h, w]
            w = w.transpose(0, 4, 1, 2, 3)
        for mlx_prefix, hf_prefix in _HF_PREFIXES.get(family, ()):
            if name.startswith(mlx_prefix):
                name = hf_prefix + name[len(mlx_prefix) :]
                break
        hf[name] = w
    mx.save_safetensors(str(out / "model.safetensors"), hf, metadata={"format": "pt"})
    config["torch_dtype"] = str(next(iter(hf.values())).dtype).replace("mlx.core.", "")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out
