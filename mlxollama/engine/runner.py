"""One thread per loaded model: it loads the model, owns all its MLX state and runs its jobs."""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
import weakref
from pathlib import Path

from ..config import Config
from .catalog import ModelSpec
from .jobs import EmbedJob, EngineError, ErrorEvent, GenerationJob, Job

log = logging.getLogger("mlxollama.engine")

_STOP = object()


def _load_state(spec: ModelSpec, model_dir: Path, config: Config, run_dir: Path | None = None):
    if spec.kind == "embedding":
        from .embedder import LoadedEmbedder

        return LoadedEmbedder(model_dir)
    from .llm import EngineSettings, LoadedLLM

    if spec.kind == "vision":  # mlx-vlm (vision.py)
        from .vision import LoadedVLM

        return LoadedVLM(model_dir, EngineSettings.from_config(config, spec.params))

    # A DRAFT loads on this thread beside the model it drafts for (speculative.py)
    draft_dir = spec.draft.materialize(run_dir) if spec.draft is not None and run_dir is not None else None
    from .diskcache import DiskCacheSettings

    # The prompt cache's disk tier is keyed by the store's digest: the same model under any name.
    disk_cache = DiskCacheSettings.from_config(config, spec.digest_hex)
    return LoadedLLM(
        model_dir, EngineSettings.from_config(config, spec.params), draft_dir=draft_dir, disk_cache=disk_cache
    )


def _sharded(runner: "ModelRunner", model_dir: Path):
    """The model split over the mlx.launch group (engine/distributed.py), or None: it runs here alone."""
    from .distributed import load_sharded

    return load_sharded(runner.spec, model_dir, runner.config, runner)


class ModelRunner:
    def __init__(self, spec: ModelSpec, run_dir: Path, keep_alive_ns: int, num_ctx: int, config: Config):
        self.spec = spec
        self.config = config
        self.run_dir = run_dir
        self.loop = asyncio.get_running_loop()
        self.loaded: asyncio.Future = self.loop.create_future()
        self.stopped: asyncio.Future = self.loop.create_future()
        self._jobs: queue.Queue = queue.Queue()
        # Submitted jobs whose requests may still be reading events: abort() ends them.
        self._live: weakref.WeakSet[Job] = weakref.WeakSet()
        self.keep_alive_ns = keep_alive_ns
        self.num_ctx = num_ctx
        self.active = 0
        self.expires_at = time.time() + keep_alive_ns / 1e9
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.size = 0
        self.draft_size = 0  # the DRAFT's part of size
        self.on_gpu = False
        self.unloading = False
        self.group_down: str | None = None  # set when the distributed group this model spans fails
        self.distributed = None  # for a sharded model: () -> its group's state, for /api/ps
        self._thread = threading.Thread(target=self._main, name=f"engine {spec.short_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self.group_down:  # its engine thread may be stuck in a collective: answer here
            job.emit(ErrorEvent(self.group_down, 503))
            return
        self._live.add(job)
        self._jobs.put(job)

    def stop(self) -> None:
        self.unloading = True
        self._jobs.put(_STOP)

    def abort(self, message: str) -> None:
        """Server shutdown, on the event loop: a load still running fails its waiters, and every
        request's job stops and reads `message` as its error (a stream ends with an error line)."""
        if not self.loaded.done():
            self.loaded.set_exception(EngineError(message, 503))
            self.loaded.exception()  # retrieved: no "never retrieved" warning if nobody waits
        for job in list(self._live):
            job.cancel()
            job.emit(ErrorEvent(message, 503))

    def _resolve(self, fut: asyncio.Future, result=None, error: BaseException | None = None) -> None:
        def done():
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:
            pass  # loop closed during shutdown

    def _guard(self, fn, job) -> None:
        try:
            fn() if job is None else fn(job)
        except EngineError as e:
            if job is not None:
                job.emit(ErrorEvent(e.message, e.status))
        except MemoryError as e:
            if job is not None:
                job.emit(ErrorEvent(f"out of memory: {e}", 500))
        except Exception as e:  # noqa: BLE001 - keep serving other requests
            log.exception("engine work failed on %s", self.spec.short_name)
            if job is not None:
                job.emit(ErrorEvent(str(e) or type(e).__name__, 500))

    def _run_job(self, state, job: Job) -> None:
        if isinstance(job, GenerationJob):
            self._guard(state.admit, job)
        elif isinstance(job, EmbedJob):
            self._guard(state.embed, job)
        else:
            job.emit(ErrorEvent(f"unknown job {type(job).__name__}"))

    def _main(self) -> None:
        try:
            model_dir = self.spec.materialize(self.run_dir)
            state = _sharded(self, model_dir) or _load_state(self.spec, model_dir, self.config, self.run_dir)
            self.size = state.memory_bytes(self.num_ctx)
            self.draft_size = state.draft_memory_bytes(self.num_ctx) if hasattr(state, "draft_memory_bytes") else 0
            self.on_gpu = state.on_gpu
        except Exception as e:  # noqa: BLE001 - every load failure becomes the request's error
            log.exception("loading %s failed", self.spec.short_name)
            # An OSError's text names server paths: the log has them, the client gets the reason.
            reason = (e.strerror or type(e).__name__) if isinstance(e, OSError) else e
            self._resolve(self.loaded, error=EngineError(f"failed to load model: {reason}", 500))
            self._resolve(self.stopped, True)
            return
        self._resolve(self.loaded, True)
        while True:
            busy = getattr(state, "busy", False)
            try:
                # While a batch is running, new work is picked up between decode steps.
                job = self._jobs.get(block=not busy)
            except queue.Empty:
                job = None
            if job is _STOP:
                break
            if job is not None:
                if not job.cancelled:
                    self._run_job(state, job)
                continue
            self._guard(state.step, None)

        state.close()
        del state
        gc.collect()
        try:
            import mlx.core as mx

            # Work queued asynchronously must finish before the memory counts as given back.
            mx.synchronize()
            mx.clear_cache()
        except Exception:  # noqa: BLE001
            log.exception("releasing %s's memory failed", self.spec.short_name)
        self._resolve(self.stopped, True)
