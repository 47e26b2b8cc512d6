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
from decimal import Decimal
from pathlib import Path

from . import __version__


# --- server-side commands -------------------------------------------------------------------


def _cmd_serve(args) -> int:
    from .server import serve

    serve()
    return 0


def _cmd_import_defaults(args) -> int:
    from .config import Config
    from .convert.bundled import ensure_bundled
    from .store import Store

    config = Config.from_env()
    config.models_dir.mkdir(parents=True, exist_ok=True)
    ensure_bundled(Store(config.models_dir), log=lambda m: print(m, flush=True))
    return 0


# --- helpers shared by the client commands --------------------------------------------------


def _client():
    from .cli_client import client

    return client()


def _digest_id(digest: str | None) -> str:
    d = (digest or "").removeprefix("sha256:")
    return d[:12]


def print_list(c, filters: list[str] | None = None) -> None:
    from .cli_format import human_bytes, human_time, table

    rows = []
    for m in c.list().models:
        name = m.model or ""
        if filters and not name.lower().startswith(filters[0].lower()):
            continue
        rows.append([name, _digest_id(m.digest), human_bytes(m.size or 0), human_time(m.modified_at, "Never")])
    sys.stdout.write(table(rows, header=["NAME", "ID", "SIZE", "MODIFIED"]))


