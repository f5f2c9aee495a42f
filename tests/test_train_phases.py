"""The other ways to train: the align phase, LoRA on the DiT, bf16; each checkpoint loads for sampling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from train_fixtures import (  # noqa: F401
    cinema_models,
    metrics,
    real_samples,
    tiny_train_config,
    write_shard,
)

from model.cinema import checkpoint
from model.cinema.dit import CinemaTransformer3DModel
from model.cinema.model import CinemaModel
from model.train.config import LoraConfig
from model.train.trainer import Trainer


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shard(tmp_path_factory.mktemp("phases-run"), real_samples(3))


@pytest.mark.slow
def test_align_phase_trains_the_aligner_alone(cinema_models, shards, tmp_path):
    config = tiny_train_config(cinema_models, shards, tmp_path / "align", phase="align", max_steps=30, checkpoint_every=30, log_every=5)
    Trainer(config).fit()
    losses = [m["loss"] for m in metrics(Path(config.run))]
    assert losses[-1] < 0.8 * losses[0], losses
    last = checkpoint.latest(Path(config.run))
    assert (last / "aligner").is_dir() and not (last / "transformer").exists()
    model = CinemaModel.from_config(checkpoint.model_config(last))  # the trained aligner, the stock DiT
    stock = CinemaModel.from_config(config.model)
    changed = [n for (n, a), (_, b) in zip(model.aligner.named_parameters(), stock.aligner.named_parameters()) if not torch.equal(a, b)]
    assert changed
    for (name, a), (_, b) in zip(model.transformer.named_parameters(), stock.transformer.named_parameters()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_lora_trains_adapters_and_saves_a_merged_transformer(cinema_models, shards, tmp_path):
    lora = LoraConfig(rank=4, alpha=4)
    config = tiny_train_config(cinema_models, shards, tmp_path / "lora", lora=lora, max_steps=4, checkpoint_every=4)
    trainer = Trainer(config)
    trainer.fit()
    trained = {n for n, p in trainer.model.transformer.named_parameters() if p.requires_grad}
    assert trained and all("lora" in n for n in trained)
    last = checkpoint.latest(Path(config.run))
    saved = CinemaTransformer3DModel.from_pretrained(last, subfolder="transformer")  # plain weights, no peft needed
    assert not any("lora" in n for n, _ in saved.named_parameters())
    base = CinemaModel.from_config(config.model).transformer
    differs = [n for (n, a), (_, b) in zip(saved.named_parameters(), base.named_parameters()) if not torch.equal(a, b)]
    assert differs and all(any(t in n for t in lora.target_modules) for n in differs)
    # The folded weights compute what the trained base + adapters compute.
    generator = torch.Generator().manual_seed(0)
    shape = saved.config
    video = torch.randn(1, 3, shape.in_channels, 4, 6, generator=generator)
    text = torch.randn(1, shape.max_text_seq_length, shape.text_embed_dim, generator=generator)
    trainer.model.transformer.eval()
    with torch.no_grad():
        expected = trainer.model.transformer(video, text, torch.tensor([500])).sample
        assert saved(video, text, torch.tensor([500])).sample == pytest.approx(expected, abs=1e-5)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; mixed precision may only be chosen by a fresh one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_bf16_steps_are_finite(cinema_models, shards, tmp_path, fresh_accelerate_state):
    config = tiny_train_config(cinema_models, shards, tmp_path / "bf16", precision="bf16", max_steps=4, checkpoint_every=4)
    trainer = Trainer(config)
    trainer.fit()
    assert trainer.model.mllm.model.dtype == torch.bfloat16  # frozen parts in bf16, trained ones in fp32
    assert trainer.model.transformer.dtype == torch.float32
    rows = metrics(Path(config.run))
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["nonfinite_steps"] == 0


@pytest.mark.slow
def test_accumulation_with_checkpointing_matches_one_bigger_batch(cinema_models, shards, tmp_path):
    """Batch 1 x 2 accumulated steps (activations recomputed) trains like batch 2: same samples, same noise."""
    big = tiny_train_config(cinema_models, shards, tmp_path / "big", max_steps=4, checkpoint_every=4)
    big.data.batch_size = 2
    Trainer(big).fit()
    small = tiny_train_config(
        cinema_models, shards, tmp_path / "small", max_steps=4, checkpoint_every=4, gradient_accumulation=2, gradient_checkpointing=True
    )
    Trainer(small).fit()
    expected = [m["loss"] for m in metrics(Path(big.run))]
    assert [m["loss"] for m in metrics(Path(small.run))] == pytest.approx(expected, rel=1e-5)
