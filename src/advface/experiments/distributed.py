"""Run a study's attack grid on Ray: local cores by default, or an existing cluster.

The unit of work is the single-process runner's own: one chunk (``cfg.batch_size`` probes) of one
cell, whose seed derives from (cell id, chunk index). A task computes one or more whole chunks
with exactly the runner's code (``Runner._run_probe_cell`` / ``_run_mineps_cell`` /
``_run_gallery_cell``), pointed at a stand-in store that hides every other chunk and hands the
rows back instead of writing them. The driver is the only writer of ``results.sqlite``: it puts
each task's rows in one transaction as the task finishes and marks a cell done when its last
chunk is in. So:

- the rows equal a single-process run's, row for row (same code, same chunks, same seeds; see
  the note on threads below);
- a worker that dies mid-task is retried by Ray (``max_retries``); rows are keyed by
  (cell, item) and written with ``INSERT OR REPLACE``, and a task's rows reach the store only
  when it returned, so nothing is lost or counted twice;
- a driver that dies is resumed by calling :func:`run_distributed` again: finished chunks are
  in the store and are skipped, like ``advface run`` does.

Everything outside the attack grid (setup, clean evaluation, verification, transfer
re-evaluation, which only runs forward passes on saved images) runs on the driver exactly as in
:meth:`Runner.run`.

On a cluster every node must see the run directory, the data and the cache at the same paths
(workers write the adversarial PNGs, as the single-process runner does), and have advface
installed. Floating-point results can depend on the number of threads a matmul is split over;
Ray gives each task ``cpus_per_task`` threads, so for bit-identical rows compare with a
single-process run using the same thread count.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from advface.errors import AdvfaceError
from advface.experiments.config import AttackSpec, ExperimentConfig
from advface.experiments.runner import Runner, RunState, _chunks, _now
from advface.experiments.store import cell_id
from advface.experiments.training import train_from_spec

CellKind = Literal["probe", "mineps", "gallery"]
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class CellPlan:
    """One cell of the grid and which runner method computes it."""

    kind: CellKind
    cid: str
    attack: str  # AttackSpec.name
    model: str
    eps255: float | None
    goal: str
    surface: str
    #: Position in a swept attack's eps chain (``sweep: true``): a cell of rank r starts from
    #: the saved adversarials of rank r - 1, so ranks run one after another; 0 otherwise.
    rank: int = 0


@dataclass(frozen=True)
class ChunkTask:
    """Whole runner chunks of one cell: the unit a Ray task computes."""

    cell: CellPlan
    chunks: tuple[int, ...]
    keys: tuple[str, ...]


ChunkFn = Callable[[Runner, ChunkTask], Rows]


# --------------------------------------------------------------------------- worker side


class _TaskStore:
    """What a worker's runner sees instead of the results store.

    Every item of the cell outside this task's chunks reads as already done, so the runner's
    own loop computes exactly this task's chunks (with their global chunk indices and seeds).
    Rows are collected, never written: the driver is the single writer.
    """

    def __init__(self, task: ChunkTask, all_keys: Iterable[str]) -> None:
        self.task = task
        mine = set(task.keys)
        self._done = {k for k in all_keys if k not in mine}
        self.rows: Rows = []

    def _check(self, cid: str) -> None:
        if cid != self.task.cell.cid:
            raise RuntimeError(
                f"the runner computed cell {cid} but the distributed plan says "
                f"{self.task.cell.cid}: runner.py and distributed.py disagree on cell ids")

    def add_cell(self, model: str, attack: str, params: Mapping[str, Any], eps: float | None,
                 norm: str | None, goal: str | None, surface: str | None,
                 n_items: int | None = None) -> str:
        return cell_id(model, attack, params, eps, norm, goal, surface)

    def is_done(self, cid: str) -> bool:
        return False

    def done_items(self, cid: str) -> set[str]:
        self._check(cid)
        return set(self._done)

    def put_rows(self, cid: str, rows: Iterable[Mapping[str, Any]]) -> int:
        self._check(cid)
        batch = [dict(r) for r in rows]
        self.rows.extend(batch)
        return len(batch)

    def mark_done(self, cid: str) -> None:
        self._check(cid)


def _attack_spec(runner: Runner, name: str) -> AttackSpec:
    for spec in runner.cfg.attacks:
        if spec.name == name:
            return spec
    raise KeyError(f"no attack named {name!r} in the config")


def compute_chunk(runner: Runner, task: ChunkTask) -> Rows:
    """Rows of ``task`` computed by the runner's own cell method (the default task body)."""
    st = runner._require_state()
    cell = task.cell
    spec = _attack_spec(runner, cell.attack)
    lm = st.models[cell.model]
    store = _TaskStore(task, runner._probe_keys_for(spec))
    saved = st.store
    st.store = store  # type: ignore[assignment]
    try:
        if cell.kind == "probe":
            runner._run_probe_cell(cell.cid, spec, lm, cell.eps255, cell.goal, cell.cid)
        elif cell.kind == "gallery":
            runner._run_gallery_cell(cell.cid, spec, lm, cell.eps255, cell.goal, cell.cid)
        else:
            runner._run_mineps_cell(spec, lm, cell.goal)
    finally:
        st.store = saved
    got = sorted(r["item_key"] for r in store.rows)
    if got != sorted(task.keys):
        raise RuntimeError(f"cell {cell.cid} chunks {task.chunks}: expected rows for "
                           f"{len(task.keys)} items, the runner produced {len(got)}")
    return store.rows


