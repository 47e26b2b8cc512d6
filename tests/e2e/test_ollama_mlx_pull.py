"""Ollama's own `-mlx` tags (tensor layers, tests/support/ollamamlx.py) pulled through a live
server's /api/pull from a loopback registry, then run with mlx-lm.

Reference: mlx-lm on the original Hugging Face checkpoint in float32 -- unquantized for a bf16
tag; for a quantized tag, quantized by mlx itself (nn.quantize) with the type Ollama's policy gave
each tensor, so the same kernels run on what should be the same packed weights, scales and biases.
Measured max abs logit difference against that reference: 0 (bit-identical logits) for every
architecture and type. Against the float original, for information (the quantization error of
random tiny weights; logits up to 5-59 in magnitude): 0.3-1.5 for int8, 2.6-21 for int4 and
3.1-24 for the fp4 types.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.utils import load_model

from mlxollama.convert.gguf import set_quantized_param_dtype
from mlxollama.store import ModelName, Store

from ..support import tinyhf as th
from ..support.fakeregistry import FakeRegistry
from ..support.liveserver import LiveServer
from ..support.ollamamlx import (
    QUANT,
    TENSOR,
    build_gemma3_multimodal,
    build_gemma4,
    build_glm4_moe_lite,
    build_laguna,
    build_nemotron_h,
    build_qwen3_5,
    draft_layers,
    ollama_config,
    ollama_mlx_layers,
    serve,
)

# tinyhf names (gemma3: Gemma3ForCausalLM, gemma3_text), and the multimodal gemma3 repos' layout
ARCHS = (
    "llama",
    "qwen3",
    "gemma3",
    "gemma3-vision",
    "qwen3_5",
    "qwen3_5_moe",
    "gemma4",
    "gemma4_moe",
    "glm4_moe_lite",
    "nemotron_h",
    "laguna",
)
QUANTS = ("", "int4", "int8", "mxfp4", "mxfp8", "nvfp4")
# Types left out where they add nothing the others do not check (time): GLM's and Nemotron-H's
# policies give int8 and mxfp8 one type throughout, as int4 and mxfp4 check the mixed ones; Laguna's
# int8 is the default policy's (its mxfp8 has its own rules and stays).
SKIPPED = {("glm4_moe_lite", "int8"), ("glm4_moe_lite", "mxfp8"), ("nemotron_h", "int8"), ("nemotron_h", "mxfp8")}
SKIPPED |= {("laguna", "int8")}
CASES = [(arch, q) for arch in ARCHS for q in QUANTS if (arch, q) not in SKIPPED]
TEMPLATE = "application/vnd.ollama.image.template"
PARAMS = "application/vnd.ollama.image.params"


def tag(q: str) -> str:
    return f"{q or 'bf16'}-mlx"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {arch: th.build_hf_checkpoint(root / arch, arch, seed=3) for arch in ("llama", "qwen3", "gemma3")}
    out["gemma3-vision"] = build_gemma3_multimodal(root / "gemma3-vision", seed=3)
    out["qwen3_5"] = build_qwen3_5(root / "qwen3_5", seed=3)
    out["qwen3_5_moe"] = build_qwen3_5(root / "qwen3_5_moe", seed=3, moe=True)
    out["gemma4"] = build_gemma4(root / "gemma4", seed=3)
    out["gemma4_moe"] = build_gemma4(root / "gemma4_moe", seed=3, moe=True)
    out["glm4_moe_lite"] = build_glm4_moe_lite(root / "glm4_moe_lite", seed=3)
    out["nemotron_h"] = build_nemotron_h(root / "nemotron_h", seed=3)
    out["laguna"] = build_laguna(root / "laguna", seed=3)
    return out


@pytest.fixture(scope="module")
def served(checkpoints):
    reg = FakeRegistry()
    chosen = {}
    for arch, hf in checkpoints.items():
        for q in QUANTS:
            layers, chosen[arch, q] = ollama_mlx_layers(hf, q)
            serve(
                reg,
                f"library/tiny-{arch}",
                tag(q),
                layers,
                ollama_config(q),
                extra=[(TEMPLATE, b"{{ .Prompt }}"), (PARAMS, b'{"temperature":0}')],
            )
    draft = draft_layers(checkpoints["qwen3"])
    with_draft = {**ollama_config(), "draft": {"model_format": "safetensors", "architecture": "Qwen3ForCausalLM"}}
    with_draft["draft"].update(tensor_prefix="draft.", config="draft/config.json")
    serve(reg, "library/tiny-llama", "draft-mlx", ollama_mlx_layers(checkpoints["llama"])[0] + draft, with_draft)
    phi3 = checkpoints["llama"].parent / "phi3"
    th.build_hf_checkpoint(phi3, "phi3")
    layers, _ = ollama_mlx_layers(phi3)
    serve(reg, "library/tiny-phi3", "latest", layers, ollama_config())
    falcon = [(mt, n, b) for mt, n, b in layers if mt == TENSOR][:1]
    falcon.append(("application/vnd.ollama.image.json", "config.json", b'{"model_type":"falcon"}'))
    serve(reg, "library/tiny-falcon", "latest", falcon, ollama_config())
    yield reg, chosen
    reg.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, served):
    root = tmp_path_factory.mktemp("mlxpull")
    srv = LiveServer(root / "models", root / "server.log", env={"MLXOLLAMA_REGISTRY": served[0].url})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def pull(http, name: str) -> list[dict]:
    r = http.post("/api/pull", json={"model": name})
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def _canonical(path: str) -> str:
    """A module path without the wrapper prefixes Hugging Face and mlx-lm spell differently."""
    for prefix in ("model.language_model.", "language_model.model.", "language_model.", "model."):
        if path.startswith(prefix):
            return path.removeprefix(prefix)
    return path


# mlx-lm's modules for Hugging Face's fused experts, as its sanitize names them
SWITCH = {"qwen3_5_moe": "mlp.switch_mlp", "gemma4": "experts.switch_glu"}


# Ollama's stacked experts ([experts, out, in] per projection) -> mlx-lm's modules
STACKED = {
    "glm4_moe_lite": {".mlp.experts.": ".mlp.switch_mlp."},
    "laguna": {".mlp.experts.": ".mlp.switch_mlp."},
    "nemotron_h": {
        ".mixer.experts.up_proj": ".mixer.switch_mlp.fc1",
        ".mixer.experts.down_proj": ".mixer.switch_mlp.fc2",
    },
}


def _mlx_modules(name: str, model_type: str) -> list[str]:
    """mlx-lm's modules for a tensor the tag quantized: fused experts are two."""
    base = name.removesuffix(".weight")
    for old, new in STACKED.get(model_type, {}).items():
        if old in base:
            return [base.replace(old, new)]
    layer = base.rsplit(".experts.", 1)[0].removesuffix(".mlp")
    if base.endswith(".experts.gate_up_proj"):
        return [f"{layer}.{SWITCH[model_type]}.{p}" for p in ("gate_proj", "up_proj")]
    if base.endswith(".experts.down_proj"):
        return [f"{layer}.{SWITCH[model_type]}.down_proj"]
    return [base]


