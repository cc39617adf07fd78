"""Read a run directory (docs/run_dir.md) into one `RunData` object for the report.

The report must be writable for a half-finished or partly broken run, so this loader is
tolerant: a file or cell that is absent is recorded in `RunData.missing` (the report lists it
in its "Missing results" section) instead of raising. A file that exists but cannot be parsed
is different: silently skipping it would hide a real problem, so it raises `AdvfaceError`
naming the file.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from advface.errors import AdvfaceError

GOALS = ("dodging", "impersonation")
SURFACES = ("probe", "gallery")

_CELL_COLUMNS = (
    "cell_id", "model", "attack", "params_json", "eps", "norm", "goal", "surface", "status",
    "started_at", "finished_at", "n_items",
)
_ROW_COLUMNS = (
    "cell_id", "item_key", "clean_pred", "adv_pred", "true_label", "target_label", "success",
    "linf", "l2", "l0", "ssim", "psnr", "queries", "iterations", "min_eps", "adv_path",
    "extra_json",
)


def normalize_norm(norm: Any) -> str:
    """Map the spellings of a norm ("Linf", "inf", "L2", 2) onto "linf" / "l2" / "l0"."""
    text = str(norm).strip().lower() if norm is not None else ""
    if text in {"linf", "l_inf", "inf", "infinity", "l∞"}:
        return "linf"
    if text in {"l2", "2", "2.0"}:
        return "l2"
    if text in {"l0", "0"}:
        return "l0"
    return text or "unknown"


@dataclass(frozen=True)
class Missing:
    """One thing the report would have used but could not: a file, a cell, some images."""

    kind: str  # "file" | "cell" | "images" | "run"
    what: str
    detail: str = ""


@dataclass(frozen=True)
class Cell:
    """One (model, attack, params, eps, norm, goal, surface) combination of the store."""

    cell_id: str
    model: str
    attack: str
    params: dict[str, Any]
    eps: float | None
    norm: str
    goal: str
    surface: str
    status: str
    started_at: str | None = None
    finished_at: str | None = None
    n_items: int | None = None

    @property
    def eps255(self) -> float | None:
        """The budget in 8-bit units (what the report prints as `x/255`)."""
        return None if self.eps is None else self.eps * 255.0

    @property
    def is_transfer(self) -> bool:
        return self.attack == "transfer"

    @property
    def is_mineps(self) -> bool:
        return self.attack.endswith("-mineps")

    @property
    def base_attack(self) -> str:
        """The attack that made the images: the transfer's base attack, the mineps search's."""
        if self.is_transfer:
            return str(self.params.get("base_attack", "?"))
        if self.is_mineps:
            return self.attack[: -len("-mineps")]
        return self.attack

    @property
    def kind(self) -> str:
        """Registry name of the attack algorithm (params "attack"; else the base attack name).

        Cells are named after the config entry (e.g. "pgd_strong"); what the attack *does* is
        looked up by this.
        """
        value = self.params.get("attack")
        return str(value) if isinstance(value, str) and value else self.base_attack

    @property
    def max_eps255(self) -> float | None:
        """Largest budget tried: eps, or for a minimal-eps search the top of its grid."""
        grid = self.params.get("grid_8bit")
        if isinstance(grid, list) and grid:
            try:
                return max(float(g) for g in grid)
            except (TypeError, ValueError):
                pass
        return self.eps255

    @property
    def surrogate(self) -> str | None:
        return str(self.params["surrogate"]) if self.is_transfer and "surrogate" in self.params \
            else None

    @property
    def label(self) -> str:
        """A short human name: `pgd linf 2/255 dodging (probe) on dlib`."""
        eps = "" if self.eps255 is None else f" {fmt_eps(self.eps255)}"
        src = f" from {self.surrogate}" if self.is_transfer else ""
        return f"{self.attack}{src} {self.norm}{eps} {self.goal} ({self.surface}) on {self.model}"


@dataclass(frozen=True)
class Row:
    """One attacked item of a cell; norms in 8-bit units, success judged on the re-read PNG."""

    item_key: str
    clean_pred: int | None
    adv_pred: int | None
    true_label: int | None
    target_label: int | None
    success: bool | None
    linf: float | None
    l2: float | None
    l0: float | None
    ssim: float | None
    psnr: float | None
    queries: float | None
    iterations: float | None
    min_eps: float | None  # 8-bit units, like the norms (inf: not fooled within the grid)
    adv_path: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def fmt_eps(eps255: float) -> str:
    """`2/255`, or `0.5/255` for budgets that are not whole 8-bit steps."""
    if abs(eps255 - round(eps255)) < 1e-6:
        return f"{round(eps255)}/255"
    return f"{eps255:.3g}/255"


@dataclass
class RunData:
    """Everything the report reads from one run directory, plus what was missing."""

    run_dir: Path
    run: dict[str, Any]
    split: dict[str, Any] | None
    config_text: str | None
    config: dict[str, Any]
    models: dict[str, dict[str, Any]]
    model_names: list[str]
    clean: dict[str, dict[str, Any]]
    verification: dict[str, dict[str, Any]]
    cells: list[Cell]
    rows: dict[str, list[Row]]
    identity_names: list[str]
    missing: list[Missing] = field(default_factory=list)
    # Optional analyses filed with the run (docs/run_dir.md): interpret/*.json (saliency of
    # `advface interpret run-figures`) and defences/*.json (`advface defend ... --run`), by
    # file stem. Absent folders are not "missing": the report says which command adds them.
    interpret: dict[str, dict[str, Any]] = field(default_factory=dict)
    defences: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Images that exist but could not be decoded; filled while figures are drawn and listed
    # in the report (docs/architecture.md: unreadable images are skipped *and listed*).
    unreadable_images: list[str] = field(default_factory=list)

    # ---- lookups -------------------------------------------------------------------------
    def identity_name(self, label: int | None) -> str:
        """Name of a label index, or `#<label>` when run.json lacks the names."""
        if label is None:
            return "?"
        if 0 <= label < len(self.identity_names):
            return self.identity_names[label]
        return f"#{label}"

    def cell(self, cell_id: str) -> Cell | None:
        return next((c for c in self.cells if c.cell_id == cell_id), None)

    def cells_where(self, **criteria: Any) -> list[Cell]:
        """Cells whose attributes equal every given value (e.g. model="dlib", goal="dodging")."""
        return [c for c in self.cells if all(getattr(c, k) == v for k, v in criteria.items())]

    @property
    def data_name(self) -> str:
        """What the run's images are, for prose: "LFW", or the user's folder by name (run.json
        ``data``; runs from before it was recorded were all LFW)."""
        data = self.run.get("data")
        if not isinstance(data, dict) or data.get("lfw", True):
            return "LFW"
        return f"the data set “{data.get('name', '?')}”"

    @property
    def n_identities(self) -> int | None:
        """Closed-set size: from run.json identity_names, else from any clean result."""
        if self.identity_names:
            return len(self.identity_names)
        for clean in self.clean.values():
            if isinstance(clean.get("n_identities"), int | float):
                return int(clean["n_identities"])
        return None

    @property
    def status(self) -> str:
        return str(self.run.get("status", "unknown"))

    def clean_image_path(self, key: str) -> Path | None:
        """The saved clean PNG of a record key, trying the spellings docs/run_dir.md allows."""
        base = self.run_dir / "images" / "clean"
        pure = PurePosixPath(key)
        for cand in (pure.with_suffix(".png"), PurePosixPath(f"{key}.png"), pure):
            path = base / cand
            if path.is_file():
                return path
        return None

    def adv_image_path(self, cell: Cell, row: Row) -> Path | None:
        """rows.adv_path (relative to the run dir), else images/adv/<cell_id>/<key>.png."""
        if row.adv_path:
            path = self.run_dir / row.adv_path
            if path.is_file():
                return path
        base = self.run_dir / "images" / "adv" / cell.cell_id
        pure = PurePosixPath(row.item_key)
        for cand in (pure.with_suffix(".png"), PurePosixPath(f"{row.item_key}.png")):
            path = base / cand
            if path.is_file():
                return path
        return None

    def images_of_identity(self, name: str) -> list[tuple[str, Path]]:
        """Clean images of one identity stored in the run, gallery keys of split.json first.

        Returns (source, path) with source "gallery" or "probe set" so a caption can say which.
        """
        found: list[tuple[str, Path]] = []
        gallery_keys = split_keys(self.split, "gallery") if self.split else []
        for key in gallery_keys:
            if key.split("/", 1)[0] == name:
                path = self.clean_image_path(key)
                if path is not None:
                    found.append(("gallery", path))
        folder = self.run_dir / "images" / "clean" / name
        if folder.is_dir():
            seen = {p for _, p in found}
            for path in sorted(folder.glob("*.png")):
                if path not in seen:
                    found.append(("probe set", path))
        return found


# ---- split.json helpers -------------------------------------------------------------------
def _as_keys(value: Any) -> list[str] | None:
    """A list of record keys, from a list of keys or an {identity: [keys]} mapping."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [v for v in value if "/" in v] or None
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        keys = [k for v in value.values() for k in v if isinstance(k, str)]
        return keys or None
    return None


