"""`python -m model.train --config configs/train_tiny.yaml`: one Trainer, two phases.

The loop is written once, with named lifecycle steps (prepare models, choose what is trainable,
prepare optimizer and data, resume, train, validate, save). A phase decides what is trainable,
what a batch becomes before the trained parts see it (frozen encoders or the cache), and the loss:
`align` pre-trains AlignerNet against the base's text features (T5 or UMT5; MSE + cosine); `joint`
trains AlignerNet and the DiT (whole, or LoRA through peft) on the base's objective (v-prediction for
CogVideoX, flow matching for Wan), MLLM and VAE frozen.

Runs under `accelerate launch` (DDP, DeepSpeed, FSDP from `configs/accelerate/`) or `torchrun`.
Whatever the backend, only the trained parts are wrapped (`Objective`); the frozen MLLM and VAE stay
outside in the weights' dtype. Under FSDP (`ACCELERATE_USE_FSDP=true`, which `accelerate launch
--config_file configs/accelerate/fsdp.yaml` sets, on GPUs and on CPUs alike) the trainer shards them
itself with FSDP2 as the memory plan does (`model.train.plan.shard`), and accelerate keeps only the
process group, accumulation count, logging and RNG; resume state and EMA stay sharded
(torch.distributed.checkpoint), the saved parts are gathered whole.
Each sample's noise comes from its own seed (`model/train/data.py`), so resuming and splitting the global
batch over processes reproduce the losses. Everything the run makes is under `config.run`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar, NoReturn

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from manifests.config_io import provenance
from manifests.exits import command
from model.cinema import checkpoint
from model.cinema.aligner import alignment_loss
from model.cinema.mllm import MLLMStates
from model.cinema.model import CinemaModel, Conditions
from model.cinema.sample import CinemaPipeline, export_mp4
from model.hub import quiet_loads
from model.train.config import TrainConfig, load_train_config
from model.train.data import Batch, latent_seed, make_loader
from model.train.ema import EMA
from model.train.features import sample_features
from model.train.plan import shard
from model.train.text_encoder import T5TargetEncoder, text_target


def padded(states: list[torch.Tensor], masks: list[torch.Tensor]) -> MLLMStates:
    """Per-sample (tokens, width) states right-padded into one batch."""
    length = max(s.shape[0] for s in states)
    batch = states[0].new_zeros(len(states), length, states[0].shape[-1])
    mask = torch.zeros(len(states), length, dtype=torch.bool, device=states[0].device)
    for row, (s, m) in enumerate(zip(states, masks)):
        batch[row, : len(s)], mask[row, : len(m)] = s, m
    return MLLMStates(batch, mask)


class Phase:
    """What is trained, what a batch becomes before the trained parts see it, and the loss."""

    name: ClassVar[str]
    trained: ClassVar[list[str]]  # CinemaModel attributes whose weights this phase changes
    needs_video: ClassVar[bool]

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def inputs(self, batch: Batch) -> dict:
        raise NotImplementedError

    def features(self, batch: Batch, t5: T5TargetEncoder | None = None) -> list[dict[str, torch.Tensor]]:
        trainer = self.trainer
        if batch.caches is None:  # raw shards: the frozen encoders run on every batch from now on
            trainer.keep_frozen_on_device()
        return batch_features(trainer.model, batch, trainer.config.seed, trainer.accelerator.device, t5)

    def loss(self, model: CinemaModel, inputs: dict) -> torch.Tensor:
        raise NotImplementedError


class AlignPhase(Phase):
    """AlignerNet alone, to reproduce the T5 features of the caption from the MLLM states."""

    name, trained, needs_video = "align", ["aligner"], False
    t5: T5TargetEncoder | None = None

    def inputs(self, batch: Batch) -> dict:
        trainer = self.trainer
        if batch.caches is None and self.t5 is None:  # raw shards: the targets are made here
            self.t5 = text_target(trainer.config.model.transformer, trainer.config.t5.ref, trainer.weight_dtype)
            self.t5.to(trainer.accelerator.device)
        features = self.features(batch, self.t5)
        states = padded([f["mllm_states"] for f in features], [f["mllm_mask"].bool() for f in features])
        return {
            "states": states.states,
            "mask": states.mask,
            "targets": torch.stack([f["t5"] for f in features]),
            "target_mask": torch.stack([f["t5_mask"].bool() for f in features]),
        }

    def loss(self, model: CinemaModel, inputs: dict) -> torch.Tensor:
        prediction = model.aligner(inputs["states"], inputs["mask"])
        return alignment_loss(prediction, inputs["targets"], inputs["target_mask"], self.trainer.config.t5_padding_weight)


class JointPhase(Phase):
    """AlignerNet and the DiT on the v-prediction loss: one forward per batch, each sample's draws from its seed."""

    name, trained, needs_video = "joint", ["aligner", "transformer"], True

    def inputs(self, batch: Batch) -> dict:
        features = self.features(batch)
        latents, conditions = joint_batch(features)
        return {"latents": latents, "conditions": conditions, "seeds": batch.seeds}

    def loss(self, model: CinemaModel, inputs: dict) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(seed) for seed in inputs["seeds"]]
        return model.training_loss(inputs["latents"], inputs["conditions"], generators)


