"""The four training choices of issue 14: fixed frame rate, joint unconditional dropout,
AlignerNet supervised over T5's padding, one forward per joint batch."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from train_fixtures import cinema_models  # noqa: F401

from model.cinema.aligner import alignment_loss
from model.cinema.model import CinemaModel, Conditions
from model.testing.tiny import tiny_cinema_config
from model.train.config import TrainConfig
from model.train.data import BadSample, frame_picks, read_video
from model.train.trainer import AlignPhase, JointPhase
from stages.video import encode_mp4


@pytest.fixture(scope="module")
def model(cinema_models) -> CinemaModel:
    torch.set_num_threads(1)
    return CinemaModel.from_config(tiny_cinema_config(cinema_models))


def counting_clip(path, count: int, rate: int) -> bytes:
    """A clip whose frame i is flat grey 4*i, so a decoded frame names its own index."""
    encode_mp4(path, (np.full((32, 48, 3), 4 * i, np.uint8) for i in range(count)), Fraction(rate))
    return path.read_bytes()


def test_frames_are_sampled_one_over_fps_apart(tmp_path):
    rate, fps, frames = 24, 8.0, 9
    video = read_video(counting_clip(tmp_path / "c.mp4", 60, rate), frames, fps, [(32, 48)])
    indices = ((video.mean(dim=(0, 2, 3)) + 1) * 127.5 / 4).round().numpy()
    times = indices / rate
    np.testing.assert_allclose(np.diff(times), 1 / fps, atol=1e-9)  # 24/8: exactly every 3rd frame
    assert times[0] == pytest.approx((59 / rate - (frames - 1) / fps) / 2, abs=0.5 / rate)  # centred

    picks = np.array(frame_picks(total=300, rate=29.97, frames=45, fps=8.0))  # not a multiple: nearest frames
    assert np.abs(np.diff(picks / 29.97) - 1 / 8).max() <= 1 / 29.97 + 1e-9
    assert np.abs(picks / 29.97 - (picks[0] / 29.97 + np.arange(45) / 8)).max() <= 0.5 / 29.97 + 1e-9
    with pytest.raises(BadSample, match="too_few_frames"):  # 2 s at 30 fps cannot hold 45 frames at 8 fps
        frame_picks(total=60, rate=30, frames=45, fps=8.0)


def unconditional_rate(model: CinemaModel, draws: int) -> float:
    """The share of samples that came out with neither caption nor references."""
    marker = torch.full((draws, 3, model.mllm.hidden_size), 7.0)
    frame = torch.zeros(1, *model.vae.latent_size(32, 48))
    conditions = Conditions(marker, torch.ones(draws, 3, dtype=torch.bool), [frame] * draws)
    generators = [torch.Generator().manual_seed(seed) for seed in range(draws)]
    dropped = model.drop_conditions(conditions, generators)
    no_caption = dropped.mllm_states[:, 0, 0] != 7.0
    no_references = torch.tensor([len(r) == 0 for r in dropped.reference_latents])
    return (no_caption & no_references).float().mean().item()


def test_unconditional_input_appears_at_its_configured_rate(model, monkeypatch):
    draws, config = 10_000, model.config
    expected = config.unconditional_dropout + (1 - config.unconditional_dropout) * config.caption_dropout * config.reference_dropout
    rate = unconditional_rate(model, draws)
    print(f"unconditional: {rate:.4f} of {draws} (expected {expected:.4f})")
    assert config.unconditional_dropout == 0.1
    assert rate == pytest.approx(expected, abs=4 * (expected * (1 - expected) / draws) ** 0.5)
    monkeypatch.setattr(config, "unconditional_dropout", 0.0)  # independent draws alone: 1%
    assert unconditional_rate(model, draws) == pytest.approx(0.01, abs=0.004)


def test_aligner_loss_covers_t5_padding_with_the_configured_weight():
    torch.manual_seed(3)
    target = torch.randn(2, 10, 16)
    mask = torch.arange(10)[None, :] < torch.tensor([6, 3])[:, None]
    wrong_padding = torch.where(mask[..., None], target, torch.randn_like(target))
    inputs = {"states": wrong_padding, "mask": mask, "targets": target, "target_mask": mask}
    echo = SimpleNamespace(aligner=lambda states, mask: states)  # predicts its input: real tokens right, padding wrong

    def phase_loss(**values) -> float:
        return AlignPhase(SimpleNamespace(config=TrainConfig(**values))).loss(echo, inputs).item()

    assert TrainConfig().t5_padding_weight == 1.0
    assert phase_loss() > 0.5  # the default supervises padding like real tokens
    assert phase_loss(t5_padding_weight=0.0) == pytest.approx(0.0, abs=1e-6)
    half = alignment_loss(wrong_padding, target, mask, padding_weight=0.5).item()
    assert 0 < half < phase_loss()
    assert alignment_loss(target, target, mask, padding_weight=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_a_joint_batch_of_two_runs_as_one_forward(model, monkeypatch):
    from model.cinema.dit import CinemaTransformer3DModel

    torch.manual_seed(0)
    refs = torch.randn(1, *model.vae.latent_size(32, 48))
    latents = torch.randn(2, 3, *refs.shape[1:])
    states = torch.randn(2, 5, model.mllm.hidden_size)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # different caption lengths, padded
    conditions = Conditions(states, mask, [refs, refs.flip(-1)])
    calls = []
    real_forward = CinemaTransformer3DModel.forward_frames

    def counted(self, video, *args, **kwargs):
        calls.append(video.shape[0])
        return real_forward(self, video, *args, **kwargs)

    monkeypatch.setattr(CinemaTransformer3DModel, "forward_frames", counted)
    phase = JointPhase(trainer=None)
    model.eval()  # no dropout: both samples keep one reference, so one group
    with torch.no_grad():
        both = phase.loss(model, {"latents": latents, "conditions": conditions, "seeds": [11, 12]})
        assert calls == [2]
        alone = [
            phase.loss(model, {"latents": latents[i : i + 1], "conditions": Conditions(states[i : i + 1, : int(mask[i].sum())], mask[i : i + 1, : int(mask[i].sum())], [conditions.reference_latents[i]]), "seeds": [seed]})
            for i, seed in enumerate([11, 12])
        ]  # fmt: skip
    assert both.item() == pytest.approx(sum(a.item() for a in alone) / 2, rel=1e-5)  # each sample's own draws
