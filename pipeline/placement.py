"""Where a chain's model stages run: a GPU share, an actor count and a batch size per stage.

Where Ray sees GPUs, every GPU model stage gets one actor on every GPU by default, its share of
each GPU in proportion to its memory need at the full profile (`Resources.gpu_memory_gb`), so all
model stages of the chain are resident at once and none waits for another to end. Each GPU is one
placement-group bundle, and each actor is pinned to the bundle the plan packed it in: Ray's own
packing of fractional shares, actor by actor as stages start, can strand a share no GPU has left.
`gpus`, `actors` and `batch_size` in a stage's config override the plan; a plan that asks for more
than the cluster has is refused, naming the stage. A CPU model stage (`gpu_memory_gb` 0, like
`screen`) gets one actor per `CPUS_PER_CPU_ACTOR` CPUs. Without GPUs every stage is a CPU stage,
and a stage of one actor reserves no CPU (the OS shares the cores with the tasks, as it always did).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.config import RunConfig
from stages.base import Stage

ACTOR_CPU_SHARE = 0.5  # at most this share of the cluster's CPUs is reserved by GPU actors; the rest decode
CPUS_PER_CPU_ACTOR = 4  # a CPU model stage gets one actor per this many CPUs
EPS = 1e-9


@dataclass(frozen=True)
class StageNeed:
    """What the plan knows of one model stage: its need and its config's overrides."""

    name: str
    gpu_memory_gb: float  # at the full profile; 0: a model that runs on CPUs
    batch_size: int  # the stage's own default
    gpus: float | None = None  # overrides, from the stage's config
    actors: int | None = None
    batch_override: int | None = None


@dataclass(frozen=True)
class Placement:
    stage: str
    gpus: float  # GPU share per actor (0: on CPUs)
    actors: int
    cpus: float  # CPUs each actor reserves
    batch_size: int
    bundles: tuple[int, ...] = ()  # the placement-group bundle (GPU) of each actor, when on GPUs


@dataclass(frozen=True)
class Plan:
    stages: dict[str, Placement]
    bundles: list[dict[str, float]] = field(default_factory=list)  # one per GPU (or per multi-GPU actor)

    def table(self) -> str:
        """The plan as a few lines for the start of a run."""
        lines = [f"{'stage':>9}  {'actors':>6}  {'GPU each':>8}  {'CPU each':>8}  {'batch':>5}"]
        for p in self.stages.values():
            lines.append(f"{p.stage:>9}  {p.actors:>6}  {p.gpus:>8.4g}  {p.cpus:>8.3g}  {p.batch_size:>5}")
        gpus = sum(b["GPU"] for b in self.bundles)
        on_gpu = sum(1 for p in self.stages.values() if p.gpus)
        lines.append(f"placement: {on_gpu} of {len(self.stages)} model stages on {gpus:g} GPU(s)" if gpus else "placement: model stages on CPUs")
        return "\n".join(lines)


class PlanError(ValueError):
    """The overrides ask for more than the cluster has."""


