"""What a stored model is: its files, template, parameters and capabilities (no MLX here)."""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..parsers.harmony import is_harmony_template
from ..parsers.thinking import template_supports_thinking
from ..store import ModelName, Store, media
from .fim import FimFormat, fim_format_in_text

log = logging.getLogger("mlxollama.engine")


class ModelNotFoundError(LookupError):
    pass


@dataclass
class ModelSpec:
    name: ModelName
    digest_hex: str
    store: Store
    stored: object
    config: dict
    kind: str  # "llm", "embedding" or "vision" (an mlx-vlm model folder: text + vision tower)
    model_info: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)
    chat_template: str | None = None
    # The TEMPLATE layer; for HF code models without one, the Go FIM template derived from their
    # tokens (go_template_derived), so /api/show shows `.Suffix` and Continue turns FIM on.
    go_template: str | None = None
    go_template_derived: bool = False
    fim: FimFormat | None = None
    system: str | None = None
    params: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    # /api/show projector_info of a vision model: its tower's fields under llama.cpp's clip.* keys
    projector_info: dict = field(default_factory=dict)
    modified_at: float = 0.0
    size: int = 0
    # DRAFT: the model that proposes tokens for this one (speculative.py); None when it has none or
    # the draft has since been deleted (the model then runs without it).
    draft: "ModelSpec | None" = None

    @property
    def short_name(self) -> str:
        return self.name.display_shortest()

    @property
    def draft_name(self) -> str:
        """The DRAFT this model was created with (as /api/show reports it), even if since deleted."""
        draft = self.config.get("draft")
        return str(draft.get("model") or "") if isinstance(draft, dict) else ""

    @property
    def family(self) -> str:
        return self.config.get("model_family") or self.model_info.get("general.architecture", "")

    @property
    def context_length(self) -> int:
        return int(self.config.get("context_length") or self.model_info.get(f"{self.family}.context_length") or 0)

    @property
    def embedding_length(self) -> int:
        return int(self.config.get("embedding_length") or self.model_info.get(f"{self.family}.embedding_length") or 0)

    @property
    def parent_model(self) -> str:
        """The model this one was created from (the `from` its layers carry), as /api/show reports it."""
        return next((l.from_ for l in self.stored.manifest.layers if l.from_), "")

    def details(self, parent: str = "") -> dict:
        families = self.config.get("model_families") or ([self.family] if self.family else None)
        return {
            "parent_model": parent,
            "format": self.config.get("model_format", "mlx"),
            "family": self.family,
            "families": families,
            "parameter_size": self.config.get("model_type", ""),
            "quantization_level": self.config.get("file_type", ""),
        }

    def materialize(self, run_dir: Path) -> Path:
        return self.store.materialize(self.stored, run_dir)


def _file_layer_text(store: Store, stored, filename: str) -> str | None:
    for layer in stored.manifest.layers:
        if layer.name == filename:
            return store.blob_path(layer.digest).read_text(encoding="utf-8")
    return None


def _json_or(text: str | None, default):
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


_TOOLS_IN_JINJA = re.compile(r"\btools\b|\btool_calls?\b")


def derive_capabilities(kind: str, chat_template: str | None, go_template: str | None, fim: bool = False) -> list[str]:
    """Ollama's rules (§5.5) on what we hold: the Jinja template decides tools and thinking
    (our parsers cover every template that renders tools); `.Suffix` in the Go template decides
    insert, and for HF code models that template is derived from their FIM tokens."""
    if kind == "embedding":
        return ["embedding"]
    caps = ["completion"]
    jinja = chat_template or ""
    go = go_template or ""
    if _TOOLS_IN_JINJA.search(jinja) or ".Tools" in go:
        caps.append("tools")
    if fim or ".Suffix" in go:
        caps.append("insert")
    if kind == "vision":  # Ollama's order for a model with a projector: after insert, before thinking
        caps.append("vision")
    if template_supports_thinking(jinja) or is_harmony_template(jinja) or ".Thinking" in go:
        caps.append("thinking")
    return caps


# Parameters of a vision tower or its projector, in mlx-vlm's and Hugging Face's names (a text
# model converted from a multimodal checkpoint keeps `vision_config` but none of these).
_VISION_TENSOR = re.compile(
    r"(^|\.)(vision_tower|vision_model|visual|vision_encoder|multi_modal_projector|mm_projector|embed_vision)\."
)


