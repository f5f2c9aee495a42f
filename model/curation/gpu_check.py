"""GPU check for curation: the model stages' GPU side on real-size models with random weights, all on one GPU.

`make gpu-check` runs it beside the trainer's (`model.train.gpu_check`). Every model a GPU actor
of the full profile holds is loaded at once on one GPU, as co-located actors share it:
GroundingDINO-T + SAM ViT-B + CLIP ViT-L/14 (subjects), CLIP ViT-L/14 + the LAION head (aesthetic)
and Qwen2.5-VL-3B (caption), in bf16. Fed 720p frames at the full profile's shapes, each stage's
actor-side code (`RegionModels.find`, `AestheticScorer.embed` + `score`: what their
`process_batch` runs) is timed against its bare models on the same batch and shapes with the
inputs already on the GPU (the ceiling): clips/s, GPU busy share (NVML's utilisation, sampled),
peak memory and dtype per stage. Caption is measured bare only (greedy generation of
`max_new_tokens` from Qwen's video input): its stage code is the captioner's.

It imports torch, transformers, numpy, OpenCV, segment_anything and open_clip (the last two are
pure Python wheels: carry them where they are missing), and none of Ray, DuckDB or PyAV, so it runs
on a bare GPU machine; stages are measured one after another in one process, in under 5 minutes.
Without CUDA it stops at once. Writes `bench/gpu-curation.md`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

LABELS = ["person", "man", "woman", "dog", "cat", "chef", "bicycle"]  # 6 listed by the captioner + person
OUT = Path(__file__).resolve().parents[2] / "bench" / "gpu-curation.md"


@dataclass(frozen=True)
class Scale:
    """The shapes measured: `FULL` is the full profile's; the test runs `TINY` on a CPU."""

    frame: tuple[int, int]  # height, width of the decoded frames
    key_frames: int  # subjects
    labels: int  # subjects: labels looked for, each with up to 3 boxes a frame
    aesthetic_frames: int
    aesthetic_batch: int  # clips per aesthetic call
    caption_frames: int
    caption_side: int  # the longest side frames are scaled to before Qwen's processor
    caption_tokens: int  # tokens generated per clip
    caption_batch: int
    seconds: float  # timed per measurement, after one warm-up call
    real_size: bool


FULL = Scale((720, 1280), 3, 7, 4, 8, 4, 448, 256, 8, 20.0, True)
TINY = Scale((72, 128), 2, 1, 2, 2, 2, 56, 4, 2, 0.0, False)


def grounding_dino(scale: Scale, folder: Path):
    """GroundingDINO-T (transformers' defaults are grounding-dino-tiny's: Swin-T, BERT-base) and its
    processor at 800 / 1333, with a tokenizer whose special tokens sit at BERT's ids."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor, GroundingDinoProcessor

    from model.testing.tiny import bert_tokenizer

    size = {"shortest_edge": 800, "longest_edge": 1333} if scale.real_size else {"shortest_edge": min(scale.frame), "longest_edge": max(scale.frame)}
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size=size), tokenizer=bert_tokenizer()).save_pretrained(folder)
    if scale.real_size:
        return GroundingDinoForObjectDetection(GroundingDinoConfig())
    from model.testing.tiny import build_grounding_dino

    build_grounding_dino(folder / "tiny")
    return GroundingDinoForObjectDetection.from_pretrained(folder / "tiny")


def clip_l14(scale: Scale):
    import open_clip

    if scale.real_size:
        return open_clip.create_model("ViT-L-14", pretrained=None, force_quick_gelu=True)
    model = open_clip.CLIP(
        embed_dim=32, quick_gelu=True, vision_cfg={"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
        text_cfg={"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    )  # fmt: skip
    model.visual.preprocess_cfg = {"size": 224, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
    return model


def qwen(scale: Scale):
    """Qwen2.5-VL-3B-Instruct's architecture (its config.json's sizes), or a tiny one."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if scale.real_size:
        text = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000, "tie_word_embeddings": True,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}  # fmt: skip
        vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
                  "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112}  # fmt: skip
    else:
        text = {"vocab_size": 160, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}  # fmt: skip
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                  "fullatt_block_indexes": [1], "window_size": 56}  # fmt: skip
    ids = {"image_token_id": text["vocab_size"] - 5, "video_token_id": text["vocab_size"] - 4,
           "vision_start_token_id": text["vocab_size"] - 3, "vision_end_token_id": text["vocab_size"] - 2}  # fmt: skip
    text.update(bos_token_id=0, eos_token_id=text["vocab_size"] - 1, pad_token_id=0)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)), ids


