"""What every handler needs: config, store and scheduler, plus shared model lookup."""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..engine.catalog import ModelNotFoundError, ModelSpec, load_spec
from ..engine.scheduler import Scheduler
from ..store import InvalidName, ModelName, Store
from .errors import APIError

# Lookups and listings get threads of their own: in the shared default pool they queued behind
# pulls, uploads and conversions (hashing, file copies), which put /api/show's p99 past 100 ms
# under 64 clients.
_METADATA_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlxollama-metadata")


async def read_metadata(fn, *args):
    """Runs a small store read (model lookup, listing) off the event loop, never queued behind bulk work."""
    return await asyncio.get_running_loop().run_in_executor(_METADATA_POOL, functools.partial(fn, *args))


@dataclass
class ServerState:
    config: Config
    store: Store
    scheduler: Scheduler
    run_dir: Path
    _recent: dict[str, ModelSpec] = field(default_factory=dict, repr=False)

    async def lookup(self, name: str, *, not_found: str, invalid_status: int = 400) -> ModelSpec:
        """Resolve a requested name to a stored model, or the endpoint's own error."""
        try:
            parsed = ModelName.parse(name)
        except InvalidName as e:
            raise APIError("invalid model name", invalid_status) from e
        # A model looked up before whose manifest file is unchanged is answered from memory: one
        # stat, no thread hand-off (which is what queued under load).
        recent = self._recent.get(name)
        if recent is not None:
            try:
                if os.stat(recent.stored.path).st_mtime == recent.modified_at:
                    return recent
            except OSError:
                pass
            self._recent.pop(name, None)
        try:
            spec = await read_metadata(load_spec, self.store, parsed)
        except ModelNotFoundError as e:
            raise APIError(not_found.format(name=name, short=parsed.display_shortest()), 404) from e
        if len(self._recent) >= 256:
            self._recent.clear()
        self._recent[name] = spec
        return spec


def state_of(request) -> ServerState:
    return request.app.ctx.state