def batch_features(
    model: CinemaModel, batch: Batch, seed: int, device: torch.device, t5: T5TargetEncoder | None = None
) -> list[dict[str, torch.Tensor]]:
    """Each sample's frozen features: from the cache (`make encode`), else made now the same way."""
    if batch.caches is not None:
        return [{name: tensor.to(device) for name, tensor in cache.items()} for cache in batch.caches]
    size = tuple(batch.videos.shape[-2:]) if batch.videos is not None else (model.config.height, model.config.width)
    return [
        sample_features(
            model.mllm,
            model.vae,
            batch.references[row],
            batch.captions[row],
            size,
            video=batch.videos[row] if batch.videos is not None else None,
            latent_seed=latent_seed(seed, key),
            t5=t5,
        )
        for row, key in enumerate(batch.keys)
    ]


def joint_batch(features: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, Conditions]:
    """The batch's video latents (one size bucket) and conditions, MLLM states right-padded to one length."""
    states = padded([f["mllm_states"] for f in features], [f["mllm_mask"].bool() for f in features])
    conditions = Conditions(states.states, states.mask, [f["reference_latents"] for f in features])
    return torch.stack([f["latents"] for f in features]), conditions


PHASES: dict[str, type[Phase]] = {phase.name: phase for phase in (AlignPhase, JointPhase)}


class Objective(nn.Module):
    """What DDP, DeepSpeed or FSDP wrap: the phase's trained parts (`aligner`, and `transformer` in the
    joint phase) and its loss. The CinemaModel they belong to is held, not registered, so its frozen
    MLLM and VAE are never wrapped, broadcast or sharded."""

    def __init__(self, model: CinemaModel, phase: Phase):
        super().__init__()
        for name in phase.trained:
            self.add_module(name, getattr(model, name))
        self.phase = phase
        object.__setattr__(self, "cinema", model)  # not a submodule

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.phase.loss(self.cinema, inputs)


SHARDED = "sharded"  # under a checkpoint's state/: the DCP folder of a sharded run
RESUME_STATE = StateDictOptions(ignore_frozen_params=True, strict=False)  # trained weights; DCP checks they are all there


