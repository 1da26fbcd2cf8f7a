"""``python -m bench report`` (or ``python bench/report.py``): regenerates the tables of
BENCHMARKS.md from bench/results/*.json.

Only the part between the two ``GENERATED`` markers is rewritten; text outside them (analysis,
profiles) is kept. A missing BENCHMARKS.md is created with the markers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if not __package__:  # run as a script: python bench/report.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __import__("bench")
    __package__ = "bench"

from . import _common

__all__ = [
    "add_parser",
    "main",
    "render_markdown",
    "render_raft",
    "render_storage",
    "render_txn",
    "render_ycsb",
    "render_scale",
    "update_file",
]

BEGIN = "<!-- BEGIN GENERATED: python -m bench report (do not edit by hand) -->"
END = "<!-- END GENERATED -->"

SKELETON = f"""# Benchmarks

Figures measured with `python -m bench`. Each benchmark runs the compared systems side by side
in one run, interleaved, and reports medians over repetitions and ratios between them; figures
from different runs or machines are not comparable (MEASURED.md). Regenerate the tables below
with `python -m bench report` after running a benchmark with `--json bench/results/NAME.json`.

{BEGIN}
{END}
"""

STORAGE_METHOD = """\
Workload: 100-byte records; 16-byte keys for the key-value stores. Per batch size
(1, 16, 256) each system makes one batch durable at a time, and the timer covers write + sync:

- **meridian**: `LogStore.append(batch)` then `LogStore.sync()` (64 MiB segments, zero-filled
  when created, so appends overwrite written blocks and a sync needs no metadata).
