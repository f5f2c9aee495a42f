"""Where model weights come from: a local folder, or a hub id already in the Hugging Face cache.

Nothing here touches the network (`local_files_only=True`), so checking a whole profile takes
milliseconds and a missing weight fails before any work starts, naming every model at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


HOW_TO_GET = (
    "Run `make weights` on a machine with internet (it fills the Hugging Face cache), "
    "or set each of them to a local folder in the config."
)


class MissingWeights(RuntimeError):
    """One or more models are neither a local folder nor in the Hugging Face cache."""

    def __init__(self, missing: dict[str, str]):
        self.missing = dict(missing)
        lines = [
            f"  - {name}: {ref} ({_why_missing(ref)})" if name != ref else f"  - {ref} ({_why_missing(ref)})"
            for name, ref in self.missing.items()
        ]
        super().__init__("Missing model weights:\n" + "\n".join(lines) + "\n" + HOW_TO_GET)


def quiet_loads() -> None:
    """No "Loading weights" bar for each model loaded, here and in the processes started from here
    (Ray workers): noise in every log. transformers' load reports stay: they name weights that did
    not fit the model. Downloads (`make weights`) never call this, and keep their bars."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers is first imported
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1


def _why_missing(ref: str) -> str:
    return "no such local folder" if _looks_like_path(ref) else "not in the Hugging Face cache"


def resolve(ref: str) -> str:
    """The local folder (or file) holding `ref`: the path itself, or the cached hub snapshot."""
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    # Imported here: huggingface_hub costs every curation worker about half a second at start-up.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(ref, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError) as error:
        raise MissingWeights({ref: ref}) from error


def missing(refs: dict[str, str]) -> list[str]:
    """`name (ref)` for each model that `resolve` cannot find."""
    found = _try_resolve_all(refs)
    return [f"{name} ({ref})" for name, ref in refs.items() if name not in found]


def require(refs: dict[str, str]) -> dict[str, str]:
    """Resolve every model, or raise one `MissingWeights` naming all that are missing."""
    found = _try_resolve_all(refs)
    absent = {name: ref for name, ref in refs.items() if name not in found}
    if absent:
        raise MissingWeights(absent)
    return found


def _try_resolve_all(refs: dict[str, str]) -> dict[str, str]:
    found = {}
    for name, ref in refs.items():
        try:
            found[name] = resolve(ref)
        except MissingWeights:
            continue
    return found


def resolve_file(ref: str, filename: str) -> Path:
    """A file inside a model folder (hub snapshot or local): for checkpoints published as one file."""
    path = Path(resolve(ref)) / filename
    if not path.is_file():
        raise MissingWeights({f"{ref}/{filename}": f"{ref}/{filename}"})
    return path


# `make weights` fetches only what the loaders read: hub repositories often hold the same weights
# two or three times (safetensors, pytorch_model.bin, other frameworks), and READMEs and images.
TRANSFORMERS_FILES = ["*.json", "*.jinja", "*.txt", "*.model", "*.safetensors"]  # configs, tokenizer/processor, weights
PICKLED_WEIGHTS = ["pytorch_model*.bin"]  # read (weights_only) only where a repository has no safetensors


def download(ref: str, files: list[str], top_level_only: bool = False) -> Path:
    """Fetch the files of hub repository `ref` matching `files` (glob patterns) into the Hugging Face
    cache (needs internet); `top_level_only` skips every subfolder."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref, allow_patterns=files, ignore_patterns=["*/*"] if top_level_only else None))


def download_transformers(ref: str) -> Path:
    """What `from_pretrained` of a transformers model and its processor reads: the top-level configs,
    tokenizer and processor files, and the safetensors weights, else the pickled ones."""
    folder = download(ref, TRANSFORMERS_FILES, top_level_only=True)
    if not any(folder.glob("*.safetensors")):
        folder = download(ref, PICKLED_WEIGHTS, top_level_only=True)
    return folder


def packaged_file(package: str, relative: str) -> Path:
    """A weights file shipped inside an installed package, found without importing the package
    (some need pkg_resources, or change process-wide settings when imported)."""
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package} is not installed (make setup); it holds {relative}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{relative} not found in the package {package} at {path}")
    return path