def _processor(size: int, vram: int) -> str:
    if vram == 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if vram > size or size == 0:
        return "Unknown"
    cpu = round((size - vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def _go_number(v) -> str:
    """A JSON number as Go prints a float64 with %g (shortest digits, exponent from 1e6 on)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    d = Decimal(repr(float(v))).normalize()
    sign, digits, exp = d.as_tuple()
    if not isinstance(exp, int):  # nan/inf
        return str(v)
    ds = "".join(map(str, digits)) or "0"
    e10 = len(ds) + exp - 1
    neg = "-" if sign else ""
    if e10 < -4 or e10 >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"
    return neg + format(abs(d), "f")


def _go_any(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return _go_number(v)
    if v is None:
        return "<nil>"
    if isinstance(v, list):
        return "[" + " ".join(_go_any(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_any(x)}" for k, x in sorted(v.items())) + "]"
    return str(v)


def _metadata_value(v) -> str:
    if isinstance(v, list):
        from .cli_format import text_width

        # as many items as fit in about ten columns, then a count of the rest
        shown, width = 0, 1
        for i, item in enumerate(v):
            w = text_width(_go_any(item)) + (2 if i else 0)
            if width + w > 10 and i > 0:
                break
            width += w
            shown += 1
        if shown < len(v):
            return "[" + " ".join(_go_any(x) for x in v[:shown]) + f" ...+{len(v) - shown} more]"
        return _go_any(v)
    if isinstance(v, (bool, int, float)):
        return _go_number(v)
    if isinstance(v, str):
        return v
    return type(v).__name__


def _head(text: str, n: int) -> list[list[str]]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rows = [["", ln] for ln in lines[:n]]
    if len(lines) > n:
        rows.append(["", "..."])
    return rows


def render_show_info(resp: dict, verbose: bool = False) -> str:
    """The sectioned report `ollama show MODEL` prints."""
    from .cli_format import human_number, table

    out: list[str] = []

    def section(header: str, rows: list[list[str]], width: int = 30) -> None:
        out.append(f"  {header}\n")
        out.append(table(rows, col_width=width))
        out.append("\n")

    details = resp.get("details") or {}
    info = resp.get("model_info")
    rows = []
    if resp.get("remote_host"):
        rows += [["", "Remote model", resp.get("remote_model", "")], ["", "Remote URL", resp["remote_host"]]]
    if info is not None:
        arch = info.get("general.architecture")
        arch = arch if isinstance(arch, str) else ""
        if arch:
            rows.append(["", "architecture", arch])
        params = details.get("parameter_size") or ""
        if not params and isinstance(info.get("general.parameter_count"), (int, float)):
            params = human_number(int(info["general.parameter_count"]))
        if params:
            rows.append(["", "parameters", params])
        for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
            v = info.get(f"{arch}.{key}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append(["", label, format(Decimal(repr(v)).normalize(), "f")])
    else:
        rows += [["", "architecture", details.get("family", "")], ["", "parameters", details.get("parameter_size", "")]]
    rows.append(["", "quantization", details.get("quantization_level", "")])
    if resp.get("requires"):
        rows.append(["", "requires", resp["requires"]])
    section("Model", rows)

    if resp.get("capabilities"):
        section("Capabilities", [["", cap] for cap in resp["capabilities"]])

    proj = resp.get("projector_info")
    if proj:
        rows = []
        arch = proj.get("general.architecture") or ""
        if arch:
            rows.append(["", "architecture", arch])
        if isinstance(proj.get("general.parameter_count"), (int, float)):
            rows.append(["", "parameters", human_number(int(proj["general.parameter_count"]))])
        for suffix, label in (("embedding_length", "embedding length"), ("projection_dim", "dimensions")):
            for modality in ("vision", "audio"):
                v = proj.get(f"{arch}.{modality}.{suffix}")
                if isinstance(v, (int, float)):
                    rows.append(["", label, _go_number(v)])
                    break
        section("Projector", rows)

    if resp.get("parameters"):
        section("Parameters", [[""] + line.split() for line in resp["parameters"].splitlines() if line])

    if info is not None and verbose:
        section("Metadata", [["", k, _metadata_value(info[k])] for k in sorted(info)])

    if resp.get("tensors") and verbose:
        section("Tensors", [["", t.get("name", ""), t.get("type", ""), _go_any(t.get("shape", []))]
                            for t in resp["tensors"]])

    if resp.get("system"):
        section("System", _head(resp["system"], 2), width=100)
    if resp.get("license"):
        section("License", _head(resp["license"], 2), width=100)
    return "".join(out)


# --- progress for pull / push / create ------------------------------------------------------


def pull_with_progress(c, name: str, insecure: bool = False) -> None:
    from .cli_format import Bar, Progress

    p = Progress(sys.stderr)
    bars: dict[str, Bar] = {}
    status = None
    try:
        for r in c.pull(name, insecure=insecure, stream=True):
            if r.digest:
                # the first message for a layer (nothing downloaded yet) only announces it
                if not r.completed:
                    continue
                p.stop_spinners()
                bar = bars.get(r.digest)
                if bar is None:
                    short = r.digest.removeprefix("sha256:").strip()[:12]
                    bar = bars[r.digest] = Bar(f"pulling {short}:", r.total or 0, r.completed)
                    p.add(bar)
                bar.set(r.completed)
            elif r.status != status:
                status = r.status
                p.spinner(status or "")
    finally:
        p.stop()


class _ProgressUI:
    """Push, create and convert: a bar per digest (even before any bytes), a spinner per status."""

    def __init__(self, default_verb: str):
        from .cli_format import Progress

        self.verb = default_verb
        self.p = Progress(sys.stderr)
        self.bars: dict = {}
        self.status = None

    def __call__(self, r) -> None:
        from .cli_format import Bar

        get = r.get if isinstance(r, dict) else (lambda k: getattr(r, k, None))
        digest, status = get("digest"), get("status")
        if digest:
            self.p.stop_spinners()
            bar = self.bars.get(digest)
            if bar is None:
                msg = status or f"{self.verb} {digest.removeprefix('sha256:')[:12]}..."
                bar = self.bars[digest] = Bar(msg, get("total") or 0, get("completed") or 0)
                self.p.add(bar)
            bar.set(get("completed") or 0)
        elif status != self.status:
            self.status = status
            self.p.spinner(status or "")

    def stop(self) -> None:
        self.p.stop()


def _progress_stream(responses, default_verb: str) -> None:
    ui = _ProgressUI(default_verb)
    try:
        for r in responses:
            ui(r)
    finally:
        ui.stop()


# --- client commands ------------------------------------------------------------------------


def _cmd_list(args) -> int:
    print_list(_client(), args.filter)
    return 0


def _cmd_ps(args) -> int:
    from .cli_format import human_bytes, human_time, table

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
        rows.append([name, _digest_id(m.digest), human_bytes(size), _processor(size, vram),
                     str(m.context_length or 0), until])
    sys.stdout.write(table(rows, header=["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]))
    return 0


def _cmd_show(args) -> int:
    from .cli_client import CLIError, raw_show

    chosen = [f for f in ("license", "modelfile", "parameters", "system", "template") if getattr(args, f)]
    if len(chosen) > 1:
        raise CLIError("only one of '--license', '--modelfile', '--parameters', '--system', or '--template' "
                       "can be specified")
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
    from .cli_client import raw_show

    raw_show(c, model)  # a missing model fails here with "not found", before anything else
    c.generate(model=model, prompt="", keep_alive=0)


def _cmd_stop(args) -> int:
    import ollama

    from .cli_client import CLIError

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
    _progress_stream(_client().push(args.model, insecure=args.insecure, stream=True), "pushing")
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
    from . import cli_modelfile
    from .cli_client import CLIError

    path = Path(args.file or "Modelfile").expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if args.file:
            raise CLIError(f"open {args.file}: no such file or directory") from None
        raise CLIError("no Modelfile or safetensors files found") from None
    c = _client()
    try:
        commands = cli_modelfile.parse(text)
        req, warnings = cli_modelfile.to_create_request(commands, path.resolve().parent,
                                                        lambda p: _upload_blob(c, p))
    except cli_modelfile.ModelfileError as e:
        raise CLIError(str(e)) from None
    for w in warnings:
        print(w)
    kwargs = {("from_" if k == "from" else k): v for k, v in req.items()
              if k in ("from", "files", "adapters", "template", "license", "system", "parameters", "messages")}
    extras = {k: v for k, v in req.items() if k in ("renderer", "parser", "requires")}
    if extras:
        # fields the typed client does not know travel in a raw streaming request
        body = {"model": args.name, **req, "stream": True}
        if args.quantize:
            body["quantize"] = args.quantize
        import ollama

        stream = c._request(ollama.ProgressResponse, "POST", "/api/create", json=body, stream=True)
    else:
        stream = c.create(model=args.name, quantize=args.quantize, stream=True, **kwargs)
    _progress_stream(stream, "pulling")
    return 0


def _cmd_run(args) -> int:
    from . import cli_run
    from .cli_client import CLIError, client
    from .durations import DurationError, parse_go_duration

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

    opts = cli_run.RunOptions(model=args.model, format=args.format or "", think=think, think_explicit=explicit,
                              hide_thinking=args.hidethinking, keep_alive=args.keepalive or None,
                              verbose=args.verbose, wordwrap=not args.nowordwrap, insecure=args.insecure)
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
    info = cli_run.show_or_pull(c, args.model, args.insecure)
    opts.parent_model = (info.get("details") or {}).get("parent_model", "")
    opts.loaded_messages = list(info.get("messages") or [])
    cli_run.infer_think(info, opts)

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
        cli_run.load_model(c, opts)
        cli_run.print_baked_messages(opts)
        return cli_run.interactive(c, opts)
    return cli_run.generate(c, opts, prompt)


# --- service --------------------------------------------------------------------------------


def _cmd_service(args) -> int:
    from . import cli_service

    return cli_service.run(args.action, dry_run=args.dry_run, skip_import=args.skip_import)


# --- convert (registered only when the converter module is present) --------------------------


def _convert_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("mlxollama.convert.create") is not None
    except (ImportError, ValueError):
        return False


def _cmd_convert(args) -> int:
    """Runs the conversion in this process, straight into the store (no server needed)."""
    from .cli_client import CLIError
    from .config import Config
    from .convert.create import ManageError, convert_path
    from .store import Store

    config = Config.from_env()
    config.models_dir.mkdir(parents=True, exist_ok=True)
    ui = _ProgressUI("converting")
    try:
        convert_path(args.path, args.name, quantize=args.quantize, store=Store(config.models_dir), emit=ui,
                     noprune=config.noprune)
        ui({"status": "success"})
    except (ManageError, ValueError) as e:
        raise CLIError(str(e)) from None
    finally:
        ui.stop()
    return 0


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlxollama", description="Ollama-compatible model server on MLX, and its command line client",
        epilog="Client commands talk to the server at OLLAMA_HOST (default 127.0.0.1:11434).")
    parser.add_argument("--version", "-v", action="version", version=f"mlxollama version is {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("serve", help="Start the server in the foreground").set_defaults(func=_cmd_serve)
    sub.add_parser(
        "import-defaults", help="Import the bundled default models into the store if missing"
    ).set_defaults(func=_cmd_import_defaults)

    p = sub.add_parser("create", help="Create a model from a Modelfile")
    p.add_argument("name", metavar="MODEL")
    p.add_argument("-f", "--file", help='Name of the Modelfile (default "Modelfile")')
    p.add_argument("-q", "--quantize", help="Quantize model to this level (e.g. q4_K_M)")
    p.set_defaults(func=_cmd_create)

    p = sub.add_parser("show", help="Show information for a model")
    p.add_argument("model", metavar="MODEL")
    for flag, text in (("license", "Show license of a model"), ("modelfile", "Show Modelfile of a model"),
                       ("parameters", "Show parameters of a model"), ("template", "Show template of a model"),
                       ("system", "Show system message of a model")):
        p.add_argument(f"--{flag}", action="store_true", help=text)
    p.add_argument("-v", "--verbose", action="store_true", help="Show detailed model information")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("run", help="Run a model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("prompt", metavar="PROMPT", nargs="*")
    p.add_argument("--format", help='Response format (e.g. json)')
    p.add_argument("--think", action="store_true",
                   help="Enable thinking; --think=false|high|medium|low|max picks a value")
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
        from .cli_client import error_message

        msg = error_message(exc)
        if msg is None:
            if os.environ.get("OLLAMA_DEBUG"):
                raise
            msg = f"{type(exc).__name__}: {exc}"
        print(f"Error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