- **lmdb**: `sync=True`, one write transaction per batch, `Cursor.putmulti` of random 16-byte
  keys (as a key-value store's keys usually are, and as in MEASURED.md). The targets use this row.
- **lmdb-seq**: the same with increasing keys (`key:%012d`), LMDB's best case: its B-tree only
  appends. Shown so that the ratio against LMDB is not read as more than it is.
- **sqlite**: WAL, `synchronous=FULL`, one transaction per batch,
  `executemany("INSERT INTO t(v) VALUES (?)")` into an `INTEGER PRIMARY KEY` table (rowid order).
- **raw-fdatasync**: the batch's records framed with a 9-byte header like the log store's
  (n × 109 bytes) in one `os.write` to a plain `O_APPEND` file, then one `os.fdatasync`. That file
  grows with each write; the log store overwrites preallocated space, which syncs faster, so
  meridian can beat this "limit".

Also: LogStore appends without sync, 1000 prebuilt records per call; `MVCCStore.apply` of 1000
versions per call (random keys of a preloaded key space, 100,000 keys by default; `sync=False`,
as designed); `MVCCStore.get` of random existing keys at the newest timestamp, one call at a
time.

Method: every repetition runs every measurement once (systems round-robin within a batch size,
the first system rotating between repetitions); each measurement is bounded in time and count.
Throughputs are medians over repetitions; p50/p99 pool all batches of all repetitions; ratios
divide medians of the same run. syncs/s = batches/s (one sync per batch)."""


def _rate(v: float | None) -> str:
    return _common.format_rate(v)


def _us(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def _md_table(headers: list[str], rows: list[list[str]], align: str) -> str:
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_line(m: dict) -> str:
    fs = m.get("filesystem", {})
    parts = [
        f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB",
        f"Linux {m.get('kernel', '?')}",
        m.get("python", "?"),
        f"{fs.get('type', '?')} on {fs.get('device', '?')}",
        f"measured {m.get('date', '?')}",
    ]
    if m.get("git_commit"):
        parts.append(f"commit `{m['git_commit']}`")
    load = [m.get("load_average_start"), m.get("load_average_end")]
    if all(load):
        parts.append(f"1-minute load average {load[0][0]} at start, {load[1][0]} at end")
    return "; ".join(parts) + "."


def render_storage(doc: dict, source: str) -> str:
    """One storage result document as Markdown."""
    cfg = doc["config"]
    mode = "quick run" if cfg.get("quick") else "full run"
    out = [
        f"### Storage, {mode} (`{source}`)",
        "",
        f"Reproduce: `{doc['command']}`  ",
        (f"{cfg['repetitions']} repetitions × {cfg['duration_s']:g} s per measurement, "
         f"{doc.get('elapsed_s', '?')} s in all.  "),
        f"Machine: {_machine_line(doc['machine'])}",
        "",
    ]
    rows = [
        [r["system"], str(r["batch"]), _rate(r["records_per_s"]), _rate(r["syncs_per_s"]),
         _us(r["p50_us"]), _us(r["p99_us"])]
        for r in doc["results"]
    ]
    out.append(_md_table(["system", "batch", "records/s", "syncs/s", "p50 µs", "p99 µs"],
                         rows, "lrrrrr"))
    out.append("")
    mv = doc["mvcc"]
    nos = doc.get("append_nosync", {})
    out.append(_md_table(["measurement", "median", "p50 µs / call", "p99 µs / call"], [
        ["LogStore.append without sync, 1000 records per call (records/s)",
         _rate(doc["append_nosync_records_per_s"]), _us(nos.get("p50_us")),
         _us(nos.get("p99_us"))],
        ["MVCCStore.apply, 1000 versions per call (versions/s)",
         _rate(mv["apply_versions_per_s"]), _us(mv.get("apply_p50_us")),
         _us(mv.get("apply_p99_us"))],
        ["MVCCStore.get, one call at a time (gets/s)", _rate(mv["get_per_s"]), "", ""],
    ], "lrrr"))
    out.append("")
    trows = []
    for name, t in doc["targets"].items():
        v = t["value"]
        is_ratio = name.startswith("batch")
        shown = "n/a" if v is None else (f"{v:.2f}×" if is_ratio else _rate(v))
        need = f"≥ {t['threshold']:g}×" if is_ratio else f"≥ {_rate(t['threshold'])}"
        trows.append([t["description"], shown, need, "met" if t["met"] else "**missed**"])
    out.append(_md_table(["target", "value", "threshold", "result"], trows, "lrrl"))
    met = sum(bool(t["met"]) for t in doc["targets"].values())
    out.append("")
    out.append(f"{met} of {len(doc['targets'])} targets met.")
    return "\n".join(out)


RAFT_METHOD = """\
Workload: three member processes on 127.0.0.1, a replicated key-value map, 16-byte keys
(a new key per put) and 100-byte values; closed-loop clients (one put outstanding each) send to
the leader; latency is measured by the client from send to acknowledgement. The same load
generator (`bench/peers/loadgen.py`, one epoll loop per process, two processes from 16 clients)
drives every system through its own protocol.

- **meridian**: three `bench.raftkv` nodes; a put is acknowledged once applied on the leader,
  that is after it is fsynced on a majority (`durable`). The puts the leader reads in one
  wakeup, from every connection, share one Raft entry (proposal batching); etcd and PySyncObj
  make one log entry per request. Followers learn the commit index from the next append or
  heartbeat (`broadcast_commit=False`, as on Meridian's nodes: reads go to the leader). Each
  new entry goes at once to the one follower a commit needs (the one whose acknowledgements
  made the latest commit); the other follower receives its batch at each heartbeat, every 50 ms
  (`lazy_followers=True`, as on Meridian's nodes from commit 832b608 on; `--eager-followers` on
  `bench.raftkv serve` sends to both at once). Runs of earlier commits sent every entry to both.
- **pysyncobj** / **pysyncobj-batch**: PySyncObj with its journal file, batching off / on. It
  never fsyncs the journal and does not persist term or vote: not durable, an upper bound.
- **etcd**: three members of Debian's etcd-server (3.4), v3 HTTP/JSON gateway (`durable`).

Each (system, concurrency) runs `repeat` times round-robin on fresh clusters; ops/s is the
median over repetitions, p50/p99 come from the repetition with the median ops/s."""


def render_raft(doc: dict, source: str) -> str:
    """One Raft result document as Markdown."""
    cfg = doc["config"]
    mode = "quick run" if cfg.get("quick") else "full run"
    out = [
        f"### Raft, {mode} (`{source}`)",
        "",
        f"Reproduce: `{doc['command']}`  ",
        (f"{cfg['repeat']} repetition(s) × {cfg['duration_s']:g} s after "
         f"{cfg['warmup_s']:g} s warm-up, {doc.get('elapsed_s', '?')} s in all. "
         f"PySyncObj {doc.get('versions', {}).get('pysyncobj') or 'not installed'}, "
         f"etcd {doc.get('versions', {}).get('etcd') or 'not installed'}.  "),
        f"Machine: {_machine_line(doc['machine'])}",
        "",
    ]
    rows = [
        [r["system"], str(r["concurrency"]), _rate(r["ops_per_s"]), f"{r['p50_ms']:.2f}",
         f"{r['p99_ms']:.2f}", "yes" if r["durable"] else "no"]
        for r in doc["results"]
    ]
    out.append(_md_table(["system", "clients", "puts/s", "p50 ms", "p99 ms", "durable"],
                         rows, "lrrrrl"))
    if doc.get("skipped"):
        out.append("")
        out.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in doc["skipped"].items()))
    out.append("")
    trows = []
    for t in doc.get("targets", []):
        result = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
        trows.append([t["target"], str(t["value"]), str(t["limit"]), result])
    if trows:
        out.append(_md_table(["target", "value", "limit", "result"], trows, "lrrl"))
    return "\n".join(out)


TXN_METHOD = """\
Workload: the local cluster of `bench cluster` (regions × three `meridian node` processes on
this machine, simulated one-way WAN latency between the regions added by the client to each
request and reply). Each region has a keyspace homed there with 1,000 keys of 100 bytes;
closed-loop clients in every region, all regions at once, run read-modify-write transactions:
*home* (one key of the client's region), *remote* (one key of the farthest region),
*two-region* (one key at home, one in the farthest region: two-phase commit), *three-region*
(one key in each region), *regional* (blind writes to a `mode="regional"` keyspace, when the
cluster supports it) and *contention-θ* (two keys of the home keyspace drawn from a zipfian
distribution of parameter θ over 100 keys). Latency is per committed transaction, reads and
retries included; *commit p50* is the `commit` call alone, and *WAN RTTs* divides it by the
round trip to the farthest region the transaction touches (0 when it stays at home);
*aborted attempts* is the share of attempts that conflicted (retried by `run_transaction`).
Replication lag: a key written in one region, read in another (where a regional keyspace is
read locally, polled every 5 ms) until it appears, timed from the commit's return; one region
pair at a time, after the workloads. *Nodes' lag* is the nodes' own measure (origin commit to
destination apply) over every regional write, the workloads' included."""


def render_txn(doc: dict, source: str) -> str:
    """One cross-region transaction result document as Markdown."""
    cfg = doc["config"]
    mode = "quick run" if cfg.get("quick") else "full run"
    wan = ", ".join(f"{k} {v:g} ms" for k, v in doc.get("wan_one_way_ms", {}).items())
    out = [
        f"### Transactions across regions, {mode} (`{source}`)",
        "",
        f"Reproduce: `{doc['command']}`  ",
        (f"{cfg['duration_s']:g} s measured after {cfg['warmup_s']:g} s of warm-up per row, "
         f"{doc.get('elapsed_s', '?')} s in all; {cfg.get('isolation', 'snapshot')} isolation; "
         f"one-way WAN latency {wan}.  "),
        f"Machine: {_machine_line(doc['machine'])}",
        "",
    ]

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    rows = [
        [r["workload"], r["region"], str(r["concurrency"]), _rate(r["txn_per_s"]),
         ms(r["p50_ms"]), ms(r["p99_ms"]), ms(r["commit_p50_ms"]),
         "n/a" if r["wan_rtts_per_commit"] is None else f"{r['wan_rtts_per_commit']:.2f}",
         f"{r['abort_rate']:.1%}"]
        for r in doc["results"]
    ]
    out.append(_md_table(["workload", "region", "clients per region", "txn/s", "p50 ms",
                          "p99 ms", "commit p50 ms", "WAN RTTs", "aborted attempts"],
                         rows, "llrrrrrrr"))
    lag = doc.get("replication_lag_ms", {})
    out.append("")
    out.append(f"Replication lag: p50 {ms(lag.get('p50'))} ms, p99 {ms(lag.get('p99'))} ms.")
    nodes_lag = lag.get("server_by_pair") or {}
    if nodes_lag:
        out.append("Nodes' lag (p50 / p99 ms): " + "; ".join(
            f"{pair} {ms(v.get('p50'))} / {ms(v.get('p99'))}"
            for pair, v in sorted(nodes_lag.items())) + ".")
    if doc.get("skipped"):
        out.append("")
        out.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in doc["skipped"].items()))
    out.append("")
    trows = []
    for t in doc.get("targets", []):
        result = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
        trows.append([t["target"], "n/a" if t["value"] is None else str(t["value"]),
                      str(t["limit"]), result])
    if trows:
        out.append(_md_table(["target", "value", "limit", "result"], trows, "lrrl"))
    return "\n".join(out)


YCSB_METHOD = """\
Workload: YCSB core workloads over 16-byte keys and 100-byte values (unless stated), keys drawn
from a scrambled zipfian (θ 0.99) unless stated. A *read* is a strong read, an *update* a
single-key write transaction, a *read-modify-write* a transaction that reads and writes one key
(etcd: a range, then a `txn` comparing the key's `mod_revision`, retried on conflict with the
same backoff as Meridian's `run_transaction`).

- **meridian**: a local multi-process cluster of one region × three `meridian node` processes,
  the keyspace homed in that region (every commit fsynced on a majority), client library
  `engine.connect`.
- **etcd**: three members of Debian's etcd-server, v3 HTTP/JSON gateway, keep-alive
  connections to the leader; reads are linearizable (etcd's default).

Both are driven by the same load generator (`bench/openloop.py`: trio, one task per client,
split over load processes: 1 below 16 clients, else 2), with the same operation streams and
client counts, one system at a time on a fresh cluster loaded with the same records.
*closed*: each client runs the next operation when the previous one returns (throughput).
*open*: operations arrive at a fixed rate, the same absolute rates for both systems (fractions
of the best closed-loop throughput), and latency is measured from each operation's intended
start time, so queueing behind a slow server counts (no coordinated omission); the load
processes' arrivals interleave, and operations the generator could not send on time are sent at
once. An operation still running (or never sent) when the run is cut counts as *late*, with
its latency at the cut. Percentiles are nearest-rank, from HdrHistogram; warm-up is excluded.
*aborts* is aborted attempts / attempts, the attempts of operations that gave up included; *server
CPU* is the servers' user+system CPU seconds (from /proc) per 1,000 operations completed in the
window, *client CPU* the same for the load processes; *RSS* is the servers' resident memory at
the end of the run. The self-test runs the same closed loop against a server that answers at
once (the workers of a load process share one connection to it, as Meridian's client shares
one per node). Every figure comes from one run on a 2-core machine that also runs the load
generator: the servers and the clients share its cores."""


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}" if v >= 100 else f"{v:.2f}"


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:,.0f}"


