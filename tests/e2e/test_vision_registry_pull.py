"""Vision models from the Ollama registry (issue 17): a tiny random VLM built with mlx-vlm's own classes
(tests/support/tinyvlm.py) is written as the registry ships it (tests/support/tinygguf_vision.py):
llama.cpp's text GGUF + mmproj projector layer and Ollama's one multimodal GGUF, for gemma3 and
qwen2.5-vl, and Ollama's one file for mistral-small3.x (mistral3). Pulled through a loopback registry into a live server, the stored model must load with
`mlx_vlm.load` and hold the original's parameters, tokenize the image prompt to the same ids (the
processor files rebuilt from GGUF metadata) and give the original's logits on an image + text prompt
(top-1 identical, and close: llama.cpp keeps 1-D tensors in F32), which a different image changes;
served, its first token for that image prompt is mlx-vlm's top-1 on the original.
Families the server does not convert are refused before their weights download; `/api/create` takes
a model and an mmproj file as Ollama's does, and an hf.co GGUF repo's mmproj comes with its model.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from mlxollama.convert.gguf_vision import CONVERTED_NAMES
from mlxollama.store import ModelName, Store

from ..support import tinyvlm
from ..support.fakehub import FakeHub
from ..support.fakeregistry import FakeRegistry, digest_of
from ..support.liveserver import LiveServer
from ..support.tinygguf import MODEL
from ..support.tinygguf_vision import write_llamacpp, write_ollama_gemma3, write_ollama_mistral3, write_ollama_qwen25vl

PROJECTOR = "application/vnd.ollama.image.projector"
PROMPT = "Describe this image."


@pytest.fixture(scope="module")
def registry():
    reg = FakeRegistry()
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, registry, hub):
    root = tmp_path_factory.mktemp("visionpull")
    env = {
        "MLXOLLAMA_REGISTRY": registry.url,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    srv = LiveServer(root / "models", root / "server.log", env=env)
    try:
        with httpx.Client(base_url=srv.url, timeout=300) as c:
            yield c, root / "models"
    finally:
        srv.stop()


def _ollama_config(family: str) -> dict:
    return {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": "1M",
        "file_type": "F16",
        "architecture": "amd64",
        "os": "linux",
    }


def _original(tmp_path: Path, family: str) -> Path:
    return tinyvlm.build_tiny_vlm(family, tmp_path / "original", dtype="float16")


def _stored_folder(models: Path, name: str, out: Path) -> Path:
    """The stored model's files under their names, as the engine stages them."""
    stored = Store(models).get_manifest(ModelName.parse(name))
    assert stored is not None
    out.mkdir(parents=True)
    for layer in stored.manifest.layers:
        if layer.name:
            os.link(Store(models).blob_path(layer.digest), out / layer.name)
    return out


def _parameters(folder: Path) -> dict[str, np.ndarray]:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    model, _ = tinyvlm.load_vlm(str(folder))
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}


def _check_same_model(original: Path, pulled: Path, *, exact: bool = True) -> None:
    want, got = _parameters(original), _parameters(pulled)
    if exact:  # (a quantized text model holds packed weights and scales instead)
        assert sorted(got) == sorted(want)
        for name, value in want.items():
            assert got[name].shape == value.shape, name
            assert np.array_equal(got[name], value), name  # what the GGUF held, exactly
    else:
        tower = [k for k in want if not k.startswith("language_model.")]
        assert all(np.array_equal(got[k], want[k]) for k in tower)
    image, other = tinyvlm.make_image(1), tinyvlm.make_image(2)
    ids_want = tinyvlm.reference_inputs(original, PROMPT, [image])["input_ids"]
    ids_got = tinyvlm.reference_inputs(pulled, PROMPT, [image])["input_ids"]
    assert np.array(ids_got).tolist() == np.array(ids_want).tolist()
    ref = tinyvlm.reference_logits(original, PROMPT, [image])
    out = tinyvlm.reference_logits(pulled, PROMPT, [image])
    assert int(out.argmax()) == int(ref.argmax())
    if exact:
        assert np.abs(out - ref).max() < 0.25, np.abs(out - ref).max()
    else:  # the quantized text model's noise: the same distribution, shifted
        assert np.corrcoef(out, ref)[0, 1] > 0.99, np.corrcoef(out, ref)[0, 1]
    changed = tinyvlm.reference_logits(pulled, PROMPT, [other])
    assert np.abs(changed - out).max() > 1e-3, "the image does not reach the logits"


