"""`accelerate launch` with the shipped accelerate configs, on this CPU where the backend allows.

ddp.yaml runs here (two processes, gloo). fsdp.yaml cannot: accelerate's FSDP plugin stops at
start-up without a CUDA/XPU/NPU device ("There are currently no available devices found").
deepspeed_zero2.yaml cannot: DeepSpeed is not a project dependency (installed on GPU machines).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import subprocess_env
from train_fixtures import (  # noqa: F401
    cinema_models,
    metrics,
    real_samples,
    tiny_train_config,
    write_shard,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_accelerate_launch_with_the_ddp_config_runs_two_steps_on_two_processes(cinema_models, tmp_path):
    shards = write_shard(tmp_path / "data", real_samples(2))
    config = tiny_train_config(cinema_models, shards, tmp_path / "run", max_steps=2, checkpoint_every=2)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    with socket.socket() as probe:  # a free port (torchrun's port 0 can wait forever)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/ddp.yaml")]
    result = subprocess.run(
        [*launch, "--num_processes", "2", "--main_process_port", str(port), "-m", "model.train", "--config", str(path)],
        cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics(Path(config.run))
    assert [r["step"] for r in rows] == [1, 2]
    # one sample per process and step: the global batch is two
    assert [round(r["samples_per_s"] * r["step_time_s"]) for r in rows] == [2, 2]
    assert (Path(config.run) / "checkpoints" / "step-0000002").is_dir()
