"""identities: subjects clustered across the run, then each sample's references picked by policy.

Identities. Faces link by their identity embedding (Euclidean below `face_same_distance`), humans
through the face they hold (`human_id`), objects by the CLIP embedding of their masked crop
(cosine at least `object_same_similarity`; crops on grey, never whole frames: shared
backgrounds fool CLIP). Blocking by video: inside a video every pair is compared exactly (that is
where a subject comes back, and where `other_shot` looks); across videos only one mean vector per
within-video group is searched, with `stages.neighbours` (exact, or IVF at scale). The groups
those candidate pairs link are split by complete linkage: every two faces of an identity are
closer than the threshold, so a logo or a background figure near one face of a person cannot
chain two people into one. An identity's id derives from its smallest subject_id. The stage is
`whole`: a rerun whose inputs changed (new clips, another filter setting) clusters the subjects of
every clip that is an input now, withdraws the rows of clips that no longer are, and rewrites the
rows of the clips whose identities or reference candidates changed (`sample_refs.inputs_digest`),
so a run reached by re-thresholding, rerun or resume holds the tables a fresh run would.

References. Per sample (clip), at most `max_references` subjects, one per identity and kind,
the best of each kind first (by the subjects stage's `quality`). Each takes its reference from:
  same_clip    its own best view (the paper's: a crop of a frame inside the sample);
  other_shot   the same identity in another clip of the same video whose frames do not overlap
               the sample's, another shot first;
  cross_video  the same identity in another video;
  mix          one of the three drawn per subject with the `mix` weights (seeded by clip and
               subject), falling back cross_video -> other_shot -> same_clip where none exists.
A strict policy (not mix) leaves a subject without a source out, counted in `dropped_json`.

Anti-copy check (other_shot, cross_video): the measure is the PSNR of 64x64 grey thumbnails of
the reference's source frame against `copy_frames` frames of the sample; above `copy_max_psnr`
(25 dB) the source is near-identical to a frame of the sample (a repeated or re-uploaded shot, a
static camera) and the next source is tried. Measured on carphone (tests/test_references.py): a
re-encode at crf 35 of the same frames >= 30.6 dB; two moments of its one shot <= 17.3 dB.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from manifests import store
from manifests.filters import rules_through
from model.curation.faces import SAME_PERSON_DISTANCE
from stages.base import BadInput, Row, Stage, StageConfig
from stages.neighbours import complete_linkage, components, cosine_radius, pairs_within, radius_pairs
from stages.video import iter_frames, spread

IDENTITY_NAMESPACE = uuid.UUID("2b0f6f1e-8a7c-4e55-b1f3-6d2c9e4a7b10")
POLICIES = ("same_clip", "other_shot", "cross_video")
FALLBACK = {"cross_video": POLICIES[::-1], "other_shot": ("other_shot", "same_clip"), "same_clip": ("same_clip",)}
KIND_ORDER = ("human", "object", "face")
VIA = ("alone", "masked-crop CLIP", "human's face", "face")  # how a subject was linked to its identity
THUMB = 64
CACHED_ROWS = 1 << 17  # member rows kept as dicts (about 1 kB each)


class IdentitiesConfig(StageConfig):
    policy: Literal["same_clip", "other_shot", "cross_video", "mix"] = "mix"
    mix: dict[Literal["same_clip", "other_shot", "cross_video"], float] = {"same_clip": 0.2, "other_shot": 0.5, "cross_video": 0.3}
    max_references: int = 4
    face_same_distance: float = SAME_PERSON_DISTANCE  # Euclidean, dlib's 128-D embedding
    object_same_similarity: float = 0.85  # cosine of masked-crop CLIP embeddings
    copy_max_psnr: float = 25.0  # dB, 64x64 grey thumbnails: above this a source frame is a copy of a sample frame
    copy_frames: int = Field(8, ge=1)  # frames of the sample the source frame is compared with
    tries: int = Field(3, ge=1)  # sources tried per subject and policy before giving up
    probes: int = Field(2, ge=1)  # IVF cells searched per vector across videos

    @field_validator("mix")
    @classmethod
    def some_weight(cls, mix: dict[str, float]) -> dict[str, float]:
        """Checked here: the policies are drawn in the driver's plan, after every stage before it ran."""
        if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("weights of 0 or more, not all 0")
        return mix


