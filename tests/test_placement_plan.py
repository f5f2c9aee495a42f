"""The placement plan alone (no Ray): every GPU model stage on every GPU at once, shares by memory need, overrides, never more than the cluster."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.placement import PlanError, StageNeed, needs, plan
from pipeline.registry import STAGES

CHAIN = [STAGES[name] for name in ["probe", "scenes", "aesthetic", "screen", "clips", "caption", "subjects"]]


def _needs(*overrides: str) -> list[StageNeed]:
    return needs(CHAIN, load_config(None, list(overrides)))


def _used(p, gpus: int) -> list[float]:
    """GPU share taken on each GPU (bundle), from each actor's bundle."""
    taken = [0.0] * len(p.bundles)
    for placed in p.stages.values():
        for bundle in placed.bundles:
            taken[bundle] += placed.gpus
    assert len(p.bundles) <= gpus
    return taken


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_every_gpu_model_stage_gets_an_actor_on_every_gpu(gpus):
    p = plan(_needs(), gpus, 8 * gpus)
    on_gpu = {name: placed for name, placed in p.stages.items() if placed.gpus}
    assert set(on_gpu) == {"aesthetic", "caption", "subjects"}  # screen's models run on CPUs
    for placed in on_gpu.values():
        assert placed.actors == gpus and sorted(placed.bundles) == list(range(gpus))  # one on each GPU
    assert on_gpu["caption"].gpus > on_gpu["subjects"].gpus > on_gpu["aesthetic"].gpus  # by memory need
    assert all(0.99 <= used <= 1.0 for used in _used(p, gpus))  # each GPU used whole, never more
    assert sum(b["CPU"] for b in p.bundles) <= 8 * gpus / 2 + 1e-9  # half the CPUs stay for the tasks
    assert p.stages["screen"].actors == 2 * gpus and p.stages["screen"].cpus == 1  # scales with CPUs
    assert p.stages["caption"].batch_size == STAGES["caption"].batch_size


def test_without_gpus_every_model_stage_is_one_cpu_actor_as_before():
    p = plan(_needs(), 0, 2)
    assert not p.bundles
    assert {(q.actors, q.gpus, q.cpus) for q in p.stages.values()} == {(1, 0.0, 0.0)}
    assert p.stages["screen"].actors == 1  # a laptop's 2 cores: one actor
    assert plan(_needs(), 0, 32).stages["screen"].actors == 8


def test_overrides_win_and_the_rest_share_what_is_left():
    p = plan(_needs("caption.gpus=0.5", "subjects.actors=4", "aesthetic.batch_size=32", "screen.actors=3"), 2, 16)
    assert p.stages["caption"].gpus == 0.5 and p.stages["caption"].actors == 2
    assert p.stages["subjects"].actors == 4 and p.stages["aesthetic"].batch_size == 32
    assert p.stages["screen"].actors == 3
    assert all(used <= 1.0 for used in _used(p, 2))
    # A stage kept off the GPUs runs as one CPU actor; a stage of whole GPUs gets bundles of its own.
    off = plan(_needs("caption.gpus=0"), 2, 16)
    assert off.stages["caption"].gpus == 0 and off.stages["caption"].actors == 1 and off.stages["subjects"].actors == 2
    whole = plan(_needs("caption.gpus=2", "subjects.gpus=0", "aesthetic.gpus=0"), 4, 16)
    assert whole.stages["caption"].actors == 2 and whole.bundles == [{"GPU": 2.0, "CPU": 1.0}, {"GPU": 2.0, "CPU": 1.0}]


def test_a_plan_never_asks_for_more_than_the_cluster_has():
    with pytest.raises(PlanError, match="ask for 3 GPUs.*the cluster has 2"):
        plan(_needs("caption.gpus=1", "caption.actors=3", "subjects.gpus=0", "aesthetic.gpus=0"), 2, 16)
    with pytest.raises(PlanError, match="leave no GPU for aesthetic, subjects"):
        plan(_needs("caption.gpus=1"), 2, 16)
    with pytest.raises(PlanError, match="caption set GPUs .* the cluster has none"):
        plan(_needs("caption.gpus=1"), 0, 16)
    with pytest.raises(PlanError, match="do not fit"):  # 3 x 0.6 fits 2 GPUs' sum, not their halves
        plan(_needs("caption.gpus=0.6", "caption.actors=3", "subjects.gpus=0", "aesthetic.gpus=0"), 2, 16)
