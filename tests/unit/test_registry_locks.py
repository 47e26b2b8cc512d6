"""Per-blob locks serialise work on one blob and are dropped once nobody holds or waits for them."""

from __future__ import annotations

import asyncio

from mlxollama.convert import registry
from mlxollama.store import Store


def test_blob_locks_serialise_and_are_released(tmp_path):
    store = Store(tmp_path / "models")
    order: list[str] = []

    async def work(name: str, key: str):
        async with registry._blob_lock(store, key):
            order.append(f"{name}+")
            await asyncio.sleep(0.01)
            order.append(f"{name}-")

    async def main():
        await asyncio.gather(work("a", "sha256:1"), work("b", "sha256:1"), work("c", "sha256:2"))

    asyncio.run(main())
    # a and b share a blob: never interleaved; c ran beside them
    assert order.index("a-") < order.index("b+") or order.index("b-") < order.index("a+")
    assert registry._blob_locks == {}