def _cpu(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _plot_links(doc: dict, source: str) -> list[str]:
    """Markdown images of the document's plots that exist (beside the JSON, or where it says)."""
    out = []
    src_dir = (_common.REPO_ROOT / source).parent
    for p in doc.get("plots", []):
        path = Path(p)
        for candidate in (path if path.is_absolute() else _common.REPO_ROOT / path,
                          src_dir / path.name):
            try:
                shown = candidate.resolve().relative_to(_common.REPO_ROOT).as_posix()
            except ValueError:
                continue
            if candidate.exists():
                out.append(f"![{path.stem}]({shown})")
                break
    return out


def _where(r: dict) -> str:
    """A row's (or failed run's) name: axis, system, loop, clients, regions, offered load."""
    parts = [r.get("axis"), r.get("system"), r.get("mode"), f"c={r.get('clients')}"]
    if r.get("axis") == "regions":
        parts.append(f"regions={r.get('regions')}")
    if r.get("offered_ops_per_s"):
        parts.append(f"at {r['offered_ops_per_s']:.0f}/s")
    return " ".join(str(p) for p in parts if p)


def _problems(doc: dict) -> list[str]:
    """Lines naming the rows with failed or late operations and the runs that failed (and
    have no row): the tables show the operations that succeeded, these say what did not."""
    out = []
    for r in doc.get("results", []):
        if not r.get("errors") and not r.get("late"):
            continue
        rate = r.get("error_rate")
        detail = [f"{r.get('errors') or 0:,} errors"
                  + (f" ({rate:.1%} of operations)" if rate is not None else ""),
                  f"{r.get('late') or 0:,} late"]
        if r.get("last_error"):
            detail.append(f"last error: `{r['last_error']}`")
        out.append(f"- {_where(r)}: " + "; ".join(detail))
    for f in doc.get("failures", []):
        run = f"run {f['repetition']} of " if f.get("repetition") else ""
        out.append(f"- {run}{_where(f)} failed (no figures): `{f.get('error')}`")
    return ["Operations that failed or were late, and runs that failed:", "", *out, ""] \
        if out else []


def _targets_table(doc: dict) -> list[str]:
    trows = []
    for t in doc.get("targets", []):
        result = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
        value = "n/a" if t["value"] is None else f"{t['value']}×"
        detail = ""
        if t.get("meridian_p99_ms") is not None:
            detail = (f" (c={t['clients']}: p99 meridian {_ms(t['meridian_p99_ms'])} ms, etcd "
                      f"{_ms(t['etcd_p99_ms'])} ms)")
        trows.append([t["target"] + detail, value, f"≥ {t['limit']:g}×", result])
    if not trows:
        return []
    return [_md_table(["target", "value", "limit", "result"], trows, "lrrl")]


def render_ycsb(doc: dict, source: str) -> str:
    """One YCSB result document as Markdown."""
    cfg = doc["config"]
    mode = "quick run" if cfg.get("quick") else "full run"
    mix = ", ".join(f"{k} {v:.0%}" for k, v in cfg.get("mix", {}).items())
    theta = f" θ {cfg['theta']:g}" if cfg.get("distribution") != "uniform" else ""
    out = [
        f"### YCSB {cfg['workload']}, {mode} (`{source}`)",
        "",
        f"Reproduce: `{doc['command']}`  ",
        (f"Mix: {mix}; {cfg['distribution']}{theta}; {cfg['records']:,} records of "
         f"{cfg['value_size']} B; {cfg['duration_s']:g} s measured after {cfg['warmup_s']:g} s "
         f"of warm-up per run, {cfg['repeat']} repetition(s); {doc.get('elapsed_s', '?')} s in "
         f"all. etcd {doc.get('systems', {}).get('etcd', {}).get('version') or 'not run'}.  "),
        f"Machine: {_machine_line(doc['machine'])}",
        "",
    ]
    rows = []
    for r in doc["results"]:
        rows.append([
            r["system"], r["mode"], str(r["clients"]),
            _rate(r.get("offered_ops_per_s")) if r["mode"] == "open" else "",
            _rate(r["ops_per_s"]), _ms(r["p50_ms"]), _ms(r["p90_ms"]), _ms(r["p99_ms"]),
            _ms(r["p999_ms"]), _ms(r["max_ms"]), f"{r['abort_rate']:.1%}",
            _cpu(r.get("server_cpu_s_per_1k_ops")), _cpu(r.get("client_cpu_s_per_1k_ops")),
            _mib(r.get("server_rss_bytes")),
        ] + ([f"{r['theta']:g}"] if cfg.get("sweep_theta") else []))
    headers = ["system", "loop", "clients", "offered ops/s", "ops/s", "p50 ms", "p90 ms",
               "p99 ms", "p99.9 ms", "max ms", "aborts", "server CPU s / 1k ops",
               "client CPU s / 1k ops", "server RSS MiB"]
    if cfg.get("sweep_theta"):
        headers.append("θ")
    out.append(_md_table(headers, rows, "llrrrrrrrrrrrr" + ("r" if cfg.get("sweep_theta")
                                                             else "")))
    out.append("")
    closed = [r for r in doc["results"] if r["mode"] == "closed" and r.get("sweep") is None]
    top = max((r["clients"] for r in closed), default=None)
    krows = [[r["system"], kind, f"{k['count']:,}", _ms(k["p50_ms"]), _ms(k["p99_ms"]),
              _ms(k["p999_ms"])]
             for r in closed if r["clients"] == top
             for kind, k in sorted(r.get("by_kind", {}).items())]
    if krows:
        out.append(f"Per operation kind (closed loop, {top} clients):")
        out.append("")
        out.append(_md_table(["system", "operation", "count", "p50 ms", "p99 ms", "p99.9 ms"],
                             krows, "llrrrr"))
        out.append("")
    srows = []
    for name, info in doc.get("systems", {}).items():
        st = info.get("storage", {})
        bpb = st.get("bytes_per_stored_byte")
        xr = info.get("cross_region_bytes_per_txn")
        srows.append([name, str(info.get("processes", "?")),
                      "n/a" if bpb is None else f"{bpb:,.1f}",
                      "n/a" if st.get("apparent_bytes_per_stored_byte") is None
                      else f"{st['apparent_bytes_per_stored_byte']:,.1f}",
                      _mib(info.get("rss_bytes_end")),
                      ("null: " + info.get("cross_region_bytes_reason", "")) if xr is None
                      else str(xr)])
    if srows:
        out.append(_md_table(["system", "server processes", "disk bytes / stored byte "
                              "(allocated)", "(apparent)", "RSS MiB at end",
                              "cross-region bytes / txn"], srows, "lrrrrl"))
        out.append("")
    out += _problems(doc)
    st = doc.get("loadgen_selftest")
    if st:
        verdict = {True: "met", False: "**missed**", None: "n/a"}[st.get("met")]
        out.append(f"Load generator self-test: {_rate(st['ops_per_s'])} ops/s against a no-op "
                   f"server with {st['clients']} clients in {st['load_processes']} load "
                   f"process(es), {st.get('ratio')}× Meridian's best closed-loop throughput "
                   f"(need ≥ 5×: {verdict}).")
        out.append("")
    if doc.get("skipped"):
        out.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in doc["skipped"].items()))
        out.append("")
    out += _targets_table(doc)
    links = _plot_links(doc, source)
    if links:
        if out[-1] != "":
            out.append("")
        out.append(" ".join(links))
    return "\n".join(out).rstrip()


