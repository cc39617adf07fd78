"""Local SQLite results store: one row per attacked item, written as it is produced.

Why SQLite: the runner must survive being killed at any moment (Ctrl-C, OOM, a lost machine) and
resume without redoing or double-counting work. Each :meth:`ResultsStore.put_rows` call is one
transaction committed with ``synchronous=FULL`` in WAL mode, so after a crash the database holds
every committed batch in full and nothing of the batch that was being written; re-putting a
batch replaces its rows (``INSERT OR REPLACE`` on ``(cell_id, item_key)``), so resuming is safe.

Schema (see ``docs/run_dir.md``): ``cells`` describes one (model, attack, params, eps, norm, goal,
surface) combination; ``rows`` holds one item (probe key) of a cell. Norms are stored in 8-bit
units (x255) by convention; the store itself does not rescale anything.

SQLite stores NaN as NULL, so a NaN metric reads back as ``None``; ``inf`` (e.g. ``min_eps`` of an
image never fooled) round-trips.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from advface.errors import AdvfaceError
from advface.metrics.attack import counts_toward_success, summarise, wilson_interval

SCHEMA_VERSION = 1

CELL_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "model",
    "attack",
    "params_json",
    "eps",
    "norm",
    "goal",
    "surface",
    "status",
    "started_at",
    "finished_at",
    "n_items",
)

# Row value columns and their SQLite types (cell_id and item_key come first in the table).
ROW_TYPES: dict[str, str] = {
    "clean_pred": "INTEGER",
    "adv_pred": "INTEGER",
    "true_label": "INTEGER",
    "target_label": "INTEGER",
    "success": "INTEGER",
    "linf": "REAL",
    "l2": "REAL",
    "l0": "REAL",
    "ssim": "REAL",
    "psnr": "REAL",
    "queries": "INTEGER",
    "iterations": "INTEGER",
    "min_eps": "REAL",
    "adv_path": "TEXT",
    "extra_json": "TEXT",
}
ROW_COLUMNS: tuple[str, ...] = ("cell_id", "item_key", *ROW_TYPES)

# Per-item quantities that summary() reports as mean and median.
SUMMARY_QUANTITIES: tuple[str, ...] = (
    "linf",
    "l2",
    "l0",
    "ssim",
    "psnr",
    "queries",
    "iterations",
    "min_eps",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cells (
    cell_id     TEXT PRIMARY KEY,
    model       TEXT NOT NULL,
    attack      TEXT NOT NULL,
    params_json TEXT NOT NULL,
    eps         REAL,
    norm        TEXT,
    goal        TEXT,
    surface     TEXT,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    started_at  TEXT,
    finished_at TEXT,
    n_items     INTEGER
);
CREATE TABLE IF NOT EXISTS "rows" (
    cell_id  TEXT NOT NULL REFERENCES cells(cell_id),
    item_key TEXT NOT NULL,
    {", ".join(f"{name} {kind}" for name, kind in ROW_TYPES.items())},
    UNIQUE (cell_id, item_key)
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _plain(obj: Any) -> Any:
    """Convert numpy/torch scalars, arrays, tuples and paths into plain JSON values."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"parameter keys must be strings; got {k!r}")
            out[k] = _plain(v)
        return out
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return obj.as_posix()
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        return _plain(obj.tolist())
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} value {obj!r} as JSON")


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal inputs always give byte-identical text."""
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _round_floats(obj: Any) -> Any:
    """Round every float to 12 significant digits (see :func:`cell_id`)."""
    if isinstance(obj, dict):
        return {k: _round_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_floats(v) for v in obj]
    if isinstance(obj, float) and math.isfinite(obj):
        return float(f"{obj:.12g}")
    return obj


def cell_id(
    model: str,
    attack: str,
    params: Mapping[str, Any],
    eps: float | None,
    norm: str | None,
    goal: str | None,
    surface: str | None,
) -> str:
    """Stable 16-hex-digit id of a cell: SHA-256 of its canonical JSON description.

    Resume finds a cell again by this id, so equal settings must hash equally however they were
    computed: parameter dicts are key-sorted, ``eps`` is coerced to ``float`` (``0`` and ``0.0``
    are one cell), and every float is rounded to 12 significant digits, so ``0.1 + 0.2``
    and ``0.3`` agree. A float32 value still differs from its float64 original at the 8th
    digit: pass plain config values.
    """
    desc = {
        "model": model,
        "attack": attack,
        "params": dict(params),
        "eps": None if eps is None else float(eps),
        "norm": norm,
        "goal": goal,
        "surface": surface,
    }
    text = canonical_json(_round_floats(_plain(desc)))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def _to_sql(column: str, value: Any) -> Any:
    """Coerce one row value to the column's SQLite type, rejecting silent truncation."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy / torch scalar
    kind = ROW_TYPES[column]
    if column == "extra_json":
        return value if isinstance(value, str) else canonical_json(value)
    if kind == "TEXT":
        return value.as_posix() if isinstance(value, Path) else str(value)
    if kind == "INTEGER":
        if isinstance(value, bool | int):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"column {column} needs an integer; got {value!r}")
    f = float(value)
    return None if math.isnan(f) else f


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a store of another schema version: its rows would be misread."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise AdvfaceError(
            f"results store has schema version {version}, this advface expects "
            f"{SCHEMA_VERSION}",
            path=path,
            fix="use the advface version that wrote it, or start a new run directory",
        )


