"""Vision models into the store (issue 17), through a live server and `mlxollama convert`.

Tiny random VLMs of three families, built with mlx-vlm's own model classes (support/tinyvlm.py):
mlx-vlm's own logits see the image; an MLX VLM folder given to /api/create is stored as it is; a
Hugging Face safetensors VLM is converted by mlx-vlm's converter and gives mlx-vlm's logits of the
original; quantizing on request leaves the vision tower in float; /api/show reports `vision` and
the projector's fields; a checkpoint that would run its own code is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlxollama.engine.catalog import is_vision_tensor, load_spec
from mlxollama.store import ModelName, Store

from ..support.fakehub import FakeHub
from ..support.liveserver import LiveServer
from ..support.tinyvlm import build_tiny_vlm, make_image, reference_logits, to_hf_layout

pytest.importorskip("mlx_vlm")

FAMILIES = ("gemma3", "qwen2_5_vl", "mistral3")
PROMPT = "Describe this image."
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vlms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlms")
    return {f: build_tiny_vlm(f, root / f, seed=i) for i, f in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory, hub):
    root = tmp_path_factory.mktemp("visionstore")
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    srv = LiveServer(root / "models", root / "server.log", env=env)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=300) as c:
        yield c


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def create_from_folder(http, name: str, folder: Path, **fields) -> tuple[int, dict]:
    """What `ollama create` does with a safetensors folder: upload every file as a blob, then
    /api/create with their digests."""
    files = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        digest = _sha256(p)
        r = http.post(f"/api/blobs/{digest}", content=p.read_bytes())
        assert r.status_code in (200, 201), r.text
        files[p.name] = digest
    r = http.post("/api/create", json={"model": name, "files": files, "stream": False, **fields})
    return r.status_code, r.json()


def vision_parameter_count(folder: Path) -> int:
    from mlxollama.convert.hf import _safetensors_header

    total = 0
    for f in folder.glob("*.safetensors"):
        for name, info in _safetensors_header(f).items():
            if name != "__metadata__" and is_vision_tensor(name):
                total += int(np.prod(info["shape"]))
    return total


def stored_dir(live, name: str, tmp_path: Path) -> Path:
    store = Store(live.models_dir)
    return store.materialize(store.get_manifest(ModelName.parse(name)), tmp_path / "run")


@pytest.mark.parametrize("family", FAMILIES)
def test_mlx_vlm_reference_sees_the_image(vlms, family):
    first = reference_logits(vlms[family], PROMPT, [make_image(1)])
    assert first.shape == (int(json.loads((vlms[family] / "config.json").read_text())["vocab_size"]),)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, reference_logits(vlms[family], PROMPT, [make_image(1)]))
    other = reference_logits(vlms[family], PROMPT, [make_image(2)])
    assert np.abs(first - other).max() > 1e-3, "a different image must change the logits"
    text_only = reference_logits(vlms[family], PROMPT)
    assert np.abs(first - text_only).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_create_stores_an_mlx_vlm_folder_as_it_is(live, http, vlms, family, tmp_path):
    name = f"vlm-{family.replace('_', '-')}"
    status, body = create_from_folder(http, name, vlms[family])
    assert (status, body) == (200, {"status": "success"})
    manifest = Store(live.models_dir).get_manifest(ModelName.parse(name)).manifest
    weights = {l.name: l.digest for l in manifest.layers if l.name and l.name.endswith(".safetensors")}
    assert weights == {"model.safetensors": _sha256(vlms[family] / "model.safetensors")}  # the same bytes

    show = http.post("/api/show", json={"model": name}).json()
    assert "vision" in show["capabilities"] and "completion" in show["capabilities"]
    assert show["details"]["families"] == [family, "clip"]
    info = show["projector_info"]
    vision = json.loads((vlms[family] / "config.json").read_text())["vision_config"]
    assert info["general.architecture"] == "clip"
    assert info["general.parameter_count"] == vision_parameter_count(vlms[family])
    assert info["clip.vision.embedding_length"] == vision["hidden_size"]
    assert info["clip.vision.block_count"] == vision.get("num_hidden_layers", vision.get("depth"))
    assert info["clip.vision.projection_dim"] == 64
    tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
    assert "vision" in tags[f"{name}:latest"]["capabilities"]

    spec = load_spec(Store(live.models_dir), ModelName.parse(name))
    assert spec.kind == "vision"
    # what the engine loads is what mlx-vlm loads: the same logits as the folder it came from
    got = reference_logits(stored_dir(live, name, tmp_path), PROMPT, [make_image(3)])
    np.testing.assert_array_equal(got, reference_logits(vlms[family], PROMPT, [make_image(3)]))


@pytest.mark.parametrize("family", ("gemma3", "qwen2_5_vl"))
def test_hugging_face_checkpoint_is_converted_by_mlx_vlm(live, http, vlms, family, tmp_path):
    hf = to_hf_layout(family, vlms[family], tmp_path / "hf")
    name = f"hf-{family.replace('_', '-')}"
    status, body = create_from_folder(http, name, hf)
    assert (status, body) == (200, {"status": "success"})
    show = http.post("/api/show", json={"model": name}).json()
    assert "vision" in show["capabilities"]
    assert show["details"]["quantization_level"] == "F32"
    folder = stored_dir(live, name, tmp_path)
    assert not list(folder.glob("*.py"))
    image = make_image(4)
    np.testing.assert_allclose(
        reference_logits(folder, PROMPT, [image]), reference_logits(vlms[family], PROMPT, [image]), atol=1e-4
    )


@pytest.mark.parametrize(
    "repo,family,hf_layout",
    [("mlx-community/tiny-mistral3-vlm", "mistral3", False), ("org/tiny-qwen2.5-vl", "qwen2_5_vl", True)],
)
def test_pull_from_hugging_face(live, http, hub, vlms, repo, family, hf_layout, tmp_path):
    folder = to_hf_layout(family, vlms[family], tmp_path / "hf") if hf_layout else vlms[family]
    hub.add_folder(repo, folder)
    name = f"hf.co/{repo}"
    r = http.post("/api/pull", json={"model": name})
    assert r.status_code == 200, r.text
    assert json.loads(r.text.splitlines()[-1]) == {"status": "success"}, r.text
    show = http.post("/api/show", json={"model": name}).json()
    assert "vision" in show["capabilities"] and show["details"]["families"] == [family, "clip"]
    image = make_image(10)
    np.testing.assert_allclose(
        reference_logits(stored_dir(live, name, tmp_path), PROMPT, [image]),
        reference_logits(vlms[family], PROMPT, [image]),
        atol=1e-4,
    )


def test_quantize_on_request_keeps_the_vision_tower_in_float(live, http, vlms, tmp_path):
    from mlxollama.convert.hf import _safetensors_header

    hf = to_hf_layout("gemma3", vlms["gemma3"], tmp_path / "hf")
    status, body = create_from_folder(http, "hf-gemma3-q8", hf, quantize="q8_0")
    assert (status, body) == (200, {"status": "success"})
    show = http.post("/api/show", json={"model": "hf-gemma3-q8"}).json()
    assert show["details"]["quantization_level"] == "Q8_0"
    assert "vision" in show["capabilities"]
    folder = stored_dir(live, "hf-gemma3-q8", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    header = {}
    for f in folder.glob("*.safetensors"):
        header.update(_safetensors_header(f))
    quantized = {n.rsplit(".", 1)[0] for n in header if n.endswith(".scales")}
    assert any(n.startswith("language_model.") for n in quantized)
    assert not any(is_vision_tensor(n) for n in quantized)
    image = make_image(5)
    got, want = reference_logits(folder, PROMPT, [image]), reference_logits(vlms["gemma3"], PROMPT, [image])
    assert np.corrcoef(got, want)[0, 1] > 0.99

    # a stored vision model quantized again by name: already quantized, Ollama's answer
    r = http.post("/api/create", json={"model": "hf-gemma3-q4", "from": "hf-gemma3-q8", "quantize": "q4_K_M"})
    assert r.status_code == 500 and "quantization is only supported" in r.json()["error"]


def test_a_stored_vision_model_quantized_from_its_name(live, http, vlms, tmp_path):
    status, _ = create_from_folder(http, "vlm-mistral-base", vlms["mistral3"])
    assert status == 200
    r = http.post(
        "/api/create", json={"model": "vlm-mistral-q4", "from": "vlm-mistral-base", "quantize": "q4_0", "stream": False}
    )
    assert r.status_code == 200, r.text
    show = http.post("/api/show", json={"model": "vlm-mistral-q4"}).json()
    assert show["details"]["quantization_level"] == "Q4_0"
    assert "vision" in show["capabilities"] and show["projector_info"]["clip.projector_type"] == "pixtral"
    folder = stored_dir(live, "vlm-mistral-q4", tmp_path)
    assert json.loads((folder / "config.json").read_text())["quantization"]["bits"] == 4
    assert np.isfinite(reference_logits(folder, PROMPT, [make_image(6)])).all()


def test_checkpoints_that_would_run_their_own_code_are_refused(http, vlms, tmp_path):
    src = tmp_path / "remote-code"
    shutil.copytree(vlms["gemma3"], src)
    config = json.loads((src / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.Model"}
    (src / "config.json").write_text(json.dumps(config))
    (src / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    status, body = create_from_folder(http, "evil", src)
    assert status == 400
    assert body["error"] == "architecture 'gemma3' needs the checkpoint's own Python code, which is not run"


def test_a_checkpoint_mlx_vlm_cannot_load_is_a_clear_400(http, vlms, tmp_path):
    import mlx.core as mx

    hf = to_hf_layout("gemma3", vlms["gemma3"], tmp_path / "hf")
    weights = mx.load(str(hf / "model.safetensors"))
    del weights["multi_modal_projector.mm_input_projection_weight"]
    mx.save_safetensors(str(hf / "model.safetensors"), weights, metadata={"format": "pt"})
    status, body = create_from_folder(http, "broken-vlm", hf)
    assert status == 400, body
    assert body["error"].startswith("mlx-vlm cannot convert the checkpoint: ")
    assert "mm_input_projection_weight" in body["error"]
    assert "Traceback" not in body["error"] and str(tmp_path) not in body["error"] and "/" not in body["error"]


def test_cli_convert_keeps_a_vision_folder(vlms, tmp_path):
    models = tmp_path / "models"
    env = {**os.environ, "MLXOLLAMA_MODELS": str(models)}
    r = subprocess.run(
        [sys.executable, "-m", "mlxollama.cli", "convert", str(vlms["qwen2_5_vl"]), "--name", "qwen-vl-tiny"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    spec = load_spec(Store(models), ModelName.parse("qwen-vl-tiny"))
    assert spec.kind == "vision" and "vision" in spec.capabilities
    assert spec.projector_info["clip.projector_type"] == "qwen2.5vl_merger"


def test_our_mlx_vlm_paths_import_none_of_its_heavy_extras(vlms, tmp_path):
    """mlx-vlm is installed --no-deps (scripts/_setup.sh): loading, preprocessing, generating and
    converting our families must not import its audio, OpenCV, datasets or web-server dependencies."""
    script = f"""
import sys
from tests.support.tinyvlm import make_image, reference_generate, to_hf_layout
from mlx_vlm.convert import convert
for folder in {[str(p) for p in vlms.values()]!r}:
    reference_generate(folder, "Describe this image.", [make_image(0)], 2)
hf = to_hf_layout("gemma3", {str(vlms["gemma3"])!r}, {str(tmp_path / "hf")!r})
convert(str(hf), mlx_path={str(tmp_path / "q")!r}, quantize=True, q_bits=4, q_group_size=64, trust_remote_code=False)
heavy = ("cv2", "mlx_audio", "datasets", "fastapi", "uvicorn", "starlette", "miniaudio", "cryptography", "torch")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
"""
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
