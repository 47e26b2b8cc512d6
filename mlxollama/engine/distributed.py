"""One model across several processes with MLX's distributed engine (mx.distributed).

`mlxollama serve` started by `mlx.launch` (or one process per machine with MLX_RANK and
MLX_HOSTFILE set, as launchd starts it) forms one server: rank 0 owns HTTP, the store, the
scheduler and tokenization; every other rank runs `run_follower`, which has no HTTP at all.

Lockstep. A sharded model's engine thread on rank 0 records every change it makes to its
BatchGenerator and prompt cache (sequences joining with their tokens and max_tokens, removals,
caches kept) and, before each batch step, broadcasts that list as one message: an all_sum of a
byte buffer to which only rank 0 contributes (a length, then JSON). Followers replay the list on
their own shard (same calls, same order, so the same batch uids and prompt-cache hits, which
they check) and step too. Sampling happens once: rank 0's sampler (with its grammar, penalties
and seed) picks the tokens and an all_sum inside the step hands them to every rank, whose own
"sampler" only takes them, so followers need no tokenizer state, processors or random state.

Faults. Every collective of rank 0's engine thread runs under a watchdog: a peer that dies
makes the collective fail (the ring backend notices within about a second); one that hangs
leaves the engine thread blocked for ever, so the watchdog, on its own thread, declares the
group down after MLXOLLAMA_DISTRIBUTED_TIMEOUT, fails the in-flight requests and refuses new
ones for that model. /api/ps shows the state. Any failure inside a distributed step also takes
the group down: the ranks can no longer be assumed to be at the same collective. Restarting the
launch brings the group back.

Weights. Each rank reads its shard from its own store, by the manifest digest rank 0 names
(pull the model on every machine; a rank whose store lacks that digest fails the load on all
ranks with a clear error). One model is sharded over the group at a time; embedding models and
models small enough for rank 0 (MLXOLLAMA_DISTRIBUTED_MIN_SIZE) run on rank 0 alone.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.generate import StopSequences
from mlx_lm.models.cache import LRUPromptCache
from mlx_lm.utils import load as mlx_lm_load

from ..config import Config
from .group import Group, GroupDown, current_group, group_down_text
from .jobs import EngineError
from .llm import EngineSettings, LoadedLLM

log = logging.getLogger("mlxollama.distributed")

TENSOR, PIPELINE = "tensor", "pipeline"
# First collective of a message: this many bytes (a 4-byte length, then the payload); a longer
# payload follows in a second all_sum of exactly its remaining size. A plain step's message is
# about 25 bytes; a newcomer's prompt tokens take the second collective.
_BLOCK = 256
# Ranks evict prompt caches by entry count only: a byte limit would evict at different times on
# ranks that hold different amounts of each cache, and the caches must stay mirrored.
_UNBOUNDED_BYTES = 1 << 62


# --- the control channel -----------------------------------------------------------------------


class Channel:
    """Rank 0 broadcasts JSON messages; every rank runs the same collectives in the same order."""

    def __init__(self, group: Group, stream=None):
        self.group = group
        self.stream = stream
        self.bytes_sent = 0  # bytes put into control all_sums (logged at unload; the benchmark reads it)

    def _all_sum(self, buf: np.ndarray) -> np.ndarray:
        out = mx.distributed.all_sum(mx.array(buf), group=self.group.group, stream=self.stream)
        mx.eval(out)
        return np.array(out)

    def send(self, message: dict) -> None:
        payload = json.dumps(message, separators=(",", ":")).encode()
        head = np.zeros(_BLOCK, np.uint8)
        head[:4] = np.frombuffer(len(payload).to_bytes(4, "little"), np.uint8)
        first = payload[: _BLOCK - 4]
        head[4 : 4 + len(first)] = np.frombuffer(first, np.uint8)
        self._all_sum(head)
        self.bytes_sent += _BLOCK
        if len(payload) > len(first):
            self._all_sum(np.frombuffer(payload[len(first) :], np.uint8).copy())
            self.bytes_sent += len(payload) - len(first)

    def receive(self) -> dict:
        head = self._all_sum(np.zeros(_BLOCK, np.uint8))
        length = int.from_bytes(head[:4].tobytes(), "little")
        payload = head[4 : 4 + min(length, _BLOCK - 4)].tobytes()
        if length > len(payload):
            payload += self._all_sum(np.zeros(length - len(payload), np.uint8)).tobytes()
        return json.loads(payload)

    def agree(self, ok: bool) -> int:
        """How many ranks report ok (every rank calls this at the same point)."""
        return int(self._all_sum(np.array([1 if ok else 0], np.int32))[0])


class Watchdog:
    """Notices a collective that does not return: `on_timeout(seconds)` runs on its own thread."""

    def __init__(self, timeout_s: float, on_timeout):
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout
        self._since: float | None = None
        self._fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="distributed-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self):
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while not self._stop.wait(min(0.2, self.timeout_s / 4)):
            since = self._since
            if since is not None and not self._fired and time.monotonic() - since > self.timeout_s:
                self._fired = True
                self.on_timeout(self.timeout_s)

    def close(self) -> None:
        self._stop.set()


# --- which models are sharded, and how -------------------------------------------------------------


def _model_module(config: dict):
    from mlx_lm.utils import _get_classes

    model_class, _ = _get_classes(config)
    return importlib.import_module(model_class.__module__)


def supported_modes(config: dict, size: int) -> list[str]:
    """Tensor parallelism where the architecture has shard() and its heads divide by the group
    size; pipeline parallelism where mlx-lm pipelines it (or it is the llama family, which this
    module pipelines) and there are at least as many layers as ranks."""
    try:
        module = _model_module(config)
    except (ValueError, KeyError):
        return []
    text = config.get("text_config") or config
    heads = int(text.get("num_attention_heads") or 0)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    layers = int(text.get("num_hidden_layers") or 0)
    modes = []
    if hasattr(module.Model, "shard") and heads and heads % size == 0 and kv_heads % size == 0:
        modes.append(TENSOR)
    from mlx_lm.models.pipeline import PipelineMixin

    pipelined = any(isinstance(c, type) and issubclass(c, PipelineMixin) for c in vars(module).values())
    if (pipelined or module.__name__ == "mlx_lm.models.llama") and layers >= size:
        modes.append(PIPELINE)
    return modes


def choose_mode(config: dict, size: int, wanted: str) -> str | None:
    """The mode to shard with: the one asked for when the model supports it, else tensor, else pipeline."""
    modes = supported_modes(config, size)
    if wanted in modes:
        return wanted
    if wanted:
        log.warning("MLXOLLAMA_DISTRIBUTED=%s is not possible for this model (it supports: %s)", wanted, modes)
    return modes[0] if modes else None


def shard_model(model, mode: str, group) -> None:
    """Keep only this rank's part of a lazily loaded model (nothing is read from disk yet)."""
    if mode == TENSOR:
        model.shard(group)
    elif hasattr(model.model, "pipeline"):
        model.model.pipeline(group)
    else:
        from .pipeline_llama import pipeline_llama

        pipeline_llama(model, group)