def frames(scale: Scale, n: int, seed: int) -> np.ndarray:
    """(n, h, w, 3) uint8: smooth gradients with a few solid shapes, so boxes and masks have edges to find."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = scale.frame
    out = []
    for _ in range(n):
        image = np.dstack([np.tile(np.linspace(rng.integers(0, 128), 255, w, dtype=np.float32), (h, 1))] * 3).astype(np.uint8)
        for _ in range(4):
            x, y = int(rng.integers(0, w - w // 4)), int(rng.integers(0, h - h // 4))
            cv2.rectangle(image, (x, y), (x + w // 5, y + h // 4), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        out.append(image)
    return np.stack(out)


class Busy:
    """NVML's GPU utilisation (share of time a kernel ran), sampled every 20 ms while inside; None on a CPU."""

    def __init__(self, on: str):
        self.on, self.samples, self.stop = on, [], threading.Event()

    def __enter__(self):
        if self.on == "cuda":
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
        return self

    def sample(self) -> None:
        while not self.stop.wait(0.02):
            self.samples.append(torch.cuda.utilization())

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.on == "cuda":
            self.thread.join()

    @property
    def share(self) -> float | None:
        return float(np.mean(self.samples)) / 100 if self.samples else None


def timed(on: str, call, clips: int, seconds: float) -> dict:
    """clips/s, GPU busy share and peak memory of `call` (one call handles `clips` clips), after one warm-up call."""
    call()
    if on == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    calls, started = 0, time.perf_counter()
    with Busy(on) as busy:
        while calls < 2 or time.perf_counter() - started < seconds:
            call()
            if on == "cuda":
                torch.cuda.synchronize()
            calls += 1
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if on == "cuda" else None
    return {"clips_s": calls * clips / elapsed, "busy": busy.share, "peak_gib": peak}


def check(scale: Scale, on: str, dtype: torch.dtype) -> list[dict]:
    """One row per stage: its actor-side code and its bare models, all models loaded at once."""
    from model.curation.aesthetic import AestheticHead, AestheticScorer
    from model.curation.clip import ImageEmbedder
    from model.curation.grounding import Detector
    from model.curation.regions import RegionModels
    from model.curation.segmenter import Segmenter, build_sam, sam_input

    import cv2

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="gpu-curation-"))
    sam_type = "vit_b" if scale.real_size else "tiny"
    with torch.device(on):  # random weights initialised where they run: Qwen's 3.75 B take minutes on a CPU
        regions = RegionModels(
            Detector(grounding_dino(scale, folder).to(on, dtype), str(folder)),
            Segmenter(build_sam(sam_type)).to(on, dtype),
            ImageEmbedder(clip_l14(scale), "clip").to(on, dtype),
        )
        clip = clip_l14(scale)
        scorer = AestheticScorer(clip, AestheticHead(clip.visual.output_dim)).to(on, dtype)
        captioner, ids = qwen(scale)
        captioner = captioner.to(on, dtype).eval()
    resident = torch.cuda.memory_allocated() / 2**30 if on == "cuda" else None
    rows = []

    # subjects: one clip per call, as its actor runs them
    clip_frames = frames(scale, scale.key_frames, 0)
    detector_inputs = Detector.inputs(str(folder), list(clip_frames), LABELS[: scale.labels])
    sam = [sam_input(f, sam_type) for f in clip_frames]
    per_frame = 3 * scale.labels  # max_per_label x labels: every box a random detector scores above 0 goes on
    stage = timed(on, lambda: regions.find(clip_frames, detector_inputs, sam, 0.0, per_frame), 1, scale.seconds)
    rows.append({"stage": "subjects", **stage, "bare": bare_subjects(regions, clip_frames, detector_inputs, sam, per_frame, on, scale.seconds)})

    # aesthetic: the CUDA path, one CLIP forward for the batch's frames
    squares = np.stack([cv2.resize(f[:, : f.shape[0]], (224, 224), interpolation=cv2.INTER_AREA)
                        for f in frames(scale, scale.aesthetic_frames * scale.aesthetic_batch, 1)])  # fmt: skip  (what prepare hands it)
    stage = timed(on, lambda: scorer.score(scorer.embed(squares)).float().cpu(), scale.aesthetic_batch, scale.seconds)
    pixels = ((torch.from_numpy(squares).to(on).permute(0, 3, 1, 2).float() / 255 - scorer.mean.float()) / scorer.std.float()).to(dtype)
    bare = timed(on, lambda: scorer.head(scorer.clip.encode_image(pixels)), scale.aesthetic_batch, scale.seconds)
    rows.append({"stage": "aesthetic", **stage, "bare": bare})

    # caption: Qwen2.5-VL's video input at the caption stage's shapes, greedy, a fixed number of new tokens
    inputs = video_inputs(scale, ids, on, dtype)
    generate = lambda: captioner.generate(**inputs, max_new_tokens=scale.caption_tokens, min_new_tokens=scale.caption_tokens, do_sample=False)  # noqa: E731
    rows.append({"stage": "caption", "bare": timed(on, generate, scale.caption_batch, scale.seconds), "tokens": scale.caption_tokens})
    for row in rows:
        row.update(dtype=str(dtype).removeprefix("torch."), resident_gib=resident)
    return rows


