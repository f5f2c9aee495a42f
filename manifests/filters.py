"""Filtering as a view: thresholds are applied when reading, never by deleting rows.

Changing a threshold never requires rescoring. A rule takes part once the stage that scores it
has run (its table or its errors exist); a clip that failed scoring has no score and fails the rule.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

# The captioner's reject checks (Cosmos Curator's criteria), one boolean column `reject_<name>` each
# in `captions` (model/curation/prompts/caption_v2.txt says what each means).
VLM_CHECKS = ("slideshow", "synthetic", "text_overlay", "video_in_video", "artifacts", "distorted", "abrupt_camera")


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
    vlm_reject: list[str] = []  # captioner checks that drop a clip when true; none by default: scored, not filtered

    @field_validator("vlm_reject")
    @classmethod
    def known_checks(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(VLM_CHECKS))
        if unknown:
            raise ValueError(f"unknown VLM check(s) {unknown}; known: {', '.join(VLM_CHECKS)}")
        return sorted(set(names), key=VLM_CHECKS.index)


# rule -> (stage whose output it needs, or None for always; SQL predicate on the candidates view, whose
# columns from a table it LEFT JOINs are NULL where the window has no row there: no score fails the rule)
RULES: dict[str, tuple[str | None, str]] = {
    "duration": (None, "duration_s >= {min_duration_s} AND duration_s <= {max_duration_s}"),
    "resolution": (None, "LEAST(width, height) >= {min_short_side}"),
    "bitrate": (None, "video_bytes * 8.0 / (video_duration_s * fps * width * height) >= {min_bpp}"),
    "frame_rate": (None, "fps >= {min_frame_rate} AND fps <= {max_frame_rate}"),
    "aspect": (None, "GREATEST(width, height) <= {max_aspect} * LEAST(width, height)"),
    "motion": ("motion", "motion_score >= {min_motion} AND motion_score <= {max_motion}"),
    "slideshow": ("motion", "residual_px >= {min_residual_px}"),
    # a scored window (motion_score is never NULL in a row) the fit could not class (too few flow points) is not of a rejected class
    "camera": ("motion", "motion_score IS NOT NULL AND (camera_motion IS NULL OR NOT list_contains({reject_camera_motion}, camera_motion))"),
    "aesthetic": ("aesthetic", "aesthetic_score >= {min_aesthetic}"),
    "text": ("screen", "text_area <= {max_text_area}"),
    "slide": ("screen", "text_content <= {max_text_content}"),
    "blur": ("screen", "sharpness >= {min_sharpness}"),
    "nsfw": ("screen", "nsfw_score <= {max_nsfw}"),
    # the captioner's reject checks named in `vlm_reject` (an unknown answer fails); TRUE while none is named
    "vlm": ("caption", "{vlm_clean}"),
    # near-duplicate windows: the dedup stage names the window kept in their place
    "dedup": ("dedup", "deduped AND duplicate_of IS NULL"),
    # samples left without any reference under the reference policy (identities stage)
    "references": ("identities", "n_references > 0"),
}


def scored_in(stage: str) -> str:
    """The table a rule's scoring stage writes: the stage's own name, but for caption's `captions`."""
    return "captions" if stage == "caption" else stage


def rules_through(last: str) -> tuple[str, ...]:
    """The rules in chain order up to `last`: a stage applies every rule scored before it."""
    names = list(RULES)
    return tuple(names[: names.index(last) + 1])


def applies(rule: str, config: FilterConfig) -> bool:
    """False for a rule the config leaves unset (`vlm` without checks): it filters nothing and the funnel leaves it out."""
    return rule != "vlm" or bool(config.vlm_reject)


def rule_sql(rule: str, config: FilterConfig) -> str:
    """The rule's condition with the config's values in it."""
    clean = " AND ".join(f"reject_{name} = FALSE" for name in config.vlm_reject)
    vlm_clean = f"clip_id IN (SELECT clip_id FROM captions WHERE {clean})" if clean else "TRUE"
    return RULES[rule][1].format(**config.model_dump(), vlm_clean=vlm_clean)


def predicate(rule: str, config: FilterConfig) -> str:
    """The rule as SQL; NULL (not scored) counts as failing."""
    return f"COALESCE(({rule_sql(rule, config)}), FALSE)"
