"""`mlxollama run MODEL "describe ./photo.png"` attaches the image as `ollama run` does, against a
live server with a tiny vision model: `Added image './photo.png'` on stderr, the path gone from the
prompt, and the image in the request (the answer is the API's for the same prompt and image, and the
prompt counts the image's tokens). A text model's prompt keeps its paths as words."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mlxollama.convert.create import convert_path
from mlxollama.store import Store

from ..support.liveserver import LiveServer
from ..support.store import package_tiny
from ..support.tinymodels import build_tiny_llama
from ..support.tinyvlm import build_tiny_vlm, make_image

pytest.importorskip("mlx_vlm")

GREEDY = {"temperature": 0, "num_predict": 6, "seed": 1}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("cliimages")
    store = Store(root / "models")
    convert_path(build_tiny_vlm("qwen2_5_vl", root / "qwen"), "vlm-base", store=store)
    package_tiny(store, "tiny:latest", build_tiny_llama(root / "llama"))
    srv = LiveServer(root / "models", root / "server.log")
    try:
        with httpx.Client(base_url=srv.url, timeout=300) as http:
            for name, base in (("vlm", "vlm-base"), ("text", "tiny")):
                r = http.post("/api/create", json={"model": name, "from": base, "parameters": GREEDY, "stream": False})
                assert r.status_code == 200, r.text
        yield srv
    finally:
        srv.stop()


def run_cli(live, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLLAMA_HOST": live.url.removeprefix("http://"), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mlxollama.cli", "run", *args],
        env=env,
        cwd=cwd,
        input="",
        capture_output=True,
        text=True,
        timeout=300,
    )


def prompt_eval_count(stderr: str) -> int:
    m = re.search(r"prompt eval count:\s+(\d+) token", stderr)
    assert m, stderr
    return int(m.group(1))


def test_run_attaches_the_image_a_path_names(live, tmp_path):
    photo = make_image(7)
    (tmp_path / "photo.png").write_bytes(photo)
    with_image = run_cli(live, tmp_path, "vlm", "describe ./photo.png", "--verbose")
    assert with_image.returncode == 0, with_image.stderr + live.log()
    assert "Added image './photo.png'" in with_image.stderr

    http = httpx.Client(base_url=live.url, timeout=300)
    api = http.post(
        "/api/generate",
        json={"model": "vlm", "prompt": "describe", "images": [base64.b64encode(photo).decode()], "stream": False},
    ).json()
    assert with_image.stdout.strip() == api["response"].strip()
    assert prompt_eval_count(with_image.stderr) == api["prompt_eval_count"]

    # the same words without a file to attach: the path stays a word and no image is counted
    (tmp_path / "photo.png").unlink()
    without = run_cli(live, tmp_path, "vlm", "describe ./photo.png", "--verbose")
    assert without.returncode == 0, without.stderr
    assert "Added image" not in without.stderr
    text_only = http.post("/api/generate", json={"model": "vlm", "prompt": "describe ./photo.png", "stream": False})
    assert prompt_eval_count(without.stderr) == text_only.json()["prompt_eval_count"]
    # and the image's tokens are what the attached run counted beyond the bare words
    bare = http.post("/api/generate", json={"model": "vlm", "prompt": "describe", "stream": False}).json()
    assert prompt_eval_count(with_image.stderr) > bare["prompt_eval_count"]


def test_a_file_that_is_not_an_image_ends_the_run(live, tmp_path):
    (tmp_path / "notes.png").write_text("not an image\n")
    r = run_cli(live, tmp_path, "vlm", "describe ./notes.png")
    assert r.returncode == 1
    assert 'Couldn\'t process file: "invalid file type: text/plain; charset=utf-8"' in r.stderr
    assert "Error: invalid file type: text/plain; charset=utf-8" in r.stderr


def test_a_text_model_keeps_paths_as_words(live, tmp_path):
    (tmp_path / "photo.png").write_bytes(make_image(8))
    r = run_cli(live, tmp_path, "text", "describe ./photo.png", "--verbose")
    assert r.returncode == 0, r.stderr
    assert "Added image" not in r.stderr
    http = httpx.Client(base_url=live.url, timeout=300)
    same = http.post("/api/generate", json={"model": "text", "prompt": "describe ./photo.png", "stream": False}).json()
    assert prompt_eval_count(r.stderr) == same["prompt_eval_count"]


def test_interactive_messages_carry_the_images(live, tmp_path):
    """In the chat session each message's image paths become that message's images."""
    pexpect = pytest.importorskip("pexpect")
    photo = make_image(9)
    (tmp_path / "photo.png").write_bytes(photo)
    env = {**os.environ, "OLLAMA_HOST": live.url.removeprefix("http://"), "NO_COLOR": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "mlxollama.cli", "run", "vlm"],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
        dimensions=(40, 100),
    )
    try:
        child.expect_exact(">>> ")
        child.sendline("/set verbose")
        child.expect_exact(">>> ")
        child.sendline("describe ./photo.png")
        child.expect_exact("Added image './photo.png'")
        child.expect(r"prompt eval count:\s+(\d+) token")
        counted = int(child.match.group(1))
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    http = httpx.Client(base_url=live.url, timeout=300)
    message = {"role": "user", "content": "describe", "images": [base64.b64encode(photo).decode()]}
    api = http.post("/api/chat", json={"model": "vlm", "messages": [message], "stream": False}).json()
    assert counted == api["prompt_eval_count"]
    bare = http.post("/api/chat", json={"model": "vlm", "messages": [{**message, "images": []}], "stream": False})
    assert counted > bare.json()["prompt_eval_count"]


def test_show_lists_vision_and_the_projector(live, tmp_path):
    env = {**os.environ, "OLLAMA_HOST": live.url.removeprefix("http://"), "NO_COLOR": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "mlxollama.cli", "show", "vlm"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    sections = re.split(r"\n(?=  \S)", r.stdout)
    capabilities = next(s for s in sections if s.strip().startswith("Capabilities"))
    assert re.search(r"^\s+vision\s*$", capabilities, re.M)
    projector = next(s for s in sections if s.strip().startswith("Projector"))
    assert re.search(r"^\s+architecture\s+clip\s*$", projector, re.M)
    assert re.search(r"^\s+embedding length\s+32\s*$", projector, re.M)  # the tiny tower's width
    assert re.search(r"^\s+dimensions\s+64\s*$", projector, re.M)  # what it projects into
