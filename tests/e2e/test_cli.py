"""The `mlxollama` command line driven as a user would, against the live test server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mlxollama.cli.format import human_bytes
from mlxollama.store import Store

from ..support.liveserver import free_port
from ..support.store import package_tiny
from ..support.tinymodels import build_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
SHORT = "tiny-cli:latest"  # tiny with a small num_predict, so a one-shot run ends at once
NOT_RUNNING = "Error: could not connect to mlxollama server, is it running?\n"


@pytest.fixture(scope="module")
def short_model(models_dir, tmp_path_factory) -> str:
    tiny_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny-cli"))
    package_tiny(Store(models_dir), SHORT, tiny_dir, params={"num_predict": 6, "temperature": 0.0, "seed": 7})
    return SHORT


@pytest.fixture(scope="module")
def env(server, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("home")  # the interactive history file lands here
    return {
        **os.environ,
        "OLLAMA_HOST": f"127.0.0.1:{server.port}",
        "HOME": str(home),
        "PYTHONIOENCODING": "utf-8",
        "COLUMNS": "100",
    }


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def cli(env, *args, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlxollama.cli", *args],
        env=env,
        cwd=ROOT,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def endpoint_missing(http, method: str, path: str) -> bool:
    """True when the route itself is absent (the router's plain-text 404/405, not a JSON error)."""
    r = http.request(method, path, content=b"{}")
    return r.status_code == 405 or (r.status_code == 404 and r.text == "404 page not found")


def table_rows(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]


# --- run ---------------------------------------------------------------------------------------


def test_run_with_prompt_prints_the_answer(env, http, short_model):
    expected = http.post("/api/generate", json={"model": short_model, "prompt": "hello there", "stream": False}).json()
    r = cli(env, "run", short_model, "hello", "there")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected["response"] + "\n\n"
    assert r.stderr == ""  # no spinner or escape codes when stderr is not a terminal


def test_run_reads_the_prompt_from_stdin(env, http, short_model):
    expected = http.post(
        "/api/generate", json={"model": short_model, "prompt": "piped text\n extra", "stream": False}
    ).json()
    r = cli(env, "run", short_model, "extra", stdin="piped text\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected["response"] + "\n\n"


def test_run_verbose_prints_ollama_timings(env, short_model):
    r = cli(env, "run", short_model, "hi", "--verbose")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    duration = r"\d+(\.\d+)?(ns|µs|ms|s)|\d+m\d+(\.\d+)?s"
    assert re.fullmatch(rf"total duration:       ({duration})", lines[0])
    assert any(re.fullmatch(r"prompt eval count:    \d+ token\(s\)", ln) for ln in lines)
    assert any(re.fullmatch(r"eval count:           6 token\(s\)", ln) for ln in lines)
    assert any(re.fullmatch(r"eval rate:            \d+\.\d\d tokens/s", ln) for ln in lines)


def test_run_missing_model_fails_cleanly(env, tmp_path):
    # no registry is reachable from the tests: the pull that `run` starts fails as one error line
    r = cli(env, "run", f"127.0.0.1:{free_port()}/library/no-such-model", "hi", "--insecure")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines()[-1].startswith("Error: ") and "Traceback" not in r.stderr


def test_interactive_run_under_a_terminal(env, short_model):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "mlxollama.cli", "run", short_model],
        env=env,
        cwd=str(ROOT),
        encoding="utf-8",
        codec_errors="replace",
        timeout=30,
        dimensions=(40, 100),
        # A terminal's shell starts programs with SIGINT at its default; a suite launched in the
        # background by a non-interactive shell ignores it, and the child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        child.expect_exact(">>> ")
        child.sendline("/set parameter num_predict 4")
        child.expect_exact("Set parameter 'num_predict' to '4'")
        child.expect_exact(">>> ")
        child.sendline("/set verbose")
        child.expect_exact("Set 'verbose' mode.")
        child.expect_exact(">>> ")
        # a plain message: the reply streams, then the stats, then the prompt again
        child.sendline("hello")
        child.expect(r"[\r\n]eval count:\s+4 token\(s\)")
        child.expect_exact(">>> ")
        # a multi-line message: continuation prompt until the closing quotes
        child.sendline('"""first line')
        child.expect_exact("... ")
        child.sendline("second line")
        child.expect_exact("... ")
        child.sendline('third line"""')
        child.expect(r"[\r\n]eval count:\s+4 token\(s\)")
        child.expect_exact(">>> ")
        child.sendline("/set quiet")
        child.expect_exact(">>> ")
        child.sendline("/show info")
        child.expect_exact("  Model")
        child.expect(r"architecture\s+llama")
        child.expect_exact(">>> ")
        child.sendline("/?")
        child.expect_exact("/bye            Exit")
        child.expect_exact(">>> ")
        child.sendline("/nonsense")
        child.expect_exact("Unknown command '/nonsense'. Type /? for help")
        child.expect_exact(">>> ")
        # Ctrl-C stops a long answer and keeps the session
        child.sendline("/set parameter num_predict 100000")
        child.expect_exact(">>> ")
        child.sendline("talk for a long time")
        time.sleep(1.0)
        child.sendintr()
        child.expect_exact(">>> ", timeout=15)
        child.sendline("/clear")
        child.expect_exact("Cleared session context")
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


# --- list, ps, show, stop ----------------------------------------------------------------------


def test_list_prints_ollamas_columns(env, http, short_model):
    tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
    r = cli(env, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"NAME\s+ID\s+SIZE\s+MODIFIED\s+", lines[0])
    rows = {row[0]: row for row in table_rows(r.stdout)[1:]}
    for name in ("tiny:latest", "tiny-sys:latest", short_model):
        name_, id_, size, modified = rows[name]
        assert id_ == tags[name]["digest"][:12] and re.fullmatch(r"[0-9a-f]{12}", id_)
        assert size == human_bytes(tags[name]["size"]) and re.fullmatch(r"\d+(\.\d)? (B|KB|MB|GB)", size)
        assert re.fullmatch(r"(\d+ seconds?|Less than a second|About a minute|\d+ minutes) ago", modified)
    # columns line up: every ID starts where the header's ID does
    col = lines[0].index("ID")
    assert all(line[col : col + 12] == rows[line.split()[0]][1] for line in lines[1:])
    r2 = cli(env, "ls", "tiny-s")
    listed = [row[0] for row in table_rows(r2.stdout)[1:]]
    assert "tiny-sys:latest" in listed and "tiny:latest" not in listed
    assert sorted(listed) == sorted(n for n in tags if n.startswith("tiny-s"))


def test_ps_and_stop(env, http, short_model):
    r = cli(env, "run", short_model, "hi", "--keepalive=-1m")
    assert r.returncode == 0, r.stderr
    loaded = {m["name"]: m for m in http.get("/api/ps").json()["models"]}[short_model]
    r = cli(env, "ps")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"NAME\s+ID\s+SIZE\s+PROCESSOR\s+CONTEXT\s+UNTIL\s+", r.stdout.splitlines()[0])
    row = next(row for row in table_rows(r.stdout)[1:] if row[0] == short_model)
    processor = (
        "100% GPU" if loaded["size_vram"] == loaded["size"] else "100% CPU" if loaded["size_vram"] == 0 else None
    )
    assert row == [
        short_model,
        loaded["digest"][:12],
        human_bytes(loaded["size"]),
        processor,
        str(loaded["context_length"]),
        "Forever",
    ]

    cli(env, "run", short_model, "hi", "--keepalive", "10m")
    row = next(row for row in table_rows(cli(env, "ps").stdout)[1:] if row[0] == short_model)
    assert re.fullmatch(r"(9|10) minutes from now", row[-1])

    r = cli(env, "stop", short_model)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    deadline = time.time() + 10
    while time.time() < deadline and short_model in cli(env, "ps").stdout:
        time.sleep(0.2)
    assert short_model not in cli(env, "ps").stdout

    r = cli(env, "stop", "no-such-model")
    assert (r.returncode, r.stderr) == (1, 'Error: couldn\'t find model "no-such-model" to stop\n')


