"""The real coding agents against a live server: OpenAI's Codex CLI on /v1/responses and Claude
Code on /v1/messages, installed from npm into a cache folder at test time (as the Continue test
does), on the scripted agent model (tests/support/scriptedmodel.py).

What the clients send (recorded through a loopback proxy, Codex 0.171.0, Claude Code 2.1.332):
- `codex exec --oss --local-provider ollama`: GET /v1/models, GET /api/version (must be >= 0.13.4),
  GET /api/tags (the `-m` name must equal a listed name, `name:tag`, or Codex calls /api/pull),
  then POST /v1/responses, streamed, with instructions as `developer` messages, ~41 KB of tools
  (functions, a `namespace` of sub-agent tools, a `web_search` tool), `reasoning.summary`,
  `include`, `store: false`, `prompt_cache_key`, `client_metadata`, `parallel_tool_calls`.
- `claude -p`: HEAD /api/hello (a 404, as from Ollama), then POST /v1/messages?beta=true,
  streamed, ~50 KB: system blocks with `cache_control`, a `system` message after the user's,
  `metadata.user_id`, `thinking: {type: adaptive}`, `output_config.effort`, `context_management`,
  tools with `defer_loading`; tool results come back with `cache_control` and `is_error`.
Each assertion names the exact answer the scripted model gives only when the request reached it
whole: the tool test answers the word it can only know from the tool's real output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ..support.scriptedmodel import AGENT_ANSWER, AGENT_NOTES, REPLY, ensure_agent_model

AGENTS = {"@openai/codex": "0.171.0", "@anthropic-ai/claude-code": "2.1.332"}
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "agents"
BIN = CACHE / "node_modules" / ".bin"
_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH", "network")
SECRET_Q = "What is the secret word in my notes?"


@pytest.fixture(scope="session")
def agents() -> Path:
    npm = shutil.which("npm")
    if not shutil.which("node") or not npm:
        pytest.skip("node and npm are needed to run the Codex CLI and Claude Code")

    def installed(package: str) -> bool:
        meta = CACHE / "node_modules" / package / "package.json"
        return meta.exists() and json.loads(meta.read_text())["version"] == AGENTS[package]

    if not all(installed(p) for p in AGENTS):
        r = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(CACHE),
                "--no-audit",
                "--no-fund",
                *(f"{p}@{v}" for p, v in AGENTS.items()),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode != 0:
            if any(s in r.stderr for s in _OFFLINE):
                pytest.skip(f"npm registry unreachable, cannot install the agents: {r.stderr.strip()[-300:]}")
            pytest.fail(f"npm install of the agents failed:\n{r.stderr[-2000:]}")
    return BIN


@pytest.fixture(scope="module")
def agent_model(models_dir, tmp_path_factory) -> str:
    return ensure_agent_model(models_dir, tmp_path_factory.mktemp("agent"))


def _quiet_env(home: Path) -> dict:
    """The agents' own switches for update checks, telemetry and error reports, all off."""
    return {
        **os.environ,
        "HOME": str(home),
        "CODEX_HOME": str(home / ".codex"),
        "NO_COLOR": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def run_codex(agents: Path, cwd: Path, url: str, model: str, prompt: str) -> subprocess.CompletedProcess:
    home = cwd / "home"
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex" / "config.toml").write_text(
        "check_for_update_on_startup = false\n[analytics]\nenabled = false\n[feedback]\nenabled = false\n"
    )
    env = {**_quiet_env(home), "CODEX_OSS_BASE_URL": url + "/v1"}
    return subprocess.run(
        [
            str(agents / "codex"),
            "exec",
            "--oss",
            "--local-provider",
            "ollama",
            "-m",
            model,
            "--skip-git-repo-check",
            prompt,
        ],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_claude(agents: Path, cwd: Path, url: str, model: str, prompt: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **_quiet_env(cwd / "home"),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_AUTH_TOKEN": "ollama",
        "ANTHROPIC_API_KEY": "",
    }
    return subprocess.run(
        [str(agents / "claude"), "-p", prompt, "--model", model, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- Codex CLI -------------------------------------------------------------------------------


def test_reported_version_passes_codex_check(server):
    version = httpx.get(server.url + "/api/version").json()["version"]
    assert tuple(int(p) for p in version.split(".")) >= (0, 13, 4)  # Codex's minimum for --oss


def test_codex_exec_oss_answers(agents, server, agent_model, tmp_path):
    r = run_codex(agents, tmp_path, server.url, agent_model, "Say hello.")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == REPLY


def test_codex_runs_its_shell_tool_and_answers_from_the_output(agents, server, agent_model, tmp_path):
    (tmp_path / "notes.txt").write_text(AGENT_NOTES)
    r = run_codex(agents, tmp_path, server.url, agent_model, SECRET_Q)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cat notes.txt" in r.stderr  # Codex ran the command the model asked for
    assert r.stdout.strip() == AGENT_ANSWER


# --- Claude Code -----------------------------------------------------------------------------


def test_claude_print_mode_answers(agents, server, agent_model, tmp_path):
    r = run_claude(agents, tmp_path, server.url, agent_model.split(":")[0], "Say hello.")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == REPLY


def test_claude_runs_bash_and_answers_from_the_output(agents, server, agent_model, tmp_path):
    (tmp_path / "notes.txt").write_text(AGENT_NOTES)
    r = run_claude(
        agents, tmp_path, server.url, agent_model.split(":")[0], SECRET_Q, "--allowedTools", "Bash(cat notes.txt)"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == AGENT_ANSWER


# --- mlxollama launch ------------------------------------------------------------------------


def launch(url: str, *args: str, path: Path | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLLAMA_HOST": url.removeprefix("http://")}
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env.get('PATH', '')}"
    if home is not None:
        env = {**_quiet_env(home), "OLLAMA_HOST": env["OLLAMA_HOST"], "PATH": env["PATH"]}
    return subprocess.run(
        [sys.executable, "-m", "mlxollama.cli", "launch", *args],
        env=env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_launch_print_codex(server, agent_model):
    r = launch(server.url, "codex", "--model", agent_model, "--print", "--", "exec", "hi there")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "export OPENAI_API_KEY=ollama"
    assert lines[1] == (
        "codex -c 'model_provider=\"mlxollama\"' -c 'model_providers.mlxollama.name=\"mlxollama\"' "
        f"-c 'model_providers.mlxollama.base_url=\"{server.url}/v1\"' "
        "-c 'model_providers.mlxollama.wire_api=\"responses\"' "
        f"-m {agent_model} exec 'hi there'"
    )
    assert f'base_url = "{server.url}/v1"\nwire_api = "responses"' in r.stdout


def test_launch_print_claude_picks_a_tools_model_and_its_window(server, agent_model):
    r = launch(server.url, "claude", "--model", agent_model, "--print")
    assert r.returncode == 0, r.stderr
    assert f"export ANTHROPIC_BASE_URL={server.url}" in r.stdout.splitlines()
    assert "export CLAUDE_CODE_AUTO_COMPACT_WINDOW=131072" in r.stdout.splitlines()
    assert r.stdout.splitlines()[-1] == f"claude --model {agent_model}"
    # No --model: a local model that supports tools is chosen, never one without them.
    r = launch(server.url, "claude", "--print")
    assert r.returncode == 0, r.stderr
    chosen = r.stdout.splitlines()[-1].split()[-1]
    show = httpx.post(server.url + "/api/show", json={"model": chosen}).json()
    assert "tools" in show["capabilities"]


def test_launch_refuses_unknown_agents_and_missing_binaries(server, agent_model, tmp_path):
    r = launch(server.url, "vim")
    assert r.returncode == 2 and "invalid choice: 'vim'" in r.stderr
    # A PATH without the agent on it (the interpreter is named by its full path).
    env = {**os.environ, "OLLAMA_HOST": server.url.removeprefix("http://"), "PATH": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "mlxollama.cli", "launch", "codex", "--model", agent_model],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "Error: codex is not installed: npm install -g @openai/codex" in r.stderr


def test_launch_codex_runs_codex_against_the_server(agents, server, agent_model, tmp_path):
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text("check_for_update_on_startup = false\n[analytics]\nenabled = false\n")
    (home / "notes.txt").write_text(AGENT_NOTES)
    r = launch(
        server.url,
        "codex",
        "--model",
        agent_model.split(":")[0],
        "--",
        "exec",
        "--skip-git-repo-check",
        SECRET_Q,
        path=agents,
        home=home,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == AGENT_ANSWER


def test_launch_claude_runs_claude_against_the_server(agents, server, agent_model, tmp_path):
    r = launch(
        server.url, "claude", "--model", agent_model.split(":")[0], "--", "-p", "Say hello.", path=agents, home=tmp_path
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == REPLY


def test_launch_refuses_a_model_the_server_lacks(server):
    for agent in ("codex", "claude"):
        r = launch(server.url, agent, "--model", "nope", "--print")
        assert r.returncode == 1 and r.stderr.strip() == "Error: model 'nope:latest' not found", r.stderr