class _NoStore:
    """Placeholder for the results store in the state shipped to workers."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # pickle and copy probe dunders; let them see "absent"
            raise AttributeError(name)
        raise RuntimeError("a worker touched the results store; only the driver writes it")


_WORKER: dict[str, Runner] = {}


def _worker_runner(state_box: list[Any]) -> Runner:
    """The worker process's runner, deserialised once per run and reused by later tasks."""
    import ray

    ref = state_box[0]
    key = ref.hex()
    if key not in _WORKER:
        _WORKER.clear()
        state: RunState = ray.get(ref)
        runner = Runner(state.cfg, state.run_dir, progress=False, log=lambda msg: None)
        runner.state = state
        _WORKER[key] = runner
    return _WORKER[key]


def _run_task(state_box: list[Any], task: ChunkTask, chunk_fn: ChunkFn) -> tuple[str, Rows]:
    return task.cell.cid, chunk_fn(_worker_runner(state_box), task)


# --------------------------------------------------------------------------- driver side


def plan_cells(runner: Runner) -> list[CellPlan]:
    """Every attack cell the single-process runner would compute, registered in the store.

    Same order and same cell ids as :meth:`Runner.run_attacks` (plus the transfer source cells
    of :meth:`Runner.run_transfer`, so the driver then only re-evaluates saved images).
    """
    st = runner._require_state()
    store = st.store
    plans: list[CellPlan] = []
    seen: set[str] = set()

    def add(plan: CellPlan) -> None:
        if plan.cid not in seen:
            seen.add(plan.cid)
            plans.append(plan)

    for spec, model, eps255, goal, surface in runner._cells():
        eps = None if eps255 is None else eps255 / 255.0
        cid = store.add_cell(model, spec.name, spec.cell_params(surface),
                             eps, spec.norm, goal, surface)
        add(CellPlan("probe" if surface == "probe" else "gallery", cid, spec.name, model,
                     eps255, goal, surface, _sweep_rank(spec, eps255, surface)))
        if spec.minimal_eps and surface == "probe" and eps255 == max(spec.eps_8bit or [0]):
            mcid = store.add_cell(model, f"{spec.name}-mineps",
                                  spec.mineps_params, None, spec.norm, goal, "probe")
            add(CellPlan("mineps", mcid, spec.name, model, None, goal, "probe"))
    specs = {a.name: a for a in runner.cfg.attacks}
    for t in runner.cfg.transfer:
        spec = specs[t.attack]
        epss: list[float | None] = list(spec.eps_8bit) if spec.eps_8bit else [None]
        for goal in spec.goals:
            for eps255 in epss:
                eps = None if eps255 is None else eps255 / 255.0
                cid = store.add_cell(t.surrogate, spec.name,
                                     spec.cell_params("probe"), eps,
                                     spec.norm, goal, "probe")
                add(CellPlan("probe", cid, spec.name, t.surrogate, eps255, goal, "probe",
                             _sweep_rank(spec, eps255, "probe")))
    return plans


