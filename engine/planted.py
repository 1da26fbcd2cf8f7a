"""Planted bugs: switches that break one guarantee on purpose, so that the fault-testing
checkers can be shown to notice (a checker that cannot fail proves nothing).

Off unless the environment names them, and refused unless it also says this is a test::

    MERIDIAN_PLANTED_BUGS=skip_adjudication MERIDIAN_ALLOW_PLANTED_BUGS=1 meridian node ...

The variables are read once, when this module is first imported (node processes inherit them
from whoever starts them); :func:`plant` changes them in-process, for tests. The bugs:

``skip_adjudication``
    Groups accept every commit and prepare without validating it: lost updates (the bank and
    list-append checkers see them).
``read_above_closed``
    A strong read's snapshot is the leader's clock, not a closed timestamp: commits below it
    can still appear afterwards, so a transaction's snapshot is not stable (read skew).
``ack_before_decision``
    Two-phase commit resolves the other participants and answers the client before the
    decision is durable on the primary group: a coordinator that dies then leaves the
    transaction half committed (an atomicity violation).
``ack_before_fsync``
    Raft replicas acknowledge entries before writing them and never fsync the log: a crash
    that loses unsynced writes loses acknowledged commits.
``votes_without_persisting``
    Raft replicas never store their term and vote: a restarted replica can vote twice in one
    term, two leaders can be elected in it, and one overwrites the other's commits.
"""

from __future__ import annotations

import os

from .errors import InvalidArgumentError

__all__ = ["BUGS", "check_environment", "enabled", "plant"]

BUGS = ("skip_adjudication", "read_above_closed", "ack_before_decision", "ack_before_fsync",
        "votes_without_persisting")
_ENV = "MERIDIAN_PLANTED_BUGS"
_ALLOW = "MERIDIAN_ALLOW_PLANTED_BUGS"

_active: frozenset[str] = frozenset()


def plant(names: str | set[str] | frozenset[str] | None, *, allow: bool = False) -> None:
    """Turns on exactly the bugs ``names`` (a comma-separated string or a set; None or empty:
    none). Refused unless ``allow`` says this is a test."""
    global _active
    if isinstance(names, str):
        names = {n.strip() for n in names.split(",") if n.strip()}
    wanted = frozenset(names or ())
    unknown = sorted(wanted - set(BUGS))
    if unknown:
        raise InvalidArgumentError(f"unknown planted bug(s) {', '.join(unknown)}; the bugs "
                                   f"are {', '.join(BUGS)}")
    if wanted and not allow:
        raise InvalidArgumentError(
            f"planted bugs ({', '.join(sorted(wanted))}) break the database's guarantees on "
            f"purpose and are for testing the checkers only: set {_ALLOW}=1 as well")
    _active = wanted


def enabled(name: str) -> bool:
    """Whether the planted bug ``name`` is on (almost always: no)."""
    return name in _active


def check_environment() -> None:
    """Raises InvalidArgumentError if the environment asked for planted bugs in a way that
    was refused (a node calls this before it starts, so the refusal is a clear message)."""
    if _refusal:
        raise InvalidArgumentError(_refusal)


_refusal = ""
try:
    plant(os.environ.get(_ENV), allow=os.environ.get(_ALLOW) == "1")
except InvalidArgumentError as exc:
    _refusal = f"{_ENV}: {exc}"