SCALE_METHOD = """\
Workload: YCSB A (50 % strong reads, 50 % single-key write transactions, zipfian θ 0.99),
closed loop, from the load generator of `bench ycsb`. *clients*: one region × three nodes and
the keyspace homed there (etcd's three members beside it), 1 to 128 clients. *regions*:
clusters of 1, 2 and 3 regions × three node processes, a keyspace homed in each region and
the same number of clients per region, each on its own region's keyspace, all at once
(throughput summed, p99 over all operations; no simulated WAN, home-region operations never
cross one). Every node and load process shares one 2-core machine: adding regions adds
processes, not cores."""


def render_scale(doc: dict, source: str) -> str:
    """One scale result document as Markdown."""
    cfg = doc["config"]
    mode = "quick run" if cfg.get("quick") else "full run"
    out = [
        f"### Scaling, {mode} (`{source}`)",
        "",
        f"Reproduce: `{doc['command']}`  ",
        (f"{cfg['records']:,} records of {cfg['value_size']} B; {cfg['duration_s']:g} s "
         f"measured after {cfg['warmup_s']:g} s of warm-up per point; "
         f"{doc.get('elapsed_s', '?')} s in all.  "),
        f"Machine: {_machine_line(doc['machine'])}",
        "",
    ]
    rows = [[r["axis"], r["system"], str(r["clients"]), str(r["regions"]), _rate(r["ops_per_s"]),
             _ms(r["p50_ms"]), _ms(r["p99_ms"]), _ms(r["p999_ms"]),
             _cpu(r.get("server_cpu_s_per_1k_ops"))] for r in doc["results"]]
    out.append(_md_table(["axis", "system", "clients", "regions", "ops/s", "p50 ms", "p99 ms",
                          "p99.9 ms", "server CPU s / 1k ops"], rows, "llrrrrrrr"))
    problems = _problems(doc)
    if problems:
        out += ["", *problems[:-1]]
    if doc.get("skipped"):
        out.append("")
        out.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in doc["skipped"].items()))
    links = _plot_links(doc, source)
    if links:
        out.append("")
        out.append(" ".join(links))
    return "\n".join(out)


