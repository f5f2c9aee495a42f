"""The one config system: pydantic models, defaults here, a YAML file and `--set a.b=value` on top.

The resolved config is written to `RUN/config.yaml` with the package versions and git commit,
so a run folder says how it was made and `python -m pipeline stage` can continue it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from manifests.config_io import apply_overrides, provenance
from manifests.exits import UsageError, read_yaml, validated
from manifests.files import write_bytes
from manifests.filters import FilterConfig
from stages.aesthetic import AestheticConfig
from stages.caption import CaptionConfig
from stages.clips import ClipsConfig
from stages.dedup import DedupConfig
from stages.encode import EncodeConfig
from stages.identities import IdentitiesConfig
from stages.motion import MotionConfig
from stages.probe import ProbeConfig
from stages.scenes import ScenesConfig
from stages.screen import ScreenConfig
from stages.shards import ShardsConfig
from stages.subjects import SubjectsConfig

CHAIN = ["probe", "scenes", "motion", "aesthetic", "screen", "clips", "caption", "subjects", "dedup", "identities", "shards"]
PROFILES = yaml.safe_load(Path(__file__).with_name("profiles.yaml").read_text())


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    src: str | None = None
    profile: Literal["full", "tiny"] = "full"  # model defaults from pipeline/profiles.yaml
    tiny_models: str = "tiny-models"  # where `python -m model.testing.tiny` put the tiny profile's models
    stages: list[str] = CHAIN
    workers: int | None = Field(None, ge=1)  # parallel CPU workers; default: every CPU of the Ray cluster
    max_attempts: int = Field(3, ge=1)  # tries of an input whose failure may pass (I/O, out of memory, a worker that died)
    filter: FilterConfig = FilterConfig()
    probe: ProbeConfig = ProbeConfig()
    scenes: ScenesConfig = ScenesConfig()
    motion: MotionConfig = MotionConfig()
    clips: ClipsConfig = ClipsConfig()
    aesthetic: AestheticConfig = AestheticConfig()
    screen: ScreenConfig = ScreenConfig()
    caption: CaptionConfig = CaptionConfig()
    subjects: SubjectsConfig = SubjectsConfig()
    dedup: DedupConfig = DedupConfig()
    identities: IdentitiesConfig = IdentitiesConfig()
    shards: ShardsConfig = ShardsConfig()
    encode: EncodeConfig = EncodeConfig()


def merge(base: dict, top: dict) -> dict:
    """`top` over `base`, nested dicts merged key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def profile_defaults(profile: str, tiny_models: str) -> dict:
    text = yaml.safe_dump(PROFILES[profile]).replace("{tiny_models}", tiny_models)
    return yaml.safe_load(text)


def load_config(path: Path | None = None, overrides: list[str] = (), profile: str | None = None, cli: dict | None = None) -> RunConfig:
    """Profile defaults, then the YAML file, then `--set`, then the command line's own options
    (`cli`: src, stages, workers, ...; `profile` wins over the file's). A mistake in any of them is
    a UsageError naming the key, before anything is written."""
    data = read_yaml(path) if path else {}
    data = data.get("config", data) or {}  # a run's config.yaml nests it under `config`
    data = merge(apply_overrides(data, list(overrides)), cli or {})
    if profile:
        data["profile"] = profile
    chosen = data.get("profile", "full")
    if chosen not in PROFILES:
        raise UsageError(f"unknown profile {chosen!r}; profiles are {', '.join(PROFILES)}")
    return validated(RunConfig, merge(profile_defaults(chosen, data.get("tiny_models", "tiny-models")), data))


def write_run_config(run: Path, config: RunConfig) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    write_bytes(run, path, yaml.safe_dump({"config": config.model_dump(), "provenance": provenance()}, sort_keys=False).encode())
    return path