def split_subsets(split: dict[str, Any] | None) -> dict[str, list[str]]:
    """Every named subset of record keys in split.json (gallery, probe, train, ...).

    The split file is written by another module; accept both a flat list of keys and an
    identity -> keys mapping, at the top level or one level down, rather than bind to one shape.
    """
    if not split:
        return {}
    out: dict[str, list[str]] = {}
    for name, value in split.items():
        keys = _as_keys(value)
        if keys is not None:
            out[name] = keys
        elif isinstance(value, dict):
            for sub, subvalue in value.items():
                subkeys = _as_keys(subvalue)
                if subkeys is not None:
                    out[f"{name}.{sub}"] = subkeys
    return out


def split_keys(split: dict[str, Any] | None, role: str) -> list[str]:
    """Keys of the subset whose name starts with `role` (gallery, probe), else []."""
    for name, keys in split_subsets(split).items():
        if name.lower().startswith(role):
            return keys
    return []


# ---- reading ------------------------------------------------------------------------------
def _read_json(path: Path, missing: list[Missing], what: str) -> Any | None:
    if not path.is_file():
        missing.append(Missing("file", what, "file absent"))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdvfaceError(
            f"corrupt JSON in run directory: {err}",
            path=path,
            fix="rerun the experiment step that writes it, or delete it to report without it",
        ) from err


