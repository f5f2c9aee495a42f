"""clips: encode the windows that pass the filters so far as H.264 files, frame-exact.

Discarded windows cost no encoding. A clip is written under a temporary name and renamed, so a
killed run leaves no half-written file; its id, and so its path, depend only on the video and span.
With `caption` or `subjects` in the chain, the same decode keeps the frames they read (`stages.kept`),
so they decode nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

from pydantic import Field

from manifests.files import atomic_path
from manifests.filters import rules_through
from stages.base import BadInput, Row, Stage, StageConfig
from stages.kept import has_room, keep
from stages.video import Frame, as_kept, encode_mp4, iter_frames, rotate_upright, spread


class ClipsConfig(StageConfig):
    crf: int = Field(18, ge=0, le=51)  # x264's range
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] = "veryfast"


def clip_path(video_id: str, clip_id: str) -> Path:
    """Relative to the run folder."""
    return Path("clips") / video_id / f"{clip_id}.mp4"


class Clips(Stage):
    name = "clips"
    reads = "candidates"
    writes = "clips"
    input_key = "clip_id"
    filters = rules_through("nsfw")
    feeds = ("caption", "subjects")
    Config = ClipsConfig

    def process(self, item: Row) -> list[Row]:
        start, end = item["start_frame"], item["end_frame"]
        relative = clip_path(item["video_id"], item["clip_id"])
        final = self.run_dir / relative
        frames = iter_frames(
            item["video_path"], start_frame=start, start_pts=item["start_pts"], end_frame=end, fmt="rgb24"
        )
        counts = {cfg.clip_request() for cfg in self.fed.values()} if self.fed and has_room(self.run_dir, self.name) else set()
        picks = {count: spread(0, end - start, count) for count in counts}
        kept: dict[int, bytes] = {}
        fps = Fraction(item["fps"]).limit_denominator(1001)
        with atomic_path(self.run_dir, final) as tmp:
            upright = self.upright(frames, item["rotation"], start, {i for chosen in picks.values() for i in chosen}, kept)
            written = encode_mp4(tmp, upright, fps, crf=self.config.crf, preset=self.config.preset)
            if written != end - start:
                raise BadInput(f"{item['video_path']}: frames {start}..{end}: only {written} decode (truncated?)")
        keep(self.run_dir, self.name, item["clip_id"], {(count, i): kept[i] for count, chosen in picks.items() for i in chosen})
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

    @staticmethod
    def upright(frames: Iterator[Frame], rotation: int, start: int, wanted: set[int], kept: dict[int, bytes]) -> Iterator:
        """The frames to encode; those at `wanted` clip indices also go to `kept` as the clip file shows them."""
        for frame in frames:
            if frame.index - start in wanted:
                kept[frame.index - start] = as_kept(frame.image, rotation)
            yield rotate_upright(frame.image, rotation)
