"""Run a chain of stages on Ray, all at once: a window flows on as soon as the stage before it wrote it.

Each stage streams its pending inputs from one SQL anti-join (inputs neither in its output table
nor in `errors`, nor in flight) and keeps a bounded number of batches in flight; while the
stages before it still run, it asks again whenever its last answer is used up. Workers write
their own manifest parts; the driver only counts, so its memory does not grow with the run.
Later stages are fed first, so finished windows leave the pipeline early instead of piling up.

CPU stages run as Ray tasks. Model stages run as actors that load the model once and run the
model only: CPU tasks before them decode and resize (`prepare`), CPU tasks after them finish each
input's rows (`finish`) and write the parts.

Failures: `BadInput` / `BadModelOutput` are final. Any other exception is retried in the worker,
item by item, up to `max_attempts`. A batch whose worker died (segfault, OOM kill) is split and
its items retried alone, so one input cannot fail its neighbours; an input whose worker died
`max_attempts` times gets an error row saying so, and the run goes on.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from manifests import store, views
from manifests.exits import STORAGE_ERRNOS
from manifests.filters import RULES, predicate
from pipeline import finished, placement
from pipeline.config import RunConfig
from pipeline.pool import ActorPool
from pipeline.progress import Progress
from stages.base import FINAL_ERRORS, Row, Stage, tables
from stages.kept import FRAMES, kept_clip_ids, kept_file
from stages.probe import sized, walk
from stages.video import use_cores

PREPARE_CPUS = 0.5
QUEUED_PER_ACTOR = 2  # batches waiting at each model actor, so it never waits on decoding
COMPACT_PARTS = 256  # a table with more parts than this is compacted while the run goes on
COMPACT_EVERY_S = 60.0
ASKED_KEYS = 100_000  # inputs of the final asks a stage keeps, to check at its end that none is pending
POLL_S = 2.0  # at least this long between two asks of a stage whose inputs are still being made
WALK_CHUNK = 65536  # files per anti-join with `videos` and `errors`: each scans their paths
WALKED = pa.schema([("path", pa.string()), ("kind", pa.string()), ("message", pa.string()), ("bytes", pa.int64())])


@dataclass
class StageReport:
    stage: str
    inputs: int = 0  # pending inputs processed this time
    done_before: int = 0
    rows: int = 0
    errors: int = 0  # inputs failed: an error row and no output
    warnings: int = 0  # handled: an error row, and the input still has its output (a caption whose subject list did not parse)
    seconds: float = 0.0  # first input submitted to last result
    first_result_s: float | None = None  # from the start of the command
    last_result_s: float | None = None
    actors: int = 0
    busy_s: float = 0.0  # model actors' processing time, all actors together
    gpus: float = 0.0  # each model actor's GPU share (0: on CPUs): busy_s x gpus is the stage's GPU time

    @property
    def utilisation(self) -> float | None:
        return self.busy_s / (self.actors * self.seconds) if self.actors and self.seconds else None


@dataclass
class Result:
    """What a worker reports back: counts only, the rows are in the parts it wrote."""

    n: int
    rows: int
    errors: int  # failed inputs
    busy_s: float = 0.0
    warnings: int = 0  # error rows of inputs that have their output rows too


# ---------------------------------------------------------------- in the workers


def build(stage_cls: type[Stage], config: RunConfig, chain: list[str], run: str) -> Stage:
    fused = {name: getattr(config, name) for name in stage_cls.fuses if name in chain}
    fed = {name: getattr(config, name) for name in stage_cls.feeds if name in chain}
    return stage_cls(getattr(config, stage_cls.name), Path(run), fused, fed)


def attempt(stage: Stage, items: list[Row], max_attempts: int) -> tuple[dict[str, list[Row]], list[Row], float]:
    """Process a batch; an item that fails with a retryable error is tried again alone.
    Also returns the seconds spent in `process_batch` (a model actor's busy time)."""
    started = time.perf_counter()
    made, errors = stage.process_batch(items)
    busy = time.perf_counter() - started
    rows = tables(stage.writes, made)
    keyed = {str(item[stage.input_key]): item for item in items}
    final = [e for e in errors if e["error_type"] in FINAL_ERRORS or e["key"] not in keyed]
    for error in (e for e in errors if e not in final):
        tries = 1
        while error is not None and error["error_type"] not in FINAL_ERRORS and tries < max_attempts:
            time.sleep(min(2.0, 0.1 * 2**tries))
            tries += 1
            started = time.perf_counter()
            again, new_errors = stage.process_batch([keyed[error["key"]]])
            busy += time.perf_counter() - started
            for table, more in tables(stage.writes, again).items():
                rows.setdefault(table, []).extend(more)
            error = next((e for e in new_errors if e["key"] == error["key"] and e["error_type"] not in FINAL_ERRORS), None)
            final += [e for e in new_errors if e is not error]
        if error is not None:
            final.append({**error, "attempts": tries, "message": f"{error['message']} (tried {tries} times)"})
    return tables(stage.writes, rows), final, busy


def write(run: Path, stage: Stage, rows: dict[str, list[Row]], errors: list[Row], n: int) -> Result:
    errors = [*errors, *rows.get("errors", [])]  # a stage's `finish` may give its error rows as a table
    for table, made in rows.items():  # fused tables first, the stage's own table last
        if table != "errors":
            store.write_part(run, table, made)
    store.write_part(run, "errors", errors)
    failed = {error["key"] for error in errors}  # inputs, as the summary counts them: one may have two error rows
    handled = failed & {str(row[stage.input_key]) for row in rows.get(stage.writes, [])}  # the summary's warnings
    return Result(n, len(rows.get(stage.writes, [])), len(failed - handled), warnings=len(handled))


def run_cpu_batch(job: tuple, items: list[Row]) -> Result:
    stage_cls, config, chain, run = job
    use_cores(max(1, int(stage_cls.resources.cpus)))
    stage = build(stage_cls, config, chain, run)
    stage.setup()
    rows, errors, _ = attempt(stage, items, config.max_attempts)
    return write(Path(run), stage, rows, errors, len(items))


def retried(stage: Stage, item: Row, call, max_attempts: int) -> tuple[object, Row | None]:
    """`call()`'s value, or None and the error row once it failed for good (final, or `max_attempts` times)."""
    tries = 1
    while True:
        try:
            return call(), None
        except Exception as exc:  # one bad input must not stop the others
            error = stage.error_row(item, exc)
            if error["error_type"] in FINAL_ERRORS or tries >= max_attempts:
                return None, {**error, "attempts": tries}
            tries += 1


def prepare_batch(job: tuple, items: list[Row]) -> tuple[list[Row], list[Row]]:
    """CPU side of a model stage before the model: decoded items, and error rows for those that cannot be."""
    stage_cls, config, chain, run = job
    use_cores(1)  # its share of a core
    stage = build(stage_cls, config, chain, run)
    ready, errors = [], []
    for item in items:
        prepared, error = retried(stage, item, lambda: stage.prepare(item), config.max_attempts)
        ready += [prepared] if error is None else []
        errors += [error] if error is not None else []
    return ready, errors


def finish_batch(job: tuple, output: tuple[dict[str, list[Row]], list[Row], float], n: int) -> Result:
    """CPU side of a model stage after the model: `finish` per input (its rows grouped by the input
    key; a failure is that input's error row), then the parts. Carries the actor's busy time."""
    stage_cls, config, chain, run = job
    use_cores(1)  # its share of a core
    stage = build(stage_cls, config, chain, run)
    rows, errors, busy_s = output
    per_input: dict[str, dict[str, list[Row]]] = {}
    for table, made in rows.items():
        for row in made:
            per_input.setdefault(str(row[stage.input_key]), {}).setdefault(table, []).append(row)
    finished: dict[str, list[Row]] = {}
    for key, mine in per_input.items():
        done, error = retried(stage, {stage.input_key: key}, lambda: stage.finish(mine), config.max_attempts)
        for table, made in (done or {}).items():
            finished.setdefault(table, []).extend(made)
        errors += [error] if error is not None else []
    result = write(Path(run), stage, tables(stage.writes, finished), errors, n)
    result.busy_s = busy_s
    return result


class ModelWorker:
    """Actor body for model stages: `setup` (the model load) runs once per actor; `process` runs
    the model only, and returns its rows for `finish_batch` to finish and write on a CPU."""

    def __init__(self, job: tuple):
        from model.curation.device import device

        stage_cls, self.config, chain, run = job
        self.stage = build(stage_cls, self.config, chain, run)
        if device() == "cpu":  # the CPU models of a chain share the cores
            import torch

            from pipeline.registry import STAGES

            models = sum(1 for name in chain if STAGES[name].resources.uses_model)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, models)))
        self.stage.setup()

    def ready(self) -> bool:
        """Answers once the actor (re)started: the driver picks it again."""
        return True

    def process(self, prepared: tuple[list[Row], list[Row]]) -> tuple[dict[str, list[Row]], list[Row], float]:
        ready, failed = prepared
        rows, errors, busy_s = attempt(self.stage, ready, self.config.max_attempts) if ready else ({}, [], 0.0)
        return rows, failed + errors, busy_s


