"""`accelerate launch` with the shipped accelerate configs, on this CPU where the backend allows.

ddp.yaml and fsdp.yaml run here (two processes, gloo). On a CPU accelerate itself never enters FSDP
(its state stays MULTI_CPU), but its launcher sets ACCELERATE_USE_FSDP and FSDP_VERSION from the file,
and the trainer shards with FSDP2 on that, so the CPU run takes the GPU's code path.
deepspeed_zero2.yaml cannot: DeepSpeed is not a project dependency (installed on GPU machines).
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import subprocess_env
from safetensors.torch import load_file
from train_fixtures import (  # noqa: F401
    cinema_models,
    metrics,
    real_samples,
    tiny_train_config,
    tiny_wan_train_config,
    wan_models,
    write_shard,
)

from model.cinema import checkpoint
from model.cinema.model import CinemaModel
from model.train.config import ValidationConfig

ROOT = Path(__file__).resolve().parents[1]


def launch(accelerate_config: str, config, tmp_path: Path) -> list[dict]:
    """`accelerate launch --config_file configs/accelerate/NAME` of the trainer on two processes; its metrics."""
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    with socket.socket() as probe:  # a free port (torchrun's port 0 can wait forever)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate" / accelerate_config)]
    result = subprocess.run(
        [*command, "--num_processes", "2", "--main_process_port", str(port), "-m", "model.train", "--config", str(path)],
        cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics(Path(config.run))
    assert [r["step"] for r in rows] == [1, 2]
    # one sample per process and step: the global batch is two
    assert [round(r["samples_per_s"] * r["step_time_s"]) for r in rows] == [2, 2]
    return rows


@pytest.mark.slow
def test_accelerate_launch_with_the_fsdp_config_trains_and_samples_a_wan_base(wan_models, tmp_path):
    """Two steps of the tiny Wan2.1 base under fsdp.yaml in bf16, a validation video through its UniPC sampler."""
    shards = write_shard(tmp_path / "data", real_samples(2))
    config = tiny_wan_train_config(
        wan_models, shards, tmp_path / "run", precision="bf16", max_steps=2, checkpoint_every=2,
        validation=ValidationConfig(every=2, steps=2),
    )  # fmt: skip
    rows = launch("fsdp.yaml", config, tmp_path)
    assert all(math.isfinite(r["loss"]) for r in rows)
    run = Path(config.run)
    assert (run / "checkpoints" / "step-0000002" / "state" / "sharded" / ".metadata").is_file()
    assert (run / "validation" / "step-0000002.mp4").stat().st_size > 0
    model = CinemaModel.from_config(checkpoint.model_config(run / "checkpoints" / "step-0000002"))
    assert type(model.transformer).__name__ == "CinemaWanTransformer3DModel"
    assert type(model.scheduler).__name__ == "UniPCMultistepScheduler"


@pytest.mark.slow
def test_accelerate_launch_with_the_ddp_config_runs_two_steps_on_two_processes(cinema_models, tmp_path):
    shards = write_shard(tmp_path / "data", real_samples(2))
    config = tiny_train_config(cinema_models, shards, tmp_path / "run", max_steps=2, checkpoint_every=2)
    launch("ddp.yaml", config, tmp_path)
    assert (Path(config.run) / "checkpoints" / "step-0000002").is_dir()


@pytest.mark.slow
def test_accelerate_launch_with_the_fsdp_config_shards_validates_and_saves_in_bf16(cinema_models, tmp_path):
    shards = write_shard(tmp_path / "data", real_samples(2))
    config = tiny_train_config(
        cinema_models, shards, tmp_path / "run", precision="bf16", max_steps=2, checkpoint_every=2, ema_decay=0.9,
        validation=ValidationConfig(every=2, steps=2),
    )  # fmt: skip
    rows = launch("fsdp.yaml", config, tmp_path)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    run = Path(config.run)
    assert (run / "checkpoints" / "step-0000002" / "state" / "sharded" / ".metadata").is_file()  # sharded, not DDP
    assert (run / "validation" / "step-0000002.mp4").stat().st_size > 0  # both ranks sampled, the main one wrote
    last = run / "checkpoints" / "step-0000002"
    saved = load_file(last / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the fp32 master weights, gathered whole
    model = CinemaModel.from_config(checkpoint.model_config(last))
    assert all(torch.equal(model.transformer.state_dict()[k], v) for k, v in saved.items())
