"""The one config system: pydantic models, defaults here, a YAML file and `--set a.b=value` on top.

The resolved config is written to `RUN/config.yaml` with the package versions and git commit,
so a run folder says how it was made and `python -m pipeline stage` can continue it.
"""

from __future__ import annotations

import datetime
import subprocess
from importlib import metadata
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from manifests.filters import FilterConfig
from stages.clips import ClipsConfig
from stages.motion import MotionConfig
from stages.probe import ProbeConfig
from stages.scenes import ScenesConfig

CHAIN = ["probe", "scenes", "motion", "clips"]
PACKAGES = ["torch", "av", "scenedetect-headless", "opencv-python-headless", "ray", "pyarrow", "duckdb"]


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    src: str | None = None
    stages: list[str] = CHAIN
    workers: int | None = None  # parallel CPU workers; default: every CPU of the Ray cluster
    filter: FilterConfig = FilterConfig()
    probe: ProbeConfig = ProbeConfig()
    scenes: ScenesConfig = ScenesConfig()
    motion: MotionConfig = MotionConfig()
    clips: ClipsConfig = ClipsConfig()


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`scenes.params.adaptive_threshold=5` sets a nested key; the value is read as YAML."""
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)
    return data


def load_config(path: Path | None = None, overrides: list[str] = ()) -> RunConfig:
    data = yaml.safe_load(Path(path).read_text()) if path else {}
    data = data.get("config", data) or {}  # a run's config.yaml nests it under `config`
    return RunConfig.model_validate(apply_overrides(data, list(overrides)))


def provenance() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "git_commit": commit, "versions": versions}


def write_run_config(run: Path, config: RunConfig) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    tmp = run / ".tmp-config.yaml"
    tmp.write_text(yaml.safe_dump({"config": config.model_dump(), "provenance": provenance()}, sort_keys=False))
    tmp.replace(path)
    return path