# --- rank 0 ------------------------------------------------------------------------------------------


class _RecordingCache:
    """Rank 0's prompt cache: every insert becomes a `save` op the followers replay with their own
    cache for the same sequence (named by its batch uid)."""

    def __init__(self, inner: LRUPromptCache, llm: "DistributedLLM"):
        self._inner = inner
        self._llm = llm

    def insert_cache(self, model, tokens, prompt_cache, **kw):
        uid = self._llm.cache_owner.pop(id(prompt_cache), None)
        if uid is not None:
            self._llm.ops.append(["save", uid, [int(t) for t in tokens]])
            self._inner.insert_cache(model, tokens, prompt_cache, **kw)
        else:  # not from this group's batch: keeping it would let the caches drift apart
            log.debug("prompt cache insert without a batch uid: not kept")

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _RecordingBatch:
    """Rank 0's BatchGenerator: removals and resets are recorded; each step first broadcasts the
    recorded ops, then steps, under the watchdog."""

    def __init__(self, inner, llm: "DistributedLLM"):
        self._inner = inner
        self._llm = llm

    def remove(self, uids, return_prompt_caches=False):
        self._llm.ops.append(["remove", [int(u) for u in uids], bool(return_prompt_caches)])
        saved = self._inner.remove(uids, return_prompt_caches=return_prompt_caches)
        for uid, (cache, _tokens) in saved.items():
            self._llm.cache_owner[id(cache)] = int(uid)
        return saved

    def next(self):
        llm = self._llm
        if llm.group.down:
            raise GroupDown(llm.group.down)
        try:
            with llm.watchdog.guard():
                llm.channel.send({"op": "step", "ops": llm.ops})
                llm.ops = []
                prompt_responses, responses = self._inner.next()
        except Exception as e:
            llm.group_failed("a step of the group failed", f"{type(e).__name__}: {e}")
            raise GroupDown(llm.group.down) from e
        llm.steps += 1
        llm.tokens += len(responses)
        for r in responses:
            if r.finish_reason is not None and r.prompt_cache is not None:
                llm.cache_owner[id(r.prompt_cache)] = int(r.uid)
        return prompt_responses, responses

    def close(self):
        self._llm.ops.append(["reset"])
        self._inner.close()

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _stop_ids(stops) -> list[int]:
    """The single-token stop sequences a StopSequences was built from (its trie's first level)."""
    return sorted(k for k in getattr(stops, "_root", {}) if isinstance(k, int))


