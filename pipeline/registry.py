"""Stage names to classes, in chain order."""

from stages.base import Stage
from stages.clips import Clips
from stages.motion import Motion
from stages.probe import Probe
from stages.scenes import Scenes

STAGES: dict[str, type[Stage]] = {cls.name: cls for cls in [Probe, Scenes, Motion, Clips]}
