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
    max_text_area: float = 0.1  # share of a frame covered by text: captions, subtitles, slides
    max_nsfw: float = 0.5  # NudeNet confidence of explicit nudity


# rule -> (stage whose output it needs, or None for always; SQL predicate on the candidates view)
RULES: dict[str, tuple[str | None, str]] = {
    "duration": (None, "duration_s >= {min_duration_s} AND duration_s <= {max_duration_s}"),
    "resolution": (None, "LEAST(width, height) >= {min_short_side}"),
    "motion": ("motion", "motion_score >= {min_motion} AND motion_score <= {max_motion}"),
    "aesthetic": ("aesthetic", "aesthetic_score >= {min_aesthetic}"),
    # uncorrelated, so the rule holds whatever the candidates view is called in the query
    "text": ("screen", "clip_id IN (SELECT clip_id FROM screen WHERE text_area <= {max_text_area})"),
    "nsfw": ("screen", "clip_id IN (SELECT clip_id FROM screen WHERE nsfw_score <= {max_nsfw})"),
    # near-duplicate windows: the dedup stage names the window kept in their place
    "dedup": ("dedup", "clip_id IN (SELECT clip_id FROM dedup WHERE duplicate_of IS NULL)"),
    # samples left without any reference under the reference policy (identities stage)
    "references": ("identities", "clip_id IN (SELECT clip_id FROM sample_refs WHERE n_references > 0)"),
}


def predicate(rule: str, config: FilterConfig) -> str:
    """The rule as SQL; NULL (not scored) counts as failing."""
    return f"COALESCE(({RULES[rule][1].format(**config.model_dump())}), FALSE)"
