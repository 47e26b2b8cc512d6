"""Tiny BERT-family sentence-transformers checkpoints with random weights (numpy, no torch),
and their GGUF as llama.cpp's converter writes it (BertModel / NomicBertModel in
convert_hf_to_gguf.py): tensor names from gguf-py's TensorNameMap, WordPiece pieces in
"phantom space" spelling, special ids through gguf.SpecialVocab, pooling_type from the
sentence-transformers Pooling module.  Written from the converter's rules, independently of
the importer (mlxollama/convert/gguf_encoder.py).

Kept apart from ggufwriter.py / tinyhf.py (decoder architectures) so the two writers do not
share state."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType as QT
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .ggufwriter import write_gpt2_vocab

SPECIALS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    "the of and to in is it that for on with as was at by an be this are from or have not but what all "
    "were when we there can your which their said if do will each about how up out them then she many "
    "some so these would other into has more her two like him see time could no make than first been "
    "its who now people my made over did down only way find use may water long little very after words "
    "called just where most know get through back much before go good new write our used me man too any "
    "day same right look think also around another came come work three word must because does part "
    "hello world cat dog sat mat code return def print cafe naive street embedding model text"
).split()


def build_wordpiece_tokenizer(out: Path) -> Tokenizer:
    """An uncased BERT WordPiece tokenizer (tokenizer.json + tokenizer_config.json) over a
    few hundred pieces: specials, words, single characters and their ## forms, CJK."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]{}-_+=*/\\#@$%&<>|~`^") + list("日本語中文字")
    vocab_list = (
        SPECIALS
        + chars
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
        + [w for w in dict.fromkeys(_WORDS) if w not in chars]
        + ["##ing", "##ed", "##s", "##er", "##ly", "##tion"]
    )
    vocab_list = list(dict.fromkeys(vocab_list))
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100)
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    from tokenizers import AddedToken

    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "vocab.txt").write_text("\n".join(vocab_list) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": True,
                "model_max_length": 512,
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
            }
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
            }
        )
    )
    return tok


XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def build_unigram_tokenizer(out: Path) -> Tokenizer:
    """An XLM-RoBERTa style SentencePiece Unigram tokenizer.json: Metaspace words, extra
    whitespace removed, <s> text </s>, <mask> last.  (No precompiled charsmap: that needs a
    real sentencepiece model; the GGUF then carries none either.)"""
    from tokenizers import AddedToken, Regex

    rng = np.random.default_rng(11)
    pieces = ["▁"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]-_#=*/") + list("日本語中文字éàüßПриветмир")
    pieces += ["▁" + w for w in dict.fromkeys(_WORDS)] + ["ing", "ed", "er", "ly", "tion", "▁wal", "▁talk", "k"]
    pieces = [p for p in dict.fromkeys(pieces) if p not in XLMR_SPECIALS]
    vocab = [(t, 0.0) for t in XLMR_SPECIALS] + [(p, float(-2.0 - len(p) * 0.1 - rng.uniform(0, 3))) for p in pieces]
    vocab.append(("<mask>", 0.0))
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    # sentencepiece's remove_extra_whitespaces: trailing spaces (not newlines) go, runs collapse
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r" +\z"), ""), normalizers.Replace(Regex(" {2,}"), "▁")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0 </s>:0",
        pair="<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in XLMR_SPECIALS + ["<mask>"]])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "XLMRobertaTokenizer",
                "model_max_length": 64,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "cls_token": "<s>",
                "sep_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "mask_token": "<mask>",
                "clean_up_tokenization_spaces": True,
            }
        )
    )
    return tok


def build_bpe_tokenizer(out: Path) -> Tokenizer:
    """A RoBERTa byte-level BPE tokenizer.json (merges learnt here from a small corpus):
    no normalizer, ByteLevel words, <s> text </s> (RobertaProcessing)."""
    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        " ".join(_WORDS),
        "def print(x): return x  # code",
        "Hello World, the cat sat on the mat!",
        "walking talked quickly",
        "日本語 中文",
        "Café naïve ÉCOLE",
    ] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "RobertaTokenizer",
                "model_max_length": 64,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "cls_token": "<s>",
                "sep_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "mask_token": "<mask>",
            }
        )
    )
    return tok


