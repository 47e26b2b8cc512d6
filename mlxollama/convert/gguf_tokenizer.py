"""Hugging Face tokenizer files from a GGUF's ``tokenizer.ggml.*`` metadata.

A GGUF carries no tokenizer.json, only the vocabulary, merges/scores, token
types and a pre-tokenizer *name*.  The split regexes behind each name live in
llama.cpp (llama-vocab.cpp), so they are tabulated here; a wrong regex does not
fail, it silently tokenizes differently from what the model was trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

log = logging.getLogger(__name__)

# llama.cpp token types (tokenizer.ggml.token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


class UnsupportedTokenizer(ValueError):
    pass


# --- pre-tokenizer regexes -------------------------------------------------
# Applied in sequence, each splitting the pieces left by the previous one and
# keeping unmatched text (llama.cpp's unicode_regex_split == HF Split "isolated").
# Where llama.cpp rewrote an HF regex for its own engine (case-insensitive
# groups, \p{Lu} classes) the original HF form is used: Onig supports it.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3.5: Qwen2's split with combining marks (\p{M}) kept in words
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK_CODER = [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"]
# DeepSeek LLM / V2 / Coder-V2: letters of the cased scripts, ASCII and CJK punctuation, CJK runs, digit runs.
# (\u escapes: NFC folds those code points onto others, which would break the ranges.)
_DEEPSEEK_LLM = [
    r"[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-"
    "ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-"
    "ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
]
_DEEPSEEK3 = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]

_PRE_GROUPS: list[tuple[tuple[str, ...], list[str]]] = [
    (
        (
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "dbrx",
            "smaug-bpe",
            "chatglm-bpe",
            "glm4",
        ),
        [_LLAMA3],
    ),
    (("qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "megrez", "hunyuan", "grok-2"), [_QWEN2]),
    (("qwen35",), [_QWEN35]),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), [r"\p{N}", _GPT2]),
    (
        (
            "gpt-2",
            "gpt2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "jina-es",
            "jina-de",
            "jina-v1-en",
            "jina-v2-es",
            "jina-v2-de",
            "jina-v2-code",
            "roberta-bpe",
            "gigachat",
            "exaone4",
            "trillion",
            "granite-docling",
            "a.x-4.0",
            "mellum",
            "modern-bert",  # llama-vocab.cpp: LLAMA_VOCAB_PRE_TYPE_GPT2
        ),
        [_GPT2],
    ),
    (("falcon",), [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"]),
    (("deepseek-coder",), _DEEPSEEK_CODER),
    (("deepseek-llm",), _DEEPSEEK_LLM),
    (("deepseek-v3", "hunyuan-dense"), _DEEPSEEK3),
    (("tekken",), [_TEKKEN]),
    (("gpt-4o", "llama4", "minimax-m2"), [_GPT4O]),
    (("poro-chat", "bloom", "gpt3-finnish"), [_BLOOM]),
    (("viking",), [_BLOOM, r"\p{N}"]),
    (("default",), _DEFAULT),
]
PRE_TOKENIZER_REGEXES: dict[str, list[str]] = {n: rx for names, rx in _PRE_GROUPS for n in names}
# llama.cpp matches a whole pre-token against the vocab before merging for these.
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "tekken"}
# Their Hugging Face tokenizers compose text (NFC) before splitting (Qwen2/2.5/3 and the
# R1 distills on them); llama.cpp does not, so decomposed accents tokenized byte by byte
# there, unlike anything the model saw in training.
_NFC_FIRST = {"qwen2", "deepseek-r1-qwen", "qwen35"}
# llama.cpp turns add_bos on for these when the file does not say.
_ADD_BOS_DEFAULT = _IGNORE_MERGES | {"chameleon"}

# Tokens llama.cpp treats as end-of-generation by their text (llama-vocab.cpp).
_EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<|eom_id|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
)


@dataclass
class TokenizerInfo:
    files: list[str]
    bos_token_id: int | None
    eos_token_ids: list[int] = field(default_factory=list)
    add_bos_token: bool = False
    vocab_size: int = 0


def _get(meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    v = meta.get(key)
    return default if v is None else v


def _tok(tokens: Sequence[str], idx: Any) -> str | None:
    if idx is None or not (0 <= int(idx) < len(tokens)):
        return None
    return tokens[int(idx)]


def _byte_level_bpe(meta: Mapping[str, Any], tokens: list[str]) -> Tokenizer:
    pre = str(_get(meta, "tokenizer.ggml.pre", "default"))
    regexes = PRE_TOKENIZER_REGEXES.get(pre)
    if regexes is None:
        # Same fallback as llama.cpp, which logs and uses its default split.
        log.warning("unknown tokenizer.ggml.pre %r; using llama.cpp's default split", pre)
        regexes = _DEFAULT
    merges_raw = _get(meta, "tokenizer.ggml.merges")
    if not merges_raw:
        raise UnsupportedTokenizer("gpt2 tokenizer without tokenizer.ggml.merges")
    merges = []
    for m in merges_raw:
        # llama.cpp splits at the first space after position 0 (a token may be " ").
        pos = m.find(" ", 1)
        if pos > 0:
            merges.append((m[:pos], m[pos + 1 :]))
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab[t] = i  # duplicates: the last id wins, as in llama.cpp's token_to_id
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _IGNORE_MERGES, fuse_unk=False, byte_fallback=False)
    )
    tok.normalizer = normalizers.NFC() if pre in _NFC_FIRST else None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    # ByteLevel decoder: mlx-lm picks its BPE streaming detokenizer from it.
    tok.decoder = decoders.ByteLevel()
    return tok


def _merges_from_scores(tokens: list[str], scores: Sequence[float], types: Sequence[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to sentencepiece/llama.cpp SPM: at each step the
    adjacent pair whose concatenation is the highest-scored vocab piece merges."""
    vocab = {}
    for i, t in enumerate(tokens):
        # llama.cpp merges into any vocab text; control/byte/unk pieces never
        # arise from merging characters in practice, so leave them out.
        if types[i] not in (TOKEN_CONTROL, TOKEN_BYTE, TOKEN_UNKNOWN):
            vocab.setdefault(t, i)
    ranked = []
    for piece, idx in vocab.items():
        if len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                ranked.append((-float(scores[idx]), idx, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _gemma4_bpe(meta: Mapping[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    """tokenizer.ggml.model "gemma4" (llama.cpp's LLAMA_VOCAB_PRE_TYPE_GEMMA4): BPE by merge rank
    over raw UTF-8 characters (no byte-to-unicode map), spaces written as ▁ first, the text
    split only into runs of newlines and runs of anything else, a character with no piece as
    <0xXX> byte pieces; no space prefix."""
    merges = []
    for m in _get(meta, "tokenizer.ggml.merges") or []:
        pos = m.find(" ", 1)  # llama.cpp splits at the first space after position 0
        if pos > 0:
            merges.append((m[:pos], m[pos + 1 :]))
    if not merges:
        raise UnsupportedTokenizer("gemma4 tokenizer without tokenizer.ggml.merges")
    vocab = {t: i for i, t in enumerate(tokens)}  # duplicates: the last id wins, as in llama.cpp
    byte_fallback = TOKEN_BYTE in types or "<0x00>" in vocab
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=byte_fallback, fuse_unk=False))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[^\\n]+|[\\n]+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def _sentencepiece_bpe(meta: Mapping[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    scores = _get(meta, "tokenizer.ggml.scores")
    if scores is None:
        raise UnsupportedTokenizer("llama (sentencepiece) tokenizer without tokenizer.ggml.scores")
    add_prefix = bool(_get(meta, "tokenizer.ggml.add_space_prefix", True))
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    unk = _tok(tokens, _get(meta, "tokenizer.ggml.unknown_token_id", 0))
    has_bytes = any(t == TOKEN_BYTE for t in types)
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=_merges_from_scores(tokens, scores, types),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=has_bytes,
        )
    )
    # llama.cpp prefixes a space to every raw-text fragment that starts the
    # text or follows a special token; HF applies the normalizer per fragment
    # between added tokens, which is the same thing.
    norm = [normalizers.Replace(" ", "▁")]
    if add_prefix:
        norm.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = None
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    # This exact decoder sequence is what mlx-lm recognises as SPM streaming.
    tok.decoder = decoders.Sequence(dec)
    return tok


# llama.cpp's BERT converters store WordPiece pieces "phantom space" style: a
# word-initial piece gets a leading U+2581, a continuation piece loses its "##",
# bracketed specials ([CLS], [unused0]) stay as they are.
_PHANTOM = "\u2581"


def _wordpiece_text(piece: str) -> str:
    """A GGUF ``bert`` vocabulary piece back in Hugging Face WordPiece spelling."""
    if piece.startswith(_PHANTOM):
        return piece[1:]
    if piece.startswith("[") and piece.endswith("]"):
        return piece
    return "##" + piece


def _special_id(meta: Mapping[str, Any], tokens: Sequence[str], keys: Sequence[str], text: str) -> int | None:
    """The first of ``keys`` the file sets, else the id of the token spelled ``text``."""
    for key in keys:
        v = _get(meta, f"tokenizer.ggml.{key}")
        if v is not None and 0 <= int(v) < len(tokens):
            return int(v)
    return tokens.index(text) if text in tokens else None


def _vocab_is_uncased(words: Sequence[str], types: Sequence[int]) -> bool:
    """A GGUF does not record do_lower_case; an uncased BERT vocabulary simply has no
    upper-case pieces (bert-base-uncased: none of 30522), a cased one has thousands."""
    normal = [w for w, ty in zip(words, types) if ty == TOKEN_NORMAL and not (w.startswith("[") and w.endswith("]"))]
    upper = sum(1 for w in normal if w != w.lower())
    return upper <= len(normal) // 1000


def _wordpiece(meta: Mapping[str, Any], tokens: list[str], types: list[int]) -> tuple[Tokenizer, dict[str, Any]]:
    """BERT's WordPiece tokenizer (what ``BertTokenizerFast`` builds): BERT normalizer,
    BERT pre-tokenizer, greedy longest-match pieces, [CLS] text [SEP]."""
    words = [_wordpiece_text(t) for t in tokens]
    vocab: dict[str, int] = {}
    for i, w in enumerate(words):
        vocab.setdefault(w, i)
    unk_id = _special_id(meta, tokens, ("unknown_token_id",), "[UNK]")
    cls_id = _special_id(meta, tokens, ("cls_token_id", "bos_token_id"), "[CLS]")
    sep_id = _special_id(meta, tokens, ("seperator_token_id", "eos_token_id"), "[SEP]")
    pad_id = _special_id(meta, tokens, ("padding_token_id",), "[PAD]")
    mask_id = _special_id(meta, tokens, ("mask_token_id",), "[MASK]")
    if unk_id is None:
        raise UnsupportedTokenizer("bert tokenizer without an unknown token")
    unk = words[unk_id]
    tok = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token=unk, continuing_subword_prefix="##", max_input_chars_per_word=100)
    )
    lower = _vocab_is_uncased(words, types)
    # strip_accents=None follows lowercase, as in BertTokenizerFast
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    specials = [i for i in (unk_id, cls_id, sep_id, pad_id, mask_id) if i is not None]
    specials += [i for i, ty in enumerate(types) if ty == TOKEN_CONTROL and i not in specials and words[i]]
    tok.add_special_tokens([AddedToken(words[i], special=True, normalized=False) for i in sorted(set(specials))])
    user = [
        AddedToken(words[i], special=False, normalized=True)
        for i, ty in enumerate(types)
        if ty == TOKEN_USER_DEFINED and words[i]
    ]
    if user:
        tok.add_tokens(user)
    add_cls = bool(_get(meta, "tokenizer.ggml.add_bos_token", True)) and cls_id is not None
    add_sep = bool(_get(meta, "tokenizer.ggml.add_eos_token", True)) and sep_id is not None
    if add_cls or add_sep:
        cls, sep = (words[cls_id] if add_cls else None), (words[sep_id] if add_sep else None)
        first = ([f"{cls}:0"] if cls else []) + ["$A:0"] + ([f"{sep}:0"] if sep else [])
        second = ["$B:1"] + ([f"{sep}:1"] if sep else [])
        tok.post_processor = processors.TemplateProcessing(
            single=first, pair=first + second, special_tokens=[(t, i) for t, i in ((cls, cls_id), (sep, sep_id)) if t]
        )
    facts = {
        "bos_token": None,
        "eos_token": None,
        "unk_token": unk,
        "pad_token": words[pad_id] if pad_id is not None else None,
        "cls_token": words[cls_id] if cls_id is not None else None,
        "sep_token": words[sep_id] if sep_id is not None else None,
        "mask_token": words[mask_id] if mask_id is not None else None,
        "pad_token_id": pad_id,
        "do_lower_case": lower,
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token_id": None,
        "eos_token_ids": [],
        "control_tokens": [words[i] for i in sorted(set(specials))],
    }
    return tok, facts


