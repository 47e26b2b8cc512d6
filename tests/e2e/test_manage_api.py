"""Blobs, create, copy and delete on a live server with tiny models (reference §5.12-§5.15)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx
import ollama
import pytest

from mlxollama.store import Store, media

from ..support.liveserver import LiveServer
from ..support.tinygguf import build_lora_adapter, build_tiny_files

HEX64 = re.compile(r"^sha256:[0-9a-f]{64}$")
ZERO_DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return build_tiny_files(tmp_path_factory.mktemp("tinyfiles"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("manage")
    srv = LiveServer(
        root / "models",
        root / "server.log",
        env={
            "OLLAMA_MODELS": str(root / "no-ollama-store"),
            "MLXOLLAMA_REGISTRY": "http://127.0.0.1:9",  # nothing listens: no test reaches a real registry
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


def ndjson(resp) -> list[dict]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    assert resp.text.endswith("\n")
    return [json.loads(line) for line in resp.text.splitlines()]


def upload(http, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = http.post(f"/api/blobs/{digest}", content=data)
    assert r.status_code in (200, 201), r.text
    return digest


def generate(http, model: str) -> dict:
    r = http.post(
        "/api/generate",
        json={"model": model, "prompt": "hello", "stream": False, "options": {"num_predict": 3, "temperature": 0}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["done"] is True and body["eval_count"] > 0
    return body


@pytest.fixture(scope="module")
def base(http, files) -> str:
    """`base`: the F16 GGUF created through /api/create with params and a system prompt."""
    digest = upload(http, files.f16)
    r = http.post(
        "/api/create",
        json={
            "model": "base",
            "files": {"tiny-F16.gguf": digest},
            "system": "Be brief.",
            "parameters": {"temperature": 0.5, "stop": ["###"]},
        },
    )
    lines = ndjson(r)
    assert lines[-1] == {"status": "success"}
    return "base:latest"


# --- blobs -------------------------------------------------------------------------------


def test_blob_head_post_and_errors(http):
    data = b"some layer bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    h = http.head(f"/api/blobs/{digest}")
    assert h.status_code == 404 and h.content == b""
    r = http.post(f"/api/blobs/{digest}", content=data)
    assert (r.status_code, r.content) == (201, b"")
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    assert http.head(f"/api/blobs/{digest.replace(':', '-')}").status_code == 200  # the file-name form too
    r = http.post(f"/api/blobs/{digest}", content=data)
    assert (r.status_code, r.content) == (200, b"")

    r = http.post(f"/api/blobs/{ZERO_DIGEST}", content=data)
    assert r.status_code == 400
    assert r.json() == {"error": f'digest mismatch, expected "{ZERO_DIGEST}", got "{digest}"'}
    assert http.head(f"/api/blobs/{ZERO_DIGEST}").status_code == 404
    for bad in ("sha256:abc", "md5:" + "0" * 32, "nothing"):
        r = http.post(f"/api/blobs/{bad}", content=data)
        assert (r.status_code, r.json()) == (400, {"error": "invalid digest format"}), bad


def test_blob_upload_is_streamed_in_chunks(http, store):
    chunk = bytes(range(256)) * 4096  # 1 MiB
    n = 24
    digest = "sha256:" + hashlib.sha256(chunk * n).hexdigest()
    r = http.post(f"/api/blobs/{digest}", content=(chunk for _ in range(n)))  # chunked transfer encoding
    assert r.status_code == 201, r.text
    assert store.blob_size(digest) == len(chunk) * n
    assert not [p for p in store.blobs_dir.iterdir() if p.name.startswith(".tmp")]


# --- create ------------------------------------------------------------------------------


def test_create_from_gguf_file_progress_show_and_generate(http, store, base):
    stored = store.get_manifest(base)
    names = {l.name for l in stored.manifest.layers if l.name}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(l.media_type == media.MODEL for l in stored.manifest.layers)  # no GGUF layer kept

    show = http.post("/api/show", json={"model": "base"}).json()
    assert show["system"] == "Be brief."
    assert show["details"]["format"] == "mlx" and show["details"]["family"] == "llama"
    assert show["details"]["quantization_level"] == "F16"
    assert show["details"]["parameter_size"].endswith("M")
    assert "temperature" in show["parameters"] and '"###"' in show["parameters"]
    generate(http, "base")


def test_create_progress_lines(http, files):
    digest = upload(http, files.q8)
    lines = ndjson(
        http.post(
            "/api/create",
            json={
                "model": "progress-check",
                "files": {"m.gguf": digest},
                "template": "{{ .Prompt }}",
                "license": ["L1", "L2"],
            },
        )
    )
    statuses = [l["status"] for l in lines]
    assert statuses[:2] == ["parsing GGUF", "converting to mlx"]
    layer_lines = statuses[2:-2]
    assert len(layer_lines) >= 6 and all(
        re.fullmatch(r"(creating new|using existing) layer sha256:[0-9a-f]{64}", s) for s in layer_lines
    )
    assert sum(s.startswith("creating new") for s in layer_lines) >= 4  # weights, config, template, licenses
    assert statuses[-2:] == ["writing manifest", "success"]
    # the template and license texts are layers of their own
    show = http.post("/api/show", json={"model": "progress-check"}).json()
    assert show["template"] == "{{ .Prompt }}" and show["license"] == "L1\nL2"
    assert show["details"]["quantization_level"] == "Q8_0"

    # The same GGUF again: its earlier conversion is reused, nothing is converted or written anew.
    lines = ndjson(
        http.post(
            "/api/create",
            json={
                "model": "progress-again",
                "files": {"m.gguf": digest},
                "template": "{{ .Prompt }}",
                "license": ["L1", "L2"],
            },
        )
    )
    statuses = [l["status"] for l in lines]
    assert statuses[0] == "parsing GGUF" and "converting to mlx" not in statuses
    assert all(s.startswith("using existing layer") for s in statuses[1:-2])


def test_create_from_existing_model(http, store, base):
    lines = ndjson(
        http.post(
            "/api/create",
            json={
                "model": "derived",
                "from": "base",
                "system": "Be verbose.",
                "parameters": {"stop": ["<|im_end|>"]},
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            },
        )
    )
    statuses = [l["status"] for l in lines]
    base_layers = store.get_manifest(base).manifest.layers
    reused = [s for s in statuses if s.startswith("using existing layer")]
    assert len(reused) >= len(base_layers) - 2  # every inherited file layer, once
    assert any(s.startswith("creating new layer") for s in statuses)
    derived = store.get_manifest("derived")
    assert all(l.from_ == "base:latest" for l in derived.manifest.layers if l.media_type in media.MLX_TYPES)
    params = derived.read_layer_json(media.PARAMS)
    assert params == {"stop": ["<|im_end|>"], "temperature": 0.5}  # request keys win, base keys stay
    assert derived.read_layer_text(media.SYSTEM) == "Be verbose."
    assert len(derived.layers_by_type(media.SYSTEM)) == 1
    assert derived.read_layer_json(media.MESSAGES)[1] == {"role": "assistant", "content": "hello"}
    # weights are shared, not copied
    assert {l.digest for l in derived.manifest.layers if l.media_type == media.MLX_WEIGHTS} == {
        l.digest for l in base_layers if l.media_type == media.MLX_WEIGHTS
    }


def test_create_quantizes_an_f16_model(http, store, base):
    lines = ndjson(http.post("/api/create", json={"model": "base-q4", "from": "base", "quantize": "q4_K_M"}))
    quant = [l for l in lines if l["status"].startswith("quantizing")]
    assert quant and quant[0]["status"] == "quantizing F16 model to Q4_K_M"
    assert quant[-1]["digest"] == "0000000000000000000" and quant[-1]["completed"] == quant[-1]["total"] > 0
    assert {"status": "verifying conversion"} in lines and lines[-1] == {"status": "success"}
    stored = store.get_manifest("base-q4")
    cfg = json.loads(stored.read_named_text("config.json"))
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"]["group_size"] == 64
    base_size = store.get_manifest(base).size
    assert stored.size < base_size * 0.6
    assert http.post("/api/show", json={"model": "base-q4"}).json()["details"]["quantization_level"] == "Q4_K_M"
    generate(http, "base-q4")


def test_quantize_errors(http, files, base):
    q8 = upload(http, files.q8)
    r = http.post("/api/create", json={"model": "q8", "files": {"q8.gguf": q8}, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    r = http.post("/api/create", json={"model": "q8-again", "from": "q8", "quantize": "q8_0"})
    assert (r.status_code, r.json()) == (500, {"error": "quantization is only supported for F16, BF16 and F32 models"})
    r = http.post("/api/create", json={"model": "nine", "from": "base", "quantize": "q9"})
    assert r.status_code == 500
    assert r.json()["error"].startswith("unsupported quantization type Q9 - supported types are ")
    assert http.post("/api/show", json={"model": "nine"}).status_code == 404


@pytest.mark.parametrize(
    "body,status,error",
    [
        ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "x", "files": {"../escape.gguf": ZERO_DIGEST}}, 400, "file path must be relative"),
        ({"model": "x", "files": {"/abs.gguf": ZERO_DIGEST}}, 400, "file path must be relative"),
        ({"model": "x", "files": {"a.gguf": ""}}, 400, "invalid digest format"),
        ({"model": "x", "files": {"a.gguf": "sha256:123"}}, 400, "invalid digest format"),
        ({"model": "", "from": "base"}, 400, "invalid model name"),
        (
            {"model": "x", "from": "base", "template": "{{ nope }}"},
            400,
            'template error: template: :1: function "nope" not defined',
        ),
        ({"model": "x", "files": {"a.gguf": ZERO_DIGEST}}, 400, f"blob not found for a.gguf (digest {ZERO_DIGEST})"),
        (
            {"model": "x", "modelfile": "FROM base\nBOGUS x\n"},
            400,
            '(line 2): command must be one of "from", "license", "template", "system", "adapter", "draft", '
            '"renderer", "parser", "parameter", "message", or "requires"',
        ),
    ],
)
def test_create_errors(http, base, body, status, error):
    for stream in (True, False):
        r = http.post("/api/create", json={**body, "stream": stream})
        assert (r.status_code, r.json()) == (status, {"error": error}), stream


def test_create_from_legacy_modelfile(http, store, base):
    modelfile = (
        'FROM base\nSYSTEM """You are\nMario."""\nPARAMETER temperature 0.25\nPARAMETER stop A\n'
        "PARAMETER stop B\nMESSAGE user q\nMESSAGE assistant a\nLICENSE MIT\n"
        'TEMPLATE "{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}"\n'
    )
    r = http.post("/api/create", json={"name": "legacy", "modelfile": modelfile, "stream": False})
    assert (r.status_code, r.json()) == (200, {"status": "success"})
    show = http.post("/api/show", json={"model": "legacy"}).json()
    assert show["system"] == "You are\nMario."
    assert show["template"] == "{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}"
    assert show["messages"] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert show["license"] == "MIT"
    assert store.get_manifest("legacy").read_layer_json(media.PARAMS) == {"temperature": 0.25, "stop": ["A", "B"]}


def test_create_from_safetensors_files(http, store, files):
    uploaded = {p.name: upload(http, p) for p in sorted(files.hf.iterdir()) if p.is_file()}
    lines = ndjson(http.post("/api/create", json={"model": "from-st", "files": uploaded}))
    assert lines[-1] == {"status": "success"}
    assert {"status": "converting model"} in lines
    show = http.post("/api/show", json={"model": "from-st"}).json()
    assert show["details"]["family"] == "llama" and show["details"]["quantization_level"] == "F16"
    generate(http, "from-st")


def test_create_fuses_an_mlx_lm_adapter(http, store, files, tmp_path):
    import mlx.core as mx

    adapter = build_lora_adapter(files.hf, tmp_path / "adapter", scale=2.0)
    uploaded = {p.name: upload(http, p) for p in sorted(files.hf.iterdir()) if p.is_file()}
    assert ndjson(http.post("/api/create", json={"model": "st-base", "files": uploaded}))[-1]["status"] == "success"
    adapters = {p.name: upload(http, p) for p in adapter.iterdir()}
    lines = ndjson(http.post("/api/create", json={"model": "st-lora", "from": "st-base", "adapters": adapters}))
    assert lines[-1] == {"status": "success"}

    def weights(model: str) -> dict:
        stored = store.get_manifest(model)
        out = {}
        for l in stored.layers_by_type(media.MLX_WEIGHTS):
            out.update(mx.load(str(store.blob_path(l.digest)), format="safetensors"))
        return out

    base_w, fused_w = weights("st-base"), weights("st-lora")
    lora = mx.load(str(adapter / "adapters.safetensors"))
    key = "model.layers.1.self_attn.q_proj"
    a, b = lora[f"{key}.lora_a"], lora[f"{key}.lora_b"]
    want = base_w[f"{key}.weight"].astype(mx.float32) + 2.0 * (b.T @ a.T)
    got = fused_w[f"{key}.weight"].astype(mx.float32)
    assert mx.allclose(got, want, atol=2e-2).item()
    assert not mx.allclose(got, base_w[f"{key}.weight"].astype(mx.float32), atol=1e-3).item()
    untouched = "model.layers.0.self_attn.q_proj.weight"
    assert mx.array_equal(fused_w[untouched], base_w[untouched]).item()
    generate(http, "st-lora")


# --- copy / delete -------------------------------------------------------------------------


def test_copy(http, store, base):
    r = http.post("/api/copy", json={"source": "base", "destination": "base-copy:v2"})
    assert (r.status_code, r.content) == (200, b"")
    assert store.get_manifest("base-copy:v2").raw == store.get_manifest(base).raw
    assert http.post("/api/copy", json={"source": "base", "destination": "base"}).status_code == 200
    for body, status, error in (
        ({"source": "", "destination": "x"}, 400, 'source "" is invalid'),
        ({"source": "base", "destination": ""}, 400, 'destination "" is invalid'),
        ({"source": "base", "destination": "bad:"}, 400, 'destination "bad:" is invalid'),
        ({"source": "nope", "destination": "x"}, 404, 'model "nope" not found'),
    ):
        r = http.post("/api/copy", json=body)
        assert (r.status_code, r.json()) == (status, {"error": error})


def test_delete_unloads_and_collects_blobs(http, store, files):
    digest = upload(http, files.f16)
    assert (
        ndjson(http.post("/api/create", json={"model": "doomed", "files": {"a.gguf": digest}, "system": "only mine"}))[
            -1
        ]["status"]
        == "success"
    )
    assert http.post("/api/copy", json={"source": "doomed", "destination": "doomed-twin"}).status_code == 200
    generate(http, "doomed")
    assert "doomed:latest" in [m["name"] for m in http.get("/api/ps").json()["models"]]
    doomed = store.get_manifest("doomed")
    system_digest = doomed.layers_by_type(media.SYSTEM)[0].digest

    r = http.request("DELETE", "/api/delete", json={"name": "doomed"})  # ollama-js and the CLI send `name`
    assert (r.status_code, r.content) == (200, b"")
    assert "doomed:latest" not in [m["name"] for m in http.get("/api/ps").json()["models"]]
    assert store.has_blob(system_digest)  # the twin still uses every blob
    generate(http, "doomed-twin")

    r = http.request("DELETE", "/api/delete", json={"model": "doomed-twin"})
    assert r.status_code == 200
    assert not store.has_blob(system_digest)  # now unreferenced: gone
    names = [m["name"] for m in http.get("/api/tags").json()["models"]]
    assert "doomed:latest" not in names and "doomed-twin:latest" not in names

    for body, status, error in (
        ({"model": "doomed"}, 404, "model 'doomed' not found"),
        ({"model": ""}, 400, "model is required"),
        ({"model": "bad:"}, 400, 'name "bad:" is invalid'),
    ):
        r = http.request("DELETE", "/api/delete", json=body)
        assert (r.status_code, r.json()) == (status, {"error": error})


# --- the official client ---------------------------------------------------------------------


def test_official_client_blob_create_copy_delete(server, files):
    client = ollama.Client(host=server.url)
    digest = client.create_blob(files.f16)
    assert HEX64.match(digest)
    assert client.create_blob(files.f16) == digest  # already there: 200
    progress = list(
        client.create(
            model="client-made",
            files={"model.gguf": digest},
            system="Hi there.",
            parameters={"temperature": 0.1},
            stream=True,
        )
    )
    assert progress[0].status == "parsing GGUF" and progress[-1].status == "success"
    assert client.create(model="client-made2", from_="client-made", system="Other.").status == "success"
    assert "\nSYSTEM Other.\n" in client.show("client-made2").modelfile  # quoted only when needed, as Ollama
    assert client.generate(model="client-made", prompt="hi", options={"num_predict": 2}).done
    assert client.copy("client-made", "client-copy").status == "success"
    assert {"client-made:latest", "client-made2:latest", "client-copy:latest"} <= {
        m.model for m in client.list().models
    }
    assert client.delete("client-copy").status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("client-copy")
    assert e.value.status_code == 404 and e.value.error == "model 'client-copy' not found"
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="broken", from_="client-made", template="{{ if }}")
    assert e.value.status_code == 400 and e.value.error.startswith("template error: ")


# --- convert_path (what `mlxollama convert` runs, no server) ----------------------------------


def test_convert_path_gguf_checkpoint_and_errors(files, tmp_path):
    from mlxollama.convert.create import ManageError, convert_path

    store = Store(tmp_path / "models")
    events: list[dict] = []
    stored = convert_path(files.f16, "conv-mx", quantize="mxfp4", store=store, emit=events.append)
    statuses = [e["status"] for e in events]
    assert statuses[:3] == ["parsing GGUF", "converting to mlx", "quantizing F16 model to MXFP4"]
    assert json.loads(stored.read_named_text("config.json"))["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "mode": "mxfp4",
    }
    assert stored.read_config()["file_type"] == "MXFP4"

    stored = convert_path(files.hf, "conv-hf", store=store)
    cfg = stored.read_config()
    assert (cfg["model_format"], cfg["model_family"], cfg["file_type"]) == ("mlx", "llama", "F16")
    assert cfg["context_length"] == 2048 and cfg["embedding_length"] == 256
    with pytest.raises(ManageError, match="no such file or directory"):
        convert_path(tmp_path / "missing", "x", store=store)
    with pytest.raises(ManageError, match="unsupported quantization type Q3"):
        convert_path(files.f16, "x", quantize="q3", store=store)
    assert sorted(m.name.display_shortest() for m in store.list_models()) == ["conv-hf:latest", "conv-mx:latest"]
