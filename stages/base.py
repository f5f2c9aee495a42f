"""The stage contract: what a stage reads, writes and needs, and a pure batch function.

A stage knows nothing of Ray, of other stages' files or of the command line. The runner hands it
input rows (dicts from a manifest view) and writes what it returns. One input that fails becomes
one error row with a message a person understands; the other inputs go on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from manifests.exits import STORAGE_ERRNOS


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelStageConfig(StageConfig):
    """What every model stage has: where its weights are, and how its actors are placed."""

    gpus: float | None = None  # GPU share per model actor; None: the placement plan decides (0 where Ray sees no GPU)
    actors: int | None = None  # model actors of this stage; None: the placement plan decides
    batch_size: int | None = None  # inputs per model call; None: the stage's own default
    random_weights: bool = False  # set by the tiny profile: outputs are marked as meaningless

    def weights(self) -> dict[str, tuple[str, str | None]]:
        """name -> (hub id or local folder, file inside it or None for the whole folder)."""
        raise NotImplementedError


class BadInput(Exception):
    """An input this stage cannot use; the message is shown to the user as it is."""


class BadModelOutput(Exception):
    """A model answered something unusable (empty, unparsable, nothing found); recorded, never a crash."""


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    uses_model: bool = False  # run as an actor pool that loads the model once per actor
    gpu_memory_gb: float = 0.0  # a model actor's GPU memory at the full profile (weights and batch); 0: a CPU model


Row = dict[str, Any]
Rows = list[Row] | dict[str, list[Row]]  # rows of `writes`, or rows per table for a stage that fuses others


class Stage:
    name: ClassVar[str]
    reads: ClassVar[str]  # a manifest view: "sources", "videos", "candidates", ...
    writes: ClassVar[str]  # the manifest table it fills
    input_key: ClassVar[str]  # input column that identifies an item; output rows carry it too
    filters: ClassVar[tuple[str, ...]] = ()  # filter rules applied to the input, if their scores exist
    needs: ClassVar[str] = ""  # SQL condition on the input view: what an earlier stage must have made first
    wants: ClassVar[tuple[str, ...]] = ()  # costly input columns it reads (views.COSTLY); the others get none
    fuses: ClassVar[tuple[str, ...]] = ()  # later stages whose work this one does in the same pass when both run
    feeds: ClassVar[tuple[str, ...]] = ()  # later stages whose frames this one's decode keeps when both run
    barrier: ClassVar[bool] = False  # plans over all its inputs at once: starts when the stages before it end
    whole: ClassVar[bool] = False  # a barrier whose rows depend on the set of its inputs: asked for all of them, done or not
    # The input columns a barrier's plan reads (empty: every column): its ask sorts every input by key,
    # and whole rows of ten million windows did not fit the sort's memory
    plan_columns: ClassVar[tuple[str, ...]] = ()
    first: ClassVar[str] = ""  # SQL order of its pending inputs `i`, costliest first: a long one started last runs alone at the end
    resources: ClassVar[Resources] = Resources()
    batch_size: ClassVar[int] = 1
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(
        self, config: StageConfig, run_dir: Path, fused: dict[str, StageConfig] | None = None, fed: dict[str, StageConfig] | None = None
    ):  # fmt: skip
        self.config = config
        self.run_dir = Path(run_dir)
        self.fused = fused or {}  # configs of the `fuses` stages that run in this chain
        self.fed = fed or {}  # configs of the `feeds` stages that run in this chain
        self.timings: defaultdict[str, float] = defaultdict(float)

    def setup(self) -> None:
        """Load what is expensive (a model) once per worker."""

    def plan(self, items: Iterable[Row]) -> Iterator[Row]:
        """Input rows (in key order for a barrier stage) -> work items, on the driver; one per row unless a stage groups them."""
        yield from items

    def prepare(self, item: Row) -> Row:
        """CPU-side work before the model (decode and resize frames), run in separate CPU tasks.

        Pure and model-free, so the runner can run it apart from the model actors: on a GPU
        cluster the model then never waits on decoding. Values may be numpy arrays.
        """
        return item

    @contextmanager
    def timed(self, phase: str):
        """Add the seconds spent in `phase` to `self.timings` (read by the benchmark)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - started

    def process(self, item: Row) -> Rows:
        raise NotImplementedError

    def finish(self, rows: dict[str, list[Row]]) -> dict[str, list[Row]]:
        """CPU-side work after the model for one input's rows (mask post-processing, encodings,
        file writes), run in a CPU task so a GPU actor does tensor work only. Identity by default."""
        return rows

    def process_batch(self, items: list[Row]) -> tuple[Rows, list[Row]]:
        """Output rows and error rows. Batched models override this and keep per-item errors."""
        rows: dict[str, list[Row]] = defaultdict(list)
        errors: list[Row] = []
        for item in items:
            try:
                for table, made in tables(self.writes, self.process(item)).items():
                    rows[table].extend(made)
            except Exception as exc:  # one bad input must not stop the others
                errors.append(self.error_row(item, exc))
        return dict(rows), errors

    def error_row(self, item: Row, exc: BaseException) -> Row:
        return error_row(self.name, str(item[self.input_key]), exc)


def tables(writes: str, rows: Rows) -> dict[str, list[Row]]:
    """Rows per table, the fused tables first: a stage's own rows are written last, so a window
    that later stages can see already has the rows made in the same pass."""
    if not isinstance(rows, dict):
        return {writes: list(rows)}
    return {**{t: r for t, r in rows.items() if t != writes}, writes: rows.get(writes, [])}


FINAL_ERRORS = ("bad_input", "bad_model_output")  # anything else is retried


def error_row(stage: str, key: str, exc: BaseException) -> Row:
    """The row of one input that failed. A failure of the run folder's own storage (disk full,
    read-only) is no input's fault: it is raised again, to end the run with one clear line."""
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        raise exc
    if isinstance(exc, BadInput):
        error_type, message = "bad_input", str(exc)
    elif isinstance(exc, BadModelOutput):
        error_type, message = "bad_model_output", str(exc)
    else:
        error_type, message = type(exc).__name__, f"{type(exc).__name__}: {exc}"
    return {"stage": stage, "key": key, "error_type": error_type, "message": message, "attempts": 1}