def test_show_sections_and_flags(env, http):
    api = http.post("/api/show", json={"model": "tiny-sys"}).json()
    r = cli(env, "show", "tiny-sys")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("  Model\n")
    assert re.search(r"^    architecture\s{4,}llama\s+$", out, re.M)
    assert re.search(rf"^    parameters\s{{4,}}{re.escape(api['details']['parameter_size'])}\s+$", out, re.M)
    assert re.search(r"^    context length\s{4,}\d+\s+$", out, re.M)
    assert re.search(rf"^    quantization\s{{4,}}{api['details']['quantization_level']}\s+$", out, re.M)
    assert "\n  Capabilities\n    completion    \n" in out
    assert re.search(r"^  Parameters\n    temperature\s{4,}0(\.0)?\s+$", out, re.M)
    assert re.search(r"^  System\n    You are terse\.\s+$", out, re.M)

    assert cli(env, "show", "tiny-sys", "--system").stdout == "You are terse."
    assert cli(env, "show", "tiny-sys", "--parameters").stdout == api["parameters"] + "\n"
    assert cli(env, "show", "tiny-sys", "--modelfile").stdout == api["modelfile"] + "\n"
    assert cli(env, "show", "tiny", "--template").stdout == api.get("template", "")

    verbose = cli(env, "show", "tiny", "--verbose").stdout
    assert "\n  Metadata\n" in verbose and re.search(r"^    general\.architecture\s{4,}llama", verbose, re.M)

    r = cli(env, "show", "tiny", "--system", "--license")
    assert r.returncode == 1 and r.stderr.startswith("Error: only one of '--license'")
    r = cli(env, "show", "no-such-model")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "Error: model 'no-such-model:latest' not found\n")


