"""Training batches streamed from WebDataset shards, raw (`make curate`) or cached (`make encode`).

Determinism is the design: epoch e reads the shards in an order drawn from (seed, e), each
process and loader worker takes its own share (whole shards when there are enough, every n-th
sample otherwise), and every sample carries a seed of its own, drawn from (seed, key, epoch),
for its noise, timestep and dropout. So a resumed run sees the same batches and the same noise,
and a global batch split over two processes is the same global batch as in one.

The stream never ends (epochs follow one another), so no process runs out before another. A bad
sample (missing reference, broken mp4, too few frames, a cache made with another config) is
skipped with a reason; the counts ride on the next batch to the trainer, which logs them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw, ImageOps
from safetensors.torch import load as load_tensors
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from model.cinema.model import REFERENCE_BACKGROUND, on_white
from model.train.config import DataConfig, ReferenceAugment
from stages.video import iter_frames, open_video

CACHE = "cache.safetensors"  # the member `make encode` adds to a sample


class BadSample(Exception):
    """A sample the trainer cannot use; `reason` is the counter it adds to."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Sample:
    key: str
    seed: int
    caption: str
    references: list[Image.Image]
    bucket: tuple[int, ...]  # samples of one bucket batch together
    video: torch.Tensor | None = None  # (3, frames, H, W) in [-1, 1]
    cache: dict[str, torch.Tensor] | None = None  # latents, MLLM states, reference latents, T5 targets


@dataclass
class Batch:
    keys: list[str]
    seeds: list[int]
    captions: list[str]
    references: list[list[Image.Image]]
    videos: torch.Tensor | None  # (batch, 3, frames, H, W); None for cached shards or the align phase
    caches: list[dict[str, torch.Tensor]] | None
    skipped: Counter = field(default_factory=Counter)  # reason -> bad samples met since the last batch


def sample_seed(seed: int, key: str, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}/{epoch}".encode()).digest()[:8], "little") >> 1


def latent_seed(seed: int, key: str) -> int:
    """The seed of a clip's VAE posterior sample: one per clip, as `make encode` caches it."""
    return sample_seed(seed, key, -1)


MANIFESTED = ("shards", "encoded")  # a run folder's shard folders, each listed in the table of its name


def shard_paths(shards: str) -> tuple[list[str], frozenset[str]]:
    """The tars to train on, and the keys in them not to train on.

    A run folder's `shards/` or `encoded/` is read through its manifest, never globbed: a tar a
    killed run left unlisted is not trained on, nor is a clip that the run's current filters (a
    stricter threshold set after the shards were written) remove; a shard left with no clip is
    dropped. A plain folder of tars (no `manifests/` beside it) is taken whole.
    """
    folder = Path(shards)
    run = folder.parent
    if (run / "manifests").is_dir():
        if folder.name not in MANIFESTED:
            raise ValueError(f"{shards} is in the run folder {run}: train on its {' or '.join(MANIFESTED)}/, which its manifests list")
        paths, removed = manifest_shards(run, folder.name)
    else:
        paths, removed = sorted(str(p) for p in folder.glob("*.tar")), frozenset()
    if not paths:
        raise FileNotFoundError(f"no .tar shards in {shards}")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shards listed in {run}/manifests are missing, e.g. {missing[0]}")
    return paths, removed


def manifest_shards(run: Path, table: str) -> tuple[list[str], frozenset[str]]:
    """Listed shards of `table` with a clip the run's filters still pass, and the clips they no longer pass."""
    from manifests import views
    from manifests.filters import FilterConfig
    from stages.shards import Shards

    # The run's own thresholds, read from the config it saved (not through pipeline.config: model/ does not import it).
    saved = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None
    filters = FilterConfig.model_validate(saved["config"]["filter"]) if saved else None
    passing = views.where(run, Shards.filters, filters)
    listed = {
        "shards": "SELECT shard, path, clip_ids FROM shards",
        "encoded": "SELECT e.shard, e.path, s.clip_ids FROM encoded e JOIN shards s USING (shard)",
    }[table]
    sql = f"""
        WITH listed AS ({listed}),
             removed AS (SELECT clip_id FROM candidates WHERE shard IS NOT NULL AND NOT ({passing})),
             clips AS (SELECT path, unnest(clip_ids) AS clip_id FROM listed)
        SELECT path, list(clip_id) FILTER (WHERE clip_id IN (SELECT clip_id FROM removed)) AS removed,
               count(*) AS n_clips
        FROM clips GROUP BY path ORDER BY path
    """
    rows = [{**row, "removed": row["removed"] or []} for row in views.query(run, sql).to_pylist()]
    paths = [str(run / row["path"]) for row in rows if len(row["removed"]) < row["n_clips"]]
    return paths, frozenset(key for row in rows for key in row["removed"])


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - aspect))


