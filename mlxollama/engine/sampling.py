"""Per-request samplers and logits processors built from Ollama options with mlx-lm's pieces."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors, make_sampler

from ..options import Options

# Below this a temperature picks the most likely token anyway, and 1/temperature would
# overflow float32 (logits * inf is NaN): such temperatures are greedy.
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplerSettings:
    """Sampling options in the ranges mlx-lm's compiled filters accept. Those filters raise
    while being traced when a value is out of range, and an exception inside an mx.compile
    trace that captures mx.random.state leaves a placeholder in the global random state: every
    later random draw on the process then fails ("eval an array without a primitive")."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float

    @classmethod
    def of(cls, opts: Options, vocab_size: int) -> "SamplerSettings":
        temperature = opts.temperature if opts.temperature >= MIN_TEMPERATURE else 0.0
        # Ollama's topP keeps at least the most likely token, so top_p 0 is greedy; 1 disables it.
        top_p = min(max(opts.top_p, 0.0), 1.0)
        if top_p == 0.0:
            temperature = 0.0
        top_k = opts.top_k if 0 < opts.top_k < vocab_size else 0  # top_k >= vocabulary keeps all
        min_p = min(max(opts.min_p, 0.0), 1.0)
        return cls(temperature, top_k, top_p if top_p < 1.0 else 0.0, min_p)

    def filters(self) -> list:
        out = []
        if self.top_p:
            out.append(lambda x: apply_top_p(x, self.top_p))
        if self.min_p:
            out.append(lambda x: apply_min_p(x, self.min_p, 1))
        if self.top_k:
            out.append(lambda x: apply_top_k(x, self.top_k))
        return out


def make_request_sampler(opts: Options, vocab_size: int):
    """Greedy at temperature 0; a seeded sampler owns its own PRNG key so that concurrent
    requests in one batch neither disturb each other nor depend on the global random state.
    As in Ollama, only seed -1 means "random"; any other value (wrapped to 64 bits) is a seed."""
    s = SamplerSettings.of(opts, vocab_size)
    if s.temperature == 0:
        return make_sampler(0.0)
    if opts.seed == -1:
        return make_sampler(temp=s.temperature, top_p=s.top_p, min_p=s.min_p, top_k=s.top_k)
    filters = s.filters()
    inv_temp = 1.0 / s.temperature
    state = {"key": mx.random.key(opts.seed % (1 << 64))}

    def seeded(logprobs: mx.array) -> mx.array:
        for f in filters:
            logprobs = f(logprobs)
        state["key"], sub = mx.random.split(state["key"])
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return seeded


def make_request_processors(opts: Options) -> list:
    # repeat_last_n < 0 is the whole window; never more than the window.
    window = opts.num_ctx if opts.repeat_last_n < 0 else min(opts.repeat_last_n, opts.num_ctx)
    # A penalty <= 0 has no meaning (dividing logits by it): it leaves the logits alone.
    repeat = opts.repeat_penalty if window and opts.repeat_penalty > 0 and opts.repeat_penalty != 1.0 else None
    return make_logits_processors(
        repetition_penalty=repeat,
        repetition_context_size=window,
        presence_penalty=opts.presence_penalty or None,
        presence_context_size=window or 64,
        frequency_penalty=opts.frequency_penalty or None,
        frequency_context_size=window or 64,
    )


_SPM_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def token_bytes(tokenizer, tid: int) -> bytes:
    """The raw bytes a token stands for; a token may hold part of a UTF-8 character, so
    decoding it alone would lose bytes that the joined `bytes` fields must keep."""
    if tid in getattr(tokenizer, "all_special_ids", ()):
        return tokenizer.decode([tid]).encode("utf-8")
    piece = tokenizer.convert_ids_to_tokens(tid)
    if piece is None:
        return b""
    byte_decoder = _byte_decoder()
    if all(c in byte_decoder for c in piece):
        return bytes(byte_decoder[c] for c in piece)
    if m := _SPM_BYTE.match(piece):
        return bytes([int(m.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    # GPT-2 byte-level BPE: printable stand-ins for the 256 byte values.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_logprobs(tokenizer, logprobs: mx.array, token: int, top_n: int) -> dict:
    """One entry of Ollama's `logprobs` array (reference §10)."""

    def piece(tid: int) -> tuple[str, list[int]]:
        raw = token_bytes(tokenizer, tid)
        return raw.decode("utf-8", errors="replace"), list(raw)

    text, raw = piece(token)
    entry = {"token": text, "logprob": float(logprobs[token].item()), "bytes": raw}
    if top_n > 0:
        top = mx.argpartition(-logprobs, kth=top_n - 1)[:top_n]
        values = logprobs[top]
        order = mx.argsort(-values)
        alts = []
        for tid, lp in zip(top[order].tolist(), values[order].tolist()):
            t, b = piece(tid)
            alts.append({"token": t, "logprob": float(lp), "bytes": b})
        entry["top_logprobs"] = alts
    return entry
