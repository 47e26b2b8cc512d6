"""Speculative decoding for a model with a DRAFT: the draft model proposes a few tokens, the model
checks them all in one forward pass and keeps the longest run it agrees with, plus one token of
its own. Every kept token is the one the model itself samples at that position, so greedy output
is the same as without a draft; only the number of forward passes of the large model changes.

One stream at a time (the common desktop case): it runs while it is the model's only sequence and
goes back to the continuous batch as soon as another request joins (`handoff`), with its KV cache,
so nobody waits behind it. The same algorithm as mlx-lm's speculative_generate_step, taken one
round per engine step so that the engine can hand the stream over between rounds.

Everything here runs on the model's engine thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import (
    LRUPromptCache,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)
from mlx_lm.utils import load as mlx_lm_load

log = logging.getLogger("mlxollama.engine")

# uids of speculative streams are negative: they never collide with the batch generator's.
_next_uid = [-1]


def kv_cache_bytes(model: nn.Module, num_ctx: int, itemsize: int) -> int:
    """A full KV cache at num_ctx (0 when the model's shape cannot be read)."""
    args = getattr(model, "args", None)
    try:
        heads = args.num_attention_heads
        kv_heads = getattr(args, "num_key_value_heads", None) or heads
        head_dim = getattr(args, "head_dim", None) or args.hidden_size // heads
        return 2 * len(model.layers) * kv_heads * head_dim * itemsize * num_ctx
    except (AttributeError, TypeError):
        return 0


def accepted_prefix(drafted: list[int], sampled: list[int]) -> int:
    """How many drafted tokens the model agrees with: the length of their common leading run."""
    n = 0
    while n < len(drafted) and n < len(sampled) and drafted[n] == sampled[n]:
        n += 1
    return n


def round_tokens(
    drafted: list[int], sampled: list[int], remaining: int, stop_ids: set[int]
) -> tuple[list[int], str | None]:
    """The tokens one round yields and why the stream ends (None: it goes on).

    `sampled` holds the model's own token at each of len(drafted) + 1 positions: the agreed
    drafted run and the model's token after it are kept, cut at the first stop token (which is
    yielded, as the batch yields it, and ends the stream with "stop") or at `remaining` ("length")."""
    kept = sampled[: accepted_prefix(drafted, sampled) + 1]
    out: list[int] = []
    for t in kept:
        out.append(t)
        if t in stop_ids:
            return out, "stop"
        if len(out) == remaining:
            return out, "length"
    return out, None


@dataclass
class Response:
    """What the engine's _deliver reads of a batch response (mlx-lm's BatchGenerator.Response)."""

    uid: int
    token: int
    logprobs: mx.array
    finish_reason: str | None = None
    prompt_cache: list | None = None
    all_tokens: list[int] | None = None


@dataclass
class DraftStats:
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class Drafter:
    """The draft model of one loaded model, with a prompt cache of its own (it must read every
    prompt too, and a chat's history would otherwise be prefilled by it on every turn)."""

    def __init__(self, draft_dir: Path, prepare, cache_entries: int, cache_bytes: int):
        self.model, _ = mlx_lm_load(str(draft_dir))
        prepare(self.model)  # the backend's dtypes, as for the main model
        mx.eval(self.model.parameters())
        self.weights_bytes = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        self.key = str(draft_dir)
        self.prompt_cache = LRUPromptCache(max_size=cache_entries, max_bytes=cache_bytes)
        self.stats = DraftStats()

    def memory_bytes(self, num_ctx: int, itemsize: int) -> int:
        return self.weights_bytes + kv_cache_bytes(self.model, num_ctx, itemsize)

    def fetch(self, tokens: list[int]) -> tuple[list, int]:
        """The draft's cache for the longest cached prefix of `tokens` (leaving the last one to feed)."""
        cache, rest = self.prompt_cache.fetch_nearest_cache(self.key, tokens)
        if cache is not None and not rest:
            trim_prompt_cache(cache, 1)
            rest = tokens[-1:]
        if cache is None:
            return make_prompt_cache(self.model), 0
        return cache, len(tokens) - len(rest)

    def save(self, cache: list, tokens: list[int]) -> None:
        if tokens:
            self.prompt_cache.insert_cache(self.key, list(tokens), cache)


def speculation_possible(model: nn.Module, draft: Drafter | None) -> bool:
    """Rejected drafts are cut off the KV cache: every cache of both models must be trimmable."""
    return (
        draft is not None
        and can_trim_prompt_cache(make_prompt_cache(model))
        and can_trim_prompt_cache(make_prompt_cache(draft.model))
    )


class SpeculativeStream:
    """One sequence decoding speculatively: `step()` runs one prefill chunk or one draft-and-verify
    round and returns the tokens it produced as batch-like responses.

    Invariant between rounds: `tokens` holds the prompt and every generated token; the main cache
    holds the first `main_len` of them and the draft cache the first `draft_len`. After the prefill
    main_len is len(tokens) - 1 (the newest token is the next input), which is what the batch
    generator takes when the stream is handed over."""

    def __init__(
        self,
        model: nn.Module,
        drafter: Drafter,
        tokens: list[int],
        main_cache: list,
        main_len: int,
        *,
        max_tokens: int,
        sampler,
        processors: list,
        stop_ids: set[int],
        num_draft: int,
        prefill_step: int,
    ):
        self.uid = _next_uid[0]
        _next_uid[0] -= 1
        self.model = model
        self.drafter = drafter
        self.tokens = list(tokens)
        self.main_cache, self.main_len = main_cache, main_len
        self.draft_cache, self.draft_len = drafter.fetch(self.tokens)
        self.prompt_len = len(tokens)
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.processors = processors
        self.stop_ids = stop_ids
        self.num_draft = max(0, num_draft)
        self.prefill_step = max(1, prefill_step)
        self.generated = 0
        self.stats = DraftStats()

    # -- stepping ------------------------------------------------------------------------------

    def step(self) -> list[Response]:
        if self._prefill():
            return []
        remaining = self.max_tokens - self.generated
        # The model adds a token of its own to every round: draft at most one fewer than remain.
        k = min(self.num_draft, remaining - 1)
        base = len(self.tokens)
        drafted = self._draft(k)
        verify = mx.concatenate([mx.array(self.tokens[-1:], mx.uint32), *drafted]) if drafted else None
        if verify is None:
            verify = mx.array(self.tokens[-1:], mx.uint32)
        logits = self.model(verify[None], cache=self.main_cache)[0]
        self.main_len += k + 1
        rows = [self._processed(logits[i : i + 1], drafted[:i]) for i in range(k + 1)]
        logprobs = mx.concatenate(rows, axis=0)
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
        sampled = self.sampler(logprobs)
        draft_ids = mx.concatenate(drafted) if drafted else mx.array([], mx.uint32)
        mx.eval(sampled, draft_ids)
        drafted_list, sampled_list = draft_ids.tolist(), sampled.tolist()
        out, finish = round_tokens(drafted_list, sampled_list, remaining, self.stop_ids)
        agreed = accepted_prefix(drafted_list, sampled_list)
        for s in (self.stats, self.drafter.stats):
            s.drafted += k
            s.accepted += agreed
            s.rounds += 1
        # Keep of each cache only what the kept tokens agree with (see the class invariant).
        valid = base + min(agreed, len(out) - 1)
        self._trim_to(valid, self.draft_len)
        self.tokens += out
        self.generated += len(out)
        responses = [Response(self.uid, t, logprobs[i]) for i, t in enumerate(out)]
        if finish is not None:
            self._finish_caches()
            last = responses[-1]
            last.finish_reason, last.prompt_cache, last.all_tokens = finish, self.main_cache, list(self.tokens)
            self.drafter.save(self.draft_cache, self.tokens[: self.draft_len])
            log.debug(
                "speculative stream: %d tokens in %d rounds, %d of %d drafted tokens accepted",
                self.generated,
                self.stats.rounds,
                self.stats.accepted,
                self.stats.drafted,
            )
        return responses

    def _prefill(self) -> bool:
        """One chunk of the prompt for each model that still has more than the last token to
        read (the last one is the first round's input); True while there was any."""
        end = len(self.tokens) - 1
        work = False
        for model, cache, attr in (
            (self.model, self.main_cache, "main_len"),
            (self.drafter.model, self.draft_cache, "draft_len"),
        ):
            done = getattr(self, attr)
            if done < end:
                n = min(self.prefill_step, end - done)
                model(mx.array(self.tokens[done : done + n], mx.uint32)[None], cache=cache)
                mx.eval([c.state for c in cache])
                setattr(self, attr, done + n)
                work = True
        return work

    def _draft(self, k: int) -> list[mx.array]:
        """k proposed tokens (lazy arrays), greedily from the draft: the draft's own sampling
        decides nothing but how many tokens are accepted."""
        drafted: list[mx.array] = []
        if k <= 0:
            return drafted
        inputs = mx.array(self.tokens[self.draft_len :], mx.uint32)
        for i in range(k):
            logits = self.drafter.model(inputs[None], cache=self.draft_cache)[:, -1, :]
            self.draft_len += inputs.size
            y = mx.argmax(self._processed(logits, drafted), axis=-1).astype(mx.uint32)
            mx.async_eval(y)
            drafted.append(y)
            inputs = y
        return drafted

    def _processed(self, logits: mx.array, drafted: list[mx.array]) -> mx.array:
        """The request's logits processors (repetition and the like) with the context the batch
        generator gives them: every token up to and including this position's input."""
        if not self.processors:
            return logits
        context = mx.array(self.tokens, mx.int32)
        if drafted:
            context = mx.concatenate([context, *[d.astype(mx.int32) for d in drafted]])
        for p in self.processors:
            logits = p(context, logits)
        return logits

    def _trim_to(self, main_len: int, draft_len: int) -> None:
        main_len, draft_len = min(main_len, self.main_len), min(main_len, draft_len)
        trim_prompt_cache(self.main_cache, self.main_len - main_len)
        trim_prompt_cache(self.draft_cache, self.draft_len - draft_len)
        self.main_len, self.draft_len = main_len, draft_len

    def _finish_caches(self) -> None:
        """A finished sequence's cache goes into the prompt cache, which takes a cache together with
        every token it holds: feed the model the tokens it has not read yet (as the batch does)."""
        rest = self.tokens[self.main_len :]
        if rest:
            self.model(mx.array(rest, mx.uint32)[None], cache=self.main_cache)
            mx.eval([c.state for c in self.main_cache])
            self.main_len = len(self.tokens)

    # -- leaving -------------------------------------------------------------------------------

    def take_out(self) -> dict[int, tuple[list, list[int]]]:
        """BatchGenerator.remove(..., return_prompt_caches=True) for this stream: its caches, each
        with the tokens it holds."""
        self.drafter.save(self.draft_cache, self.tokens[: self.draft_len])
        return {self.uid: (self.main_cache, self.tokens[: self.main_len])}

    def handoff(self, batch, *, sampler, processors, stops) -> int:
        """Continue this sequence in the continuous batch, from its KV cache: its uid there."""
        self.drafter.save(self.draft_cache, self.tokens[: self.draft_len])
        cached = self.main_len
        (uid,) = batch.insert(
            [self.tokens[cached:]],
            max_tokens=[self.max_tokens - self.generated],
            caches=[self.main_cache if cached else None],
            all_tokens=[self.tokens[:cached]],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[stops],
        )
        return uid
