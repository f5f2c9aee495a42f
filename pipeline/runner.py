"""Run one stage on Ray Data: pending inputs in, manifest parts out, as results stream back.

Resume is a set difference: the stage gets the input keys that are in neither its output table
nor `errors`. Workers return each batch's rows as Arrow IPC bytes; the driver alone writes
Parquet (through manifests), one atomic part per batch, so a killed run loses at most the
batches in flight. Model stages run as an actor pool (the model loads once per actor), fed by
separate CPU tasks that run the stage's `prepare` (decoding, resizing), so the model never waits
on decode.
"""

from __future__ import annotations

import math
import os
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from manifests import store, views
from manifests.schemas import spec
from pipeline.config import RunConfig
from pipeline.registry import STAGES
from stages.base import Row, Stage
from stages.probe import discover

PREPARE_CPUS = 0.5


@dataclass
class StageReport:
    stage: str
    inputs: int  # pending inputs this time
    done_before: int
    rows: int = 0
    errors: int = 0
    seconds: float = 0.0


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _pack(stage: Stage, items: list[Row], failed: list[Row] = ()) -> dict:
    rows, errors = stage.process_batch(items) if items else ([], [])
    return {
        "rows": [_ipc(store.to_arrow(stage.writes, rows))],
        "errors": [_ipc(store.to_arrow("errors", list(failed) + errors))],
        "n": [len(items) + len(failed)],
    }


def _prepare_batch(batch: pa.Table, stage_cls: type[Stage], config, run: str) -> dict:
    """CPU task before a model stage: decode and preprocess, one pickled payload per item.

    Pickle, because prepared items hold numpy arrays of varying shapes (Arrow tensor columns need
    one shape); the payload only travels between this run's own workers.
    """
    stage = stage_cls(config, Path(run))
    payloads = []
    for item in batch.to_pylist():
        try:
            payloads.append(pickle.dumps({"item": stage.prepare(item)}))
        except Exception as exc:  # one bad input must not stop the others
            payloads.append(pickle.dumps({"error": stage.error_row(item, exc)}))
    return {"payload": payloads}


def _run_batch(batch: pa.Table, stage_cls: type[Stage], config, run: str) -> dict:
    """Task body for CPU stages: the stage object is cheap, built per batch."""
    stage = stage_cls(config, Path(run))
    stage.setup()
    return _pack(stage, batch.to_pylist())


class _ModelWorker:
    """Actor body for model stages: `setup` (the model load) runs once per actor."""

    def __init__(self, stage_cls: type[Stage], config, run: str):
        self.stage = stage_cls(config, Path(run))
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> dict:
        if "payload" not in batch.column_names:
            return _pack(self.stage, batch.to_pylist())
        prepared = [pickle.loads(p) for p in batch.column("payload").to_pylist()]
        return _pack(self.stage, [p["item"] for p in prepared if "item" in p], [p["error"] for p in prepared if "error" in p])


def has_prepare(stage_cls: type[Stage]) -> bool:
    return stage_cls.prepare is not Stage.prepare


def stage_inputs(stage_cls: type[Stage], config: RunConfig, run: Path) -> list[Row]:
    if stage_cls.reads == "sources":
        found, problems = discover(Path(config.src))
        store.write_part(
            run, "errors", [{"stage": stage_cls.name, "key": p["path"], "error_type": "bad_input", "message": p["message"]} for p in problems]
        )
        return found
    if stage_cls.reads == "candidates":
        rows = views.candidates(run, stage_cls.filters, config.filter).to_pylist()
    else:
        rows = store.read_table(run, stage_cls.reads).to_pylist()
    return stage_cls(getattr(config, stage_cls.name), run).plan(rows)


def pending_inputs(stage_cls: type[Stage], config: RunConfig, run: Path, retry_errors: bool) -> tuple[list[Row], int]:
    items = stage_inputs(stage_cls, config, run)
    done = store.keys(run, stage_cls.writes, stage_cls.input_key)
    if not retry_errors:
        done |= store.error_keys(run, stage_cls.name)
    pending = [item for item in items if str(item[stage_cls.input_key]) not in done]
    return pending, len(items) - len(pending)


def start_ray(workers: int | None) -> None:
    """Embedded local Ray by default; the cluster at RAY_ADDRESS when it is set."""
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_logging.yaml")))
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address or "local",  # never join a cluster the user did not name
        num_cpus=None if address else (workers or os.cpu_count()),
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=True,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}},
    )
    warnings.filterwarnings("ignore", module="ray.data")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False


def _dataset(stage_cls: type[Stage], config: RunConfig, run: Path, pending: list[Row]):
    import ray

    stage_config = getattr(config, stage_cls.name)
    res = stage_cls.resources
    batch = stage_cls.batch_size
    ds = ray.data.from_items(pending, override_num_blocks=max(1, math.ceil(len(pending) / batch)))
    cpus = ray.cluster_resources().get("CPU", 1)
    if res.uses_model:
        gpus = stage_config.gpus
        if gpus:  # one actor per GPU share; decoding gets every CPU the actors leave
            actors = config.workers or max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))
            actor_cpus = 1.0
        else:  # leave a CPU for the decode tasks: a pool that takes every CPU starves them
            actors = config.workers or max(1, int((cpus - 1) // max(res.cpus, 0.5)))
            actor_cpus = res.cpus
        if has_prepare(stage_cls):
            # Half a CPU per decode task: two share a core that the actors leave. The request
            # must differ from the actors' or Ray fuses both steps into the actor.
            ds = ds.map_batches(
                _prepare_batch,
                fn_args=(stage_cls, stage_config, str(run)),
                batch_size=batch,
                batch_format="pyarrow",
                num_cpus=PREPARE_CPUS,
            )
        return ds.map_batches(
            _ModelWorker,
            fn_constructor_args=(stage_cls, stage_config, str(run)),
            batch_size=batch,
            batch_format="pyarrow",
            num_cpus=actor_cpus,
            num_gpus=gpus or None,
            compute=ray.data.ActorPoolStrategy(size=actors),
        )
    return ds.map_batches(
        _run_batch,
        fn_args=(stage_cls, stage_config, str(run)),
        batch_size=batch,
        batch_format="pyarrow",
        num_cpus=res.cpus,
        compute=ray.data.TaskPoolStrategy(size=config.workers or max(1, int(cpus // res.cpus))),
    )


def run_stage(name: str, config: RunConfig, run: Path, retry_errors: bool = False) -> StageReport:
    stage_cls = STAGES[name]
    pending, done_before = pending_inputs(stage_cls, config, run, retry_errors)
    report = StageReport(name, len(pending), done_before)
    if not pending:
        print(f"{name}: nothing to do ({done_before} inputs done before)")
        return report
    start_ray(config.workers)
    started = time.perf_counter()
    bar = tqdm(total=len(pending), desc=f"{name:>8}", unit=spec(stage_cls.writes).key[0].split("_")[0], dynamic_ncols=True)
    for result in _dataset(stage_cls, config, run, pending).iter_rows():
        rows, errors = _from_ipc(result["rows"]), _from_ipc(result["errors"])
        store.write_part(run, stage_cls.writes, rows)
        store.write_part(run, "errors", errors)
        report.rows += rows.num_rows
        report.errors += errors.num_rows
        bar.update(result["n"])
        bar.set_postfix(rows=report.rows, failed=report.errors, refresh=False)
    bar.close()
    report.seconds = time.perf_counter() - started
    return report
