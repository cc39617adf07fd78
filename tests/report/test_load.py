"""Loading a run directory: complete, with gaps (recorded), and corrupt (AdvfaceError)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from advface.errors import AdvfaceError
from advface.report import load as L
from advface.report.fixtures import cell_spec, make_fake_run


def test_complete_run_loads_everything(fake_run: Path) -> None:
    run = L.load_run(fake_run)
    assert run.missing == []
    assert run.model_names == ["dlib_resnet", "adhoc_cnn"]
    assert set(run.clean) == set(run.verification) == set(run.models) == set(run.model_names)
    con = sqlite3.connect(fake_run / "results.sqlite")
    n_cells = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    n_rows = con.execute('SELECT COUNT(*) FROM "rows"').fetchone()[0]
    con.close()
    assert len(run.cells) == n_cells
    assert sum(len(v) for v in run.rows.values()) == n_rows
    assert run.n_identities == 8
    mineps = [c for c in run.cells if c.is_mineps]
    assert mineps and all(c.eps is None and c.max_eps255 == 16 for c in mineps)
    transfer = [c for c in run.cells if c.is_transfer]
    assert {c.surrogate for c in transfer} == {"dlib_resnet", "adhoc_cnn"}


def test_image_paths_resolve(fake_run: Path) -> None:
    run = L.load_run(fake_run)
    cell = next(c for c in run.cells if c.attack == "pgd" and c.surface == "probe")
    row = run.rows[cell.cell_id][0]
    clean = run.clean_image_path(row.item_key)
    assert clean == fake_run / "images" / "clean" / Path(row.item_key).with_suffix(".png")
    assert clean.is_file()
    assert run.adv_image_path(cell, row) == fake_run / row.adv_path
    sources = run.images_of_identity(row.item_key.split("/")[0])
    assert sources[0][0] == "gallery"


def test_missing_parts_are_recorded_not_raised(tmp_path: Path) -> None:
    gone_cell = cell_spec("adhoc_cnn", "pgd", 8, "impersonation")
    pending = cell_spec("dlib_resnet", "fgsm", 2, "dodging")
    run_dir = make_fake_run(tmp_path / "run", missing=[
        "verification/dlib_resnet.json", "models/adhoc_cnn.json", "split.json", gone_cell,
        f"pending:{pending}", "running"])
    run = L.load_run(run_dir)
    whats = [m.what for m in run.missing]
    assert "verification/dlib_resnet.json" in whats
    assert "models/adhoc_cnn.json" in whats
    assert "split.json" in whats
    assert any(gone_cell in w for w in whats)
    pending_cells = [c for c in run.cells if c.status == "pending"]
    assert len(pending_cells) == 1
    assert any(pending_cells[0].label == m.what and "pending" in m.detail for m in run.missing)
    assert any(m.kind == "run" for m in run.missing)
    # The pending cell's id is also in run.json missing_cells: listed once, not twice.
    assert sum(1 for m in run.missing if pending_cells[0].cell_id in m.what) == 0
    assert "dlib_resnet" not in run.verification and "adhoc_cnn" not in run.models


@pytest.mark.parametrize("name", ["run.json", "clean/dlib_resnet.json", "split.json"])
def test_corrupt_json_raises_naming_the_file(fresh_run: Path, name: str) -> None:
    run_dir = fresh_run
    (run_dir / name).write_text('{"truncated": ')
    with pytest.raises(AdvfaceError) as err:
        L.load_run(run_dir)
    assert err.value.path == run_dir / name


def test_json_of_the_wrong_shape_raises(fresh_run: Path) -> None:
    run_dir = fresh_run
    (run_dir / "models" / "adhoc_cnn.json").write_text("[1, 2, 3]")
    with pytest.raises(AdvfaceError, match="expected a JSON object"):
        L.load_run(run_dir)


def test_corrupt_store_raises_naming_the_file(fresh_run: Path) -> None:
    run_dir = fresh_run
    (run_dir / "results.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(AdvfaceError) as err:
        L.load_run(run_dir)
    assert err.value.path == run_dir / "results.sqlite"


def test_readonly_fallback_reads_the_same(fake_run: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """When ResultsStore cannot open the file (read-only media), the direct reader is used."""
    via_api = L.load_run(fake_run)

    def refuse(path: Path) -> None:
        raise AdvfaceError("cannot open the results store: read-only", path=path)

    monkeypatch.setattr(L, "_read_store_api", refuse)
    direct = L.load_run(fake_run)
    assert [c.cell_id for c in direct.cells] == [c.cell_id for c in via_api.cells]
    for cid, rows in via_api.rows.items():
        a = sorted(rows, key=lambda r: r.item_key)
        b = sorted(direct.rows[cid], key=lambda r: r.item_key)
        assert a == b


def test_min_eps_inf_round_trips(fake_run: Path) -> None:
    """Items never fooled keep min_eps = inf (not NULL), so they count as 'not fooled'."""
    con = sqlite3.connect(fake_run / "results.sqlite")
    stored = [v for (v,) in con.execute(
        'SELECT min_eps FROM "rows" r JOIN cells c USING (cell_id) WHERE c.attack LIKE '
        "'%-mineps'")]
    con.close()
    run = L.load_run(fake_run)
    loaded = [r.min_eps for c in run.cells if c.is_mineps for r in run.rows[c.cell_id]]
    assert sorted(map(str, stored)) == sorted(map(str, loaded))
    assert all(v is not None and (math.isinf(v) or v >= 0) for v in loaded)


def test_absent_run_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(AdvfaceError, match="run directory not found"):
        L.load_run(tmp_path / "nope")


def test_unknown_missing_entry_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown missing entry"):
        make_fake_run(tmp_path / "run", missing=["dlib_resnet/pgd/3/dodging/probe"])


def test_split_subsets_accepts_both_shapes() -> None:
    flat = {"gallery": ["A/A_1.jpg", "B/B_1.jpg"], "identities": ["A", "B"]}
    nested = {"gallery": {"A": ["A/A_1.jpg"], "B": ["B/B_1.jpg"]}}
    assert L.split_subsets(flat) == {"gallery": ["A/A_1.jpg", "B/B_1.jpg"]}
    assert L.split_subsets(nested) == {"gallery": ["A/A_1.jpg", "B/B_1.jpg"]}
    assert json.dumps(L.split_subsets(None)) == "{}"


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Exit status of `advface ARGS` through main(), where user errors become status 2."""
    from advface.cli.main import main

    monkeypatch.setattr("sys.argv", ["advface", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0)


@pytest.mark.parametrize("content", ["empty", "store-dir"])
def test_folder_that_is_not_a_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             content: str) -> None:
    """Not a run (no run.json, no config.yaml): exit 2 naming the folder, nothing written."""
    folder = tmp_path / "photos"
    folder.mkdir()
    if content == "store-dir":
        (folder / "results.sqlite").mkdir()
    with pytest.raises(AdvfaceError, match="not a run directory") as err:
        L.load_run(folder)
    assert err.value.path == folder
    before = sorted(p.name for p in folder.iterdir())
    assert _cli(monkeypatch, "report", str(folder), "--no-notebook") == 2
    stderr = capsys.readouterr().err
    assert str(folder) in stderr and "advface run" in stderr
    assert sorted(p.name for p in folder.iterdir()) == before  # no report/ written


def test_store_that_is_a_directory_is_refused(fresh_run: Path) -> None:
    store = fresh_run / "results.sqlite"
    store.unlink()
    store.mkdir()
    with pytest.raises(AdvfaceError, match="not a file") as err:
        L.load_run(fresh_run)
    assert err.value.path == store


@pytest.mark.parametrize("kind", ["zero-byte", "foreign"])
def test_report_leaves_a_foreign_store_untouched(fresh_run: Path, kind: str) -> None:
    """Reading is read-only: no advface tables created in a file that is not a store."""
    store = fresh_run / "results.sqlite"
    store.unlink()
    if kind == "zero-byte":
        store.touch()
    else:
        con = sqlite3.connect(store)
        con.execute("CREATE TABLE notes (x)")
        con.commit()
        con.close()
    before = store.read_bytes()
    with pytest.raises(AdvfaceError, match="not an advface results store") as err:
        L.load_run(fresh_run)
    assert err.value.path == store
    assert store.read_bytes() == before
