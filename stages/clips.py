"""clips: encode the windows that pass the filters so far as H.264 files, frame-exact.

Discarded windows cost no encoding. A clip is written under a temporary name and renamed, so a
killed run leaves no half-written file; its id, and so its path, depend only on the video and span.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from manifests.files import atomic_path
from stages.base import BadInput, Row, Stage, StageConfig
from stages.video import encode_mp4, iter_frames, rotate_upright


class ClipsConfig(StageConfig):
    crf: int = 18
    preset: str = "veryfast"


def clip_path(video_id: str, clip_id: str) -> Path:
    """Relative to the run folder."""
    return Path("clips") / video_id / f"{clip_id}.mp4"


class Clips(Stage):
    name = "clips"
    reads = "candidates"
    writes = "clips"
    input_key = "clip_id"
    filters = ("duration", "resolution", "motion", "aesthetic", "text", "nsfw")
    Config = ClipsConfig

    def process(self, item: Row) -> list[Row]:
        start, end = item["start_frame"], item["end_frame"]
        relative = clip_path(item["video_id"], item["clip_id"])
        final = self.run_dir / relative
        frames = iter_frames(
            item["video_path"], start_frame=start, start_pts=item["start_pts"], end_frame=end, fmt="rgb24"
        )
        upright = (rotate_upright(f.image, item["rotation"]) for f in frames)
        fps = Fraction(item["fps"]).limit_denominator(1001)
        with atomic_path(self.run_dir, final) as tmp:
            written = encode_mp4(tmp, upright, fps, crf=self.config.crf, preset=self.config.preset)
            if written != end - start:
                raise BadInput(f"{item['video_path']}: frames {start}..{end}: only {written} decode (truncated?)")
        width, height = item["width"], item["height"]
        if item["rotation"] % 180:
            width, height = height, width
        return [
            {
                "clip_id": item["clip_id"],
                "video_id": item["video_id"],
                "path": str(relative),
                "start_frame": start,
                "end_frame": end,
                "n_frames": written,
                "fps": float(fps),
                "width": width - width % 2,
                "height": height - height % 2,
                "bytes": final.stat().st_size,
            }
        ]
