"""Tiny EmbeddingGemma and ModernBERT sentence-transformers folders with random weights
(numpy, no torch), the GGUFs llama.cpp's and Ollama's converters write of the former, and
float64 numpy forwards of both written from transformers' modeling code (Gemma3TextModel
with use_bidirectional_attention, ModernBertModel) plus the sentence-transformers modules
(Pooling -> Dense -> Normalize). Torch and sentence-transformers are not installed here,
so these forwards are the reference; they share no code with the importer or the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType as QT
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .ggufwriter import bpe_merges, write_gpt2_vocab
from .tinybert import build_wordpiece_tokenizer

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0..3
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Why is the sky blue? Paris is the capital of France.",
    "Hello world! 12345 67890. Ünïcödé text, emoji 🙂 and CJK 你好 in one line.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "task: search result | query: what is an embedding? title: none | text: a vector",
] * 10


def build_gemma_tokenizer(out: Path) -> Tokenizer:
    """A byte-level BPE over Gemma's special ids, saved without a post-processor: Gemma's fast
    tokenizer adds <bos> / <eos> from tokenizer_config.json's add_bos_token / add_eos_token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=GEMMA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GemmaTokenizer",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": True,
                "model_max_length": 2048,
            }
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})
    )
    return tok


def gemma_ids(hf_dir: Path, text: str, max_length: int | None = None) -> list[int]:
    """What Gemma's HF tokenizer gives sentence-transformers: <bos> text <eos>, truncated with
    the specials kept."""
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    body = tok.encode(text, add_special_tokens=False).ids
    if max_length is not None:
        body = body[: max_length - 2]
    return [2, *body, 1]


def _st_modules(out: Path, pooling: str, dense: list[tuple[int, int]], normalize: bool) -> list[dict]:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    for i, _ in enumerate(dense):
        modules.append(
            {"idx": 2 + i, "name": str(2 + i), "path": f"{2 + i}_Dense", "type": "sentence_transformers.models.Dense"}
        )
    if normalize:
        n = 2 + len(dense)
        modules.append(
            {"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 0,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": False,
                "include_prompt": True,
            }
        )
    )
    return modules


def build_gemma_embedding(
    out: Path, *, seed: int = 0, hidden: int = 64, layers: int = 6, window: int = 8, dense_bias: bool = False
) -> Path:
    """An EmbeddingGemma-shaped sentence-transformers folder: Gemma3TextModel (bidirectional,
    5 sliding layers then 1 global, the stored window ``window`` = a band of window // 2 each
    side), mean pooling, Dense hidden -> 4*hidden -> hidden (identity), Normalize; prompts in
    config_sentence_transformers.json as the real one has them."""
    tok = build_gemma_tokenizer(out)
    vocab = tok.get_vocab_size()
    heads, kv_heads, head_dim, inner = 2, 1, 32, 96
    config = {
        "architectures": ["Gemma3TextModel"],
        "model_type": "gemma3_text",
        "attention_bias": False,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": hidden,
        "intermediate_size": inner,
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
        "max_position_embeddings": 2048,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": 1e-6,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": window,
        "use_bidirectional_attention": True,
        "vocab_size": vocab,
        "torch_dtype": "float32",
    }
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {"embed_tokens.weight": rng.normal(0, 1.0 / math.sqrt(hidden), (vocab, hidden))}
    for i in range(layers):
        p = f"layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rng.normal(0, 1 / math.sqrt(hidden), (heads * head_dim, hidden))
        w[p + "self_attn.k_proj.weight"] = rng.normal(0, 1 / math.sqrt(hidden), (kv_heads * head_dim, hidden))
        w[p + "self_attn.v_proj.weight"] = rng.normal(0, 1 / math.sqrt(hidden), (kv_heads * head_dim, hidden))
        w[p + "self_attn.o_proj.weight"] = rng.normal(0, 1 / math.sqrt(heads * head_dim), (hidden, heads * head_dim))
        w[p + "self_attn.q_norm.weight"] = rng.uniform(-0.3, 0.3, head_dim)
        w[p + "self_attn.k_norm.weight"] = rng.uniform(-0.3, 0.3, head_dim)
        w[p + "mlp.gate_proj.weight"] = rng.normal(0, 1 / math.sqrt(hidden), (inner, hidden))
        w[p + "mlp.up_proj.weight"] = rng.normal(0, 1 / math.sqrt(hidden), (inner, hidden))
        w[p + "mlp.down_proj.weight"] = rng.normal(0, 1 / math.sqrt(inner), (hidden, inner))
        for n in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            w[p + n + ".weight"] = rng.uniform(-0.3, 0.3, hidden)
    w["norm.weight"] = rng.uniform(-0.3, 0.3, hidden)
    mx.save_safetensors(
        str(out / "model.safetensors"),
        {k: mx.array(v.astype(np.float32)) for k, v in w.items()},
        metadata={"format": "pt"},
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    dense = [(hidden, 4 * hidden), (4 * hidden, hidden)]
    _st_modules(out, "mean", dense, normalize=True)
    for i, (d_in, d_out) in enumerate(dense):
        d = out / f"{2 + i}_Dense"
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(
            json.dumps(
                {
                    "in_features": d_in,
                    "out_features": d_out,
                    "bias": dense_bias,
                    "activation_function": "torch.nn.modules.linear.Identity",
                }
            )
        )
        tensors = {"linear.weight": mx.array(rng.normal(0, 1 / math.sqrt(d_in), (d_out, d_in)).astype(np.float32))}
        if dense_bias:
            tensors["linear.bias"] = mx.array(rng.uniform(-0.2, 0.2, d_out).astype(np.float32))
        mx.save_safetensors(str(d / "model.safetensors"), tensors, metadata={"format": "pt"})
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (out / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "model_type": "SentenceTransformer",
                "prompts": {"query": "task: search result | query: ", "document": "title: none | text: "},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            }
        )
    )
    return out


