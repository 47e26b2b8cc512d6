"""Putting test models into a store: tiny checkpoints packaged as models, bundled wheels imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxollama.store import ModelName, Store, build_config_blob


def package_tiny(store: Store, name: str, model_dir: Path, context_length: int | None = None, **layers):
    from mlxollama.convert.create import package_model_dir

    info = json.loads((model_dir / "model_info.json").read_text())
    config = build_config_blob(
        model_format="mlx",
        model_family="llama",
        model_type="0.05M",
        file_type="F16",
        capabilities=None,
        context_length=context_length or info["llama.context_length"],
        embedding_length=info["llama.embedding_length"],
    )
    return package_model_dir(store, ModelName.parse(name), model_dir, config=config, **layers)


def import_bundled(models_dir: Path, name: str) -> str:
    """Import one of the models the set-up installs as wheels, or skip when its wheel is missing."""
    from mlxollama.convert.bundled import BUNDLED, import_source, package_path

    source = next(s for s in BUNDLED if s.name == name)
    if package_path(source.package, source.relative_path) is None:
        pytest.skip(f"{source.package} is not installed")
    store = Store(models_dir)
    if store.resolve(ModelName.parse(name)) is None:
        import_source(store, source)
    return name