def _sweep_rank(spec: AttackSpec, eps255: float | None, surface: str) -> int:
    if not spec.sweep or eps255 is None or surface != "probe":
        return 0
    return sorted(spec.eps_8bit or []).index(eps255)


def plan_tasks(runner: Runner, cells: list[CellPlan], chunks_per_task: int = 1
               ) -> tuple[list[ChunkTask], dict[str, int]]:
    """Unfinished chunks of unfinished cells grouped into tasks; also tasks per cell."""
    st = runner._require_state()
    tasks: list[ChunkTask] = []
    per_cell: dict[str, int] = {}
    for cell in cells:
        if st.store.is_done(cell.cid):
            continue
        keys = runner._probe_keys_for(_attack_spec(runner, cell.attack))
        done = st.store.done_items(cell.cid)
        todo = [(i, c) for i, c in _chunks(keys, runner.cfg.batch_size) if not set(c) <= done]
        per_cell[cell.cid] = 0
        for j in range(0, len(todo), chunks_per_task):
            group = todo[j : j + chunks_per_task]
            tasks.append(ChunkTask(cell, tuple(i for i, _ in group),
                                   tuple(k for _, c in group for k in c)))
            per_cell[cell.cid] += 1
    return tasks, per_cell


def _init_ray(ray_address: str | None, num_workers: int | None,
              ray_init_kwargs: Mapping[str, Any] | None) -> bool:
    """Start (or join) Ray; returns whether we started it and so must shut it down."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(ray_init_kwargs or {})
    if ray_address is None:
        # "local" starts a private instance even if another Ray runs on this machine.
        kwargs.setdefault("num_cpus", num_workers or os.cpu_count() or 1)
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("_node_ip_address", "127.0.0.1")
        ray.init(address="local", **kwargs)
    else:
        ray.init(address=ray_address, **kwargs)
    return True


def run_distributed(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    ray_address: str | None = None,
    num_workers: int | None = None,
    shard_size: int | None = None,
    max_retries: int = 3,
    cpus_per_task: float = 1.0,
    gpus_per_task: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    ray_init_kwargs: Mapping[str, Any] | None = None,
    chunk_fn: ChunkFn = compute_chunk,
) -> Path:
    """Run (or resume) a study into ``run_dir`` with the attack grid spread over Ray workers.

    ``ray_address``: ``None`` starts a private local Ray with ``num_workers`` CPUs (default: all
    cores); otherwise the address of a running cluster (``"auto"``, ``"ray://host:10001"``), or
    whatever Ray is already initialised in this process. ``num_workers`` also caps the tasks in
    flight (default: the cluster's CPUs / ``cpus_per_task``). ``shard_size``: probes per task,
    rounded up to whole runner chunks of ``cfg.batch_size`` (default one chunk) so seeds, and
    hence rows, do not depend on it. ``max_retries``: Ray re-runs a task whose worker died this
    many times. ``gpus_per_task`` defaults to 1 when ``cfg.device`` is CUDA, else 0.
    ``chunk_fn`` computes one task's rows on a worker (default :func:`compute_chunk`); it must be
    importable or picklable by value. Returns ``run_dir``.
    """
    import ray

    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    chunks_per_task = 1 if shard_size is None else max(1, math.ceil(shard_size / cfg.batch_size))
    if gpus_per_task is None:
        gpus_per_task = 1.0 if cfg.device.startswith("cuda") else 0.0
    say = log or (lambda msg: print(msg, flush=True))
    runner = Runner(cfg, Path(run_dir), progress=progress, log=say,
                    train_fn=train_from_spec)
    runner.setup()
    runner.load_models()
    runner.clean_eval()
    runner.verification()
    st = runner._require_state()
    cells = plan_cells(runner)
    tasks, per_cell = plan_tasks(runner, cells, chunks_per_task)
    for cid, n in per_cell.items():
        if n == 0:  # every chunk stored, but the run died before marking the cell
            st.store.mark_done(cid)
    started = _init_ray(ray_address, num_workers, ray_init_kwargs)
    try:
        if tasks:
            limit = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)
                                              / max(cpus_per_task, 1e-9)))
            say(f"distributing {len(tasks)} tasks of {sum(1 for n in per_cell.values() if n)} "
                f"cells over {limit} Ray workers")
            shipped = replace(st, store=_NoStore(), lfw=None)  # type: ignore[arg-type]
            state_box = [ray.put(shipped)]
            remote = ray.remote(_run_task).options(
                num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=max_retries,
                retry_exceptions=False)
            # Swept attacks' cells start from the previous eps's saved images: one wave per
            # rank (everything else is rank 0), each wave's tasks in parallel.
            for rank in sorted({t.cell.rank for t in tasks}):
                wave = [t for t in tasks if t.cell.rank == rank]
                cids = {t.cell.cid for t in wave}
                _drive(remote, state_box, wave, {c: n for c, n in per_cell.items() if c in cids},
                       chunk_fn, limit, runner, progress, max_retries)
        runner._run_json(executor={"kind": "ray", "ray_address": ray_address or "local",
                                   "workers": num_workers, "chunks_per_task": chunks_per_task,
                                   "tasks": len(tasks)})
        runner.run_transfer()
        wall = runner._wall_before + (time.monotonic() - runner._t0)
        runner._run_json(status="done", finished_at=_now(), wall_seconds=round(wall, 1),
                         missing_cells=[c["cell_id"] for c in st.store.cells()
                                        if c["status"] != "done"])
    finally:
        if started:
            ray.shutdown()
        st.store.close()
    return Path(run_dir)


def _drive(remote: Any, state_box: list[Any], tasks: list[ChunkTask], per_cell: dict[str, int],
           chunk_fn: ChunkFn, limit: int, runner: Runner, progress: bool,
           max_retries: int) -> None:
    """Keep ``limit`` tasks in flight; write each finished task's rows; mark finished cells."""
    import ray

    st = runner._require_state()
    pending = deque(tasks)
    inflight: dict[Any, ChunkTask] = {}
    left = dict(per_cell)
    bar = tqdm(total=len(tasks), desc="ray tasks", unit="task", disable=not progress)
    try:
        while pending or inflight:
            while pending and len(inflight) < limit:
                task = pending.popleft()
                inflight[remote.remote(state_box, task, chunk_fn)] = task
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                task = inflight.pop(ref)
                try:
                    cid, rows = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    # The task's own exception (e.g. a ConfigError) reaches the caller as itself.
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from err
                    raise
                except ray.exceptions.RayError as err:  # worker/node died, out of memory...
                    raise AdvfaceError(
                        f"Ray could not finish cell {task.cell.cid} chunks {list(task.chunks)} "
                        f"(retried {max_retries} times): {type(err).__name__}: {err}",
                        fix="rerun the same command to resume (finished chunks are kept); "
                        "raise max_retries or look for what kills the workers (memory?)",
                    ) from err
                st.store.put_rows(cid, rows)
                left[cid] -= 1
                if left[cid] == 0:
                    st.store.mark_done(cid)
                bar.update(1)
    finally:
        bar.close()
        for ref in inflight:
            ray.cancel(ref)