def _mla_dequantized(model, hf: Path, chosen: dict[str, str]) -> dict[str, str]:
    """GLM's kv_b_proj as Ollama's runtime runs it: quantized, dequantized, then split by mlx-lm's
    sanitize into the unquantized embed_q / unembed_out; the other quantized tensors are returned."""
    mla = {n: q for n, q in chosen.items() if n.endswith(".self_attn.kv_b_proj.weight")}
    if mla:
        src = mx.load(str(hf / "model.safetensors"))
        plain = {}
        for name, q in mla.items():
            group, bits, mode = QUANT[q]
            packed = mx.quantize(src[name], group_size=group, bits=bits, mode=mode)
            plain[name] = mx.dequantize(*packed, group_size=group, bits=bits, mode=mode)
        model.load_weights(list(model.sanitize(plain).items()), strict=False)
    return {n: q for n, q in chosen.items() if n not in mla}


def _reference(hf: Path, chosen: dict[str, str]) -> np.ndarray:
    """mlx-lm on the original checkpoint, each tensor the tag quantized quantized the same way."""
    model, _ = load_model(hf)
    config = json.loads((hf / "config.json").read_text())
    model_type = config["model_type"]
    if model_type == "glm4_moe_lite":
        chosen = _mla_dequantized(model, hf, chosen)
        # the multi-token-prediction layer, which mlx-lm leaves out
        mtp = f".layers.{config['num_hidden_layers']}."
        chosen = {n: q for n, q in chosen.items() if mtp not in n}
    want = {_canonical(m): QUANT[q] for name, q in chosen.items() for m in _mlx_modules(name, model_type)}

    def predicate(path: str, module) -> dict | bool:
        params = want.pop(_canonical(path), None)
        if params is None or not hasattr(module, "to_quantized"):
            return False
        return {"group_size": params[0], "bits": params[1], "mode": params[2]}

    if want:
        nn.quantize(model, class_predicate=predicate)
    assert not want, f"tensors the tag quantized that the model lacks: {sorted(want)}"
    set_quantized_param_dtype(model, mx.float32)
    return th.logits(model, th.PROMPT)