# ---------------------------------------------------------------- on the driver


_STARTING = threading.Lock()  # held while Ray starts: a batch waits for a start begun in the background


def start_ray(workers: int | None) -> None:
    """Embedded local Ray by default; the cluster at RAY_ADDRESS when it is set."""
    with _STARTING:
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
            # A local Ray's workers inherit this process's environment; a runtime_env would add its
            # agent to every worker's start (about a second before the first task runs).
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}} if address else None,
        )
        warnings.filterwarnings("ignore", module="ray")
        # Workers import this module and the stages (about a second) while the driver plans, not at the first task.
        warm = ray.remote(warm_up_worker).options(num_cpus=1, max_retries=0)
        for _ in range(int(ray.cluster_resources().get("CPU", 1))):
            warm.remote()


def start_ray_soon(workers: int | None) -> None:
    """Start Ray in a background thread: its ~3 s, mostly spent waiting on its own processes,
    overlap the driver's start (imports, plan, first query); the first batch's `start_ray` waits
    for it, and raises what made it fail. The thread then idles while the process lives: Linux ties
    Ray's processes to the thread that started them (parent-death signal), so they end with it."""

    def start() -> None:
        try:
            start_ray(workers)
        except Exception:  # the first batch starts Ray again, and its error is the one raised
            return
        threading.Event().wait()

    if threading.current_thread() is threading.main_thread():  # as ray.init does there: SIGTERM exits through atexit, stopping Ray
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    threading.Thread(target=start, name="start-ray", daemon=True).start()


