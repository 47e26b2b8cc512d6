"""Structured outputs (`format`, reference §9) enforced while decoding, with llguidance.

The grammar is a per-request mlx-lm logits processor, so constrained and free requests share one
batch. Masks are computed by llguidance on the CPU and applied with plain MLX ops, which run on
every backend (llguidance's own MLX helper is a Metal kernel).
"""

from __future__ import annotations

import json
import threading

import numpy as np

# Ollama's "json" grammar is an object at the root (llama.cpp's json grammar).
JSON_OBJECT_SCHEMA = {"type": "object"}

# llama.cpp's schema grammars allow one space or a newline plus up to 20 indentation characters
# between tokens. Unbounded whitespace is how small models loop forever inside a JSON value.
_COMPILE_OPTIONS = {"whitespace_pattern": r"(?: |\n[ \t]{0,20})"}


class FormatError(ValueError):
    pass


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = (
    "items",
    "additionalItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
)


def closed_objects(schema):
    """llama.cpp's reading of a schema, which Ollama's users write against: an object that lists
    its properties takes no others unless additionalProperties says so (the JSON Schema default
    would let a model run on with invented keys)."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed_objects(v) for k, v in out[key].items()}
    for key in _SCHEMA_LISTS + _SCHEMA_ONE:
        if key in out:
            out[key] = closed_objects(out[key])
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def format_grammar(fmt) -> str | None:
    """The llguidance grammar for a request's `format`, None when unconstrained.
    Raises FormatError for a schema llguidance cannot compile."""
    import llguidance

    if fmt is None or fmt == "":
        return None
    schema = JSON_OBJECT_SCHEMA if fmt == "json" else fmt
    if not isinstance(schema, dict):
        raise FormatError('format must be "json" or a JSON schema object')
    schema = closed_objects(schema)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=_COMPILE_OPTIONS)
    except (ValueError, TypeError) as e:
        raise FormatError(str(e)) from e
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise FormatError(problem)
    return grammar


class GrammarTokenizer:
    """llguidance's view of one model's tokenizer; building it walks the vocabulary (up to a
    second for 150k tokens), so it is built once per loaded model, on first use."""

    def __init__(self, tokenizer, n_vocab: int, eos_ids):
        import llguidance

        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise FormatError("structured outputs need a fast (tokenizers) tokenizer")
        n_vocab = max(n_vocab, backend.get_vocab_size(with_added_tokens=True))
        self.ll = llguidance.LLTokenizer(backend.to_str(), n_vocab=n_vocab, eos_token=sorted(eos_ids))
        self.n_vocab = n_vocab


class LazyGrammarTokenizer:
    def __init__(self):
        self._lock = threading.Lock()
        self._value: GrammarTokenizer | None = None

    def get(self, tokenizer, n_vocab: int, eos_ids) -> GrammarTokenizer:
        with self._lock:
            if self._value is None:
                self._value = GrammarTokenizer(tokenizer, n_vocab, eos_ids)
            return self._value


class GrammarProcessor:
    """mlx-lm logits processor: masks every token the grammar cannot take next.

    mlx-lm calls a processor once per generated token with the token history; from the second
    call on, the last history token is the one sampled after the previous call, which the matcher
    consumes before computing the next mask.

    With `gate` (a ThinkGate) the grammar waits until reasoning ends, so the JSON constraint
    applies to the answer only (reference §7.4).
    """

    def __init__(self, gtok: GrammarTokenizer, grammar: str, gate: "ThinkGate | None" = None):
        import llguidance

        self.matcher = llguidance.LLMatcher(gtok.ll, grammar)
        if self.matcher.is_error():
            raise FormatError(self.matcher.get_error())
        self.n_vocab = gtok.n_vocab
        self.eos = list(gtok.ll.eos_tokens)
        self.gate = gate
        self.calls = 0
        self.bitmask = np.full((1, (self.n_vocab + 31) // 32), -1, dtype=np.int32)

    def _allowed(self, width: int) -> np.ndarray:
        from llguidance.numpy import fill_next_token_bitmask

        if self.matcher.is_error():
            allowed = np.zeros(width, dtype=bool)
            allowed[[e for e in self.eos if e < width]] = True
            return allowed
        fill_next_token_bitmask(self.matcher, self.bitmask)
        bits = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[: self.n_vocab].astype(bool)
        if bits.shape[0] < width:
            bits = np.concatenate([bits, np.zeros(width - bits.shape[0], dtype=bool)])
        return bits[:width]

    def _take(self, token: int) -> None:
        gate = self.gate
        if gate is None or gate.state == ThinkGate.ANSWER:
            self.matcher.consume_token(token)
        elif gate.state == ThinkGate.START and token not in gate.open_ids:
            gate.state = ThinkGate.ANSWER
            self.matcher.consume_token(token)
        else:
            gate.feed(token)

    def __call__(self, tokens, logits):
        import mlx.core as mx

        if self.calls:
            self._take(int(tokens[-1].item()))
        self.calls += 1
        if self.gate is not None and self.gate.state == ThinkGate.THINKING:
            return logits
        width = logits.shape[-1]
        allowed = self._allowed(width)
        if self.gate is not None and self.gate.state == ThinkGate.START:
            # A thinking model's first token may open its reasoning instead of answering.
            for tid in self.gate.open_ids:
                if tid < width:
                    allowed[tid] = True
        return mx.where(mx.array(allowed), logits, mx.array(-float("inf"), dtype=logits.dtype))


class ThinkGate:
    """Follows generated tokens to tell when reasoning is over and the grammar should start.

    START: the model may open its reasoning with its first token (open_ids) or answer at once;
    THINKING: unconstrained until the close tag has been generated; ANSWER: grammar applies.
    A prompt that pre-opens the reasoning block starts in THINKING.
    """

    START, THINKING, ANSWER = range(3)

    def __init__(self, decode_token, close_tag: str, open_ids: list[int], opened: bool):
        self.decode_token = decode_token
        self.close_tag = close_tag
        self.open_ids = set(open_ids)
        self.state = self.THINKING if opened else self.START
        self.text = ""

    def feed(self, token: int) -> None:
        if self.state == self.START:
            self.state = self.THINKING
            return
        self.text += self.decode_token(token)
        if self.close_tag in self.text:
            self.state = self.ANSWER
        self.text = self.text[-len(self.close_tag) :]
