"""A tiny vision-language model (tests/support/tinyvlm.py, built with mlx-vlm's own classes) written as
the Ollama registry and llama.cpp ship one, from each converter's rules, independently of the importer:

* `write_llamacpp`: convert_hf_to_gguf.py's two outputs — the text model (Gemma3Model: architecture
  `gemma3`, norms stored as 1 + w; Qwen2VLModel: architecture `qwen2vl` with rope.dimension_sections)
  and the mmproj GGUF of its MmprojModel subclass (Gemma3VisionModel / Qwen2VLVisionModel): architecture
  `clip`, general.type `mmproj`, clip.vision.* keys, tensor names from gguf-py's MMPROJ table, the
  soft embedding norm stored as 1 + w, Qwen's fused qkv split into q/k/v and its Conv3d patch kernel
  into two Conv2d kernels (`v.patch_embd.weight`, `v.patch_embd.weight.1`), 1-D tensors and the SigLIP
  embeddings in F32, the gemma3 input projection in F16;
* `write_ollama_gemma3`: one GGUF as Ollama's convert_gemma3.go writes the library's gemma3 tags — the
  text model and, in the same file, the tower under its replacer's names (`v.patch_embedding`,
  `v.blk.N.layer_norm1`, `v.blk.N.mlp.fc1`, `mm.mm_input_projection.weight`), keys `gemma3.vision.*`
  and `gemma3.mm.tokens_per_image`, and without the keys that converter leaves out for multimodal
  checkpoints (rope.freq_base, the RMS epsilon). The sliding window pattern, which it also leaves out
  (gemma3's period 6 then applies), is written as its text-only branch spells it: the tiny model has
  two layers, and mlx-vlm's gemma3 indexes the sixth layer's cache;
* `write_ollama_qwen25vl`: convert_qwen25vl.go's one file (architecture `qwen25vl`, keys
  `qwen25vl.vision.*` with no feed-forward width, qkv split into `attn_q/k/v`, the patch kernel into
  `v.patch_embd_0/1` with its unit dimension dropped, `v.blk.N.ln1`, `v.merger.mlp.0`).

The Hugging Face layout is read back from the mlx-vlm folder (its convolution kernels are stored
channels-last; Hugging Face's are channels-first).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from .ggufwriter import _encode, bpe_merges, write_gpt2_vocab

_FILE_TYPE = {
    QT.F16: gguf.LlamaFileType.MOSTLY_F16,
    QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    QT.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_M,
}


def hf_weights(folder: Path) -> dict[str, np.ndarray]:
    """The tiny model's weights under Hugging Face's names and layout (as float arrays)."""
    import mlx.core as mx

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        for name, a in mx.load(str(f)).items():
            w = np.array(a.astype(mx.float32)).astype(np.float16 if a.dtype == mx.float16 else np.float32)
            if name.endswith(("patch_embedding.weight", "patch_conv.weight")) and w.ndim == 4:
                w = w.transpose(0, 3, 1, 2)  # (out, h, w, in) -> (out, in, h, w)
            if name.endswith("patch_embed.proj.weight") and w.ndim == 5:
                w = w.transpose(0, 4, 1, 2, 3)  # (out, t, h, w, in) -> (out, in, t, h, w)
            out[name] = np.ascontiguousarray(w)
    return out


def _tokenizer(w: gguf.GGUFWriter, folder: Path, eos: int, bos: int | None, pad: int | None) -> None:
    """The vocabulary as convert_hf_to_gguf's _set_vocab_gpt2 writes a byte-level BPE one."""
    tj, _ = write_gpt2_vocab(w, folder, "gpt-2", only_special_added=True)
    w.add_token_merges(bpe_merges(tj))
    w.add_eos_token_id(eos)
    if bos is not None:
        w.add_bos_token_id(bos)
    if pad is not None:
        w.add_pad_token_id(pad)
    w.add_add_bos_token(False)  # the family's chat template writes its BOS itself
    template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    if template:
        w.add_chat_template(template)