def stop_ray() -> None:
    """Shut down the Ray this process started or joined, after a start under way has ended."""
    with _STARTING:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()


def warm_up_worker() -> None:
    """Nothing to do: a worker running it has imported this module, and through it every stage."""


@dataclass
class Batch:
    items: list[Row]
    attempt: int = 1  # how often these items have been sent to a worker
    actor: int | None = None  # the model actor it was sent to (set by ActorPool.sent)
    life: int = 0  # which life of that actor
    order: int = 0  # when it was sent, among the stage's batches


def deciding(stage_cls: type[Stage], config: RunConfig, chain: list[str], run: Path) -> str:
    """SQL condition on the input `i` for being one of the stage's inputs at all: its needs and
    the filter rules that can be evaluated in this chain."""
    conditions = [stage_cls.needs or "TRUE"]
    if stage_cls.reads == "candidates":
        conditions.append(views.where(run, stage_cls.filters, config.filter, scoring=chain))
    return " AND ".join(f"({c})" for c in conditions)


def pending_sql(stage_cls: type[Stage], config: RunConfig, chain: list[str], run: Path, retry_errors: bool) -> str:
    """The stage's inputs that are neither done, nor failed (unless retried), nor in flight."""
    return pending_query(stage_cls, run, deciding(stage_cls, config, chain, run), retry_errors)


def pending_query(stage_cls: type[Stage], run: Path, decides: str, retry_errors: bool, only: str = "TRUE") -> str:
    """`pending_sql` for a given `deciding` condition, restricted to the inputs meeting `only`."""
    key = stage_cls.input_key
    conditions = [decides, only]
    if not stage_cls.whole:  # a whole stage's plan compares what it would write with what it wrote, and skips failures itself
        conditions.append(f'NOT EXISTS (SELECT 1 FROM {store.scan(run, stage_cls.writes)} o WHERE o."{key}" = i."{key}")')
        if not retry_errors:
            conditions.append(
                f"NOT EXISTS (SELECT 1 FROM {store.scan(run, 'errors')} e "
                f"WHERE e.stage = '{stage_cls.name}' AND e.key = CAST(i.\"{key}\" AS VARCHAR))"
            )
    conditions.append(f'CAST(i."{key}" AS VARCHAR) NOT IN (SELECT key FROM _inflight)')
    order = f' ORDER BY i."{"clip_id" if stage_cls.reads == "candidates" else key}"' if stage_cls.barrier else ""
    order = order or (f" ORDER BY {stage_cls.first}" if stage_cls.first else "")
    skip = [c for c in views.COSTLY if c not in stage_cls.wants] if stage_cls.reads == "candidates" else []
    columns = f"i.* EXCLUDE ({', '.join(skip)})" if skip else "i.*"
    columns = ", ".join(f'i."{c}"' for c in stage_cls.plan_columns) or columns
    return f"SELECT {columns} FROM {stage_cls.reads} i WHERE " + " AND ".join(f"({c})" for c in conditions) + order