class DistributedLLM(LoadedLLM):
    """Rank 0's side of a model sharded over the group."""

    def __init__(
        self,
        model_dir: Path,
        settings: EngineSettings,
        group: Group,
        mode: str,
        name: str,
        digest: str,
        timeout_s: float,
        on_down,
    ):
        self.group = group
        self.mode = mode
        self.on_down = on_down
        self.ops: list = []
        self.cache_owner: dict[int, int] = {}
        self.steps = 0
        self.tokens = 0
        self.channel = Channel(group)
        self.watchdog = Watchdog(timeout_s, lambda s: self.group_failed(f"a rank did not answer within {s:g}s"))
        load = {"op": "load", "name": name, "digest": digest, "mode": mode, "settings": _settings_message(settings)}
        ok = False
        try:
            with self.watchdog.guard():
                self.channel.send(load)
            try:
                super().__init__(model_dir, settings)
                if not self.batchable:
                    raise EngineError(
                        "this model cannot run across the distributed group (its cache cannot batch)", 500
                    )
                ok = True
            finally:
                with self.watchdog.guard():
                    ready = self.channel.agree(ok)
        except Exception:
            self.watchdog.close()
            raise
        if ok and ready < group.size:
            self.watchdog.close()
            raise EngineError(
                f"{group.size - ready} rank(s) of the distributed group could not load the model "
                "(pull it on every machine; see their logs)",
                500,
            )
        self.channel.stream = self.stream
        self.prompt_cache = _RecordingCache(
            LRUPromptCache(max_size=self.settings.prompt_cache_entries, max_bytes=_UNBOUNDED_BYTES), self
        )
        self.disk_cache = None  # a disk hit on rank 0 alone would put the ranks' caches out of step
        log.info("%s sharded over %d ranks (%s parallel)", name, group.size, mode)

    def _load_model(self, model_dir: Path):
        model, tokenizer = mlx_lm_load(str(model_dir), lazy=True)
        shard_model(model, self.mode, self.group.group)
        return model, tokenizer

    def _densify_for_cpu(self) -> bool:
        return False  # sharded layers are not the plain quantized layers cpu_dense.py rewrites

    def _generator(self):
        if self.batch is None:
            self.batch = _RecordingBatch(super()._generator(), self)
        return self.batch

    def _enqueue(self, tokens, max_tokens, sampler, processors, stops):
        uid, cached = super()._enqueue(tokens, max_tokens, _broadcasting(sampler, self.group.group), processors, stops)
        self.ops.append(["enqueue", [int(t) for t in tokens], int(max_tokens), _stop_ids(stops), int(uid), cached])
        return uid, cached

    def admit(self, job) -> None:
        if self.group.down:
            raise EngineError(group_down_text(self.group.down), 503)
        super().admit(job)

    def step(self) -> None:
        if self.group.down:
            self._fail_active(group_down_text(self.group.down))
            return
        super().step()

    def embed(self, job) -> None:
        raise EngineError("embeddings from a model sharded across the distributed group are not supported", 400)

    def group_failed(self, reason: str, detail: str = "") -> None:
        """Mark the group down (once), fail every request in flight, tell the runner. Any thread.

        `reason` reaches clients and /api/ps; `detail` (MLX's own words) only the log."""
        with self.group.lock:
            if self.group.down:
                return
            self.group.down = reason
        log.error("%s%s", group_down_text(reason), f" ({detail})" if detail else "")
        self._fail_active(group_down_text(reason))
        if self.on_down is not None:
            self.on_down(group_down_text(reason))

    def _fail_active(self, text: str) -> None:
        from .jobs import ErrorEvent

        for a in list(self.active.values()):
            a.job.emit(ErrorEvent(text, 503))
        self.active.clear()

    def close(self) -> None:
        self.watchdog.close()
        log.info(
            "control messages: %d bytes over %d batch steps (%d decoded tokens)",
            self.channel.bytes_sent,
            self.steps,
            self.tokens,
        )
        if not self.group.down:
            try:
                with self.watchdog.guard():
                    self.channel.send({"op": "unload"})
            except Exception as e:  # noqa: BLE001 - unloading anyway
                self.group_failed("a rank left while the model unloaded", str(e))
        with self.group.lock:
            self.group.owner = None
        if self.batch is not None:
            self.batch = self.batch._inner  # a closing batch has nothing left to tell the followers
        super().close()

    def info(self) -> dict:
        """What /api/ps shows of the group."""
        return {
            "ranks": self.group.size,
            "mode": self.mode,
            "status": "down" if self.group.down else "up",
            **({"error": self.group.down} if self.group.down else {}),
        }


