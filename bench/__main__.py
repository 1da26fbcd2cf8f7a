"""``python -m bench COMMAND``: Meridian's benchmark harness.

Each benchmark is a subcommand in its own module that provides ``add_parser(subparsers)``; the
parser it adds sets ``func`` to the function that runs it. To add one (``ycsb``, ``scale``,
``jepsen``, ...), write the module and list it in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order --help lists them.
COMMANDS = ("storage", "raft", "adjudicator", "compaction", "cluster", "txn", "ycsb", "scale",
            "compare", "jepsen", "report", "elle", "bank", "wgl", "convergence")


def build_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    """The harness's parser; ``prog`` is the command its usage and error lines name."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Meridian's benchmarks. Every benchmark compares systems side by side in one "
                    "run and reports medians over repetitions and ratios (MEASURED.md).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"bench.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None, *, prog: str = "python -m bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
