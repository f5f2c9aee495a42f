"""Checkpoint folders: `accelerator.save_state` to resume, and the trained parts to sample from.

`RUN/checkpoints/step-0000100/` holds `state/` (optimizer, scheduler, EMA, RNG: what resume
needs), `trainer_state.json` (step, counters), and the trained parts in `from_pretrained`
folders (`aligner/`, `transformer/` with any LoRA merged, `scheduler/`) with `model.yaml`, the
CinemaConfig that names the frozen parts. A folder is written under a `.tmp-` name and renamed
when complete, so a killed run never leaves a checkpoint that looks finished; old ones rotate out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from model.cinema.model import CinemaConfig, CinemaModel, PartRef

HERE = "."  # a part ref meaning "this checkpoint folder"


def checkpoints(run: Path) -> list[Path]:
    return sorted((Path(run) / "checkpoints").glob("step-*"))


def latest(run: Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def staging(run: Path, step: int) -> tuple[Path, Path]:
    """(temporary folder, final folder) of the checkpoint of `step`."""
    final = Path(run) / "checkpoints" / f"step-{step:07d}"
    return final.with_name(f".tmp-{final.name}"), final


def publish(tmp: Path, final: Path, keep: int) -> None:
    """Rename the finished folder into place, then drop all but the newest `keep`."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(old)


def write_trainer_state(folder: Path, state: dict) -> None:
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))


def read_trainer_state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def save_parts(folder: Path, model: CinemaModel, parts: list[str]) -> None:
    """The trained parts as `from_pretrained` folders, and the config that joins them to the frozen ones."""
    config = model.config.model_copy(deep=True)
    if "aligner" in parts:
        model.aligner.save_pretrained(folder / "aligner")
        config.aligner = PartRef(ref=HERE, subfolder="aligner")
    if "transformer" in parts:
        save_transformer(model.transformer, folder / "transformer")
        config.transformer = PartRef(ref=HERE, subfolder="transformer")
    model.scheduler.save_config(folder / "scheduler")
    config.scheduler = PartRef(ref=HERE, subfolder="scheduler")
    (folder / "model.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))


def save_transformer(transformer, folder: Path) -> None:
    """A `from_pretrained` folder; LoRA adapters folded into their base weights tensor by tensor on
    the CPU, in the base's dtype: no copy of the model, no fp32 cast of the frozen base on the GPU."""
    if not getattr(transformer, "_hf_peft_config_loaded", False):
        transformer.save_pretrained(folder)
        return
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    state = {
        key.replace(".base_layer.", "."): tensor.detach().cpu().clone()
        for key, tensor in transformer.state_dict().items()
        if ".lora_" not in key
    }
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            weight = state[f"{name}.weight"]
            delta = sum(module.get_delta_weight(adapter).detach().float().cpu() for adapter in module.active_adapters)
            state[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype)
    folder.mkdir(parents=True, exist_ok=True)
    transformer.save_config(folder)
    save_file(state, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})


def model_config(folder: Path) -> CinemaConfig:
    """A checkpoint's CinemaConfig, its own parts pointing at the folder wherever it now lies."""
    config = CinemaConfig.model_validate(yaml.safe_load((Path(folder) / "model.yaml").read_text()))
    for name in ("aligner", "transformer", "scheduler"):
        part = getattr(config, name)
        if part is not None and part.ref == HERE:
            setattr(config, name, PartRef(ref=str(folder), subfolder=part.subfolder))
    return config