RENDERERS = {"storage": render_storage, "raft": render_raft, "txn": render_txn,
             "ycsb": render_ycsb, "scale": render_scale}
METHODS = {"storage": STORAGE_METHOD, "raft": RAFT_METHOD, "txn": TXN_METHOD,
           "ycsb": YCSB_METHOD, "scale": SCALE_METHOD}
TITLES = {"storage": "Storage: `python -m bench storage`",
          "raft": "Raft: `python -m bench raft`",
          "txn": "Transactions across regions: `python -m bench txn`",
          "ycsb": "YCSB workloads, Meridian vs etcd: `python -m bench ycsb`",
          "scale": "Scaling with clients and regions: `python -m bench scale`"}


def _sort_key(item: tuple[str, dict]) -> tuple[str, int, str]:
    name, doc = item
    return (doc.get("benchmark", ""), 1 if doc.get("config", {}).get("quick") else 0, name)


def render_markdown(docs: dict[str, dict]) -> str:
    """The generated block for result documents keyed by their path (as shown)."""
    by_bench: dict[str, list[tuple[str, dict]]] = {}
    for item in sorted(docs.items(), key=_sort_key):
        by_bench.setdefault(item[1].get("benchmark", "?"), []).append(item)
    out = []
    for bench, items in by_bench.items():
        render = RENDERERS.get(bench)
        if render is None:
            continue
        out.append(f"## {TITLES.get(bench, bench)}")
        out.append("")
        if bench in METHODS:
            out.append(METHODS[bench])
            out.append("")
        for source, doc in items:
            out.append(render(doc, source))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def load_results(results_dir: Path) -> dict[str, dict]:
    """The result documents of ``results_dir`` by their shown path; other JSON files are
    skipped, and one that cannot be read or parsed is skipped with a note on stderr."""
    docs = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            doc = _common.read_json(path)
        except (OSError, ValueError) as exc:
            print(f"skipping {path}: not a readable JSON file ({exc})", file=sys.stderr)
            continue
        if (not isinstance(doc, dict) or doc.get("schema") != _common.SCHEMA
                or "benchmark" not in doc):
            continue
        try:
            shown = path.resolve().relative_to(_common.REPO_ROOT).as_posix()
        except ValueError:
            shown = str(path)
        docs[shown] = doc
    return docs