def plan(needs: list[StageNeed], cluster_gpus: float, cluster_cpus: float) -> Plan:
    gpus = int(cluster_gpus + EPS)
    if not gpus and any(n.gpus for n in needs):
        raise PlanError(f"{', '.join(n.name for n in needs if n.gpus)} set GPUs (`gpus`); the cluster has none")
    on_gpu = [n for n in needs if gpus and n.gpu_memory_gb > 0 and n.gpus != 0]
    counts = {n.name: n.actors or max(1, gpus // math.ceil((n.gpus or 1) - EPS)) for n in on_gpu}
    shares = _shares(on_gpu, counts, gpus)
    asked = sum(shares[name] * count for name, count in counts.items())
    if asked > gpus + 1e-6:
        raise PlanError(f"the model stages ask for {asked:g} GPUs ({_listed(shares, counts)}); the cluster has {gpus}")
    bins, bundles = _pack(shares, counts, gpus)
    gpu_actors = sum(counts.values())
    gpu_cpus = max(0.01, min(1.0, math.floor(100 * ACTOR_CPU_SHARE * cluster_cpus / max(1, gpu_actors)) / 100))
    for index, bundle in enumerate(bundles):
        bundle["CPU"] = round(gpu_cpus * sum(b.count(index) for b in bins.values()), 4)
    placed: dict[str, Placement] = {}
    for n in needs:
        batch = n.batch_override or n.batch_size
        if n.name in counts:
            placed[n.name] = Placement(n.name, shares[n.name], counts[n.name], gpu_cpus, batch, tuple(bins[n.name]))
        else:
            actors = n.actors or (max(1, int(cluster_cpus // CPUS_PER_CPU_ACTOR)) if n.gpu_memory_gb == 0 else 1)
            placed[n.name] = Placement(n.name, 0.0, actors, 1.0 if actors > 1 else 0.0, batch)
    return Plan(placed, bundles)


def _shares(on_gpu: list[StageNeed], counts: dict[str, int], gpus: int) -> dict[str, float]:
    """GPU share per actor: an override as given; what the overrides leave, split among the other
    stages' actors by memory need (at most one GPU each)."""
    fixed = {n.name: float(n.gpus) for n in on_gpu if n.gpus is not None}
    auto = [n for n in on_gpu if n.gpus is None]
    pool = gpus - sum(share * counts[name] for name, share in fixed.items())
    if auto and pool <= EPS:
        raise PlanError(f"the GPU shares set ({_listed(fixed, counts)}) leave no GPU for {', '.join(n.name for n in auto)}")
    total = sum(n.gpu_memory_gb * counts[n.name] for n in auto)
    # Ray counts GPU shares in units of 1e-4: round down so the shares on one GPU never add up to more than it.
    return {**fixed, **{n.name: math.floor(1e4 * min(1.0, pool * n.gpu_memory_gb / total)) / 1e4 for n in auto}}


def _pack(shares: dict[str, float], counts: dict[str, int], gpus: int) -> tuple[dict[str, list[int]], list[dict[str, float]]]:
    """Each actor's bundle, first fit by decreasing share: a share of a GPU goes on the first GPU with
    room, an actor of whole GPUs gets a bundle of its own."""
    bins: dict[str, list[int]] = {name: [] for name in shares}
    bundles: list[dict[str, float]] = []
    room: list[float] = []  # free share of each one-GPU bundle
    whole = sum(math.ceil(shares[name] - EPS) * counts[name] for name in shares if shares[name] > 1)
    singles = gpus - whole
    for name in sorted(shares, key=lambda s: (-shares[s], s)):
        for _ in range(counts[name]):
            if shares[name] > 1:
                bins[name].append(len(bundles))
                bundles.append({"GPU": float(math.ceil(shares[name] - EPS))})
                room.append(0.0)
                continue
            index = next((i for i, free in enumerate(room) if free >= shares[name] - EPS), None)
            if index is None:
                if sum(1 for b in bundles if b["GPU"] == 1.0) >= singles:
                    raise PlanError(f"{name}'s actors do not fit on the cluster's {gpus} GPUs ({_listed(shares, counts)})")
                index = len(bundles)
                bundles.append({"GPU": 1.0})
                room.append(1.0)
            room[index] -= shares[name]
            bins[name].append(index)
    return bins, bundles


def _listed(shares: dict[str, float], counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {counts[name]} x {share:g}" for name, share in shares.items())


def batch_size(stage_cls: type[Stage], config: RunConfig) -> int:
    """Inputs per call: the stage config's `batch_size` when set, else the stage's own."""
    return getattr(getattr(config, stage_cls.name), "batch_size", None) or stage_cls.batch_size


def needs(classes: list[type[Stage]], config: RunConfig) -> list[StageNeed]:
    """The chain's model stages as the plan sees them."""
    found = []
    for cls in (c for c in classes if c.resources.uses_model):
        own = getattr(config, cls.name)  # a ModelStageConfig; read loosely, as test stages reuse CPU stages' configs
        overrides = [getattr(own, field, None) for field in ("gpus", "actors", "batch_size")]
        found.append(StageNeed(cls.name, cls.resources.gpu_memory_gb, cls.batch_size, *overrides))
    return found


class Placer:
    """The chain's plan on the Ray it runs on, made once the first model actor is wanted: printed,
    and with its placement group (one bundle per GPU) held until `release`."""

    def __init__(self, classes: list[type[Stage]], config: RunConfig):
        self.needs = needs(classes, config)
        self.plan: Plan | None = None
        self.group = None

    def placement(self, stage: str) -> Placement:
        if self.plan is None:
            import ray

            resources = ray.cluster_resources()
            self.plan = plan(self.needs, resources.get("GPU", 0), resources.get("CPU", 1))
            print(self.plan.table())
            if self.plan.bundles:
                self.group = ray.util.placement_group(self.plan.bundles, strategy="PACK")
        return self.plan.stages[stage]

    def actor_options(self, stage: str, index: int) -> dict:
        """Ray options of the stage's actor `index`: its GPU share pinned to the bundle the plan packed it in."""
        p = self.placement(stage)
        options = {"num_cpus": p.cpus, "num_gpus": p.gpus or None}
        if p.bundles:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=p.bundles[index])
        return options

    def release(self) -> None:
        if self.group is not None:
            import ray

            ray.util.remove_placement_group(self.group)
            self.group = None
