"""The `specplug` console script. Each subcommand lives in its own module exposing
``add_parser(subparsers)``; the module sets ``func`` on its parser."""

from __future__ import annotations

import argparse
import importlib
import sys

from specplug import __version__

# Subcommand modules, imported only to build the parser (each keeps heavy imports inside func).
SUBCOMMANDS = [
    "specplug.commands.check",
    "specplug.commands.models",
    "specplug.commands.zoo",
    "specplug.commands.bench",
    "specplug.commands.trace",
    "specplug.commands.replay",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specplug", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"specplug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in SUBCOMMANDS:
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # config/argument problems (SpecplugConfigError is one): no traceback
        print(f"specplug {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
