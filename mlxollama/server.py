"""Builds the server from the environment and runs it in one process (models live in its memory)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time

from .api.app import create_app
from .api.state import ServerState
from .config import Config, exit_with_parent
from .convert.create import sweep_work_dirs
from .engine.device import backend_memory
from .engine.scheduler import Scheduler
from .store import Store

log = logging.getLogger("mlxollama")

# SIGTERM/SIGINT: the process is gone within this long even if something hangs (launchd and
# systemd wait a few seconds before a SIGKILL, which they would report as a crash).
SHUTDOWN_DEADLINE_S = 4.5


def build_state(config: Config) -> ServerState:
    config.models_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.models_dir)
    # Linked views of stored models for the loaders; rebuilt on demand, never the source of truth.
    run_dir = config.models_dir.parent / "run"
    return ServerState(config=config, store=store, scheduler=Scheduler(config, run_dir), run_dir=run_dir)


def _exit_with_parent() -> None:
    """For test harnesses: stop when the process that started us is gone (portable, no prctl)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _exit_after(seconds: float) -> None:
    def watch():
        time.sleep(seconds)
        log.warning("shutdown took longer than %.1fs, exiting now", seconds)
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=watch, name="shutdown-deadline", daemon=True).start()


def _handle_stop_signals(app, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
    """First SIGTERM/SIGINT: refuse new work, end running streams with an error line, unload the
    models, stop Sanic (exit 0). A second one exits at once.

    Plain signal handlers rather than the loop's: they keep working while Sanic tears the loop
    down, and Sanic's own (which wait 15 s on open streams) are not installed."""
    stopping = False

    async def stop(signame: str) -> None:
        log.info("received %s, shutting down", signame)
        try:
            await state.scheduler.shutdown()
        finally:
            app.stop(terminate=False)

    def on_signal(signum, _frame) -> None:
        nonlocal stopping
        if stopping:
            os._exit(128 + signum)
        stopping = True
        _exit_after(SHUTDOWN_DEADLINE_S)
        # Runs between bytecodes of whatever the main (loop) thread was doing: hand over to the loop.
        loop.call_soon_threadsafe(lambda: loop.create_task(stop(signal.Signals(signum).name)))

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)


def serve(config: Config | None = None) -> None:
    if exit_with_parent():
        _exit_with_parent()
    config = config or Config.from_env(backend_memory=backend_memory)
    logging.basicConfig(
        level=logging.DEBUG if config.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .engine.group import init_group

    # Under mlx.launch every rank runs this: rank 0 serves, the others follow its engine threads.
    if init_group().rank > 0:
        from .engine.distributed import run_follower

        run_follower(config)
        logging.shutdown()
        os._exit(1)  # the group has ended (rank 0 is gone): the launcher or launchd restarts us
    state = build_state(config)
    if not config.noprune:
        # Unreferenced blobs older than an hour go, as in Ollama; younger ones may belong to a pull.
        state.store.gc(min_age_seconds=3600)
    # A server killed mid-create left its work folder behind; its pid names it as gone.
    if removed := sweep_work_dirs(state.store):
        log.info("removed %d work folder(s) left by a stopped process", len(removed))
    app = create_app(state)

    @app.after_server_start
    async def stop_signals(app):
        _handle_stop_signals(app, state, asyncio.get_running_loop())

    @app.before_server_stop
    async def unload_models(app):
        await state.scheduler.shutdown()  # already done when a signal stopped us

    log.info("mlxollama listening on %s:%d, models in %s", config.host, config.port, config.models_dir)
    log.info(
        "default context length %d (backend memory %.1f GiB)", config.context_length, config.backend_memory / (1 << 30)
    )
    app.run(
        host=config.host,
        port=config.port,
        single_process=True,
        access_log=bool(config.debug),
        motd=False,
        debug=False,
        register_sys_signals=False,
    )
    # Stopped: models unloaded, nothing left to save. An engine thread that used MLX runs MLX's
    # per-thread clean-up as it ends, which needs the interpreter; if that overlaps Python's
    # teardown, MLX aborts the process (SIGABRT). So leave without the teardown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    serve()
