"""FSDP2 on CPU (torchrun, gloo): two processes sharding the trained parts train as one process with the
same global batch, resume exactly from a sharded checkpoint, and save parts that load as a plain checkpoint.

The sharded runs turn on gradient checkpointing and an EMA, so both go through the sharded path too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_distributed import train
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
from model.cinema.sample import CinemaPipeline
from model.testing.tiny import tiny_cinema_config
from model.train.trainer import Trainer

FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}  # what `accelerate launch` sets from fsdp.yaml
STEPS, HALF = 4, 2
PARTS = ["aligner", "transformer"]


def weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {part: load_file(folder / part / "diffusion_pytorch_model.safetensors") for part in PARTS}


@pytest.fixture(scope="module")
def runs(cinema_models, tmp_path_factory) -> dict[str, Path]:
    """The same 4 steps: one process with batch 2, and two sharded processes with batch 1 each."""
    tmp = tmp_path_factory.mktemp("fsdp")
    shards = write_shard(tmp / "data", real_samples(4))
    common = {"max_steps": STEPS, "checkpoint_every": HALF, "keep_checkpoints": 2, "ema_decay": 0.9}
    one = tiny_train_config(cinema_models, shards, tmp / "one", **common)
    one.data.batch_size = 2
    sharded = tiny_train_config(cinema_models, shards, tmp / "sharded", gradient_checkpointing=True, **common)
    train(one, 1)
    train(sharded, 2, **FSDP)
    return {"one": Path(one.run), "sharded": Path(sharded.run), "config": sharded}


@pytest.mark.slow
def test_two_sharded_processes_train_as_one_process_with_the_same_global_batch(runs):
    single = [m["loss"] for m in metrics(runs["one"])]
    double = [m["loss"] for m in metrics(runs["sharded"])]
    print("1 process:", single, "\n2 processes, FSDP2:", double)
    assert (runs["sharded"] / "checkpoints" / "step-0000004" / "state" / "sharded" / ".metadata").is_file()
    assert double == pytest.approx(single, rel=1e-5)  # fp32; only the order of the sums differs
    # The saved parts (the EMA's, gathered from the shards) are the one process's: the difference is
    # tiny next to what training changed. Not element by element: a weight with no gradient (a key
    # norm's bias: softmax ignores a shift shared by all keys) moves by Adam's normalised rounding noise.
    plain, gathered = weights(runs["one"] / "checkpoints" / "step-0000004"), weights(runs["sharded"] / "checkpoints" / "step-0000004")
    start = CinemaModel.from_config(runs["config"].model)
    for part in PARTS:
        assert gathered[part].keys() == plain[part].keys()
        initial = getattr(start, part).state_dict()
        difference = torch.cat([(gathered[part][k] - plain[part][k]).flatten() for k in plain[part]]).norm()
        trained = torch.cat([(plain[part][k] - initial[k]).flatten() for k in plain[part]]).norm()
        print(f"{part}: |sharded - one process| / |one process - start| = {difference / trained:.2e}")
        assert difference < 1e-3 * trained  # measured: 6e-7 (aligner), 1.3e-4 (transformer)


@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_exactly_and_loads_as_a_plain_one(runs, tmp_path):
    config = runs["config"]
    resumed = config.model_copy(update={"run": str(tmp_path / "resumed")})
    middle = runs["sharded"] / "checkpoints" / f"step-{HALF:07d}"
    shutil.copytree(middle, tmp_path / "resumed" / "checkpoints" / middle.name)
    train(resumed, 2, **FSDP)  # starts from step 2: weights, AdamW, EMA, lr schedule and data position restored

    whole = {m["step"]: m["loss"] for m in metrics(runs["sharded"])}
    again = {m["step"]: m["loss"] for m in metrics(Path(resumed.run))}
    print("uninterrupted:", whole, "\nresumed:", again)
    assert sorted(again) == list(range(HALF + 1, STEPS + 1))
    assert all(again[step] == whole[step] for step in again)
    last = checkpoint.latest(Path(resumed.run))
    expected, found = weights(runs["sharded"] / "checkpoints" / last.name), weights(last)
    assert all(torch.equal(found[part][k], expected[part][k]) for part in PARTS for k in expected[part])

    # A plain checkpoint: CinemaModel and the sampler load it in one process, with the saved weights.
    model = CinemaModel.from_config(checkpoint.model_config(last))
    for part in PARTS:
        state = getattr(model, part).state_dict()
        assert all(torch.equal(state[k], v) for k, v in found[part].items())
    start = CinemaModel.from_config(config.model).transformer.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in found["transformer"].items())
    frames = CinemaPipeline.from_pretrained(last)(prompt="a scene", reference_images=[], num_frames=5, num_inference_steps=2, height=32, width=48).frames[0]
    assert len(frames) == 5
    with pytest.raises(ValueError, match="was written with FSDP"):  # one plain process cannot take the shards
        Trainer(resumed).fit()


@pytest.mark.slow
def test_wan_two_sharded_processes_train_as_one_process(wan_models, tmp_path):
    """The tiny Wan2.1 base: its blocks sharded by FSDP2 over two processes, the flow-matching losses of one process."""
    shards = write_shard(tmp_path / "data", real_samples(4))
    common = {"max_steps": HALF, "checkpoint_every": HALF}
    one = tiny_wan_train_config(wan_models, shards, tmp_path / "one", **common)
    one.data.batch_size = 2
    sharded = tiny_wan_train_config(wan_models, shards, tmp_path / "sharded", gradient_checkpointing=True, **common)
    single, double = train(one, 1), train(sharded, 2, **FSDP)
    print("Wan, 1 process:", single, "\n2 processes, FSDP2:", double)
    assert (tmp_path / "sharded" / "checkpoints" / f"step-{HALF:07d}" / "state" / "sharded" / ".metadata").is_file()
    assert double == pytest.approx(single, rel=1e-5)


def test_lora_folded_from_a_gathered_state_equals_peft_merge(cinema_models):
    """A sharded run folds the adapters from gathered tensors, not from the layers: same weights as peft's merge."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    transformer = CinemaModel.from_config(tiny_cinema_config(cinema_models)).transformer
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v"]))
    for name, p in transformer.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: no delta to fold
            torch.nn.init.normal_(p)
    before = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    folded = checkpoint.merge_lora(transformer, before)
    layers = [m for m in transformer.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.merge()
    merged = {k.replace(".base_layer.", "."): v for k, v in transformer.state_dict().items() if ".lora_" not in k}
    assert len(layers) == 2 * len(transformer.transformer_blocks) and folded.keys() == merged.keys()
    assert all(torch.allclose(folded[k], merged[k], atol=1e-6) for k in merged)
    assert not torch.equal(folded["transformer_blocks.0.attn1.to_q.weight"], before["transformer_blocks.0.attn1.to_q.base_layer.weight"])



def test_ema_follows_diffusers_ema_model_and_restores_from_its_state():
    """The sharding-aware EMA replaces diffusers' EMAModel: the same numbers (warm-up included), and its state restores."""
    from diffusers.training_utils import EMAModel

    from model.train.ema import EMA

    torch.manual_seed(0)
    weights = {"a": torch.nn.Parameter(torch.randn(4, 3)), "b": torch.nn.Parameter(torch.randn(5))}
    ours, reference = EMA(weights, decay=0.99), EMAModel(list(weights.values()), decay=0.99)
    for _ in range(30):
        with torch.no_grad():
            for p in weights.values():
                p.add_(torch.randn_like(p))
        ours.step(weights)
        reference.step(list(weights.values()))
    assert all(torch.allclose(ours.shadow[n], s, atol=1e-6) for n, s in zip(weights, reference.shadow_params))
    restored = EMA(weights, decay=0.99)
    restored.load_state_dict(ours.state_dict())
    assert restored.updates == 30 and all(torch.equal(restored.shadow[n], ours.shadow[n]) for n in weights)
