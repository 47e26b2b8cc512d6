"""Builds the server from the environment and runs it in one process (models live in its memory)."""

from __future__ import annotations

import logging
import os
import threading
import time

from .api.app import create_app
from .api.state import ServerState
from .config import Config, exit_with_parent
from .engine.scheduler import Scheduler
from .store import Store


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


def serve(config: Config | None = None) -> None:
    if exit_with_parent():
        _exit_with_parent()
    config = config or Config.from_env()
    logging.basicConfig(
        level=logging.DEBUG if config.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    state = build_state(config)
    if not config.noprune:
        # Unreferenced blobs older than an hour go, as in Ollama; younger ones may belong to a pull.
        state.store.gc(min_age_seconds=3600)
    app = create_app(state)

    @app.before_server_stop
    async def unload_models(app, _loop):
        await state.scheduler.shutdown()

    logging.getLogger("mlxollama").info(
        "mlxollama listening on %s:%d, models in %s", config.host, config.port, config.models_dir
    )
    app.run(
        host=config.host,
        port=config.port,
        single_process=True,
        access_log=bool(config.debug),
        motd=False,
        debug=False,
    )


if __name__ == "__main__":
    serve()
