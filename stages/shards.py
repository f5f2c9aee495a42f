"""shards: WebDataset tar shards of finished samples (clip, caption, reference images, metadata).

The work item is a planned shard, not a clip: `plan` takes the samples not yet in any listed
shard, in clip_id order, and cuts them into runs under `max_shard_bytes` as they stream by. A
shard is named by a digest of its clip ids, written atomically, and listed in the `shards` table
with its clip ids. Resume: the candidates view marks each clip's shard, so a rerun plans only
the clips outside finished shards, and a shard killed before it was listed is planned again
under the same name (same clips, same digest) and replaces the orphan file; no sample is
written twice.

Per sample (key = clip_id): `mp4` the clip, `txt` the caption, `ref_<i>.png` the RGBA
reference with transparent background, `crop_<i>.png` the plain box crop, `json` the ids,
scores and subject metadata that join back to the manifests. The references are the ones the
identities stage picked under the reference policy (`sample_refs`): each records its source
clip, frame, identity, similarity, policy and anti-copy measure, and may come from another shot
or another video.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import pyarrow as pa

from manifests import store
from manifests.files import atomic_path
from manifests.filters import rules_through
from stages.base import BadInput, Row, Stage, StageConfig

SAMPLE_COLUMNS = (
    "clip_id", "video_id", "start_frame", "end_frame", "fps", "clip_path", "clip_bytes", "caption", "caption_model",
    "prompt_version", "motion_score", "aesthetic_score", "aesthetic_min", "random_weights",
)  # fmt: skip
REFS_CHUNK = 1024  # samples whose references are read in one query


def write_tar(run: Path, path: Path, samples: Iterable[dict[str, bytes | str]]) -> None:
    """A WebDataset shard written atomically (same bytes every time)."""
    import webdataset as wds

    with atomic_path(run, path) as tmp, open(tmp, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)


class ShardsConfig(StageConfig):
    split: str = "train"
    max_shard_bytes: int = 1_000_000_000


class Shards(Stage):
    name = "shards"
    reads = "candidates"
    writes = "shards"
    input_key = "shard"
    filters = rules_through("references")
    needs = "clip_path IS NOT NULL AND caption IS NOT NULL AND n_references > 0"
    barrier = True
    plan_columns = SAMPLE_COLUMNS
    Config = ShardsConfig

    def plan(self, items: Iterable[Row]) -> Iterator[Row]:
        """Pending samples (in clip_id order) cut into shards under the size cap (a bigger sample gets its own)."""
        group: list[Row] = []
        size = 0
        for sample in self.with_references(items):
            subjects = json.loads(sample["subjects"])
            sample_bytes = sample["clip_bytes"] + sum(
                (self.run_dir / s[p]).stat().st_size for s in subjects for p in ("crop_path", "masked_path")
            )
            if group and size + sample_bytes > self.config.max_shard_bytes:
                yield self.shard(group)
                group, size = [], 0
            group.append(sample)
            size += sample_bytes
        if group:
            yield self.shard(group)

    def with_references(self, items: Iterable[Row]) -> Iterator[Row]:
        """Samples with their picked references as `subjects` (JSON), read from `sample_refs` a chunk at a time."""
        chunk: list[Row] = []
        for item in chain(items, [None]):
            if item is not None:
                chunk.append({k: item[k] for k in SAMPLE_COLUMNS})
                if len(chunk) < REFS_CHUNK:
                    continue
            if not chunk:
                break
            ids = pa.table({"clip_id": pa.array([s["clip_id"] for s in chunk], pa.string())})

            def execute(ids: pa.Table = ids) -> pa.Table:
                con = store.connect(self.run_dir)
                con.register("_ids", ids)
                return con.sql("SELECT clip_id, references_json FROM sample_refs JOIN _ids USING (clip_id)").to_arrow_table()

            refs = dict(zip(*store.guarded(self.run_dir, execute).to_pydict().values()))
            for sample in chunk:
                yield {**sample, "subjects": refs[sample["clip_id"]]}
            chunk = []

    def shard(self, samples: list[Row]) -> Row:
        return {"shard": self.shard_name(samples), "samples_json": json.dumps(samples)}

    def shard_name(self, samples: list[Row]) -> str:
        digest = hashlib.sha1("\n".join(s["clip_id"] for s in samples).encode()).hexdigest()[:16]
        return f"{self.config.split}-{digest}"

    def process(self, item: Row) -> list[Row]:
        samples = json.loads(item["samples_json"])
        relative = Path("shards") / f"{item['shard']}.tar"
        final = self.run_dir / relative
        write_tar(self.run_dir, final, (self.sample(sample) for sample in samples))
        return [
            {
                "shard": item["shard"],
                "split": self.config.split,
                "path": str(relative),
                "n_samples": len(samples),
                "bytes": final.stat().st_size,
                "clip_ids": [s["clip_id"] for s in samples],
            }
        ]

    def sample(self, s: Row) -> dict[str, bytes | str]:
        """One WebDataset sample: every value as the bytes of its file."""
        subjects = json.loads(s["subjects"])
        out: dict[str, bytes | str] = {"__key__": s["clip_id"], "mp4": self.read(s["clip_path"])}
        out["txt"] = s["caption"].encode()
        meta = {k: v for k, v in s.items() if k not in ("subjects", "clip_bytes")}
        meta["subjects"] = []
        for i, subject in enumerate(subjects):
            out[f"ref_{i}.png"] = self.read(subject["masked_path"])
            out[f"crop_{i}.png"] = self.read(subject["crop_path"])
            entry = {k: v for k, v in subject.items() if k not in ("crop_path", "masked_path")}
            meta["subjects"].append({**entry, "ref": f"ref_{i}.png", "crop": f"crop_{i}.png"})
        out["json"] = json.dumps(meta, sort_keys=True).encode()
        return out

    def read(self, relative: str) -> bytes:
        path = self.run_dir / relative
        if not path.is_file():
            raise BadInput(f"{relative} is missing from the run folder (deleted after its stage ran?)")
        return path.read_bytes()
