"""kill -9 in the middle of pull, create, copy and delete: the store must stay whole.

After every kill the store on disk is checked as a restarted server would find it: each blob's
sha256 matches its name, each manifest parses and every layer it names exists, so /api/tags never
lists a half model. A pull killed mid-download resumes from the bytes it had (an HTTP Range request
from a non-zero offset) instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlxollama.store import Store

from ..support.fakeregistry import FakeRegistry
from ..support.liveserver import LiveServer
from ..support.store import package_tiny
from ..support.tinymodels import build_tiny_llama

TINY = "tiny:latest"
BLOB_NAME = re.compile(r"sha256-([0-9a-f]{64})")


@pytest.fixture(scope="module")
def registry(models_dir, tmp_path_factory):
    """A loopback registry serving the session's tiny model as library/tiny and, as library/slow, a
    wider one whose 6 MB of weights outlast the downloader's 1 MiB write batches."""
    reg = FakeRegistry()
    wide = Store(tmp_path_factory.mktemp("wide") / "models")
    package_tiny(wide, "slow:latest", build_tiny_llama(tmp_path_factory.mktemp("wide-src"), hidden=384, seed=7))
    for store, name, repo in ((Store(models_dir), TINY, "library/tiny"), (wide, "slow:latest", "library/slow")):
        source = store.get_manifest(name)
        for layer in source.manifest.all_layers():
            reg.blobs[layer.digest] = source.read_blob(layer)
        reg.manifests[(repo, "latest")] = source.raw
    yield reg
    reg.close()


class Crashable:
    """A server on one store that can be killed with SIGKILL and started again on the same files."""

    def __init__(self, root: Path, registry: FakeRegistry):
        self.root = root
        self.registry = registry
        self.starts = 0
        self.srv: LiveServer | None = None

    def start(self) -> httpx.Client:
        self.starts += 1
        self.srv = LiveServer(
            self.root / "models",
            self.root / f"server{self.starts}.log",
            env={
                "MLXOLLAMA_REGISTRY": self.registry.url,
                "OLLAMA_MODELS": str(self.root / "no-ollama"),
                "HF_ENDPOINT": "http://127.0.0.1:9",
                "OLLAMA_NOPRUNE": "",  # prune as a user's server does
            },
        )
        return httpx.Client(base_url=self.srv.url, timeout=60)

    def kill(self) -> None:
        self.srv.proc.kill()  # SIGKILL: no handler, no cleanup, no flush
        self.srv.proc.wait(10)
        self.srv.stop()

    def stop(self) -> None:
        if self.srv is not None:
            self.srv.stop()

    @property
    def models(self) -> Path:
        return self.root / "models"


@pytest.fixture()
def crashable(tmp_path, registry):
    c = Crashable(tmp_path, registry)
    yield c
    c.stop()


def store_problems(models: Path) -> list[str]:
    """What a restarted server would trip over: blobs whose bytes do not match their name, manifests
    that do not parse or name a missing blob."""
    problems = []
    blobs = models / "blobs"
    for path in sorted(blobs.iterdir()) if blobs.is_dir() else []:
        m = BLOB_NAME.fullmatch(path.name)
        if m and hashlib.sha256(path.read_bytes()).hexdigest() != m.group(1):
            problems.append(f"blob {path.name} does not hash to its name ({path.stat().st_size} bytes)")
    for path in sorted((models / "manifests").rglob("*")):
        if not path.is_file() or path.name.startswith("."):  # dot files are temp files, never listed
            continue
        try:
            manifest = json.loads(path.read_bytes())
            layers = [manifest["config"], *manifest["layers"]]
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"manifest {path.relative_to(models)} is unreadable: {e}")
            continue
        for layer in layers:
            if not (blobs / layer["digest"].replace(":", "-")).is_file():
                problems.append(f"manifest {path.relative_to(models)} names missing blob {layer['digest']}")
    return problems


def assert_whole_after_restart(crashable: Crashable) -> httpx.Client:
    """The store as the kill left it, then a restarted server: every listed model is complete and usable."""
    assert store_problems(crashable.models) == []
    http = crashable.start()
    listed = [m["name"] for m in http.get("/api/tags").json()["models"]]
    store = Store(crashable.models)
    for name in listed:
        stored = store.get_manifest(name)
        assert stored is not None, name
        assert all(store.has_blob(layer.digest) for layer in stored.manifest.all_layers()), name
        assert http.post("/api/show", json={"model": name}).status_code == 200, name
    assert store_problems(crashable.models) == []  # start-up pruning removed nothing still referenced
    return http


