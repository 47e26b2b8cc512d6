"""The mlxollama command line, shaped like `ollama`."""

from __future__ import annotations

import argparse
import sys

from . import __version__


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxollama", description="Ollama-compatible model server on MLX")
    parser.add_argument("--version", "-v", action="version", version=f"mlxollama version {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="Start the server in the foreground").set_defaults(func=_cmd_serve)
    sub.add_parser(
        "import-defaults", help="Import the bundled default models into the store if missing"
    ).set_defaults(func=_cmd_import_defaults)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
