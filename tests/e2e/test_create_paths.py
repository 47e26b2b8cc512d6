"""/api/create never reads a path a client names on the server, and answers as Ollama does: `from`
is a model name (a path is an `invalid model name`), a Modelfile's ADAPTER must be an uploaded blob,
and `adapter_path` is no Ollama field (ignored). Existing and missing paths get the same answer, so
no reply tells what is on the server's disk. Also: work folders of a killed create go at start-up
and at the next create, those of a live process stay."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from mlxollama.convert.create import WORK_PREFIX
from mlxollama.store import Store, media

from ..support.liveserver import LiveServer
from ..support.store import package_tiny
from ..support.tinygguf import build_tiny_files
from ..support.tinymodels import build_tiny_llama

INVALID_NAME = (400, {"error": "invalid model name"})
INVALID_REFERENCE = (400, {"error": "invalid model reference"})


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return proc.pid
    pytest.skip("could not find a pid that no process uses")


def work_folder(root: Path, pid: int | None, *, age_s: float = 0) -> Path:
    owner = f"p{pid}-" if pid is not None else ""
    path = root / f"{WORK_PREFIX}{owner}create-{uuid.uuid4().hex}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"half-written")
    if age_s:
        past = time.time() - age_s
        os.utime(path, (past, past))
    return path


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Real files on the server's disk: a tiny GGUF, a Hugging Face checkpoint folder, a folder."""
    root = tmp_path_factory.mktemp("serverfiles")
    files = build_tiny_files(root)
    return {
        "gguf": str(files.f16),
        "checkpoint": str(files.hf),
        "folder": str(root),
        "missing_gguf": str(root / "nonexistent" / "x.gguf"),
        "missing_folder": str(root / "nonexistent"),
    }


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A store as a killed server leaves it, then a server started on it."""
    root = tmp_path_factory.mktemp("createpaths")
    models = root / "models"
    package_tiny(Store(models), "tiny:latest", build_tiny_llama(tmp_path_factory.mktemp("tiny")))
    folders = {
        "dead": work_folder(models, dead_pid()),
        "live": work_folder(models, os.getpid()),  # this test process: running
        "unowned_new": work_folder(models, None),
        "unowned_old": work_folder(models, None, age_s=2 * 24 * 3600),
    }
    srv = LiveServer(
        models,
        root / "server.log",
        env={
            "OLLAMA_MODELS": str(root / "no-ollama-store"),
            "MLXOLLAMA_REGISTRY": "http://127.0.0.1:9",  # nothing listens: no test reaches a real registry
        },
    )
    yield srv, folders
    srv.stop()


@pytest.fixture(scope="module")
def http(stage):
    with httpx.Client(base_url=stage[0].url, timeout=120) as c:
        yield c


def answers(http, body: dict) -> list[tuple[int, dict]]:
    out = []
    for stream in (True, False):
        r = http.post("/api/create", json={**body, "stream": stream})
        out.append((r.status_code, r.json()))
    return out


@pytest.mark.parametrize("key", ["gguf", "checkpoint", "folder", "missing_gguf", "missing_folder"])
def test_from_a_server_path_is_an_invalid_model_name(http, paths, key):
    assert answers(http, {"model": "stolen", "from": paths[key]}) == [INVALID_NAME] * 2
    assert http.post("/api/show", json={"model": "stolen"}).status_code == 404


@pytest.mark.parametrize(
    "value", ["/etc/passwd", "/etc/shadow", "/nonexistent/x.gguf", "/", "./x.gguf", "../x.gguf", "~/x.gguf"]
)
def test_from_path_like_values_are_invalid_model_names(http, value):
    assert answers(http, {"model": "stolen", "from": value}) == [INVALID_NAME] * 2


def test_from_must_be_a_string(http):
    r = http.post("/api/create", json={"model": "x", "from": 7})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "json: cannot unmarshal number into Go struct field CreateRequest.from of type string"},
    )


@pytest.mark.parametrize("key", ["gguf", "checkpoint", "missing_gguf"])
def test_modelfile_from_a_server_path_is_an_invalid_model_name(http, paths, key):
    modelfile = f"FROM {paths[key]}\nSYSTEM hi\n"
    assert answers(http, {"model": "stolen", "modelfile": modelfile}) == [INVALID_NAME] * 2


@pytest.mark.parametrize("key", ["checkpoint", "gguf", "missing_folder"])
def test_modelfile_adapter_must_be_an_uploaded_blob(http, paths, key):
    modelfile = f"FROM tiny\nADAPTER {paths[key]}\n"
    assert answers(http, {"model": "stolen", "modelfile": modelfile}) == [INVALID_REFERENCE] * 2
    assert http.post("/api/show", json={"model": "stolen"}).status_code == 404


def test_adapter_path_is_not_an_ollama_field(stage, http, paths):
    """Ollama drops unknown fields: the model is made from `from` alone, whatever the path is."""
    store = Store(stage[0].models_dir)

    def weights(name: str) -> list[str]:
        return [l.digest for l in store.get_manifest(name).layers_by_type(media.MLX_WEIGHTS)]

    for key in ("checkpoint", "missing_folder"):
        name = f"ignored-{key.replace('_', '-')}"
        r = http.post("/api/create", json={"model": name, "from": "tiny", "adapter_path": paths[key], "stream": False})
        assert (r.status_code, r.json()) == (200, {"status": "success"})
        assert weights(name) == weights("tiny:latest")


def test_conversion_errors_name_no_server_folder(stage, http):
    """A broken upload fails with the converter's reason, but the store's and work folder's paths stay out."""

    def upload(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
        return digest

    cases = [
        (
            {"config.json": upload(b"{not json"), "model.safetensors": upload(b"x" * 16)},
            400,
            "unreadable config.json in the uploaded files: ",
        ),
        # the reader's own text (MLX's: it names the file it read) comes back, less the folders
        ({"config.json": upload(b'{"model_type": "llama"}'), "model.safetensors": upload(b"\xff" * 64)}, 500, ""),
        ({"m.gguf": upload(b"GGUF" + bytes(40))}, 400, "supplied file was not in GGUF format"),
    ]
    root = str(stage[0].models_dir)
    for files, status, error in cases:
        r = http.post("/api/create", json={"model": "broken", "files": files, "stream": False})
        assert r.status_code == status and r.json()["error"].startswith(error), r.text
        assert root not in r.text and WORK_PREFIX not in r.text


# --- work folders of a killed create ------------------------------------------------------------


def test_start_up_removes_work_folders_of_dead_processes(stage):
    _srv, folders = stage
    assert not folders["dead"].exists()
    assert not folders["unowned_old"].exists()  # the age rule still holds for folders without a pid
    assert folders["live"].is_dir() and folders["unowned_new"].is_dir()


def test_next_create_removes_work_folders_of_dead_processes(stage, http):
    srv, folders = stage
    dead = work_folder(srv.models_dir, dead_pid())
    live = work_folder(srv.models_dir, os.getpid())
    r = http.post("/api/create", json={"model": "sweeper", "from": "tiny", "system": "Hi.", "stream": False})
    assert r.status_code == 200, r.text
    assert not dead.exists()
    assert live.is_dir() and folders["live"].is_dir()


def test_work_folders_carry_the_pid_of_their_process(tmp_path):
    from mlxollama.convert.create import work_dir

    with work_dir(Store(tmp_path / "models"), "create") as path:
        assert path.name.startswith(f"{WORK_PREFIX}p{os.getpid()}-create-")
        assert path.is_dir()
    assert not path.exists()
