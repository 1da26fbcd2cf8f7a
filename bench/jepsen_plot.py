"""Plots of a ``python -m bench jepsen`` run: latency and throughput over time, faults shaded.

:func:`plot` draws ``latency.png`` (each operation's latency at its invoke time, by outcome,
log scale) and ``throughput.png`` (completed operations per second, by outcome) with every
fault window shaded and labelled by its family. It uses matplotlib when it can be imported;
otherwise it draws the same points and windows into a plain RGB image with a small PNG writer
(zlib only), without axes' text.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot", "write_png"]

COLORS = {"ok": (31, 119, 180), "fail": (214, 39, 40), "info": (255, 127, 14)}
SHADE = (255, 228, 228)


def plot(out: Path, ops: Sequence[Mapping[str, Any]],
         windows: Sequence[Mapping[str, Any]]) -> str:
    """Writes both plots into ``out``; returns how (for the summary)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # not installed, or no usable backend
        _plain(out, ops, windows)
        return f"plain PNG (matplotlib not importable: {type(exc).__name__})"
    end_s = max([o["done_ns"] / 1e9 for o in ops] + [w["end_ns"] / 1e9 for w in windows] + [1])

    def shade(ax) -> None:
        for w in windows:
            ax.axvspan(w["start_ns"] / 1e9, w["end_ns"] / 1e9, color="tab:red", alpha=0.12,
                       lw=0)
            ax.text(w["start_ns"] / 1e9, 1.0, w["family"], transform=ax.get_xaxis_transform(),
                    fontsize=7, va="top", rotation=90, color="tab:red")

    fig, ax = plt.subplots(figsize=(11, 4))
    shade(ax)
    for kind, color in COLORS.items():
        pts = [(o["invoke_ns"] / 1e9, max(1e-4, (o["done_ns"] - o["invoke_ns"]) / 1e9))
               for o in ops if o["type"] == kind]
        if pts:
            ax.scatter(*zip(*pts), s=4, color=[c / 255 for c in color], label=kind)
    ax.set_yscale("log")
    ax.set_xlim(0, end_s)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (s)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 4))
    shade(ax)
    buckets = int(math.ceil(end_s)) + 1
    for kind, color in COLORS.items():
        counts = [0] * buckets
        for o in ops:
            if o["type"] == kind:
                counts[min(buckets - 1, int(o["done_ns"] / 1e9))] += 1
        ax.plot(range(buckets), counts, color=[c / 255 for c in color], label=kind, lw=1)
    ax.set_xlim(0, end_s)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("operations / s")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    plt.close(fig)
    return "matplotlib"


def write_png(path: Path, width: int, height: int, pixels: bytearray) -> None:
    """Writes an 8-bit RGB PNG; ``pixels`` holds ``height`` rows of ``3 * width`` bytes."""
    raw = b"".join(b"\x00" + bytes(pixels[y * 3 * width:(y + 1) * 3 * width])
                   for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)


def _plain(out: Path, ops: Sequence[Mapping[str, Any]],
           windows: Sequence[Mapping[str, Any]]) -> None:
    width, height = 900, 300
    end_ns = max([o["done_ns"] for o in ops] + [w["end_ns"] for w in windows] + [1])

    def canvas() -> bytearray:
        img = bytearray(b"\xff" * (3 * width * height))
        for w in windows:
            x0, x1 = int(w["start_ns"] / end_ns * (width - 1)), int(w["end_ns"] / end_ns *
                                                                     (width - 1))
            for y in range(height):
                for x in range(x0, x1 + 1):
                    img[3 * (y * width + x):3 * (y * width + x) + 3] = bytes(SHADE)
        return img

    def dot(img: bytearray, x: int, y: int, color: tuple[int, int, int]) -> None:
        for dx in (0, 1):
            for dy in (0, 1):
                xx, yy = min(width - 1, x + dx), min(height - 1, y + dy)
                img[3 * (yy * width + xx):3 * (yy * width + xx) + 3] = bytes(color)

    img = canvas()
    for o in ops:  # latency: log10 from 100 us to 100 s
        lat = max(1e-4, (o["done_ns"] - o["invoke_ns"]) / 1e9)
        y = height - 1 - int((math.log10(lat) + 4) / 6 * (height - 1))
        dot(img, int(o["invoke_ns"] / end_ns * (width - 1)), max(0, y), COLORS[o["type"]])
    write_png(out / "latency.png", width, height, img)
    img = canvas()
    buckets = max(1, int(end_ns / 1e9) + 1)
    for kind, color in COLORS.items():
        counts = [0] * buckets
        for o in ops:
            if o["type"] == kind:
                counts[min(buckets - 1, int(o["done_ns"] / 1e9))] += 1
        top = max(counts + [1])
        for i, c in enumerate(counts):
            dot(img, int(i / buckets * (width - 1)), height - 1 - int(c / top * (height - 2)),
                color)
    write_png(out / "throughput.png", width, height, img)
