"""Stage names to classes, in chain order; `encode` (for training, `make encode`) comes after the chain."""

from stages.aesthetic import Aesthetic
from stages.base import Stage
from stages.caption import Caption
from stages.clips import Clips
from stages.dedup import Dedup
from stages.encode import Encode
from stages.identities import Identities
from stages.motion import Motion
from stages.probe import Probe
from stages.scenes import Scenes
from stages.screen import Screen
from stages.shards import Shards
from stages.subjects import Subjects

STAGES: dict[str, type[Stage]] = {
    cls.name: cls for cls in [Probe, Scenes, Motion, Aesthetic, Screen, Clips, Caption, Subjects, Dedup, Identities, Shards, Encode]
}