def _expect_dict(value: Any, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AdvfaceError(
            f"expected a JSON object, found {type(value).__name__}",
            path=path,
            fix="rerun the experiment step that writes it, or delete it to report without it",
        )
    return value


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _json_field(text: Any, path: Path, what: str) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise AdvfaceError(
            f"corrupt {what} in the results store: {err}", path=path,
            fix="the store was written by an incompatible or interrupted run; rerun the cell",
        ) from err
    return value if isinstance(value, dict) else {"value": value}


def _connect(path: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError:
        # A WAL database without its -shm file cannot be opened read-only; retry normally.
        try:
            con = sqlite3.connect(str(path))
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as err:
            raise AdvfaceError(
                f"the results store cannot be read: {err}", path=path,
                fix="the file is not an SQLite database; rerun the experiment",
            ) from err
    return con


def _select(con: sqlite3.Connection, table: str, wanted: tuple[str, ...], path: Path,
            order: str) -> list[dict[str, Any]]:
    try:
        present = [r[1] for r in con.execute(f"PRAGMA table_info({table})").fetchall()]
    except sqlite3.DatabaseError as err:
        raise AdvfaceError(f"results store is corrupt: {err}", path=path,
                           fix="rerun the experiment") from err
    if not present:
        raise AdvfaceError(
            f"results store has no table `{table}`", path=path,
            fix="this is not an advface results store (docs/run_dir.md); rerun the experiment",
        )
    cols = [c for c in wanted if c in present]
    try:
        cur = con.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}")
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    except sqlite3.DatabaseError as err:
        raise AdvfaceError(f"results store is corrupt: {err}", path=path,
                           fix="rerun the experiment") from err


def _read_store_api(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cells and rows through advface.experiments.store.ResultsStore (the writer's own API)."""
    from advface.experiments.store import ResultsStore

    with ResultsStore(path, read_only=True) as store:
        return store.cells(), store.rows()


def _read_store_readonly(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same, by the documented schema, for a store ResultsStore refuses although it is
    readable (a store lacking a column, a WAL store on read-only media)."""
    from advface.experiments.store import SCHEMA_VERSION

    con = _connect(path)
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise AdvfaceError(
                f"results store has schema version {version}, this advface reads "
                f"{SCHEMA_VERSION}", path=path, fix="use the advface version that wrote it")
        return (_select(con, "cells", _CELL_COLUMNS, path, "cell_id"),
                _select(con, '"rows"', _ROW_COLUMNS, path, "cell_id, item_key"))
    finally:
        con.close()


def _load_store(path: Path) -> tuple[list[Cell], dict[str, list[Row]]]:
    try:
        cell_rows, row_rows = _read_store_api(path)
    except AdvfaceError as api_error:
        try:
            cell_rows, row_rows = _read_store_readonly(path)
        except AdvfaceError:
            raise api_error from None
    cells: list[Cell] = []
    for r in cell_rows:
        cells.append(Cell(
            cell_id=str(r["cell_id"]),
            model=str(r.get("model")),
            attack=str(r.get("attack")),
            params=_json_field(r.get("params_json"), path, "params_json"),
            eps=_float(r.get("eps")),
            norm=normalize_norm(r.get("norm")),
            goal=str(r.get("goal") or "dodging"),
            surface=str(r.get("surface") or "probe"),
            status=str(r.get("status") or "unknown"),
            started_at=r.get("started_at"),
            finished_at=r.get("finished_at"),
            n_items=_int(r.get("n_items")),
        ))
    rows: dict[str, list[Row]] = {c.cell_id: [] for c in cells}
    for r in row_rows:
        success = r.get("success")
        rows.setdefault(str(r["cell_id"]), []).append(Row(
            item_key=str(r.get("item_key")),
            clean_pred=_int(r.get("clean_pred")),
            adv_pred=_int(r.get("adv_pred")),
            true_label=_int(r.get("true_label")),
            target_label=_int(r.get("target_label")),
            success=None if success is None else bool(success),
            linf=_float(r.get("linf")),
            l2=_float(r.get("l2")),
            l0=_float(r.get("l0")),
            ssim=_float(r.get("ssim")),
            psnr=_float(r.get("psnr")),
            queries=_float(r.get("queries")),
            iterations=_float(r.get("iterations")),
            min_eps=_float(r.get("min_eps")),
            adv_path=r.get("adv_path"),
            extra=_json_field(r.get("extra_json"), path, "extra_json"),
        ))
    return cells, rows


def _describe_missing_cell(entry: Any) -> str:
    if isinstance(entry, dict):
        return ", ".join(f"{k}={v}" for k, v in entry.items())
    return str(entry)


def _model_name(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and "name" in entry:
        return str(entry["name"])
    return None


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a folder `advface run` did not write (it writes config.yaml first, then
    run.json): a report of it would be all "missing" and be written into the user's folder."""
    if not run_dir.is_dir():
        raise AdvfaceError("run directory not found", path=run_dir,
                           fix="pass the --out directory of `advface run`")
    if not (run_dir / "run.json").is_file() and not (run_dir / "config.yaml").is_file():
        raise AdvfaceError("not a run directory: it has neither run.json nor config.yaml",
                           path=run_dir,
                           fix="pass a directory written by `advface run` (its --out)")
    store = run_dir / "results.sqlite"
    if store.exists() and not store.is_file():
        raise AdvfaceError("results.sqlite is not a file", path=store,
                           fix="move it away; `advface run` writes the results store there")


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory; absent parts become `Missing` entries, corrupt ones raise."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    missing: list[Missing] = []

    run_raw = _read_json(run_dir / "run.json", missing, "run.json")
    run = _expect_dict(run_raw, run_dir / "run.json") if run_raw is not None else {}
    split_raw = _read_json(run_dir / "split.json", missing, "split.json")
    split = _expect_dict(split_raw, run_dir / "split.json") if split_raw is not None else None
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8", errors="replace") \
        if config_path.is_file() else None
    config: dict[str, Any] = {}
    if config_text is None:
        missing.append(Missing("file", "config.yaml", "file absent"))
    else:
        import yaml

        try:
            parsed = yaml.safe_load(config_text)
        except yaml.YAMLError as err:
            raise AdvfaceError(f"corrupt YAML in run directory: {err}", path=config_path,
                               fix="restore the config the run was started with") from err
        config = parsed if isinstance(parsed, dict) else {}
    # A study run with `verification: false` has no verification files by design.
    want_verification = config.get("verification", True) is not False

    store_path = run_dir / "results.sqlite"
    if store_path.is_file():
        cells, rows = _load_store(store_path)
    else:
        cells, rows = [], {}
        missing.append(Missing("file", "results.sqlite", "file absent: no attack results"))

    # Model order: run.json first (the order the study was configured in), then any other
    # model that left a file or a cell, so nothing measured is dropped from the report.
    names: list[str] = []
    for entry in run.get("models", []) or []:
        name = _model_name(entry)
        if name and name not in names:
            names.append(name)
    for sub in ("models", "clean", "verification"):
        folder = run_dir / sub
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                if path.stem not in names:
                    names.append(path.stem)
    for cell in cells:
        for name in (cell.model, cell.surrogate):
            if name and name not in names:
                names.append(name)

    models: dict[str, dict[str, Any]] = {}
    clean: dict[str, dict[str, Any]] = {}
    verification: dict[str, dict[str, Any]] = {}
    for name in names:
        for sub, target in (("models", models), ("clean", clean),
                            ("verification", verification)):
            path = run_dir / sub / f"{name}.json"
            if sub == "verification" and not want_verification and not path.is_file():
                continue
            value = _read_json(path, missing, f"{sub}/{name}.json")
            if value is not None:
                target[name] = _expect_dict(value, path)

    known = {c.cell_id for c in cells}
    for entry in run.get("missing_cells", []) or []:
        if isinstance(entry, str) and entry in known:
            continue  # a registered cell: described below with its status and row count
        missing.append(Missing("cell", _describe_missing_cell(entry),
                               "listed in run.json missing_cells, not in the store"))
    for cell in cells:
        n_rows = len(rows.get(cell.cell_id, []))
        if cell.status != "done":
            missing.append(Missing("cell", cell.label,
                                   f"status {cell.status!r}, {n_rows} rows stored"))
        elif n_rows == 0:
            missing.append(Missing("cell", cell.label, "done but no rows stored"))
        elif cell.n_items is not None and n_rows < cell.n_items:
            missing.append(Missing("cell", cell.label, f"{n_rows} of {cell.n_items} rows stored"))
        absent = sum(1 for r in rows.get(cell.cell_id, []) if r.adv_path
                     and not (run_dir / r.adv_path).is_file())
        if absent:
            missing.append(Missing("images", f"images/adv/{cell.cell_id}",
                                   f"{absent} of {n_rows} adversarial images absent"))
    if run and run.get("status") != "done":
        missing.append(Missing("run", "run.json status",
                               f"the run is {run.get('status', 'of unknown status')!r}, "
                               "not 'done': results may be incomplete"))

    names_raw = run.get("identity_names") or []
    identity_names = [str(n) for n in names_raw] if isinstance(names_raw, list) else []
    interpret = _read_folder(run_dir, "interpret", missing)
    for stem, doc in interpret.items():
        fig = doc.get("figure")
        if isinstance(fig, str) and fig and not (run_dir / "interpret" / fig).is_file():
            missing.append(Missing("file", f"interpret/{fig}",
                                   f"figure named by interpret/{stem}.json is absent"))
    return RunData(
        run_dir=run_dir, run=run, split=split, config_text=config_text, config=config,
        models=models,
        model_names=names, clean=clean, verification=verification, cells=cells, rows=rows,
        identity_names=identity_names, missing=missing, interpret=interpret,
        defences=_read_folder(run_dir, "defences", missing),
    )


def _read_folder(run_dir: Path, sub: str, missing: list[Missing]) -> dict[str, dict[str, Any]]:
    """Every RUN_DIR/<sub>/*.json, by stem (sorted); a corrupt one raises like any other."""
    folder = run_dir / sub
    out: dict[str, dict[str, Any]] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            value = _read_json(path, missing, f"{sub}/{path.name}")
            if value is not None:
                out[path.stem] = _expect_dict(value, path)
    return out


def finite(values: list[float | None]) -> list[float]:
    """The finite values of a column (SQLite NULL, inf and nan dropped)."""
    return [v for v in values if v is not None and math.isfinite(v)]
