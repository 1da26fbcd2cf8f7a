"""Edge cases of ``python -m bench compare``: rows that share their identifying fields, and
documents or figures that are not what the harness writes."""

from __future__ import annotations

import argparse

import pytest


def _row(txn_per_s: float, **extra) -> dict:
    return {"workload": "single-key", "region": "us-east", "concurrency": 8,
            "txn_per_s": txn_per_s, **extra}


def _doc(*rows: dict, benchmark: str = "cluster") -> dict:
    from bench import _common

    return {"schema": _common.SCHEMA, "benchmark": benchmark, "results": list(rows)}


def _run(tmp_path, old, new, *flags):
    """``compare OLD NEW`` on two documents (a dict is written as JSON, a str as it is):
    (exit status, stdout, stderr)."""
    import contextlib
    import io
    import json

    from bench import compare

    paths = []
    for name, doc in (("old", old), ("new", new)):
        p = tmp_path / f"{name}.json"
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
        paths.append(str(p))
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", *paths, *flags])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = args.func(args)
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue(), err.getvalue()


# ------------------------------------------------------------- rows sharing their key


def test_rows_sharing_their_key_are_all_compared_in_order():
    # Before: the old document's rows went into a dict by key, so of two rows alike only the
    # last was kept: both new rows were compared with it, the first old row with none, and
    # neither count of unmatched rows said so.
    from bench import compare

    old = _doc(_row(100.0), _row(1000.0))
    new = _doc(_row(100.0), _row(1000.0))
    pairs, unmatched_old, unmatched_new = compare.match_rows(old, new)
    assert [(o["txn_per_s"], n["txn_per_s"]) for _, o, n in pairs] == [(100.0, 100.0),
                                                                       (1000.0, 1000.0)]
    assert (unmatched_old, unmatched_new) == (0, 0)
    # Each comparison names which of the rows alike it is, and identical documents are
    # identical: no change.
    changes = compare.compare_docs(old, new)
    assert len(changes) == 2 and {c["change"] for c in changes} == {0.0}
    assert len({tuple(sorted(c["row"].items())) for c in changes}) == 2


def test_rows_sharing_their_key_beyond_the_other_file_are_counted_unmatched():
    from bench import compare

    old = _doc(_row(100.0), _row(200.0), _row(300.0))
    new = _doc(_row(100.0))
    pairs, unmatched_old, unmatched_new = compare.match_rows(old, new)
    assert [(o["txn_per_s"], n["txn_per_s"]) for _, o, n in pairs] == [(100.0, 100.0)]
    assert (unmatched_old, unmatched_new) == (2, 0)
    assert compare.match_rows(new, old)[1:] == (0, 2)


def test_compare_command_says_when_rows_share_their_key(tmp_path):
    old = _doc(_row(100.0), _row(1000.0), _row(50.0, region="eu-west"))
    new = _doc(_row(100.0), _row(10.0), _row(50.0, region="eu-west"))
    status, out, err = _run(tmp_path, old, new, "--fail-on-regression")
    assert status == 1, (out, err)  # the second row alike went from 1,000 to 10
    assert "1 worse, 0 better, 2 within noise" in out
    assert "2 row(s) of" in out and "share their identifying fields" in out
    assert "compared in the order they appear" in out
    # Only the file that has rows alike is said to have them.
    status, out, _ = _run(tmp_path, old, _doc(_row(100.0)))
    assert status == 0 and "1 within noise" in out
    assert [line for line in out.splitlines() if "share their identifying fields" in line] == [
        f"2 row(s) of {tmp_path / 'old.json'} share their identifying fields with another row "
        f"of it: they are compared in the order they appear (occurrence=1, 2, ...)"]
    # The second row alike and the eu-west row have no counterpart.
    assert f"2 row(s) of {tmp_path / 'old.json'}, 0 row(s) of" in out


def test_cluster_rows_of_each_region_alone_and_all_at_once_are_told_apart():
    # Before: bench cluster's rows of a region alone and of every region at once differ only
    # in regions_at_once, which was not an identifying field: the two were collapsed.
    from bench import compare

    old = _doc(_row(500.0, regions_at_once=1), _row(200.0, regions_at_once=3))
    new = _doc(_row(200.0, regions_at_once=3), _row(500.0, regions_at_once=1))
    changes = compare.compare_docs(old, new)
    assert sorted((c["row"]["regions_at_once"], c["change"]) for c in changes) == [
        (1, 0.0), (3, 0.0)]


