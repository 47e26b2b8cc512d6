"""The Continue CLI (`cn -p`) with `provider: ollama` against a live server.

cn sends everything to /v1/chat/completions, streamed, with its tools (nine in headless mode) and
`stream_options.include_usage`. It does not retry without tools when a model cannot take them: on a
model whose template has no tools Ollama answers 400 "... does not support tools" and cn exits 1
with that message, and so do we. Such a model works once cn's tools are excluded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..support.scriptedmodel import READ_ARGS, REPLY, TOOL_ANSWER

CN_VERSION = "1.5.47"
NODE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "node"
_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH", "network")


@pytest.fixture(scope="session")
def cn() -> Path:
    npm = shutil.which("npm")
    if not shutil.which("node") or not npm:
        pytest.skip("node and npm are needed to run the Continue CLI (@continuedev/cli)")
    package = NODE_DIR / "node_modules" / "@continuedev" / "cli" / "package.json"
    if not package.exists() or json.loads(package.read_text())["version"] != CN_VERSION:
        r = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", f"@continuedev/cli@{CN_VERSION}"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode != 0:
            if any(s in r.stderr for s in _OFFLINE):
                pytest.skip(
                    f"npm registry unreachable, cannot install @continuedev/cli@{CN_VERSION}: {r.stderr.strip()[-300:]}"
                )
            pytest.fail(f"npm install @continuedev/cli@{CN_VERSION} failed:\n{r.stderr[-2000:]}")
    return NODE_DIR / "node_modules" / ".bin" / "cn"


def run_cn(cn: Path, cwd: Path, url: str, model: str, prompt: str, *args: str) -> subprocess.CompletedProcess:
    config = cwd / "config.yaml"
    config.write_text(
        "name: mlxollama-test\nversion: 1.0.0\nschema: v1\nmodels:\n"
        f"  - name: local\n    provider: ollama\n    model: {model}\n    apiBase: {url}\n    roles: [chat]\n"
        "    defaultCompletionOptions:\n      temperature: 0\n      maxTokens: 24\n"
    )
    env = {
        **os.environ,
        "HOME": str(cwd / "home"),  # cn keeps sessions and logs under ~/.continue
        "CONTINUE_GLOBAL_DIR": str(cwd / "home" / ".continue"),
        "CONTINUE_CLI_ENABLE_TELEMETRY": "0",
        "CONTINUE_METRICS_ENABLED": "0",
        "CONTINUE_CLI_AUTO_UPDATED": "true",  # never self-update from a test
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [str(cn), "-p", prompt, "--config", str(config), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cn_answers_with_its_tools_sent(cn, server, scripted, tmp_path):
    r = run_cn(cn, tmp_path, server.url, "scripted-tools", "Say hello.")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == REPLY


def test_cn_runs_a_tool_and_answers_from_its_result(cn, server, scripted, tmp_path):
    (tmp_path / READ_ARGS["filepath"]).write_text("The secret word is banana.\n")
    # The scripted model calls cn's Read tool; it answers only once a tool result comes back.
    r = run_cn(cn, tmp_path, server.url, "scripted-tools", "Please read my notes.")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == TOOL_ANSWER


def test_cn_on_a_model_without_tools_fails_as_with_ollama(cn, server, tmp_path):
    # The tiny model's template has no tools (the bundled smollm2 has Ollama's tools template).
    r = run_cn(cn, tmp_path, server.url, "tiny:latest", "What is the capital of France?")
    assert r.returncode != 0
    assert "registry.ollama.ai/library/tiny:latest does not support tools" in r.stdout + r.stderr


def test_cn_smollm_answers_with_tools_excluded(cn, server, smollm, tmp_path):
    r = run_cn(cn, tmp_path, server.url, smollm, "What is the capital of France? Answer in one word.", "--exclude", "*")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Paris" in r.stdout
