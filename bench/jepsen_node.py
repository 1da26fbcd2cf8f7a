"""``python -m bench.jepsen_node --config FILE``: ``meridian node --config FILE`` for fault tests.

The same node code and command as ``meridian node`` (:func:`engine.cli.main`), run inside
:func:`bench.txnsim.compact_storage`: Raft log segments and MVCC maps are preallocated at 4 MiB
instead of 64 MiB (both still grow as needed). A three-region cluster hosts seven groups on
every node; at the product's sizes each node would write about half a gigabyte of zeros before
serving, and on LossyFS (which keeps files in memory) hold it in memory. Nothing else differs.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "--config":
        print("usage: python -m bench.jepsen_node --config FILE", file=sys.stderr)
        return 2
    from bench.txnsim import compact_storage
    from engine import cli

    with compact_storage():
        return cli.main(["node", "--config", argv[1]])


if __name__ == "__main__":
    sys.exit(main())
