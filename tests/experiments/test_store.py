"""Results store: stable ids, idempotent writes, resume, crash safety, summaries, export."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from advface.errors import AdvfaceError
from advface.experiments.store import ROW_COLUMNS, ResultsStore, cell_id
from advface.metrics.attack import wilson_interval

CELL = {
    "model": "dlib",
    "attack": "pgd",
    "params": {"steps": 10, "alpha": 0.5},
    "eps": 8 / 255,
    "norm": "linf",
    "goal": "dodging",
    "surface": "probe",
}


@pytest.fixture
def store(tmp_path: Path):
    with ResultsStore(tmp_path / "run" / "results.sqlite") as s:
        yield s


def _rows(n: int, prefix: str = "P/P_", **extra) -> list[dict]:
    return [
        {
            "item_key": f"{prefix}{i:04d}.jpg",
            "clean_pred": i,
            "adv_pred": i + 1,
            "true_label": i,
            "success": i % 2 == 0,
            "linf": 8.0,
            "l2": float(i),
            **extra,
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------- ids


def test_cell_id_is_canonical_and_stable() -> None:
    a = cell_id(**CELL)
    reordered = dict(CELL, params={"alpha": 0.5, "steps": 10})
    assert cell_id(**reordered) == a
    assert cell_id(**dict(CELL, eps=0)) == cell_id(**dict(CELL, eps=0.0))
    assert 0.1 + 0.2 != 0.3  # float round-off does not change the id:
    assert cell_id(**dict(CELL, eps=0.1 + 0.2)) == cell_id(**dict(CELL, eps=0.3))
    assert cell_id(**dict(CELL, eps=4 / 255)) != a
    assert cell_id(**dict(CELL, goal="impersonation")) != a
    assert cell_id(**dict(CELL, params={"steps": 11, "alpha": 0.5})) != a
    # The id format is part of the on-disk contract (resume looks cells up by id): pin it.
    text = (
        '{"attack":"pgd","eps":0.0313725490196,"goal":"dodging","model":"dlib",'
        '"norm":"linf","params":{"alpha":0.5,"steps":10},"surface":"probe"}'
    )
    assert a == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert ResultsStore.cell_id(**CELL) == a


def test_cell_id_accepts_numpy_values() -> None:
    plain = cell_id(**dict(CELL, params={"steps": 10, "alpha": 0.5, "sizes": [1, 2]}))
    numpy_ = cell_id(
        **dict(CELL, params={"steps": np.int64(10), "alpha": np.float64(0.5), "sizes": (1, 2)})
    )
    assert plain == numpy_
    with pytest.raises(TypeError):
        cell_id(**dict(CELL, params={"fn": object()}))


# --------------------------------------------------------------------------- cells and rows


def test_add_cell_is_idempotent_and_records_description(store: ResultsStore) -> None:
    cid = store.add_cell(**CELL, n_items=5)
    assert store.add_cell(**CELL) == cid
    cell = store.get_cell(cid)
    assert cell["model"] == "dlib" and cell["attack"] == "pgd"
    assert json.loads(cell["params_json"]) == {"steps": 10, "alpha": 0.5}
    assert cell["eps"] == pytest.approx(8 / 255)
    assert cell["status"] == "pending" and cell["n_items"] == 5
    assert cell["started_at"] and cell["finished_at"] is None
    assert len(store.cells()) == 1
    with pytest.raises(KeyError):
        store.get_cell("nope")


def test_wal_mode(store: ResultsStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_put_rows_round_trips_values(store: ResultsStore) -> None:
    cid = store.add_cell(**CELL)
    n = store.put_rows(
        cid,
        [
            {
                "item_key": "A/A_0001.jpg",
                "clean_pred": np.int64(3),
                "adv_pred": 4.0,
                "true_label": 3,
                "target_label": None,
                "success": np.bool_(True),
                "linf": np.float32(8.0),
                "l2": 1.5,
                "l0": 12,
                "ssim": float("nan"),
                "psnr": math.inf,
                "queries": 100,
                "iterations": 10,
                "min_eps": math.inf,
                "adv_path": Path("images/adv") / cid / "A/A_0001.png",
                "extra_json": {"b": 1, "a": [1, 2]},
            }
        ],
    )
    assert n == 1
    (row,) = store.rows(cid)
    assert tuple(row) == ROW_COLUMNS
    assert row["clean_pred"] == 3 and row["adv_pred"] == 4 and row["success"] == 1
    assert row["linf"] == 8.0 and row["l0"] == 12.0
    assert row["ssim"] is None  # SQLite stores NaN as NULL
    assert row["psnr"] == math.inf and row["min_eps"] == math.inf
    assert row["adv_path"] == f"images/adv/{cid}/A/A_0001.png"
    assert json.loads(row["extra_json"]) == {"a": [1, 2], "b": 1}


def test_put_rows_validates_before_writing(store: ResultsStore) -> None:
    cid = store.add_cell(**CELL)
    with pytest.raises(ValueError, match="unknown row columns"):
        store.put_rows(cid, [*_rows(3), {"item_key": "x", "lnf": 1.0}])
    with pytest.raises(ValueError, match="item_key"):
        store.put_rows(cid, [{"success": 1}])
    with pytest.raises(ValueError, match="integer"):
        store.put_rows(cid, [{"item_key": "x", "clean_pred": 1.5}])

    def gen():
        yield from _rows(3)
        raise RuntimeError("producer crashed")

    with pytest.raises(RuntimeError):
        store.put_rows(cid, gen())
    assert store.rows(cid) == []  # nothing of a failed batch is stored
    with pytest.raises(KeyError, match="add_cell"):
        store.put_rows("0123456789abcdef", _rows(1))
    assert store.put_rows(cid, []) == 0


def test_put_rows_is_idempotent_and_replaces(store: ResultsStore) -> None:
    cid = store.add_cell(**CELL)
    store.put_rows(cid, _rows(5))
    first = store.rows(cid)
    store.put_rows(cid, _rows(5))
    assert store.rows(cid) == first
    store.put_rows(cid, _rows(2, linf=4.0))
    after = store.rows(cid)
    assert len(after) == 5
    assert [r["linf"] for r in after] == [4.0, 4.0, 8.0, 8.0, 8.0]


def test_resume_semantics(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as s:
        cid = s.add_cell(**CELL)
        other = s.add_cell(**dict(CELL, eps=4 / 255))
        s.put_rows(cid, _rows(3))
        s.put_rows(other, _rows(1, prefix="Q/Q_"))
        assert not s.is_done(cid)
    with ResultsStore(path) as s:  # a new process resumes
        assert s.add_cell(**CELL) == cid
        done = s.done_items(cid)
        assert done == {"P/P_0000.jpg", "P/P_0001.jpg", "P/P_0002.jpg"}
        todo = [r for r in _rows(5) if r["item_key"] not in done]
        assert len(todo) == 2
        s.put_rows(cid, todo)
        s.mark_done(cid)
        assert s.is_done(cid) and not s.is_done(other) and not s.is_done("unknown")
        cell = s.get_cell(cid)
        assert cell["status"] == "done" and cell["n_items"] == 5 and cell["finished_at"]
        assert len(s.rows()) == 6
        with pytest.raises(KeyError):
            s.mark_done("unknown")


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "results.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AdvfaceError, match="cannot open the results store") as info:
        ResultsStore(bad)
    assert info.value.path == bad


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(AdvfaceError, match="schema version 99"):
        ResultsStore(path)


# --------------------------------------------------------------------------- summary, export


def test_summary_hand_computed(store: ResultsStore) -> None:
    cid = store.add_cell(**CELL)
    empty = store.add_cell(**dict(CELL, attack="fgsm"))
    store.put_rows(
        cid,
        [
            {"item_key": "a", "success": 1, "linf": 8.0, "ssim": 0.9, "min_eps": 0.01,
             "clean_pred": 1, "true_label": 1},
            {"item_key": "b", "success": 1, "linf": 4.0, "ssim": 0.7, "min_eps": math.inf,
             "clean_pred": 2, "true_label": 2},
            {"item_key": "c", "success": 0, "linf": 6.0, "ssim": None, "min_eps": math.inf,
             "clean_pred": 3, "true_label": 3},
            # Misidentified before the attack: not fooled by it, so not in the success rate.
            {"item_key": "d", "success": 1, "linf": 2.0, "clean_pred": 0, "true_label": 4},
            {"item_key": "e", "success": 1, "linf": 5.0},  # no labels: cannot be counted
        ],
    )
    by_id = {s["cell_id"]: s for s in store.summary()}
    s = by_id[cid]
    assert s["n"] == 5 and s["n_success"] == 2 and s["n_attempted"] == 3
    assert s["success_rate"] == pytest.approx(2 / 3)
    assert (s["success_ci_low"], s["success_ci_high"]) == pytest.approx(wilson_interval(2, 3))
    assert s["mean_linf"] == 5.0 and s["median_linf"] == 5.0
    assert s["mean_ssim"] == pytest.approx(0.8) and s["median_ssim"] == pytest.approx(0.8)
    assert s["median_min_eps"] == math.inf
    assert s["mean_psnr"] is None
    assert s["model"] == "dlib" and s["status"] == "pending"
    e = by_id[empty]
    assert e["n"] == 0 and e["success_rate"] is None and e["mean_linf"] is None


def test_export_csv_round_trip(store: ResultsStore, tmp_path: Path) -> None:
    cid = store.add_cell(**CELL)
    store.put_rows(cid, _rows(3, min_eps=math.inf, l0=1 / 3))
    out = tmp_path / "exports" / "rows.csv"
    assert store.export_csv(out) == 3
    with out.open(newline="") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 3
    assert set(ROW_COLUMNS) | {"model", "attack", "eps", "norm", "goal", "surface"} <= set(read[0])
    for got, want in zip(read, store.rows(cid), strict=True):
        assert got["item_key"] == want["item_key"] and got["model"] == "dlib"
        assert float(got["l0"]) == want["l0"]  # full precision survives
        assert float(got["min_eps"]) == math.inf
        assert got["target_label"] == ""
        assert int(got["success"]) == want["success"]


def test_export_parquet_without_pyarrow_says_how_to_fix(
    store: ResultsStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(AdvfaceError, match="pyarrow") as info:
        store.export_parquet(tmp_path / "rows.parquet")
    assert "pip install pyarrow" in str(info.value)


def test_export_parquet_round_trip(store: ResultsStore, tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    cid = store.add_cell(**CELL)
    store.put_rows(cid, _rows(3))
    assert store.export_parquet(tmp_path / "rows.parquet") == 3
    table = pq.read_table(tmp_path / "rows.parquet")
    assert table.num_rows == 3 and "item_key" in table.column_names


def test_rows_df_without_pandas_says_how_to_fix(
    store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(AdvfaceError, match="pip install pandas"):
        store.rows_df()


# --------------------------------------------------------------------------- crash safety

# The writer traces its own transaction statements, so the test knows whether the kill landed
# after BEGIN and before COMMIT (mid-batch) rather than between batches.
_WRITER = textwrap.dedent(
    """
    import sys
    from advface.experiments.store import ResultsStore

    path, batch_size = sys.argv[1], int(sys.argv[2])
    store = ResultsStore(path)
    cid = store.add_cell("m", "pgd", {}, 0.01, "linf", "dodging", "probe")

    def trace(sql):
        if sql.startswith(("BEGIN", "COMMIT")):
            print(sql.split()[0], flush=True)

    store._conn.set_trace_callback(trace)
    for b in range(1_000_000):
        store.put_rows(cid, [
            {"item_key": f"b{b:07d}/i{i:05d}", "success": i % 2, "linf": float(i),
             "extra_json": {"batch": b}}
            for i in range(batch_size)
        ])
    """
)


def _kill_writer_mid_batch(db: Path, script: Path, batch_size: int) -> tuple[int, bool]:
    """Run the writer, SIGKILL it right after a BEGIN; return (#COMMITs seen, killed mid-batch)."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(batch_size)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while lines.count("COMMIT") < 4 or lines[-1] != "BEGIN":
            line = proc.stdout.readline()
            assert line, "writer exited early"
            lines.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        lines += proc.stdout.read().split()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return lines.count("COMMIT"), lines[-1] == "BEGIN"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_mid_write_leaves_only_complete_batches(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    batch_size = 1000
    for attempt in range(10):  # almost always the first attempt kills inside the transaction
        db = tmp_path / f"results{attempt}.sqlite"
        # Tracing starts after add_cell, so every traced COMMIT is one batch.
        n_commits, mid_batch = _kill_writer_mid_batch(db, script, batch_size)
        if mid_batch:
            break
    assert mid_batch, "could not kill the writer inside a transaction in 10 attempts"
    committed_batches = n_commits

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    per_batch = dict(
        conn.execute(
            'SELECT substr(item_key, 1, 8), COUNT(*) FROM "rows" GROUP BY 1 ORDER BY 1'
        ).fetchall()
    )
    conn.close()
    assert set(per_batch.values()) == {batch_size}  # no partial batch
    batches = sorted(int(k[1:]) for k in per_batch)
    # exactly the batches whose COMMIT ran: the one being written when killed left nothing
    assert batches == list(range(committed_batches))

    with ResultsStore(db) as s:  # and the store is usable for resuming
        (cid,) = [c["cell_id"] for c in s.cells()]
        assert len(s.done_items(cid)) == committed_batches * batch_size
        s.put_rows(cid, [{"item_key": "after/crash", "success": 1}])
        s.mark_done(cid)
        assert s.get_cell(cid)["n_items"] == committed_batches * batch_size + 1


def test_damaged_run_files_and_unwritable_exports_are_named(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from advface.cli.main import app
    from advface.errors import DataError
    from advface.experiments.summary import format_summary

    run = tmp_path / "run"
    run.mkdir()
    ResultsStore(run / "results.sqlite").close()
    (run / "run.json").write_text("{broken")
    with pytest.raises(DataError, match="cannot read this run file") as err:
        format_summary(run)
    assert "run.json" in str(err.value)
    (run / "run.json").write_text("{}")
    (run / "clean").mkdir()
    (run / "clean" / "m.json").write_text('{"rank_k": {}}')
    with pytest.raises(DataError, match="lacks or garbles") as err:
        format_summary(run)
    assert "m.json" in str(err.value)
    (run / "clean" / "m.json").unlink()
    with ResultsStore(run / "results.sqlite") as store, pytest.raises(
            AdvfaceError, match="cannot write the CSV export"):
        store.export_csv(run / "results.sqlite" / "rows.csv")  # a file where a folder must be
    assert CliRunner().invoke(app, ["run", "c.yaml", "--ray", "--workers", "0"]).exit_code == 2


def _tables(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master"))
    finally:
        con.close()


def _foreign_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (x)")
    con.commit()
    con.close()
    return path


def test_read_only_store_reads_and_cannot_write(store: ResultsStore) -> None:
    cid = store.add_cell(**CELL)
    store.put_rows(cid, [{"item_key": "a/1", "success": 1}])
    with ResultsStore(store.path, read_only=True) as ro:
        assert [c["cell_id"] for c in ro.cells()] == [cid]
        assert [r["item_key"] for r in ro.rows()] == ["a/1"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.add_cell(**{**CELL, "model": "other"})


@pytest.mark.parametrize("kind", ["zero-byte", "foreign", "absent"])
def test_read_only_store_refuses_what_is_not_a_store(tmp_path: Path, kind: str) -> None:
    """No tables are created in an empty or foreign file, and no file where there was none."""
    path = tmp_path / "results.sqlite"
    if kind == "zero-byte":
        path.touch()
    elif kind == "foreign":
        _foreign_db(path)
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(AdvfaceError) as err:
        ResultsStore(path, read_only=True)
    assert err.value.path == path
    assert (path.read_bytes() if path.exists() else None) == before


@pytest.mark.parametrize("kind", ["zero-byte", "foreign"])
def test_results_cli_refuses_a_foreign_store(tmp_path: Path, kind: str) -> None:
    """`advface results` must not turn a stray SQLite file into an empty store (rc 0)."""
    run = tmp_path / "run"
    run.mkdir()
    path = run / "results.sqlite"
    if kind == "zero-byte":
        path.touch()
    else:
        _foreign_db(path)
    tables = _tables(path)
    res = subprocess.run(
        [sys.executable, "-c", "from advface.cli.main import main; main()", "results", str(run)],
        capture_output=True, text=True, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "not an advface results store" in res.stderr and str(path) in res.stderr
    assert _tables(path) == tables


@pytest.mark.parametrize(("field", "value"), [("split_stats", [1]), ("split_stats", "x"),
                                              ("identity_names", "Ada_Quill"),
                                              ("identity_names", 3)])
def test_garbled_run_json_fields_are_named(tmp_path: Path, field: str, value: object) -> None:
    from advface.errors import DataError
    from advface.experiments.summary import format_summary

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({field: value}))
    with pytest.raises(DataError, match=field) as err:
        format_summary(run)
    assert err.value.path == run / "run.json"


def test_run_json_fields_set_the_baseline(tmp_path: Path) -> None:
    from advface.experiments.summary import format_summary

    run = tmp_path / "run"
    with ResultsStore(run / "results.sqlite") as s:
        cid = s.add_cell(**CELL)
        s.put_rows(cid, [{"item_key": "a/1", "clean_pred": 0, "adv_pred": 1, "true_label": 0,
                          "success": 1}])
    (run / "run.json").write_text(json.dumps({"identity_names": ["a", "b", "c", "d"],
                                              "split_stats": {"gallery": 4}}))
    text = format_summary(run)
    assert "split: gallery=4" in text and "| 0.250  |" in text
