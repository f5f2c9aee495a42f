"""Two processes (torchrun, gloo) with one sample each train exactly like one process with both."""

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


def train(config, processes: int, **env: str) -> list[float]:
    """The losses of a torchrun of the trainer on `processes` processes, with `env` added to its environment."""
    path = Path(config.run).with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    with socket.socket() as probe:  # a free port: torchrun's `--master_port 0` waits forever here
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]
    result = subprocess.run(
        [*torchrun, "-m", "model.train", "--config", str(path)], cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1", **env),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return [m["loss"] for m in metrics(Path(config.run))]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(cinema_models, tmp_path):
    shards = write_shard(tmp_path / "data", real_samples(4))
    one = tiny_train_config(cinema_models, shards, tmp_path / "one", max_steps=4, checkpoint_every=4)
    one.data.batch_size = 2
    two = tiny_train_config(cinema_models, shards, tmp_path / "two", max_steps=4, checkpoint_every=4)
    single, double = train(one, 1), train(two, 2)
    print("1 process:", single, "\n2 processes:", double)
    assert double == pytest.approx(single, rel=1e-5)  # measured: equal to about 1e-7