def is_vision_tensor(name: str) -> bool:
    return _VISION_TENSOR.search(name) is not None


def _safetensors_names(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            return {}
        header = json.loads(f.read(n))
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


@functools.lru_cache(maxsize=256)
def _vision_parameter_count(paths: tuple[Path, ...], bits: int) -> int:
    """Parameters of the vision tower and projector in these weight files (0: there are none).
    Packed quantized matrices count as their unpacked size, their scales and biases not at all."""
    total = 0
    for p in paths:
        try:
            header = _safetensors_names(p)
        except (OSError, ValueError):
            continue
        for name, info in header.items():
            if not is_vision_tensor(name):
                continue
            stem = name.rsplit(".", 1)[0]
            if name.endswith((".scales", ".biases")) and f"{stem}.weight" in header:
                continue
            n = 1
            for d in info.get("shape") or []:
                n *= int(d)
            if info.get("dtype") == "U32" and f"{stem}.scales" in header:
                n = n * 32 // (bits or 4)
            total += max(n, 1)
    return total


# llama.cpp's clip.projector_type per mlx-vlm model_type, as an mmproj GGUF names it.
_PROJECTOR_TYPES = {
    "gemma3": "gemma3",
    "qwen2_vl": "qwen2vl_merger",
    "qwen2_5_vl": "qwen2.5vl_merger",
    "qwen3_vl": "qwen3vl_merger",
    "mistral3": "pixtral",
    "pixtral": "pixtral",
    "llava": "mlp",
    "llava_next": "mlp",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "llama4": "llama4",
}


def projector_info(hf_config: dict, preprocessor: dict, parameter_count: int) -> dict:
    """/api/show projector_info of an mlx-vlm model: what an mmproj GGUF's key/values would say
    (llama.cpp's clip.* names), from config.json's vision_config and the image preprocessor."""
    vision = hf_config.get("vision_config") or {}
    text = hf_config.get("text_config") if isinstance(hf_config.get("text_config"), dict) else {}

    def first(*values):
        return next((v for v in values if v is not None), None)

    model_type = str(hf_config.get("model_type") or "")
    info: dict = {"general.architecture": "clip"}
    if parameter_count:
        info["general.parameter_count"] = int(parameter_count)
    info["clip.has_vision_encoder"] = True
    info["clip.projector_type"] = _PROJECTOR_TYPES.get(model_type, model_type)
    fields = {
        "clip.vision.block_count": first(vision.get("num_hidden_layers"), vision.get("depth")),
        "clip.vision.embedding_length": first(vision.get("hidden_size"), vision.get("embed_dim")),
        "clip.vision.feed_forward_length": vision.get("intermediate_size"),
        "clip.vision.attention.head_count": first(vision.get("num_attention_heads"), vision.get("num_heads")),
        "clip.vision.attention.layer_norm_epsilon": first(vision.get("layer_norm_eps"), vision.get("rms_norm_eps")),
        "clip.vision.image_size": vision.get("image_size"),
        "clip.vision.patch_size": vision.get("patch_size"),
        # the width the projector writes into: the language model's hidden size
        "clip.vision.projection_dim": first(
            vision.get("out_hidden_size"), (text or {}).get("hidden_size"), hf_config.get("hidden_size")
        ),
        "clip.vision.spatial_merge_size": first(vision.get("spatial_merge_size"), hf_config.get("spatial_merge_size")),
        "clip.vision.window_size": vision.get("window_size"),
        "clip.vision.image_mean": preprocessor.get("image_mean"),
        "clip.vision.image_std": preprocessor.get("image_std"),
    }
    info.update({k: v for k, v in fields.items() if v is not None})
    return info


def _vision_parameters(store: Store, stored, hf_config: dict) -> int:
    """Vision parameters of a stored model whose config.json has a vision_config (0: none stored)."""
    if not isinstance(hf_config.get("vision_config"), dict) or not hf_config["vision_config"]:
        return 0
    paths = tuple(store.blob_path(l.digest) for l in stored.manifest.layers if l.media_type == media.MLX_WEIGHTS)
    quant = hf_config.get("quantization") if isinstance(hf_config.get("quantization"), dict) else {}
    return _vision_parameter_count(paths, int(quant.get("bits") or 0)) if paths else 0


@functools.lru_cache(maxsize=256)
def _fim_in_blobs(paths: tuple[Path, ...]) -> FimFormat | None:
    # Blobs are content-addressed, so what a path holds never changes: cache per digest path.
    texts = []
    for p in paths:
        try:
            texts.append(p.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return fim_format_in_text(texts)


def _fim_format(store: Store, stored) -> FimFormat | None:
    paths = tuple(
        store.blob_path(l.digest)
        for l in stored.manifest.layers
        if l.name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json")
    )
    return _fim_in_blobs(paths) if paths else None


def _draft_spec(store: Store, config: dict) -> ModelSpec | None:
    draft = config.get("draft")
    if not isinstance(draft, dict) or not draft.get("model"):
        return None
    try:
        spec = load_spec(store, ModelName.parse(str(draft["model"])), with_draft=False)
    except (ModelNotFoundError, ValueError):
        log.warning("draft model %s is not in the store: running without it", draft["model"])
        return None
    return spec if spec.kind == "llm" else None


def load_spec(store: Store, name: ModelName, with_draft: bool = True) -> ModelSpec:
    stored = store.get_manifest(name)
    if stored is None:
        raise ModelNotFoundError(name.display_shortest())
    config = stored.read_config() or {}
    model_info = _json_or(_file_layer_text(store, stored, "model_info.json"), {})
    tensors = _json_or(_file_layer_text(store, stored, "gguf_tensors.json"), [])
    tok_cfg = _json_or(_file_layer_text(store, stored, "tokenizer_config.json"), {})
    chat_template = tok_cfg.get("chat_template")
    all_templates = chat_template
    if isinstance(chat_template, list):  # named templates: use the default one
        all_templates = "\n".join(str(t.get("template") or "") for t in chat_template if isinstance(t, dict))
        chat_template = next((t.get("template") for t in chat_template if t.get("name") == "default"), None)
    if not chat_template:  # newer checkpoints keep it in its own file, which transformers reads too
        chat_template = _file_layer_text(store, stored, "chat_template.jinja") or _json_or(
            _file_layer_text(store, stored, "chat_template.json"), {}
        ).get("chat_template")
        all_templates = chat_template
    is_embedding = "embedding" in (config.get("capabilities") or []) or any(
        k.endswith(".pooling_type") for k in model_info
    )
    # A vision model: converted as one (convert/vlm.py marks the config blob) and its config.json's
    # vision_config has a tower in the weights. Text models made from multimodal checkpoints (mlx-lm
    # drops the tower when it loads them) carry neither mark.
    vision_parameters, hf_config = 0, {}
    if not is_embedding and "vision" in (config.get("capabilities") or []):
        hf_config = _json_or(_file_layer_text(store, stored, "config.json"), {})
        hf_config = hf_config if isinstance(hf_config, dict) else {}
        vision_parameters = _vision_parameters(store, stored, hf_config)
    kind = "embedding" if is_embedding else "vision" if vision_parameters else "llm"
    projector = {}
    if kind == "vision":
        preprocessor = _json_or(_file_layer_text(store, stored, "preprocessor_config.json"), {})
        projector = projector_info(hf_config, preprocessor if isinstance(preprocessor, dict) else {}, vision_parameters)
    go_template = stored.read_layer_text(media.TEMPLATE)
    fim = _fim_format(store, stored) if kind == "llm" else None
    derived = False
    if fim is not None and not go_template:
        go_template, derived = fim.go_template, True
    licenses = [store.blob_path(l.digest).read_text(encoding="utf-8") for l in stored.layers_by_type(media.LICENSE)]
    return ModelSpec(
        name=stored.name,
        digest_hex=stored.digest_hex,
        store=store,
        stored=stored,
        config=config,
        kind=kind,
        model_info=model_info,
        tensors=tensors,
        chat_template=chat_template,
        go_template=go_template,
        go_template_derived=derived,
        fim=fim,
        system=stored.read_layer_text(media.SYSTEM),
        params=_json_or(stored.read_layer_text(media.PARAMS), {}),
        messages=_json_or(stored.read_layer_text(media.MESSAGES), []),
        licenses=licenses,
        # transformers renders tools with a named "tool_use" template when there is one
        capabilities=derive_capabilities(kind, all_templates if isinstance(all_templates, str) else None, go_template),
        projector_info=projector,
        modified_at=stored.modified_at,
        size=stored.size,
        draft=_draft_spec(store, config) if with_draft and kind == "llm" else None,
    )