def _bert_shapes(
    h: int, layers: int, inner: int, vocab: int, positions: int, type_vocab: int = 2
) -> dict[str, tuple[int, ...]]:
    s = {
        "embeddings.word_embeddings.weight": (vocab, h),
        "embeddings.position_embeddings.weight": (positions, h),
        "embeddings.token_type_embeddings.weight": (type_vocab, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            s[f"{p}attention.self.{proj}.weight"], s[f"{p}attention.self.{proj}.bias"] = (h, h), (h,)
        s[f"{p}attention.output.dense.weight"], s[f"{p}attention.output.dense.bias"] = (h, h), (h,)
        s[f"{p}attention.output.LayerNorm.weight"] = s[f"{p}attention.output.LayerNorm.bias"] = (h,)
        s[f"{p}intermediate.dense.weight"], s[f"{p}intermediate.dense.bias"] = (inner, h), (inner,)
        s[f"{p}output.dense.weight"], s[f"{p}output.dense.bias"] = (h, inner), (h,)
        s[f"{p}output.LayerNorm.weight"] = s[f"{p}output.LayerNorm.bias"] = (h,)
    return s


def _nomic_shapes(h: int, layers: int, inner: int, vocab: int) -> dict[str, tuple[int, ...]]:
    s = {
        "embeddings.word_embeddings.weight": (vocab, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "emb_ln.weight": (h,),
        "emb_ln.bias": (h,),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        s[f"{p}attn.Wqkv.weight"], s[f"{p}attn.out_proj.weight"] = (3 * h, h), (h, h)
        s[f"{p}mlp.fc11.weight"] = s[f"{p}mlp.fc12.weight"] = (inner, h)
        s[f"{p}mlp.fc2.weight"] = (h, inner)
        for n in ("norm1", "norm2"):
            s[f"{p}{n}.weight"] = s[f"{p}{n}.bias"] = (h,)
    return s


def _random(shapes: dict[str, tuple[int, ...]], rng) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in shapes.items():
        if "LayerNorm.weight" in name or "norm" in name.split(".")[-2] or name.startswith("emb_ln.w"):
            w = rng.uniform(0.6, 1.4, shape) if name.endswith("weight") else rng.uniform(-0.2, 0.2, shape)
        elif name.endswith(".bias"):
            w = rng.uniform(-0.2, 0.2, shape)
        elif "embeddings" in name:
            w = rng.normal(0, 1.0, shape)
        else:
            w = rng.normal(0, 1.0 / np.sqrt(shape[-1]), shape)
        out[name] = w.astype(np.float32)
    return out


def build_encoder_checkpoint(
    out: Path,
    arch: str = "bert",
    *,
    seed: int = 0,
    pooling: str = "mean",
    normalize: bool = True,
    hidden: int = 64,
    layers: int = 2,
) -> Path:
    """A sentence-transformers folder (Transformer -> Pooling [-> Normalize]) holding a tiny
    ``arch`` ("bert", "nomic_bert" or "xlm-roberta") model with random weights, HF names and layout."""
    out.mkdir(parents=True, exist_ok=True)
    if arch == "modernbert":  # its own builder (tinyembed.py)
        from .tinyembed import build_modernbert

        return build_modernbert(out, seed=seed, hidden=hidden, layers=layers, pooling=pooling, normalize=normalize)
    builders = {"xlm-roberta": build_unigram_tokenizer, "roberta": build_bpe_tokenizer}
    tok = builders.get(arch, build_wordpiece_tokenizer)(out)
    vocab, heads, inner = tok.get_vocab_size(), 4, 2 * hidden
    if arch == "bert":
        config = {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": vocab,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": inner,
            "max_position_embeddings": 64,
            "type_vocab_size": 2,
            "layer_norm_eps": 1e-12,
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            "pad_token_id": 0,
        }
        shapes = _bert_shapes(hidden, layers, inner, vocab, 64)
    elif arch in ("xlm-roberta", "roberta"):  # positions count from pad_token_id + 1 = 2: 64 usable
        config = {
            "architectures": ["XLMRobertaModel" if arch == "xlm-roberta" else "RobertaModel"],
            "model_type": arch,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": inner,
            "max_position_embeddings": 66,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
        }
        shapes = _bert_shapes(hidden, layers, inner, vocab, 66, type_vocab=1)
    elif arch == "nomic_bert":
        config = {
            "architectures": ["NomicBertModel"],
            "model_type": "nomic_bert",
            "vocab_size": vocab,
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": heads,
            "n_inner": inner,
            "n_positions": 128,
            "type_vocab_size": 2,
            "layer_norm_epsilon": 1e-12,
            "rotary_emb_base": 1000.0,
            "rotary_emb_fraction": 1.0,
            "rotary_emb_interleaved": False,
            "rotary_emb_scale_base": None,
            "activation_function": "swiglu",
            "prenorm": False,
            "qkv_proj_bias": False,
            "mlp_fc1_bias": False,
            "mlp_fc2_bias": False,
            "causal": False,
            "pad_token_id": 0,
        }
        shapes = _nomic_shapes(hidden, layers, inner, vocab)
    else:
        raise ValueError(arch)
    weights = _random(shapes, np.random.default_rng(seed))
    mx.save_safetensors(
        str(out / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()}, metadata={"format": "pt"}
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    max_len = (
        config["max_position_embeddings"] - 2
        if arch in ("xlm-roberta", "roberta")
        else (config.get("max_position_embeddings") or config["n_positions"])
    )
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len, "do_lower_case": False}))
    return out


def _gguf_tokenizer(w: gguf.GGUFWriter, hf_dir: Path) -> None:
    """BertModel.set_vocab: ids in vocab order, CONTROL for added special tokens, pieces
    rewritten to phantom-space form, special ids and add_* flags via SpecialVocab."""
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    tokens = [""] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {t["id"] for t in tj["added_tokens"] if t.get("special")}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]

    def phantom(tok: str) -> str:
        if tok.startswith("[") and tok.endswith("]"):
            return tok
        if tok.startswith("##"):
            return tok[2:]
        return "\u2581" + tok

    w.add_token_type_count(2)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([phantom(t) for t in tokens])
    w.add_token_types(types)
    gguf.SpecialVocab(hf_dir, n_vocab=len(tokens)).add_to_gguf(w)


def _gguf_unigram_tokenizer(w: gguf.GGUFWriter, hf_dir: Path, type_vocab: int) -> None:
    """XLMRobertaModel's vocabulary from tokenizer.json (llama.cpp's "t5" model): pieces and
    scores in id order, UNKNOWN / CONTROL / USER_DEFINED types, the sentencepiece flags."""
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    tc = json.loads((hf_dir / "tokenizer_config.json").read_text())
    vocab = tj["model"]["vocab"]
    unk_id = tj["model"].get("unk_id", 3)
    special = {t["id"] for t in tj["added_tokens"] if t.get("special")}
    added = {t["id"] for t in tj["added_tokens"]}
    types = [
        gguf.TokenType.UNKNOWN
        if i == unk_id
        else gguf.TokenType.CONTROL
        if i in special
        else gguf.TokenType.USER_DEFINED
        if i in added
        else gguf.TokenType.NORMAL
        for i in range(len(vocab))
    ]
    w.add_tokenizer_model("t5")
    w.add_tokenizer_pre("default")
    w.add_token_list([p for p, _ in vocab])
    w.add_token_scores([float(s) for _, s in vocab])
    w.add_token_types(types)
    w.add_add_space_prefix(True)
    w.add_token_type_count(type_vocab)
    w.add_remove_extra_whitespaces(bool(tc.get("clean_up_tokenization_spaces", True)))
    charsmap = (tj.get("normalizer") or {}).get("precompiled_charsmap")
    if charsmap:
        import base64

        w.add_precompiled_charsmap(base64.b64decode(charsmap))
    gguf.SpecialVocab(hf_dir, n_vocab=len(vocab)).add_to_gguf(w)


def _gguf_bpe_tokenizer(w: gguf.GGUFWriter, hf_dir: Path, type_vocab: int) -> None:
    """RobertaModel.set_vocab (llama.cpp's _set_vocab_gpt2): vocab in id order, CONTROL for
    the special added tokens, merges and special ids / add flags via SpecialVocab."""
    _, tokens = write_gpt2_vocab(w, hf_dir, "roberta-bpe")
    w.add_token_type_count(type_vocab)
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w)