def generate(http: httpx.Client, model: str) -> None:
    r = http.post(
        "/api/generate", json={"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    )
    assert r.status_code == 200 and r.json()["done"], r.text


def pull(http: httpx.Client, name: str) -> dict:
    r = http.post("/api/pull", json={"model": name, "stream": False})
    assert r.status_code == 200, r.text
    return r.json()


def stream_in_background(url: str, path: str, body: dict, method: str = "POST") -> threading.Thread:
    """Sends a request whose answer nobody waits for: the server dies under it."""

    def run():
        try:
            with httpx.Client(base_url=url, timeout=60) as c, c.stream(method, path, json=body) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_pull_killed_mid_download_resumes_from_its_bytes(crashable, registry):
    manifest = json.loads(registry.manifests[("library/slow", "latest")])
    weights = max(manifest["layers"], key=lambda layer: layer["size"])
    partial = crashable.models / "blobs" / (weights["digest"].replace(":", "-") + "-partial")
    crashable.start()
    registry.blob_delay = 0.05  # seconds per 64 KiB: the 6 MB download takes about 5 s
    try:
        stream_in_background(crashable.srv.url, "/api/pull", {"model": "slow"})
        deadline = time.time() + 30
        while time.time() < deadline and not (partial.exists() and partial.stat().st_size > 0):
            time.sleep(0.02)
        crashable.kill()
    finally:
        registry.blob_delay = 0.0
    had = partial.stat().st_size if partial.exists() else 0
    assert 0 < had < weights["size"], f"partial download holds {had} of {weights['size']} bytes"

    http = assert_whole_after_restart(crashable)
    assert "slow:latest" not in [m["name"] for m in http.get("/api/tags").json()["models"]]
    before = len(registry.requests("GET", weights["digest"]))
    assert pull(http, "slow") == {"status": "success"}
    resumed = [r for r in registry.requests("GET", weights["digest"])[before:] if r.status in (200, 206)]
    assert resumed, "the resumed pull fetched no weights"
    assert (resumed[0].status, resumed[0].headers.get("Range")) == (206, f"bytes={had}-"), (
        "the pull after the restart started over instead of continuing from the partial download"
    )
    assert not partial.exists() and store_problems(crashable.models) == []
    generate(http, "slow")


@pytest.mark.parametrize("kill_at", ["pulling manifest", "pulling ", "verifying sha256 digest", "writing manifest"])
def test_pull_killed_at_each_step_leaves_no_half_model(crashable, kill_at):
    http = crashable.start()
    seen = []
    with http.stream("POST", "/api/pull", json={"model": "tiny"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            seen.append(json.loads(line))
            if seen[-1].get("status", "").startswith(kill_at):
                break
        crashable.kill()
    http.close()
    assert seen[-1].get("status", "").startswith(kill_at), seen
    http = assert_whole_after_restart(crashable)
    assert pull(http, "tiny") == {"status": "success"}
    assert store_problems(crashable.models) == []
    generate(http, TINY)


# A quantizing create streams 13 lines: quantizing (2), verifying, 8 layers, writing manifest, success.
@pytest.mark.parametrize("kill_after_lines", [1, 3, 4, 6, 11, 12])
def test_create_killed_at_each_step_leaves_no_half_model(crashable, kill_after_lines):
    http = crashable.start()
    assert pull(http, "tiny") == {"status": "success"}
    body = {"model": "made", "from": TINY, "system": "You are a test.", "quantize": "q8_0"}
    seen = []
    with http.stream("POST", "/api/create", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            seen.append(json.loads(line))
            if len(seen) >= kill_after_lines:
                break
        crashable.kill()
    http.close()
    assert len(seen) == kill_after_lines and "error" not in seen[-1], seen
    http = assert_whole_after_restart(crashable)
    names = [m["name"] for m in http.get("/api/tags").json()["models"]]
    if "made:latest" in names:  # the create got as far as its manifest: then the model is whole
        generate(http, "made")
    assert http.post("/api/create", json={**body, "stream": False}).json() == {"status": "success"}
    generate(http, "made")


@pytest.mark.parametrize("kill_after", [0.3, 0.8])
def test_copy_and_delete_killed_mid_flight_keep_every_listed_model_whole(crashable, kill_after):
    """Copies, deletes and creates (which write and prune blobs) race each other until the kill."""
    http = crashable.start()
    assert pull(http, "tiny") == {"status": "success"}
    stop = threading.Event()
    done: list[str] = []
    unexpected: list[str] = []

    def check(r: httpx.Response, ok: tuple[int, ...]) -> None:
        (done if r.status_code in ok else unexpected).append(
            f"{r.request.method} {r.request.url.path} {r.status_code} {r.text[:200]}"
        )

    def churn(kind: str) -> None:
        with httpx.Client(base_url=crashable.srv.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                try:
                    if kind == "copy":
                        check(c.post("/api/copy", json={"source": TINY, "destination": f"copy{i % 4}"}), (200,))
                        check(c.request("DELETE", "/api/delete", json={"model": f"copy{(i + 2) % 4}"}), (200, 404))
                    else:
                        check(
                            c.post(
                                "/api/create",
                                json={
                                    "model": f"made{i % 3}",
                                    "from": TINY,
                                    "system": f"system prompt {i}",
                                    "stream": False,
                                },
                            ),
                            (200,),
                        )
                        check(c.request("DELETE", "/api/delete", json={"model": f"made{(i + 1) % 3}"}), (200, 404))
                except httpx.HTTPError:
                    return  # the server is gone
                i += 1

    workers = [threading.Thread(target=churn, args=(k,), daemon=True) for k in ("copy", "copy", "create")]
    for w in workers:
        w.start()
    time.sleep(kill_after)
    crashable.kill()
    stop.set()
    for w in workers:
        w.join(10)
    http.close()
    assert len(done) > 10, "the kill landed before the churn got going"
    assert unexpected == [], "racing copies, creates and deletes failed before the kill"
    http = assert_whole_after_restart(crashable)
    names = [m["name"] for m in http.get("/api/tags").json()["models"]]
    assert TINY in names
    for name in names:
        generate(http, name)
