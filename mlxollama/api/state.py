"""What every handler needs: config, store and scheduler, plus shared model lookup."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..engine.catalog import ModelNotFoundError, ModelSpec, load_spec
from ..engine.scheduler import Scheduler
from ..store import InvalidName, ModelName, Store
from .errors import APIError


@dataclass
class ServerState:
    config: Config
    store: Store
    scheduler: Scheduler
    run_dir: Path

    async def lookup(self, name: str, *, not_found: str, invalid_status: int = 400) -> ModelSpec:
        """Resolve a requested name to a stored model, or the endpoint's own error."""
        try:
            parsed = ModelName.parse(name)
        except InvalidName as e:
            raise APIError("invalid model name", invalid_status) from e
        try:
            return await asyncio.to_thread(load_spec, self.store, parsed)
        except ModelNotFoundError as e:
            raise APIError(not_found.format(name=name, short=parsed.display_shortest()), 404) from e


def state_of(request) -> ServerState:
    return request.app.ctx.state
