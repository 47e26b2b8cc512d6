"""Which models are loaded, for how long, and who waits for them (reference §1.10, §4).

Placement (deciding to load, evicting to make room) happens one request at a time under a lock,
as in Ollama's pending loop, so concurrent first requests load a model once and the count and
memory limits hold under any interleaving. A model that is already resident (ready or still
loading) is handed out without the lock, unless a placement is in progress: then requests queue
behind it, as Ollama's do, so a busy model cannot starve the one waiting for its room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..config import Config
from ..durations import FOREVER_NS
from .catalog import ModelSpec
from .jobs import EngineError

log = logging.getLogger("mlxollama.scheduler")

# Ollama's default on CPU-only machines: three models resident at once.
DEFAULT_MAX_LOADED = 3
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
SHUTTING_DOWN = "server shutting down"


class Runner(Protocol):
    """What the scheduler needs of a loaded model (engine/runner.py ModelRunner, or a test fake)."""

    spec: ModelSpec
    loaded: asyncio.Future  # resolves when the model is ready; its exception is the load failure
    stopped: asyncio.Future  # resolves when its memory is given back
    keep_alive_ns: int
    num_ctx: int
    active: int
    expires_at: float
    expiry_timer: asyncio.TimerHandle | None
    size: int
    unloading: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def abort(self, message: str) -> None: ...


# Builds (without starting) the runner for a model: (spec, keep_alive_ns, num_ctx) -> Runner.
RunnerFactory = Callable[[ModelSpec, int, int], Runner]


def model_runner_factory(config: Config, run_dir: Path) -> RunnerFactory:
    from .runner import ModelRunner  # MLX-owning code stays out of the scheduler's imports

    def build(spec: ModelSpec, keep_alive_ns: int, num_ctx: int) -> Runner:
        return ModelRunner(spec, run_dir, keep_alive_ns, num_ctx, config)

    return build


class Scheduler:
    def __init__(self, config: Config, run_dir: Path, runner_factory: RunnerFactory | None = None):
        self.config = config
        self.run_dir = run_dir
        self.make_runner = runner_factory or model_runner_factory(config, run_dir)
        # Every resident runner, including ones still loading or unloading: they all hold memory.
        self.runners: dict[str, Runner] = {}
        self.waiting = 0  # requests inside placement: holding or queued on the lock
        self.closing = False
        self._placing = asyncio.Lock()
        self._room = asyncio.Event()  # set when a runner goes idle or gives its memory back

    @property
    def max_loaded(self) -> int:
        return self.config.max_loaded_models or DEFAULT_MAX_LOADED

    async def acquire(self, spec: ModelSpec, keep_alive_ns: int | None, num_ctx: int) -> Runner:
        """Load (or reuse) the model and hold it until release(); raises EngineError."""
        if self.closing:
            raise EngineError(SHUTTING_DOWN, 503)
        runner = self.runners.get(spec.digest_hex)
        if runner is not None and not runner.unloading and not self._placing.locked():
            self._claim(runner, keep_alive_ns, num_ctx)
        else:
            # Ollama's queue is a channel of OLLAMA_MAX_QUEUE requests behind the one its
            # scheduler is placing; running requests do not count.
            if self.waiting > self.config.max_queue:
                raise EngineError(QUEUE_FULL, 503)
            self.waiting += 1
            try:
                runner = await self._place(spec, keep_alive_ns, num_ctx)
            finally:
                self.waiting -= 1
        try:
            await asyncio.shield(runner.loaded)
        except BaseException:
            self.release(runner)
            raise
        return runner

    async def _place(self, spec: ModelSpec, keep_alive_ns: int | None, num_ctx: int) -> Runner:
        async with self._placing:
            while True:
                if self.closing:
                    raise EngineError(SHUTTING_DOWN, 503)
                runner = self.runners.get(spec.digest_hex)
                if runner is not None and not runner.unloading:
                    self._claim(runner, keep_alive_ns, num_ctx)
                    return runner
                if runner is None and not self._full(spec.size):
                    runner = self.make_runner(spec, self._keep_alive(keep_alive_ns), num_ctx)
                    self.runners[spec.digest_hex] = runner
                    runner.stopped.add_done_callback(lambda _f, r=runner: self._gone(r))
                    runner.start()
                    self._claim(runner, None, num_ctx)
                    return runner
                # No room (or our own model is still unloading): evict the idle model with the
                # least keep-alive left, or wait until a model goes idle or finishes unloading.
                idle = [r for r in self.runners.values() if r.active == 0 and not r.unloading]
                if runner is None and idle:
                    self._unload(min(idle, key=lambda r: r.expires_at))
                self._room.clear()
                await self._room.wait()

    def _full(self, incoming_bytes: int) -> bool:
        if len(self.runners) >= self.max_loaded:
            return True
        used = sum(r.size or r.spec.size for r in self.runners.values())
        # A model larger than the whole budget still loads when nothing else is resident.
        return bool(self.runners) and used + incoming_bytes > self.config.memory_budget

    def _claim(self, runner: Runner, keep_alive_ns: int | None, num_ctx: int) -> None:
        if keep_alive_ns is not None:
            runner.keep_alive_ns = keep_alive_ns
        runner.active += 1
        runner.num_ctx = num_ctx  # MLX caches grow as needed: a new num_ctx needs no reload
        self._cancel_expiry(runner)

    def release(self, runner: Runner) -> None:
        runner.active -= 1
        if runner.active > 0 or runner.unloading:
            return
        if runner.loaded.done() and runner.loaded.exception() is not None:
            self._unload(runner)  # a failed load: its thread has ended, nothing to keep
            return
        self._room.set()
        if runner.keep_alive_ns == 0 or self.closing:
            self._unload(runner)
            return
        if runner.keep_alive_ns >= FOREVER_NS:
            runner.expires_at = time.time() + FOREVER_NS / 1e9
            return
        delay = runner.keep_alive_ns / 1e9
        runner.expires_at = time.time() + delay
        runner.expiry_timer = asyncio.get_running_loop().call_later(delay, self._expire, runner)

    def _keep_alive(self, requested: int | None) -> int:
        return self.config.keep_alive_ns if requested is None else requested

    def _cancel_expiry(self, runner: Runner) -> None:
        if runner.expiry_timer is not None:
            runner.expiry_timer.cancel()
            runner.expiry_timer = None

    def _expire(self, runner: Runner) -> None:
        runner.expiry_timer = None
        if runner.active == 0:
            self._unload(runner)

    def _unload(self, runner: Runner) -> None:
        """Start unloading; the runner stays counted until its memory is back (`_gone`)."""
        self._cancel_expiry(runner)
        if runner.unloading:
            return
        log.info("unloading %s", runner.spec.short_name)
        runner.stop()

    def _gone(self, runner: Runner) -> None:
        if self.runners.get(runner.spec.digest_hex) is runner:
            del self.runners[runner.spec.digest_hex]
        self._room.set()

    async def unload(self, spec: ModelSpec) -> None:
        """Unload now if idle; otherwise once the running requests finish."""
        runner = self.runners.get(spec.digest_hex)
        if runner is None:
            return
        runner.keep_alive_ns = 0
        if runner.active == 0:
            self._unload(runner)
            await asyncio.shield(runner.stopped)

    def loaded(self) -> list[Runner]:
        return [r for r in self.runners.values() if not r.unloading and r.loaded.done() and not r.loaded.exception()]

    async def shutdown(self, drain_s: float = 1.0, unload_s: float = 2.5) -> None:
        """Refuse new work, end running requests with an error, then unload every model.

        Requests still waiting for a model get a 503; running generations and embeddings get
        an error event (streams end with an error line) and up to `drain_s` to write it; models
        get up to `unload_s` to give their memory back."""
        if self.closing:
            return
        self.closing = True
        self._room.set()  # a placement waiting for room wakes up and refuses
        runners = list(self.runners.values())
        for r in runners:
            r.abort(SHUTTING_DOWN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while any(r.active for r in runners) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for r in runners:
            self._unload(r)
        if runners:
            await asyncio.wait([asyncio.shield(r.stopped) for r in runners], timeout=unload_s)
        for r in runners:
            if not r.stopped.done():
                log.warning("%s did not unload in time", r.spec.short_name)
