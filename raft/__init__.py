"""Consensus for Meridian's replica groups (ARCH §3).

A pure Raft core (no trio, sockets, files, clocks or global random) and, separately, the trio
driver and transport that run it. The storage it persists to is ``engine.LogStore`` and
``engine.DurableState``.
"""