def update_file(output: Path, generated: str) -> None:
    """Replaces the generated block of ``output`` (creating the file if needed)."""
    text = output.read_text(encoding="utf-8") if output.exists() else SKELETON
    if BEGIN not in text or END not in text:
        text = text.rstrip() + "\n\n" + BEGIN + "\n" + END + "\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = head + BEGIN + "\n\n" + generated + "\n" + END + tail
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, output)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="regenerate the tables in BENCHMARKS.md from bench/results/*.json",
        description="Regenerates the generated part of BENCHMARKS.md from the result documents "
                    "in bench/results/ (text outside the GENERATED markers is kept).",
    )
    p.add_argument("--results", default=str(_common.RESULTS_DIR), metavar="DIR",
                   help="directory of result JSON files (default: bench/results)")
    p.add_argument("--output", default=str(_common.REPO_ROOT / "BENCHMARKS.md"), metavar="FILE",
                   help="the Markdown file to update (default: BENCHMARKS.md); '-' prints it")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    docs = load_results(Path(args.results))
    if not docs:
        print(f"no result documents in {args.results}", file=sys.stderr)
        return 1
    generated = render_markdown(docs)
    if args.output == "-":
        sys.stdout.write(generated)
    else:
        update_file(Path(args.output), generated)
        print(f"updated {args.output} from {len(docs)} result file(s)")
    return 0


if __name__ == "__main__":
    from bench.__main__ import main as _bench_main

    sys.exit(_bench_main(["report", *sys.argv[1:]]))
