"""The manifest tables: one pyarrow schema and one key per table.

Every stage reads one table and writes the next; these schemas are the contract between them.
Columns that a stage cannot fill are nullable; keys never are.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from manifests.filters import VLM_CHECKS


@dataclass(frozen=True)
class TableSpec:
    name: str
    key: tuple[str, ...]  # what readers see once: the last written row of each key
    schema: pa.Schema
    identity: tuple[str, ...]  # what compaction keeps once (videos keep every path of one content)


def _spec(name: str, key: tuple[str, ...], *fields: pa.Field, identity: tuple[str, ...] | None = None) -> TableSpec:
    schema = pa.schema([f.with_nullable(f.name not in key) for f in fields])
    return TableSpec(name, key, schema, identity or key)


F = pa.field
TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in [
        _spec(
            "videos",
            ("video_id",),
            F("video_id", pa.string()),  # content hash, so copies and renames are one video
            F("path", pa.string()),  # absolute path where this content was found
            F("bytes", pa.int64()),
            F("duration_s", pa.float64()),
            F("fps", pa.float64()),  # average frame rate
            F("n_frames", pa.int64()),
            F("width", pa.int32()),  # as stored; display is rotated by `rotation`
            F("height", pa.int32()),
            F("codec", pa.string()),
            F("pix_fmt", pa.string()),
            F("rotation", pa.int32()),  # degrees counter-clockwise to display upright
            F("vfr", pa.bool_()),
            F("has_audio", pa.bool_()),
            identity=("video_id", "path"),
        ),
        _spec(
            "scenes",
            ("video_id", "scene_index"),
            F("video_id", pa.string()),
            F("scene_index", pa.int32()),  # window index within the video
            F("clip_id", pa.string()),  # uuid5(video_id, start_frame, end_frame)
            F("shot_index", pa.int32()),  # the detected shot this window lies in
            F("start_frame", pa.int64()),
            F("end_frame", pa.int64()),  # exclusive
            F("start_pts", pa.int64()),  # stream time base; exact seeking for variable frame rate
            F("end_pts", pa.int64()),  # pts of end_frame; null when the window ends the video
            F("start_s", pa.float64()),
            F("end_s", pa.float64()),
            F("n_frames", pa.int64()),
            F("detector", pa.string()),
            F("params", pa.string()),  # JSON of the detector parameters
        ),
        _spec(
            "motion",
            ("clip_id",),
            F("clip_id", pa.string()),
            F("score", pa.float64()),  # mean flow magnitude, in % of the frame diagonal per second
            F("flow_mean_px", pa.float64()),  # mean flow magnitude per sampled pair, pixels
            F("static_share", pa.float64()),  # share of patches that do not move
            F("camera_motion", pa.string()),  # static / pan_tilt / zoom / shake / other (stages.motion)
            F("pan_px", pa.float64()),  # global translation per sampled pair, pixels at flow resolution
            F("zoom_px", pa.float64()),  # global zoom per pair, pixels of motion at the frame's inner border
            F("residual_px", pa.float64()),  # motion the global fit leaves: things moving in the scene (~0: a still image)
            F("n_pairs", pa.int32()),
            F("method", pa.string()),
        ),
        _spec(
            "aesthetic",
            ("clip_id",),
            F("clip_id", pa.string()),
            F("score", pa.float64()),  # mean over sampled frames, LAION scale (about 1..10)
            F("score_min", pa.float64()),
            F("n_frames", pa.int32()),
            F("model", pa.string()),  # ends in "(random weights)" for the tiny profile
            F("random_weights", pa.bool_()),
            F("embedding", pa.list_(pa.float32())),  # mean of the frames' unit CLIP embeddings, unit length (dedup)
            F("dtype", pa.string()),  # the model's precision: bfloat16 on a GPU, float32 on the CPU
        ),
        _spec(
            "screen",
            ("clip_id",),
            F("clip_id", pa.string()),
            F("text_area", pa.float64()),  # median over sampled frames of the share under recognised text
            F("text_area_max", pa.float64()),
            F("text_content", pa.float64()),  # median over frames of text area / area with any detail (1: all text)
            F("text_detected", pa.float64()),  # largest share under detector boxes, recognised or not (for comparison)
            F("nsfw_score", pa.float64()),  # highest explicit-nudity confidence over sampled frames
            F("sharpness", pa.float64()),  # median over frames of the variance of the Laplacian (low: blurred)
            F("n_frames", pa.int32()),
            F("text_model", pa.string()),
            F("nsfw_model", pa.string()),
            F("random_weights", pa.bool_()),  # always false: both models ship real weights
        ),
        _spec(
            "clips",
            ("clip_id",),
            F("clip_id", pa.string()),
            F("video_id", pa.string()),
            F("path", pa.string()),  # relative to the run folder
            F("start_frame", pa.int64()),
            F("end_frame", pa.int64()),
            F("n_frames", pa.int64()),
            F("fps", pa.float64()),
            F("width", pa.int32()),  # upright, after rotation
            F("height", pa.int32()),
            F("bytes", pa.int64()),
        ),
        _spec(
            "captions",
            ("clip_id",),
            F("clip_id", pa.string()),
            F("caption", pa.string()),
            F("subjects_json", pa.string()),  # [{"kind": "human|face|object", "label": ...}]
            F("subjects_source", pa.string()),  # "model", or "default" when its answer did not parse
            F("model", pa.string()),
            F("prompt_version", pa.string()),  # model/curation/prompts/<version>.txt
            F("random_weights", pa.bool_()),
            # from caption_v2 on (null on older rows): how the one answer came out (no timings: a rerun gives the same rows)
            F("answer", pa.string()),  # ok / truncated (hit max_new_tokens) / unparsable (no valid JSON line)
            F("output_tokens", pa.int64()),
            F("dtype", pa.string()),  # the model's: bfloat16 on CUDA, float32 on the CPU
            *(F(f"reject_{name}", pa.bool_()) for name in VLM_CHECKS),  # the answer's reject checks, null when unparsable
        ),
        _spec(
            "subjects",
            ("subject_id",),
            F("subject_id", pa.string()),
            F("clip_id", pa.string()),
            F("kind", pa.string()),  # human / face / object
            F("label", pa.string()),
            F("frame_index", pa.int64()),  # index within the clip of the best view
            F("box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 in pixels
            F("mask_rle", pa.string()),  # JSON {"size": [h, w], "counts": [...]}, column-major runs
            F("score", pa.float64()),
            F("area_fraction", pa.float64()),
            F("crop_path", pa.string()),  # box crop, relative to the run folder
            F("masked_path", pa.string()),  # RGBA crop with transparent background
            F("model", pa.string()),
            F("random_weights", pa.bool_()),
            F("embedding", pa.list_(pa.float32())),  # faces: identity embedding (model.curation.faces; Euclidean distance)
            F("embedding_model", pa.string()),
            F("human_id", pa.string()),  # faces: subject_id of the human region holding this face, if any
            F("labels", pa.list_(pa.string())),  # every label it was detected under, the kept `label` first
            F("quality", pa.float64()),  # reference quality in [0, 1]: size, sharpness, detector score, frontal (faces)
            F("rank", pa.int32()),  # by quality among the clip's subjects of its kind, 0 best
            F("dtype", pa.string()),  # GroundingDINO, SAM and CLIP's precision (bfloat16 on a GPU); faces: dlib's float32
        ),
        _spec(
            "dedup",
            ("clip_id",),
            F("clip_id", pa.string()),
            F("duplicate_of", pa.string()),  # the window kept in its place (null: kept)
            F("similarity", pa.float64()),  # cosine of the window embeddings with duplicate_of (null: kept)
            F("group_size", pa.int32()),  # windows in its near-duplicate group, itself included
            F("model", pa.string()),  # the embedding's model (aesthetic's CLIP)
        ),
        _spec(
            "identities",
            ("subject_id",),
            F("subject_id", pa.string()),
            F("clip_id", pa.string()),
            F("video_id", pa.string()),
            F("kind", pa.string()),
            F("identity_id", pa.string()),  # the same for every subject of one person or object across the run
            F("via", pa.string()),  # face / human's face / masked-crop CLIP / alone (no embedding to link by)
            F("identity_size", pa.int32()),  # subjects in the identity
            F("identity_videos", pa.int32()),  # videos it appears in
        ),
        _spec(
            "sample_refs",
            ("clip_id",),
            F("clip_id", pa.string()),
            F("policy", pa.string()),  # the configured policy: same_clip / other_shot / cross_video / mix
            F("n_references", pa.int32()),
            F("references_json", pa.string()),  # per reference: source clip, frame, identity, similarity, policy, copy check
            F("dropped_json", pa.string()),  # {reason: count} of subjects left without a reference
            F("inputs_digest", pa.string()),  # of what the row was computed from: a rerun rewrites the row when it changes
        ),
        _spec(
            "shards",
            ("shard",),
            F("shard", pa.string()),  # <split>-<digest of its clip ids>
            F("split", pa.string()),
            F("path", pa.string()),  # relative to the run folder
            F("n_samples", pa.int32()),
            F("bytes", pa.int64()),
            F("clip_ids", pa.list_(pa.string())),  # the samples it holds, in order
        ),
        _spec(
            "encoded",
            ("shard",),
            F("shard", pa.string()),  # the raw shard these samples' features come from
            F("path", pa.string()),  # relative to the run folder: encoded/<shard>.tar
            F("n_samples", pa.int32()),
            F("skipped_json", pa.string()),  # {reason: count} of samples the trainer could not use
            F("bytes", pa.int64()),
            F("train_config", pa.string()),  # the training config the features were made for
            F("config_digest", pa.string()),  # of the parts of it that change the features
        ),
        _spec(
            "errors",
            ("stage", "key"),
            F("stage", pa.string()),
            F("key", pa.string()),  # the input key that failed (a path, a video_id, a clip_id)
            F("error_type", pa.string()),
            F("message", pa.string()),  # what a person needs to know, including the file
            F("attempts", pa.int32()),  # how often it was tried (retries of transient failures, worker deaths)
        ),
        _spec(
            "stage_runs",
            ("run_started", "stage"),
            F("run_started", pa.string()),  # ISO time the `curate` / `stage` command started
            F("stage", pa.string()),
            F("inputs", pa.int64()),  # pending inputs processed this time
            F("done_before", pa.int64()),
            F("rows", pa.int64()),
            F("errors", pa.int64()),
            F("seconds", pa.float64()),  # from the stage's first input to its last result
            F("first_result_s", pa.float64()),  # seconds from the command's start to the stage's first result
            F("last_result_s", pa.float64()),
            F("actors", pa.int32()),  # model actors (model stages only)
            F("busy_s", pa.float64()),  # seconds the actors spent processing batches, all actors together
            F("utilisation", pa.float64()),  # busy_s / (actors x seconds): how well the model was fed
            F("gpus", pa.float64()),  # each actor's GPU share (0 on CPUs), so busy_s x gpus is GPU time
        ),
    ]
}


def spec(table: str) -> TableSpec:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; tables are {', '.join(TABLES)}") from None