def _load_float64(path: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v.astype(mx.float32), np.float64) for k, v in mx.load(str(path)).items()}


def _rope_tables(t: int, d: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(t)[:, None] * inv[None]
    return np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:  # x (heads, t, d), rotate-half
    d = x.shape[-1]
    return x * cos + np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1) * sin


def _softmax_attend(q, k, v, scale, allowed):
    s = q @ k.transpose(0, 2, 1) * scale
    s = np.where(allowed[None], s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def gemma_reference(hf_dir: Path, ids: list[int]) -> np.ndarray:
    """sentence-transformers' EmbeddingGemma vector (normalised) for one token sequence:
    Gemma3TextModel with bidirectional masks (sliding layers: |i - j| < sliding_window // 2 + 1,
    transformers' reading of the stored window), mean pooling, the Dense heads, Normalize."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    w = _load_float64(hf_dir / "model.safetensors")
    h, n_head, n_kv, d = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    t = len(ids)

    def rms(x, weight):  # Gemma3RMSNorm: x / rms * (1 + w)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + weight)

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    pos = np.arange(t)
    exclusive = cfg["sliding_window"] // 2 + 1  # Gemma3TextConfig.__post_init__ for bidirectional models
    band = np.abs(pos[:, None] - pos[None, :]) < exclusive
    full = np.ones((t, t), bool)
    x = w["embed_tokens.weight"][ids] * np.float32(math.sqrt(h))
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        is_global = cfg["layer_types"][i] == "full_attention"
        cos, sin = _rope_tables(t, d, cfg["rope_theta"] if is_global else cfg["rope_local_base_freq"])
        a = rms(x, w[p + "input_layernorm.weight"])
        q = (a @ w[p + "self_attn.q_proj.weight"].T).reshape(t, n_head, d).transpose(1, 0, 2)
        k = (a @ w[p + "self_attn.k_proj.weight"].T).reshape(t, n_kv, d).transpose(1, 0, 2)
        v = (a @ w[p + "self_attn.v_proj.weight"].T).reshape(t, n_kv, d).transpose(1, 0, 2)
        q = _rope(rms(q, w[p + "self_attn.q_norm.weight"]), cos, sin)
        k = _rope(rms(k, w[p + "self_attn.k_norm.weight"]), cos, sin)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)
        o = _softmax_attend(q, k, v, cfg["query_pre_attn_scalar"] ** -0.5, full if is_global else band)
        o = o.transpose(1, 0, 2).reshape(t, n_head * d) @ w[p + "self_attn.o_proj.weight"].T
        x = x + rms(o, w[p + "post_attention_layernorm.weight"])
        m = rms(x, w[p + "pre_feedforward_layernorm.weight"])
        m = (gelu_tanh(m @ w[p + "mlp.gate_proj.weight"].T) * (m @ w[p + "mlp.up_proj.weight"].T)) @ w[
            p + "mlp.down_proj.weight"
        ].T
        x = x + rms(m, w[p + "post_feedforward_layernorm.weight"])
    x = rms(x, w["norm.weight"])
    vec = x.mean(0)
    for module in json.loads((hf_dir / "modules.json").read_text()):
        if module["type"].endswith(".Dense"):
            dw = _load_float64(hf_dir / module["path"] / "model.safetensors")
            vec = vec @ dw["linear.weight"].T + dw.get("linear.bias", 0.0)
    return vec / np.linalg.norm(vec)


def write_gemma_gguf(hf_dir: Path, path: Path, qtype: QT = QT.F16, *, ollama: bool = False) -> Path:
    """``hf_dir`` as a GGUF. Default: llama.cpp's EmbeddingGemma converter (arch gemma-embedding,
    norms + 1, dense_2 / dense_3 weights with their feat sizes, the original sliding window,
    pooling_type from the Pooling module; this vocabulary has no tokenizer.model, so it is
    written the way its _set_vocab_gpt2 does). ``ollama``: Ollama's spelling (arch gemma3 with
    a pooling type, dense.0 / dense.1, the layer pattern as one bool per layer)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch_enum = gguf.MODEL_ARCH.GEMMA3 if ollama else gguf.MODEL_ARCH.GEMMA_EMBEDDING
    arch = gguf.MODEL_ARCH_NAMES[arch_enum]
    layers = cfg["num_hidden_layers"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny embeddinggemma")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_file_type(int({QT.F16: gguf.LlamaFileType.MOSTLY_F16, QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]))
    w.add_pooling_type(gguf.PoolingType.MEAN)
    if ollama:
        w.add_float32(f"{arch}.rope.local.freq_base", cfg["rope_local_base_freq"])
        w.add_array(f"{arch}.attention.sliding_window_pattern", [t == "sliding_attention" for t in cfg["layer_types"]])
    # vocabulary: _set_vocab_gpt2 + SpecialVocab (add_bos / add_eos from tokenizer_config.json)
    _, tokens = write_gpt2_vocab(w, hf_dir, "gpt-2")
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w)

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.GEMMA_EMBEDDING, layers)
    weights = _load_float64(hf_dir / "model.safetensors")

    def add(name: str, data: np.ndarray) -> None:
        data = data.astype(np.float32)
        if data.ndim == 2 and qtype == QT.F16:
            w.add_tensor(name, data.astype(np.float16))
        elif data.ndim == 2 and qtype == QT.Q8_0:
            w.add_tensor(name, gguf.quants.quantize(data, QT.Q8_0), raw_dtype=QT.Q8_0)
        else:
            w.add_tensor(name, data)

    for hf_name, data in weights.items():
        new = names.get_name(f"model.{hf_name}", try_suffixes=(".weight", ".bias"))
        assert new is not None, hf_name
        if hf_name.endswith("norm.weight"):
            data = data + 1.0  # Gemma3RMSNorm's 1 + w, folded in by both converters
        add(new, data)
    dense_dirs = [m["path"] for m in json.loads((hf_dir / "modules.json").read_text()) if m["type"].endswith(".Dense")]
    for i, d in enumerate(dense_dirs):
        dw = _load_float64(hf_dir / d / "model.safetensors")
        name = f"dense.{i}" if ollama else ("dense_2" if i == 0 else "dense_3")
        add(f"{name}.weight", dw["linear.weight"])  # llama.cpp takes the weights only
        if ollama and "linear.bias" in dw:
            add(f"{name}.bias", dw["linear.bias"])
        if not ollama:
            rows, cols = dw["linear.weight"].shape
            w.add_dense_features_dims(name, cols, rows)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------- ModernBERT