# --- registry-side commands (skipped until the server implements them) ----------------------------


def test_cp_and_rm(env, http, short_model):
    if endpoint_missing(http, "POST", "/api/copy"):
        pytest.skip("the server has no /api/copy yet (404/405)")
    r = cli(env, "cp", short_model, "tiny-cli-copy")
    assert (r.returncode, r.stdout) == (0, f"copied '{short_model}' to 'tiny-cli-copy'\n"), r.stderr
    rows = {row[0]: row for row in table_rows(cli(env, "list").stdout)[1:]}
    assert rows["tiny-cli-copy:latest"][1] == rows[short_model][1]
    r = cli(env, "rm", "tiny-cli-copy")
    assert (r.returncode, r.stdout) == (0, "deleted 'tiny-cli-copy'\n"), r.stderr
    assert "tiny-cli-copy" not in cli(env, "list").stdout
    r = cli(env, "rm", "tiny-cli-copy")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and "not found" in r.stderr


def test_create_from_a_modelfile(env, http, tmp_path):
    if endpoint_missing(http, "POST", "/api/create"):
        pytest.skip("the server has no /api/create yet (404/405)")
    (tmp_path / "Modelfile").write_text(
        'FROM tiny\nSYSTEM """You are\na pirate."""\nPARAMETER temperature 0.25\nPARAMETER stop "<end>"\n'
        "PARAMETER stop STOP\nMESSAGE user hi\nMESSAGE assistant arr\n"
    )
    r = cli(env, "create", "tiny-pirate", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 0, r.stderr
    assert "success" in r.stderr
    api = http.post("/api/show", json={"model": "tiny-pirate"}).json()
    assert api["system"] == "You are\na pirate."
    assert re.search(r"^temperature\s+0\.25$", api["parameters"], re.M)
    assert re.search(r'^stop\s+"<end>"$', api["parameters"], re.M) and re.search(
        r'^stop\s+"STOP"$', api["parameters"], re.M
    )
    assert [(m["role"], m["content"]) for m in api.get("messages", [])] == [("user", "hi"), ("assistant", "arr")]
    cli(env, "rm", "tiny-pirate")

    (tmp_path / "Bad").write_text("FROM tiny\nPARAMETER nonsense 1\n")
    r = cli(env, "create", "x", "-f", str(tmp_path / "Bad"))
    assert (r.returncode, r.stderr) == (1, "Error: unknown parameter 'nonsense'\n")


def test_pull_and_run_pulls_a_missing_model(env, http, models_dir, short_model):
    if endpoint_missing(http, "POST", "/api/pull"):
        pytest.skip("the server has no /api/pull yet (404/405)")
    from ..support import fakeregistry

    # the registry serves tiny-cli's own manifest and blobs under another name
    stored = Store(models_dir).get_manifest(short_model)
    reg = fakeregistry.FakeRegistry()
    reg.manifests[("library/tiny-remote", "latest")] = stored.raw
    for layer in stored.manifest.all_layers():
        reg.blobs[layer.digest] = stored.read_blob(layer)
    remote = f"{reg.host}/library/tiny-remote:latest"
    try:
        r = cli(env, "pull", remote, "--insecure", timeout=120)
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert lines[0] == "pulling manifest"
        bars = [ln for ln in lines if re.fullmatch(r"pulling [0-9a-f]{12}: 100% ▕█+▏ +\d+(\.\d)? (B|KB|MB)", ln)]
        assert len(bars) == len(stored.manifest.all_layers())
        assert lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        rows = {row[0]: row for row in table_rows(cli(env, "list").stdout)[1:]}
        assert rows[remote][1] == stored.digest_hex[:12]
        assert cli(env, "rm", remote).returncode == 0

        # `run` of a model that is not here pulls it first, then answers
        expected = http.post("/api/generate", json={"model": short_model, "prompt": "hi", "stream": False}).json()
        r = cli(env, "run", remote, "hi", "--insecure", timeout=120)
        assert r.returncode == 0, r.stderr
        assert "pulling manifest" in r.stderr and r.stderr.splitlines()[-1] == "success"
        assert r.stdout == expected["response"] + "\n\n"
    finally:
        cli(env, "rm", remote)
        reg.close()


def test_convert_a_folder_into_the_store(env, models_dir, tmp_path):
    import importlib.util

    if importlib.util.find_spec("mlxollama.convert.create") is None:
        pytest.skip("mlxollama.convert.create is not in this checkout, so there is no `convert` command")
    src = build_tiny_llama(tmp_path / "src")
    r = cli({**env, "MLXOLLAMA_MODELS": str(models_dir)}, "convert", str(src), "--name", "tiny-converted", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr.splitlines()[-1].strip() == "success"
    assert "tiny-converted:latest" in [row[0] for row in table_rows(cli(env, "list").stdout)[1:]]
    Store(models_dir).delete("tiny-converted")
    r = cli({**env, "MLXOLLAMA_MODELS": str(models_dir)}, "convert", str(tmp_path / "nothing"), "--name", "x")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1


# --- errors, version -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["ps"],
        ["show", "tiny"],
        ["run", "tiny", "hi"],
        ["stop", "tiny"],
        ["pull", "tiny"],
        ["rm", "tiny"],
        ["cp", "a", "b"],
    ],
)
def test_server_down_is_one_line_and_exit_1(args, tmp_path):
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{free_port()}", "HOME": str(tmp_path)}
    r = cli(env, *args)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", NOT_RUNNING)


def test_version_and_usage_errors(env):
    from mlxollama import __version__

    r = cli(env, "--version")
    assert (r.returncode, r.stdout) == (0, f"mlxollama version is {__version__}\n")
    r = cli(env, "list", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    r = cli(env, "run", "tiny", "--think=maybe", "hi")
    assert (r.returncode, r.stderr) == (
        1,
        'Error: invalid value for --think: "maybe" (must be true, false, high, medium, low, or max)\n',
    )
