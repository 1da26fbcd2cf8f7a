"""The ``meridian`` command line.

Subcommands:
    meridian --version
    meridian demo [--dir DIR] [--records N] [--kills K] [--seed S]
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meridian",
        description="Meridian: a globally distributed transactional key-value database.",
    )
    parser.add_argument("--version", action="version", version=f"meridian {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the storage demo: write, crash a writer with SIGKILL, recover, verify",
        description=(
            "Writes records and versions through Meridian's storage core in a child process, "
            "kills it with SIGKILL at random moments, reopens the stores and checks that every "
            "acknowledged write survived byte for byte."
        ),
    )
    demo.add_argument("--dir", help="data directory (default: a temporary one, removed after)")
    demo.add_argument("--kills", type=_positive, default=3, help="writer crashes (default 3)")
    demo.add_argument(
        "--batches", type=_positive, default=200,
        help="synced batches the writer acknowledges before each crash at most (default 200)",
    )
    demo.add_argument("--seed", type=int, default=1, help="seed of the crash moments")

    writer = sub.add_parser("demo-writer", help=argparse.SUPPRESS)
    writer.add_argument("dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(directory=args.dir, kills=args.kills, batches=args.batches, seed=args.seed)
    if args.command == "demo-writer":
        from .demo import run_writer

        return run_writer(args.dir)
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