def _broadcasting(sampler, group):
    """Rank 0 samples; the all_sum (followers add zeros) hands the tokens to every rank."""

    def sample(logprobs):
        return mx.distributed.all_sum(sampler(logprobs).astype(mx.int32), group=group)

    return sample


def _receiving(group):
    """A follower's sampler: the tokens rank 0 sampled. The zeros depend on the logits so the
    all_sum runs after this step's forward collectives on every rank, in the same order."""

    def sample(logprobs):
        zeros = mx.depends(mx.zeros(logprobs.shape[:-1], mx.int32), logprobs)
        return mx.distributed.all_sum(zeros, group=group)

    return sample


def _settings_message(settings: EngineSettings) -> dict:
    return {
        "num_parallel": settings.num_parallel,
        "prefill_step": settings.prefill_step,
        "prompt_cache_entries": settings.prompt_cache_entries,
        "kv_cache_type": getattr(settings, "kv_cache_type", "f16"),
    }


def load_sharded(spec, model_dir: Path, config: Config, runner=None):
    """Rank 0: the model sharded over the group, or None when it runs on rank 0 alone."""
    group = current_group()
    if group.size <= 1 or spec.kind != "llm":
        return None
    min_size = config.distributed_min_size if config.distributed_min_size >= 0 else config.memory_budget // 4
    if spec.size < min_size:
        log.info("%s (%d bytes) runs on rank 0 alone (MLXOLLAMA_DISTRIBUTED_MIN_SIZE)", spec.short_name, spec.size)
        return None
    try:
        hf_config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    mode = choose_mode(hf_config, group.size, config.distributed)
    if mode is None:
        log.info("%s cannot be sharded (no shard() or pipeline for it): it runs on rank 0 alone", spec.short_name)
        return None
    with group.lock:
        if group.down:
            raise EngineError(group_down_text(group.down), 503)
        if group.owner is not None:
            raise EngineError(f"the distributed group is serving {group.owner}; one sharded model at a time", 503)
        group.owner = spec.short_name
    on_down = None
    if runner is not None:

        def on_down(text: str) -> None:
            runner.group_down = text
            runner.loop.call_soon_threadsafe(runner.abort, text)

    settings = EngineSettings.from_config(config)
    try:
        llm = DistributedLLM(
            model_dir, settings, group, mode, str(spec.name), spec.digest_hex, config.distributed_timeout, on_down
        )
    except BaseException:
        with group.lock:
            group.owner = None
        raise
    if runner is not None:
        runner.distributed = llm.info
    return llm


# --- followers -----------------------------------------------------------------------------------


