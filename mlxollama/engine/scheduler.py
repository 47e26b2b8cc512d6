"""Which models are loaded, for how long, and who waits for them (reference §1.10, §4)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from ..config import Config
from ..durations import FOREVER_NS
from .catalog import ModelSpec
from .jobs import EngineError
from .runner import ModelRunner

log = logging.getLogger("mlxollama.scheduler")

# Ollama's default on CPU-only machines: three models resident at once.
DEFAULT_MAX_LOADED = 3
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


class Scheduler:
    def __init__(self, config: Config, run_dir: Path):
        self.config = config
        self.run_dir = run_dir
        self.runners: dict[str, ModelRunner] = {}
        self.pending = 0

    @property
    def max_loaded(self) -> int:
        return self.config.max_loaded_models or DEFAULT_MAX_LOADED

    async def acquire(self, spec: ModelSpec, keep_alive_ns: int | None, num_ctx: int) -> ModelRunner:
        """Load (or reuse) the model and hold it until release(); raises EngineError."""
        if self.pending >= self.config.max_queue:
            raise EngineError(QUEUE_FULL, 503)
        self.pending += 1
        try:
            runner = self.runners.get(spec.digest_hex)
            if runner is not None and runner.unloading:
                await asyncio.shield(runner.stopped)
                runner = None
            if runner is None:
                await self._make_room(spec.size)
                model_dir = await asyncio.to_thread(spec.materialize, self.run_dir)
                runner = ModelRunner(spec, model_dir, self._keep_alive(keep_alive_ns), num_ctx, self.config)
                self.runners[spec.digest_hex] = runner
                runner.start()
            elif keep_alive_ns is not None:
                runner.keep_alive_ns = keep_alive_ns
            runner.active += 1
            runner.num_ctx = num_ctx  # MLX caches grow as needed: a new num_ctx needs no reload
            self._cancel_expiry(runner)
            try:
                await asyncio.shield(runner.loaded)
            except BaseException:
                self._release(runner)
                if runner.loaded.done() and runner.loaded.exception() is not None:
                    self.runners.pop(spec.digest_hex, None)
                raise
            return runner
        except BaseException:
            self.pending -= 1
            raise

    def release(self, runner: ModelRunner) -> None:
        self.pending -= 1
        self._release(runner)

    def _release(self, runner: ModelRunner) -> None:
        runner.active -= 1
        if runner.active > 0 or runner.unloading:
            return
        if runner.keep_alive_ns == 0:
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

    def _cancel_expiry(self, runner: ModelRunner) -> None:
        if runner.expiry_timer is not None:
            runner.expiry_timer.cancel()
            runner.expiry_timer = None

    def _expire(self, runner: ModelRunner) -> None:
        runner.expiry_timer = None
        if runner.active == 0:
            self._unload(runner)

    def _unload(self, runner: ModelRunner) -> None:
        self._cancel_expiry(runner)
        if self.runners.get(runner.spec.digest_hex) is runner:
            del self.runners[runner.spec.digest_hex]
        log.info("unloading %s", runner.spec.short_name)
        runner.stop()

    def _over_budget(self, incoming_bytes: int) -> bool:
        used = sum(r.size or r.spec.size for r in self.runners.values())
        return bool(self.runners) and used + incoming_bytes > self.config.memory_budget

    async def _make_room(self, incoming_bytes: int) -> None:
        """Evict idle models, least remaining keep-alive first, while the count limit or the
        memory budget would be exceeded; when every loaded model is busy, wait for one."""
        while len(self.runners) >= self.max_loaded or self._over_budget(incoming_bytes):
            idle = [r for r in self.runners.values() if r.active == 0]
            if not idle:
                await asyncio.sleep(0.05)
                continue
            victim = min(idle, key=lambda r: r.expires_at)
            self._unload(victim)
            await asyncio.shield(victim.stopped)

    async def unload(self, spec: ModelSpec) -> None:
        """Unload now if idle; otherwise once the running requests finish."""
        runner = self.runners.get(spec.digest_hex)
        if runner is None:
            return
        runner.keep_alive_ns = 0
        if runner.active == 0:
            self._unload(runner)
            await asyncio.shield(runner.stopped)

    def loaded(self) -> list[ModelRunner]:
        return [r for r in self.runners.values() if r.loaded.done() and not r.loaded.exception()]

    async def shutdown(self) -> None:
        runners = list(self.runners.values())
        for r in runners:
            self._unload(r)
        for r in runners:
            try:
                await asyncio.wait_for(asyncio.shield(r.stopped), 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
