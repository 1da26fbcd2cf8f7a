"""Workloads of ``python -m bench jepsen`` beyond those of :mod:`bench.txnsim`.

``bank``, ``append`` (list-append) and ``regional`` (convergence) are :mod:`bench.txnsim`'s
workload classes, reused as they are. This module adds two, in the same shape (``generate``,
``execute``, ``final_op`` or ``final_ops``, ``check`` and the history fields), so that the
same runner drives them and their events have the same form (FAULTS.md §4):

``register``
    Per-key registers in ``global`` keyspaces (key ``k`` in the keyspace homed in region
    ``k % len(regions)``): ``read`` (a one-key read-only transaction), ``write v`` (unique
    ``v``) and ``cas [expected, new]`` (read then write in one transaction; a value other than
    ``expected`` rolls it back and is recorded as ``fail``). Each event carries ``key``.
    Checked for linearizability key by key with the WGL checker (:mod:`bench.wgl`). Keys are
    retired after ``ops_per_key`` operations and replaced by fresh ones, so that every key's
    history stays short; run it with at most 5 clients so that no key has more (FAULTS.md §2).
    The final read is a ``read`` of every key used, one transaction each.
``set``
    ``add v`` inserts the unique element ``v`` (a key of its own, in the keyspace of region
    ``v % len(regions)``); ``read`` scans every set keyspace in one transaction. Checked by
    :func:`check_set`: no element known to be present missing from the final read (lost), no
    element read that was never added (unexpected), no element twice in one read (duplicate:
    each element is a key of its own, which a scan returns once), and no read missing an
    element known to be present before the read began (stale: ARCH §5 promises no stale
    reads). An element is known to be present from the acknowledgement of its add, or from the
    end of the first read that returned it, whichever is earlier: an add whose outcome is
    unknown took effect if a read saw it, and nothing removes elements.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bench import wgl
from bench.txnsim import GarbageRead, RunConfig, _Refused, _Workload, parse_int

__all__ = ["Register", "SetWorkload", "check_register", "check_set"]


class Register(_Workload):
    functions = ("read", "write", "cas")

    def __init__(self, config: RunConfig, *, key_count: int = 6, ops_per_key: int = 40) -> None:
        self.config = config
        self.keyspaces = [f"reg-{r}" for r in config.regions]
        self.active = list(range(key_count))
        self.next_key = key_count
        self.ops_per_key = ops_per_key
        self._ops: dict[int, int] = {}
        self._next_value = 0
        self._written: dict[int, list[int]] = {}  # values written to a key (for cas guesses)
        self.used: list[int] = []

    def home(self, keyspace: str) -> str:
        return keyspace.removeprefix("reg-")

    def _locate(self, k: int) -> tuple[str, bytes]:
        return self.keyspaces[k % len(self.keyspaces)], b"r%d" % k

    async def setup(self, tx) -> None:
        return None  # registers start absent (None)

    def generate(self, rng: random.Random) -> tuple[str, Any, bool]:
        k = rng.choice(self.active)
        if k not in self.used:
            self.used.append(k)
        self._ops[k] = self._ops.get(k, 0) + 1
        if self._ops[k] >= self.ops_per_key:
            self.active[self.active.index(k)] = self.next_key
            self.next_key += 1
        r = rng.random()
        if r < 0.4:
            return "read", {"key": k, "value": None}, False
        self._next_value += 1
        v = self._next_value
        if r < 0.7 or not self._written.get(k):
            self._written.setdefault(k, []).append(v)
            return "write", {"key": k, "value": v}, True
        expected = rng.choice(self._written[k][-3:])
        self._written[k].append(v)
        return "cas", {"key": k, "value": [expected, v]}, True

    async def execute(self, tx, f: str, value: Any, rng: random.Random) -> Any:
        ks, key = self._locate(value["key"])
        if f == "read":
            raw = await tx.get(ks, key)
            return None if raw is None else parse_int(raw, f"register {value['key']}")
        if f == "write":
            await tx.put(ks, key, b"%d" % value["value"])
            return value["value"]
        expected, new = value["value"]
        raw = await tx.get(ks, key)
        current = None if raw is None else parse_int(raw, f"register {value['key']}")
        if current != expected:
            raise _Refused(f"cas: register {value['key']} holds {current}, not {expected}")
        await tx.put(ks, key, b"%d" % new)
        return [expected, new]

    def invoke_fields(self, f: str, value: Any) -> dict[str, Any]:
        return {"value": value["value"], "key": value["key"]}

    def ok_fields(self, f: str, value: Any, result: Any, tx) -> dict[str, Any]:
        return {"value": result, "key": value["key"]}

    def failed_fields(self, f: str, value: Any) -> dict[str, Any]:
        return {"value": None if f == "read" else value["value"], "key": value["key"]}

    def final_ops(self) -> list[tuple[str, Any, bool]]:
        # Every key used: an acknowledged write lost on a retired key, which no operation
        # touches again, shows in the final read only.
        return [("read", {"key": k, "value": None}, False) for k in self.used or self.active[:1]]

    def check(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return check_register(events)


def check_register(events: Sequence[Mapping[str, Any]], *, timeout_s: float = 60.0
                   ) -> dict[str, Any]:
    """WGL linearizability per key, in the result shape of the other checkers (``valid`` is
    None when some key's search ran out of budget)."""
    per_key = wgl.check_per_key(events, None, timeout=timeout_s)
    total = wgl.aggregate(per_key)
    anomalies: dict[str, list[dict[str, Any]]] = {}
    for key, result in per_key.items():
        if result.valid is False:
            anomalies.setdefault("nonlinearizable", []).append({
                "key": key, "explanation": result.explain(max_prefix=12),
                "unlinearizable": [op.to_dict() for op in result.unlinearizable],
                "linearized_tail": [op.to_dict() for op in result.linearized[-12:]]})
    counts = {kind: len(v) for kind, v in anomalies.items()}
    return {"valid": total.valid, "anomaly_types": sorted(anomalies), "anomalies": anomalies,
            "stats": {"keys": total.keys, "ops": total.ops, "states": total.states,
                      "invalid_keys": [str(k) for k in total.invalid_keys],
                      "unknown_keys": [str(k) for k in total.unknown_keys],
                      "seconds": round(total.seconds, 3), "anomaly_counts": counts}}


class SetWorkload(_Workload):
    functions = ("add", "read")

    def __init__(self, config: RunConfig, *, read_fraction: float = 0.1) -> None:
        self.config = config
        self.keyspaces = [f"set-{r}" for r in config.regions]
        self.read_fraction = read_fraction
        self._next = 0

    def home(self, keyspace: str) -> str:
        return keyspace.removeprefix("set-")

    async def setup(self, tx) -> None:
        return None

    def generate(self, rng: random.Random) -> tuple[str, Any, bool]:
        if rng.random() < self.read_fraction:
            return "read", None, False
        self._next += 1
        return "add", self._next, True

    async def execute(self, tx, f: str, value: Any, rng: random.Random) -> Any:
        if f == "add":
            ks = self.keyspaces[value % len(self.keyspaces)]
            await tx.put(ks, b"e%d" % value, b"1")
            return value
        found: list[int] = []
        for ks in self.keyspaces:
            for key, _ in await tx.scan(ks):
                if key[:1] != b"e":
                    raise GarbageRead(f"set {ks} holds a key {bytes(key[:40])!r}")
                found.append(parse_int(key[1:], f"set {ks}'s key"))
        return sorted(found)

    def final_op(self) -> tuple[str, Any, bool]:
        return "read", None, False

    def check(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        # The final reads are those invoked after the final heal (the nemesis's ``heal-all``
        # event); a read of the main phase is not one, whenever it happened to end.
        heals = [e["time_ns"] for e in events
                 if e.get("process") == "nemesis" and e.get("f") == "heal-all"]
        return check_set(events, final_from_ns=heals[-1] if heals else None)


def check_set(events: Sequence[Mapping[str, Any]], *, final_from_ns: int | None,
              max_reported: int = 20) -> dict[str, Any]:
    """Checks a ``set`` history (see the module docstring). The final read is the last ``ok``
    read invoked at or after ``final_from_ns`` (when the final phase began; None: the history
    has no final phase). Without a final read, lost elements cannot be judged: the verdict is
    unknown unless another anomaly was found. Info adds may be present or not until a read
    returns them, and then must stay; failed adds must not be present."""
    opened: dict[Any, Mapping[str, Any]] = {}
    adds: dict[int, dict[str, Any]] = {}  # element -> {type, invoke_ns, done_ns}
    reads: list[tuple[int, int, list[int], Any]] = []  # (invoke, done, elements, process)
    for e in events:
        if e.get("f") not in ("add", "read") or e.get("process") == "nemesis":
            continue
        if e["type"] == "invoke":
            opened[e["process"]] = e
            if e["f"] == "add":
                adds[e["value"]] = {"type": "info", "invoke_ns": e["time_ns"], "done_ns": None}
            continue
        inv = opened.pop(e["process"], None)
        if inv is None:
            continue
        if e["f"] == "add":
            adds[inv["value"]].update(type=e["type"], done_ns=e["time_ns"])
        elif e["type"] == "ok":
            reads.append((inv["time_ns"], e["time_ns"], list(e["value"]), e["process"]))
    found: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {}

    def report(kind: str, entry: dict[str, Any]) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        if len(found.setdefault(kind, [])) < max_reported:
            found[kind].append(entry)

    ok_adds = {v for v, a in adds.items() if a["type"] == "ok"}
    finals = ([r for r in reads if r[0] >= final_from_ns] if final_from_ns is not None
              else [])
    final = max(finals, key=lambda r: r[1]) if finals else None
    # element -> (when it was known to be present, how): its add's acknowledgement or the end
    # of the first read that returned it, whichever came first. A read that returned it proves
    # the add took effect (even one whose client never heard back), and a read that began
    # after that and misses it is stale, or lost it.
    known: dict[int, tuple[int, str]] = {
        v: (adds[v]["done_ns"], f"add {v} was acknowledged at {adds[v]['done_ns']} ns")
        for v in ok_adds}
    maybe_added = {v for v, a in adds.items() if a["type"] != "fail"}
    for _, done, elements, process in reads:
        for v in maybe_added.intersection(elements):
            if v not in known or done < known[v][0]:
                known[v] = (done, (f"{v} was read by process {process} in a read that "
                                   f"ended at {done} ns"))
    for read in reads:
        invoked, done, elements, process = read
        present = set(elements)
        if len(present) != len(elements):
            twice = sorted(v for v, n in Counter(elements).items() if n > 1)
            report("duplicate", {"elements": twice, "read_process": process,
                                 "explanation": f"read by process {process} (ended at {done} "
                                                f"ns) holds {twice} more than once"})
        for v in sorted(present - set(adds)):
            report("unexpected", {"element": v, "read_process": process,
                                  "explanation": f"read by process {process} (ended at "
                                                 f"{done} ns) but never added"})
        for v in sorted(present & {v for v, a in adds.items() if a["type"] == "fail"}):
            report("failed-add-read", {"element": v, "read_process": process,
                                       "explanation": f"add {v} failed, yet process {process} "
                                                      f"read it"})
        for v in sorted(known.keys() - present) if read is not final else ():
            if known[v][0] < invoked:
                report("stale-read", {
                    "element": v, "read_process": process, "add": adds[v],
                    "read_invoke_ns": invoked,
                    "explanation": f"{known[v][1]}, before the read of process {process} "
                                   f"began at {invoked} ns, which did not see it"})
    lost: list[int] = []
    if final is not None:
        # Every acknowledged add must be in the final read; an element only a read showed,
        # when that read ended before the final read began.
        lost = sorted(v for v in known.keys() - set(final[2])
                      if v in ok_adds or known[v][0] < final[0])
        for v in lost:
            report("lost", {"element": v, "add": adds[v],
                            "explanation": f"{known[v][1]} but the final read (ended at "
                                           f"{final[1]} ns) does not hold it"})
    stats = {"adds_ok": len(ok_adds),
             "adds_fail": sum(a["type"] == "fail" for a in adds.values()),
             "adds_info": sum(a["type"] == "info" for a in adds.values()),
             "info_adds_present": (sum(1 for v, a in adds.items() if a["type"] == "info"
                                       and v in set(final[2])) if final else 0),
             "reads_ok": len(reads), "final_read_size": len(final[2]) if final else None,
             "lost": len(lost), "anomaly_counts": counts}
    valid: bool | None = not found
    if final is None and not found:
        valid = None  # nothing to judge lost elements by
    return {"valid": valid, "anomaly_types": sorted(found), "anomalies": found,
            "stats": stats}
