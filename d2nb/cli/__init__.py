"""The ``d2nb`` command: one subcommand per module of this package.

Each module ``d2nb/cli/<name>.py`` in ``SUBCOMMANDS`` provides ``add_parser(subparsers)`` and
``run(args) -> exit code``; a ``D2nbError`` becomes ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from d2nb.errors import D2nbError

SUBCOMMANDS = ("train", "demo", "data", "evaluate", "export", "install")


def key_value_opts(opts, example: str) -> list:
    """train_net.py's trailing ``KEY VALUE`` config options, checked to come in pairs."""
    opts = list(opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        raise D2nbError(f"config options must come in KEY VALUE pairs, got {opts!r}", f"write them as e.g. {example}")
    return opts


def main(argv=None) -> int:
    from d2nb.install import quiet_library_warnings

    quiet_library_warnings()  # detectron2's imports warn on every command; nothing for a user to do
    parser = argparse.ArgumentParser(prog="d2nb", description="detectron2 in notebooks")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name in SUBCOMMANDS:
        if importlib.util.find_spec(f"d2nb.cli.{name}") is not None:
            modules[name] = importlib.import_module(f"d2nb.cli.{name}")
            modules[name].add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args)
    except D2nbError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
