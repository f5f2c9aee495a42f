"""bench/model.py: the token count formula and the measuring helpers the benchmark rests on."""

from __future__ import annotations

import pytest
import torch

from bench.model import cpu_peak_bytes, dit_flops, token_counts


@pytest.mark.parametrize("references", [0, 1, 2, 4])
def test_token_count_at_45_frames_of_480x720(references):
    counts = token_counts(45, 480, 720, references)
    assert counts == {
        "text": 226,
        "video": 12 * 30 * 45,  # (45 - 1) / 4 + 1 latent frames of 60x90 latents in 2x2 patches
        "references": references * 30 * 45,
        "total": 226 + 16200 + references * 1350,
    }


def test_token_count_matches_the_tiny_transformer_sequence():
    from model.cinema.dit import CinemaTransformer3DModel

    torch.manual_seed(0)
    model = CinemaTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, time_embed_dim=8, text_embed_dim=8, num_layers=1,
        sample_height=4, sample_width=6, sample_frames=9,
    )  # fmt: skip
    seen = []
    block = model.transformer_blocks[0]
    block.register_forward_hook(lambda _, args, out: seen.append(out[0].shape[1] + out[1].shape[1]))
    video, text = torch.randn(1, 3, 16, 4, 6), torch.randn(1, 226, 8)
    model(video, text, torch.tensor([1]), references=[torch.randn(2, 16, 4, 6)])
    assert seen == [token_counts(9, 32, 48, 2)["total"]]


def test_flops_grow_with_width_layers_and_quadratically_in_tokens():
    assert dit_flops(64, 2, 100) == 2 * dit_flops(64, 1, 100)
    attention_only = dit_flops(64, 1, 2000) - 2 * dit_flops(64, 1, 1000)
    assert attention_only == pytest.approx(3 * 4 * 64 * (2000**2 - 2 * 1000**2))


def test_cpu_peak_counts_live_tensors():
    small = cpu_peak_bytes(lambda: torch.ones(1024, 256).sum())["total"]
    large = cpu_peak_bytes(lambda: torch.ones(1024, 2560).sum())["total"]
    assert 1024 * 256 * 4 <= small < 2 * 1024 * 256 * 4
    assert 1024 * 2560 * 4 <= large < 2 * 1024 * 2560 * 4


def test_gpu_rows_run_end_to_end_on_a_tiny_layout(monkeypatch):
    """The GPU section cannot run here; its code path runs on CPU with the CUDA calls stubbed out."""
    from bench import model as bench

    for name in ["synchronize", "reset_peak_memory_stats", "empty_cache"]:
        monkeypatch.setattr(torch.cuda, name, lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 0)
    tiny = {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "time_embed_dim": 16,
        "text_embed_dim": 32,
        "num_layers": 1,
        "sample_height": 4,
        "sample_width": 6,
        "use_rotary_positional_embeddings": True,
    }
    rows = bench.gpu_rows(1, layouts={"tiny": tiny}, video=(9, 32, 48), matmul_size=64, device="cpu")
    table = [row for row in rows if row.startswith("| tiny |")]
    assert [row.split("|")[2].strip() for row in table] == ["0", "1", "2", "4"]
    assert [int(row.split("|")[3]) for row in table] == [token_counts(9, 32, 48, n)["total"] for n in (0, 1, 2, 4)]