# ---------------------------------------------------------------- documents and figures


@pytest.mark.parametrize("content, message", [
    ('{"schema": 1, "benchmark": "cluster"}', "it has no 'results'"),
    ('{"schema": 1, "benchmark": "cluster", "results": null}',
     "its results are not a list of objects"),
    ('{"schema": 1, "benchmark": "cluster", "results": [{"txn_per_s": "fast"}]}',
     "row 1 has 'fast' as its 'txn_per_s', not a number"),
    ('{"schema": 1, "benchmark": "cluster", "results": [{"txn_per_s": 1, "p99_ms": [2]}]}',
     "row 1 has [2] as its 'p99_ms', not a number"),
    ('{"schema": 1, "benchmark": "cluster", "results": [{"error_rate": true}]}',
     "row 1 has True as its 'error_rate', not a number"),
    ('{"schema": 1, "benchmark": ["cluster"], "results": []}',
     "its benchmark is a list, not a name"),
    ("{", "is not JSON"),
    ("[" * 100_000, "is not JSON"),
    ("", "is not JSON"),
], ids=["no-results", "null-results", "string-figure", "list-figure", "bool-error-rate",
        "list-benchmark", "cut", "deep", "empty"])
def test_compare_command_rejects_a_bad_document_in_one_line(tmp_path, content, message):
    # Before: a document without results compared as one with none; a figure that is not a
    # number was skipped without a word; a list as the benchmark raised TypeError (unhashable)
    # and deeply nested JSON RecursionError, each with a traceback.
    good = _doc(_row(100.0))
    for old, new in ((good, content), (content, good)):
        status, out, err = _run(tmp_path, old, new)
        assert status == 2, (out, err)
        lines = err.strip().splitlines()
        assert "Traceback" not in err and message in lines[-1], err
        assert "is not a result document" in lines[-1] or "is not JSON" in lines[-1]


def test_compare_command_still_reads_unmeasured_and_nan_figures(tmp_path):
    # None is a figure that was not measured (no operation completed): not a bad document.
    status, out, err = _run(tmp_path, _doc(_row(None)), _doc(_row(100.0)))
    assert status == 0 and "1 row(s) in common" in out, (out, err)
    status, out, err = _run(tmp_path, '{"schema": 1, "benchmark": "cluster", "results": '
                            '[{"workload": "w", "txn_per_s": NaN}]}',
                            _doc({"workload": "w", "txn_per_s": 1.0}))
    assert status == 0, (out, err)


def test_compare_command_rejects_a_figure_too_large_for_a_float(tmp_path):
    # Before: OverflowError (int too large to convert to float), with a traceback, from an
    # integer figure of 400 digits (JSON has no limit on an integer's size).
    from bench import compare

    huge = '{"schema": 1, "benchmark": "cluster", "results": [' \
           '{"workload": "single-key", "region": "us-east", "concurrency": 8, ' \
           '"txn_per_s": 1' + "0" * 400 + "}]}"
    good = _doc(_row(100.0))
    for old, new in ((good, huge), (huge, good)):
        status, out, err = _run(tmp_path, old, new)
        assert status == 2 and "Traceback" not in err, (out, err)
        assert "as its 'txn_per_s', not a number" in err.strip().splitlines()[-1]
    # Nor is such a repetition a measure of the spread.
    assert compare.spread([10.0, 10 ** 400, 12.0]) == pytest.approx(2 / 11)


def test_compare_command_says_when_it_cannot_write_its_json(tmp_path):
    # Before: the comparison was printed, then a traceback (NotADirectoryError or
    # FileExistsError) from writing --json under a path that is a file.
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    target = blocker / "out.json"
    status, out, err = _run(tmp_path, _doc(_row(100.0)), _doc(_row(100.0)), "--json",
                            str(target))
    assert status == 2 and "Traceback" not in err, (out, err)
    assert f"cannot write {target}" in err.strip().splitlines()[-1]
    assert not target.exists()