def blocked_pairs(vectors: np.ndarray, videos: list[str], radius: float, probes: int, unit: bool) -> np.ndarray:
    """Pairs closer than `radius`: exact within each video, then one mean vector per within-video group across videos."""
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, video in enumerate(videos):
        by_video[video].append(i)
    pairs, representatives, members = [], [], []
    for index in by_video.values():
        index = np.array(index)
        local = pairs_within(vectors[index], radius) if len(index) > 1 else np.zeros((0, 2), np.int64)
        pairs.append(index[local])
        group = components(len(index), local)
        for root in np.unique(group):
            inside = index[group == root]
            mean = vectors[inside].mean(0)
            representatives.append(mean / max(float(np.linalg.norm(mean)), 1e-12) if unit else mean)
            members.append(inside[0])
    if len(representatives) > 1:
        across = radius_pairs(np.stack(representatives), radius, probes)
        pairs.append(np.array(members)[across].reshape(-1, 2))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def linked(vectors: np.ndarray, videos: list[str], radius: float, probes: int, unit: bool) -> np.ndarray:
    """(m, 2) pairs of one cluster each: candidates found by `blocked_pairs`, each group they link
    split by complete linkage, so every member of a cluster is close to every other one."""
    candidates = components(len(vectors), blocked_pairs(vectors, videos, radius, probes, unit))
    order = np.argsort(candidates, kind="stable")
    pairs = []
    for inside in np.split(order, np.flatnonzero(np.diff(candidates[order])) + 1):  # each group's members, in index order
        if len(inside) > 1:
            label = complete_linkage(vectors[inside], radius, probes)
            pairs += [(inside[a], inside[b]) for a, b in zip(label.tolist(), range(len(inside))) if a != b]
    return np.array(pairs, np.int64).reshape(-1, 2)


class Embeddings:
    """A table's embedding column as one float32 array: as Python floats, a million subjects' would
    take gigabytes. `[i]` is row i's vector (a view) or None."""

    def __init__(self, column: pa.ChunkedArray | pa.Array):
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        self.offsets = column.offsets.to_numpy() - column.offsets[0].as_py()
        self.flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        self.valid = column.is_valid().to_numpy(zero_copy_only=False)

    def __getitem__(self, i: int) -> np.ndarray | None:
        return self.flat[self.offsets[i] : self.offsets[i + 1]] if self.valid[i] else None

    def matrix(self, index: np.ndarray) -> np.ndarray:
        return np.stack([self.flat[self.offsets[i] : self.offsets[i + 1]] for i in index]).astype(np.float32)


def _is(column: pa.ChunkedArray, value: str) -> np.ndarray:
    return pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False)