@pytest.mark.parametrize(("arch", "q"), CASES, ids=[f"{a}-{q or 'bf16'}" for a, q in CASES])
def test_pulled_mlx_tag_matches_mlx_lm(arch, q, http, server, served, checkpoints, tmp_path):
    reg, chosen = served
    name = f"tiny-{arch}:{tag(q)}"
    lines = pull(http, name)
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}, lines[-3:]
    assert {"status": "converting to mlx"} in lines
    assert bool(chosen[arch, q]) == bool(q)

    store = Store(server.models_dir)
    stored = store.get_manifest(ModelName.parse(name))
    assert stored is not None
    config = stored.read_config()
    assert config["model_format"] == "mlx" and config["file_type"] == (q or "BF16")
    assert not [l for l in stored.manifest.layers if l.media_type == TENSOR]  # Ollama's layers are not kept
    folder = store.materialize(stored, tmp_path / "run")
    hf = checkpoints[arch]
    got = th.logits(th.load_float32(folder), th.PROMPT)
    ref = _reference(hf, chosen[arch, q])
    err = float(np.abs(got - ref).max())
    assert (got.argmax(-1) == ref.argmax(-1)).all(), f"{arch} {q}: top-1 differs"
    assert err == 0.0, f"{arch} {q or 'bf16'}: max abs logit diff {err:.2e}"
    assert np.abs(ref).max() > 1  # the reference is not degenerate

    if q in ("", "int4"):  # and it serves
        r = http.post(
            "/api/generate",
            json={"model": name, "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        )
        assert r.status_code == 200 and r.json()["done"], r.text


def test_repull_downloads_nothing(http, served):
    reg, _ = served
    pull(http, "tiny-llama:int8-mlx")
    before = len(reg.requests("GET", "/blobs/"))
    lines = pull(http, "tiny-llama:int8-mlx")
    assert lines[-1] == {"status": "success"}
    assert len(reg.requests("GET", "/blobs/")) == before


@pytest.mark.parametrize(
    ("model", "arch", "why"),
    [("tiny-phi3", "phi3", "mlxollama converts Ollama MLX models of"), ("tiny-falcon", "falcon", "mlx-lm")],
)
def test_unsupported_architecture_refused_before_weights(http, served, model, arch, why):
    reg, _ = served
    manifest = json.loads(reg.manifests[(f"library/{model}", "latest")])
    lines = pull(http, model)
    assert lines[-1]["error"].startswith(f'unsupported model architecture "{arch}"'), lines[-1]
    assert why in lines[-1]["error"]
    for layer in manifest["layers"]:
        if layer["mediaType"] == TENSOR:
            assert not reg.requests("GET", layer["digest"]), "a tensor layer was downloaded"


def test_draft_model_layers_are_not_downloaded(http, server, served, checkpoints, tmp_path):
    """A tag carrying a speculative-decoding draft (draft.* tensors, draft/*.json) pulls without it."""
    reg, _ = served
    manifest = json.loads(reg.manifests[("library/tiny-llama", "draft-mlx")])
    seen = len(reg.requests("GET"))  # other tags share some blobs (the draft's config is qwen3's)
    lines = pull(http, "tiny-llama:draft-mlx")
    assert lines[-1] == {"status": "success"}, lines[-3:]
    assert {"status": "skipping the draft model: speculative decoding is not used"} in lines
    is_draft = {l["digest"]: l["name"].startswith(("draft.", "draft/")) for l in manifest["layers"]}
    own = {l["digest"] for l in manifest["layers"] if not l["name"].startswith(("draft.", "draft/"))}
    drafts = [d for d, draft in is_draft.items() if draft and d not in own]  # tokenizer files are shared
    gets = [r.path for r in reg.requests("GET")[seen:]]
    assert drafts and not [d for d in drafts if any(d in p for p in gets)]
    store = Store(server.models_dir)
    stored = store.get_manifest(ModelName.parse("tiny-llama:draft-mlx"))
    folder = store.materialize(stored, tmp_path / "run")
    assert not [p for p in folder.rglob("*") if "draft" in p.name]
    got = th.logits(th.load_float32(folder), th.PROMPT)
    assert np.array_equal(got, th.logits(th.load_float32(checkpoints["llama"]), th.PROMPT))
