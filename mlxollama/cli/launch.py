"""`mlxollama launch codex|claude`: start a coding agent against this server (Ollama's `ollama launch`).

Nothing is written to the agent's own configuration: Codex gets its provider as `-c` overrides
(Ollama's launch passes the same keys), Claude Code gets environment variables. `--print` shows
the environment, the command line and, for Codex, the config.toml block for a permanent setup,
without starting anything. Arguments after `--` go to the agent unchanged.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil

from ..config import child_environment
from .client import CLIError, client, is_connect_error, raw_show, server_url

PROVIDER = "mlxollama"
INSTALL = {"codex": "npm install -g @openai/codex", "claude": "npm install -g @anthropic-ai/claude-code"}


def codex_config_toml(url: str, model: str) -> str:
    """The ~/.codex/config.toml block that makes the setup permanent."""
    return (
        f'model = "{model}"\nmodel_provider = "{PROVIDER}"\n\n'
        f'[model_providers.{PROVIDER}]\nname = "{PROVIDER}"\nbase_url = "{url}/v1"\nwire_api = "responses"\n'
    )


def codex_command(url: str, model: str, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    overrides = [
        f'model_provider="{PROVIDER}"',
        f'model_providers.{PROVIDER}.name="{PROVIDER}"',
        f'model_providers.{PROVIDER}.base_url="{url}/v1"',
        f'model_providers.{PROVIDER}.wire_api="responses"',
    ]
    argv = ["codex"] + [a for o in overrides for a in ("-c", o)] + ["-m", model] + extra
    # Codex never sends it anywhere but our server; some versions want a key to be set.
    return argv, {"OPENAI_API_KEY": "ollama"}


def claude_command(
    url: str, model: str, extra: list[str], context: int | None = None
) -> tuple[list[str], dict[str, str]]:
    env = {
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_AUTH_TOKEN": "ollama",
        "ANTHROPIC_API_KEY": "",  # a key from the user's shell would take precedence over the token
        # every tier Claude Code picks a model for (main, fast, subagents) is the local model
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "CLAUDE_CODE_SUBAGENT_MODEL": model,
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_TELEMETRY": "1",
    }
    if context:
        # an unknown model name makes Claude Code assume a 1M window; compact before ours is full
        env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] = str(context)
    return ["claude", "--model", model] + extra, env


def _tool_models(c) -> list[str]:
    names = [m.model for m in c.list().models if m.model]
    return [n for n in names if "tools" in (raw_show(c, n).get("capabilities") or [])]


def _context_of(c, model: str) -> int | None:
    """The model's PARAMETER num_ctx, the window the server will give it."""
    for line in (raw_show(c, model).get("parameters") or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "num_ctx" and value.strip().isdigit():
            return int(value.strip())
    return None


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ours, passthrough = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="mlxollama launch", description="Start a coding agent against this server")
    p.add_argument("integration", choices=sorted(INSTALL), help="codex (OpenAI Codex CLI) or claude (Claude Code)")
    p.add_argument("--model", help="Model to use (default: the first local model that supports tools)")
    p.add_argument(
        "--print",
        dest="dry_run",
        action="store_true",
        help="Print the environment and command (and Codex's config.toml block) instead of starting",
    )
    return p.parse_args(ours), passthrough


def launch(argv: list[str]) -> int:
    args, extra = parse(argv)
    url = server_url()
    model, context = args.model, None
    try:
        c = client()
        if not model:
            candidates = _tool_models(c)
            if not candidates:
                raise CLIError("no local model supports tools; coding agents need one (pull one, or pass --model)")
            model = candidates[0]
        context = _context_of(c, model)  # also: a model the server does not have fails here, not in the agent
    except Exception as e:
        if not (args.model and is_connect_error(e)):
            raise
        # --model given: the command can still be printed or started while the server is down
    if args.integration == "codex":
        command, env = codex_command(url, model, extra)
    else:
        command, env = claude_command(url, model, extra, context)
    if args.dry_run:
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        print(shlex.join(command))
        if args.integration == "codex":
            print("\n# For a permanent setup, add to ~/.codex/config.toml:\n" + codex_config_toml(url, model), end="")
        return 0
    binary = shutil.which(command[0])
    if binary is None:
        raise CLIError(f"{command[0]} is not installed: {INSTALL[args.integration]}")
    os.execve(binary, command, child_environment(env))
    return 0  # not reached