def write_encoder_gguf(hf_dir: Path, path: Path, qtype: QT = QT.F16, *, ollama_keys: bool = False) -> Path:
    """``hf_dir`` (build_encoder_checkpoint) as a GGUF of arch bert / nomic-bert.
    ``ollama_keys``: also {arch}.normalize_embeddings, as Ollama's own converter writes."""
    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    nomic = cfg["model_type"] == "nomic_bert"
    arch = gguf.MODEL_ARCH.NOMIC_BERT if nomic else gguf.MODEL_ARCH.BERT
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    layers = cfg.get("n_layer") or cfg["num_hidden_layers"]
    w = gguf.GGUFWriter(str(path), arch_name)
    w.add_name(f"tiny {arch_name}")
    # NomicBertModel: the HF n_positions is larger than the trained context; llama.cpp writes 2048
    xlmr = cfg["model_type"] == "xlm-roberta"
    offset = (
        cfg["pad_token_id"] + 1 if cfg["model_type"] in ("xlm-roberta", "roberta") else 0
    )  # RobertaModel: position rows before pad + 1 dropped
    w.add_context_length(min(cfg["n_positions"], 2048) if nomic else cfg["max_position_embeddings"] - offset)
    w.add_embedding_length(cfg.get("n_embd") or cfg["hidden_size"])
    w.add_feed_forward_length(cfg.get("n_inner") or cfg["intermediate_size"])
    w.add_block_count(layers)
    w.add_head_count(cfg.get("n_head") or cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg.get("layer_norm_epsilon") or cfg["layer_norm_eps"])
    w.add_file_type(
        int(
            {
                QT.F16: gguf.LlamaFileType.MOSTLY_F16,
                QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
                QT.F32: gguf.LlamaFileType.ALL_F32,
            }[qtype]
        )
    )
    w.add_causal_attention(False)
    modules = json.loads((hf_dir / "modules.json").read_text())
    pooling_dir = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
    pc = json.loads((hf_dir / pooling_dir / "config.json").read_text())
    w.add_pooling_type(gguf.PoolingType.MEAN if pc["pooling_mode_mean_tokens"] else gguf.PoolingType.CLS)
    if ollama_keys:
        w.add_bool(f"{arch_name}.normalize_embeddings", any(m["type"].endswith(".Normalize") for m in modules))
    if nomic:
        w.add_rope_freq_base(cfg["rotary_emb_base"])
    if xlmr:
        _gguf_unigram_tokenizer(w, hf_dir, cfg["type_vocab_size"])
    elif cfg["model_type"] == "roberta":
        _gguf_bpe_tokenizer(w, hf_dir, cfg["type_vocab_size"])
    else:
        _gguf_tokenizer(w, hf_dir)

    names = gguf.TensorNameMap(arch, layers)
    for name, v in mx.load(str(hf_dir / "model.safetensors")).items():
        if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        data = np.array(v.astype(mx.float32))
        if name == "embeddings.position_embeddings.weight":
            data = data[offset:]
        two_d = data.ndim == 2 and name.endswith(".weight") and "token_type" not in name  # token_types stays F32
        if two_d and qtype == QT.F16:
            w.add_tensor(new, data.astype(np.float16))
        elif two_d and qtype == QT.Q8_0:
            w.add_tensor(new, gguf.quants.quantize(data, QT.Q8_0), raw_dtype=QT.Q8_0)
        else:
            w.add_tensor(new, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_synthetic_bert_gguf(
    path: Path, *, hidden: int = 512, layers: int = 8, vocab: int = 8000, seed: int = 0
) -> dict[str, int]:
    """A BERT GGUF of real proportions (F16 matrices) written straight from random numpy,
    without a Hugging Face checkpoint: for measuring the import's memory. Returns the total
    and the largest tensor sizes in bytes."""
    inner = 4 * hidden
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inner)
    w.add_block_count(layers)
    w.add_head_count(hidden // 64)
    w.add_layer_norm_eps(1e-12)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    w.add_tokenizer_model("bert")
    w.add_token_list(specials + [f"\u2581w{i}" for i in range(vocab - len(specials))])
    w.add_token_types([gguf.TokenType.CONTROL] * len(specials) + [gguf.TokenType.NORMAL] * (vocab - len(specials)))
    w.add_unk_token_id(1)
    w.add_bos_token_id(2)
    w.add_eos_token_id(3)
    w.add_pad_token_id(0)
    rng = np.random.default_rng(seed)
    sizes = []

    def add(name: str, shape: tuple[int, ...], f16: bool) -> None:
        a = rng.standard_normal(shape, dtype=np.float32)
        a = a.astype(np.float16) if f16 else a
        sizes.append(a.nbytes)
        w.add_tensor(name, a)

    add("token_embd.weight", (vocab, hidden), True)
    add("position_embd.weight", (512, hidden), True)
    add("token_types.weight", (2, hidden), False)
    add("token_embd_norm.weight", (hidden,), False)
    add("token_embd_norm.bias", (hidden,), False)
    for b in range(layers):
        for n, rows, cols in [
            ("attn_q", hidden, hidden),
            ("attn_k", hidden, hidden),
            ("attn_v", hidden, hidden),
            ("attn_output", hidden, hidden),
            ("ffn_up", inner, hidden),
            ("ffn_down", hidden, inner),
        ]:
            add(f"blk.{b}.{n}.weight", (rows, cols), True)
            add(f"blk.{b}.{n}.bias", (rows,), False)
        for n in ("attn_output_norm", "layer_output_norm"):
            add(f"blk.{b}.{n}.weight", (hidden,), False)
            add(f"blk.{b}.{n}.bias", (hidden,), False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"total": sum(sizes), "largest": max(sizes)}
