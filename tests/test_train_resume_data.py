"""model/train/data.py: a resumed stream passes over the batches taken before without decoding them,
and goes on exactly as the uninterrupted one."""

from __future__ import annotations

import io
import tarfile
from itertools import islice

import numpy as np
import pytest
import torch
from train_fixtures import FRAMES, real_samples, write_shard

from model.train import data
from model.train.config import DataConfig
from model.train.data import ShardStream, make_loader


def portrait(sample: dict, key: str) -> dict:
    return {**sample, "key": key, "frames": [np.ascontiguousarray(f.transpose(1, 0, 2)) for f in sample["frames"]]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of landscape and portrait clips (two buckets, so a bucket waits across batches), with
    a clip too short to use and one whose mp4 is cut."""
    run = tmp_path_factory.mktemp("resume-data")
    clips = real_samples(6)
    short = {**real_samples(1, frames=5)[0], "key": "short"}
    write_shard(run, [clips[0], portrait(clips[1], "tall-1"), clips[2], short, portrait(clips[3], "tall-3")], name="train-a")
    write_shard(run, [portrait(clips[4], "tall-4"), {**clips[5], "key": "cut"}, clips[5]], name="train-b")
    tar_path = run / "shards" / "train-b.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for member, payload in members:
            if member.name == "cut.mp4":
                payload = payload[: len(payload) // 3]
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    return run / "shards"


def config_of(shards, workers: int = 0) -> DataConfig:
    return DataConfig(shards=str(shards), frames=FRAMES, buckets=[(32, 48), (48, 32)], max_references=2, batch_size=2, workers=workers)


def same(batch: data.Batch, other: data.Batch) -> None:
    assert (batch.keys, batch.seeds, batch.captions, batch.skipped) == (other.keys, other.seeds, other.captions, other.skipped)
    torch.testing.assert_close(batch.videos, other.videos, rtol=0, atol=0)
    for references, others in zip(batch.references, other.references):
        assert [np.asarray(r).tobytes() for r in references] == [np.asarray(r).tobytes() for r in others]


@pytest.mark.parametrize("taken", [3, 7])  # mid-epoch with a portrait clip waiting; in a later epoch
def test_resume_decodes_no_sample_taken_before_and_goes_on_exactly(shards, monkeypatch, taken):
    config = config_of(shards)
    whole = list(islice(ShardStream(config, seed=5), taken + 3))

    decoded, payloads = [], []
    decode, read_video, on_white = data.decode, data.read_video, data.on_white

    def counting(function, calls, name):
        def wrapped(*args, **kwargs):
            calls.append(name(*args))
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(data, "decode", counting(decode, decoded, lambda raw, c, v, seed, epoch: (raw["__key__"], data.sample_seed(seed, raw["__key__"], epoch))))
    monkeypatch.setattr(data, "read_video", counting(read_video, payloads, lambda *args: "video"))
    monkeypatch.setattr(data, "on_white", counting(on_white, payloads, lambda *args: "reference"))
    stream = ShardStream(config, seed=5)
    stream.resume_after = taken
    first = next(iter(stream))

    same(first, whole[taken])
    taken_before = {(key, seed) for batch in whole[:taken] for key, seed in zip(batch.keys, batch.seeds)}
    later = {(key, seed) for batch in whole[taken:] for key, seed in zip(batch.keys, batch.seeds)}
    bad = {(key, seed) for key, seed in decoded if key in ("cut", "short")}
    assert decoded and not set(decoded) & taken_before
    assert set(decoded) - bad <= later
    assert payloads and len(payloads) <= 3 * len(decoded)  # payloads are decoded in `decode` only


def test_resume_with_loader_workers_goes_on_exactly(shards):
    """Two workers: batches come from them in turn, so each passes over its own share of those taken
    (3 taken: two from the first worker, one from the second)."""
    config = config_of(shards, workers=2)
    whole = list(islice(make_loader(config, seed=5, rank=0, world=1, decode_video=True), 7))
    loader = make_loader(config, seed=5, rank=0, world=1, decode_video=True)
    loader.dataset.resume_after = 3
    for batch, expected in zip(islice(loader, 4), whole[3:], strict=True):
        same(batch, expected)


def test_cached_samples_keep_the_reference_order_their_mllm_states_were_encoded_in():
    """The cache holds the MLLM states of one reference order: the VAE reference latents must keep
    that order, shuffle_references or not (else the model learns that MLLM and VAE references disagree)."""
    import json

    from PIL import Image
    from safetensors.torch import save

    from model.train.data import CACHE, decode

    config = DataConfig(shards="unused", frames=9, max_references=3, shuffle_references=True, reference_augment=None)
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    marked = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 4, 2, 2).contiguous()  # latent i holds i
    for key in range(8):  # several seeds: a shuffle would move some of them
        raw = {
            "__key__": f"k{key}", "txt": b"three things",
            "json": json.dumps({"subjects": [{"ref": f"ref{i}.png"} for i in range(3)]}).encode(),
            **{f"ref{i}.png": png.getvalue() for i in range(3)},
            CACHE: save({"latents": torch.zeros(3, 4, 2, 2), "reference_latents": marked}),
        }  # fmt: skip
        sample = decode(raw, config, decode_video=False, seed=0, epoch=0)
        assert sample.cache["reference_latents"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