def _check_served(http, name: str, original: Path) -> None:
    """The server's first token for the image prompt (raw: mlx-vlm's own formatting of it) is mlx-vlm's
    top-1 on the original model, with its log-probability."""
    image = tinyvlm.make_image(1)
    ref = tinyvlm.reference_logits(original, PROMPT, [image])
    r = http.post(
        "/api/generate",
        json={
            "model": name,
            "prompt": tinyvlm.reference_prompt(original, PROMPT, 1),
            "raw": True,
            "images": [base64.b64encode(image).decode()],
            "stream": False,
            "logprobs": True,
            "options": {"temperature": 0, "num_predict": 1},
        },
    )
    assert r.status_code == 200, r.text
    (first,) = r.json()["logprobs"][:1]
    _, processor = tinyvlm.load_vlm(str(original))
    tokenizer = getattr(processor, "tokenizer", processor)
    assert first["token"] == tokenizer.decode([int(ref.argmax())]), (first, int(ref.argmax()))
    assert first["logprob"] == pytest.approx(float(ref.max()), abs=0.25)


def _pull(http, name: str) -> None:
    r = http.post("/api/pull", json={"model": name, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text


def _show(http, name: str) -> dict:
    r = http.post("/api/show", json={"model": name})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(
    "family,form,qtype",
    [
        ("gemma3", "llamacpp", "F16"),
        ("gemma3", "ollama", "F16"),
        ("gemma3", "ollama", "Q8_0"),  # quantized text model: its tied lm_head keeps the scales
        # Q4_K_M's mix (rows too short for K-quants: Q5_0, and Q8_0 for the embedding): per-module entries
        ("gemma3", "llamacpp", "Q4_K"),
        ("qwen2_5_vl", "llamacpp", "F16"),
        ("qwen2_5_vl", "ollama", "F16"),
        ("mistral3", "ollama", "F16"),  # mistral-small3.x: Pixtral tower, patch merger, [IMG_BREAK] rows
    ],
)
def test_pulled_vision_model_matches_the_original(tmp_path, server, registry, family, form, qtype):
    http, models = server
    original = _original(tmp_path, family)
    text, mmproj = tmp_path / "text.gguf", tmp_path / "mmproj.gguf"
    if form == "ollama":
        writer = {"gemma3": write_ollama_gemma3, "qwen2_5_vl": write_ollama_qwen25vl, "mistral3": write_ollama_mistral3}
        writer[family](original, text, QT[qtype])
        layers = [(MODEL, text.read_bytes())]
    else:
        write_llamacpp(original, text, mmproj, QT[qtype])
        layers = [(MODEL, text.read_bytes()), (PROJECTOR, mmproj.read_bytes())]
    arch = {"gemma3": "gemma3", "mistral3": "mistral3"}.get(family) or ("qwen2vl" if form == "llamacpp" else "qwen25vl")
    name = f"tiny-{family.replace('_', '-')}-{form}-{qtype}".lower()
    registry.add_model(f"library/{name}", "latest", layers, _ollama_config(arch))
    _pull(http, name)

    show = _show(http, name)
    assert "vision" in show.get("capabilities", []), show.get("capabilities")
    assert "clip" in show["details"]["families"]
    _check_same_model(original, _stored_folder(models, name, tmp_path / "pulled"), exact=qtype == "F16")
    _check_served(http, name, original)

    # pulled again: the conversion is reused, nothing is downloaded
    before = len(registry.requests("GET", "/blobs/"))
    _pull(http, name)
    assert len(registry.requests("GET", "/blobs/")) == before


@pytest.mark.parametrize(
    "family,projector,named",
    [
        ("llama", True, "llama with a projector"),  # llava
        ("mistral3", True, "mistral3 with a projector"),  # llama.cpp's pixtral mmproj: not converted
        ("mllama", False, "llama3.2-vision"),
    ],
)
def test_unconverted_vision_families_are_refused_before_download(server, registry, family, projector, named):
    http, _ = server
    weights = os.urandom(4096)
    layers = [(MODEL, weights)] + ([(PROJECTOR, os.urandom(2048))] if projector else [])
    name = f"tiny-refused-{family}"
    registry.add_model(f"library/{name}", "latest", layers, _ollama_config(family))
    r = http.post("/api/pull", json={"model": name, "stream": False})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert named in error and CONVERTED_NAMES in error, error
    assert not registry.requests("GET", digest_of(weights)), "the model layer was downloaded"


def test_create_with_a_projector_file(tmp_path, server):
    http, models = server
    original = _original(tmp_path, "qwen2_5_vl")
    text, mmproj = tmp_path / "model.gguf", tmp_path / "mmproj-model-f16.gguf"
    write_llamacpp(original, text, mmproj)
    files = {}
    for path in (text, mmproj):
        data = path.read_bytes()
        digest = digest_of(data)
        assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
        files[path.name] = digest
    r = http.post("/api/create", json={"model": "tiny-vl-created", "files": files, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
    assert "vision" in _show(http, "tiny-vl-created").get("capabilities", [])
    _check_same_model(original, _stored_folder(models, "tiny-vl-created", tmp_path / "created"))


def test_hf_gguf_repo_with_an_mmproj(tmp_path, server, hub):
    """hf.co pulls of a llama.cpp GGUF repo bring its mmproj along (the F16 one), as Ollama's do."""
    http, models = server
    original = _original(tmp_path, "gemma3")
    text, mmproj = tmp_path / "text.gguf", tmp_path / "mmproj.gguf"
    write_llamacpp(original, text, mmproj)
    files = {
        "tiny-gemma3-F16.gguf": text.read_bytes(),
        "mmproj-tiny-gemma3-f16.gguf": mmproj.read_bytes(),
        "mmproj-tiny-gemma3-Q8_0.gguf": b"GGUF not this one",
    }
    hub.add_repo("org/tiny-gemma3-GGUF", files)
    _pull(http, "hf.co/org/tiny-gemma3-GGUF")
    assert "vision" in _show(http, "hf.co/org/tiny-gemma3-GGUF").get("capabilities", [])
    assert not any("Q8_0" in path for method, path in hub.log if method == "GET" and "/resolve/" in path)
    _check_same_model(original, _stored_folder(models, "hf.co/org/tiny-gemma3-GGUF", tmp_path / "pulled"))


def test_convert_a_folder_with_an_mmproj(tmp_path):
    """`mlxollama convert DIR` of a folder as llama.cpp's repos ship a vision model: model + mmproj."""
    from mlxollama.convert.create import convert_path

    original = _original(tmp_path, "qwen2_5_vl")
    repo = tmp_path / "repo"
    repo.mkdir()
    write_llamacpp(original, repo / "Tiny-VL-F16.gguf", repo / "mmproj-Tiny-VL-f16.gguf")
    stored = convert_path(repo, "tiny-vl-local", store=Store(tmp_path / "models"))
    assert "vision" in stored.read_config()["capabilities"]
    _check_same_model(original, _stored_folder(tmp_path / "models", "tiny-vl-local", tmp_path / "converted"))


def test_a_projector_of_another_model_is_refused(tmp_path, server):
    """/api/create of a gemma3 GGUF with qwen2.5-vl's mmproj: a 400 naming the projector's type."""
    http, _ = server
    write_llamacpp(_original(tmp_path / "g", "gemma3"), tmp_path / "gemma3.gguf", tmp_path / "gemma3-mmproj.gguf")
    write_llamacpp(_original(tmp_path / "q", "qwen2_5_vl"), tmp_path / "qwen.gguf", tmp_path / "qwen-mmproj.gguf")
    files = {}
    for path in (tmp_path / "gemma3.gguf", tmp_path / "qwen-mmproj.gguf"):
        data = path.read_bytes()
        assert http.post(f"/api/blobs/{digest_of(data)}", content=data).status_code in (200, 201)
        files[path.name] = digest_of(data)
    r = http.post("/api/create", json={"model": "tiny-mismatched", "files": files, "stream": False})
    assert r.status_code == 400, r.text
    assert "qwen2.5vl_merger" in r.json()["error"] and "/" not in r.json()["error"], r.text
