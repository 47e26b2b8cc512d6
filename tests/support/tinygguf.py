"""Tiny models for the management tests: a llama checkpoint in Hugging Face layout (tests/tinyhf.py),
the same weights as F16 and Q8_0 GGUFs (tests/ggufwriter.py), an mlx-lm LoRA adapter for it, and a
read-only-checked fake of Ollama's own store."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType as QT

from .ggufwriter import write_gguf
from .tinyhf import build_hf_checkpoint

MODEL = "application/vnd.ollama.image.model"
TEMPLATE = "application/vnd.ollama.image.template"
PARAMS = "application/vnd.ollama.image.params"
SYSTEM = "application/vnd.ollama.image.system"
LICENSE = "application/vnd.ollama.image.license"
CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"

OLLAMA_CONFIG = {
    "model_format": "gguf",
    "model_family": "llama",
    "model_families": ["llama"],
    "model_type": "1.4M",
    "file_type": "Q8_0",
    "architecture": "amd64",
    "os": "linux",
}


@dataclass
class TinyFiles:
    hf: Path
    f16: Path
    q8: Path

    @staticmethod
    def digest(path: Path) -> str:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def build_tiny_files(root: Path) -> TinyFiles:
    hf = build_hf_checkpoint(root / "hf", "llama", dtype="float16")
    write_gguf(hf, root / "tiny-F16.gguf", QT.F16)
    write_gguf(hf, root / "tiny-Q8_0.gguf", QT.Q8_0)
    return TinyFiles(hf, root / "tiny-F16.gguf", root / "tiny-Q8_0.gguf")


def build_lora_adapter(model_dir: Path, out: Path, *, rank: int = 2, scale: float = 2.0, seed: int = 3) -> Path:
    """An mlx-lm LoRA adapter (adapter_config.json + adapters.safetensors) on the last layer's q_proj."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    model, _ = load_model(model_dir)
    params = {"rank": rank, "scale": scale, "dropout": 0.0, "keys": ["self_attn.q_proj"]}
    linear_to_lora_layers(model, 1, params)
    mx.random.seed(seed)
    lora = {k: v for k, v in tree_flatten(model.parameters()) if k.endswith(("lora_a", "lora_b"))}
    lora = {k: (mx.random.normal(v.shape) * 0.5).astype(mx.float32) for k, v in lora.items()}
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), lora)
    (out / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": params})
    )
    return out


def write_ollama_store(
    root: Path,
    name_parts: tuple[str, str, str, str],
    gguf: Path,
    *,
    template: str = "{{ .Prompt }}",
    params: dict | None = None,
) -> bytes:
    """A model as Ollama itself stores it (§12): GGUF model layer, template, params, config."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / d.replace(":", "-")).write_bytes(data)
        return d

    layers = []
    for mt, data in (
        (MODEL, gguf.read_bytes()),
        (TEMPLATE, template.encode()),
        (PARAMS, json.dumps(params or {"stop": ["<|im_end|>"]}).encode()),
    ):
        layers.append({"mediaType": mt, "digest": blob(data), "size": len(data)})
    cfg = json.dumps(OLLAMA_CONFIG).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG, "digest": blob(cfg), "size": len(cfg)},
        "layers": layers,
    }
    raw = json.dumps(manifest).encode()
    path = root.joinpath("manifests", *name_parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


def snapshot_tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, sha256) for every file: proves a store was left untouched."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out
