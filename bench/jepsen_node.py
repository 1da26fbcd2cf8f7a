"""``python -m bench.jepsen_node --config FILE``: ``meridian node --config FILE`` for fault tests.

The same node code and command as ``meridian node`` (:func:`engine.cli.main`), run inside
:func:`bench.txnsim.compact_storage`: Raft log segments and MVCC maps are preallocated at 4 MiB
instead of 64 MiB (both still grow as needed). A three-region cluster hosts seven groups on
every node; at the product's sizes each node would write about half a gigabyte of zeros before
serving, and on LossyFS (which keeps files in memory) hold it in memory. Nothing else differs.

The node dies with the process that started it (the harness: ``ip netns exec`` execs the
node, so the harness is its parent): it runs in a session of its own, and is often stopped
(SIGSTOP), so a harness killed outright would otherwise leave it running for ever inside its
namespace.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Asks for SIGKILL (which also ends a stopped process) when the parent dies; returns
    False if the parent is already gone."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() != 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "--config":
        print("usage: python -m bench.jepsen_node --config FILE", file=sys.stderr)
        return 2
    if not die_with_parent():
        print("the process that started this node is gone", file=sys.stderr)
        return 1
    from bench.txnsim import compact_storage
    from engine import cli

    with compact_storage():
        return cli.main(["node", "--config", argv[1]])


if __name__ == "__main__":
    sys.exit(main())