def build_modernbert(
    out: Path,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 4,
    local_attention: int = 8,
    pooling: str = "cls",
    normalize: bool = True,
    norm_bias: bool = False,
    mlm_prefix: bool = False,
    bpe: bool = False,
) -> Path:
    """A ModernBERT sentence-transformers folder (gte-modernbert: CLS pooling + Normalize;
    modernbert-embed: mean). Layers 0 and 3 global (global_attn_every_n_layers 3), the rest a
    band of local_attention // 2 each side; ``mlm_prefix``: weights named as a
    ModernBertForMaskedLM save holds them (model. prefix, the MLM head beside)."""
    tok = build_modernbert_bpe_tokenizer(out) if bpe else build_wordpiece_tokenizer(out)
    vocab, heads, inner = tok.get_vocab_size(), 4, 96
    config = {
        "architectures": ["ModernBertForMaskedLM" if mlm_prefix else "ModernBertModel"],
        "model_type": "modernbert",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inner,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "hidden_activation": "gelu",
        "max_position_embeddings": 512,
        "norm_eps": 1e-5,
        "norm_bias": norm_bias,
        "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0,
        "global_attn_every_n_layers": 3,
        "local_attention": local_attention,
        "attention_bias": False,
        "mlp_bias": False,
        "pad_token_id": 0,
        "cls_token_id": 2 if bpe else 3,
        "sep_token_id": 3 if bpe else 4,
        "bos_token_id": 2 if bpe else 3,
        "eos_token_id": 3 if bpe else 4,
        "classifier_pooling": "mean",
    }
    rng = np.random.default_rng(seed)

    def norm(name: str) -> None:
        w[f"{name}.weight"] = rng.uniform(0.6, 1.4, hidden)
        if norm_bias:
            w[f"{name}.bias"] = rng.uniform(-0.2, 0.2, hidden)

    w: dict[str, np.ndarray] = {"embeddings.tok_embeddings.weight": rng.normal(0, 1.0, (vocab, hidden))}
    norm("embeddings.norm")
    for i in range(layers):
        p = f"layers.{i}."
        if i:
            norm(p + "attn_norm")
        w[p + "attn.Wqkv.weight"] = rng.normal(0, 1 / math.sqrt(hidden), (3 * hidden, hidden))
        w[p + "attn.Wo.weight"] = rng.normal(0, 1 / math.sqrt(hidden), (hidden, hidden))
        norm(p + "mlp_norm")
        w[p + "mlp.Wi.weight"] = rng.normal(0, 1 / math.sqrt(hidden), (2 * inner, hidden))
        w[p + "mlp.Wo.weight"] = rng.normal(0, 1 / math.sqrt(inner), (hidden, inner))
    norm("final_norm")
    if mlm_prefix:
        w = {f"model.{k}": v for k, v in w.items()}
        w["head.dense.weight"] = rng.normal(0, 0.1, (hidden, hidden))
        w["head.norm.weight"] = np.ones(hidden)
        w["decoder.bias"] = np.zeros(vocab)
    mx.save_safetensors(
        str(out / "model.safetensors"),
        {k: mx.array(v.astype(np.float32)) for k, v in w.items()},
        metadata={"format": "pt"},
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _st_modules(out, pooling, [], normalize)
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return out


def modernbert_reference(hf_dir: Path, ids: list[int]) -> np.ndarray:
    """sentence-transformers' vector (pooled, normalised if the folder says so) for one sequence,
    from ModernBertModel's forward: LN(embeddings); pre-norm blocks (no attn_norm in layer 0),
    rotate-half rope with the global / local base, local layers |i - j| <= local_attention // 2,
    GeGLU (Wi split into input and gate, exact GELU); final LN."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    w = {k.removeprefix("model."): v for k, v in _load_float64(hf_dir / "model.safetensors").items()}
    h, n_head, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["norm_eps"]
    d, t = h // n_head, len(ids)
    erf = np.vectorize(math.erf)

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[f"{name}.weight"] + w.get(f"{name}.bias", 0.0)

    pos = np.arange(t)
    band = np.abs(pos[:, None] - pos[None, :]) <= cfg["local_attention"] // 2
    x = ln(w["embeddings.tok_embeddings.weight"][ids], "embeddings.norm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        is_global = i % cfg["global_attn_every_n_layers"] == 0
        cos, sin = _rope_tables(t, d, cfg["global_rope_theta"] if is_global else cfg["local_rope_theta"])
        a = x if i == 0 else ln(x, p + "attn_norm")
        qkv = (a @ w[p + "attn.Wqkv.weight"].T).reshape(t, 3, n_head, d).transpose(1, 2, 0, 3)
        o = _softmax_attend(
            _rope(qkv[0], cos, sin),
            _rope(qkv[1], cos, sin),
            qkv[2],
            d**-0.5,
            np.ones((t, t), bool) if is_global else band,
        )
        x = x + o.transpose(1, 0, 2).reshape(t, h) @ w[p + "attn.Wo.weight"].T
        m = ln(x, p + "mlp_norm") @ w[p + "mlp.Wi.weight"].T
        value, gate = np.split(m, 2, axis=-1)
        x = x + (0.5 * value * (1 + erf(value / math.sqrt(2))) * gate) @ w[p + "mlp.Wo.weight"].T
    x = ln(x, "final_norm")
    modules = json.loads((hf_dir / "modules.json").read_text())
    pc = json.loads((hf_dir / "1_Pooling" / "config.json").read_text())
    vec = x[0] if pc["pooling_mode_cls_token"] else x.mean(0)
    if any(m["type"].endswith(".Normalize") for m in modules):
        vec = vec / np.linalg.norm(vec)
    return vec


MODERNBERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_modernbert_bpe_tokenizer(out: Path) -> Tokenizer:
    """ModernBERT's kind of vocabulary: byte-level BPE (GPT-2 split), [CLS] text [SEP]."""
    from tokenizers import AddedToken, processors

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=MODERNBERT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MODERNBERT_SPECIALS])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
                "model_max_length": 512,
            }
        )
    )
    return tok


