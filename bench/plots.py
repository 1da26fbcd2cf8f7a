"""PNG plots of the benchmark and fault-campaign results (matplotlib, headless ``Agg``).

- ``<stem>-cdf.png``: latency CDF of every run, log-scaled "nines" axis (the tail readable);
- ``<stem>-timeline.png``: throughput and p99 per interval during the closed-loop runs at the
  largest client count (warm-up shaded);
- ``<stem>-saturation.png``: p50 and p99 against offered load (open loop), per system;
- ``<stem>-clients.png`` / ``<stem>-regions.png`` (scale): throughput and p99 against the
  number of clients and of regions;
- ``latency.png`` / ``throughput.png`` (``bench jepsen``): each operation's latency at its
  invoke time and completed operations per second, by outcome, fault windows shaded.

matplotlib is an optional dependency: :func:`bench.hdr.require` gives the install command.
"""

from __future__ import annotations

import math
import os

from .hdr import require

__all__ = ["plot_ycsb", "plot_scale", "plot_faults", "shown_path", "PNG_MAGIC"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLORS = {"meridian": "tab:blue", "etcd": "tab:orange", "pysyncobj": "tab:green",
          "noop": "tab:gray"}


def shown_path(path: str) -> str:
    """``path`` relative to the repository when inside it (as the result JSON records it)."""
    from ._common import REPO_ROOT

    full = os.path.abspath(path)
    root = str(REPO_ROOT) + os.sep
    return full[len(root):] if full.startswith(root) else full


def _plt():
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _nines(frac: float) -> float:
    """x → -log10(1 - x): 0.9 → 1, 0.99 → 2, ... (the tail of a CDF on a readable axis)."""
    return -math.log10(max(1e-7, 1.0 - min(frac, 1 - 1e-7)))


def plot_cdf(rows: list[dict], path: str, title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if not r.get("cdf"):
            continue
        xs = [p[0] for p in r["cdf"]]
        ys = [_nines(p[1]) for p in r["cdf"]]
        label = f"{r['system']} {r['mode']}"
        label += (f" {r['offered_ops_per_s']:.0f}/s" if r.get("offered_ops_per_s")
                  else f" c={r['clients']}")
        ax.plot(xs, ys, label=label, color=COLORS.get(r["system"]),
                linestyle="-" if r["mode"] == "closed" else "--")
    ax.set_xscale("log")
    ax.set_ylim(0, 4.3)  # up to 99.995 %; the maximum is in the tables
    ticks = [0, 1, 2, 3, 4]
    ax.set_yticks(ticks)
    ax.set_yticklabels(["0", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of operations at or below")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_timeline(rows: list[dict], path: str, title: str) -> str:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for r in rows:
        tl = r.get("timeline") or []
        if not tl:
            continue
        xs = [p[0] for p in tl]
        color = COLORS.get(r["system"])
        label = f"{r['system']} {r['mode']} c={r['clients']}"
        ax1.plot(xs, [p[1] for p in tl], label=label, color=color, marker=".")
        ax2.plot(xs, [p[2] if p[2] is not None else float("nan") for p in tl], label=label,
                 color=color, marker=".")
        warm = [p[0] for p in tl if p[3]]
        if warm:
            for ax in (ax1, ax2):
                ax.axvspan(0, max(warm), color="0.9")
    ax1.set_ylabel("ops/s")
    ax2.set_ylabel("p99 (ms)")
    ax2.set_xlabel("seconds since start (shaded: warm-up, not measured)")
    ax1.set_title(title)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_saturation(rows: list[dict], path: str, title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in sorted({r["system"] for r in rows}):
        pts = sorted((r["offered_ops_per_s"], r["p50_ms"], r["p99_ms"]) for r in rows
                     if r["system"] == system and r.get("offered_ops_per_s"))
        if not pts:
            continue
        color = COLORS.get(system)
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", color=color,
                label=f"{system} p99")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", linestyle="--",
                color=color, label=f"{system} p50")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (ops/s, open loop)")
    ax.set_ylabel("latency from intended start (ms, log)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ycsb(doc: dict, out_dir: str, stem: str) -> list[str]:
    """Every plot of one ycsb result document; returns the paths written."""
    rows = doc["results"]
    wl = doc["config"]["workload"]
    out = []
    main_rows = [r for r in rows if r.get("sweep") is None]
    closed = [r for r in main_rows if r["mode"] == "closed"]
    top = max((r["clients"] for r in closed), default=None)
    closed_top = [r for r in closed if r["clients"] == top]
    opened = [r for r in main_rows if r["mode"] == "open"]
    mid = sorted({r["offered_ops_per_s"] for r in opened})
    shown_open = [r for r in opened if mid and r["offered_ops_per_s"] == mid[len(mid) // 2]]
    if closed_top or shown_open:
        out.append(plot_cdf(closed_top + shown_open, os.path.join(out_dir, f"{stem}-cdf.png"),
                            f"YCSB {wl}: latency CDF"))
    if closed_top:
        out.append(plot_timeline(closed_top, os.path.join(out_dir, f"{stem}-timeline.png"),
                                 f"YCSB {wl}: throughput and p99 over time (closed loop)"))
    if opened:
        out.append(plot_saturation(opened, os.path.join(out_dir, f"{stem}-saturation.png"),
                                   f"YCSB {wl}: latency against offered load"))
    return out


def _xy_plot(series: dict[str, list[tuple[float, float, float]]], path: str, title: str,
             xlabel: str, logx: bool) -> str:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for name, pts in series.items():
        pts = sorted(pts)
        color = COLORS.get(name.split()[0])
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=color)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=name, color=color)
    xs = sorted({p[0] for pts in series.values() for p in pts})
    if logx:
        ax1.set_xscale("log", base=2)
    ax2.set_xticks(xs)
    ax2.set_xticklabels([f"{x:g}" for x in xs])
    ax1.set_ylabel("ops/s")
    ax2.set_ylabel("p99 (ms)")
    ax2.set_xlabel(xlabel)
    ax1.set_title(title)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_scale(doc: dict, out_dir: str, stem: str) -> list[str]:
    """The scaling plots of one scale result document; returns the paths written."""
    out = []
    clients: dict[str, list] = {}
    regions: dict[str, list] = {}
    for r in doc["results"]:
        if r["p99_ms"] is None:
            continue
        if r["axis"] == "clients":
            clients.setdefault(r["system"], []).append((r["clients"], r["ops_per_s"],
                                                        r["p99_ms"]))
        else:
            regions.setdefault(r["system"], []).append((r["regions"], r["ops_per_s"],
                                                        r["p99_ms"]))
    if clients:
        out.append(_xy_plot(clients, os.path.join(out_dir, f"{stem}-clients.png"),
                            "Scaling with clients (YCSB A, closed loop)",
                            "clients (log scale)", True))
    if regions:
        out.append(_xy_plot(regions, os.path.join(out_dir, f"{stem}-regions.png"),
                            "Scaling with regions (YCSB A on each region's keyspace)",
                            "regions", False))
    return out


OUTCOME_COLORS = {"ok": "tab:blue", "fail": "tab:red", "info": "tab:orange"}


def plot_faults(out_dir: str, ops: list[dict], windows: list[dict]) -> list[str]:
    """A fault campaign's ``latency.png`` and ``throughput.png`` in ``out_dir``.

    ``ops``: completed operations (``type`` ok/fail/info, ``invoke_ns``, ``done_ns`` from the
    run's start); ``windows``: faults (``family``, ``start_ns``, ``end_ns``), shaded and
    labelled. Returns the paths written.
    """
    plt = _plt()
    end_s = max([o["done_ns"] / 1e9 for o in ops] + [w["end_ns"] / 1e9 for w in windows] + [1])

    def shade(ax) -> None:
        for w in windows:
            ax.axvspan(w["start_ns"] / 1e9, w["end_ns"] / 1e9, color="tab:red", alpha=0.12,
                       lw=0)
            ax.text(w["start_ns"] / 1e9, 1.0, w["family"], transform=ax.get_xaxis_transform(),
                    fontsize=7, va="top", rotation=90, color="tab:red")

    fig, ax = plt.subplots(figsize=(11, 4))
    shade(ax)
    for kind, color in OUTCOME_COLORS.items():
        pts = [(o["invoke_ns"] / 1e9, max(1e-4, (o["done_ns"] - o["invoke_ns"]) / 1e9))
               for o in ops if o["type"] == kind]
        if pts:
            ax.scatter(*zip(*pts), s=4, color=color, label=kind)
    ax.set_yscale("log")
    ax.set_xlim(0, end_s)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (s)")
    if ax.get_legend_handles_labels()[0]:  # a history with no operations has nothing to label
        ax.legend(loc="upper right", fontsize=8)
    paths = [_save(fig, os.path.join(out_dir, "latency.png"))]

    fig, ax = plt.subplots(figsize=(11, 4))
    shade(ax)
    buckets = int(math.ceil(end_s)) + 1
    for kind, color in OUTCOME_COLORS.items():
        counts = [0] * buckets
        for o in ops:
            if o["type"] == kind:
                counts[min(buckets - 1, int(o["done_ns"] / 1e9))] += 1
        ax.plot(range(buckets), counts, color=color, label=kind, lw=1)
    ax.set_xlim(0, end_s)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("operations / s")
    ax.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, os.path.join(out_dir, "throughput.png")))
    return paths
