"""Reference-to-video sampling, as a diffusers-style pipeline: `pipe(prompt=..., reference_images=[...]).frames`.

The scheduler is the checkpoint's own (CogVideoX DDIM or DPM with v-prediction; Wan UniPC or
FlowMatch Euler with flow matching), stepped as its base says (`Base.sampler`); classifier-free
guidance contrasts the full condition with the unconditional one the training dropout taught
(empty prompt, no references). `python -m model.cinema.sample --checkpoint CKPT --refs a.png,b.png
--prompt "..."` writes an mp4, by default into the run folder's `samples/`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from manifests.exits import UsageError, command
from model.cinema.bases.cogvideox import CogVideoXBase
from model.cinema.bases.wan import WanBase
from model.cinema.checkpoint import model_config
from model.cinema.mllm import MLLMStates
from model.cinema.model import CinemaModel, Conditions, on_white, pad_tokens
from model.hub import quiet_loads
from stages.video import encode_mp4

SCHEDULER_NAMES = [*CogVideoXBase.scheduler_names, *WanBase.scheduler_names]  # each base takes its own


@dataclass
class CinemaPipelineOutput:
    frames: list[list[Image.Image]] | torch.Tensor  # one list of frames per video, or the latents


class CinemaPipeline:
    """Composes a CinemaModel and a scheduler; owns no weights of its own."""

    def __init__(self, model: CinemaModel, scheduler=None):
        self.model = model.eval()
        self.scheduler = scheduler or model.scheduler

    @classmethod
    def from_pretrained(
        cls, checkpoint: str | Path, scheduler: str | None = None, dtype: torch.dtype = torch.float32
    ) -> CinemaPipeline:
        """A checkpoint folder written by the trainer; `scheduler` (one of its base's `scheduler_names`)
        swaps the class, keeping the noise schedule."""
        model = CinemaModel.from_config(model_config(Path(checkpoint)), dtype)
        chosen = model.scheduler
        if scheduler is not None:
            if scheduler not in model.base.scheduler_names:
                raise ValueError(f"a {model.base.name} checkpoint samples with {', '.join(model.base.scheduler_names)}, not {scheduler}")
            chosen = model.base.swap_scheduler(model.scheduler, scheduler)
        return cls(model, chosen)

    def to(self, device: str | torch.device) -> CinemaPipeline:
        self.model.to(device)
        return self

    def guided_conditions(self, conditions: Conditions) -> Conditions:
        """The sample's conditions and the unconditional ones (empty prompt, no references), as a batch of two."""
        empty = self.model.empty_prompt()
        length = max(conditions.mllm_states.shape[1], empty.states.shape[1])
        full = pad_tokens(MLLMStates(conditions.mllm_states, conditions.mllm_mask), length)
        empty = pad_tokens(empty, length)
        return Conditions(
            torch.cat([full.states, empty.states.to(full.states)]),
            torch.cat([full.mask, empty.mask.to(full.mask.device)]),
            conditions.reference_latents + [conditions.reference_latents[0][:0]],
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        reference_images: list[Image.Image],
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        generator: torch.Generator | None = None,
        output_type: Literal["pil", "latent"] = "pil",
        latents: torch.Tensor | None = None,
    ) -> CinemaPipelineOutput:
        """`num_frames` defaults to the base's (45 CogVideoX, 81 Wan2.1, 121 Wan2.2); `latents`
        (1, frames, C, h, w) replace the starting noise; `output_type="latent"` returns the denoised
        latents (batch, frames, C, h, w), not decoded."""
        model = self.model
        height, width = height or model.config.height, width or model.config.width
        num_frames = num_frames or model.base.native(model.vae.vae.config).frames
        if (num_frames - 1) % model.vae.temporal_compression:
            raise ValueError(f"num_frames must be {model.vae.temporal_compression}k+1, got {num_frames}")
        conditions = model.encode_conditions([reference_images], [prompt], (height, width))
        guided = guidance_scale > 1
        if guided:
            conditions = self.guided_conditions(conditions)
        device, dtype = model.vae.device, model.transformer.dtype
        latent_dtype = dtype if model.base.latent_dtype_follows_transformer else torch.float32
        shape = (1, (num_frames - 1) // model.vae.temporal_compression + 1, *model.vae.latent_size(height, width))
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=latent_dtype)
        sampler = model.base.sampler(self.scheduler)
        latents = sampler.initial(latents.to(device, latent_dtype))
        for i, t in enumerate(sampler.start(num_inference_steps, device)):
            batch = torch.cat([latents, latents]) if guided else latents
            batch = sampler.model_input(batch, t, dtype)
            prediction = model(batch, t.expand(batch.shape[0]), conditions)
            if guided:
                conditional, unconditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = sampler.step(prediction, i, latents, generator)
        return CinemaPipelineOutput(frames=latents if output_type == "latent" else self.decode(latents))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[list[Image.Image]]:
        """Denoised latents (batch, frames, C, h, w) -> one list of frames per video."""
        video = self.model.vae.decode(latents.to(self.model.vae.vae.dtype))
        pixels = ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()
        return [[Image.fromarray(frame) for frame in clip] for clip in pixels]


def export_mp4(frames: list[Image.Image], path: Path, fps: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(path, (np.asarray(frame) for frame in frames), Fraction(fps))
    return path


def sample_name(checkpoint: Path, args: argparse.Namespace) -> str:
    """The output's name: the checkpoint, the seed and a digest of everything else that changes the
    video (prompt, references, size, steps), so a second prompt never overwrites the first."""
    asked = [args.prompt, args.refs, args.frames, args.height, args.width, args.steps, args.guidance, args.scheduler]
    return f"{checkpoint.name}-seed{args.seed}-{hashlib.sha1(json.dumps(asked).encode()).hexdigest()[:10]}.mp4"


def append_sample(out: Path, prompt: str, refs: list[Path], kinds: list[str], labels: list[str]) -> Path:
    """One line of `samples.jsonl` beside the video, the file `make eval` reads."""
    listing = out.parent / "samples.jsonl"
    references = [{"image": str(ref.resolve()), "kind": kind, "label": label} for ref, kind, label in zip(refs, kinds, labels)]
    with listing.open("a") as f:
        f.write(json.dumps({"video": out.name, "prompt": prompt, "references": references}) + "\n")
    return listing


def _per_reference(value: str | None, refs: list[Path], default: str, what: str) -> list[str]:
    values = value.split(",") if value else [default] * len(refs)
    if len(values) != len(refs):
        raise UsageError(f"--{what} gives {len(values)} value(s) for {len(refs)} reference(s)")
    return values


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.cinema.sample", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder (RUN/checkpoints/step-N)")
    p.add_argument("--refs", required=True, help="comma-separated reference images")
    p.add_argument("--prompt", required=True)
    p.add_argument("--frames", type=int, help="4k+1; default: the base's (45 CogVideoX, 81 Wan2.1, 121 Wan2.2)")
    p.add_argument("--height", type=int, help="default: the checkpoint's")
    p.add_argument("--width", type=int, help="default: the checkpoint's")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, help="default: the checkpoint's (ddim/dpm: CogVideoX; unipc/euler: Wan)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", help="kind of each reference for `make eval` (human, face, object; default object)")
    p.add_argument("--labels", help="label of each reference for `make eval` (default: object)")
    p.add_argument("--out", type=Path, help="default: RUN/samples/<checkpoint>-seed<seed>-<digest of prompt, refs, ...>.mp4")
    args = p.parse_args(argv)
    if not (args.checkpoint / "model.yaml").is_file():
        raise UsageError(f"no checkpoint at {args.checkpoint} (no model.yaml there); train one first (make train), or name one with CKPT=RUN/checkpoints/step-N")
    refs = [Path(path) for path in args.refs.split(",") if path]
    missing = [str(ref) for ref in refs if not ref.is_file()]
    if missing:
        raise UsageError(f"reference image not found: {', '.join(missing)}")
    kinds = _per_reference(args.kinds, refs, "object", "kinds")
    labels = _per_reference(args.labels, refs, "object", "labels")
    if bad := [k for k in kinds if k not in ("human", "face", "object")]:
        raise UsageError(f"--kinds: {bad[0]!r} is not one of human, face, object")
    quiet_loads()
    pipe = CinemaPipeline.from_pretrained(args.checkpoint, args.scheduler)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    references = [on_white(ref.read_bytes()) for ref in refs]
    frames = pipe(
        prompt=args.prompt,
        reference_images=references,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator().manual_seed(args.seed),
    ).frames[0]
    out = args.out or args.checkpoint.parent.parent / "samples" / sample_name(args.checkpoint, args)
    print(export_mp4(frames, out, pipe.model.base.native(pipe.model.vae.vae.config).fps))
    print(f"listed in {append_sample(out, args.prompt, refs, kinds, labels)} (make eval SAMPLES=...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
