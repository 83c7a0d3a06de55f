"""The ``mudg-fast`` command line.

Each subcommand lives in its own module that defines ``add_arguments(parser)`` and ``run(args)``;
modules are imported only when their subcommand runs, so ``mudg-fast --help`` stays instant and
torch is imported only by the commands that need it.

The library reports through the ``mudg_fast`` loggers (``mudg_fast.build``,
``mudg_fast.pipeline``, ...) and shows nothing unless the application configures logging; the
command line shows their INFO messages on stderr, prefixed like the command's own messages
(:func:`show_log`), except with ``--no_progress``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build-index": ("mudg_fast.commands.build_index", "build an IVF index from embedding shards"),
    "eval-index": ("mudg_fast.commands.eval_index", "recall@k against exact search, per nprobe, with a plot"),
    "augment": ("mudg_fast.commands.augment", "choose label-text descriptors for a list of class names"),
    "retrieve": ("mudg_fast.commands.retrieve", "retrieve and pseudo-label images for class names"),
    "select": ("mudg_fast.commands.select", "filter and select a diverse training set per class"),
    "run": ("mudg_fast.commands.run", "end to end: augment, retrieve, select, write the manifest"),
    "demo": ("mudg_fast.commands.demo", "the whole pipeline offline on built-in data"),
    "train": ("mudg_fast.train.cli", "fine-tune CLIP on a selected training set"),
    "eval": ("mudg_fast.commands.evaluate", "zero-shot and descriptor score-averaging accuracy"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="mudg-fast", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mudg-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


# The prefix of the library's log messages on stderr, per command (default "[mudg-fast] ").
LOG_PREFIX: dict[str, str] = {"build-index": "build-index: "}


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


@contextlib.contextmanager
def show_log(prefix: str = "[mudg-fast] ", enabled: bool = True) -> Iterator[logging.Handler | None]:
    """Shows the INFO (and higher) messages of the ``mudg_fast`` loggers on stderr, each line
    prefixed with ``prefix``, for the duration of the block; then removes the handler and restores
    the logger's level. ``enabled=False`` shows nothing (and yields None)."""
    if not enabled:
        yield None
        return
    logger = logging.getLogger("mudg_fast")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    handler.setLevel(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        with show_log(LOG_PREFIX.get(args.command, "[mudg-fast] "),
                      enabled=getattr(args, "progress", True) is not False):
            return int(module.run(args) or 0)
    except CliError as e:
        print(f"mudg-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mudg-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