def write_modernbert_gguf(hf_dir: Path, path: Path, qtype: QT = QT.F16) -> Path:
    """``hf_dir`` (build_modernbert(bpe=True)) as llama.cpp's ModernBertModel converter writes it:
    arch modern-bert, tensors through TensorNameMap (model. prefix and MLM head dropped),
    sliding_window = local_attention, the global-layer period, the two rope bases, add_bos /
    add_eos on, the vocabulary as _set_vocab_gpt2 writes it, pooling_type from the Pooling module."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MODERN_BERT]
    layers = cfg["num_hidden_layers"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny modernbert")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(layers)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["norm_eps"])
    w.add_rope_freq_base(cfg["global_rope_theta"])
    w.add_rope_freq_base_swa(cfg["local_rope_theta"])
    w.add_file_type(int({QT.F16: gguf.LlamaFileType.MOSTLY_F16, QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]))
    w.add_causal_attention(False)
    pc = json.loads((hf_dir / "1_Pooling" / "config.json").read_text())
    w.add_pooling_type(gguf.PoolingType.CLS if pc["pooling_mode_cls_token"] else gguf.PoolingType.MEAN)
    w.add_sliding_window(cfg["local_attention"])
    w.add_sliding_window_pattern(cfg["global_attn_every_n_layers"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    w.add_add_sep_token(True)
    tj, _ = write_gpt2_vocab(w, hf_dir, "modern-bert")
    w.add_token_merges(bpe_merges(tj))
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_sep_token_id(cfg["sep_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.MODERN_BERT, layers)
    for name, data in _load_float64(hf_dir / "model.safetensors").items():
        name = name.removeprefix("model.")
        if name.startswith(("head.", "decoder.")):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        data = data.astype(np.float32)
        if data.ndim == 2 and qtype == QT.F16:
            w.add_tensor(new, data.astype(np.float16))
        elif data.ndim == 2 and qtype == QT.Q8_0:
            w.add_tensor(new, gguf.quants.quantize(data, QT.Q8_0), raw_dtype=QT.Q8_0)
        else:
            w.add_tensor(new, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