def _unigram(meta: Mapping[str, Any], tokens: list[str], types: list[int]) -> tuple[Tokenizer, dict[str, Any]]:
    """SentencePiece Unigram (llama.cpp's "t5" / UGM model: XLM-RoBERTa, bge-m3) as the
    tokenizers library spells it for XLM-R: the sentencepiece normalizer (its precompiled
    charsmap, then extra-whitespace removal), Metaspace words, <s> text </s>."""
    scores = _get(meta, "tokenizer.ggml.scores")
    if scores is None:
        raise UnsupportedTokenizer("t5 (unigram) tokenizer without tokenizer.ggml.scores")
    unk_id = _get(meta, "tokenizer.ggml.unknown_token_id")
    if unk_id is None:
        unk_id = next((i for i, ty in enumerate(types) if ty == TOKEN_UNKNOWN), None)
    tok = Tokenizer(
        models.Unigram(
            [(t, float(sc)) for t, sc in zip(tokens, scores)],
            unk_id=None if unk_id is None else int(unk_id),
            byte_fallback=any(ty == TOKEN_BYTE for ty in types),
        )
    )
    norm = []
    charsmap = _get(meta, "tokenizer.ggml.precompiled_charsmap")
    if charsmap is not None and len(charsmap):
        norm.append(normalizers.Precompiled(bytes(bytearray(int(b) & 0xFF for b in charsmap))))
    if bool(_get(meta, "tokenizer.ggml.remove_extra_whitespaces", True)):
        # sentencepiece drops trailing *spaces* only (a final newline stays a piece); \z, as
        # Onig's $ would also match before a newline
        norm += [normalizers.Replace(Regex(r" +\z"), ""), normalizers.Replace(Regex(" {2,}"), "▁")]
    tok.normalizer = normalizers.Sequence(norm) if norm else None
    scheme = "always" if bool(_get(meta, "tokenizer.ggml.add_space_prefix", True)) else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    control = [i for i, ty in enumerate(types) if ty in (TOKEN_CONTROL, TOKEN_UNKNOWN) and tokens[i]]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
    user = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i, ty in enumerate(types)
        if ty == TOKEN_USER_DEFINED and tokens[i]
    ]
    if user:
        tok.add_tokens(user)
    bos_id, eos_id = _get(meta, "tokenizer.ggml.bos_token_id"), _get(meta, "tokenizer.ggml.eos_token_id")
    bos, eos = _tok(tokens, bos_id), _tok(tokens, eos_id)
    add_bos = bool(_get(meta, "tokenizer.ggml.add_bos_token", True)) and bos is not None
    add_eos = bool(_get(meta, "tokenizer.ggml.add_eos_token", True)) and eos is not None
    if add_bos or add_eos:
        head, tail = ([f"{bos}:0"] if add_bos else []), ([f"{eos}:0"] if add_eos else [])
        special = [(t, int(i)) for t, i, on in ((bos, bos_id, add_bos), (eos, eos_id, add_eos)) if on]
        # RoBERTa's pair layout: <s> A </s></s> B </s>
        tok.post_processor = processors.TemplateProcessing(
            single=head + ["$A:0"] + tail,
            pair=head + ["$A:0"] + tail + tail + ["$B:0"] + tail,
            special_tokens=list(dict.fromkeys(special)),
        )
    pad_id = _get(meta, "tokenizer.ggml.padding_token_id")
    mask = "<mask>" if "<mask>" in tokens else None
    facts = {
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": _tok(tokens, unk_id),
        "pad_token": _tok(tokens, pad_id),
        "cls_token": bos,
        "sep_token": eos,
        "mask_token": mask,
        "pad_token_id": None if pad_id is None else int(pad_id),
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token_id": None,
        "eos_token_ids": [],
        "control_tokens": [tokens[i] for i in control],
    }
    return tok, facts