class StageRun:
    """One stage of a running chain, as the driver sees it: a stream of pending inputs and batches in flight."""

    def __init__(self, stage_cls: type[Stage], config: RunConfig, chain: list[str], run: Path,
                 upstream: list[StageRun], retry_errors: bool, position: int, started: float, placer: placement.Placer):  # fmt: skip
        self.cls, self.config, self.chain, self.run, self.placer = stage_cls, config, chain, run, placer
        self.upstream, self.retry_errors, self.position, self.started = upstream, retry_errors, position, started
        self.report = StageReport(stage_cls.name)
        self.inflight: dict = {}  # ObjectRef -> Batch
        self.retry: deque[Batch] = deque()
        self.reader: Iterator[Row] | None = None
        self.next_poll = 0.0
        self.final_poll = False  # the current reader was opened after every stage before this one ended
        self.finished = False
        self.pool: ActorPool | None = None  # model stages' actors, once started
        self.pulled: list[Row] = []  # inputs taken from the stream for the batch being made
        self.job = None
        self.bar: Progress | None = None
        self.first_submit: float | None = None
        self.cpus: float | None = None
        self.results = 0  # batches finished: a stage after this one asks again only when it grew
        self.first_round: set = set()  # the batches sent before any came back
        self.upstream_seen = -1
        self.decides: str | None = None  # `deciding`, fixed for the run at the first ask
        self.tables: list[str] = []  # the tables that decide its inputs (`finished.input_tables`)
        self.digest = ""
        self.record = finished.load(run, stage_cls.name)
        self.final_parts: dict[str, list[str]] | None = None  # their parts when the last final ask opened
        self.asked: set[str] | None = set()  # inputs the final asks gave or found in flight; None: too many, or planned
        self.recorded = False  # `record` holds for the tables as they are now

    # -- inputs
    def upstream_done(self) -> bool:
        return all(u.finished for u in self.upstream)

    def capacity(self) -> int:
        if self.cls.resources.uses_model:
            return max(1, self.n_actors()) * QUEUED_PER_ACTOR
        if self.cpus is None:
            import ray

            if not ray.is_initialized():
                return 1  # until the first batch starts Ray
            self.cpus = ray.cluster_resources().get("CPU", 1)
        return max(1, int(self.cpus // max(self.cls.resources.cpus, 0.5)))

    def _open(self) -> Iterator[Row]:
        """A fresh stream of pending inputs (work items, after `plan`)."""
        self.final_poll = self.upstream_done()
        self.upstream_seen = self.upstream_results()
        if self.cls.reads == "sources":
            return self._sources()
        if self.decides is None:
            self.decides = deciding(self.cls, self.config, self.chain, self.run)
            self.tables = finished.input_tables(self.cls, self.decides)
            full = pending_query(self.cls, self.run, self.decides, self.retry_errors)
            self.digest = finished.digest(self.run, full, getattr(self.config, self.cls.name))
            if self.record is not None and (self.record.digest != self.digest or not store.has_rows(self.run, self.cls.writes)):
                self.record = None  # another ask, or its table deleted (to redo the stage): the full ask decides
        inflight = self._inflight_keys()
        if self.final_poll and self.asked is not None:
            self.asked.update(inflight.column("key").to_pylist())

        def execute() -> pa.RecordBatchReader | None:
            parts = store.snapshot(self.run, self.tables)  # here: a part quarantined by the last try is gone
            if self.final_poll:
                self.final_parts = parts
            only = finished.restriction(self.run, self.cls, self.record, parts)
            con = views.connect(self.run)
            con.register("_inflight", inflight)
            if self.cls.reads == "candidates" and only not in (None, "FALSE"):  # every input is a window: a row of `scenes`
                windows = con.sql(f"SELECT clip_id, video_id FROM scenes i WHERE {only} LIMIT {finished.CONSTANT_KEYS + 1}").fetchall()
                if not windows:  # the new parts name no window yet (a new video's, before its scenes row)
                    only = "FALSE"
                elif len(windows) <= finished.CONSTANT_KEYS and not self.cls.whole:  # an ask over those windows' rows alone
                    con = views.connect(self.run, windows)
                    con.register("_inflight", inflight)
            if self.cls.whole and only not in (None, "FALSE"):  # its plan needs every input, if the new parts touch one
                inputs = pending_query(self.cls, self.run, self.decides, self.retry_errors, only)
                touched = f"SELECT 1 FROM ({inputs}) UNION ALL SELECT 1 FROM {self.cls.writes} i WHERE {only}"
                only = None if con.sql(f"{touched} LIMIT 1").fetchall() else "FALSE"
            if only == "FALSE":  # nothing the inputs depend on changed since the record was written
                return None
            return con.sql(pending_query(self.cls, self.run, self.decides, self.retry_errors, only or "TRUE")).to_arrow_reader(4096)

        started = time.perf_counter()
        reader = store.guarded(self.run, execute)
        if reader is None:
            return iter(())
        self.next_poll = time.monotonic() + max(POLL_S, 10 * (time.perf_counter() - started))  # asking costs the driver at most a tenth
        rows = (row for batch in reader for row in batch.to_pylist())
        stage = build(self.cls, self.config, self.chain, str(self.run))
        return self._skip_failed(stage.plan(rows)) if self.cls.barrier else rows

    def _skip_failed(self, items: Iterator[Row]) -> Iterator[Row]:
        """Planned items (shards) that failed before are not planned again unless retried."""
        failed = set() if self.retry_errors else set(
            store.query(self.run, "SELECT key FROM errors WHERE stage = ?", [self.cls.name]).column("key").to_pylist()
        )  # fmt: skip
        return (item for item in items if str(item[self.cls.input_key]) not in failed)

    def _sources(self) -> Iterator[Row]:
        """Files under SRC not yet probed, the largest first (`Stage.first`): videos go to the stage,
        the rest become rows of `errors` here."""
        probe = self.config.probe
        for chunk in walk(Path(self.config.src), probe.extensions, WALK_CHUNK):
            walked = store.query(
                self.run,
                f"SELECT i.* FROM _walked i WHERE NOT EXISTS (SELECT 1 FROM {store.scan(self.run, 'videos')} v WHERE v.path = i.path) "
                f"AND NOT EXISTS (SELECT 1 FROM {store.scan(self.run, 'errors')} e WHERE e.stage = 'probe' AND e.key = i.path) "
                f"AND i.path NOT IN (SELECT key FROM _inflight)",
                tables={"_walked": pa.Table.from_pylist(chunk), "_inflight": self._inflight_keys()},
            ).to_pylist()
            if not walked:
                continue
            con = store.database()  # the new files only are stat'ed (`sized`), then ordered
            con.register("_new", pa.Table.from_pylist(sized(walked), schema=WALKED))
            new = con.sql(f"SELECT * FROM _new i ORDER BY {self.cls.first}").to_arrow_table().to_pylist()
            problems = [{"stage": "probe", "key": r["path"], "error_type": r["kind"], "message": r["message"], "attempts": 1}
                        for r in new if r["kind"] != "video"]  # fmt: skip
            store.write_part(self.run, "errors", problems)
            yield from ({"path": r["path"]} for r in new if r["kind"] == "video")

    def first_round_back(self) -> bool:
        return not self.first_round & self.inflight.keys()

    def upstream_results(self) -> int:
        return sum(u.results for u in self.upstream)

    def may_ask(self) -> bool:
        """Whether a new ask can find inputs the last one did not: the stages before it made more since."""
        if self.final_poll or time.monotonic() < self.next_poll:
            return False
        if self.cls.barrier:  # it plans over all its inputs: only once every stage before it ended
            return self.upstream_done()
        if self.cls.first and not all(u.finished or u.first_round_back() for u in self.upstream):
            return False  # costliest first: a stream opened on the first small batch back left the largest file to end the run alone
        return self.upstream_done() or self.upstream_results() > self.upstream_seen

    def pull(self, n: int) -> list[Row]:
        """Up to n pending inputs; opens a new stream when the last is used up and asking again may find more.

        The inputs taken so far count as in flight for that new stream: they are neither written
        nor sent yet, and an ask that did not see them in flight answered them again (issue 24:
        a stream that ran out in the middle of a batch gave a stage the same windows twice)."""
        items = self.pulled = []
        if self.cls.first and self.reader is not None and self.may_ask():
            self.forget_reader()  # the stages before made more since it was opened: those may come first
        while len(items) < n:
            if self.reader is None:
                if not self.may_ask():
                    break
                self.reader = self._open()
            try:
                items.append(next(self.reader))
                self.remember(items[-1])
            except StopIteration:
                self.reader = None
                if not self.final_poll:
                    continue
                break
        self.pulled = []
        return items

    def remember(self, item: Row) -> None:
        """Keep the key of an input a final ask gave: when the stage ends, only these can be pending."""
        if not self.final_poll or self.asked is None or self.cls.whole:  # a whole stage's plan skips what it wrote: done items leave none
            return
        if self.cls.barrier or len(self.asked) >= ASKED_KEYS:  # planned items are not input rows
            self.asked = None
        else:
            self.asked.add(str(item[self.cls.input_key]))

    def record_finished(self) -> None:
        """Write the stage's `finished` record when nothing is pending, checked on the inputs it
        was given since its last ask, over tables that have not changed since."""
        if self.cls.reads == "sources" or self.asked is None or self.final_parts is None:
            return
        if store.snapshot(self.run, self.tables) != self.final_parts:
            return
        if self.asked:
            sql = pending_query(self.cls, self.run, self.decides, self.retry_errors, f'CAST(i."{self.cls.input_key}" AS VARCHAR) IN (SELECT key FROM _asked)')
            asked = pa.table({"key": pa.array(sorted(self.asked), pa.string())})

            def execute() -> int:
                con = views.connect(self.run)
                con.register("_inflight", pa.table({"key": pa.array([], pa.string())}))
                con.register("_asked", asked)
                return len(con.sql(f"SELECT 1 FROM ({sql}) LIMIT 1").fetchall())

            if store.guarded(self.run, execute):
                return
        record = finished.Record(digest=self.digest, parts=self.final_parts)
        if self.record is None or self.record.parts != record.parts:
            finished.save(self.run, self.cls.name, record)
            self.record = record
        self.recorded = True

    def _inflight_keys(self) -> pa.Table:
        """Inputs sent to workers and not back yet, or taken for the next batch (a bounded number): no ask may return them again."""
        batches = [*self.inflight.values(), *self.retry, Batch(self.pulled)]
        return pa.table({"key": pa.array([str(i[self.cls.input_key]) for b in batches for i in b.items], pa.string())})

    # -- work
    def top_up(self) -> None:
        if self.finished:
            return
        if self.reader is None and not self.final_poll and self.upstream_done():
            self.next_poll = 0.0  # nothing upstream can add inputs any more: ask one last time now
        while len(self.inflight) < self.capacity():
            if self.pool is not None and self.pool.pick() is None:
                break  # every actor is restarting: its batches wait here, not at an actor
            if self.retry:
                batch = self.retry.popleft()
            else:
                items = self.pull(self.batch_size())
                if not items:
                    break
                batch = Batch(items)
                self.report.inputs += len(items)
            self.submit(batch)

    def batch_size(self) -> int:
        return placement.batch_size(self.cls, self.config)

    def n_actors(self) -> int:
        return len(self.pool.actors) if self.pool else 1  # one until the plan made the pool

    def submit(self, batch: Batch) -> None:
        start_ray(self.config.workers)
        import ray

        if self.first_submit is None:
            self.job = ray.put((self.cls, self.config, self.chain, str(self.run)))
            self.first_submit = time.perf_counter()
            self.bar = Progress(self.cls.name, self.position)
        if not self.cls.resources.uses_model:
            task = ray.remote(run_cpu_batch).options(num_cpus=self.cls.resources.cpus, max_retries=0)
            ref = task.remote(self.job, batch.items)
        else:
            self.warm_up()
            index = self.pool.pick()
            prepare = ray.remote(prepare_batch).options(num_cpus=PREPARE_CPUS, max_retries=0)
            finish = ray.remote(finish_batch).options(num_cpus=PREPARE_CPUS, max_retries=0)
            output = self.pool.actors[index].process.remote(prepare.remote(self.job, batch.items))
            self.pool.sent(batch, index)
            ref = finish.remote(self.job, output, len(batch.items))
        self.inflight[ref] = batch
        if not self.results:
            self.first_round.add(ref)

    def warm_up(self) -> None:
        """Start the model actors once this stage or one before it has work (so inputs may come):
        the model loads while the stages before it still work, not on the chain's critical path.

        Also on CPUs: loading at the stage's first input made each model stage wait for its load in
        turn, and the streaming chain took longer than running stage by stage (BENCHMARKS.md,
        curation). On a CPU-only machine the actors reserve no CPU (a fraction
        would leave less than one whole CPU for the tasks) and the OS shares the cores; with GPUs
        each actor holds its GPU share and CPUs as the placement plan says (`pipeline/placement.py`).
        """
        if self.pool or not self.cls.resources.uses_model or self.finished:
            return
        if self.first_submit is None and not any(u.first_submit for u in self.upstream):
            return
        import ray

        start_ray(self.config.workers)
        name = self.cls.name
        job = (self.cls, self.config, self.chain, str(self.run))  # by value: a restarted actor must find it
        worker = ray.remote(ModelWorker)
        self.pool = ActorPool([
            worker.options(**self.placer.actor_options(name, i), max_restarts=-1, max_task_retries=0).remote(job)
            for i in range(self.placer.placement(name).actors)
        ])  # fmt: skip

    def on_result(self, ref) -> None:
        import ray

        batch = self.inflight.pop(ref)
        if batch.actor is not None:
            self.pool.returned(batch)
        try:
            result: Result = ray.get(ref)
        except ray.exceptions.ActorUnavailableError as exc:  # restarting: the batch it ran, or one queued behind
            self.pool.unavailable(batch, exc)
        except ray.exceptions.RayError as exc:  # the worker died, or failed outside the stage's own code
            cause = exc
            while isinstance(cause, ray.exceptions.RayTaskError):  # a model stage's chain: prepare, model, finish
                cause = cause.cause
            if isinstance(cause, OSError) and cause.errno in STORAGE_ERRNOS:  # the run's disk: end the run, no error row
                raise cause from None
            if batch.actor is not None and isinstance(exc, ray.exceptions.ActorDiedError):
                self.pool.ended(batch.actor)
            self.failed(batch, exc)
        else:
            self.count(result)
        for lost, exc, died in self.pool.settled(self.inflight.values()) if self.pool else []:
            if died:
                self.failed(lost, exc)
            else:
                self.retry.appendleft(lost)  # it was only queued at the actor that died: not an attempt

    def count(self, result: Result) -> None:
        now = time.perf_counter()
        self.results += 1
        self.report.rows += result.rows
        self.report.errors += result.errors
        self.report.busy_s += result.busy_s
        self.report.first_result_s = self.report.first_result_s or now - self.started
        self.report.last_result_s = now - self.started
        self.report.warnings += result.warnings
        self.bar.update(result.n, self.report.rows, self.report.errors, self.report.warnings)

    def failed(self, batch: Batch, exc: Exception) -> None:
        """Split a failed batch; retry a lone input until it has been tried `max_attempts` times."""
        if len(batch.items) > 1:
            self.retry.extendleft(Batch([item], batch.attempt + 1) for item in batch.items)
        elif batch.attempt < self.config.max_attempts:
            self.retry.appendleft(Batch(batch.items, batch.attempt + 1))
        else:
            (item,) = batch.items
            import ray

            died = isinstance(exc, ray.exceptions.RayActorError | ray.exceptions.WorkerCrashedError)  # also when a task after it reports it
            why = "the worker died" if died or not isinstance(exc, ray.exceptions.RayTaskError) else "failed"
            message = f"{why} {batch.attempt} times on this input; last: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            row = {"stage": self.cls.name, "key": str(item[self.cls.input_key]), "error_type": "worker_died",
                   "message": message, "attempts": batch.attempt}  # fmt: skip
            store.write_part(self.run, "errors", [row])
            self.count(Result(1, 0, 1))

    def check_finished(self) -> None:
        if self.finished or self.inflight or self.retry or self.reader is not None or not self.final_poll:
            return
        self.finished = True
        self.record_finished()
        for actor in self.pool.actors if self.pool else []:
            import ray

            ray.kill(actor)
        self.report.actors = len(self.pool.actors) if self.pool else 0
        self.report.gpus = self.placer.placement(self.cls.name).gpus if self.pool else 0.0
        if self.first_submit is None:
            self.report.done_before = self.done_before()
            print(f"{self.cls.name}: nothing to do ({self.report.done_before} inputs done before)")
            return
        self.report.seconds = time.perf_counter() - self.first_submit
        self.bar.close()

    def forget_reader(self) -> None:
        """Drop the open stream (its rows are pending still, and come back on the next ask)."""
        if self.reader is not None:
            self.reader = None
            self.final_poll = False
            self.next_poll = 0.0

    def done_before(self) -> int:
        """Inputs done, from the stage's record while its output has the parts it had when counted
        (a count over the whole output table takes seconds at ten million windows)."""
        if not self.recorded:
            return self.done_count()
        output = store.snapshot(self.run, [self.cls.writes])[self.cls.writes]
        if self.record.output != output or self.record.done is None:
            self.record = self.record.model_copy(update={"output": output, "done": self.done_count()})
            finished.save(self.run, self.cls.name, self.record)
        return self.record.done

    def done_count(self) -> int:
        key = self.cls.input_key
        if self.cls.reads == "sources":
            return store.query(self.run, "SELECT count(DISTINCT path) AS n FROM (SELECT path FROM videos)").column("n")[0].as_py()
        return store.query(self.run, f'SELECT count(DISTINCT "{key}") AS n FROM {self.cls.writes}').column("n")[0].as_py()


def run_chain(classes: list[type[Stage]], config: RunConfig, run: Path, retry_errors: bool = False) -> list[StageReport]:
    """Run the stages together; each starts when its first inputs exist and ends when no more can come."""
    started = time.perf_counter()
    chain = [cls.name for cls in classes]
    stages: list[StageRun] = []
    placer = placement.Placer(classes, config)
    for position, cls in enumerate(classes):
        stages.append(StageRun(cls, config, chain, run, list(stages), retry_errors, position, started, placer))
    compacted_at = time.monotonic()
    while not all(s.finished for s in stages):
        if time.monotonic() - compacted_at > COMPACT_EVERY_S:
            compact_many(run, stages)
            sweep_kept_frames(run, classes, config, chain)
            compacted_at = time.monotonic()
        for stage in reversed(stages):  # later stages first: Ray runs queued tasks in order
            stage.top_up()
        for stage in stages:  # load the models of the stages still to come
            stage.warm_up()
        owners = {ref: s for s in stages for ref in s.inflight}
        if owners:
            import ray

            ready, _ = ray.wait(list(owners), num_returns=1, timeout=0.5)
            ready, _ = ray.wait(list(owners), num_returns=len(owners), timeout=0) if ready else (ready, None)
            for ref in ready:
                owners[ref].on_result(ref)
        else:
            waiting = [s.next_poll for s in stages if not s.finished and s.reader is None and s.may_ask()]
            time.sleep(max(0.0, min(waiting, default=time.monotonic() + 0.05) - time.monotonic()))
        for stage in stages:
            if not stage.finished:
                stage.check_finished()
                if stage.finished and stage.first_submit is not None:  # its table is complete: one part
                    compact(run, stages, [stage.cls.writes, *stage.cls.fuses])
    placer.release()
    compact(run, stages, ["errors"])
    # Every stage that reads the frames a scene pass kept has ended: a later run decodes what it needs.
    shutil.rmtree(Path(run) / FRAMES, ignore_errors=True)
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    store.write_part(run, "stage_runs", [_stage_row(stamp, s.report) for s in stages if s.report.inputs])
    return [s.report for s in stages]


def compact(run: Path, stages: list[StageRun], tables: list[str]) -> None:
    """Compact tables while the run goes on: open streams are dropped first, since a compaction
    deletes parts a stream may not have read yet. Not while a barrier stage plans: its stream is
    its plan, and dropping it midway would plan the same inputs twice (it compacts when it ends)."""
    if any(s.cls.barrier and s.reader is not None for s in stages):
        return
    for stage in stages:
        stage.forget_reader()
    for table in tables:
        store.compact(run, table)


def sweep_kept_frames(run: Path, classes: list[type[Stage]], config: RunConfig, chain: list[str]) -> int:
    """Remove the frames a decode kept for windows that no reader of the chain will read: each has
    a row for it, or one of its filter rules was decided against it, or a stage failed on it. A
    reader that finds frames gone decodes them, so this only has to be right most of the time."""
    from pipeline.registry import STAGES

    removed = 0
    for producer in classes:
        readers = [STAGES[name] for name in producer.feeds if name in chain]
        keys = kept_clip_ids(run, producer.name) if readers else []
        if not keys:
            continue

        def has_row(table: str) -> str:
            return f"EXISTS (SELECT 1 FROM {table} o WHERE o.clip_id = i.clip_id)"

        def settled(reader: type[Stage]) -> str:
            scored = {rule: RULES[rule][0] for rule in views.active_rules(run, reader.filters, chain)}
            rejected = [f"({has_row(STAGES[stage].writes) if stage else 'TRUE'} AND NOT {predicate(rule, config.filter)})"
                        for rule, stage in scored.items()]  # fmt: skip
            return "(" + " OR ".join([has_row(reader.writes), *rejected]) + ")"

        failed = "EXISTS (SELECT 1 FROM errors e WHERE e.key = i.clip_id)"
        sql = f"SELECT i.clip_id FROM candidates i WHERE {failed} OR " + " AND ".join(map(settled, readers))

        def execute() -> list[str]:
            """Asked on a connection whose tables hold only the kept windows' rows (`views.connect`):
            joining every table of the run for them took 44 s at 10M windows."""
            settled_ids = []
            for start in range(0, len(keys), finished.CONSTANT_KEYS):
                ids = ", ".join(map(store.literal, keys[start : start + finished.CONSTANT_KEYS]))
                windows = views.connect(run).sql(f"SELECT clip_id, video_id FROM scenes WHERE clip_id IN ({ids})").fetchall()
                settled_ids += views.connect(run, windows).sql(sql).to_arrow_table().column("clip_id").to_pylist()
            return settled_ids

        for clip_id in store.guarded(run, execute):
            kept_file(run, producer.name, clip_id).unlink(missing_ok=True)
            removed += 1
    return removed


def compact_many(run: Path, stages: list[StageRun]) -> None:
    """The tables whose parts piled up (a long stage writes one per batch), so asks stay fast."""
    crowded = [t for t in {s.cls.writes for s in stages} | {"errors"} if len(store.parts(run, t)) > COMPACT_PARTS]
    if crowded:
        compact(run, stages, crowded)


def _stage_row(stamp: str, r: StageReport) -> Row:
    return {
        "run_started": stamp, "stage": r.stage, "inputs": r.inputs, "done_before": r.done_before, "rows": r.rows,
        "errors": r.errors, "seconds": r.seconds, "first_result_s": r.first_result_s, "last_result_s": r.last_result_s,
        "actors": r.actors or None, "busy_s": r.busy_s if r.actors else None, "utilisation": r.utilisation,
        "gpus": r.gpus if r.actors else None,
    }  # fmt: skip
