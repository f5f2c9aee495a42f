"""encode: the frozen models' features of every shard sample, cached for the trainer (`make encode`).

Optional, after `shards`, and not part of `curate`: what it computes depends on a training
config (models, frames, size buckets, references, seed), named by `encode.train_config`. Per raw
shard it writes `encoded/<same name>.tar` holding each usable sample's caption, metadata and
references plus `cache.safetensors`: VAE latents of the clip and the references, MLLM states and
T5 / UMT5 targets (the base's), made by `model.features.sample_features`, the function the trainer uses on raw
shards. A trainer pointed at `encoded/` (`--set data.shards=RUN/encoded`) then skips the MLLM,
VAE and T5 forward passes. Samples the trainer could not use are left out and counted by reason.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, field_validator

from stages.base import BadInput, ModelStageConfig, Resources, Row, Stage
from stages.shards import write_tar

KEPT_MEMBERS = ("__key__", "txt", "json")  # and every ref_<i>.png; clips and crops stay in the raw shard


class EncodeConfig(ModelStageConfig):
    train_config: str = Field("configs/train_full.yaml", validate_default=True)  # the run these features serve

    @field_validator("train_config")
    @classmethod
    def absolute(cls, path: str) -> str:  # Ray workers may start elsewhere
        return str(Path(path).resolve())

    def training(self):
        from model.train.config import load_train_config

        return load_train_config(Path(self.train_config))

    def weights(self) -> dict[str, tuple[str, str | None]]:
        config = self.training()
        return {
            "encode.mllm": (config.model.mllm.ref, None),
            "encode.vae": (config.model.vae.ref, None),
            "encode.t5": (config.t5.ref, None),
        }

    def digest(self) -> str:
        """Of every setting that changes the features; equal digests mean interchangeable caches."""
        config = self.training()
        model = config.model.model_dump(include={"mllm", "vae", "template", "max_pixels"})
        data = config.data.model_dump(include={"frames", "buckets", "max_references"})
        values = {"model": model, "data": data, "t5": config.t5.model_dump(), "seed": config.seed, "precision": config.precision}
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class Encode(Stage):
    name = "encode"
    reads = "shards"
    writes = "encoded"
    input_key = "shard"
    resources = Resources(cpus=1.0, uses_model=True, gpu_memory_gb=28)  # T5-XXL + Qwen2.5-VL-3B + CogVideoX VAE in bf16, a clip's latents
    Config = EncodeConfig

    def setup(self) -> None:
        import torch

        from model.cinema.bases import base_of
        from model.cinema.mllm import MLLMEncoder
        from model.curation.device import device as curation_device
        from model.train.text_encoder import text_target

        self.training = config = self.config.training()
        model, device = config.model, curation_device()
        dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
        self.mllm = MLLMEncoder.from_pretrained(model.mllm.ref, model.template, model.max_pixels, dtype).to(device)
        self.vae = base_of(model.transformer).load_vae(model.vae, dtype).to(device)  # CogVideoX's or Wan's
        self.t5 = text_target(model.transformer, config.t5.ref, dtype).to(device)

    def process(self, item: Row) -> list[Row]:
        relative = Path("encoded") / Path(item["path"]).name
        final = self.run_dir / relative
        tally: Counter = Counter()  # "encoded", and a count per reason a sample was skipped
        write_tar(self.run_dir, final, self.encoded(self.run_dir / item["path"], tally))
        encoded = tally.pop("encoded", 0)
        if not encoded:
            final.unlink()
            raise BadInput(f"no usable sample in {item['path']}: skipped {dict(tally)}")
        return [
            {
                "shard": item["shard"],
                "path": str(relative),
                "n_samples": encoded,
                "skipped_json": json.dumps(dict(tally), sort_keys=True),
                "bytes": final.stat().st_size,
                "train_config": self.config.train_config,
                "config_digest": self.config.digest(),
            }
        ]

    def encoded(self, shard: Path, tally: Counter) -> Iterator[dict]:
        """The shard's usable samples with their cached features, counted in `tally` with those skipped."""
        from safetensors.torch import save
        from webdataset.tariterators import tarfile_samples

        from model.train.data import CACHE, BadSample, decode, latent_seed
        from model.train.features import sample_features

        if not shard.is_file():
            raise BadInput(f"{shard} is missing (deleted after the shards stage ran?)")
        config = self.training
        for raw in tarfile_samples([{"url": str(shard)}]):
            try:
                sample = decode(raw, config.data, decode_video=True, seed=config.seed, epoch=0)
            except BadSample as bad:
                tally[bad.reason] += 1
                continue
            with self.timed("forward"):
                features = sample_features(
                    self.mllm, self.vae, sample.references, sample.caption, tuple(sample.video.shape[-2:]),
                    video=sample.video, latent_seed=latent_seed(config.seed, sample.key), t5=self.t5,
                )  # fmt: skip
            kept = {k: v for k, v in raw.items() if k in KEPT_MEMBERS or k.startswith("ref_")}
            tally["encoded"] += 1
            yield {**kept, CACHE: save({name: t.detach().cpu().contiguous() for name, t in features.items()})}