def build_tokenizer(meta: Mapping[str, Any]) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer plus the facts tokenizer_config.json needs."""
    model = _get(meta, "tokenizer.ggml.model")
    tokens = _get(meta, "tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedTokenizer("the GGUF has no tokenizer.ggml.tokens")
    tokens = list(tokens)
    types = list(_get(meta, "tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens)))
    pre = str(_get(meta, "tokenizer.ggml.pre", "default"))
    if model == "bert":
        return _wordpiece(meta, tokens, types)
    if model == "t5":
        return _unigram(meta, tokens, types)
    if model == "gpt2":
        tok = _byte_level_bpe(meta, tokens)
        add_bos_default = pre in _ADD_BOS_DEFAULT
    elif model == "gemma4" or (model == "llama" and pre == "gemma4" and _get(meta, "tokenizer.ggml.merges")):
        # (Ollama's own gemma4 files say "llama" with the gemma4 pre-tokenizer and carry the merges)
        tok = _gemma4_bpe(meta, tokens, types)
        add_bos_default = True
    elif model == "llama":
        tok = _sentencepiece_bpe(meta, tokens, types)
        add_bos_default = True
    else:
        raise UnsupportedTokenizer(
            f"tokenizer.ggml.model {model!r} is not supported (supported: 'gpt2' byte-level BPE, "
            "'llama' sentencepiece, 'gemma4' BPE, 'bert' WordPiece, 't5' unigram)"
        )

    # CONTROL tokens are special (skipped by decode(skip_special_tokens=True));
    # USER_DEFINED ones (e.g. <think>) are added but not special, so they are
    # still matched whole yet rendered in output, as llama.cpp does.
    control = [
        AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL and t
    ]
    user = [
        AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_USER_DEFINED and t
    ]
    if control:
        tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)

    bos_id = _get(meta, "tokenizer.ggml.bos_token_id")
    eos_id = _get(meta, "tokenizer.ggml.eos_token_id")
    add_bos = bool(_get(meta, "tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(_get(meta, "tokenizer.ggml.add_eos_token", False))
    bos, eos = _tok(tokens, bos_id), _tok(tokens, eos_id)
    add_bos = add_bos and bos is not None
    add_eos = add_eos and eos is not None
    if add_bos or add_eos:
        single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
        pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
        special = []
        if add_bos:
            special.append((bos, int(bos_id)))
        if add_eos and eos != bos:
            special.append((eos, int(eos_id)))
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    elif model == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    eog: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        v = _get(meta, f"tokenizer.ggml.{key}")
        if v is not None and 0 <= int(v) < len(tokens) and int(v) not in eog:
            eog.append(int(v))
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if t in _EOG_TEXTS and ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED) and i not in eog:
            eog.append(i)

    facts = {
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": _tok(tokens, _get(meta, "tokenizer.ggml.unknown_token_id")),
        "pad_token": _tok(tokens, _get(meta, "tokenizer.ggml.padding_token_id")),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token_id": int(bos_id) if bos is not None else None,
        "eos_token_ids": eog,
        "control_tokens": [t.content for t in control],
    }
    return tok, facts


def write_tokenizer_files(
    meta: Mapping[str, Any], out_dir: str | Path, model_max_length: int | None = None
) -> TokenizerInfo:
    out = Path(out_dir)
    tok, facts = build_tokenizer(meta)
    tok.save(str(out / "tokenizer.json"))

    specials = {
        k: facts[k]
        for k in ("bos_token", "eos_token", "unk_token", "pad_token", "cls_token", "sep_token", "mask_token")
        if facts.get(k)
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": facts["add_bos_token"],
        "add_eos_token": facts["add_eos_token"],
        # decode(encode(s)) must give s back; llama.cpp's space cleanup would not.
        "clean_up_tokenization_spaces": False,
    }
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    special_map: dict[str, Any] = dict(specials)
    extra = [t for t in facts["control_tokens"] if t not in specials.values()]
    if extra:
        special_map["additional_special_tokens"] = extra
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False))

    return TokenizerInfo(
        files=["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"],
        bos_token_id=facts["bos_token_id"],
        eos_token_ids=facts["eos_token_ids"],
        add_bos_token=facts["add_bos_token"],
        vocab_size=len(_get(meta, "tokenizer.ggml.tokens")),
    )
