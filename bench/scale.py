"""``python -m bench scale``: throughput and p99 against the number of clients and of regions.

Workload: YCSB A (50 % strong reads, 50 % single-key write transactions, zipfian θ 0.99) over
``--records`` records of ``--value-size`` bytes, closed loop, from the load generator of
``bench ycsb`` (``bench/openloop.py`` in load processes; latency percentiles from
HdrHistogram).

- **clients**: one region of three nodes (``--nodes-per-region``), the keyspace homed there,
  ``--clients`` closed-loop clients (1 … 128). etcd (three members) runs the same points
  beside it unless ``--systems meridian``.
- **regions**: clusters of 1, 2 and 3 regions × three nodes, each region with its own
  keyspace homed there and ``--clients-per-region`` clients of its own (one load process per
  region) running YCSB A on their region's keyspace, all regions at once. Throughput is the
  sum, p99 pools every operation. No simulated WAN: home-region operations never cross one.
  Every node is a process on this one machine, so the total is bounded by its cores: the axis
  shows what adding a region costs here, not what separate machines would give.

A point that cannot be measured (a load process that does not connect or report, a cluster
that does not start or answer) is listed under ``failures`` in the results, the other points
are kept, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from . import _common
from .loadproc import LoadError
from .openloop import LoadSpec
from .targets import TargetError, TargetUnavailable
from .ycsb import (
    check_dependencies,
    check_outputs,
    default_load_procs,
    load_records,
    measure,
    open_target,
    parse_args_common,
    plots_dir,
    resolve_common,
    storage_figures,
)

__all__ = ["add_parser", "main"]

SYSTEMS = ("meridian", "etcd")
REGION_NAMES = ("us-east", "eu-west", "ap-south")
QUICK = {"clients": (1, 8, 32, 128), "regions": (1, 2, 3), "clients_per_region": 16,
         "duration": 3.0, "warmup": 1.0, "records": 10_000}
FULL = {"clients": (1, 2, 4, 8, 16, 32, 64, 128), "regions": (1, 2, 3),
        "clients_per_region": 32, "duration": 8.0, "warmup": 2.0, "records": 100_000}


def _levels(lo: int, hi: int):
    return _common.comma_list(int, valid=lambda x: lo <= x <= hi,
                              expect=f"a whole number in {lo}..{hi}", unique=True)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "scale", help="YCSB A throughput and p99 against clients (1..128) and regions (1..3)",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--clients", type=_levels(1, 1024),
                   help="client counts of the clients axis (default 1,8,32,128 quick)")
    p.add_argument("--regions", type=_levels(1, 3),
                   help="region counts of the regions axis (default 1,2,3)")
    p.add_argument("--clients-per-region", type=_common.int_range(1, 512),
                   help="clients per region on the regions axis (default 16 quick, 32 full)")
    p.add_argument("--axes", default="clients,regions",
                   type=_common.comma_list(valid=("clients", "regions").__contains__,
                                           expect="clients or regions"),
                   help="which axes to run: clients, regions or both (default)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   type=_common.comma_list(valid=SYSTEMS.__contains__,
                                           expect=f"one of {','.join(SYSTEMS)}"),
                   help="systems of the clients axis (the regions axis is Meridian's)")
    parse_args_common(p)
    p.set_defaults(func=main)
    return p


def _row(system: str, axis: str, clients: int, regions: int, row: dict) -> dict:
    keep = ("ops_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "ops",
            "abort_rate", "errors", "error_rate", "late", "last_error",
            "server_cpu_s_per_1k_ops", "client_cpu_s_per_1k_ops", "server_cpu_cores",
            "server_rss_bytes", "load_processes", "timeline")
    return {"system": system, "workload": "A", "mode": "closed", "axis": axis,
            "clients": clients, "regions": regions, **{k: row.get(k) for k in keep}}


def main(args: argparse.Namespace) -> int:
    axes, systems = args.axes, args.systems
    if args.nodes and "regions" in axes:
        raise SystemExit("error: the regions axis starts its own clusters; with --nodes use "
                         "--axes clients")
    check_dependencies(plots_dir(args) is not None)
    check_outputs(args)
    preset = QUICK if args.quick else FULL
    common = resolve_common(args, preset)
    duration, warmup, records = common["duration"], common["warmup"], common["records"]
    client_levels = args.clients or list(preset["clients"])
    region_levels = args.regions or list(preset["regions"])
    per_region = args.clients_per_region or preset["clients_per_region"]
    workload = {"workload": "A", "records": records, "value_size": args.value_size}
    base = args.workdir or str(_common.RESULTS_DIR.parent)
    os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bench-scale-", dir=base)
    grace = min(10.0, max(2.0, 2 * duration))
    started = time.time()
    machine = _common.describe_machine(base)
    results: list[dict] = []
    skipped: dict[str, str] = {}
    storage: dict[str, dict] = {}
    failures: list[dict] = []

    try:
        if "clients" in axes:
            for system in systems:
                try:
                    with open_target(system, args, workdir) as target:
                        load_records(target.driver, records, args.value_size)
                        for c in client_levels:
                            load = LoadSpec("closed", c, duration, warmup,
                                            interval_s=common["interval"], grace_s=grace)
                            try:
                                row = measure(target, target.driver, workload, load,
                                              args.load_procs or default_load_procs(c),
                                              workdir, label=f"{system} c={c}",
                                              seed=args.seed)
                            except LoadError as exc:
                                _common.note_failure(failures, exc, system=system,
                                                     axis="clients", clients=c, regions=1)
                                continue
                            results.append(_row(system, "clients", c, 1, row))
                            print(f"{system} clients={c}: {row['ops_per_s']:.0f} ops/s "
                                  f"p99 {row['p99_ms']} ms", file=sys.stderr)
                        storage[system] = storage_figures(target, records, args.value_size)
                except TargetUnavailable as exc:
                    skipped[system] = str(exc)
                    print(f"{system}: {exc}", file=sys.stderr)
                except TargetError as exc:
                    _common.note_failure(failures, exc, system=system, axis="clients",
                                         regions=1)
        if "regions" in axes:
            for n in region_levels:
                regions = REGION_NAMES[:n]
                try:
                    with open_target("meridian", args, workdir, regions=regions) as target:
                        for r in regions:
                            load_records(target.drivers[r], records, args.value_size)
                        load = LoadSpec("closed", per_region * n, duration, warmup,
                                        interval_s=common["interval"], grace_s=grace)
                        try:
                            row = measure(target, [target.drivers[r] for r in regions],
                                          workload, load, n, workdir,
                                          label=f"meridian regions={n}", seed=args.seed)
                        except LoadError as exc:
                            _common.note_failure(failures, exc, system="meridian",
                                                 axis="regions", clients=per_region * n,
                                                 regions=n)
                            continue
                        results.append(_row("meridian", "regions", per_region * n, n, row))
                        print(f"meridian regions={n}: {row['ops_per_s']:.0f} ops/s "
                              f"p99 {row['p99_ms']} ms", file=sys.stderr)
                except TargetError as exc:
                    _common.note_failure(failures, exc, system="meridian", axis="regions",
                                         regions=n)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    doc = {
        "schema": _common.SCHEMA,
        "benchmark": "scale",
        "command": "python -m bench " + " ".join(getattr(args, "argv", []) or sys.argv[1:]),
        "machine": {**machine, "load_average_end": _common.load_average()},
        "config": {"quick": bool(args.quick), "workload": "A", "distribution": "zipfian",
                   "theta": 0.99, "records": records, "value_size": args.value_size,
                   "duration_s": duration, "warmup_s": warmup, "axes": axes,
                   "clients": client_levels, "regions": region_levels,
                   "clients_per_region": per_region, "nodes_per_region": args.nodes_per_region,
                   "systems": systems, "wan_latency_ms": "none",
                   "load_processes": args.load_procs or "auto (1 below 16 clients, else 2; "
                   "one per region on the regions axis)"},
        "storage": storage,
        "skipped": skipped,
        "failures": failures,
        "elapsed_s": round(time.time() - started, 1),
        "results": results,
    }
    print(f"{'system':<9} {'axis':<8} {'clients':>7} {'regions':>7} {'ops/s':>9} {'p50':>8} "
          f"{'p99':>8}")
    for r in results:
        print(f"{r['system']:<9} {r['axis']:<8} {r['clients']:>7} {r['regions']:>7} "
              f"{r['ops_per_s']:>9.0f} {r['p50_ms'] or float('nan'):>8.2f} "
              f"{r['p99_ms'] or float('nan'):>8.2f}")
    out_dir = plots_dir(args)
    if out_dir and results:
        from .plots import plot_scale, shown_path

        stem = os.path.splitext(os.path.basename(args.json))[0] if args.json else "scale"
        doc["plots"] = [shown_path(x) for x in plot_scale(doc, out_dir, stem)]
        for p in doc["plots"]:
            print(f"wrote {p}")
    if args.json:
        _common.write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 1 if failures else 0