def augment(image: Image.Image, config: ReferenceAugment | None, rng: random.Random) -> Image.Image:
    """Scale, crop, flip and mask one reference (already on white), drawn from the sample's random stream."""
    if config is None:
        return image
    factor = rng.uniform(*config.scale)
    image = image.resize((max(2, round(image.width * factor)), max(2, round(image.height * factor))), Image.BICUBIC)
    w, h = image.size
    left, top = round(rng.uniform(0, config.crop) * w), round(rng.uniform(0, config.crop) * h)
    right, bottom = w - round(rng.uniform(0, config.crop) * w), h - round(rng.uniform(0, config.crop) * h)
    image = image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
    if rng.random() < config.flip:
        image = ImageOps.mirror(image)
    if rng.random() < config.mask:
        mw, mh = round(image.width * config.mask_size), round(image.height * config.mask_size)
        if mw and mh:
            x, y = rng.randrange(image.width - mw + 1), rng.randrange(image.height - mh + 1)
            ImageDraw.Draw(image).rectangle((x, y, x + mw - 1, y + mh - 1), fill=(REFERENCE_BACKGROUND,) * 3)
    return image


def frame_picks(total: int, rate: float, frames: int, fps: float) -> list[int]:
    """Indices of `frames` frames 1/fps seconds apart, centred in a clip of `total` frames at `rate` fps.

    The first pick is the frame nearest the window's start; pick k is the frame nearest k/fps after it.
    """
    span = (frames - 1) / fps
    start = ((total - 1) / rate - span) / 2
    if start < 0:
        raise BadSample("too_few_frames", f"{total} frames at {rate:.3g} fps last under {span:.3g} s")
    first = math.floor(start * rate + 0.5)
    picks = [first + math.floor(k * rate / fps + 0.5) for k in range(frames)]
    if len(set(picks)) != frames:
        raise BadSample("too_few_frames", f"{rate:.3g} fps is below the {fps:.3g} fps sampled")
    return picks


@dataclass
class VideoLayout:
    """Where a clip's frames come from, read from its container's header: no frame decoded."""

    picks: list[int]  # the frames kept
    size: tuple[int, int]  # (width, height) they are resized to, covering the bucket
    bucket: tuple[int, int]  # (height, width) they are cropped to


def video_layout(data: bytes, frames: int, fps: float, buckets: list[tuple[int, int]]) -> VideoLayout:
    """The layout of `frames` frames at `fps` from the middle of the clip, covering the nearest bucket."""
    try:
        container, stream = open_video(io.BytesIO(data), threads=False)
        total, height, width = stream.frames, stream.height, stream.width
        rate = float(stream.average_rate or stream.guessed_rate)
        container.close()
    except Exception as error:  # PyAV raises many kinds on broken files
        raise BadSample("broken_mp4", str(error)) from error
    if total < frames:
        raise BadSample("too_few_frames", f"{total} < {frames}")
    bucket_h, bucket_w = nearest_bucket(height, width, buckets)
    scale = max(bucket_h / height, bucket_w / width)
    size = (max(bucket_w, round(width * scale)), max(bucket_h, round(height * scale)))
    return VideoLayout(frame_picks(total, rate, frames, fps), size, (bucket_h, bucket_w))


