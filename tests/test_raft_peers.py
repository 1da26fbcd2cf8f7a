"""Smoke tests of ``bench/raft_peers.py``: each peer starts, serves the put load and is torn down.

Integration tests: they start real three-member clusters on 127.0.0.1 for about a second of load
each. They check the shape of the result and that nothing is left behind, never the speed.
A peer that is not installed is skipped.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import msgpack
import pytest

from bench import raft_peers

KEYS = {"system", "concurrency", "ops_per_s", "p50_ms", "p99_ms", "durable"}
DURATION = 1.0
WARMUP = 0.2

needs_pysyncobj = pytest.mark.skipif(not raft_peers.pysyncobj_available(),
                                     reason="pysyncobj not installed (pip install pysyncobj)")
needs_etcd = pytest.mark.skipif(not raft_peers.etcd_available(),
                                reason="etcd-server not installed "
                                       "(apt-get install etcd-server etcd-client)")


def _children() -> set[int]:
    """PIDs of the live (not zombie) processes whose parent is this one."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and fields[0] != "Z" and int(fields[1]) == me:
            found.add(int(entry))
    return found


def _check(result: dict, system: str, concurrency: int, durable: bool) -> None:
    assert KEYS <= set(result), result
    assert result["system"] == system
    assert result["concurrency"] == concurrency
    assert result["durable"] is durable
    for key in ("ops_per_s", "p50_ms", "p99_ms"):
        value = result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert result["p50_ms"] <= result["p99_ms"]
    assert result["ops"] >= 1


@pytest.fixture
def workdir(tmp_path: Path):
    before = _children()
    yield tmp_path
    assert _children() <= before, "a peer or load process outlived the run"
    assert not list(tmp_path.iterdir()), "the run left files behind"


@needs_pysyncobj
@pytest.mark.parametrize(("batch", "concurrency"), [(False, 1), (False, 4), (True, 4)])
def test_pysyncobj_smoke(workdir: Path, batch: bool, concurrency: int) -> None:
    result = raft_peers.run_pysyncobj(concurrency, batch=batch, duration=DURATION,
                                      warmup=WARMUP, workdir=str(workdir))
    _check(result, "pysyncobj-batch" if batch else "pysyncobj", concurrency, durable=False)


@needs_etcd
@pytest.mark.parametrize("concurrency", [1, 4])
def test_etcd_smoke(workdir: Path, concurrency: int) -> None:
    result = raft_peers.run_etcd(concurrency, duration=DURATION, warmup=WARMUP,
                                 workdir=str(workdir))
    assert result is not None
    _check(result, "etcd", concurrency, durable=True)


@pytest.mark.parametrize("peer", [
    pytest.param("pysyncobj", marks=needs_pysyncobj),
    pytest.param("etcd", marks=needs_etcd),
])
def test_a_failing_run_leaves_nothing_behind(workdir: Path, peer: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(procs, *_args, **_kwargs):
        assert len(procs.procs) == 3  # the members are running
        raise RuntimeError("load failed")

    monkeypatch.setattr(raft_peers, "run_load", fail)
    with pytest.raises(RuntimeError, match="load failed"):
        if peer == "etcd":
            raft_peers.run_etcd(1, duration=DURATION, warmup=WARMUP, workdir=str(workdir))
        else:
            raft_peers.run_pysyncobj(1, batch=False, duration=DURATION, warmup=WARMUP,
                                     workdir=str(workdir))


def test_missing_peers_are_reported_as_skipped(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_peers, "etcd_available", lambda: False)
    monkeypatch.setattr(raft_peers, "pysyncobj_available", lambda: False)
    assert raft_peers.run_etcd(1, duration=DURATION, warmup=WARMUP, workdir=str(tmp_path)) is None
    with pytest.raises(raft_peers.PeerUnavailable, match="^skipped: pysyncobj"):
        raft_peers.run_pysyncobj(1, batch=False, duration=DURATION, warmup=WARMUP,
                                 workdir=str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        raft_peers.run_pysyncobj(0, batch=False, duration=DURATION, warmup=WARMUP,
                                 workdir=str(tmp_path))
    with pytest.raises(ValueError):
        raft_peers.run_etcd(1, duration=0, warmup=WARMUP, workdir=str(tmp_path))


def test_free_ports_are_distinct_loopback_ports_outside_the_ephemeral_range() -> None:
    # A port in the ephemeral range may be taken by an outgoing connection (one member's to
    # another) between the moment it is found free and the moment its member binds it.
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    ports = raft_peers.free_ports(6)
    assert len(set(ports)) == 6
    assert all(1024 <= p < ephemeral_low for p in ports), ports


def _loadgen():
    spec = importlib.util.spec_from_file_location("_raft_peers_loadgen", raft_peers.LOAD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_requests_and_http_framing() -> None:
    lg = _loadgen()
    key = lg.make_key(1, 42)
    assert len(key) == 16
    assert len(lg.PySyncObjCodec(1).request(key, bytes(100))) == 117

    request = lg.EtcdCodec(2379).request(key, bytes(100))
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v3/kv/put HTTP/1.1\r\n")
    assert b"Content-Length: %d" % len(body) in head

    parse = lg.EtcdCodec.parse
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    assert parse(bytearray(answer[:-1])) is None
    assert parse(bytearray(answer)) == (len(answer), True)
    rk = lg.RaftKVCodec(1)
    frame = rk.request(key, bytes(100))
    assert int.from_bytes(frame[:4], "little") == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == [1, 1, "put", key, bytes(100)]
    for status, ok in (("ok", True), ("not-leader", False)):
        body = msgpack.packb([1, status, None, 0])
        answer = len(body).to_bytes(4, "little") + body
        assert rk.parse(bytearray(answer[:-1])) is None
        assert rk.parse(bytearray(answer)) == (len(answer), ok)

    chunked = (b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\n{}\r\n0\r\n\r\n")
    assert parse(bytearray(chunked[:-2])) is None
    assert parse(bytearray(chunked)) == (len(chunked), False)
