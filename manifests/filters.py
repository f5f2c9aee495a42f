"""Filtering as a view: thresholds are applied when reading, never by deleting rows.

Changing a threshold never requires rescoring. A rule takes part once the stage that scores it
has run (its table or its errors exist); a clip that failed scoring has no score and fails the rule.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_duration_s: float = 2.0
    max_duration_s: float = 60.0
    min_short_side: int = 128  # pixels, of the source
    min_motion: float = 0.5  # motion score: mean flow, % of the frame diagonal per second
    max_motion: float = 60.0  # above this: shaky or a transition the detector missed
    min_aesthetic: float = 4.0  # LAION scale
    min_bpp: float = 0.01  # bits per pixel of the source file (all its streams): below, compression ate the picture
    min_frame_rate: float = 10.0  # below: a slideshow or a time-lapse
    max_frame_rate: float = 120.0
    max_aspect: float = 2.5  # long side over short side (2.39 is scope cinema)
    min_residual_px: float = 0.4  # motion left after the global camera fit, px per pair: below, a still image moved (slideshow)
    reject_camera_motion: list[str] = []  # camera-motion classes dropped (score only by default; see README)
    max_text_area: float = 0.1  # median share of a frame under recognised text: captions, subtitles
    max_text_content: float = 0.5  # median share of the frame's detail that is text: credits, title cards, slides
    min_sharpness: float = 20.0  # median variance of the Laplacian over sampled frames: below, blurred
    max_nsfw: float = 0.5  # NudeNet confidence of explicit nudity


# rule -> (stage whose output it needs, or None for always; SQL predicate on the candidates view)
RULES: dict[str, tuple[str | None, str]] = {
    "duration": (None, "duration_s >= {min_duration_s} AND duration_s <= {max_duration_s}"),
    "resolution": (None, "LEAST(width, height) >= {min_short_side}"),
    "bitrate": (None, "video_bytes * 8.0 / (video_duration_s * fps * width * height) >= {min_bpp}"),
    "frame_rate": (None, "fps >= {min_frame_rate} AND fps <= {max_frame_rate}"),
    "aspect": (None, "GREATEST(width, height) <= {max_aspect} * LEAST(width, height)"),
    "motion": ("motion", "motion_score >= {min_motion} AND motion_score <= {max_motion}"),
    "slideshow": ("motion", "clip_id IN (SELECT clip_id FROM motion WHERE residual_px >= {min_residual_px})"),
    "camera": ("motion", "clip_id IN (SELECT clip_id FROM motion WHERE NOT list_contains({reject_camera_motion}, camera_motion))"),
    "aesthetic": ("aesthetic", "aesthetic_score >= {min_aesthetic}"),
    # uncorrelated, so the rule holds whatever the candidates view is called in the query
    "text": ("screen", "clip_id IN (SELECT clip_id FROM screen WHERE text_area <= {max_text_area})"),
    "slide": ("screen", "clip_id IN (SELECT clip_id FROM screen WHERE text_content <= {max_text_content})"),
    "blur": ("screen", "clip_id IN (SELECT clip_id FROM screen WHERE sharpness >= {min_sharpness})"),
    "nsfw": ("screen", "clip_id IN (SELECT clip_id FROM screen WHERE nsfw_score <= {max_nsfw})"),
    # near-duplicate windows: the dedup stage names the window kept in their place
    "dedup": ("dedup", "clip_id IN (SELECT clip_id FROM dedup WHERE duplicate_of IS NULL)"),
    # samples left without any reference under the reference policy (identities stage)
    "references": ("identities", "clip_id IN (SELECT clip_id FROM sample_refs WHERE n_references > 0)"),
}


def predicate(rule: str, config: FilterConfig) -> str:
    """The rule as SQL; NULL (not scored) counts as failing."""
    return f"COALESCE(({RULES[rule][1].format(**config.model_dump())}), FALSE)"
