"""What the harness reports and writes when a measurement goes beyond what it usually meets:
a latency beyond the histogram's range, a results document that cannot be written."""

from __future__ import annotations

import json

import pytest

from bench import _common, ycsb
from bench.hdr import HIGHEST_US, Histogram
from bench.openloop import Tally, merge_tallies

pytest.importorskip("hdrh")


def test_a_ycsb_row_counts_the_latencies_beyond_the_histograms_range():
    t = Tally()
    t.by_kind["read"] = Histogram()
    t.by_kind["read"].record_us(500.0)
    t.by_kind["read"].record_us(5 * HIGHEST_US)  # five hours: a stuck operation
    t.latency.add(t.by_kind["read"])
    t.completed = t.recorded = t.attempts = 2
    # As the parent gets it from a load process.
    merged = merge_tallies([Tally.from_json(json.loads(json.dumps(t.to_json())))])
    row = ycsb.summarize(merged, duration=1.0, interval=0.5, warmup=0.0)
    assert row["clamped"] == 1
    assert row["max_ms"] == pytest.approx(5 * HIGHEST_US / 1000, rel=1e-6)
    # An ordinary run says so too.
    ok = Tally()
    ok.latency.record_us(500.0)
    ok.completed = ok.recorded = ok.attempts = 1
    assert ycsb.summarize(ok, duration=1.0, interval=0.5, warmup=0.0)["clamped"] == 0


def test_a_document_that_cannot_be_written_leaves_no_file_behind(tmp_path):
    path = tmp_path / "results.json"
    _common.write_json(path, {"results": [1]})
    with pytest.raises(TypeError):
        _common.write_json(path, {"results": [{1, 2}]})  # a set is not JSON
    # The earlier document is intact, and no temporary file is left beside it.
    assert json.loads(path.read_text()) == {"results": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
