"""Pull and push against loopback servers that speak each protocol: an Ollama-style registry
(token challenge, redirects to "object storage", cut connections), a Hugging Face hub, and a
fake of the user's Ollama store (reference §5.10, §5.11, §13, A.5)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest
from gguf import GGMLQuantizationType as QT

from mlxollama.store import Store, media

from ..support.fakehub import FakeHub
from ..support.fakeregistry import FakeRegistry
from ..support.ggufwriter import write_gguf
from ..support.liveserver import LiveServer
from ..support.tinygguf import LICENSE, MODEL, OLLAMA_CONFIG, PARAMS, TEMPLATE, snapshot_tree, write_ollama_store
from ..support.tinyhf import build_hf_checkpoint

GO_TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Weights:
    """Distinct tiny GGUFs (each pull test needs weights nobody converted before)."""

    def __init__(self, root: Path):
        self.root = root
        self.hf: dict[int, Path] = {}

    def gguf(self, seed: int, qtype: QT = QT.F16) -> bytes:
        if seed not in self.hf:
            self.hf[seed] = build_hf_checkpoint(self.root / f"hf{seed}", "llama", seed=seed, dtype="float16")
        path = self.root / f"w{seed}-{qtype.name}.gguf"
        if not path.exists():
            write_gguf(self.hf[seed], path, qtype)
        return path.read_bytes()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return Weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def registry(weights):
    reg = FakeRegistry(require_token=True, redirect_blobs=True)
    reg.add_model(
        "library/tiny",
        "latest",
        [
            (MODEL, weights.gguf(0, QT.Q8_0)),
            (TEMPLATE, GO_TEMPLATE.encode()),
            (LICENSE, b"tiny license"),
            (PARAMS, b'{"stop":["<|im_end|>"],"temperature":0.2}'),
        ],
        OLLAMA_CONFIG,
    )
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture(scope="module")
def ollama_store(tmp_path_factory, weights):
    root = tmp_path_factory.mktemp("ollama") / "models"
    gguf = root.parent / "local.gguf"
    gguf.write_bytes(weights.gguf(4))
    write_ollama_store(root, ("registry.ollama.ai", "library", "localonly", "latest"), gguf, template=GO_TEMPLATE)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, registry, hub, ollama_store):
    root = tmp_path_factory.mktemp("pullsrv")
    srv = LiveServer(
        root / "models",
        root / "server.log",
        env={
            "MLXOLLAMA_REGISTRY": registry.url,
            "OLLAMA_MODELS": str(ollama_store),
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(root / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "OLLAMA_NOPRUNE": "",  # replaced layers are pruned, as by default
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def store(server) -> Store:
    return Store(server.models_dir)


def lines_of(resp) -> list[dict]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in resp.text.splitlines()]


def pull(http, name: str, **extra) -> list[dict]:
    return lines_of(http.post("/api/pull", json={"model": name, **extra}))


def blob_gets(registry: FakeRegistry, digest: str) -> list:
    """Requests that actually served bytes of `digest` (the redirect target, or a direct GET)."""
    return [r for r in registry.requests("GET", digest) if r.status in (200, 206)]


def generate(http, model: str) -> None:
    r = http.post(
        "/api/generate", json={"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    )
    assert r.status_code == 200 and r.json()["done"], r.text


def no_partials(store: Store) -> bool:
    return not [p for p in store.blobs_dir.iterdir() if p.name.endswith("-partial") or p.name.startswith(".tmp")]


# --- registry pulls ---------------------------------------------------------------------------


def test_pull_progress_auth_redirects_and_conversion(http, store, registry):
    manifest = json.loads(registry.manifests[("library/tiny", "latest")])
    lines = pull(http, "tiny")
    assert lines[0] == {"status": "pulling manifest"}
    assert [l["status"] for l in lines[-4:]] == [
        "verifying sha256 digest",
        "converting to mlx",
        "writing manifest",
        "success",
    ]
    progress = lines[1:-4]
    # layers in manifest order, then the config; `completed` omitted until bytes arrive
    order = []
    for line in progress:
        assert set(line) <= {"status", "digest", "total", "completed"}
        assert line["status"] == "pulling " + line["digest"][7:19]
        if not order or order[-1] != line["digest"]:
            order.append(line["digest"])
    assert order == [l["digest"] for l in manifest["layers"]] + [manifest["config"]["digest"]]
    model = manifest["layers"][0]
    model_lines = [l for l in progress if l["digest"] == model["digest"]]
    assert "completed" not in model_lines[0] and model_lines[0]["total"] == model["size"]
    for layer in [*manifest["layers"], manifest["config"]]:
        last = [l for l in progress if l["digest"] == layer["digest"]][-1]
        assert last["total"] == last["completed"] == layer["size"]

    # the 401 challenge was answered with a token; storage on another host never saw it
    first = registry.requests(contains="/manifests/latest")
    assert first[0].status == 401 and first[1].headers.get("Authorization") == f"Bearer {registry.token}"
    assert registry.requests("GET", "/token?")
    storage = registry.requests("GET", "/storage/")
    assert storage and all("Authorization" not in r.headers for r in storage)

    stored = store.get_manifest("tiny")
    assert not store.has_blob(model["digest"])  # the GGUF was converted, not kept
    assert not store.has_blob(manifest["config"]["digest"])
    assert no_partials(store)
    assert {l.name for l in stored.manifest.layers if l.name} >= {"config.json", "model.safetensors"}
    show = http.post("/api/show", json={"model": "tiny"}).json()
    assert show["template"] == GO_TEMPLATE and show["license"] == "tiny license"
    assert show["details"]["quantization_level"] == "Q8_0" and show["details"]["parameter_size"] == "1.4M"
    assert "temperature" in show["parameters"]
    tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
    assert tags["tiny:latest"]["details"]["format"] == "mlx"
    generate(http, "tiny")


def test_repull_is_up_to_date_without_downloads(http, store, registry):
    pull(http, "tiny")
    before = len(registry.requests("GET", "/storage/"))
    raw = store.get_manifest("tiny").raw
    lines = pull(http, "library/tiny:latest")
    statuses = [l["status"] for l in lines]
    assert "converting to mlx" not in statuses and statuses[-1] == "success"
    assert all(l["completed"] == l["total"] for l in lines if "digest" in l)
    assert len(registry.requests("GET", "/storage/")) == before
    assert store.get_manifest("tiny").raw == raw
    r = http.post("/api/pull", json={"name": "tiny", "stream": False})  # ollama-js sends `name`
    assert (r.status_code, r.json()) == (200, {"status": "success"})


def test_repull_of_a_changed_model_removes_unused_layers(http, store, registry, weights):
    layers = [(MODEL, weights.gguf(0, QT.Q8_0)), (TEMPLATE, b"{{ .Prompt }} v1")]
    registry.add_model("library/evolving", "latest", layers, OLLAMA_CONFIG)
    assert pull(http, "evolving")[-1] == {"status": "success"}
    old = store.get_manifest("evolving").layers_by_type(media.TEMPLATE)[0].digest
    registry.add_model("library/evolving", "latest", [layers[0], (TEMPLATE, b"{{ .Prompt }} v2")], OLLAMA_CONFIG)
    statuses = [l["status"] for l in pull(http, "evolving")]
    assert statuses[-3:] == ["writing manifest", "removing unused layers", "success"]
    assert not store.has_blob(old)
    assert store.get_manifest("evolving").read_layer_text(media.TEMPLATE) == "{{ .Prompt }} v2"


def test_pull_errors(http, registry, store):
    assert pull(http, "nothing-here") == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    r = http.post("/api/pull", json={"model": "nothing-here", "stream": False})
    assert (r.status_code, r.json()) == (500, {"error": "pull model manifest: file does not exist"})
    for bad in ("", "bad:", "a//b"):
        r = http.post("/api/pull", json={"model": bad})
        assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
    r = http.post("/api/pull", json={"model": f"http://{registry.host}/library/tiny"})
    assert (r.status_code, r.json()) == (500, {"error": "insecure protocol http"})
    assert "nothing-here:latest" not in [m["name"] for m in http.get("/api/tags").json()["models"]]


def test_unsupported_architecture_is_refused_before_the_download(http, registry, store):
    blob = b"\0" * 500_000
    registry.add_model("library/falconish", "latest", [(MODEL, blob)], {**OLLAMA_CONFIG, "model_family": "falcon"})
    lines = pull(http, "falconish")
    assert lines[0] == {"status": "pulling manifest"}
    assert "error" in lines[-1] and '"falcon"' in lines[-1]["error"] and "llama" in lines[-1]["error"]
    assert not blob_gets(registry, sha(blob))


def test_cut_connection_is_resumed_with_range(http, store, registry, weights):
    data = weights.gguf(1)
    registry.add_model("library/cut", "latest", [(MODEL, data)], OLLAMA_CONFIG)
    registry.cuts[sha(data)] = 1
    assert pull(http, "cut")[-1] == {"status": "success"}
    gets = blob_gets(registry, sha(data))
    assert len(gets) == 2 and gets[0].status == 200 and gets[1].status == 206
    half = len(data) // 2
    assert gets[1].headers.get("Range") == f"bytes={half}-"
    assert no_partials(store)
    generate(http, "cut")


def test_interrupted_pull_leaves_nothing_visible_and_resumes(server, http, store, registry, weights):
    data = weights.gguf(1, QT.Q8_0)
    digest = sha(data)
    registry.add_model("library/slow", "latest", [(MODEL, data)], OLLAMA_CONFIG)
    partial = store.blobs_dir / (digest.replace(":", "-") + "-partial")
    registry.blob_delay = 0.03
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            with c.stream("POST", "/api/pull", json={"model": "slow"}) as r:
                for line in r.iter_lines():
                    obj = json.loads(line)
                    if obj.get("digest") == digest and obj.get("completed", 0) > 0:
                        break  # hang up mid-download, like Ctrl-C in `ollama pull`
        deadline = time.time() + 10
        size = -1
        while time.time() < deadline:  # the server notices the disconnect and stops writing
            time.sleep(0.3)
            now = partial.stat().st_size if partial.exists() else 0
            if now == size:
                break
            size = now
    finally:
        registry.blob_delay = 0.0
    assert 0 < size < len(data)
    assert "slow:latest" not in [m["name"] for m in http.get("/api/tags").json()["models"]]
    assert store.get_manifest("slow") is None and not store.has_blob(digest)

    assert pull(http, "slow")[-1] == {"status": "success"}
    resumed = blob_gets(registry, digest)[-1]
    assert (resumed.status, resumed.headers.get("Range")) == (206, f"bytes={size}-")
    assert no_partials(store)


def test_digest_mismatch_discards_the_download(http, store, registry, weights):
    data = weights.gguf(2)
    registry.add_model("library/corrupt", "latest", [(MODEL, data)], OLLAMA_CONFIG)
    registry.corrupt.add(sha(data))
    try:
        lines = pull(http, "corrupt")
    finally:
        registry.corrupt.discard(sha(data))
    bad = sha(bytes([data[0] ^ 0xFF]) + data[1:])
    assert lines[-1] == {"error": f"digest mismatch, file must be downloaded again: want {sha(data)}, got {bad}"}
    assert not store.has_blob(sha(data)) and not store.has_blob(bad) and no_partials(store)
    assert store.get_manifest("corrupt") is None


def test_concurrent_pulls_share_one_download(http, server, store, registry, weights):
    data = weights.gguf(2, QT.Q8_0)
    layers = [(MODEL, data), (TEMPLATE, GO_TEMPLATE.encode())]
    registry.add_model("library/twin", "latest", layers, OLLAMA_CONFIG)
    registry.add_model("library/twin", "other-tag", layers, OLLAMA_CONFIG)
    registry.blob_delay = 0.01
    results: dict[str, list] = {}

    def run(key: str, name: str) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            results[key] = lines_of(c.post("/api/pull", json={"model": name}))

    try:
        threads = [
            threading.Thread(target=run, args=(k, n))
            for k, n in (("a", "twin"), ("b", "twin"), ("c", "twin:other-tag"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        registry.blob_delay = 0.0
    assert all(results[k][-1] == {"status": "success"} for k in "abc"), results
    assert len(blob_gets(registry, sha(data))) == 1
    a, c = store.get_manifest("twin"), store.get_manifest("twin:other-tag")
    weights_of = lambda m: [l.digest for l in m.manifest.layers if l.media_type in media.MLX_TYPES]  # noqa: E731
    assert weights_of(a) == weights_of(c) and all(store.has_blob(d) for d in weights_of(a))
    assert no_partials(store)
    generate(http, "twin:other-tag")


def test_create_pulls_a_missing_base_first(http, store):
    lines = lines_of(http.post("/api/create", json={"model": "on-top", "from": "tiny:latest", "system": "S"}))
    assert lines[-1] == {"status": "success"}
    http.request("DELETE", "/api/delete", json={"model": "tiny"})
    lines = lines_of(http.post("/api/create", json={"model": "on-top2", "from": "tiny", "system": "S2"}))
    statuses = [l["status"] for l in lines]
    assert statuses[0] == "pulling manifest" and "writing manifest" in statuses and statuses[-1] == "success"
    assert store.get_manifest("tiny") is not None and store.get_manifest("on-top2") is not None


# --- push ---------------------------------------------------------------------------------------


def test_push_then_pull_into_a_fresh_store(http, store, registry, tmp_path):
    target = f"{registry.host}/me/pushed:v1"
    assert pull(http, "tiny")[-1] == {"status": "success"}
    assert http.post("/api/copy", json={"source": "tiny", "destination": target}).status_code == 200
    stored = store.get_manifest(target)
    pushed = [l.digest for l in [*stored.manifest.layers, stored.manifest.config]]
    missing = [d for d in pushed if d not in registry.blobs]  # the registry has the text layers already
    lines = lines_of(http.post("/api/push", json={"model": target, "insecure": True}))
    statuses = [l["status"] for l in lines]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    seen = [l["digest"] for l in lines if "digest" in l]
    assert sorted(set(seen)) == sorted(pushed)
    assert all(re.fullmatch(r"pushing [0-9a-f]{12}", l["status"]) for l in lines if "digest" in l)
    assert registry.manifests[("me/pushed", "v1")] == stored.raw
    uploads = len(registry.requests("PUT", "/blobs/uploads/"))
    assert uploads == len(missing) > 0
    for d in pushed:
        assert registry.blobs[d] == store.blob_path(d).read_bytes()

    again = lines_of(http.post("/api/push", json={"name": target, "insecure": True}))  # blobs exist: skipped
    assert again[-1] == {"status": "success"}
    assert all(l["completed"] == l["total"] for l in again if "digest" in l)
    assert len(registry.requests("PUT", "/blobs/uploads/")) == uploads

    fresh = LiveServer(tmp_path / "fresh", tmp_path / "fresh.log", env={"OLLAMA_MODELS": str(tmp_path / "none")})
    try:
        with httpx.Client(base_url=fresh.url, timeout=120) as c:
            r = c.post("/api/pull", json={"model": target, "insecure": True, "stream": False})
            assert (r.status_code, r.json()) == (200, {"status": "success"})
            copy = Store(tmp_path / "fresh").get_manifest(target)
            assert copy.raw == stored.raw  # byte for byte: same /api/tags digest
            for layer in copy.manifest.all_layers():
                assert (
                    Store(tmp_path / "fresh").blob_path(layer.digest).read_bytes()
                    == store.blob_path(layer.digest).read_bytes()
                )
            generate(c, target)
    finally:
        fresh.stop()


def test_push_errors(http):
    assert lines_of(http.post("/api/push", json={"model": "127.0.0.1:9/me/none", "insecure": True}))[:2] == [
        {"status": "retrieving manifest"},
        {"status": "couldn't retrieve manifest"},
    ]
    r = http.post("/api/push", json={"model": ""})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


# --- the official client ---------------------------------------------------------------------------


def test_official_client_pull(server, registry, weights):
    registry.add_model("library/client", "latest", [(MODEL, weights.gguf(3))], OLLAMA_CONFIG)
    client = ollama.Client(host=server.url)
    progress = list(client.pull("client", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.digest and p.total and p.completed == p.total for p in progress)
    assert client.pull("client").status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("does-not-exist")
    assert "file does not exist" in e.value.error


# --- the user's Ollama store ---------------------------------------------------------------------


def test_pull_imports_from_the_ollama_store_read_only(http, store, registry, ollama_store):
    before = snapshot_tree(ollama_store)
    lines = pull(http, "localonly")
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    assert "converting to mlx" in [l["status"] for l in lines]
    assert not registry.requests(contains="localonly")  # no download
    assert snapshot_tree(ollama_store) == before
    show = http.post("/api/show", json={"model": "localonly"}).json()
    assert show["template"] == GO_TEMPLATE and show["details"]["format"] == "mlx"
    generate(http, "localonly")


# --- Hugging Face ----------------------------------------------------------------------------------


def test_hf_gguf_repo(http, store, hub, weights):
    q8, f16 = weights.gguf(5, QT.Q8_0), weights.gguf(5)
    hub.add_repo("org/Tiny-GGUF", {"tiny.Q8_0.gguf": q8, "tiny.F16.gguf": f16, "README.md": b"# tiny"})
    lines = pull(http, "hf.co/org/Tiny-GGUF:q8_0")
    assert lines[0] == {"status": "pulling manifest"}
    d = sha(q8)
    progress = [l for l in lines if "digest" in l]
    assert progress and all(l == {**l, "status": f"pulling {d[7:19]}", "digest": d, "total": len(q8)} for l in progress)
    assert progress[-1]["completed"] == len(q8)
    assert [l["status"] for l in lines[-4:]] == [
        "verifying sha256 digest",
        "converting to mlx",
        "writing manifest",
        "success",
    ]
    tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
    assert tags["hf.co/org/Tiny-GGUF:q8_0"]["details"]["quantization_level"] == "Q8_0"
    generate(http, "hf.co/org/Tiny-GGUF:q8_0")
    assert not [p for p in store.root.rglob("*.gguf")]  # download folder cleaned up

    # `latest` picks by preference (Q8_0 before F16 here) and reuses the conversion: no download
    gets = len([x for x in hub.log if x[0] == "GET" and "/resolve/" in x[1]])
    lines = pull(http, "huggingface.co/org/Tiny-GGUF")
    assert lines[-1] == {"status": "success"} and "converting to mlx" not in [l["status"] for l in lines]
    assert len([x for x in hub.log if x[0] == "GET" and "/resolve/" in x[1]]) == gets

    lines = pull(http, "hf.co/org/Tiny-GGUF:Q5_K_M")
    assert lines[-1] == {"error": 'pull model manifest: no GGUF file for tag "Q5_K_M" (available: F16, Q8_0)'}
    assert pull(http, "hf.co/org/absent")[-1] == {"error": "pull model manifest: file does not exist"}


def test_hf_digest_mismatch(http, hub, store, weights):
    data = weights.gguf(6)
    hub.add_repo("org/bad-GGUF", {"m.gguf": data})
    hub.lfs_sha_override[("org/bad-GGUF", "m.gguf")] = "0" * 64
    lines = pull(http, "hf.co/org/bad-GGUF")
    assert lines[-1] == {
        "error": f"digest mismatch, file must be downloaded again: want sha256:{'0' * 64}, got {sha(data)}"
    }
    assert store.get_manifest("hf.co/org/bad-GGUF") is None


def test_hf_safetensors_repo_is_converted_and_quantized(http, store, hub, weights):
    weights.gguf(0)  # builds hf0
    hub.add_folder("org/tiny-hf", weights.hf[0], extra={"README.md": b"# card"})
    lines = pull(http, "hf.co/org/tiny-hf")
    statuses = [l["status"] for l in lines]
    assert statuses[0] == "pulling manifest" and "pulling model" in statuses and "converting model" in statuses
    assert statuses[-2:] == ["writing manifest", "success"]
    total = sum(len(p.read_bytes()) for p in weights.hf[0].iterdir() if p.is_file())
    assert [l for l in lines if l["status"] == "pulling model"][-1] == {
        "status": "pulling model",
        "total": total,
        "completed": total,
    }
    stored = store.get_manifest("hf.co/org/tiny-hf")
    assert "README.md" not in {l.name for l in stored.manifest.layers}
    details = http.post("/api/show", json={"model": "hf.co/org/tiny-hf"}).json()["details"]
    assert (details["family"], details["quantization_level"]) == ("llama", "F16")
    generate(http, "hf.co/org/tiny-hf")

    assert pull(http, "hf.co/org/tiny-hf:4bit")[-1] == {"status": "success"}
    cfg = json.loads(store.get_manifest("hf.co/org/tiny-hf:4bit").read_named_text("config.json"))
    assert cfg["quantization"]["bits"] == 4
    generate(http, "hf.co/org/tiny-hf:4bit")


def test_hf_mlx_repo_is_stored_as_is(http, store, hub, tmp_path, weights):
    from mlxollama.convert.hf import convert_hf_checkpoint

    weights.gguf(0)
    mlx_dir = tmp_path / "mlx4"
    convert_hf_checkpoint(weights.hf[0], mlx_dir, quantize="4bit")
    hub.add_folder("mlx-community/tiny-4bit", mlx_dir)
    lines = pull(http, "hf.co/mlx-community/tiny-4bit")
    assert lines[-1] == {"status": "success"} and "converting model" not in [l["status"] for l in lines]
    stored = store.get_manifest("hf.co/mlx-community/tiny-4bit")
    by_name = {l.name: l.digest for l in stored.manifest.layers if l.name}
    for p in mlx_dir.glob("*.safetensors"):
        assert by_name[p.name] == sha(p.read_bytes())  # the repo's weights, byte for byte
    assert (
        http.post("/api/show", json={"model": "hf.co/mlx-community/tiny-4bit"}).json()["details"]["quantization_level"]
        == "4bit"
    )
    lines = pull(http, "hf.co/mlx-community/tiny-4bit:8bit")
    assert lines[-1] == {"error": "quantization is only supported for F16, BF16 and F32 models"}
    generate(http, "hf.co/mlx-community/tiny-4bit")