def cluster(subjects: pa.Table, cfg: IdentitiesConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cluster label per subject (a row of `subjects`: its kind, embedding, video_id and `holder`,
    the row of the human a face is of), and how each was linked (an index into VIA)."""
    n = subjects.num_rows
    kind, embeddings = subjects.column("kind"), Embeddings(subjects.column("embedding"))
    pairs = [np.zeros((0, 2), np.int64)]
    for name, radius, unit in (("face", cfg.face_same_distance, False), ("object", cosine_radius(cfg.object_same_similarity), True)):
        index = np.flatnonzero(_is(kind, name) & embeddings.valid)
        if len(index) > 1:
            vectors = embeddings.matrix(index)
            if unit:
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            videos = subjects.column("video_id").take(pa.array(index)).to_pylist()
            pairs.append(index[linked(vectors, videos, radius, cfg.probes, unit)])
    holder = subjects.column("holder")
    faces = np.flatnonzero(_is(kind, "face") & pc.is_valid(holder).to_numpy(zero_copy_only=False))
    held = np.stack([faces, pc.fill_null(holder, 0).to_numpy(zero_copy_only=False)[faces].astype(np.int64)], 1)
    pairs.append(held)
    via = np.zeros(n, np.int8)  # a human without a face links to nothing: alone
    via[_is(kind, "object") & embeddings.valid] = VIA.index("masked-crop CLIP")
    via[held[:, 1]] = VIA.index("human's face")
    via[_is(kind, "face") & embeddings.valid] = VIA.index("face")
    return components(n, np.concatenate(pairs)), via


def identity_id(first_subject_id: str) -> str:
    """An identity's id, derived from its smallest subject_id: the same whatever order the run happened in."""
    return str(uuid.uuid5(IDENTITY_NAMESPACE, first_subject_id))


def draw(weights: dict[str, float], clip_id: str, subject_id: str) -> str:
    """A policy drawn with the mix weights, the same for this subject of this clip every time."""
    u = int.from_bytes(hashlib.sha256(f"{clip_id}/{subject_id}".encode()).digest()[:8], "little") / 2**64
    total, acc = sum(weights.values()), 0.0
    for policy in POLICIES:
        acc += weights.get(policy, 0.0) / total
        if u < acc:
            return policy
    return POLICIES[-1]


def cosine(a, b) -> float | None:
    if a is None or b is None:
        return None
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def choose(own: list[Row], limit: int) -> list[Row]:
    """One subject per identity and kind, the best of each kind first, then the rest by quality."""
    best: dict[tuple, Row] = {}
    for s in sorted(own, key=lambda s: -(s["quality"] or 0.0)):
        best.setdefault((s["identity_id"], s["kind"]), s)
    ranked = sorted(best.values(), key=lambda s: -(s["quality"] or 0.0))
    firsts = [next(s for s in ranked if s["kind"] == kind) for kind in KIND_ORDER if any(s["kind"] == kind for s in ranked)]
    firsts.sort(key=lambda s: -(s["quality"] or 0.0))
    return (firsts + [s for s in ranked if s not in firsts])[:limit]


class Members:
    """The subjects of identities of more than one subject, grouped by identity: where other clips'
    references come from. Held as columns, and as small codes for choosing; a row becomes a dict
    only once it is a candidate source. `rows` holds the run's rows `index` (in order)."""

    def __init__(self, rows: pa.Table, index: np.ndarray, label: np.ndarray):
        order = np.argsort(label[index], kind="stable")
        self.index, rows = index, rows.take(pa.array(order))
        self.position = np.empty(len(index), np.int64)  # where the run's row index[k] now is
        self.position[order] = np.arange(len(index))
        self.embeddings, self.plain = Embeddings(rows.column("embedding")), rows.drop_columns(["embedding"])
        self.groups, self.starts = np.unique(label[index[order]], return_index=True)
        self.ends = np.append(self.starts[1:], len(index))

        def codes(name: str) -> np.ndarray:
            return pc.dictionary_encode(rows.column(name)).combine_chunks().indices.to_numpy(zero_copy_only=False)

        def numbers(name: str, null: float) -> np.ndarray:
            return pc.fill_null(rows.column(name), null).to_numpy(zero_copy_only=False)

        self.kind, self.clip, self.video = codes("kind"), codes("clip_id"), codes("video_id")
        self.start, self.end, self.shot, self.quality = numbers("start_frame", 0), numbers("end_frame", 0), numbers("shot_index", -1), numbers("quality", 0.0)
        by_id = pc.sort_indices(rows.column("subject_id")).to_numpy()
        self.rank = np.empty(len(index), np.int64)  # subject_id order
        self.rank[by_id] = np.arange(len(index))
        firsts = by_id[np.minimum.reduceat(self.rank, self.starts)]  # each identity's smallest subject_id
        self.cache: dict[int, list[Row]] = {}  # least recently used first
        self.cached = 0
        self.ids = [identity_id(first) for first in rows.column("subject_id").take(pa.array(firsts)).to_pylist()]

    def identity(self, group: int) -> str:
        return self.ids[int(np.searchsorted(self.groups, group))]

    def sources(self, policy: str, s: Row, tries: int) -> list[Row]:
        """Where subject `s` (the run's row `s["row"]`) may take its reference from under
        other_shot or cross_video, best first."""
        at = int(self.position[np.searchsorted(self.index, s["row"])])
        g = int(np.searchsorted(self.starts, at, side="right")) - 1
        span = slice(self.starts[g], self.ends[g])
        ok = (self.kind[span] == self.kind[at]) & (self.clip[span] != self.clip[at])
        same_video = self.video[span] == self.video[at]
        if policy == "other_shot":
            ok &= same_video & ((self.end[span] <= self.start[at]) | (self.end[at] <= self.start[span]))
            keys = (self.rank[span], -self.quality[span], self.shot[span] == self.shot[at])  # the last key sorts first
        else:
            ok &= ~same_video
            keys = (self.rank[span], -self.quality[span])
        found = np.flatnonzero(ok)
        if not len(found):
            return []
        rows = self.rows_of(g)
        return [rows[k] for k in found[np.lexsort(tuple(key[found] for key in keys))[:tries]].tolist()]

    def rows_of(self, g: int) -> list[Row]:
        """Identity g's rows as dicts, kept while fewer than CACHED_ROWS rows of recent identities are
        (the best sources of an identity serve many clips; the clips come in random order)."""
        rows = self.cache.pop(g, None)
        if rows is None:
            start = int(self.starts[g])
            rows = self.plain.slice(start, int(self.ends[g]) - start).to_pylist()
            for i, row in enumerate(rows, start):
                row["embedding"] = self.embeddings[i]
            self.cached += len(rows)
            while self.cached > CACHED_ROWS and self.cache:
                self.cached -= len(self.cache.pop(next(iter(self.cache))))
        self.cache[g] = rows
        return rows


def sources(policy: str, s: Row, members: Members | None, tries: int) -> list[Row]:
    """Where subject `s` may take its reference from under one policy, best first."""
    if policy == "same_clip":
        return [s]
    return members.sources(policy, s, tries) if s["identity_size"] > 1 else []


def reference(policy: str, s: Row, source: Row) -> Row:
    """What a sample records about one reference."""
    return {
        "subject_id": s["subject_id"], "kind": s["kind"], "label": s["label"], "identity_id": s["identity_id"],
        "policy": policy, "source_subject_id": source["subject_id"], "source_clip_id": source["clip_id"],
        "source_clip_path": source["clip_path"], "source_frame_index": source["frame_index"],
        "source_video_frame": source["start_frame"] + source["frame_index"], "source_video_id": source["video_id"],
        "similarity": 1.0 if source is s else cosine(s["embedding"], source["embedding"]),
        "quality": source["quality"], "score": source["score"], "model": source["model"],
        "crop_path": source["crop_path"], "masked_path": source["masked_path"],
    }  # fmt: skip


def thumbnail(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def sample_frames(clip: Path, n_frames: int, count: int):
    """`count` frames spread over the clip file: the training sample as the trainer will read it."""
    frames = list(iter_frames(clip, fmt="rgb24", keep=set(spread(0, n_frames, count)).__contains__))
    if not frames:
        raise BadInput(f"{clip}: no frame decodes")
    return frames


SUBJECTS = "subjects s JOIN _clips USING (clip_id) JOIN scenes w USING (clip_id) JOIN clips c USING (clip_id)"  # the subjects of `_clips`
ORDER = "ORDER BY s.clip_id, s.subject_id"


def linking_of(run: Path, clips: pa.Table) -> pa.Table:
    """What clustering reads of the subjects of `clips` (a table of clip_id), a row per subject in
    clip and subject order: codes for ids (a video's rank, the row of the human a face is of), so
    ten million subjects take a few hundred megabytes besides their embeddings."""
    return store.query(
        run,
        f"WITH s AS (SELECT s.subject_id, s.human_id, s.kind, s.embedding, w.video_id, row_number() OVER ({ORDER}) - 1 AS row "
        f"FROM {SUBJECTS}) SELECT s.kind, s.embedding, dense_rank() OVER (ORDER BY s.video_id) AS video_id, h.row AS holder "
        "FROM s LEFT JOIN s h ON h.subject_id = s.human_id ORDER BY s.row",
        tables={"_clips": clips},
    )


def subject_rows(run: Path, clips: pa.Table) -> Iterator[pa.RecordBatch]:
    """What the plan reads of the subjects of `clips`, a batch at a time, in `linking_of`'s order."""
    return store.batches(
        run,
        "SELECT s.subject_id, s.clip_id, s.kind, s.label, s.frame_index, s.embedding, s.quality, s.score, s.model, s.crop_path, "
        "s.masked_path, w.video_id, w.shot_index, w.start_frame, w.end_frame, c.path AS clip_path, c.n_frames, "
        f"r.inputs_digest AS done_digest FROM {SUBJECTS} LEFT JOIN sample_refs r USING (clip_id) {ORDER}",
        tables={"_clips": clips},
    )


class Identities(Stage):
    name = "identities"
    reads = "candidates"
    writes = "identities"
    input_key = "clip_id"
    filters = rules_through("dedup")
    needs = "clip_path IS NOT NULL AND n_subjects > 0"
    barrier = True
    whole = True
    plan_columns = ("clip_id",)
    batch_size = 16
    Config = IdentitiesConfig

    def plan(self, items: Iterable[Row]) -> Iterator[Row]:
        """Cluster the subjects of every clip that is an input now, done or not; one work item per
        clip whose row would change. Rows of clips that are no longer inputs (a stricter filter)
        are withdrawn first, so the tables are those a fresh run with this config writes."""
        items = iter(items)
        chunks = [pa.array([item["clip_id"] for item in chunk], pa.string()) for chunk in iter(lambda: list(islice(items, 65536)), [])]
        inputs = pa.table({"clip_id": pa.chunked_array(chunks, pa.string())})
        for table in ("sample_refs", "identities"):
            lost = store.query(self.run_dir, f"SELECT DISTINCT clip_id FROM {table} ANTI JOIN _inputs USING (clip_id)", tables={"_inputs": inputs})
            store.withdraw(self.run_dir, table, "clip_id", lost)
        if not inputs.num_rows:
            return
        for item, done_digest in self.planned(inputs):
            if item["inputs_digest"] != done_digest:
                yield item

    def planned(self, clips: pa.Table) -> Iterator[tuple[Row, str | None]]:
        """(work item, the digest of the clip's row written before) per clip of `clips` with subjects
        (in clip order), clustered together. In memory: the clustering's codes and embeddings, and
        the rows of identities of more than one subject (other clips' references come from them);
        the other rows pass a batch at a time."""
        linking = linking_of(self.run_dir, clips)
        label, via = cluster(linking, self.config)
        size = np.bincount(label, minlength=len(label))
        shared = np.flatnonzero(size[label] > 1)
        video = linking.column("video_id").to_numpy()[shared]
        videos = int(video.max(initial=0)) + 1
        spread = np.bincount(np.unique(label[shared] * videos + video) // videos, minlength=len(label))  # 0 for an identity of one subject
        del linking, video
        members = None
        if len(shared):
            rows, start = [], 0
            for batch in subject_rows(self.run_dir, clips):
                inside = shared[np.searchsorted(shared, start) : np.searchsorted(shared, start + batch.num_rows)] - start
                rows.append(pa.Table.from_batches([batch]).take(pa.array(inside)))
                start += batch.num_rows
            members = Members(pa.concat_tables(rows), shared, label)
        own: list[Row] = []
        start = 0
        for batch in subject_rows(self.run_dir, clips):
            embeddings = Embeddings(batch.column("embedding"))
            for k, row in enumerate(batch.drop_columns(["embedding"]).to_pylist()):
                i = start + k
                group = label[i]
                row.update(row=i, embedding=embeddings[k], via=VIA[via[i]], identity_size=int(size[group]), identity_videos=max(1, int(spread[group])),
                           identity_id=members.identity(group) if size[group] > 1 else identity_id(row["subject_id"]))  # fmt: skip
                if own and row["clip_id"] != own[0]["clip_id"]:
                    yield self.work(own[0]["clip_id"], own, members), own[0]["done_digest"]
                    own = []
                own.append(row)
            start += batch.num_rows
        if own:
            yield self.work(own[0]["clip_id"], own, members), own[0]["done_digest"]

    def work(self, clip_id: str, own: list[Row], members: Members | None) -> Row:
        cfg = self.config
        choices = []
        for s in choose(own, cfg.max_references):
            policy = draw(cfg.mix, clip_id, s["subject_id"]) if cfg.policy == "mix" else cfg.policy
            order = FALLBACK[policy] if cfg.policy == "mix" else (policy,)
            candidates = [reference(p, s, source) for p in order for source in sources(p, s, members, cfg.tries)]
            choices.append({"policy": policy, "candidates": candidates})
        identity_rows = [
            {k: s[k] for k in ("subject_id", "clip_id", "video_id", "kind", "identity_id", "via", "identity_size", "identity_videos")}
            for s in own
        ]
        first = own[0]
        choices_json, identities_json = json.dumps(choices, sort_keys=True), json.dumps(identity_rows, sort_keys=True)
        digest = hashlib.sha256(f"{choices_json}\n{identities_json}\n{cfg.copy_max_psnr}\n{cfg.copy_frames}".encode()).hexdigest()
        return {"clip_id": clip_id, "clip_path": first["clip_path"], "n_frames": first["n_frames"],
                "choices": choices_json, "identities": identities_json, "inputs_digest": digest}  # fmt: skip

    def process(self, item: Row) -> dict[str, list[Row]]:
        """Each subject's first source that passes the anti-copy check; the sample's row and its subjects' identities."""
        cfg = self.config
        sample: list[np.ndarray] | None = None
        picked, dropped = [], Counter()
        for choice in json.loads(item["choices"]):
            for candidate in choice["candidates"]:
                candidate["copy_psnr"] = None  # same_clip: a frame of the sample by design, not checked
                if candidate["policy"] != "same_clip":
                    if sample is None:
                        sample = [thumbnail(f.image) for f in sample_frames(self.run_dir / item["clip_path"], item["n_frames"], cfg.copy_frames)]
                    source = self.source_frame(candidate)
                    candidate["copy_psnr"] = round(max(psnr(source, frame) for frame in sample), 1)  # x264 clip files differ in the last bits run to run
                    if candidate["copy_psnr"] > cfg.copy_max_psnr:
                        continue
                picked.append(candidate)
                break
            else:
                copies = any(c["copy_psnr"] is not None for c in choice["candidates"])
                dropped["only_near_identical_sources" if copies else f"no_{choice['policy']}_source"] += 1
        row = {
            "clip_id": item["clip_id"],
            "policy": cfg.policy,
            "n_references": len(picked),
            "references_json": json.dumps(picked),
            "dropped_json": json.dumps(dict(sorted(dropped.items()))),
            "inputs_digest": item["inputs_digest"],
        }
        return {"sample_refs": [row], "identities": json.loads(item["identities"])}

    def source_frame(self, candidate: Row) -> np.ndarray:
        """The thumbnail of the whole frame the reference was cut from (decoded from its clip file)."""
        wanted = candidate["source_frame_index"]
        for frame in iter_frames(self.run_dir / candidate["source_clip_path"], fmt="rgb24", end_frame=wanted + 1, keep=lambda i: i == wanted):
            return thumbnail(frame.image)
        raise ValueError(f"{candidate['source_clip_path']}: frame {wanted} does not decode")