def _add(w: gguf.GGUFWriter, name: str, t: np.ndarray, qtype: QT, *, keep_f32: bool = False) -> None:
    if t.ndim == 1 or keep_f32:
        w.add_tensor(name, t.astype(np.float32))
    elif qtype == QT.F16 or t.ndim > 2:
        w.add_tensor(name, t.astype(np.float16))
    else:
        data, _, used = _encode(t.astype(np.float32), qtype)
        w.add_tensor(name, data, raw_dtype=None if used == QT.F16 else used)


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _text(w: gguf.GGUFWriter, folder: Path, weights: dict, qtype: QT, *, ollama: bool = False) -> None:
    """The text model's keys and tensors (Gemma3Model / Qwen2VLModel, or Ollama's gemma3 KV)."""
    cfg = json.loads((folder / "config.json").read_text())
    family = cfg["model_type"]
    text = cfg.get("text_config") or cfg
    if family == "qwen2_5_vl":
        text = cfg
    arch = "gemma3" if family == "gemma3" else "qwen2vl"
    n_layer, hidden, n_head = text["num_hidden_layers"], text["hidden_size"], text["num_attention_heads"]
    w.add_name(f"tiny {family}")
    w.add_block_count(n_layer)
    w.add_context_length(text["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(text["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(text["num_key_value_heads"])
    w.add_file_type(int(_FILE_TYPE[qtype]))
    if family == "gemma3":
        head_dim = text["head_dim"]
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(text["sliding_window"])
        if not ollama:  # Gemma3Model writes these; Ollama's converter not for a multimodal checkpoint
            w.add_layer_norm_rms_eps(text["rms_norm_eps"])
            w.add_rope_freq_base(text.get("rope_global_base_freq", 1_000_000.0))
        period = text["sliding_window_pattern"]  # per layer: is it a sliding-window layer
        w.add_array(f"{arch}.attention.sliding_window_pattern", [(i + 1) % period != 0 for i in range(n_layer)])
        ids = {k: cfg[k] for k in ("pad_token_id",)}
        eos = cfg["eos_token_id"][0] if isinstance(cfg["eos_token_id"], list) else cfg["eos_token_id"]
        gen = json.loads((folder / "generation_config.json").read_text())
        _tokenizer(w, folder, eos, gen.get("bos_token_id"), ids["pad_token_id"])
    else:
        w.add_layer_norm_rms_eps(text["rms_norm_eps"])
        w.add_rope_freq_base(text["rope_theta"])
        if not ollama:  # Qwen2VLModel; Ollama's qwen25vl engine has the sections built in
            sections = list(text["rope_scaling"]["mrope_section"])
            w.add_rope_dimension_sections(sections + [0] * (4 - len(sections)))
        eos = cfg["eos_token_id"][0] if isinstance(cfg["eos_token_id"], list) else cfg["eos_token_id"]
        _tokenizer(w, folder, eos, None, None)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3 if arch == "gemma3" else gguf.MODEL_ARCH.QWEN2VL, n_layer)
    for hf_name, t in weights.items():
        if not hf_name.startswith("language_model."):
            continue
        if family == "gemma3" and hf_name.endswith("lm_head.weight"):
            continue  # gemma3 ties its output to the embedding (mlx-vlm fills lm_head from it)
        name = names.get_name(hf_name.removeprefix("language_model."), try_suffixes=(".weight", ".bias"))
        assert name, hf_name
        if family == "gemma3" and hf_name.endswith("norm.weight"):
            t = t.astype(np.float32) + 1  # Gemma3Model.norm_shift
        # Q4_K_M: the (tied) embedding one step up, Q6_K, as llama-quantize's mix writes it
        _add(w, name, t, QT.Q6_K if qtype == QT.Q4_K and name == "token_embd.weight" else qtype)


def write_llamacpp(folder: Path, text_path: Path, mmproj_path: Path, qtype: QT = QT.F16) -> None:
    """convert_hf_to_gguf.py's text GGUF and `--mmproj` GGUF of the tiny model."""
    folder = Path(folder)
    weights = hf_weights(folder)
    cfg = json.loads((folder / "config.json").read_text())
    family = cfg["model_type"]
    w = gguf.GGUFWriter(str(text_path), "gemma3" if family == "gemma3" else "qwen2vl")
    _text(w, folder, weights, qtype)
    _finish(w)

    vision = cfg["vision_config"]
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    text = cfg.get("text_config") if family == "gemma3" else cfg
    m = gguf.GGUFWriter(str(mmproj_path), "clip")
    m.add_type(gguf.GGUFType.MMPROJ)
    m.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    m.add_clip_has_vision_encoder(True)
    m.add_vision_projection_dim(text["hidden_size"])
    depth = vision.get("num_hidden_layers") or vision["depth"]
    m.add_vision_patch_size(vision["patch_size"])
    m.add_vision_embedding_length(vision["hidden_size"])
    m.add_vision_feed_forward_length(vision["intermediate_size"])
    m.add_vision_block_count(depth)
    m.add_vision_head_count(vision.get("num_attention_heads") or vision["num_heads"])
    m.add_vision_image_mean(pre["image_mean"])
    m.add_vision_image_std(pre["image_std"])
    # the converter's block count for the MMPROJ table is the tower's depth; Qwen's merger writes mm.2,
    # which the table only spells for three blocks or more
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(depth, 3))
    if family == "gemma3":
        m.add_vision_image_size(vision["image_size"])
        m.add_clip_projector_type(gguf.VisionProjectorType.GEMMA3)
        m.add_vision_attention_layernorm_eps(vision.get("layer_norm_eps", 1e-6))
        m.add_vision_use_gelu(True)
        # Gemma3VisionModel: the pooling factor from image_seq_length (HF's preprocessor_config carries
        # it; the tiny model's processor_config does), written when it is not the default 4
        tokens = json.loads((folder / "processor_config.json").read_text())["image_seq_length"]
        factor = (vision["image_size"] // vision["patch_size"]) // int(round(tokens**0.5))
        if factor > 0 and factor != 4:
            m.add_vision_projector_scale_factor(factor)
        for hf_name, t in weights.items():
            if hf_name.startswith("language_model."):
                continue
            hf_name = hf_name.replace("_weight", ".weight")
            name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            assert name, hf_name
            if "soft_emb_norm.weight" in hf_name:
                t = t.astype(np.float32) + 1
            if "input_projection" in hf_name:
                m.add_tensor(name, t.astype(np.float16))
            else:
                _add(m, name, t, QT.F16, keep_f32=".embeddings." in hf_name)
    else:
        m.add_vision_image_size(vision.get("image_size", 560))
        m.add_clip_projector_type(gguf.VisionProjectorType.QWEN25VL)
        m.add_vision_use_silu(True)
        full = vision["fullatt_block_indexes"]
        m.add_vision_n_wa_pattern(full[0] + 1)
        m.add_vision_attention_layernorm_eps(cfg.get("rms_norm_eps", 1e-6))
        for hf_name, t in weights.items():
            if hf_name.startswith("language_model."):
                continue
            hf_name = hf_name.replace("vision_tower.", "visual.", 1)
            if ".attn.qkv." in hf_name:
                for part, rows in zip("qkv", np.split(t, 3, axis=0)):
                    name = table.get_name(hf_name.replace(".qkv.", f".{part}."), try_suffixes=(".weight", ".bias"))
                    _add(m, name, rows, QT.F16)
                continue
            if hf_name.endswith("patch_embed.proj.weight"):
                m.add_tensor("v.patch_embd.weight", t[:, :, 0].astype(np.float16))
                m.add_tensor("v.patch_embd.weight.1", t[:, :, 1].astype(np.float16))
                continue
            name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            assert name, hf_name
            _add(m, name, t, QT.F16)
    _finish(m)


# Ollama's convert_gemma3.go replacer, as it renames the tower (its last rules: the projector)
_OLLAMA_GEMMA3 = [
    ("vision_tower.vision_model.embeddings", "v"),
    ("vision_tower.vision_model", "v"),
    ("encoder.layers", "blk"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.out_proj", "attn_output"),
    ("input_projection_weight", "input_projection.weight"),
    ("multi_modal_projector", "mm"),
]


def write_ollama_gemma3(folder: Path, path: Path, qtype: QT = QT.F16) -> None:
    """The tiny gemma3 as one multimodal GGUF, the way the Ollama library's gemma3 tags are written."""
    folder = Path(folder)
    weights = hf_weights(folder)
    cfg = json.loads((folder / "config.json").read_text())
    vision = cfg["vision_config"]
    w = gguf.GGUFWriter(str(path), "gemma3")
    _text(w, folder, weights, qtype, ollama=True)
    w.add_uint32("gemma3.vision.block_count", vision["num_hidden_layers"])
    w.add_uint32("gemma3.vision.embedding_length", vision["hidden_size"])
    w.add_uint32("gemma3.vision.feed_forward_length", vision["intermediate_size"])
    w.add_uint32("gemma3.vision.image_size", vision["image_size"])
    w.add_uint32("gemma3.vision.patch_size", vision["patch_size"])
    w.add_uint32("gemma3.vision.num_channels", 3)
    w.add_uint32("gemma3.vision.attention.head_count", vision["num_attention_heads"])
    w.add_float32("gemma3.vision.attention.layer_norm_epsilon", vision.get("layer_norm_eps", 1e-6))
    w.add_uint32("gemma3.mm.tokens_per_image", cfg["mm_tokens_per_image"])
    for hf_name, t in weights.items():
        if hf_name.startswith("language_model."):
            continue
        name = hf_name
        for old, new in _OLLAMA_GEMMA3:
            name = name.replace(old, new)
        if name.endswith("_norm.weight"):  # gemmaModel.Tensors: 1 + w for every *_norm.weight
            t = t.astype(np.float32) + 1
        _add(w, name, t, QT.F16)  # the library's quantized tags keep the tower in F16
    _finish(w)


# convert_qwen25vl.go's replacer for the tower (with qwen2's rules for the MLP)
_OLLAMA_QWEN25VL = [
    ("vision_tower", "v"),
    ("blocks", "blk"),
    ("attn.proj", "attn_out"),
    ("norm1", "ln1"),
    ("norm2", "ln2"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
]


def write_ollama_qwen25vl(folder: Path, path: Path, qtype: QT = QT.F16) -> None:
    """The tiny qwen2.5-vl as one multimodal GGUF, the way the Ollama library's qwen2.5vl tags are written."""
    folder = Path(folder)
    weights = hf_weights(folder)
    cfg = json.loads((folder / "config.json").read_text())
    vision = cfg["vision_config"]
    w = gguf.GGUFWriter(str(path), "qwen25vl")
    _text(w, folder, weights, qtype, ollama=True)
    w.add_uint32("qwen25vl.vision.block_count", vision["depth"])
    w.add_uint32("qwen25vl.vision.embedding_length", vision["hidden_size"])
    w.add_uint32("qwen25vl.vision.attention.head_count", vision["num_heads"])
    w.add_uint32("qwen25vl.vision.num_channels", vision.get("in_channels", 3))
    w.add_uint32("qwen25vl.vision.patch_size", vision["patch_size"])
    w.add_uint32("qwen25vl.vision.spatial_merge_size", vision["spatial_merge_size"])
    w.add_uint32("qwen25vl.vision.spatial_patch_size", vision["spatial_patch_size"])
    w.add_uint32("qwen25vl.vision.window_size", vision["window_size"])
    w.add_float32("qwen25vl.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_float32("qwen25vl.vision.rope.freq_base", 10000.0)
    w.add_array("qwen25vl.vision.fullatt_block_indexes", list(vision["fullatt_block_indexes"]))
    w.add_uint32("qwen25vl.vision.temporal_patch_size", vision["temporal_patch_size"])
    for hf_name, t in weights.items():
        if hf_name.startswith("language_model."):
            continue
        name = hf_name
        for old, new in _OLLAMA_QWEN25VL:
            name = name.replace(old, new)
        if ".attn.qkv." in name:
            for part, rows in zip("qkv", np.split(t, 3, axis=0)):
                _add(w, name.replace("attn.qkv", f"attn_{part}"), rows, QT.F16)
            continue
        if name.endswith("patch_embed.proj.weight"):
            for i in range(2):  # splitDim over the frames, then the unit dimension dropped
                w.add_tensor(f"v.patch_embd_{i}.weight", np.ascontiguousarray(t[:, :, i]).astype(np.float16))
            continue
        _add(w, name, t, QT.F16)  # the library's quantized tags keep the tower in F16
    _finish(w)


# convert_mistral.go's replacer (mistral3Model), as it renames the tower and projector
_OLLAMA_MISTRAL3 = [
    ("transformer.layers", "blk"),
    ("vision_tower", "v"),
    ("ln_pre", "encoder_norm"),
    ("attention.q_proj", "attn_q"),
    ("attention.k_proj", "attn_k"),
    ("attention.v_proj", "attn_v"),
    ("attention.o_proj", "attn_output"),
    ("attention_norm", "attn_norm"),
    ("feed_forward.gate_proj", "ffn_gate"),
    ("feed_forward.down_proj", "ffn_down"),
    ("feed_forward.up_proj", "ffn_up"),
    ("multi_modal_projector", "mm"),
]


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # Ollama's mistral3Model.repack, the same as llama.cpp's LlamaModel.permute of q/k rows
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_ollama_mistral3(folder: Path, path: Path, qtype: QT = QT.F16) -> None:
    """The tiny mistral3 as one multimodal GGUF, the way the Ollama library's mistral-small3.x tags are
    written: text keys as mistral3Model.KV sets them (rope.dimension_count included, as it computes it),
    the text q/k rows permuted, the Pixtral tower and projector under its replacer's names."""
    folder = Path(folder)
    weights = hf_weights(folder)
    cfg = json.loads((folder / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    n_layer, hidden, n_head = text["num_hidden_layers"], text["hidden_size"], text["num_attention_heads"]
    n_kv = text["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "mistral3")
    w.add_name("tiny mistral3")
    w.add_vocab_size(text["vocab_size"])
    w.add_block_count(n_layer)
    w.add_context_length(text["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(text["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(text["rms_norm_eps"])
    w.add_key_length(text["head_dim"])
    w.add_value_length(text["head_dim"])
    w.add_rope_dimension_count(hidden // n_layer)
    w.add_rope_freq_base(text["rope_theta"])
    w.add_file_type(int(_FILE_TYPE[qtype]))
    w.add_uint32("mistral3.vision.block_count", vision["num_hidden_layers"])
    w.add_uint32("mistral3.vision.embedding_length", vision["hidden_size"])
    w.add_uint32("mistral3.vision.feed_forward_length", vision["intermediate_size"])
    w.add_uint32("mistral3.vision.attention.head_count", vision["num_attention_heads"])
    w.add_uint32("mistral3.vision.attention.key_length", vision["head_dim"])
    w.add_uint32("mistral3.vision.image_size", vision["image_size"])
    w.add_uint32("mistral3.vision.patch_size", vision["patch_size"])
    w.add_uint32("mistral3.vision.num_channels", 3)
    w.add_float32("mistral3.vision.rope.freq_base", vision["rope_theta"])
    w.add_uint32("mistral3.image_token_index", cfg["image_token_index"])
    w.add_uint32("mistral3.spatial_merge_size", cfg["spatial_merge_size"])
    w.add_bool("mistral3.mm.projector_bias", cfg["multimodal_projector_bias"])
    w.add_string("mistral3.mm.projector_hidden_act", cfg["projector_hidden_act"])
    gen = json.loads((folder / "generation_config.json").read_text())
    eos = cfg["eos_token_id"][0] if isinstance(cfg["eos_token_id"], list) else cfg["eos_token_id"]
    _tokenizer(w, folder, eos, gen.get("bos_token_id"), None)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    for hf_name, t in weights.items():
        if hf_name.startswith("language_model."):
            name = names.get_name(hf_name.removeprefix("language_model."), try_suffixes=(".weight", ".bias"))
            assert name, hf_name
            if name.endswith(("attn_q.weight", "attn_k.weight")):
                t = _llamacpp_permute(t, n_head if "attn_q" in name else n_kv)
            _add(w, name, t, qtype)
            continue
        name = hf_name.replace("vision_tower.vision_model.", "vision_tower.")  # HF's names, not mlx-vlm's
        for old, new in _OLLAMA_MISTRAL3:
            name = name.replace(old, new)
        _add(w, name, t, QT.F16)
    _finish(w)
