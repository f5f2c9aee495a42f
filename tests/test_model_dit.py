"""model/cinema/dit.py: CogVideoX's transformer with reference frames, against the stock transformer."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel
from model_fixtures import cinema_tiny, one_thread  # noqa: F401  (fixtures)

from model.cinema.dit import CinemaTransformer3DModel

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT_WIDTH, TEXT_LENGTH, CHANNELS = 32, 226, 16


@pytest.fixture(scope="module", params=["2b", "5b"])
def layout(request, cinema_tiny):
    """(ours, stock, pipeline) loaded from the same stock checkpoint folder."""
    folder = cinema_tiny / f"cogvideox_{request.param}"
    ours = CinemaTransformer3DModel.from_pretrained(folder, subfolder="transformer").eval()
    stock = CogVideoXTransformer3DModel.from_pretrained(folder, subfolder="transformer").eval()
    return ours, stock, CogVideoXPipeline.from_pretrained(folder)


def inputs(batch=2, frames=3, height=4, width=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, CHANNELS, height, width, generator=generator)
    text = torch.randn(batch, TEXT_LENGTH, TEXT_WIDTH, generator=generator)
    timestep = torch.randint(0, 1000, (batch,), generator=generator)
    return video, text, timestep


def references(counts, height=4, width=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, CHANNELS, height, width, generator=generator) for count in counts]


def stock_forward(stock, pipeline, video, text, timestep):
    """The stock transformer, with rotary embeddings built by the stock pipeline (5B layout)."""
    _, frames, _, height, width = video.shape
    rotary = None
    if stock.config.use_rotary_positional_embeddings:
        scale = pipeline.vae_scale_factor_spatial
        rotary = pipeline._prepare_rotary_positional_embeddings(height * scale, width * scale, frames, video.device)
    return stock(video, text, timestep, image_rotary_emb=rotary).sample


@pytest.mark.parametrize("grid", [(3, 4, 6), (2, 6, 8)], ids=["checkpoint-size", "other-size"])
def test_zero_references_equal_the_stock_transformer(layout, grid):
    ours, stock, pipeline = layout
    assert stock.state_dict().keys() == ours.state_dict().keys()
    video, text, timestep = inputs(frames=grid[0], height=grid[1], width=grid[2])
    with torch.no_grad():
        expected = stock_forward(stock, pipeline, video, text, timestep)
        plain = ours(video, text, timestep).sample
        empty = ours(video, text, timestep, references=references([0, 0], grid[1], grid[2])).sample
    difference = max((plain - expected).abs().max().item(), (empty - expected).abs().max().item())
    positions = "rotary" if ours.config.use_rotary_positional_embeddings else "sincos"
    print(f"{positions} {grid}: max abs diff {difference:.2e}")
    torch.testing.assert_close(plain, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(empty, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("count", [0, 1, 4])
def test_output_has_only_the_video_frames(layout, count):
    ours, _, _ = layout
    video, text, timestep = inputs()
    with torch.no_grad():
        output = ours(video, text, timestep, references=references([count, count])).sample
    assert output.shape == video.shape


def test_references_condition_the_video(layout):
    ours, _, _ = layout
    video, text, timestep = inputs()
    with torch.no_grad():
        without = ours(video, text, timestep).sample
        one = ours(video, text, timestep, references=references([1, 1])).sample
        other = ours(video, text, timestep, references=references([1, 1], seed=9)).sample
    assert not torch.allclose(one, without, atol=1e-4) and not torch.allclose(one, other, atol=1e-4)


def test_each_reference_has_a_position_of_its_own(layout):
    ours, _, _ = layout
    video, text, timestep = inputs()
    two = references([2, 2])
    swapped = [sample.flip(0) for sample in two]
    with torch.no_grad():
        output = ours(video, text, timestep, references=two).sample
        output_swapped = ours(video, text, timestep, references=swapped).sample
    assert not torch.allclose(output, output_swapped, atol=1e-4)


def test_mixed_reference_counts_in_one_batch_equal_separate_runs(layout):
    ours, _, _ = layout
    video, text, timestep = inputs(batch=4)
    mixed = references([0, 4, 1, 2])
    with torch.no_grad():
        batched = ours(video, text, timestep, references=mixed).sample
        rows = [slice(i, i + 1) for i in range(4)]
        separate = torch.cat([ours(video[r], text[r], timestep[r], references=mixed[r]).sample for r in rows])
        padded = ours.forward_padded(video, text, timestep, mixed)
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded, batched, atol=1e-5, rtol=1e-5)


def test_masked_reference_padding_changes_nothing(layout):
    ours, _, _ = layout
    video, text, timestep = inputs()
    frames = torch.stack(references([3, 3]))
    valid = torch.tensor([[True, False, False], [True, True, False]])
    garbage = torch.where(valid[:, :, None, None, None], frames, 100 * torch.randn_like(frames))
    with torch.no_grad():
        clean = ours.forward_frames(video, text, timestep, frames, valid)
        noisy = ours.forward_frames(video, text, timestep, garbage, valid)
        alone = ours.forward_frames(video[:1], text[:1], timestep[:1], frames[:1, :1])
    torch.testing.assert_close(noisy, clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clean[:1], alone, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(cinema_tiny):
    folder = cinema_tiny / "cogvideox_5b"
    video, text, timestep = inputs()
    refs = references([1, 2])
    grads = []
    for checkpointing in (False, True):
        model = CinemaTransformer3DModel.from_pretrained(folder, subfolder="transformer")
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(video, text, timestep, references=refs).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_round_trip_through_save_pretrained(layout, tmp_path):
    ours, _, _ = layout
    ours.save_pretrained(tmp_path)
    loaded = CinemaTransformer3DModel.from_pretrained(tmp_path).eval()
    video, text, timestep = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(video, text, timestep, references=references([1, 0])).sample,
            ours(video, text, timestep, references=references([1, 0])).sample,
            atol=0,
            rtol=0,
        )


def test_cogvideox_1_5_layout_is_refused():
    torch.manual_seed(0)
    model = CinemaTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, time_embed_dim=16, text_embed_dim=TEXT_WIDTH, num_layers=1,
        patch_size_t=2, use_rotary_positional_embeddings=True, sample_height=4, sample_width=6,
    )  # fmt: skip
    video, text, timestep = inputs(frames=2)
    with pytest.raises(NotImplementedError, match="CogVideoX 1.0"):
        model(video, text, timestep)
