"""Fill-in-the-middle prompts from the special tokens a code model's tokenizer carries (§5.6.4).

HF checkpoints have no Ollama TEMPLATE with `.Suffix`, so the format is recognised by its tokens;
the Go template shown by /api/show is derived from the same table, which is what makes Continue
switch FIM on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FimFormat:
    name: str
    prefix: str
    suffix: str
    middle: str | None  # None: suffix-first formats end with the prefix (Codestral)
    go_template: str
    stops: tuple[str, ...] = ()  # tokens that end the middle besides EOS

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t for t in (self.prefix, self.suffix, self.middle) if t)


FIM_FORMATS = (
    FimFormat(
        "qwen",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
        "{{- else }}{{ .Prompt }}{{- end }}",
        ("<|fim_pad|>", "<|endoftext|>", "<|file_sep|>", "<|repo_name|>", "<|file_separator|>"),
    ),
    FimFormat(
        "starcoder",
        "<fim_prefix>",
        "<fim_suffix>",
        "<fim_middle>",
        "{{- if .Suffix }}<fim_prefix>{{ .Prompt }}<fim_suffix>{{ .Suffix }}<fim_middle>"
        "{{- else }}{{ .Prompt }}{{- end }}",
        ("<|endoftext|>", "<fim_pad>", "<file_sep>"),
    ),
    FimFormat(
        "deepseek",
        "<｜fim▁begin｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁end｜>",
        "{{- if .Suffix }}<｜fim▁begin｜>{{ .Prompt }}<｜fim▁hole｜>{{ .Suffix }}<｜fim▁end｜>"
        "{{- else }}{{ .Prompt }}{{- end }}",
        ("<|EOT|>",),
    ),
    FimFormat(
        "codellama",
        "▁<PRE>",
        "▁<SUF>",
        "▁<MID>",
        "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{- else }}{{ .Prompt }}{{- end }}",
        ("▁<EOT>",),
    ),
    FimFormat(
        "codestral",
        "[PREFIX]",
        "[SUFFIX]",
        None,
        "{{- if .Suffix }}[SUFFIX]{{ .Suffix }}[PREFIX] {{ .Prompt }}{{- else }}{{ .Prompt }}{{- end }}",
        ("[MIDDLE]",),
    ),
)


def fim_format_in_text(texts: list[str]) -> FimFormat | None:
    """Cheap detection from tokenizer files as text (catalog side: no tokenizer is loaded).
    Tokens appear as JSON strings; ▁ may be written raw or escaped."""
    for fmt in FIM_FORMATS:

        def present(tok: str) -> bool:
            quoted = [f'"{tok}"', '"' + tok.replace("▁", "\\u2581").replace("｜", "\\uff5c") + '"']
            return any(q in t for t in texts for q in quoted)

        if all(present(t) for t in fmt.tokens):
            return fmt
    return None


def token_id(tokenizer, token: str) -> int | None:
    """A token's id, None when the vocabulary lacks it (cheaper than get_vocab on 150k tokens)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == getattr(tokenizer, "unk_token_id", None) and token != tokenizer.unk_token):
        return None
    return int(tid)


def fim_format_for(tokenizer) -> FimFormat | None:
    """Exact detection from a loaded tokenizer's vocabulary."""
    for fmt in FIM_FORMATS:
        if all(token_id(tokenizer, t) is not None for t in fmt.tokens):
            return fmt
    return None


def fim_tokens(tokenizer, fmt: FimFormat, prefix: str, suffix: str, limit: int | None = None) -> list[int]:
    """The prompt as ids: special tokens by id, so the text around them can never merge into them.
    Over `limit`, the far ends go first: the start of the prefix and the end of the suffix."""
    vocab = {t: token_id(tokenizer, t) for t in fmt.tokens}

    def enc(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False)) if text else []

    lead = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        probe = tokenizer.encode("a", add_special_tokens=True)
        if probe and probe[0] == bos:
            lead = [bos]
    pre, suf = enc(prefix), enc(suffix)
    overhead = len(lead) + len(fmt.tokens)
    if limit is not None and overhead + len(pre) + len(suf) > limit:
        room = max(limit - overhead, 0)
        keep_suf = min(len(suf), room // 3)
        keep_pre = min(len(pre), room - keep_suf)
        keep_suf = min(len(suf), room - keep_pre)
        pre, suf = pre[len(pre) - keep_pre :] if keep_pre else [], suf[:keep_suf]
    if fmt.middle is None:
        return lead + [vocab[fmt.suffix]] + suf + [vocab[fmt.prefix]] + pre
    return lead + [vocab[fmt.prefix]] + pre + [vocab[fmt.suffix]] + suf + [vocab[fmt.middle]]


def fim_stop_ids(tokenizer, fmt: FimFormat) -> list[int]:
    return [tid for tid in (token_id(tokenizer, t) for t in fmt.stops) if tid is not None]