def read_video(data: bytes, frames: int, fps: float, buckets: list[tuple[int, int]], layout: VideoLayout | None = None) -> torch.Tensor:
    """`frames` frames at `fps` from the middle of the clip, resized to cover the nearest bucket and centre-cropped."""
    layout = layout or video_layout(data, frames, fps, buckets)
    wanted = set(layout.picks)
    try:
        images = [f.image for f in iter_frames(io.BytesIO(data), fmt="rgb24", size=layout.size, keep=wanted.__contains__)]
    except Exception as error:
        raise BadSample("broken_mp4", str(error)) from error
    if len(images) != frames:
        raise BadSample("too_few_frames", f"decoded {len(images)} of {frames}")
    (bucket_h, bucket_w), (width, height) = layout.bucket, layout.size
    top, left = (height - bucket_h) // 2, (width - bucket_w) // 2
    video = torch.from_numpy(np.stack(images)[:, top : top + bucket_h, left : left + bucket_w])
    return video.permute(3, 0, 1, 2).float() / 127.5 - 1


@dataclass
class Outline:
    """A shard sample as its metadata and headers describe it, no payload decoded: enough to tell which
    batch it joins (its bucket) or why it is bad, so a resumed stream can pass over it cheaply."""

    key: str
    caption: str
    references: list[bytes]  # the encoded images, in the metadata's order
    bucket: tuple[int, ...]  # the decoded video's or the cached latents' shape; () without either
    layout: VideoLayout | None = None  # a raw clip's, when its video is decoded


def cached_shapes(data: bytes) -> dict[str, list[int]]:
    """The tensor shapes of a safetensors file, from its JSON header only."""
    try:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}
    except (ValueError, KeyError, TypeError) as error:
        raise BadSample("cache_mismatch", f"unreadable cache header: {error}") from error


def outline(raw: dict, config: DataConfig, decode_video: bool) -> Outline:
    """What `decode` checks before it decodes a payload, with the same verdicts."""
    key = raw["__key__"]
    try:
        meta = json.loads(raw["json"])
        caption = raw["txt"].decode()
    except (KeyError, ValueError) as error:
        raise BadSample("bad_metadata", str(error)) from error
    references = []
    for subject in meta.get("subjects", [])[: config.max_references]:
        if subject["ref"] not in raw:
            raise BadSample("missing_reference", f"{key} lists {subject['ref']}, the shard lacks it")
        references.append(raw[subject["ref"]])
    found = Outline(key, caption, references, bucket=())
    if CACHE in raw:
        shapes = cached_shapes(raw[CACHE])
        latents, reference_latents = shapes.get("latents", [0]), shapes.get("reference_latents", [0])
        if latents[0] != (config.frames - 1) // 4 + 1 or reference_latents[0] != len(references):
            raise BadSample("cache_mismatch", f"{key} was encoded with another frames or max_references")
        found.bucket = tuple(latents)
    elif decode_video:
        if "mp4" not in raw:
            raise BadSample("broken_mp4", f"{key} has no mp4")
        found.layout = video_layout(raw["mp4"], config.frames, config.fps, config.buckets)
        found.bucket = (3, config.frames, *found.layout.bucket)
    return found


def decode(raw: dict, config: DataConfig, decode_video: bool, seed: int, epoch: int) -> Sample:
    """One shard sample -> a Sample, or BadSample naming why not."""
    found = outline(raw, config, decode_video)
    references = []
    for image in found.references:
        try:
            references.append(on_white(image))
        except OSError as error:
            raise BadSample("broken_reference", str(error)) from error
    seed_of_sample = sample_seed(seed, found.key, epoch)
    rng = random.Random(seed_of_sample)
    order = list(range(len(references)))
    if config.shuffle_references:
        rng.shuffle(order)
    references = [augment(references[i], config.reference_augment, rng) for i in order]
    sample = Sample(found.key, seed_of_sample, found.caption, references, bucket=found.bucket)
    if CACHE in raw:
        # Cached features were drawn once, at encode time: the MLLM states hold the references in that
        # order, so the VAE latents keep it too (reordering only them would teach a mismatch).
        sample.cache = load_tensors(raw[CACHE])
    elif found.layout is not None:
        sample.video = read_video(raw["mp4"], config.frames, config.fps, config.buckets, found.layout)
    return sample


