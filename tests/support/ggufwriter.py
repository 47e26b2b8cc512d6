"""Write a Hugging Face checkpoint (tests/tinyhf.py) as a GGUF the way
llama.cpp's convert_hf_to_gguf.py does for its architecture: tensor names from
gguf-py's own TensorNameMap, Q/K row permutation for llama-style rope, gemma
norms stored as 1 + w, per-architecture metadata keys, phi3 LongRoPE factor
tensors.  Written independently of the importer, from the converter's rules.

``write_gguf`` also returns the weights a llama.cpp run would use, mapped back
to Hugging Face names and layout (dequantized, un-permuted): running the
source model with them is the reference for an exact import."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from .tinyhf import load_hf_weights

GGUF_ARCH = {
    "gemma": "gemma",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
    "ministral3": "mistral3",
    "mixtral": "llama",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "granite": "granite",
    "olmo2": "olmo2",
    "smollm3": "smollm3",
    "starcoder2": "starcoder2",
    "cohere": "command-r",
    "exaone": "exaone",
    "glm4": "glm4",
    "deepseek_v2": "deepseek2",
    "gpt_oss": "gpt-oss",
    "olmoe": "olmoe",
    "cohere2": "cohere2",
    "granitemoe": "granitemoe",
    "phi": "phi2",
    "gpt_bigcode": "starcoder",
    "stablelm": "stablelm",
    "nemotron": "nemotron",
    "internlm2": "internlm2",
    "llama4": "llama4",
    "qwen3_5": "qwen35",
    "qwen3_next": "qwen3next",
}
# Phi2Model and StarCoderModel write their own short key set: no rope base,
# feed_forward_length 4 * n_embd, StarCoder's head_count_kv 1 (multi-query).
_OWN_KEYS = {"phi", "gpt_bigcode"}
# Converter classes derived from LlamaModel (which permutes Q/K rows and writes vocab_size / rope dims).
_LLAMA_FAMILY = {"llama", "mistral", "ministral3", "mixtral", "granite", "granitemoe", "smollm3", "llama4"}
_PERMUTED_ARCHS = {"llama", "mistral3", "granite", "granitemoe", "smollm3", "internlm2"}
_FILE_TYPE = {
    QT.F16: gguf.LlamaFileType.MOSTLY_F16,
    QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    QT.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_S,
    QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
    QT.Q6_K: gguf.LlamaFileType.MOSTLY_Q6_K,
}


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """Rows (n, k*256) -> Q4_K blocks (n, k*144) uint8.  A plain min/max fit
    per 32-element sub-block with 6-bit sub-scales; not llama.cpp's optimised
    search, but a valid Q4_K that gguf-py (which cannot quantize Q4_K) decodes."""
    rows, cols = w.shape
    x = w.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(x.min(-1), 0.0)
    hi = np.maximum(x.max(-1), lo + 1e-8)
    scale, mn = (hi - lo) / 15.0, -lo
    d = (scale.max(-1) / 63.0).astype(np.float16)
    dmin = (mn.max(-1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.clip(np.rint(scale / d32), 1, 63), 0).astype(np.uint8)
        m = np.where(dmin32 > 0, np.clip(np.rint(mn / dmin32), 0, 63), 0).astype(np.uint8)
        step = (d32 * sc)[..., None]
        q = np.where(step > 0, np.rint((x + (dmin32 * m)[..., None]) / step), 0)
    q = np.clip(q, 0, 15).astype(np.uint8)
    n = x.shape[0]
    scales = np.empty((n, 12), np.uint8)
    scales[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)  # chunk c: sub-blocks 2c (low), 2c+1 (high)
    blocks = np.concatenate([d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), scales, qs], 1)
    return blocks.reshape(rows, -1)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """Rows (n, k*256) -> Q6_K blocks (n, k*210) uint8: ggml's block_q6_K (ql: low
    nibbles, qh: high 2 bits, 16 int8 sub-block scales, f16 d), with a plain
    absmax fit per 16-element sub-block (not llama.cpp's search), which gguf-py
    (which cannot quantize Q6_K) decodes."""
    rows, cols = w.shape
    x = w.reshape(-1, 16, 16).astype(np.float32)  # super-blocks of 16 sub-blocks
    sub = np.abs(x).max(-1) / 31.0
    d = (sub.max(-1) / 127.0).astype(np.float16)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.clip(np.rint(sub / d32), 1, 127), 0).astype(np.int8)
        step = (d32 * sc)[..., None]
        q = np.where(step > 0, np.rint(x / step), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # (block, half, quarter j, l)
    ql = np.concatenate([(q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4), (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)], 2)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    n = x.shape[0]
    blocks = [ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d.view(np.uint8).reshape(n, 2)]
    return np.concatenate(blocks, 1).reshape(rows, -1)


def _encode(w: np.ndarray, qtype: QT) -> tuple[np.ndarray, np.ndarray, QT]:
    """(data to write, what llama.cpp decodes it to, the type used); rows are
    the last axis (stacked experts: (experts, out, in))."""
    if qtype == QT.Q4_K and w.shape[-1] % 256:
        qtype = QT.Q5_0  # llama.cpp's fallback when rows do not fill 256-element super-blocks
    if qtype == QT.Q6_K and w.shape[-1] % 256:
        qtype = QT.Q8_0
    if qtype == QT.F16:
        data = w.astype(np.float16)
        return data, data.astype(np.float32), qtype
    rows = w.reshape(-1, w.shape[-1])
    own = {QT.Q4_K: quantize_q4_k, QT.Q6_K: quantize_q6_k}
    data = own[qtype](rows) if qtype in own else gguf.quants.quantize(rows, qtype)
    decoded = gguf.quants.dequantize(data, qtype).astype(np.float32).reshape(w.shape)
    return data.reshape(*w.shape[:-1], -1), decoded, qtype


def _mxfp4_to_gguf(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF MXFP4 (..., n, 16 bytes, low nibble = even element) and E8M0 scales
    (..., n) -> GGUF MXFP4 blocks (..., n * 17): the scale byte, then byte j
    holding element j (low nibble) and j + 16 (high), as GptOssModel repacks."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    return np.concatenate([scales[..., None], qs], axis=-1).reshape(*scales.shape[:-1], -1)


def _gpt_oss_experts(w: gguf.GGUFWriter, names, weights: dict[str, np.ndarray], reference: dict) -> None:
    """GptOssModel's expert and sink tensors, written straight from the MXFP4
    checkpoint (never dequantized); gate/up rows de-interleaved."""
    for name in [k for k in weights if k.endswith("_blocks")]:
        scales_name = name.replace("_blocks", "_scales")
        blocks, scales = weights.pop(name), weights.pop(scales_name)
        reference[name], reference[scales_name] = blocks, scales  # MXFP4 -> MXFP4 is lossless
        base = name.removesuffix("_blocks")
        if base.endswith("gate_up_proj"):
            parts = {"gate_proj": (blocks[:, ::2], scales[:, ::2]), "up_proj": (blocks[:, 1::2], scales[:, 1::2])}
        else:
            parts = {"down_proj": (blocks, scales)}
        for proj, (b, sc) in parts.items():
            hf = f"{base.rsplit('.', 1)[0]}.{proj}.weight"
            w.add_tensor(names.get_name(hf, try_suffixes=(".weight",)), _mxfp4_to_gguf(b, sc), raw_dtype=QT.MXFP4)
    for name in [k for k in weights if k.endswith("_bias") and ".experts." in k]:
        bias = weights.pop(name)
        reference[name] = bias
        base = name.removesuffix("_bias")
        split = (
            {"gate_proj": bias[:, ::2], "up_proj": bias[:, 1::2]}
            if base.endswith("gate_up_proj")
            else {"down_proj": bias}
        )
        for proj, b in split.items():
            hf = f"{base.rsplit('.', 1)[0]}.{proj}.bias"
            w.add_tensor(names.get_name(hf, try_suffixes=(".bias",)), np.ascontiguousarray(b, np.float32))
    for name in [k for k in weights if k.endswith(".sinks")]:
        reference[name] = weights.pop(name)
        w.add_tensor(names.get_name(f"{name}.weight", try_suffixes=(".weight",)), reference[name])


def _llama4_experts(w: gguf.GGUFWriter, names, weights: dict, reference: dict, qtype: QT) -> None:
    """Llama4Model's experts: bare (experts, in, out) tensors transposed to (experts, out, in),
    gate_up_proj split into ffn_gate_exps and ffn_up_exps."""
    for hf_name in [k for k in weights if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        t = weights.pop(hf_name).swapaxes(1, 2)
        base = hf_name.removeprefix("language_model.")
        if base.endswith("gate_up_proj"):
            gate, up = np.split(t, 2, axis=1)
            parts = {base.replace("gate_up_proj", "gate_proj"): gate, base.replace("gate_up_proj", "up_proj"): up}
        else:
            parts = {base: t}
        decoded = []
        for hf_part, part in parts.items():
            data, dec, used = _encode(np.ascontiguousarray(part), qtype)
            w.add_tensor(names.get_name(hf_part + ".weight", try_suffixes=(".weight",)), data,
                         raw_dtype=None if used == QT.F16 else used)  # fmt: skip
            decoded.append(dec)
        reference[hf_name] = np.ascontiguousarray(np.concatenate(decoded, axis=1).swapaxes(1, 2))


def _qwen35_v_tiled(t: np.ndarray, axis: int, cfg: dict, head_dim: int) -> np.ndarray:
    """_LinearAttentionVReorderBase._reorder_v_heads: value heads grouped by key head -> tiled."""
    k_heads, v_heads = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    axis %= t.ndim
    shape = t.shape
    t = t.reshape(*shape[:axis], k_heads, v_heads // k_heads, head_dim, *shape[axis + 1 :])
    return np.ascontiguousarray(np.swapaxes(t, axis, axis + 1).reshape(shape))


# Qwen3NextModel's transforms, by the HF name's ending: what the GGUF holds (in place, under
# the HF name llama.cpp's table maps) and how a decoded tensor maps back.
def _qwen35_tensors(weights: dict[str, np.ndarray], cfg: dict, reorder_v: bool = True) -> None:
    """Qwen3NextModel / _LinearAttentionVReorderBase on the Hugging Face tensors, in place:
    A_log -> -exp(A_log), dt_bias -> dt_proj.bias, conv1d squeezed, zero-centred norms + 1
    (not linear_attn.norm), value heads tiled in in_proj_qkv/z/a/b, A_log, dt_bias, conv1d, out_proj
    (``reorder_v``: Qwen3.5's _LinearAttentionVReorderBase; Qwen3-Next instead splits its fused
    per-key-head in_proj_qkvz into in_proj_qkv (all q, all k, all v) and in_proj_z)."""
    qk = 2 * cfg["linear_num_key_heads"] * cfg["linear_key_head_dim"]
    hv = cfg["linear_value_head_dim"]
    for name in list(weights):
        t = weights.pop(name)
        if name.endswith("in_proj_qkvz.weight"):
            nk, dk = cfg["linear_num_key_heads"], cfg["linear_key_head_dim"]
            vz = cfg["linear_num_value_heads"] // nk * hv
            q, k, v, z = np.split(t.reshape(nk, -1, t.shape[-1]), np.cumsum([dk, dk, vz]), axis=1)
            weights[name.replace("in_proj_qkvz", "in_proj_qkv")] = np.concatenate(
                [x.reshape(-1, t.shape[-1]) for x in (q, k, v)]
            )
            weights[name.replace("in_proj_qkvz", "in_proj_z")] = z.reshape(-1, t.shape[-1])
            continue
        if name.endswith(".A_log"):
            t = -np.exp(t)
        elif name.endswith(".dt_bias"):
            name = name.removesuffix(".dt_bias") + ".dt_proj.bias"
        elif "conv1d" in name:
            t = t.squeeze(1)
        elif name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
            t = t + 1
        if ".linear_attn." in name and reorder_v:
            if ".in_proj_qkv." in name or ".conv1d." in name:
                t = np.concatenate([t[:qk], _qwen35_v_tiled(t[qk:], 0, cfg, hv)])
            elif ".in_proj_z." in name:
                t = _qwen35_v_tiled(t, 0, cfg, hv)
            elif ".in_proj_a." in name or ".in_proj_b." in name or ".A_log" in name or ".dt_proj" in name:
                t = _qwen35_v_tiled(t, 0, cfg, 1)
            elif ".out_proj." in name:
                t = _qwen35_v_tiled(t, 1, cfg, hv)
        weights[name] = np.ascontiguousarray(t, np.float32)


def _qwen35_reference(reference: dict[str, np.ndarray], cfg: dict, reorder_v: bool = True) -> None:
    """What llama.cpp decodes, back in Hugging Face names and layout (the inverse of _qwen35_tensors)."""
    qk = 2 * cfg["linear_num_key_heads"] * cfg["linear_key_head_dim"]
    hv = cfg["linear_value_head_dim"]
    k_heads, v_heads = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    swapped = {**cfg, "linear_num_key_heads": v_heads // k_heads}  # tiled -> grouped is the same swap, transposed

    def grouped(t, axis, head_dim):
        return _qwen35_v_tiled(t, axis, swapped, head_dim)

    for name in [k for k in reference if k.endswith("in_proj_qkv.weight") and not reorder_v]:
        qkv, z = reference.pop(name), reference.pop(name.replace("in_proj_qkv", "in_proj_z"))
        nk = cfg["linear_num_key_heads"]
        q, k, v = np.split(qkv, [qk // 2, qk])
        per_head = [x.reshape(nk, -1, x.shape[-1]) for x in (q, k, v, z)]
        reference[name.replace("in_proj_qkv", "in_proj_qkvz")] = np.concatenate(per_head, axis=1).reshape(
            -1, qkv.shape[-1]
        )
    for name in list(reference):
        t = reference.pop(name)
        if ".linear_attn." in name and reorder_v:
            if ".in_proj_qkv." in name or ".conv1d." in name:
                t = np.concatenate([t[:qk], grouped(t[qk:], 0, hv)])
            elif ".in_proj_z." in name:
                t = grouped(t, 0, hv)
            elif ".in_proj_a." in name or ".in_proj_b." in name or ".A_log" in name or ".dt_proj" in name:
                t = grouped(t, 0, 1)
            elif ".out_proj." in name:
                t = grouped(t, 1, hv)
        if name.endswith(".A_log"):
            t = np.log(-t)
        elif name.endswith(".dt_proj.bias"):
            name = name.removesuffix(".dt_proj.bias") + ".dt_bias"
        elif "conv1d" in name:
            t = t[:, None, :]
        elif name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
            t = t - 1
        reference[name] = t


def _stack_experts(weights: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """llama.cpp's MoE converters stack the per-expert HF tensors
    ("...experts.E.w1.weight") into one (experts, out, in) tensor named as
    the merged HF name ("...experts.w1.weight"): merged -> per-expert names."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in weights:
        parts = name.split(".")
        if "experts" in parts:
            i = parts.index("experts")
            if i + 1 < len(parts) and parts[i + 1].isdigit():
                merged = ".".join(parts[: i + 1] + parts[i + 2 :])
                groups.setdefault(merged, []).append((int(parts[i + 1]), name))
    return {k: [n for _, n in sorted(v)] for k, v in groups.items()}


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # convert_hf_to_gguf LlamaModel.permute: HF rotate-half rows -> interleaved pairs
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gpt2_vocab(
    w: gguf.GGUFWriter, hf_dir: Path, pre: str, *, only_special_added: bool = False
) -> tuple[dict, list[str]]:
    """convert_hf_to_gguf's _set_vocab_gpt2: tokenizer.json's vocabulary and added tokens (or only
    the special ones) in id order, CONTROL for the special added tokens. Returns tokenizer.json's
    content and the token list written."""
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    added = [t for t in tj["added_tokens"] if t.get("special") or not only_special_added]
    vocab.update({t["content"]: t["id"] for t in added})
    tokens = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    special = {t["id"] for t in added if t.get("special")}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    return tj, tokens


def bpe_merges(tj: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]


def _tokenizer_metadata(w: gguf.GGUFWriter, hf_dir: Path, cfg: dict) -> None:
    tj, _ = write_gpt2_vocab(w, hf_dir, "gpt-2", only_special_added=True)
    w.add_token_merges(bpe_merges(tj))
    w.add_eos_token_id(int(cfg["eos_token_id"]))
    tc = json.loads((hf_dir / "tokenizer_config.json").read_text())
    if tc.get("chat_template"):
        w.add_chat_template(tc["chat_template"])


def q4_k_m_type(name: str, n_layer: int) -> QT:
    """llama-quantize's Q4_K_M mix: Q6_K for output.weight and for attn_v / ffn_down
    of the layers its use_more_bits picks (first and last eighth, every third between), Q4_K elsewhere."""
    if name == "output.weight":
        return QT.Q6_K
    parts = name.split(".")
    if parts[0] == "blk" and parts[2] in ("attn_v", "ffn_down"):
        i = int(parts[1])
        if i < n_layer / 8 or i >= 7 * n_layer / 8 or (i - n_layer / 8) % 3 == 2:
            return QT.Q6_K
    return QT.Q4_K


def write_gguf(
    hf_dir: Path,
    path: Path,
    qtype: QT,
    gguf_arch: str | None = None,
    mla_legacy: bool = False,
    mix: bool = False,
) -> dict[str, np.ndarray]:
    """``gguf_arch``: write under another architecture name, e.g. "mistral3"
    for a plain Mistral text model as llama.cpp's newer converter does.
    ``mix``: with ``qtype`` Q4_K, llama-quantize's Q4_K_M mix (``q4_k_m_type``).
    ``mla_legacy``: deepseek2 as converters before 2025 wrote it (kv_b_proj
    whole, MLA head sizes in key_length/value_length), as in Ollama's library."""
    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    mt = cfg["model_type"]
    if mt == "qwen3_5":  # Qwen3_5TextModel: the text config
        cfg = {**cfg["text_config"], "model_type": mt, "eos_token_id": cfg["eos_token_id"]}
    if mt == "llama4":  # Llama4Model: the text config; the dense MLP width is feed_forward_length
        text = cfg["text_config"]
        cfg = {
            **text,
            "model_type": mt,
            "eos_token_id": cfg["eos_token_id"],
            "intermediate_size": text["intermediate_size_mlp"],
            "moe_intermediate_size": text["intermediate_size"],
        }
    arch = gguf_arch or GGUF_ARCH[mt]
    weights = load_hf_weights(hf_dir)
    # exaone: num_layers; gpt_bigcode: GPT-2 style n_* names
    n_layer = cfg.get("num_hidden_layers") or cfg.get("num_layers") or cfg["n_layer"]
    hidden, n_head = cfg.get("hidden_size") or cfg["n_embd"], cfg.get("num_attention_heads") or cfg["n_head"]
    n_kv = 1 if cfg.get("multi_query") else cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim") or hidden // n_head

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {mt}")
    w.add_block_count(n_layer)
    w.add_context_length(cfg.get("max_position_embeddings") or cfg["n_positions"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(4 * hidden if mt in _OWN_KEYS else cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(1 if mt == "deepseek_v2" and not mla_legacy else n_kv)  # MLA as MQA in llama.cpp
    if "rms_norm_eps" in cfg:
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if mt == "exaone":  # ExaoneModel: its RMSNorm epsilon under the rms key, full-head rope
        w.add_layer_norm_rms_eps(cfg["layer_norm_epsilon"])
        w.add_rope_dimension_count(head_dim)
    if mt == "glm4":  # Glm4Model: the rotated part of each head
        w.add_rope_dimension_count(int(head_dim * cfg["partial_rotary_factor"]))
    if mt == "phi":
        w.add_rope_dimension_count(int(cfg["partial_rotary_factor"] * hidden) // n_head)
        w.add_add_bos_token(False)
    if mt == "stablelm":  # StableLMModel: its own key set, no rope base
        w.add_rope_dimension_count(int(cfg["partial_rotary_factor"] * (hidden // n_head)))
        w.add_parallel_residual(cfg.get("use_parallel_residual", True))
    if mt == "nemotron":  # NemotronModel: LayerNorm1P weights stored as 1 + w
        w.add_vocab_size(cfg["vocab_size"])
        w.add_layer_norm_eps(cfg["norm_eps"])
        w.add_rope_dimension_count(int(cfg["partial_rotary_factor"] * hidden) // n_head)
        w.add_rope_scaling_type(gguf.RopeScalingType.NONE)
    for key in ("norm_epsilon", "layer_norm_eps", "layer_norm_epsilon"):  # TextModel: LayerNorm architectures
        if key == "layer_norm_epsilon" and mt == "exaone":
            continue
        if key in cfg:
            w.add_layer_norm_eps(cfg[key])
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_K_M if mix else _FILE_TYPE[qtype]))
    if "head_dim" in cfg and mt != "phi3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta") or rope.get("rope_theta")
    # GemmaModel, Gemma2Model (and _OWN_KEYS) write no freq_base: llama.cpp's 10000 applies
    if theta and mt not in ("gemma", "gemma2", "stablelm", *_OWN_KEYS):
        w.add_rope_freq_base(theta)
    if mt in _LLAMA_FAMILY:
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(head_dim)
    rope_type = rope.get("rope_type") or rope.get("type")
    if rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif rope_type == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        w.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
        w.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])
    n_experts = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
    if n_experts:
        w.add_expert_count(n_experts)
        w.add_expert_used_count(cfg["num_experts_per_tok"])
    if "moe_intermediate_size" in cfg:
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if "shared_expert_intermediate_size" in cfg:
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    if mt in ("granite", "granitemoe"):  # the HF *_multiplier values under llama.cpp's *_scale keys
        w.add_attention_scale(cfg["attention_multiplier"])
        w.add_embedding_scale(cfg["embedding_multiplier"])
        w.add_residual_scale(cfg["residual_multiplier"])
        w.add_logit_scale(cfg["logits_scaling"])
    if mt in ("cohere", "cohere2"):
        w.add_logit_scale(cfg["logit_scale"])
        w.add_rope_scaling_type(gguf.RopeScalingType.NONE)
    if mt == "cohere2":
        w.add_sliding_window(cfg["sliding_window"])
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(int(cfg["rotary_pct"] * (hidden // n_head)))
    if mt == "deepseek_v2":  # DeepseekV2Model: MLA as MQA over the latent, sizes in *_mla
        kv_lora, rope_dims = cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]
        w.add_leading_dense_block_count(cfg["first_k_dense_replace"])
        w.add_vocab_size(cfg["vocab_size"])
        if cfg.get("q_lora_rank"):
            w.add_q_lora_rank(cfg["q_lora_rank"])
        w.add_kv_lora_rank(kv_lora)
        if mla_legacy:
            w.add_key_length(cfg["qk_nope_head_dim"] + rope_dims)
            w.add_value_length(cfg["v_head_dim"])
        else:
            w.add_key_length(kv_lora + rope_dims)
            w.add_value_length(kv_lora)
            w.add_key_length_mla(cfg["qk_nope_head_dim"] + rope_dims)
            w.add_value_length_mla(cfg["v_head_dim"])
        w.add_expert_shared_count(cfg["n_shared_experts"])
        w.add_expert_weights_scale(cfg["routed_scaling_factor"])
        w.add_rope_dimension_count(rope_dims)
        if rope.get("mscale_all_dim"):
            w.add_rope_scaling_yarn_log_mul(0.1 * rope["mscale_all_dim"])
    if mt == "gpt_oss":
        w.add_sliding_window(cfg["sliding_window"])
        w.add_expert_feed_forward_length(cfg["intermediate_size"])
    if mt == "ministral3":
        w.add_rope_scaling_yarn_log_mul(rope["mscale_all_dim"])
        w.add_attn_temperature_scale(rope["llama_4_scaling_beta"])
    if mt == "gemma2":
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
    if mt == "gemma3_text":
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        if cfg.get("sliding_window_pattern") != 1:
            w.add_sliding_window(cfg["sliding_window"])
    if mt == "phi3":
        rope_dims = int(cfg.get("partial_rotary_factor", 1.0) * hidden) // n_head
        orig = cfg["original_max_position_embeddings"]
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_rope_dimension_count(rope_dims)
        w.add_sliding_window(cfg.get("sliding_window") or 0)
        if rope.get("long_factor"):
            scale = cfg["max_position_embeddings"] / orig
            w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(scale) / np.log(orig))))
            w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
            w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))
    _tokenizer_metadata(w, hf_dir, cfg)

    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_enum, n_layer)
    reference: dict[str, np.ndarray] = {}
    if mt == "gpt_oss":
        _gpt_oss_experts(w, names, weights, reference)
    if mt in ("qwen3_5", "qwen3_next"):  # Qwen3NextModel's keys, _Qwen35MRopeMixin's sections
        w.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
        w.add_ssm_state_size(cfg["linear_key_head_dim"])
        w.add_ssm_group_count(cfg["linear_num_key_heads"])
        w.add_ssm_time_step_rank(cfg["linear_num_value_heads"])
        w.add_ssm_inner_size(cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"])
        w.add_full_attention_interval(cfg["full_attention_interval"])
        w.add_rope_dimension_count(int(head_dim * (rope or cfg)["partial_rotary_factor"]))
        if mt == "qwen3_5":
            w.add_rope_dimension_sections([*rope["mrope_section"], 0])
        _qwen35_tensors(weights, cfg, reorder_v=mt == "qwen3_5")
    if mt == "llama4":
        w.add_interleave_moe_layer_step(cfg["interleave_moe_layer_step"])
        _llama4_experts(w, names, weights, reference, qtype)
    # GraniteMoeModel: input_linear rows are [gate; up], written as ffn_gate_exps / ffn_up_exps.
    fused_experts: dict[str, tuple[str, str]] = {}
    for hf_name in [k for k in weights if k.endswith("block_sparse_moe.input_linear.weight")]:
        bid = hf_name.split(".")[2]
        gate, up = np.split(weights.pop(hf_name), 2, axis=1)
        fused_experts[hf_name] = (f"blk.{bid}.ffn_gate_exps.weight", f"blk.{bid}.ffn_up_exps.weight")
        for name, t in zip(fused_experts[hf_name], (gate, up)):
            data, decoded, used = _encode(np.ascontiguousarray(t), qtype)
            w.add_tensor(name, data, raw_dtype=None if used == QT.F16 else used)
            reference[name] = decoded
    for hf_name, (gate, up) in fused_experts.items():
        reference[hf_name] = np.concatenate([reference.pop(gate), reference.pop(up)], axis=1)
    experts = _stack_experts(weights)
    # InternLM2Model splits wqkv (per KV head: its query heads, key, value) into q/k/v, permuted below.
    wqkv_split: dict[str, list[str]] = {}
    for hf_name in [k for k in weights if k.endswith("attention.wqkv.weight")]:
        qkv = weights.pop(hf_name).reshape(n_kv, n_head // n_kv + 2, head_dim, hidden)
        prefix = hf_name.removesuffix("attention.wqkv.weight")
        parts = [f"{prefix}self_attn.{p}_proj.weight" for p in "qkv"]
        for part, rows in zip(parts, (qkv[:, :-2], qkv[:, -2], qkv[:, -1])):
            weights[part] = np.ascontiguousarray(rows.reshape(-1, hidden))
        wqkv_split[hf_name] = parts
    # DeepseekV2Model splits kv_b_proj per head into k_b (transposed) and v_b.
    kv_split: dict[str, tuple[str, str]] = {}
    for hf_name in [k for k in weights if k.endswith("kv_b_proj.weight") and not mla_legacy]:
        nope = cfg["qk_nope_head_dim"]
        kv = weights.pop(hf_name).reshape(n_head, nope + cfg["v_head_dim"], -1)
        kv_split[hf_name] = (hf_name.replace("kv_b_proj", "k_b_proj"), hf_name.replace("kv_b_proj", "v_b_proj"))
        weights[kv_split[hf_name][0]] = np.ascontiguousarray(kv[:, :nope].transpose(0, 2, 1))
        weights[kv_split[hf_name][1]] = np.ascontiguousarray(kv[:, nope:])
    for merged, parts in experts.items():
        weights[merged] = np.stack([weights.pop(p) for p in parts])
    for hf_name, t in weights.items():
        # (Llama4Model, Qwen3_5TextModel drop the multimodal class's "language_model." first)
        name = names.get_name(
            hf_name.removeprefix("language_model.").replace("model.language_model.", "model."),
            try_suffixes=(".weight", ".bias"),
        )
        assert name, hf_name
        # the converter keeps these F32 (command-r+ q/k norms are 2-D; SSM conv kernels)
        if t.ndim == 1 or name.endswith(("_norm.weight", "ssm_conv1d.weight")):
            if mt in ("gemma", "gemma2", "gemma3_text", "nemotron") and hf_name.endswith("norm.weight"):
                w.add_tensor(name, (t + 1).astype(np.float32))
            else:
                w.add_tensor(name, t.astype(np.float32))
            reference[hf_name] = t
            continue
        perm = None
        if arch in _PERMUTED_ARCHS and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = n_head if "q_proj" in hf_name else n_kv
            perm = _llamacpp_permute(np.arange(t.shape[0]), heads)
            t = t[perm]
        if name.endswith("ffn_gate_inp.weight"):
            used = QT.F32  # the converter keeps MoE routers in F32 whatever the output type
            data = decoded = t.astype(np.float32)
        else:
            data, decoded, used = _encode(t, q4_k_m_type(name, n_layer) if mix else qtype)
        w.add_tensor(name, data, raw_dtype=None if used in (QT.F16, QT.F32) else used)
        if perm is not None:
            decoded = decoded[np.argsort(perm)]
        if hf_name in experts:
            reference.update(zip(experts[hf_name], decoded))
        else:
            reference[hf_name] = decoded
    for hf_name, parts in wqkv_split.items():
        q, k, v = (reference.pop(p) for p in parts)
        groups = [q.reshape(n_kv, -1, head_dim, hidden), *(x.reshape(n_kv, 1, head_dim, hidden) for x in (k, v))]
        reference[hf_name] = np.concatenate(groups, axis=1).reshape(-1, hidden)
    if mt in ("qwen3_5", "qwen3_next"):
        _qwen35_reference(reference, cfg, reorder_v=mt == "qwen3_5")
    for hf_name, (k_b, v_b) in kv_split.items():
        joined = np.concatenate([reference.pop(k_b).transpose(0, 2, 1), reference.pop(v_b)], axis=1)
        reference[hf_name] = joined.reshape(-1, cfg["kv_lora_rank"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def write_ollama_gptoss(hf_dir: Path, path: Path, qtype: QT, fused_qkv: bool = False) -> dict[str, np.ndarray]:
    """gpt-oss as Ollama's own converter (convert_gptoss.go) writes it for its
    library: architecture "gptoss", its tensor names (attn_out, ffn_norm,
    sinks without ".weight", gate/up experts fused and interleaved), MXFP4
    blocks as OpenAI stores them (scale byte, then 16 bytes with element 2k in
    the low nibble of byte k), yarn given only by factor and original context.
    ``fused_qkv``: the original-checkpoint flavour, q/k/v rows in one attn_qkv."""
    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    weights = load_hf_weights(hf_dir)
    n_head, n_kv, head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    rope = cfg["rope_scaling"]
    w = gguf.GGUFWriter(str(path), "gptoss")
    w.add_name("tiny gpt-oss")
    w.add_file_type(4)  # Ollama's MXFP4 file type
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_expert_count(cfg["num_local_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    _tokenizer_metadata(w, hf_dir, cfg)

    renames = [
        ("lm_head", "output"),
        ("model.embed_tokens", "token_embd"),
        ("model.layers", "blk"),
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_out"),
        ("self_attn.sinks", "attn_sinks"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.router", "ffn_gate_inp"),
        ("mlp.experts.gate_up_proj_", "ffn_gate_up_exps."),
        ("mlp.experts.down_proj_", "ffn_down_exps."),
        ("model.norm", "output_norm"),
    ]

    def rename(hf_name: str) -> str:
        for a, b in renames:
            hf_name = hf_name.replace(a, b)
        return hf_name

    reference: dict[str, np.ndarray] = {}
    for name in [k for k in weights if k.endswith("_blocks")]:
        scales_name = name.replace("_blocks", "_scales")
        blocks, scales = weights.pop(name), weights.pop(scales_name)
        reference[name], reference[scales_name] = blocks, scales  # lossless
        data = np.concatenate([scales[..., None], blocks], axis=-1).reshape(*scales.shape[:-1], -1)
        w.add_tensor(rename(name).removesuffix(".blocks") + ".weight", data, raw_dtype=QT.MXFP4)
    if fused_qkv:
        for q_name in [k for k in weights if k.endswith("self_attn.q_proj.weight") or k.endswith("q_proj.bias")]:
            parts = [q_name.replace("q_proj", p) for p in ("q_proj", "k_proj", "v_proj")]
            weights[q_name.replace("q_proj", "qkv_proj")] = np.concatenate([weights.pop(p) for p in parts])
            reference.update({p: None for p in parts})  # filled from the fused rows below
    for hf_name, t in weights.items():
        name = rename(hf_name).replace("self_attn.qkv_proj", "attn_qkv")
        if t.ndim == 1 or ".bias" in name or name.endswith("_bias") or "ffn_gate_inp" in name:
            data = decoded = t.astype(np.float32)
            w.add_tensor(name.replace("_exps.bias", "_exps.bias"), data)
        else:
            data, decoded, used = _encode(t, qtype)
            w.add_tensor(name, data, raw_dtype=None if used == QT.F16 else used)
        if "qkv_proj" in hf_name:
            q, kv = n_head * head_dim, n_kv * head_dim
            for p, rows in (("q_proj", slice(0, q)), ("k_proj", slice(q, q + kv)), ("v_proj", slice(q + kv, None))):
                reference[hf_name.replace("qkv_proj", p)] = decoded[rows]
        else:
            reference[hf_name] = decoded
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference
