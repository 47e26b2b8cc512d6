"""Model store: names, blobs, manifests, gc, run folders."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlxollama.store import (
    BlobNotFound,
    DigestMismatch,
    InvalidDigest,
    InvalidLayerName,
    InvalidManifest,
    InvalidName,
    Layer,
    Manifest,
    ModelName,
    ModelNotFound,
    Store,
    StoreLock,
    build_config_blob,
    format_parameter_size,
    media,
    parse_name_or_none,
    validate_digest,
)
from mlxollama.store import store as store_mod

HEX = "a" * 64


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def N(s: str) -> ModelName:
    return ModelName.parse(s)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def leftovers(store: Store) -> list[str]:
    """Anything in blobs/ that is not a finished blob."""
    if not store.blobs_dir.exists():
        return []
    return sorted(n for n in os.listdir(store.blobs_dir) if not n.startswith("sha256-") or len(n) != 71)


def make_model(
    store: Store,
    name: str,
    files: dict[str, bytes] | None = None,
    *,
    template: str | None = None,
    config: dict | None = None,
) -> ModelName:
    layers = []
    for fname, data in (files or {}).items():
        layers.append(store.add_layer(data, media.MLX_FILE, name=fname))
    if template is not None:
        layers.append(store.add_layer(template.encode(), media.TEMPLATE))
    cfg = store.add_config(config or build_config_blob(model_family="llama"))
    return store.write_manifest(N(name), Manifest(cfg, layers))


# ----------------------------------------------------------------------------- names

VALID = [
    # input, host, namespace, model, tag, short display
    ("llama3.2", "registry.ollama.ai", "library", "llama3.2", "latest", "llama3.2:latest"),
    ("llama3.2:3b", "registry.ollama.ai", "library", "llama3.2", "3b", "llama3.2:3b"),
    ("mattw/pygmalion:latest", "registry.ollama.ai", "mattw", "pygmalion", "latest", "mattw/pygmalion:latest"),
    (
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "hf.co",
        "bartowski",
        "Llama-3.2-1B-Instruct-GGUF",
        "Q4_K_M",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    ),
    ("localhost:5000/me/m:v1", "localhost:5000", "me", "m", "v1", "localhost:5000/me/m:v1"),
    ("localhost:5000/me/m", "localhost:5000", "me", "m", "latest", "localhost:5000/me/m:latest"),
    (
        "registry.ollama.ai/library/llama3.2:latest",
        "registry.ollama.ai",
        "library",
        "llama3.2",
        "latest",
        "llama3.2:latest",
    ),
    ("Registry.Ollama.AI/Library/X:Y", "Registry.Ollama.AI", "Library", "X", "Y", "X:Y"),
    ("registry.ollama.ai/mattw/p", "registry.ollama.ai", "mattw", "p", "latest", "mattw/p:latest"),
    ("_m", "registry.ollama.ai", "library", "_m", "latest", "_m:latest"),
    ("a_b-c.d:e_f-g.h", "registry.ollama.ai", "library", "a_b-c.d", "e_f-g.h", "a_b-c.d:e_f-g.h"),
    ("m" * 80 + ":" + "t" * 80, "registry.ollama.ai", "library", "m" * 80, "t" * 80, "m" * 80 + ":" + "t" * 80),
]


@pytest.mark.parametrize("text,host,ns,model,tag,short", VALID)
def test_parse_valid(text, host, ns, model, tag, short):
    n = ModelName.parse(text)
    assert (n.host, n.namespace, n.model, n.tag) == (host, ns, model, tag)
    assert n.manifest_parts() == (host, ns, model, tag)
    assert n.display_shortest() == short
    assert n.display_full() == f"{host}/{ns}/{model}:{tag}"
    assert n.scheme == "https" and not n.insecure
    assert parse_name_or_none(text) == n


INVALID = [
    "",
    "foo:",
    ":foo",
    ":",
    "/foo",
    "foo/",
    "a//b",
    "/",
    "//",
    "a/b/c/d",
    "x@sha256:" + HEX,
    "x@latest",
    "x:y@z",
    "m" * 81,
    "m:" + "t" * 81,
    "n" * 81 + "/m",
    "h" * 351 + "/n/m",
    "ns.dot/m",  # namespace may not contain '.'
    "-m",
    ".m",
    "m/-x",
    "m:.t",
    "-h/n/m",
    "mod el",
    "modèl",
    "m:t!",
    "m$",
    "foo:bar:baz",
    "foo:bar/baz",
    "http://m",
    "h/n/m:t\n",
]


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid(text):
    with pytest.raises(InvalidName) as e:
        ModelName.parse(text)
    assert str(e.value) == "invalid model name"
    assert parse_name_or_none(text) is None


def test_parse_length_limits():
    assert ModelName.parse("h" * 350 + "/n/m").host == "h" * 350
    assert ModelName.parse("n" * 80 + "/m").namespace == "n" * 80


def test_parse_non_string():
    with pytest.raises(InvalidName):
        ModelName.parse(None)  # type: ignore[arg-type]


def test_scheme_and_insecure():
    n = ModelName.parse("http://localhost:5000/me/m:v1")
    assert n.scheme == "http" and n.insecure
    assert n.manifest_parts() == ("localhost:5000", "me", "m", "v1")
    assert n.display_shortest() == "localhost:5000/me/m:v1"
    s = ModelName.parse("https://example.com/a/b")
    assert s.scheme == "https" and not s.insecure and s.host == "example.com"


def test_display_full_default():
    assert N("llama3.2").display_full() == "registry.ollama.ai/library/llama3.2:latest"
    assert str(N("mattw/pygmalion")) == "registry.ollama.ai/mattw/pygmalion:latest"
    assert N("LLAMA3.2").equal_fold(N("llama3.2:LATEST"))
    assert not N("llama3.2").equal_fold(N("llama3.2:3b"))


def test_from_parts_validates():
    assert ModelName.from_parts("h", "n", "m", "t").display_full() == "h/n/m:t"
    with pytest.raises(InvalidName):
        ModelName.from_parts("h", "n.x", "m", "t")
    with pytest.raises(InvalidName):
        ModelName.from_parts("h", "..", "m", "t")


# ----------------------------------------------------------------------------- formatting / config


@pytest.mark.parametrize(
    "n,expected",
    [
        (0, "0"),
        (999, "999"),
        (1000, "1K"),
        (1001, "1K"),
        (22_000, "22K"),
        (1_000_000, "1M"),
        (22_000_000, "22M"),
        (137_000_000, "137M"),
        (125_000_000, "125M"),
        (500_500_000, "500.50M"),
        (500_550_000, "500.55M"),
        (567_700_000, "567.70M"),
        (136_730_000, "136.73M"),
        (1_000_000_000, "1B"),
        (2_800_000_000, "2.8B"),
        (2_850_000_000, "2.9B"),
        (3_212_749_888, "3.2B"),
        (8_030_261_248, "8.0B"),
        (1_000_000_000_000, "1000B"),
    ],
)
def test_format_parameter_size(n, expected):
    assert format_parameter_size(n) == expected


def test_build_config_blob(monkeypatch):
    monkeypatch.setattr(store_mod.platform, "machine", lambda: "x86_64")
    cfg = build_config_blob(
        model_family="llama",
        model_families=["llama"],
        model_type="3.2B",
        file_type="Q4_K_M",
        capabilities=["completion"],
        context_length=4096,
    )
    assert list(cfg) == [
        "model_format",
        "model_family",
        "model_families",
        "model_type",
        "file_type",
        "capabilities",
        "context_length",
        "architecture",
        "os",
    ]
    assert cfg["model_format"] == "mlx" and cfg["architecture"] == "amd64"
    assert cfg["os"] == {"darwin": "darwin", "linux": "linux"}.get(sys.platform, cfg["os"])
    monkeypatch.setattr(store_mod.platform, "machine", lambda: "arm64")
    bare = build_config_blob(model_format="gguf")
    assert bare["model_families"] is None and bare["architecture"] == "arm64"
    assert "capabilities" not in bare and "context_length" not in bare and "embedding_length" not in bare
    monkeypatch.setattr(store_mod.platform, "machine", lambda: "aarch64")
    assert build_config_blob()["architecture"] == "arm64"


# ----------------------------------------------------------------------------- digests & blobs


def test_validate_digest():
    assert validate_digest("sha256:" + HEX) == "sha256:" + HEX
    assert validate_digest("sha256-" + HEX.upper()) == "sha256:" + HEX
    for bad in [
        "",
        "sha256:" + "a" * 63,
        "sha256:" + "g" * 64,
        "sha512:" + HEX,
        "sha256:" + HEX + "\n",
        HEX,
        "sha256:" + HEX + "0",
        None,
    ]:
        with pytest.raises(InvalidDigest) as e:
            validate_digest(bad)  # type: ignore[arg-type]
        assert str(e.value) == "invalid digest format"


def test_blob_path_layout(store):
    assert store.blob_path("sha256:" + HEX) == store.root / "blobs" / ("sha256-" + HEX)
    with pytest.raises(InvalidDigest):
        store.blob_path("sha256:../../etc")


@pytest.mark.parametrize("kind", ["bytes", "iter", "file", "path", "bytearray"])
def test_write_blob_sources(store, tmp_path, kind):
    data = os.urandom(3 * store_mod.CHUNK + 17)
    if kind == "bytes":
        src = data
    elif kind == "bytearray":
        src = bytearray(data)
    elif kind == "iter":
        src = iter([data[:10], data[10:5000], data[5000:]])
    elif kind == "file":
        src = io.BytesIO(data)
    else:
        src = tmp_path / "src.bin"
        src.write_bytes(data)
    digest, size = store.write_blob(src, expected_digest=sha(data))
    assert (digest, size) == (sha(data), len(data))
    assert store.has_blob(digest) and store.blob_size(digest) == len(data)
    assert store.blob_path(digest).read_bytes() == data
    assert leftovers(store) == []
    if os.name == "posix":
        assert store.blob_path(digest).stat().st_mode & 0o777 == 0o644


def test_write_blob_rejects_text(store):
    with pytest.raises(TypeError):
        store.write_blob("not bytes")  # type: ignore[arg-type]
    assert leftovers(store) == []


def test_digest_mismatch_leaves_nothing(store):
    data = b"hello"
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch) as e:
        store.write_blob(data, expected_digest=wrong)
    assert str(e.value) == f'digest mismatch, expected "{wrong}", got "{sha(data)}"'
    assert not store.has_blob(wrong) and not store.has_blob(sha(data))
    assert os.listdir(store.blobs_dir) == []


def test_invalid_expected_digest(store):
    with pytest.raises(InvalidDigest):
        store.write_blob(b"x", expected_digest="sha256:nope")


def test_failed_stream_leaves_nothing(store):
    def chunks():
        yield b"partial data"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.write_blob(chunks())
    assert os.listdir(store.blobs_dir) == []
    assert not store.has_blob(sha(b"partial data"))


def test_blob_writer_abort_on_exit(store):
    with store.blob_writer() as w:
        w.write(b"abc")
        tmp = w.tmp_path
        assert tmp.exists()
    assert not tmp.exists() and os.listdir(store.blobs_dir) == []
    with store.blob_writer(sha(b"abc")) as w:
        w.write(b"a")
        w.write(memoryview(b"bc"))
        assert w.commit() == (sha(b"abc"), 3)


def test_blob_exists_is_kept(store):
    d, _ = store.write_blob(b"same")
    ino = store.blob_path(d).stat().st_ino
    assert store.write_blob(b"same") == (d, 4)
    assert store.blob_path(d).stat().st_ino == ino
    assert leftovers(store) == []


def test_add_blob_from_path_copy_link_move(store, tmp_path):
    data = os.urandom(100_000)
    src = tmp_path / "weights.safetensors"
    src.write_bytes(data)
    d, size = store.add_blob_from_path(src)
    assert (d, size) == (sha(data), len(data))
    assert not os.path.samefile(src, store.blob_path(d))
    store.blob_path(d).unlink()

    link = tmp_path / "link.safetensors"
    link.symlink_to(src)  # HF cache style: resolve before hardlinking
    d2, _ = store.add_blob_from_path(link, link_ok=True)
    assert d2 == d and store.blob_path(d).read_bytes() == data
    assert not store.blob_path(d).is_symlink()
    assert os.path.samefile(src, store.blob_path(d))  # same filesystem: a hardlink
    with pytest.raises(DigestMismatch):
        store.add_blob_from_path(src, link_ok=True, expected_digest="sha256:" + "0" * 64)
    assert leftovers(store) == []
    store.blob_path(d).unlink()

    part = tmp_path / "dl-partial"
    part.write_bytes(data)
    with pytest.raises(DigestMismatch):
        store.add_blob_from_path(part, move=True, expected_digest="sha256:" + "0" * 64)
    assert part.read_bytes() == data  # caller keeps its file on mismatch
    d3, _ = store.add_blob_from_path(part, move=True, expected_digest=d)
    assert d3 == d and not part.exists() and store.blob_path(d).read_bytes() == data
    assert leftovers(store) == []
    with pytest.raises(FileNotFoundError):
        store.add_blob_from_path(tmp_path / "missing")


def test_concurrent_writes_same_blob(store):
    data = os.urandom(2 * store_mod.CHUNK + 5)
    results, errors = [], []
    barrier = threading.Barrier(8)

    def work():
        try:
            barrier.wait()
            results.append(store.write_blob(iter([data[:1000], data[1000:]]), expected_digest=sha(data)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [(sha(data), len(data))] * 8
    assert os.listdir(store.blobs_dir) == ["sha256-" + sha(data)[7:]]
    assert store.blob_path(sha(data)).read_bytes() == data


# ----------------------------------------------------------------------------- manifests


def test_write_manifest_requires_blobs(store):
    cfg = store.add_config({"model_format": "mlx"})
    missing = Layer(media.MLX_WEIGHTS, "sha256:" + "b" * 64, 10, name="model.safetensors")
    with pytest.raises(BlobNotFound):
        store.write_manifest(N("m"), Manifest(cfg, [missing]))
    with pytest.raises(BlobNotFound):
        store.write_manifest(N("m"), Manifest(Layer(media.CONFIG, "sha256:" + "c" * 64, 2), []))
    with pytest.raises(InvalidDigest):
        store.write_manifest(N("m"), Manifest(cfg, [Layer(media.MLX_FILE, "sha256:zz", 1, name="x")]))
    assert store.get_manifest(N("m")) is None
    assert store.list_models() == []


def test_manifest_roundtrip(store):
    weights = os.urandom(1000)
    w = store.add_layer(weights, media.MLX_WEIGHTS, name="model.safetensors")
    t = store.add_layer(b"{{ .Prompt }}", media.TEMPLATE)
    p = store.add_layer(b'{"stop":["<|eot_id|>"],"temperature":0.6}', media.PARAMS)
    lic1 = store.add_layer(b"MIT", media.LICENSE)
    lic2 = store.add_layer(b"Apache", media.LICENSE)
    parent = store.add_layer(b"GGUF...", media.MODEL, from_="llama3.2:latest")
    cfg = store.add_config(build_config_blob(model_family="llama", model_type="1.2B"))
    m = Manifest(cfg, [w, t, p, lic1, lic2, parent])
    stored_name = store.write_manifest(N("Tiny:v1"), m)
    assert stored_name.manifest_parts() == ("registry.ollama.ai", "library", "Tiny", "v1")

    path = store.root / "manifests" / "registry.ollama.ai" / "library" / "Tiny" / "v1"
    raw = path.read_bytes()
    assert raw.endswith(b"}\n") and b": " not in raw and b", " not in raw  # compact + newline
    d = json.loads(raw)
    assert list(d) == ["schemaVersion", "mediaType", "config", "layers"]
    assert d["schemaVersion"] == 2 and d["mediaType"] == media.MANIFEST_V2
    assert d["layers"][0] == {
        "mediaType": media.MLX_WEIGHTS,
        "digest": w.digest,
        "size": 1000,
        "name": "model.safetensors",
    }
    assert d["layers"][5]["from"] == "llama3.2:latest" and "name" not in d["layers"][1]

    s = store.get_manifest(N("tiny:V1"))
    assert s is not None and s.name == stored_name
    assert s.raw == raw and s.digest_hex == hashlib.sha256(raw).hexdigest()
    assert s.modified_at == path.stat().st_mtime
    assert s.size == sum(x.size for x in [w, t, p, lic1, lic2, parent, cfg])
    assert s.manifest == m
    assert s.read_config()["model_type"] == "1.2B"
    assert s.read_layer_text(media.TEMPLATE) == "{{ .Prompt }}"
    assert s.read_layer_text(media.SYSTEM) is None
    assert s.read_layer_json(media.PARAMS) == {"stop": ["<|eot_id|>"], "temperature": 0.6}
    assert s.read_layer_json(media.MESSAGES, []) == []
    assert s.read_layer_texts(media.LICENSE) == ["MIT", "Apache"]
    assert [x.digest for x in s.layers_by_type(media.LICENSE)] == [lic1.digest, lic2.digest]
    assert s.read_blob(s.layer_named("model.safetensors")) == weights and s.layer_named("nope") is None
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o644
        assert path.parent.stat().st_mode & 0o777 == 0o755 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_pulled_manifest_bytes_kept_verbatim(store):
    cfg_data = b'{"model_format":"gguf"}'
    cd, cs = store.write_blob(cfg_data)
    md, ms = store.write_blob(b"weights")
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media.MANIFEST_V2,
            "config": {"mediaType": media.CONFIG, "digest": cd, "size": cs},
            "layers": [{"mediaType": media.MODEL, "digest": md, "size": ms, "urls": ["x"]}],
        },
        indent=3,
    ).encode()
    store.write_manifest(N("hf.co/org/repo:Q4_K_M"), raw)
    s = store.get_manifest(N("hf.co/org/repo:Q4_K_M"))
    assert s.raw == raw and s.digest_hex == hashlib.sha256(raw).hexdigest()
    assert s.manifest.layers[0].digest == md
    with pytest.raises(InvalidManifest):
        store.write_manifest(N("bad"), b"not json")
    with pytest.raises(InvalidManifest):
        store.write_manifest(N("bad"), b'{"layers": []}')


def test_manifest_write_is_atomic(store, monkeypatch):
    make_model(store, "m", {"a.txt": b"one"})
    before = store.get_manifest(N("m")).raw
    cfg = store.add_config({"x": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "replace", boom)
    with pytest.raises(OSError):
        store.write_manifest(N("m"), Manifest(cfg, []))
    monkeypatch.undo()
    assert store.get_manifest(N("m")).raw == before
    tag_dir = store.manifests_dir / "registry.ollama.ai" / "library" / "m"
    assert os.listdir(tag_dir) == ["latest"]  # no temp file left


def test_resolve_case_insensitive(store):
    make_model(store, "llama3.2", {"f": b"1"})
    make_model(store, "Mattw/Pygmalion:Latest", {"f": b"2"})
    assert store.resolve(N("LLAMA3.2:LATEST")).manifest_parts() == (
        "registry.ollama.ai",
        "library",
        "llama3.2",
        "latest",
    )
    assert store.resolve(N("REGISTRY.OLLAMA.AI/LIBRARY/llama3.2")).display_shortest() == "llama3.2:latest"
    assert store.resolve(N("mattw/pygmalion")).display_shortest() == "Mattw/Pygmalion:Latest"
    assert store.resolve("Llama3.2") == store.resolve(N("llama3.2"))  # plain strings accepted
    with pytest.raises(InvalidName):
        store.resolve("bad:")
    assert store.resolve(N("llama3.2:3b")) is None
    assert store.resolve(N("other")) is None
    s = store.get_manifest(N("Llama3.2"))
    assert s.name.display_shortest() == "llama3.2:latest"
    # scheme of the request is kept on the resolved name
    assert store.resolve(N("http://registry.ollama.ai/library/llama3.2")).insecure


def test_write_reuses_existing_spelling(store):
    make_model(store, "llama3.2", {"f": b"1"})
    # same model, new tag with different case: goes into the existing folder
    written = make_model(store, "LLAMA3.2:V2", {"f": b"2"})
    assert written.manifest_parts() == ("registry.ollama.ai", "library", "llama3.2", "V2")
    lib = store.manifests_dir / "registry.ollama.ai" / "library"
    assert os.listdir(lib) == ["llama3.2"]
    assert sorted(os.listdir(lib / "llama3.2")) == ["V2", "latest"]
    # overwriting under another spelling replaces the existing file
    written = make_model(store, "Llama3.2:LATEST", {"f": b"3"})
    assert written.manifest_parts()[2:] == ("llama3.2", "latest")
    assert sorted(os.listdir(lib / "llama3.2")) == ["V2", "latest"]
    assert [s.name.display_shortest() for s in store.list_models()].count("llama3.2:latest") == 1


def test_list_models_order_and_junk(store):
    a = make_model(store, "a", {"f": b"a"})
    b = make_model(store, "ns/b:1", {"f": b"b"})
    c = make_model(store, "example.com:8080/x/c:2", {"f": b"c"})
    now = time.time()
    for name, age in ((a, 300), (b, 100), (c, 200)):
        p = store.manifests_dir.joinpath(*name.manifest_parts())
        os.utime(p, (now - age, now - age))
    mdir = store.manifests_dir
    # junk: bad JSON, invalid names, wrong depths, a directory at tag level
    (mdir / "registry.ollama.ai" / "library" / "a" / "broken").write_bytes(b"{not json")
    (mdir / "registry.ollama.ai" / "library" / "bad..name@").mkdir()
    (mdir / "registry.ollama.ai" / "library" / "bad..name@" / "latest").write_bytes(store.get_manifest(a).raw)
    (mdir / "registry.ollama.ai" / "library" / "a" / ".hidden").write_bytes(store.get_manifest(a).raw)
    (mdir / "registry.ollama.ai" / "library" / "toplevel-file").write_bytes(b"{}")
    (mdir / "registry.ollama.ai" / "library" / "a" / "dir-tag").mkdir()
    (mdir / "registry.ollama.ai" / "library" / "a" / "dir-tag" / "deeper").write_bytes(store.get_manifest(a).raw)
    (mdir / "stray.json").write_bytes(b"{}")
    (mdir / "registry.ollama.ai" / "library" / "a" / "notmanifest").write_bytes(b"[1,2]")

    listed = store.list_models()
    assert [s.name.display_shortest() for s in listed] == ["ns/b:1", "example.com:8080/x/c:2", "a:latest"]
    assert all(s.size > 0 and len(s.digest_hex) == 64 for s in listed)


def test_list_models_empty_store(tmp_path):
    assert Store(tmp_path / "nothing-here").list_models() == []
    assert Store(tmp_path / "nothing-here").get_manifest(N("x")) is None


# ----------------------------------------------------------------------------- copy / delete / gc


def test_copy(store):
    with pytest.raises(ModelNotFound) as e:
        store.copy(N("nope"), N("dst"))
    assert str(e.value) == "model 'nope:latest' not found"
    src = make_model(store, "src", {"f": b"data"})
    src_path = store.manifests_dir.joinpath(*src.manifest_parts())
    os.utime(src_path, (1_000_000, 1_000_000))
    dst = store.copy(N("SRC"), N("backup/dst:v1"))
    assert dst.display_shortest() == "backup/dst:v1"
    a, b = store.get_manifest(N("src")), store.get_manifest(N("backup/dst:v1"))
    assert a.raw == b.raw and a.digest_hex == b.digest_hex
    assert b.modified_at > a.modified_at
    # onto itself (any spelling): no-op
    assert store.copy(N("src"), N("Src")).manifest_parts() == src.manifest_parts()
    assert store.get_manifest(N("src")).modified_at == 1_000_000
    # existing destination is overwritten
    other = make_model(store, "other", {"f": b"other"})
    store.copy(other, N("backup/dst:v1"))
    assert store.get_manifest(N("backup/dst:v1")).raw == store.get_manifest(other).raw


def test_delete_and_blob_refcount(store):
    shared = {"shared.bin": b"shared bytes"}
    a = make_model(store, "a", {**shared, "a.bin": b"only a"})
    b = make_model(store, "ns/b", {**shared, "b.bin": b"only b"})
    orphan, _ = store.write_blob(b"uploaded for a later /api/create")
    blobs = lambda: set(os.listdir(store.blobs_dir))  # noqa: E731

    with pytest.raises(ModelNotFound) as e:
        store.delete(N("zzz"))
    assert str(e.value) == "model 'zzz:latest' not found"

    removed = store.delete(N("A"))
    assert removed == [sha(b"only a")]
    assert store.get_manifest(a) is None
    assert store.has_blob(sha(b"shared bytes")) and store.has_blob(sha(b"only b"))
    assert store.has_blob(orphan)  # unrelated uploads are not delete's business
    assert not (store.manifests_dir / "registry.ollama.ai" / "library").exists()  # pruned
    assert store.manifests_dir.exists()

    # config blob identical for both models: stays until the last reference goes
    cfg_digest = store.get_manifest(b).manifest.config.digest
    assert store.has_blob(cfg_digest)
    removed = store.delete(N("ns/b"))
    assert set(removed) == {sha(b"shared bytes"), sha(b"only b"), cfg_digest}
    assert blobs() == {orphan.replace(":", "-")}
    assert os.listdir(store.manifests_dir) == []
    with pytest.raises(ModelNotFound):
        store.delete(N("ns/b"))


def test_delete_keeps_blobs_of_copies(store):
    make_model(store, "a", {"w": b"weights"})
    store.copy(N("a"), N("b"))
    assert store.delete(N("a")) == []
    assert store.get_manifest(N("b")).read_named_text("w") == "weights"


def test_gc(tmp_path):
    store = Store(tmp_path / "m", fresh_blob_grace=0)
    make_model(store, "keep", {"w": b"kept"})
    orphan, _ = store.write_blob(b"orphan")
    partial = store.blobs_dir / ("sha256-" + HEX + "-partial")
    partial.write_bytes(b"downloading")
    stray_tmp = store.blobs_dir / (store_mod.TMP_PREFIX + "crashed")
    stray_tmp.write_bytes(b"x")
    (store.manifests_dir / "empty" / "dirs" / "here").mkdir(parents=True)
    mtmp = store.manifests_dir / "registry.ollama.ai" / "library" / "keep" / (store_mod.TMP_PREFIX + "old")
    mtmp.write_bytes(b"{}")

    young = store.gc(min_age_seconds=3600)  # everything is brand new
    assert young.blobs == [] and young.files == []
    assert store.has_blob(orphan) and partial.exists() and stray_tmp.exists() and mtmp.exists()
    assert not (store.manifests_dir / "empty").exists()  # empty dirs go regardless of age

    with store.blob_writer() as w:  # an upload in progress in this process
        w.write(b"in flight")
        res = store.gc()
        assert w.tmp_path.exists()
        w.commit()
    assert res.blobs == [orphan]
    assert set(res.files) == {partial, stray_tmp, mtmp}
    assert not store.has_blob(orphan) and not partial.exists()
    assert store.has_blob(sha(b"kept"))
    assert store.get_manifest(N("keep")).read_named_text("w") == "kept"
    assert store.has_blob(sha(b"in flight"))


def test_gc_spares_fresh_blobs_and_unparsable_manifests(store):
    fresh, _ = store.write_blob(b"just uploaded")  # default grace: protected
    _, _ = store.write_blob(b"referenced by a corrupt manifest")
    d = sha(b"referenced by a corrupt manifest")
    bad = store.manifests_dir / "registry.ollama.ai" / "library" / "broken"
    bad.mkdir(parents=True)
    (bad / "latest").write_text('{"layers":[{"digest":"%s"' % d)  # truncated JSON
    store.fresh_blob_grace = 0
    res = store.gc()
    assert res.blobs == [fresh]
    assert store.has_blob(d)


def test_gc_races_writers(store):
    """gc(0) running flat out must never break a blob-then-manifest writer."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def collector():
        while not stop.is_set():
            store.gc()

    def writer(i):
        try:
            for j in range(15):
                layer = store.add_layer(f"{i}-{j}".encode(), media.MLX_FILE, name="f")
                cfg = store.add_config({"i": i, "j": j})
                store.write_manifest(N(f"w{i}:t{j}"), Manifest(cfg, [layer]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    g = threading.Thread(target=collector)
    g.start()
    ws = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    g.join()
    assert errors == []
    assert len(store.list_models()) == 60
    for s in store.list_models():
        assert s.read_named_text("f") is not None


def test_store_lock_reentrant_and_interprocess(tmp_path):
    lock = StoreLock(tmp_path / "x.lock")
    with lock:
        with lock:
            pass
        if store_mod.fcntl is None:  # pragma: no cover - Windows
            return
        code = (
            "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR);"
            "\ntry: fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError: sys.exit(3)\nsys.exit(0)"
        )
        held = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.lock")])
        assert held.returncode == 3
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.lock")])
    assert free.returncode == 0


# ----------------------------------------------------------------------------- materialize


def _mlx_model(store: Store, name: str = "emb") -> ModelName:
    layers = [
        store.add_layer(b'{"model_type":"bert"}', media.MLX_CONFIG, name="config.json"),
        store.add_layer(b"SAFETENSORS" * 10, media.MLX_WEIGHTS, name="model.safetensors"),
        store.add_layer(b'{"version":"1.0"}', media.MLX_TOKENIZER, name="tokenizer.json"),
        store.add_layer(b'{"pooling_mode_mean_tokens":true}', media.MLX_FILE, name="1_Pooling/config.json"),
        store.add_layer(b"{{ .Prompt }}", media.TEMPLATE),  # no name: not a file
        store.add_layer(b"t", media.OLLAMA_TENSOR, name="model.embed.weight"),  # tensor name, not a path
    ]
    return store.write_manifest(N(name), Manifest(store.add_config({}), layers))


def test_materialize(store, tmp_path):
    stored = store.get_manifest(_mlx_model(store))
    run = tmp_path / "run"
    d = store.materialize(stored, run)
    assert d == run / stored.digest_hex
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir())
    assert files == ["1_Pooling/config.json", "config.json", "model.safetensors", "tokenizer.json"]
    assert (d / "config.json").read_text() == '{"model_type":"bert"}'
    assert (d / "1_Pooling" / "config.json").read_text() == '{"pooling_mode_mean_tokens":true}'
    weights = d / "model.safetensors"
    assert os.path.samefile(weights, store.blob_path(stored.layer_named("model.safetensors").digest))
    assert os.listdir(run) == [stored.digest_hex]  # no temp dirs left

    # idempotent, and repairs a damaged folder
    assert store.materialize(stored, run) == d
    (d / "tokenizer.json").unlink()
    assert store.materialize(stored, run) == d
    assert (d / "tokenizer.json").read_text() == '{"version":"1.0"}'
    assert os.listdir(run) == [stored.digest_hex]


def test_materialize_falls_back_to_hardlink(store, tmp_path, monkeypatch):
    stored = store.get_manifest(_mlx_model(store))

    def no_symlinks(*a, **k):
        raise OSError("symlinks not permitted")

    monkeypatch.setattr(store_mod.os, "symlink", no_symlinks)
    d = store.materialize(stored, tmp_path / "run")
    assert not (d / "config.json").is_symlink()
    assert os.path.samefile(d / "config.json", store.blob_path(stored.layer_named("config.json").digest))


@pytest.mark.parametrize("bad", ["../evil", "/etc/passwd", "a/../../b", "a//b", "./x", "a\\b", "C:x", "x/.."])
def test_materialize_rejects_unsafe_names(store, tmp_path, bad):
    layer = store.add_layer(b"x", media.MLX_FILE, name=bad)
    name = store.write_manifest(N("evil"), Manifest(store.add_config({}), [layer]))
    with pytest.raises(InvalidLayerName):
        store.materialize(store.get_manifest(name), tmp_path / "run" / "inner")
    assert not (tmp_path / "run" / "evil").exists() and not (tmp_path / "evil").exists()
    inner = tmp_path / "run" / "inner"
    assert not inner.exists() or os.listdir(inner) == []


def test_materialize_rejects_case_duplicates(store, tmp_path):
    l1 = store.add_layer(b"1", media.MLX_FILE, name="Config.json")
    l2 = store.add_layer(b"2", media.MLX_FILE, name="config.json")
    name = store.write_manifest(N("dup"), Manifest(store.add_config({}), [l1, l2]))
    with pytest.raises(InvalidManifest):
        store.materialize(store.get_manifest(name), tmp_path / "run")


def test_materialize_concurrent(store, tmp_path):
    stored = store.get_manifest(_mlx_model(store))
    run = tmp_path / "run"
    out, errors = [], []
    barrier = threading.Barrier(6)

    def work():
        try:
            barrier.wait()
            out.append(store.materialize(stored, run))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == [] and set(out) == {run / stored.digest_hex}
    assert os.listdir(run) == [stored.digest_hex]
    assert (run / stored.digest_hex / "tokenizer.json").read_text() == '{"version":"1.0"}'


def test_gc_removes_a_killed_writers_temp_files_at_once_and_keeps_live_ones(tmp_path):
    import subprocess
    import sys

    from mlxollama.store import is_orphaned_temp, owned_temp_prefix

    store = Store(tmp_path / "models")
    store.blobs_dir.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = store.blobs_dir / f".tmp-mlxollama-p{dead.pid}-0123abcd"
    orphan.write_bytes(b"x" * 1024)
    live_parent = store.blobs_dir / f".tmp-mlxollama-p{os.getppid()}-4567"  # a process that still runs
    live_parent.write_bytes(b"y")
    mine = store.blobs_dir / f"{owned_temp_prefix()}89ab"
    mine.write_bytes(b"z")
    partial = store.blobs_dir / ("sha256-" + "cd" * 32 + "-partial")  # resumable: only by age
    partial.write_bytes(b"p")
    assert is_orphaned_temp(orphan.name) and not is_orphaned_temp(mine.name)
    store.gc(min_age_seconds=3600)
    assert not orphan.exists()
    assert live_parent.exists() and mine.exists() and partial.exists()
