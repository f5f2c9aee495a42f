"""model/cinema/wan_dit.py: Wan's transformer with reference frames, against the stock WanTransformer3DModel."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel
from model_fixtures import one_thread, wan_tiny  # noqa: F401  (fixtures)

from model.cinema.wan_dit import CinemaWanTransformer3DModel

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT_WIDTH, TEXT_LENGTH = 32, 512


@pytest.fixture(scope="module", params=["wan2_1", "wan2_2"])
def layout(request, wan_tiny):
    """(ours, stock) from the same stock checkpoint folder: 16 channels (Wan2.1) or 48 (Wan2.2-TI2V)."""
    folder = wan_tiny / request.param
    ours = CinemaWanTransformer3DModel.from_pretrained(folder, subfolder="transformer").eval()
    stock = WanTransformer3DModel.from_pretrained(folder, subfolder="transformer").eval()
    return ours, stock


def inputs(model, batch=2, frames=3, height=4, width=6, seed=0):
    """CINEMA-layout video (batch, frames, C, h, w), zero-padded text as UMT5 gives it, float timesteps."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, model.config.in_channels, height, width, generator=generator)
    text = torch.randn(batch, TEXT_LENGTH, TEXT_WIDTH, generator=generator)
    text[:, 20:] = 0
    timestep = torch.rand(batch, generator=generator) * 1000
    return video, text, timestep


def references(model, counts, height=4, width=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, model.config.in_channels, height, width, generator=generator) for count in counts]


def stock(model, video, text, timestep):
    """The stock forward on (batch, C, frames, h, w), back in the CINEMA layout."""
    return model(video.permute(0, 2, 1, 3, 4), timestep, text).sample.permute(0, 2, 1, 3, 4)


def per_token(timestep, video, model):
    _, p_h, p_w = model.config.patch_size
    tokens = video.shape[1] * (video.shape[3] // p_h) * (video.shape[4] // p_w)
    return timestep[:, None].expand(-1, tokens).clone()


@pytest.mark.parametrize("per_token_timestep", [False, True], ids=["per-sample", "per-token"])
def test_zero_references_equal_the_stock_transformer_exactly(layout, per_token_timestep):
    ours, reference = layout
    assert ours.state_dict().keys() == reference.state_dict().keys()
    video, text, timestep = inputs(ours)
    if per_token_timestep:
        timestep = per_token(timestep, video, ours)
        timestep[:, ::3] = 0  # TI2V-style: some tokens clean
    with torch.no_grad():
        expected = stock(reference, video, text, timestep)
        plain = ours(video, text, timestep).sample
        empty = ours(video, text, timestep, references=references(ours, [0, 0])).sample
    assert torch.equal(plain, expected)
    assert torch.equal(empty, expected)


def test_references_are_extra_frames_of_the_stock_forward(layout):
    """Cinema(video, refs) == stock(concat)[:F]: the references sit at time F + k of the stock grid."""
    ours, reference = layout
    video, text, timestep = inputs(ours, batch=1)
    refs = references(ours, [2])
    with torch.no_grad():
        expected = stock(reference, torch.cat([video, refs[0][None]], dim=1), text, timestep)[:, : video.shape[1]]
        got = ours(video, text, timestep, references=refs).sample
        alone = ours(video, text, timestep).sample
    assert torch.equal(got, expected)
    assert not torch.allclose(got, alone, atol=1e-4)  # the references are attended to


def test_reference_rope_positions_follow_the_video_on_its_grid(layout):
    """The rotary code of reference k's tokens is the stock one of frame F + k; the video prefix's is unchanged."""
    ours, _ = layout
    video = torch.zeros(1, ours.config.in_channels, 3, 4, 6)
    with_refs = torch.zeros(1, ours.config.in_channels, 5, 4, 6)
    cos_video, _ = ours.rope(video)
    cos_all, sin_all = ours.rope(with_refs)
    per_frame = 2 * 3
    assert torch.equal(cos_all[:, : 3 * per_frame], cos_video)
    t_dim = ours.rope.t_dim
    for k in range(2):
        frame = cos_all[0, (3 + k) * per_frame : (4 + k) * per_frame, 0]
        assert torch.equal(frame[:, :t_dim], ours.rope.freqs_cos[3 + k, :t_dim].expand(per_frame, -1).float())
        assert torch.equal(frame[:, t_dim:], cos_all[0, :per_frame, 0, t_dim:])  # same spatial grid as frame 0


def test_references_at_timestep_zero_use_the_per_token_timestep(layout):
    ours, reference = layout
    video, text, timestep = inputs(ours, batch=1)
    refs = references(ours, [1])
    concat = torch.cat([video, refs[0][None]], dim=1)
    steps = per_token(timestep, concat, ours)
    steps[:, -6:] = 0  # the reference frame's 2 x 3 tokens
    with torch.no_grad():
        expected = stock(reference, concat, text, steps)[:, :3]
        got = ours(video, text, timestep, references=refs, references_at_zero=True).sample
        shared = ours(video, text, timestep, references=refs).sample
    assert torch.equal(got, expected)
    assert not torch.allclose(got, shared, atol=1e-5)


def test_mixed_reference_counts_in_one_batch_equal_separate_runs(layout):
    ours, _ = layout
    video, text, timestep = inputs(ours, batch=3)
    refs = references(ours, [2, 0, 1])
    with torch.no_grad():
        batched = ours(video, text, timestep, references=refs, references_at_zero=True).sample
        alone = [
            ours(video[i : i + 1], text[i : i + 1], timestep[i : i + 1], references=[refs[i]], references_at_zero=True).sample
            for i in range(3)
        ]
    torch.testing.assert_close(batched, torch.cat(alone), rtol=0, atol=1e-6)
