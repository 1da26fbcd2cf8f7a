"""A targeted nemesis schedule of ``python -m bench jepsen``: ``--nemesis vote-split``.

Random kills almost never make a replica that forgot its vote vote twice in one term: a voter
receives the new leader's first entry a round trip after its vote (and a restarted replica takes
its term from its log's last entry), PreVote keeps cut-off nodes from raising terms, and a
restarted node refuses votes for an election timeout. This schedule builds the one window
deliberately, on one region of three nodes, and only with black-box faults. All the node pairs
share one TCP connection carrying both directions, so no network cut can let one message
through and hold back the next one on the same connection; the schedule therefore orders the
messages of an election with SIGSTOP: a stopped node's kernel still takes in what its peers
send, and the node handles it, in order, only when it is continued. So each step lets exactly
one node act on what is waiting for it:

1. wait for the data group's leader ``O`` (term ``t``); call ``G`` the follower with the
   longer log and ``V`` the other; cut ``G`` and ``V`` from each other;
2. kill ``O`` and restart it (its connections, with whatever they still held, are gone); its
   followers stop hearing a leader. Stop ``O`` as soon as it answers (its restart lease, an
   election timeout in which it grants nothing, stops with its ticks), wait for its
   connections to ``G`` and ``V``, stop ``G`` and ``V``, continue ``O``;
3. ``O``'s election timeout expires: its pre-vote requests for ``t + 1`` wait in ``G``'s and
   ``V``'s kernels; stop ``O``;
4. continue ``G`` alone: it grants the pre-vote; stop it again;
5. continue ``O``: it becomes a candidate in ``T = t + 1``; its vote requests wait; stop it;
6. continue ``V`` alone: it grants its vote in ``T`` (its status says: term ``T``, no leader,
   no new entry); stop it again;
7. kill ``G`` (it never saw its vote request) and continue ``O``: with ``V``'s vote, ``O``
   leads term ``T``; its first entry waits in ``V``'s kernel; stop ``O``;
8. kill ``V`` (the entry is gone with it) and restart ``G`` and ``V``; wait until one of them
   leads; kill ``O`` (stopped, still a leader of ``T`` that no one acknowledged) and restart it.

A correct replica stored its term and vote before answering, so ``V`` restarts in ``T``, still
bound to ``O``, and ``G`` and ``V`` elect a leader of ``T + 1``: one leader per term. A replica
that forgets them (the planted bug ``votes_without_persisting``) restarts in ``t`` and votes
again in ``T``: ``G`` and ``V`` elect a second leader of ``T``. The schedule records that as
``two-leaders-in-one-term`` (group, term, both leaders, each as its own status answer said),
which the campaign reports as an anomaly (Raft's Election Safety), whatever the clients saw.

The clients do not see it: the first leader of ``T`` never had an entry acknowledged, and when
two leaders of one term meet through a shared follower, the follower answers each leader's
appends with the other's commit index, and a leader told of a match beyond its own log stops
on an invariant check (the node process exits) before it acknowledges anything; the other
leader's history stands.

Every step waits on what the nodes' status says (role, term, leader of the group) or on their
connections (``ss`` in a node's namespace), bounded in time; a step that does not happen as
planned is recorded (``vote-split-aborted``, with why), the cluster is healed and the schedule
starts again, a bounded number of times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import trio

from bench.jepsen_cluster import PEER_PORT, LabCluster

__all__ = ["VoteSplit", "TARGETED", "TWO_LEADERS"]

TARGETED = ("vote-split",)
# The nemesis event (and the campaign's anomaly type) for two nodes that led one group in
# one term, each by its own status answer.
TWO_LEADERS = "two-leaders-in-one-term"

POLL_S = 0.02
SEND_GRACE_S = 0.1
"""How long a node keeps running after its status shows a step, so that the messages of that
step leave it before it is stopped (well below an election timeout)."""


class _Abort(Exception):
    """A step of the schedule did not happen as planned (the attempt is given up)."""


class VoteSplit:
    """The schedule above on ``cluster``; ``record(f, value)`` writes a nemesis event."""

    def __init__(self, cluster: LabCluster, record: Callable[[str, Any], None]) -> None:
        self.cluster = cluster
        self.record = record
        self.tick_s = cluster.spec.tick_interval_ms / 1000.0
        self.election_s = cluster.spec.election_ticks * self.tick_s
        self.detail: dict[str, Any] = {}
        self.armed = 0  # attempts that reached the window (``vote-split-armed`` recorded)

    # ------------------------------------------------------------------ observation

    async def group_status(self, node: int, group: int) -> dict[str, Any] | None:
        st = await self.cluster.status(node, timeout_s=0.5)
        if not st:
            return None
        g = st.get("groups", {}).get(str(group)) or st.get("groups", {}).get(group)
        return g

    async def data_group(self, node: int) -> int | None:
        st = await self.cluster.status(node, timeout_s=1.0)
        if not st:
            return None
        gids = sorted(int(g) for g in st.get("groups", {}) if int(g) >= 100)
        return gids[0] if gids else None

    def connected(self, a: int, b: int) -> bool:
        """Whether nodes ``a`` and ``b`` have an established Raft connection (``ss`` in
        ``a``'s namespace)."""
        lab = self.cluster.lab
        out = lab.run(f"n{a}", ["ss", "-Htn", "state", "established"], timeout=5,
                      capture_output=True, text=True).stdout
        mine, theirs = lab.addresses[f"n{a}"], lab.addresses[f"n{b}"]
        port = f":{PEER_PORT}"
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            local, peer = parts[-2], parts[-1]
            if peer.startswith(theirs + ":") and local.startswith(mine + ":") and (
                    local.endswith(port) or peer.endswith(port)):
                return True
        return False

    async def wait_for(self, what: str, check, timeout_s: float) -> Any:
        """Polls ``await check()`` until it returns something true; raises _Abort after
        ``timeout_s``."""
        deadline = trio.current_time() + timeout_s
        while True:
            value = await check()
            if value:
                return value
            if trio.current_time() >= deadline:
                raise _Abort(f"timed out waiting for {what}")
            await trio.sleep(POLL_S)

    # ------------------------------------------------------------------ the schedule

    async def run(self, deadline: float, attempts: int = 4) -> dict[str, Any]:
        """Runs the schedule, again after a step that did not happen as planned (up to
        ``attempts`` times, none starting after trio time ``deadline``); returns what was
        done, with ``armed``: how many attempts reached the window (only those tested
        anything). Leaves every node running and the network healed."""
        tried = []
        for _ in range(attempts):
            if trio.current_time() >= deadline:
                break
            self.detail = {}
            try:
                await self.attempt()
                self.detail["attempts"] = tried + ["ok"]
                self.detail["armed"] = self.armed
                return self.detail
            except _Abort as exc:
                tried.append(str(exc))
                self.record("vote-split-aborted", {"why": str(exc), **self.detail})
                self.cluster.heal_all()
                with contextlib.suppress(TimeoutError, RuntimeError):
                    await self.cluster.wait_ready(20)
        self.detail["attempts"] = tried
        self.detail["armed"] = self.armed
        return self.detail

    async def attempt(self) -> None:
        c = self.cluster
        nodes = list(c.node_ids)
        if len(nodes) != 3:
            raise RuntimeError("vote-split needs one region of three nodes (--nodes 3)")
        group = None
        for n in nodes:
            group = await self.data_group(n)
            if group is not None:
                break
        if group is None:
            raise _Abort("no data group found")
        d = self.detail
        d["group"] = group

        async def leader_now():
            found = []
            for n in nodes:
                g = await self.group_status(n, group)
                if g and g.get("role") == "leader":
                    found.append((int(g["term"]), n))
            return max(found) if found else None

        term, old = await self.wait_for("a leader", leader_now, 10.0)
        # G: the follower with the longer log (it wins the second election, and its entries
        # of T then start at the same index as O's when both logs were equal).
        lengths = {}
        for n in nodes:
            g = await self.group_status(n, group)
            lengths[n] = int(g["last_index"]) if g else -1
        g_node, v_node = sorted((n for n in nodes if n != old), key=lambda n: -lengths[n])
        d.update(O=old, G=g_node, V=v_node, t=term, last_index=dict(lengths))
        # 1. G and V never talk to each other until the end.
        c.cut({(g_node, v_node), (v_node, g_node)})
        # 2. restart O; stop G and V before its restart lease is over.
        c.kill_node(old)
        await trio.sleep(self.election_s * 1.2)  # G and V stop counting O as their leader
        c.start_node(old)

        async def o_up():
            return await self.group_status(old, group)

        st = await self.wait_for("O to answer after its restart", o_up, 8.0)
        up_at = trio.current_time()
        d["O_restarted"] = {k: st.get(k) for k in ("term", "role", "last_index")}

        def connected():
            return self.connected(old, g_node) and self.connected(old, v_node)

        async def connected_now():
            return connected()

        # O dials the peers with higher ids at once; peers with lower ids dial O after a
        # backoff. Stop O meanwhile (its restart lease stops with its ticks): a stopped
        # node's kernel still accepts their connections, and the frames that open them.
        with trio.move_on_after(0.25):
            await self.wait_for("O's connections", connected_now, 0.3)
        c.pause_node(old)
        running_s = trio.current_time() - up_at
        await self.wait_for("O's connections to G and V", connected_now, 4.0)
        await trio.sleep(0.3)  # each dialer's handshake frame follows its TCP handshake
        d["connected_after_s"] = round(trio.current_time() - up_at, 3)
        d["O_running_s"] = round(running_s, 3)
        if running_s > 0.5 * self.election_s:
            # O's restart lease may be over: G and V could grant it a whole election now.
            raise _Abort(f"O ran {running_s:.3f} s before its connections were up")
        c.pause_node(g_node)
        c.pause_node(v_node)
        c.resume_node(old)

        # 3. O pre-campaigns: its requests wait in G's and V's kernels.
        async def o_role(role):
            g = await self.group_status(old, group)
            return g if g and g.get("role") == role else None

        st = await self.wait_for("O to pre-campaign", lambda: o_role("pre-candidate"),
                                 4 * self.election_s)
        await trio.sleep(0.05)
        c.pause_node(old)
        # 4. G grants the pre-vote.
        c.resume_node(g_node)
        await trio.sleep(0.3)
        c.pause_node(g_node)
        # 5. O becomes a candidate in T; its vote requests wait.
        c.resume_node(old)
        st = await self.wait_for("O to campaign", lambda: o_role("candidate"),
                                 self.election_s)
        # Its status says candidate once the core has stepped; the vote requests leave a
        # scheduler pass or two later (through the transport's writer when they follow
        # another frame): give them time to reach the kernels before stopping O.
        await trio.sleep(SEND_GRACE_S)
        c.pause_node(old)
        big_t = int(st["term"])
        d["T"] = big_t

        # 6. V votes for O in T, and has no entry of T.
        c.resume_node(v_node)

        async def v_voted():
            g = await self.group_status(v_node, group)
            return g if g and int(g.get("term", 0)) == big_t else None

        st = await self.wait_for("V to vote in T", v_voted, 2.0)
        d["V_voted"] = {k: st.get(k) for k in ("term", "role", "leader", "last_index")}
        # V's status shows the term as soon as it stepped the request; the vote itself leaves
        # after its term and vote are on disk.
        await trio.sleep(SEND_GRACE_S)
        c.pause_node(v_node)
        # 7. G never sees its vote request; O wins with V's vote.
        c.kill_node(g_node)
        c.resume_node(old)
        st = await self.wait_for("O to lead T", lambda: o_role("leader"), 2.0)
        if int(st["term"]) != big_t:
            raise _Abort(f"O leads term {st['term']}, not {big_t}")
        # 8. V loses O's first entry of T; O stays the leader of T, stopped, while G and V
        # restart.
        c.pause_node(old)
        c.kill_node(v_node)
        c.heal_network()
        c.start_node(g_node)
        c.start_node(v_node)
        self.record("vote-split-armed", dict(d))
        self.armed += 1

        async def second():
            found = {}
            for n in (g_node, v_node):
                g = await self.group_status(n, group)
                if g and g.get("role") == "leader":
                    found[n] = int(g["term"])
            return found or None

        found = await self.wait_for("G or V to lead", second, 6 * self.election_s + 8.0)
        d["second"] = found
        if big_t in found.values():
            second = [n for n, t in found.items() if t == big_t]
            self.record(TWO_LEADERS, {
                "group": group, "term": big_t, "leaders": [old, *second],
                "explanation": f"nodes {old} and {second[0]} both led group {group} in term "
                               f"{big_t} (the second one elected with node {v_node}'s second "
                               f"vote in that term)"})
        # O, still stopped as a leader of T, restarts as a follower (its entry of T, a no-op,
        # was never acknowledged to anyone).
        c.kill_node(old)
        c.start_node(old)
