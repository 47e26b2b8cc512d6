"""The mlxollama command line, shaped like `ollama`.

`serve` and `import-defaults` run in this process; every other command is a client of the server at
OLLAMA_HOST, through the official `ollama` Python package. Exit status: 0 on success, 1 on any error
(printed as one `Error: ...` line on stderr), 2 on a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from .progress import ProgressUI, progress_stream, pull_with_progress
from .show import digest_id, print_list, processor_column, render_show_info

# --- server-side commands -------------------------------------------------------------------


def _cmd_serve(args) -> int:
    if getattr(args, "hostfile", None):  # one server over the hosts of an MLX group (cluster.py)
        from .cluster import serve_group

        return serve_group(args.hostfile, args.backend)
    from ..server import serve

    serve()
    return 0


def _cmd_import_defaults(args) -> int:
    from ..config import Config
    from ..convert.bundled import ensure_bundled
    from ..store import Store

    config = Config.from_env()
    config.models_dir.mkdir(parents=True, exist_ok=True)
    ensure_bundled(Store(config.models_dir), log=lambda m: print(m, flush=True))
    return 0


# --- helpers shared by the client commands --------------------------------------------------


def _client():
    from .client import client

    return client()


# --- progress for pull / push / create ------------------------------------------------------


# --- client commands ------------------------------------------------------------------------


def _cmd_list(args) -> int:
    print_list(_client(), args.filter)
    return 0


def _cmd_ps(args) -> int:
    from .format import human_bytes, human_time, table

    rows = []
    now = datetime.now(timezone.utc)
    for m in _client().ps().models:
        name = m.name or m.model or ""
        if args.filter and not name.startswith(args.filter[0]):
            continue
        exp = m.expires_at
        if exp is not None and exp.tzinfo is None:
            exp = exp.replace(tzinfo=timezone.utc)
        until = "Stopping..." if exp is not None and exp < now else human_time(exp, "Never", now=now)
        size, vram = int(m.size or 0), int(m.size_vram or 0)
        rows.append(
            [
                name,
                digest_id(m.digest),
                human_bytes(size),
                processor_column(size, vram),
                str(m.context_length or 0),
                until,
            ]
        )
    sys.stdout.write(table(rows, header=["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]))
    return 0


def _cmd_show(args) -> int:
    from .client import CLIError, raw_show

    chosen = [f for f in ("license", "modelfile", "parameters", "system", "template") if getattr(args, f)]
    if len(chosen) > 1:
        raise CLIError(
            "only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified"
        )
    resp = raw_show(_client(), args.model, **({"verbose": True} if args.verbose else {}))
    if not chosen:
        sys.stdout.write(render_show_info(resp, verbose=args.verbose))
        return 0
    what = chosen[0]
    text = resp.get(what) or ""
    # Ollama prints system and template verbatim and the others with a trailing newline
    sys.stdout.write(text if what in ("system", "template") else text + "\n")
    return 0


def _unload(c, model: str) -> None:
    from .client import raw_show

    raw_show(c, model)  # a missing model fails here with "not found", before anything else
    c.generate(model=model, prompt="", keep_alive=0)


def _cmd_stop(args) -> int:
    import ollama

    from .client import CLIError

    try:
        _unload(_client(), args.model)
    except ollama.ResponseError as e:
        if "not found" in str(e.error):
            raise CLIError(f'couldn\'t find model "{args.model}" to stop') from None
        raise
    return 0


def _cmd_rm(args) -> int:
    import ollama

    c = _client()
    for name in args.models:
        try:
            _unload(c, name)
        except ollama.ResponseError as e:
            if "not found" not in str(e.error).lower():
                print(f"Warning: unable to stop model '{name}'", file=sys.stderr)
        c.delete(name)
        print(f"deleted '{name}'")
    return 0


def _cmd_cp(args) -> int:
    _client().copy(args.source, args.destination)
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def _cmd_pull(args) -> int:
    pull_with_progress(_client(), args.model, args.insecure)
    return 0


def _cmd_push(args) -> int:
    progress_stream(_client().push(args.model, insecure=args.insecure, stream=True), "pushing")
    print(f"\nYou can find your model at:\n\n\t{args.model}")
    return 0


def _upload_blob(c, path: Path) -> str:
    """Store a local file on the server unless it already has it (HEAD first, like `ollama create`)."""
    import hashlib

    import ollama

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = f"sha256:{h.hexdigest()}"
    try:
        c._request_raw("HEAD", f"/api/blobs/{digest}")
        return digest
    except ollama.ResponseError as e:
        if e.status_code != 404:
            raise
    print(f"copying file {digest}", file=sys.stderr)
    return c.create_blob(path)


def _cmd_create(args) -> int:
    from . import modelfile
    from .client import CLIError

    path = Path(args.file or "Modelfile").expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if args.file:
            raise CLIError(f"open {args.file}: no such file or directory") from None
        raise CLIError("no Modelfile or safetensors files found") from None
    c = _client()
    try:
        commands = modelfile.parse(text)
        req, warnings = modelfile.to_create_request(commands, path.resolve().parent, lambda p: _upload_blob(c, p))
    except modelfile.ModelfileError as e:
        raise CLIError(str(e)) from None
    for w in warnings:
        print(w)
    kwargs = {
        ("from_" if k == "from" else k): v
        for k, v in req.items()
        if k in ("from", "files", "adapters", "template", "license", "system", "parameters", "messages")
    }
    extras = {k: v for k, v in req.items() if k in ("renderer", "parser", "requires", "draft")}
    if extras:
        # fields the typed client does not know travel in a raw streaming request
        body = {"model": args.name, **req, "stream": True}
        if args.quantize:
            body["quantize"] = args.quantize
        import ollama

        stream = c._request(ollama.ProgressResponse, "POST", "/api/create", json=body, stream=True)
    else:
        stream = c.create(model=args.name, quantize=args.quantize, stream=True, **kwargs)
    progress_stream(stream, "pulling")
    return 0


def _cmd_run(args) -> int:
    from ..durations import DurationError, parse_go_duration
    from . import interactive as session
    from .client import CLIError, client

    think = None
    explicit = args.think or args.think_value is not None
    if args.think_value is not None:
        v = args.think_value
        if v in ("", "true"):
            think = True
        elif v == "false":
            think = False
        elif v in ("high", "medium", "low", "max"):
            think = v
        else:
            raise CLIError(f'invalid value for --think: "{v}" (must be true, false, high, medium, low, or max)')
    elif args.think:
        think = True
    if args.keepalive:
        try:
            parse_go_duration(args.keepalive)
        except DurationError as e:
            raise CLIError(str(e)) from None

    opts = session.RunOptions(
        model=args.model,
        format=args.format or "",
        think=think,
        think_explicit=explicit,
        hide_thinking=args.hidethinking,
        keep_alive=args.keepalive or None,
        verbose=args.verbose,
        wordwrap=not args.nowordwrap,
        insecure=args.insecure,
    )
    prompts = list(args.prompt)
    interactive = True
    if not sys.stdin.isatty():
        data = sys.stdin.read()
        if data:
            prompts.insert(0, data)
        interactive = False
    prompt = " ".join(prompts)
    if prompts:
        interactive = False
    if not sys.stdout.isatty():
        interactive = False

    c = client()
    info = session.show_or_pull(c, args.model, args.insecure)
    opts.parent_model = (info.get("details") or {}).get("parent_model", "")
    opts.loaded_messages = list(info.get("messages") or [])
    session.infer_think(info, opts)
    session.infer_media(info, opts)

    if "embedding" in (info.get("capabilities") or []):
        if not prompt:
            raise CLIError(f'embedding models require input text. Usage: mlxollama run {args.model} "your text here"')
        kwargs = {"keep_alive": opts.keep_alive} if opts.keep_alive else {}
        resp = c.embed(model=args.model, input=prompt, **kwargs)
        if not resp.embeddings:
            raise CLIError("no embeddings returned")
        print(json.dumps(list(resp.embeddings[0]), separators=(",", ":")))
        return 0

    if interactive:
        session.load_model(c, opts)
        session.print_baked_messages(opts)
        return session.interactive(c, opts)
    return session.generate(c, opts, prompt)


# --- service --------------------------------------------------------------------------------


def _cmd_service(args) -> int:
    from . import service

    return service.run(args.action, dry_run=args.dry_run, skip_import=args.skip_import)


# --- convert (registered only when the converter module is present) --------------------------


def _convert_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("mlxollama.convert.create") is not None
    except (ImportError, ValueError):
        return False


def _cmd_convert(args) -> int:
    """Runs the conversion in this process, straight into the store (no server needed)."""
    from ..config import Config
    from ..convert.create import ManageError, convert_path
    from ..store import Store
    from .client import CLIError

    config = Config.from_env()
    config.models_dir.mkdir(parents=True, exist_ok=True)
    ui = ProgressUI("converting")
    try:
        convert_path(
            args.path,
            args.name,
            quantize=args.quantize,
            store=Store(config.models_dir),
            emit=ui,
            noprune=config.noprune,
        )
        ui({"status": "success"})
    except (ManageError, ValueError) as e:
        raise CLIError(str(e)) from None
    finally:
        ui.stop()
    return 0


# --- parser ---------------------------------------------------------------------------------


def _cmd_launch(args) -> int:
    from .launch import launch

    return launch(args.launch_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlxollama",
        description="Ollama-compatible model server on MLX, and its command line client",
        epilog="Client commands talk to the server at OLLAMA_HOST (default 127.0.0.1:11434).",
    )
    parser.add_argument("--version", "-v", action="version", version=f"mlxollama version is {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="Start the server in the foreground")
    p.add_argument("--hostfile", help="serve one model across the hosts of this mlx.launch hostfile (README)")
    p.add_argument("--backend", choices=("ring", "jaccl", "jaccl-ring", "mpi"), help="mlx.launch backend")
    p.set_defaults(func=_cmd_serve)
    sub.add_parser("import-defaults", help="Import the bundled default models into the store if missing").set_defaults(
        func=_cmd_import_defaults
    )

    p = sub.add_parser("create", help="Create a model from a Modelfile")
    p.add_argument("name", metavar="MODEL")
    p.add_argument("-f", "--file", help='Name of the Modelfile (default "Modelfile")')
    p.add_argument("-q", "--quantize", help="Quantize model to this level (e.g. q4_K_M)")
    p.set_defaults(func=_cmd_create)

    p = sub.add_parser("show", help="Show information for a model")
    p.add_argument("model", metavar="MODEL")
    for flag, text in (
        ("license", "Show license of a model"),
        ("modelfile", "Show Modelfile of a model"),
        ("parameters", "Show parameters of a model"),
        ("template", "Show template of a model"),
        ("system", "Show system message of a model"),
    ):
        p.add_argument(f"--{flag}", action="store_true", help=text)
    p.add_argument("-v", "--verbose", action="store_true", help="Show detailed model information")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("run", help="Run a model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("prompt", metavar="PROMPT", nargs="*")
    p.add_argument("--format", help="Response format (e.g. json)")
    p.add_argument(
        "--think", action="store_true", help="Enable thinking; --think=false|high|medium|low|max picks a value"
    )
    p.add_argument("--think-value", dest="think_value", help=argparse.SUPPRESS)
    p.add_argument("--hidethinking", action="store_true", help="Hide thinking output (if provided)")
    p.add_argument("--keepalive", help="Duration to keep a model loaded (e.g. 5m)")
    p.add_argument("--verbose", action="store_true", help="Show timings for response")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    p.add_argument("--nowordwrap", action="store_true", help="Don't wrap words to the next line automatically")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("stop", help="Stop a running model")
    p.add_argument("model", metavar="MODEL")
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser("pull", help="Pull a model from a registry")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    p.set_defaults(func=_cmd_pull)

    p = sub.add_parser("push", help="Push a model to a registry")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("list", aliases=["ls"], help="List models")
    p.add_argument("filter", nargs="*", metavar="PREFIX")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("ps", help="List running models")
    p.add_argument("filter", nargs="*", metavar="PREFIX")
    p.set_defaults(func=_cmd_ps)

    p = sub.add_parser("cp", help="Copy a model")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("destination", metavar="DESTINATION")
    p.set_defaults(func=_cmd_cp)

    p = sub.add_parser("rm", help="Remove a model")
    p.add_argument("models", metavar="MODEL", nargs="+")
    p.set_defaults(func=_cmd_rm)

    if _convert_available():
        p = sub.add_parser("convert", help="Convert a GGUF file or Hugging Face/MLX folder into the model store")
        p.add_argument("path", metavar="PATH")
        p.add_argument("--name", required=True, help="Name for the new model (e.g. mymodel:latest)")
        p.add_argument("-q", "--quantize", help="Quantize to this level (e.g. q4_K_M, q8_0)")
        p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("launch", help="Start a coding agent (codex, claude) against this server")
    p.add_argument("launch_args", nargs=argparse.REMAINDER, metavar="codex|claude [--model MODEL] [--print] [-- ARGS]")
    p.set_defaults(func=_cmd_launch)

    p = sub.add_parser("service", help="Install, remove or inspect the background service (launchd/systemd)")
    p.add_argument("action", choices=["install", "uninstall", "status"])
    p.add_argument("--dry-run", action="store_true", help="Print every action without doing it")
    p.add_argument("--skip-import", action="store_true", help="install: do not import the default models first")
    p.set_defaults(func=_cmd_service)
    return parser


def _normalize_argv(argv: list[str]) -> list[str]:
    # `--think` takes a value only in the `--think=VALUE` form, as in ollama, so `--think MODEL` works.
    out = []
    for a in argv:
        if a.startswith("--think="):
            out += ["--think-value", a.split("=", 1)[1]]
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(_normalize_argv(list(sys.argv[1:] if argv is None else argv)))
    # argparse stops filling `run`'s prompt words at the first flag; `ollama run m hi --verbose there`
    # takes flags anywhere, so the words after a flag belong to the prompt too.
    if getattr(args, "func", None) is _cmd_run and extra and not any(e.startswith("-") for e in extra):
        args.prompt = list(args.prompt) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    for stream in (sys.stdout, sys.stderr):
        # model output may hold characters the terminal's encoding cannot show; never crash on them
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `mlxollama list | head`: the reader left; say nothing
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as exc:  # noqa: BLE001 - everything ends as one line unless debugging
        from ..config import debug_level
        from .client import error_message

        msg = error_message(exc)
        if msg is None:
            if debug_level():
                raise
            msg = f"{type(exc).__name__}: {exc}"
        print(f"Error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
