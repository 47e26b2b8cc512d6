"""The scheduler under concurrency, with fake runners (no MLX): single-flight loads, the count
and memory limits, Ollama's queue limit, load failures, expiry and shutdown."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlxollama.config import Config
from mlxollama.engine.jobs import EngineError
from mlxollama.engine.scheduler import QUEUE_FULL, SHUTTING_DOWN, Scheduler

SECOND_NS = 1_000_000_000


@dataclass
class Spec:
    """The part of a ModelSpec the scheduler reads."""

    digest_hex: str
    size: int = 100

    @property
    def short_name(self) -> str:
        return self.digest_hex


class Machine:
    """Builds fake runners and records what is resident: from start() until the memory is back."""

    def __init__(self, load_s: float = 0.02, unload_s: float = 0.02, fail: set[str] = frozenset()):
        self.load_s = load_s
        self.unload_s = unload_s
        self.fail = set(fail)
        self.loads: list[str] = []
        self.resident: set[FakeRunner] = set()
        self.peak_count = 0
        self.peak_bytes = 0

    def __call__(self, spec, keep_alive_ns, num_ctx):
        return FakeRunner(self, spec, keep_alive_ns, num_ctx)

    def note(self) -> None:
        self.peak_count = max(self.peak_count, len(self.resident))
        self.peak_bytes = max(self.peak_bytes, sum(r.spec.size for r in self.resident))


class FakeRunner:
    def __init__(self, machine: Machine, spec, keep_alive_ns: int, num_ctx: int):
        loop = asyncio.get_running_loop()
        self.machine = machine
        self.spec = spec
        self.loaded = loop.create_future()
        self.stopped = loop.create_future()
        self.keep_alive_ns = keep_alive_ns
        self.num_ctx = num_ctx
        self.active = 0
        self.expires_at = 0.0
        self.expiry_timer = None
        self.size = 0
        self.unloading = False
        self.aborted: str | None = None

    def start(self) -> None:
        self.machine.loads.append(self.spec.digest_hex)
        self.machine.resident.add(self)
        self.machine.note()
        asyncio.get_running_loop().call_later(self.machine.load_s, self._finish_load)

    def _finish_load(self) -> None:
        if self.loaded.done():
            return
        if self.spec.digest_hex in self.machine.fail:
            self.loaded.set_exception(EngineError("failed to load model", 500))
            self._gone()  # as ModelRunner: a failed load ends the thread
        else:
            self.size = self.spec.size
            self.loaded.set_result(True)

    def stop(self) -> None:
        self.unloading = True
        asyncio.get_running_loop().call_later(self.machine.unload_s, self._gone)

    def _gone(self) -> None:
        self.machine.resident.discard(self)
        if not self.stopped.done():
            self.stopped.set_result(True)

    def abort(self, message: str) -> None:
        self.aborted = message
        if not self.loaded.done():
            self.loaded.set_exception(EngineError(message, 503))


def make(machine: Machine, **config) -> Scheduler:
    config.setdefault("keep_alive_ns", 60 * SECOND_NS)
    config.setdefault("memory_budget", 1 << 40)
    return Scheduler(Config(**config), Path("/nonexistent"), runner_factory=machine)


async def use(sched: Scheduler, spec, hold_s: float = 0.0, keep_alive_ns: int | None = None):
    runner = await sched.acquire(spec, keep_alive_ns, 2048)
    try:
        await asyncio.sleep(hold_s)
    finally:
        sched.release(runner)
    return runner


def test_concurrent_first_requests_load_once():
    async def main():
        machine = Machine(load_s=0.05)
        sched = make(machine)
        spec = Spec("a")
        runners = await asyncio.gather(*(sched.acquire(spec, None, 2048) for _ in range(4)))
        assert machine.loads == ["a"]
        assert len({id(r) for r in runners}) == 1
        assert runners[0].active == 4
        for r in runners:
            sched.release(r)
        assert runners[0].active == 0

    asyncio.run(main())


def test_one_model_at_a_time_under_concurrency():
    """OLLAMA_MAX_LOADED_MODELS=1 with requests for two models interleaved: never both resident,
    and every request is served."""

    async def main():
        machine = Machine(load_s=0.01, unload_s=0.02)
        sched = make(machine, max_loaded_models=1)
        rng = random.Random(7)
        specs = [Spec("a"), Spec("b")]
        tasks = []
        for _ in range(24):
            tasks.append(asyncio.create_task(use(sched, rng.choice(specs), hold_s=rng.uniform(0, 0.02))))
            await asyncio.sleep(rng.uniform(0, 0.005))
        done = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert len(done) == 24
        assert machine.peak_count == 1
        assert set(machine.loads) == {"a", "b"}

    asyncio.run(main())


def test_first_requests_for_two_models_at_once_respect_the_limit():
    async def main():
        machine = Machine(load_s=0.05)
        sched = make(machine, max_loaded_models=1)
        await asyncio.wait_for(asyncio.gather(*(use(sched, Spec(n)) for n in "abab")), 10)
        assert machine.peak_count == 1

    asyncio.run(main())


def test_memory_budget_holds_under_concurrency():
    async def main():
        machine = Machine(load_s=0.01, unload_s=0.01)
        sched = make(machine, memory_budget=250)
        sizes = {"a": 100, "b": 120, "c": 90, "d": 200}
        rng = random.Random(3)
        tasks = []
        for _ in range(30):
            name = rng.choice("abcd")
            tasks.append(asyncio.create_task(use(sched, Spec(name, sizes[name]), hold_s=rng.uniform(0, 0.02))))
            await asyncio.sleep(rng.uniform(0, 0.004))
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert machine.peak_bytes <= 250
        assert machine.peak_count >= 2  # models that fit together do stay together

    asyncio.run(main())


def test_model_over_the_whole_budget_still_loads_alone():
    async def main():
        machine = Machine()
        sched = make(machine, memory_budget=50)
        await use(sched, Spec("a", 100))
        await use(sched, Spec("b", 100))
        assert machine.peak_count == 1

    asyncio.run(main())


def test_queue_limit_counts_waiting_requests_not_running_ones():
    async def main():
        machine = Machine(load_s=0.01)
        sched = make(machine, max_loaded_models=1, max_queue=2)
        a, b = Spec("a"), Spec("b")
        # Running requests are not queued: far more than OLLAMA_MAX_QUEUE run at once.
        running = await asyncio.gather(*(sched.acquire(a, None, 2048) for _ in range(10)))
        assert running[0].active == 10

        # With "a" busy, requests for "b" wait: one being placed plus OLLAMA_MAX_QUEUE behind it,
        # as Ollama's scheduler takes one request off a channel of that capacity.
        waiting = [asyncio.create_task(sched.acquire(b, None, 2048)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in waiting)
        assert sched.waiting == 3
        with pytest.raises(EngineError) as refused:
            await sched.acquire(b, None, 2048)
        assert refused.value.status == 503
        assert refused.value.message == QUEUE_FULL

        for r in running:
            sched.release(r)
        served = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert {r.spec.digest_hex for r in served} == {"b"}
        assert sched.waiting == 0
        assert machine.peak_count == 1

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue():
    async def main():
        machine = Machine()
        sched = make(machine, max_loaded_models=1, max_queue=0)
        busy = await sched.acquire(Spec("a"), None, 2048)
        waiter = asyncio.create_task(sched.acquire(Spec("b"), None, 2048))
        await asyncio.sleep(0.02)
        with pytest.raises(EngineError):
            await sched.acquire(Spec("b"), None, 2048)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert sched.waiting == 0
        sched.release(busy)
        await use(sched, Spec("b"))
        assert machine.peak_count == 1

    asyncio.run(main())


def test_failed_load_fails_every_waiter_and_is_retried():
    async def main():
        machine = Machine(load_s=0.03, fail={"a"})
        sched = make(machine)
        results = await asyncio.gather(
            *(sched.acquire(Spec("a"), None, 2048) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, EngineError) for r in results)
        assert machine.loads == ["a"]
        await asyncio.sleep(0)
        assert sched.runners == {}
        machine.fail.clear()
        await use(sched, Spec("a"))
        assert machine.loads == ["a", "a"]

    asyncio.run(main())


def test_a_request_during_unload_waits_and_reloads():
    async def main():
        machine = Machine(unload_s=0.05)
        sched = make(machine)
        await use(sched, Spec("a"), keep_alive_ns=0)  # unloads as soon as it is released
        again = await sched.acquire(Spec("a"), None, 2048)
        assert machine.loads == ["a", "a"]
        assert machine.peak_count == 1
        sched.release(again)

    asyncio.run(main())


def test_idle_model_expires():
    async def main():
        machine = Machine(unload_s=0.0)
        sched = make(machine)
        await use(sched, Spec("a"), keep_alive_ns=SECOND_NS // 20)
        assert len(sched.loaded()) == 1
        await asyncio.sleep(0.2)
        assert sched.loaded() == [] and sched.runners == {}

    asyncio.run(main())


def test_shutdown_ends_running_and_waiting_requests_and_unloads():
    async def main():
        machine = Machine(load_s=0.01)
        sched = make(machine, max_loaded_models=1)
        busy = await sched.acquire(Spec("a"), None, 2048)
        waiting = asyncio.create_task(sched.acquire(Spec("b"), None, 2048))
        await asyncio.sleep(0.02)

        async def request_finishes_after_abort():
            while busy.aborted is None:
                await asyncio.sleep(0.005)
            sched.release(busy)

        finisher = asyncio.create_task(request_finishes_after_abort())
        await asyncio.wait_for(sched.shutdown(), 5)
        await finisher
        assert busy.aborted == SHUTTING_DOWN
        with pytest.raises(EngineError) as refused:
            await waiting
        assert refused.value.status == 503
        assert machine.resident == set()
        with pytest.raises(EngineError):
            await sched.acquire(Spec("a"), None, 2048)

    asyncio.run(main())


def test_shutdown_fails_a_load_in_progress():
    async def main():
        machine = Machine(load_s=10)
        sched = make(machine)
        loading = asyncio.create_task(sched.acquire(Spec("a"), None, 2048))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(sched.shutdown(unload_s=0.5), 5)
        with pytest.raises(EngineError) as failed:
            await loading
        assert failed.value.message == SHUTTING_DOWN

    asyncio.run(main())