def fsdp_requested() -> bool:
    """The accelerate config asks for FSDP (accelerate launch sets the variable from its file) and a
    launcher started the processes (a process group to shard over, even of one: on a GPU accelerate
    would otherwise wrap the objective in an FSDP of its own)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or not torch.distributed.is_initialized():
        return False
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError("the trainer shards with FSDP2: set fsdp_version: 2 in the accelerate config (FSDP_VERSION=2)")
    return True


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.run = Path(config.run)
        self.accelerator = Accelerator(
            mixed_precision="bf16" if config.precision == "bf16" else "no",
            gradient_accumulation_steps=config.gradient_accumulation,
            log_with="tensorboard",
            project_dir=str(self.run),
            cpu=not torch.cuda.is_available(),  # without it accelerate ignores torchrun's processes on CPU
        )
        self.deepspeed = self.accelerator.state.deepspeed_plugin
        if self.deepspeed is not None:
            self.configure_deepspeed()
        self.sharded = fsdp_requested()
        self.weight_dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
        self.phase = PHASES[config.phase](self)
        self.step = 0
        self.skipped: Counter = Counter()  # bad samples, by reason (this process's share)
        self.nonfinite = 0  # optimizer steps skipped for a NaN/inf loss or gradient
        self.ema: EMA | None = None
        self.validation_batch: Batch | None = None

    def configure_deepspeed(self) -> None:
        """Batch size from the training config (our loader is not prepared, so "auto" cannot be filled
        in); the accelerate file's accumulation must agree with the config's, never override it."""
        plugin, config = self.deepspeed, self.config
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.data.batch_size
        accumulation = plugin.deepspeed_config.get("gradient_accumulation_steps", config.gradient_accumulation)
        if accumulation not in ("auto", config.gradient_accumulation):
            raise ValueError(
                f"the DeepSpeed config accumulates {accumulation} steps, the training config {config.gradient_accumulation}: "
                "set gradient_accumulation_steps: auto in the accelerate file"
            )
        plugin.deepspeed_config["gradient_accumulation_steps"] = config.gradient_accumulation
        plugin.deepspeed_config.pop("train_batch_size", None)  # DeepSpeed derives it from the two above

    # --- lifecycle -------------------------------------------------------------------------
    def fit(self) -> None:
        set_seed(self.config.seed)
        self.prepare_models()
        self.prepare_trainable()
        self.prepare_optimizer()
        self.prepare_data()
        self.resume()
        self.write_config()
        self.train()
        self.accelerator.end_training()

    def prepare_models(self) -> None:
        """Every part loads on the CPU; the trained ones go to the device, the frozen ones (MLLM, VAE, and
        the align phase's DiT) only while raw shards or validation need them. Cached features need
        only the empty prompt's MLLM states (caption dropout), made once on the CPU."""
        self.model = CinemaModel.from_config(self.config.model, self.weight_dtype)
        for name in self.phase.trained:
            getattr(self.model, name).to(self.accelerator.device)
        self.frozen = [name for name in ("mllm", "vae", "transformer") if name not in self.phase.trained]
        self.frozen_on_device = False

    def move_frozen(self, device: torch.device | str) -> None:
        for name in self.frozen:
            getattr(self.model, name).to(device)

    def keep_frozen_on_device(self) -> None:
        if not self.frozen_on_device:
            self.move_frozen(self.accelerator.device)
            self.frozen_on_device = True

    def prepare_trainable(self) -> None:
        """Freeze everything, then unfreeze (in fp32) what the phase trains; LoRA replaces the full DiT
        and leaves its frozen base in the weights' dtype (only the adapters are fp32)."""
        self.model.requires_grad_(False)
        for name in self.phase.trained:
            part = getattr(self.model, name)
            if name == "transformer" and self.config.lora is not None:
                from peft import LoraConfig

                lora = self.config.lora
                part.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.target_modules))
                for p in part.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()
            else:
                part.to(torch.float32).requires_grad_(True)
        if self.config.gradient_checkpointing:
            self.model.transformer.enable_gradient_checkpointing()
        self.objective = Objective(self.model, self.phase)
        if self.sharded:  # before the optimizer and EMA: they hold the sharded parameters
            mesh = init_device_mesh(self.accelerator.device.type, (self.accelerator.num_processes,))
            shard(self.objective, self.config.precision == "bf16", mesh)
        self.trained = {name: p for name, p in self.objective.named_parameters() if p.requires_grad}
        self.params = list(self.trained.values())
        if self.config.ema_decay is not None:
            self.ema = EMA(self.trained, decay=self.config.ema_decay)
            if not self.sharded:  # a sharded EMA is saved with the sharded state (`save_sharded`)
                self.accelerator.register_for_checkpointing(self.ema)

    def prepare_optimizer(self) -> None:
        config = self.config
        optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        warmup = max(1, config.warmup_steps)
        # Not prepared: accelerate would step it once per process; registered so resume restores it.
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.accelerator.register_for_checkpointing(self.lr_scheduler)
        self.model.train()
        if self.sharded:  # accelerate would wrap it again (DDP on CPU); FSDP2 already syncs the gradients
            self.optimizer = optimizer
        else:
            self.objective, self.optimizer = self.accelerator.prepare(self.objective, optimizer)
            self.accelerator.register_save_state_pre_hook(self.keep_trained_weights)

    @staticmethod
    def keep_trained_weights(models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        """Resume state holds the trained weights only; the frozen ones are reloaded from their refs."""
        for model, state in zip(models, weights):
            trained = {name for name, p in model.named_parameters() if p.requires_grad}
            for key in [key for key in state if key not in trained]:
                del state[key]

    def prepare_data(self) -> None:
        acc = self.accelerator
        self.loader = make_loader(
            self.config.data, self.config.seed, acc.process_index, acc.num_processes, self.phase.needs_video
        )

    def resume(self) -> None:
        found = checkpoint.latest(self.run) if self.config.resume else None
        if found is None:
            return
        if (found / "state" / SHARDED).is_dir() != self.sharded:
            raise ValueError(
                f"{found} was written {'without' if self.sharded else 'with'} FSDP: resume it with the accelerate config "
                "that wrote it, or start a new run from its parts (model.aligner / model.transformer refs)"
            )
        if self.deepspeed is not None:  # DeepSpeed saves and loads its own whole module state
            self.accelerator.load_state(str(found / "state"))
        elif self.sharded:  # scheduler and RNG from accelerate, the rest from each rank's shards
            self.accelerator.load_state(str(found / "state"))
            self.load_sharded(found / "state" / SHARDED)
        else:
            self.accelerator.load_state(str(found / "state"), strict=False)  # trained weights only
        state = checkpoint.read_trainer_state(found)
        self.step = state["step"]
        if self.accelerator.is_main_process:  # the totals are kept once, on the main process
            self.skipped, self.nonfinite = Counter(state["skipped"]), state["nonfinite"]
        self.accelerator.print(f"resumed from {found} at step {self.step}")

    def sharded_state(self) -> dict:
        """Trained weights, optimizer and EMA as this rank's shards (DTensors), keyed by parameter name."""
        model, optimizer = get_state_dict(self.objective, self.optimizer, options=RESUME_STATE)
        state = {"model": model, "optimizer": optimizer}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save_sharded(self, folder: Path) -> None:
        dcp.save(self.sharded_state(), checkpoint_id=str(folder))

    def load_sharded(self, folder: Path) -> None:
        state = self.sharded_state()
        dcp.load(state, checkpoint_id=str(folder))  # in place; fails naming any key the folder lacks
        set_state_dict(
            self.objective, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=RESUME_STATE
        )
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def write_config(self) -> None:
        if self.accelerator.is_main_process:
            self.run.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump({**self.config.model_dump(), "provenance": provenance()}, sort_keys=False)
            (self.run / "config.yaml").write_text(text)
        self.accelerator.init_trackers("logs")

    # --- the loop --------------------------------------------------------------------------
    def batches(self):
        """Real batches, forever; skip counts ride along and are added up. Starts where the run stopped."""
        self.loader.dataset.resume_after = self.step * self.config.gradient_accumulation  # passed over undecoded
        for batch in self.loader:
            self.skipped += batch.skipped
            if batch.keys:  # an empty batch only reports a share with nothing usable
                yield batch
        raise RuntimeError(f"no usable samples in {self.config.data.shards} for this process: {dict(self.skipped)}")

    def train(self) -> None:
        config, acc = self.config, self.accelerator
        batches = self.batches()
        # a bar on a terminal; a redirected log gets the plain line `log` prints instead of escape codes
        bar = tqdm(total=config.max_steps, initial=self.step, disable=not (acc.is_main_process and sys.stderr.isatty()), desc=self.phase.name)
        while self.step < config.max_steps:
            started = time.perf_counter()
            losses, samples = [], 0
            for _ in range(config.gradient_accumulation):
                batch = next(batches)
                self.validation_batch = self.validation_batch or batch
                samples += len(batch.keys)
                # FSDP2 reduce-scatters every micro-batch: sharded gradients add up, never a whole copy
                with acc.accumulate(*([] if self.sharded else [self.objective])):
                    with torch.no_grad():
                        inputs = self.phase.inputs(batch)
                    with acc.autocast():
                        loss = self.objective(inputs)
                    acc.backward(loss)
                    losses.append(loss.detach())
                    if acc.sync_gradients:
                        grad_norm = self.optimizer_step()
            self.step += 1
            bar.update(1)
            loss = acc.reduce(torch.stack(losses).mean(), "mean").item()
            if acc.is_main_process:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                self.log(loss, grad_norm, time.perf_counter() - started, samples)
            if config.validation.every and self.step % config.validation.every == 0:
                self.validate()
            if self.step % config.checkpoint_every == 0 or self.step == config.max_steps:
                self.save()
        bar.close()

    def optimizer_step(self) -> float:
        """Clip, then step unless the gradient is NaN/inf (then skip the step and count it)."""
        max_norm = self.config.max_grad_norm or math.inf
        grad_norm = self.accelerator.clip_grad_norm_(self.params, max_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.trained)
        else:
            self.nonfinite += 1
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def totals(self) -> tuple[dict[str, int], int]:
        """Skipped samples by reason and non-finite steps, summed over processes."""
        reasons = sorted(set(self.skipped) | {"missing_reference", "broken_mp4", "too_few_frames"})
        counts = torch.tensor([self.skipped[r] for r in reasons] + [self.nonfinite], device=self.accelerator.device)
        counts = self.accelerator.reduce(counts, "sum").tolist()
        return dict(zip(reasons, counts[:-1])), counts[-1]

    def log(self, loss: float, grad_norm: float, seconds: float, samples: int) -> None:
        acc = self.accelerator
        skipped, nonfinite = self.totals()
        memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        values = {
            "loss": loss,
            "lr": self.lr_scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "step_time_s": seconds,
            "samples_per_s": samples * acc.num_processes / seconds,
            "peak_memory_gib": memory / 2**30,
            "nonfinite_steps": nonfinite,
            **{f"skipped/{reason}": count for reason, count in skipped.items()},
        }
        acc.log(values, step=self.step)
        if acc.is_main_process:
            with open(self.run / "metrics.jsonl", "a") as stream:
                stream.write(json.dumps({"step": self.step, **values}) + "\n")
            if not sys.stderr.isatty():
                print(f"{self.phase.name} step {self.step}/{self.config.max_steps}: loss {loss:.4f}, {seconds:.2f} s/step", file=sys.stderr, flush=True)

    def validate(self) -> None:
        """A video from the first training sample's references and caption, into RUN/validation/.

        Every process samples (from its own first sample) and the main process writes its video:
        a sharded DiT needs every rank for each forward, and no rank idles at a barrier meanwhile."""
        acc = self.accelerator
        batch, config = self.validation_batch, self.config
        height, width = self.video_size(batch)
        if not self.frozen_on_device:
            self.move_frozen(acc.device)
        self.model.eval()
        if self.sharded:  # the root's own parameters (embeddings, norms, projections); the blocks gather theirs
            self.objective.unshard()
        with acc.autocast():
            frames = CinemaPipeline(self.model)(
                prompt=batch.captions[0],
                reference_images=batch.references[0],
                num_frames=config.data.frames,
                height=height,
                width=width,
                num_inference_steps=config.validation.steps,
                guidance_scale=config.validation.guidance_scale,
                generator=torch.Generator().manual_seed(config.seed),
            ).frames[0]
        if self.sharded:
            self.objective.reshard()
        self.model.train()
        if not self.frozen_on_device:
            self.move_frozen("cpu")
        if acc.is_main_process:
            export_mp4(frames, self.run / "validation" / f"step-{self.step:07d}.mp4", config.data.fps)

    def video_size(self, batch: Batch) -> tuple[int, int]:
        """(height, width) of the batch's videos: decoded, or cached as latents."""
        if batch.videos is not None:
            return tuple(batch.videos.shape[-2:])
        if batch.caches is not None and "latents" in batch.caches[0]:
            spatial = self.model.vae.spatial_compression
            return tuple(spatial * side for side in batch.caches[0]["latents"].shape[-2:])
        return tuple(self.config.data.buckets[0])

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained parts' whole weights, the EMA's in place of the trained ones, on the main
        process's CPU (empty elsewhere); sharded ones are gathered tensor by tensor, by every rank."""
        acc = self.accelerator
        if self.sharded:
            state = get_model_state_dict(self.objective, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        elif acc.is_main_process:
            state = {key: tensor.detach().cpu() for key, tensor in acc.unwrap_model(self.objective).state_dict().items()}
        else:
            state = {}
        if self.ema is not None:
            state.update(self.ema.full_state(keep=acc.is_main_process))
        return state

    def save(self) -> None:
        acc = self.accelerator
        tmp, final = checkpoint.staging(self.run, self.step)
        skipped, nonfinite = self.totals()
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "state"))  # every process: sharded states (FSDP, DeepSpeed) need them all
        if self.sharded:
            self.save_sharded(tmp / "state" / SHARDED)
        weights = self.trained_state()
        if acc.is_main_process:
            checkpoint.save_parts(tmp, self.model, self.phase.trained, weights)
            checkpoint.write_trainer_state(tmp, {"step": self.step, "skipped": skipped, "nonfinite": nonfinite})
            checkpoint.publish(tmp, final, self.config.keep_checkpoints)
        acc.wait_for_everyone()


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="YAML training config (configs/train_*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = p.parse_args(argv)
    quiet_loads()
    trainer = Trainer(load_train_config(args.config, args.set))
    trainer.fit()
    if trainer.accelerator.num_processes > 1:
        del trainer
        leave_without_finalizing()
    return 0


def leave_without_finalizing() -> NoReturn:
    """End a finished process of a distributed run without Python's finalization. A Gloo worker
    thread frees a finished collective when it gets to it: `save`'s last barrier holds the all-gathers
    of the weights, whose tensors a rank other than the first has already let go, and freeing them
    needs the GIL; if the interpreter is finalizing by then, the thread exits inside a C++ destructor
    and the process aborts (SIGABRT, "terminate called without an active exception") after a run that
    succeeded (3 of 6 runs of the FSDP tests on a busy 2-core machine). Everything is written and
    closed by now; the data loader's workers end with the trainer."""
    gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