def _check_tables(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a database that lacks advface's tables: reading it would report "no cells"."""
    for table, wanted in (("cells", CELL_COLUMNS), ("rows", ROW_COLUMNS)):
        present = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
        lacking = [c for c in wanted if c not in present]
        if lacking:
            what = "no table" if not present else f"columns {', '.join(lacking)} missing in"
            raise AdvfaceError(
                f"not an advface results store: {what} `{table}`",
                path=path,
                fix="pass a run directory written by `advface run`; this file was not written "
                "by it",
            )


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write (SQLite ``mode=ro``), so reading a run never creates
    advface's tables in an empty or foreign file; refuses a file that is not a store."""
    if not path.is_file():
        raise AdvfaceError("no results store here", path=path,
                           fix="pass a run directory written by `advface run`")
    uri = path.resolve().as_uri() + "?mode=ro"
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60.0)
        conn.row_factory = sqlite3.Row
        _check_version(conn, path)
        _check_tables(conn, path)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise AdvfaceError(
                f"cannot read the results store: {exc}",
                path=path,
                fix="the file is not an advface results database; pass a run directory "
                "written by `advface run`",
            ) from exc
        raise
    return conn


class ResultsStore:
    """One SQLite file of cells and rows; open one instance per process.

    Use as a context manager (or call :meth:`close`). All writes are committed before the
    method returns. ``read_only=True`` is for readers (``advface results``, the report): the
    file is opened without write access and must already be an advface store.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        if read_only:
            self._conn = _open_read_only(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
        except sqlite3.Error as exc:
            raise AdvfaceError(
                f"cannot open the results store: {exc}",
                path=self.path,
                fix="check that the run directory is writable",
            ) from exc
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            raise

    def _init_schema(self) -> None:
        """Check the schema version, switch to WAL + full sync, create tables if missing."""
        try:
            self._conn.row_factory = sqlite3.Row
            _check_version(self._conn, self.path)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._transaction() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise AdvfaceError(
                f"cannot open the results store: {exc}",
                path=self.path,
                fix="the file is not an advface results database; move it away or pick "
                "another run directory",
            ) from exc

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed into the main file)."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate-write transaction: all statements inside commit together or not at all."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ cells

    cell_id = staticmethod(cell_id)

    def add_cell(
        self,
        model: str,
        attack: str,
        params: Mapping[str, Any],
        eps: float | None,
        norm: str | None,
        goal: str | None,
        surface: str | None,
        n_items: int | None = None,
    ) -> str:
        """Register a cell (no-op if it exists) and return its id.

        ``n_items`` may record how many items are planned; :meth:`mark_done` overwrites it with
        the number actually stored.
        """
        cid = cell_id(model, attack, params, eps, norm, goal, surface)
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO cells (cell_id, model, attack, params_json, eps, norm, "
                "goal, surface, status, started_at, n_items) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (
                    cid,
                    model,
                    attack,
                    canonical_json(dict(params)),
                    None if eps is None else float(eps),
                    norm,
                    goal,
                    surface,
                    _now(),
                    n_items,
                ),
            )
        return cid

    def _require_cell(self, cid: str) -> None:
        row = self._conn.execute("SELECT 1 FROM cells WHERE cell_id = ?", (cid,)).fetchone()
        if row is None:
            raise KeyError(f"unknown cell {cid!r}: register it with add_cell() first")

    def get_cell(self, cid: str) -> dict[str, Any]:
        """The ``cells`` row of one cell as a dict (``KeyError`` if unknown)."""
        row = self._conn.execute("SELECT * FROM cells WHERE cell_id = ?", (cid,)).fetchone()
        if row is None:
            raise KeyError(f"unknown cell {cid!r}")
        return dict(row)

    def cells(self) -> list[dict[str, Any]]:
        """All cells in id order."""
        return [dict(r) for r in self._conn.execute("SELECT * FROM cells ORDER BY cell_id")]

    def mark_done(self, cid: str) -> None:
        """Mark a cell finished and record how many rows it holds."""
        self._require_cell(cid)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE cells SET status = 'done', finished_at = ?, "
                '  n_items = (SELECT COUNT(*) FROM "rows" WHERE cell_id = ?) '
                "WHERE cell_id = ?",
                (_now(), cid, cid),
            )

    def is_done(self, cid: str) -> bool:
        """True once :meth:`mark_done` ran for this cell; False for pending or unknown cells."""
        row = self._conn.execute("SELECT status FROM cells WHERE cell_id = ?", (cid,)).fetchone()
        return row is not None and row["status"] == "done"

    # ------------------------------------------------------------------ rows

    def put_rows(self, cid: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace a batch of rows atomically; returns how many were written.

        Each row needs ``item_key``; other keys must be row columns (unknown keys raise, so a
        typo cannot silently drop a metric). Missing columns are stored as NULL. Values are all
        validated before the transaction starts.
        """
        params = []
        value_cols = tuple(ROW_TYPES)
        for row in rows:
            unknown = set(row) - set(value_cols) - {"item_key"}
            if unknown:
                raise ValueError(f"unknown row columns {sorted(unknown)}; allowed: {value_cols}")
            key = row.get("item_key")
            if not isinstance(key, str) or not key:
                raise ValueError(f"every row needs a non-empty string item_key; got {key!r}")
            params.append((cid, key, *(_to_sql(c, row.get(c)) for c in value_cols)))
        if not params:
            return 0
        self._require_cell(cid)
        placeholders = ", ".join("?" * len(ROW_COLUMNS))
        sql = f'INSERT OR REPLACE INTO "rows" ({", ".join(ROW_COLUMNS)}) VALUES ({placeholders})'
        with self._transaction() as conn:
            conn.executemany(sql, params)
        return len(params)

    def done_items(self, cid: str) -> set[str]:
        """Item keys already stored for a cell: the runner skips these when it resumes."""
        cur = self._conn.execute('SELECT item_key FROM "rows" WHERE cell_id = ?', (cid,))
        return {r[0] for r in cur}

    def rows(self, cid: str | None = None) -> list[dict[str, Any]]:
        """Rows of one cell (or all cells) ordered by cell and item key.

        ``extra_json`` is returned as the stored JSON text; ``json.loads`` it if needed.
        """
        cols = ", ".join(ROW_COLUMNS)
        if cid is None:
            cur = self._conn.execute(f'SELECT {cols} FROM "rows" ORDER BY cell_id, item_key')
        else:
            cur = self._conn.execute(
                f'SELECT {cols} FROM "rows" WHERE cell_id = ? ORDER BY item_key', (cid,)
            )
        return [dict(r) for r in cur]

    def rows_df(self, cid: str | None = None) -> Any:
        """:meth:`rows` as a pandas DataFrame, for notebooks (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise AdvfaceError(
                "rows_df() needs pandas, which is not installed",
                path=self.path,
                fix="pip install pandas, or use ResultsStore.rows() which returns dicts",
            ) from exc
        return pd.DataFrame.from_records(self.rows(cid), columns=list(ROW_COLUMNS))

    # ------------------------------------------------------------------ summaries and export

    def summary(self) -> list[dict[str, Any]]:
        """Per cell: its description, row count, clean and robust accuracy (over all rows),
        success rate (over ``n_attempted`` items: the
        probes a dodging attack had to make misidentified, the probes an impersonation had to
        make named as the target) with a Wilson 95% interval, and
        mean/median of every per-item quantity (NULLs ignored; ``None`` when nothing measured).
        """
        out = []
        for cell in self.cells():
            cid = cell["cell_id"]
            data = self.rows(cid)
            entry: dict[str, Any] = dict(cell)
            entry["n"] = len(data)
            # Over the items the attack had to change (metrics.attack.counts_toward_success).
            succ = [int(r["success"]) for r in data if r["success"] is not None
                    and counts_toward_success(cell["goal"], r["clean_pred"], r["true_label"],
                                              r["target_label"])]
            k = sum(succ)
            entry["n_success"], entry["n_attempted"] = k, len(succ)
            if succ:
                lo, hi = wilson_interval(k, len(succ))
                entry["success_rate"] = k / len(succ)
                entry["success_ci_low"], entry["success_ci_high"] = lo, hi
            else:
                entry["success_rate"] = entry["success_ci_low"] = entry["success_ci_high"] = None
            # Over every row: the fraction identified correctly before and after the attack.
            entry["clean_accuracy"] = (sum(r["clean_pred"] == r["true_label"] for r in data)
                                       / len(data) if data else None)
            entry["robust_accuracy"] = (sum(r["adv_pred"] == r["true_label"] for r in data)
                                        / len(data) if data else None)
            for q in SUMMARY_QUANTITIES:
                vals = [float(r[q]) for r in data if r[q] is not None]
                if vals:
                    s = summarise(vals)
                    entry[f"mean_{q}"], entry[f"median_{q}"] = s["mean"], s["median"]
                else:
                    entry[f"mean_{q}"] = entry[f"median_{q}"] = None
            out.append(entry)
        return out

    def _joined(self) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Every row with its cell's description, the flat table that analysis tools want."""
        cell_cols = [c for c in CELL_COLUMNS if c != "cell_id"]
        cols = [*ROW_COLUMNS, *cell_cols]
        sql = (
            f"SELECT {', '.join('r.' + c for c in ROW_COLUMNS)}, "
            f"{', '.join('c.' + c for c in cell_cols)} "
            'FROM "rows" r JOIN cells c USING (cell_id) ORDER BY r.cell_id, r.item_key'
        )
        return cols, [tuple(r) for r in self._conn.execute(sql)]

    def export_csv(self, path: str | Path) -> int:
        """Write all rows joined with their cell description to CSV; returns the row count.

        NULL becomes an empty field; floats are written with full precision (``repr``).
        """
        cols, data = self._joined()
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(cols)
                for row in data:
                    writer.writerow(
                        ["" if v is None else repr(v) if isinstance(v, float) else v
                         for v in row]
                    )
        except OSError as err:
            raise AdvfaceError(f"cannot write the CSV export ({err.strerror or err})",
                               path=path, fix="choose a writable path for --csv") from None
        return len(data)

    def export_parquet(self, path: str | Path) -> int:
        """Write the same joined table as :meth:`export_csv` to Parquet (needs pyarrow)."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise AdvfaceError(
                "Parquet export needs pyarrow, which is not installed",
                path=path,
                fix="pip install pyarrow, or use export_csv() instead",
            ) from exc
        cols, data = self._joined()
        types = {
            **{
                c: pa.int64() if t == "INTEGER" else pa.float64() if t == "REAL" else pa.string()
                for c, t in ROW_TYPES.items()
            },
            "cell_id": pa.string(),
            "item_key": pa.string(),
            "model": pa.string(),
            "attack": pa.string(),
            "params_json": pa.string(),
            "eps": pa.float64(),
            "norm": pa.string(),
            "goal": pa.string(),
            "surface": pa.string(),
            "status": pa.string(),
            "started_at": pa.string(),
            "finished_at": pa.string(),
            "n_items": pa.int64(),
        }
        schema = pa.schema([(c, types[c]) for c in cols])
        table = pa.table({c: [r[i] for r in data] for i, c in enumerate(cols)}, schema=schema)
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        except OSError as err:
            raise AdvfaceError(f"cannot write the Parquet export ({err})", path=path,
                               fix="choose a writable path for --parquet") from None
        return len(data)