def collate(samples: list[Sample], skipped: Counter) -> Batch:
    return Batch(
        keys=[s.key for s in samples],
        seeds=[s.seed for s in samples],
        captions=[s.caption for s in samples],
        references=[s.references for s in samples],
        videos=torch.stack([s.video for s in samples]) if samples and samples[0].video is not None else None,
        caches=[s.cache for s in samples] if samples and samples[0].cache is not None else None,
        skipped=skipped,
    )


class ShardStream(IterableDataset):
    """The endless, deterministic stream of batches of one process (all its loader workers together).

    Set `resume_after` (before iterating) to the batches this process took before a resume: they are
    passed over by their outlines, no video or reference decoded, and the stream goes on exactly as
    the uninterrupted one (every sample's random stream is its own). Exact unless a worker's share has
    no usable sample (a worker that stops changes the loader's round robin) or a sample passed over
    has sound metadata and headers but a payload that fails to decode (the uninterrupted run skipped
    it; the resumed one counts it in its batch).
    """

    def __init__(self, config: DataConfig, seed: int, rank: int = 0, world: int = 1, decode_video: bool = True):
        self.config, self.seed, self.rank, self.world, self.decode_video = config, seed, rank, world, decode_video
        self.shards, self.removed = shard_paths(config.shards)
        self.resume_after = 0

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        workers, loader_worker = (info.num_workers, info.id) if info else (1, 0)
        # The loader takes batches from its workers in turn, from the first; after `resume_after` batches
        # the next is due from worker resume_after % workers: that share goes to the first, and so on.
        worker = (loader_worker + self.resume_after) % workers
        slots, slot = self.world * workers, worker * self.world + self.rank
        passing = len(range(worker, self.resume_after, workers))  # this share's batches taken before the resume
        pending: dict[tuple, list] = {}  # bucket -> Samples, or (raw, epoch) of samples outlined while passing
        skipped: Counter = Counter()
        for epoch in range(2**62):
            shards = list(self.shards)
            random.Random(self.seed + epoch).shuffle(shards)
            whole_shards = len(shards) >= slots
            mine = shards[slot::slots] if whole_shards else shards
            used = 0
            kept = (raw for raw in self.samples(mine, skipped) if raw["__key__"] not in self.removed)
            for index, raw in enumerate(kept):
                if not whole_shards and index % slots != slot:
                    continue
                try:
                    if passing:  # its outline says which batch it joined, and no payload is decoded
                        item = outline(raw, self.config, self.decode_video)
                    else:
                        item = decode(raw, self.config, self.decode_video, self.seed, epoch)
                except BadSample as bad:
                    skipped[bad.reason] += 1
                    continue
                used += 1
                group = pending.setdefault(item.bucket, [])
                group.append((raw, epoch) if passing else item)
                if len(group) < self.config.batch_size:
                    continue
                del pending[item.bucket]
                if not passing:
                    yield collate(group, skipped)
                    skipped = Counter()
                    continue
                passing -= 1  # a batch taken before the resume: its skips are in the restored totals
                skipped = Counter()
                if not passing:  # the samples waiting in a bucket are used after the resume: decode them now
                    pending = {bucket: self.decoded(group, skipped) for bucket, group in pending.items()}
            if not used:  # nothing usable in this share: say what was skipped and stop
                yield collate([], skipped)
                return

    def decoded(self, outlined: list[tuple[dict, int]], skipped: Counter) -> list[Sample]:
        """The Samples of outlined ones, each with its own epoch's random stream; a bad one is counted."""
        samples = []
        for raw, epoch in outlined:
            try:
                samples.append(decode(raw, self.config, self.decode_video, self.seed, epoch))
            except BadSample as bad:
                skipped[bad.reason] += 1
        return samples

    @staticmethod
    def samples(shards: list[str], skipped: Counter) -> Iterator[dict]:
        def broken(error: Exception) -> bool:
            skipped["broken_shard"] += 1
            return True

        yield from tarfile_samples(({"url": path} for path in shards), handler=broken)


def make_loader(config: DataConfig, seed: int, rank: int, world: int, decode_video: bool) -> DataLoader:
    stream = ShardStream(config, seed, rank, world, decode_video)
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        prefetch_factor=4 if config.workers else None,
    )
