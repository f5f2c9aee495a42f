"""Checkpoint folders: `accelerator.save_state` to resume, and the trained parts to sample from.

`RUN/checkpoints/step-0000100/` holds `state/` (optimizer, scheduler, EMA, RNG: what resume
needs; a sharded run keeps its trained weights, optimizer and EMA in `state/sharded/`, each rank
its own shards, through torch.distributed.checkpoint), `trainer_state.json` (step, counters), and
the trained parts, whole whatever the sharding, in `from_pretrained`
folders (`aligner/`, `transformer/` with any LoRA merged, `scheduler/`) with `model.yaml`, the
CinemaConfig that names the frozen parts. A folder is written under a `.tmp-` name and renamed
when complete, so a killed run never leaves a checkpoint that looks finished; old ones rotate out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

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


def save_parts(folder: Path, model: CinemaModel, parts: list[str], state: dict[str, torch.Tensor] | None = None) -> None:
    """The trained parts as `from_pretrained` folders, and the config that joins them to the frozen ones.

    `state` holds their whole weights under "aligner." / "transformer." (a sharded run gathers them,
    with the EMA's in place of the trained ones); without it they are read from the modules."""
    config = model.config.model_copy(deep=True)
    for name in parts:
        module = getattr(model, name)
        if state is None:
            weights = {key: tensor.detach().cpu() for key, tensor in module.state_dict().items()}
        else:
            weights = {key[len(name) + 1 :]: tensor for key, tensor in state.items() if key.startswith(f"{name}.")}
        if getattr(module, "_hf_peft_config_loaded", False):
            weights = merge_lora(module, weights)
        save_part(module, weights, folder / name)
        setattr(config, name, PartRef(ref=HERE, subfolder=name))
    model.scheduler.save_config(folder / "scheduler")
    config.scheduler = PartRef(ref=HERE, subfolder="scheduler")
    (folder / "model.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))


def save_part(module, weights: dict[str, torch.Tensor], folder: Path) -> None:
    """A diffusers `from_pretrained` folder: the module's config and these weights."""
    folder.mkdir(parents=True, exist_ok=True)
    module.save_config(folder)
    tensors = {key: tensor.contiguous() for key, tensor in weights.items()}
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})


def merge_lora(transformer, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain weights: each LoRA layer's adapters folded into its base weight on the CPU, in the base's
    dtype (B @ A x scaling, as peft merges a Linear); no copy of the model, no fp32 base on the GPU."""
    from peft.tuners.lora import Linear, LoraLayer

    merged = {key.replace(".base_layer.", "."): tensor for key, tensor in weights.items() if ".lora_" not in key}
    for name, module in transformer.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, Linear) or module.merged or any(module.use_dora.get(a) for a in module.active_adapters):
            raise ValueError(f"{name}: only unmerged plain LoRA on Linear layers is folded, found {type(module).__name__}")
        weight = merged[f"{name}.weight"]
        delta = sum(
            (weights[f"{name}.lora_B.{a}.weight"].float() @ weights[f"{name}.lora_A.{a}.weight"].float()) * module.scaling[a]
            for a in module.active_adapters
        )
        merged[f"{name}.weight"] = (weight.float() + (delta.T if module.fan_in_fan_out else delta)).to(weight.dtype)
    return merged


def model_config(folder: Path) -> CinemaConfig:
    """A checkpoint's CinemaConfig, its own parts pointing at the folder wherever it now lies."""
    config = CinemaConfig.model_validate(yaml.safe_load((Path(folder) / "model.yaml").read_text()))
    for name in ("aligner", "transformer", "scheduler"):
        part = getattr(config, name)
        if part is not None and part.ref == HERE:
            setattr(config, name, PartRef(ref=str(folder), subfolder=part.subfolder))
    return config