class FollowerLLM(LoadedLLM):
    """A follower's shard: it replays rank 0's ops and steps when told."""

    def __init__(self, model_dir: Path, settings: EngineSettings, group: Group, mode: str):
        self.group = group
        self.mode = mode
        self.finished: dict[int, list] = {}  # caches of sequences that ended in the last step
        self.removed: dict[int, list] = {}  # caches of sequences removed with their cache kept
        super().__init__(model_dir, settings)
        self.prompt_cache = LRUPromptCache(max_size=self.settings.prompt_cache_entries, max_bytes=_UNBOUNDED_BYTES)
        self.disk_cache = None

    _load_model = DistributedLLM._load_model
    _densify_for_cpu = DistributedLLM._densify_for_cpu

    def apply(self, ops: list) -> None:
        for op in ops:
            kind = op[0]
            if kind == "enqueue":
                _, tokens, max_tokens, stop_ids, uid, cached = op
                stops = self.stop_sequences if stop_ids == self.eos_ids else StopSequences([(t,) for t in stop_ids])
                got = self._enqueue(tokens, max_tokens, _receiving(self.group.group), [], stops)
                if tuple(got) != (uid, cached):
                    raise GroupDown(f"rank {self.group.rank} is out of step: uid/cached {got} != {(uid, cached)}")
            elif kind == "remove":
                saved = self._generator().remove(op[1], return_prompt_caches=op[2])
                self.removed.update({int(u): c for u, (c, _t) in saved.items()})
            elif kind == "save":
                _, uid, tokens = op
                cache = self.finished.pop(uid, None) or self.removed.pop(uid, None)
                if cache is None:
                    raise GroupDown(f"rank {self.group.rank} has no cache for sequence {uid}")
                self.prompt_cache.insert_cache(self.model_key, tokens, cache)
            elif kind == "reset":
                if self.batch is not None:
                    self.batch.close()
                    self.batch = None
                self.finished.clear()
                self.removed.clear()

    def step(self) -> None:
        _, responses = self._generator().next()
        self.finished = {int(r.uid): r.prompt_cache for r in responses if r.finish_reason is not None}
        self.removed.clear()


def run_follower(config: Config) -> None:
    """A rank > 0: no HTTP; load, step and unload as rank 0 says, until the group ends."""
    from ..store import Store

    group = current_group()
    store = Store(config.models_dir)
    run_dir = config.models_dir.parent / "run"
    channel = Channel(group)
    llm: FollowerLLM | None = None
    log.info("rank %d of %d following rank 0", group.rank, group.size)
    while True:
        try:
            message = channel.receive()
        except Exception as e:  # noqa: BLE001 - rank 0 is gone: so is this group
            log.error("rank %d: lost rank 0 (%s); exiting", group.rank, e)
            return
        op = message.get("op")
        try:
            if op == "load":
                llm = None
                llm = _follower_load(message, store, run_dir, group, channel)
                channel.stream = llm.stream if llm is not None else None
            elif op == "step" and llm is not None:
                llm.apply(message["ops"])
                llm.step()
            elif op == "unload" and llm is not None:
                llm.close()
                llm = None
                channel.stream = None
                gc.collect()
                mx.clear_cache()
        except Exception:  # noqa: BLE001 - out of step with rank 0: the group cannot go on
            log.exception("rank %d: %s failed; leaving the group", group.rank, op)
            return


def _follower_load(message: dict, store, run_dir: Path, group: Group, channel: Channel) -> FollowerLLM | None:
    llm = None
    try:
        stored = store.get_manifest(message["name"])
        if stored is None or stored.digest_hex != message["digest"]:
            raise FileNotFoundError(f"{message['name']} ({message['digest'][:12]}) is not in this rank's store")
        settings = EngineSettings(**{k: v for k, v in message["settings"].items() if hasattr(EngineSettings, k)})
        llm = FollowerLLM(store.materialize(stored, run_dir), settings, group, message["mode"])
    except Exception:  # noqa: BLE001 - reported to rank 0 through agree()
        log.exception("rank %d could not load %s", group.rank, message.get("name"))
    ready = channel.agree(llm is not None)
    if llm is not None and ready < group.size:
        llm.close()
        return None
    if llm is not None:
        log.info("rank %d holds its %s shard of %s", group.rank, message["mode"], message["name"])
    return llm