def bare_subjects(regions, clip_frames, detector_inputs, sam, per_frame: int, on: str, seconds: float) -> dict:
    """The same model calls as `RegionModels.find` with every input already on the device: the backbone
    once per frame, the rest once per (frame, label), SAM per frame with `per_frame` boxes, CLIP on as many crops."""
    from model.curation.grounding import backbone_features

    model = regions.detector.model
    dtype = model.dtype
    labels = len(detector_inputs.labels)
    pixel_values = torch.from_numpy(detector_inputs.pixel_values).to(on, dtype)
    pixel_mask = torch.from_numpy(detector_inputs.pixel_mask).to(on)
    n = len(pixel_values) * labels
    ids = torch.from_numpy(detector_inputs.input_ids).to(on).expand(n, -1)
    mask = torch.from_numpy(detector_inputs.label_masks).to(on).repeat(len(pixel_values), 1).long()
    sam_model = regions.segmenter.predictor.model
    images = [sam_model.preprocess(torch.as_tensor(s, device=on).permute(2, 0, 1)[None].float()) for s in sam]
    h, w = clip_frames.shape[1:3]
    boxes = torch.tensor([[w * 0.1, h * 0.1, w * 0.6, h * 0.7]] * per_frame, device=on)
    boxes = regions.segmenter.predictor.transform.apply_boxes_torch(boxes, (h, w))
    crops = torch.zeros(per_frame, 3, regions.embedder.size, regions.embedder.size, device=on, dtype=dtype)

    @torch.inference_mode()
    def call():
        features, positions = model.model.backbone(pixel_values, pixel_mask)
        rows = lambda t: t.repeat_interleave(labels, dim=0)  # noqa: E731
        with backbone_features(model, ([(rows(f), rows(m)) for f, m in features], [rows(p) for p in positions])):
            model(pixel_values=pixel_values[:1, :1, :1, :1].expand(n, *pixel_values.shape[1:]), pixel_mask=rows(pixel_mask),
                  input_ids=ids, attention_mask=mask)  # fmt: skip
        for image in images:
            with regions.segmenter.autocast():
                embedding = sam_model.image_encoder(image)
                sparse, dense = sam_model.prompt_encoder(points=None, boxes=boxes, masks=None)
                sam_model.mask_decoder(embedding, sam_model.prompt_encoder.get_dense_pe(), sparse, dense, False)
            regions.embedder.model.encode_image(crops)

    return timed(on, call, 1, seconds)


def video_inputs(scale: Scale, ids: dict, on: str, dtype: torch.dtype) -> dict:
    """Qwen2.5-VL's inputs for `caption_batch` clips of `caption_frames` frames at the caption stage's
    frame size (14 px patches, 2 frames per temporal patch, 2x2 merge), with a short prompt."""
    h, w = scale.frame
    ratio = scale.caption_side / max(h, w)
    gh, gw = (max(2, round(h * ratio / 28)) * 2, max(2, round(w * ratio / 28)) * 2)  # patches, in multiples of the merge
    gt = scale.caption_frames // 2
    tokens = gt * gh * gw // 4
    prompt = [ids["vision_start_token_id"]] + [ids["video_token_id"]] * tokens + [ids["vision_end_token_id"]] + list(range(1, 41))
    batch = scale.caption_batch
    return {
        "input_ids": torch.tensor([prompt] * batch, device=on),
        "attention_mask": torch.ones(batch, len(prompt), dtype=torch.long, device=on),
        "pixel_values_videos": torch.randn(batch * gt * gh * gw, 3 * 2 * 14 * 14, device=on, dtype=dtype),
        "video_grid_thw": torch.tensor([[gt, gh, gw]] * batch, device=on),
    }


def report(rows: list[dict], device_name: str) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "## Curation on one GPU (random weights, full-profile shapes)",
        "",
        f"`make gpu-check` on {device_name}: every full-profile model of the curation actors resident at once "
        f"({fmt(rows[0]['resident_gib'], '.1f')} GiB), 720p frames; each stage's actor-side code against its bare models "
        "(inputs already on the GPU) on the same batch and shapes. Subjects: 3 key frames, 7 labels, 21 boxes a frame; "
        "aesthetic: 8 clips of 4 frames a call; caption: 8 clips of 4 frames at 448 px, 256 tokens each, bare generation only.",
        "",
        "| stage | dtype | clips/s | bare clips/s | stage / bare | GPU busy | bare GPU busy | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        stage, bare = r.get("clips_s"), r["bare"]["clips_s"]
        ratio = stage / bare if stage is not None else None
        lines.append(
            f"| {r['stage']} | {r['dtype']} | {fmt(stage, '.2f')} | {bare:.2f} | {fmt(ratio, '.2f')} | {fmt(r.get('busy'), '.0%')} "
            f"| {fmt(r['bare']['busy'], '.0%')} | {fmt(r.get('peak_gib') or r['bare']['peak_gib'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.curation.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("the curation GPU check needs a CUDA GPU (torch.cuda.is_available() is False)")
    missing = [name for name in ("segment_anything", "open_clip") if not _importable(name)]
    if missing:
        sys.exit(f"the curation GPU check needs {', '.join(missing)}: pip install segment-anything open-clip-torch (pure Python wheels)")
    from model.curation.device import runtime

    on, dtype = runtime()
    text = report(check(FULL, on, dtype), torch.cuda.get_device_name())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    main()
