"""The curation models against their libraries' own reference paths, and the GPU actors' work.

GroundingDINO, SAM and CLIP on tiny random-initialised models of the real classes; NudeNet and
RapidOCR with the real weights their packages ship.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import REAL
from learned_fixtures import run_model_stage, tiny_models  # noqa: F401  (fixture)
from PIL import Image

from pipeline.config import load_config
from stages.aesthetic import Aesthetic, center_square
from stages.crops import masked_crop, pixel_box
from stages.subjects import Subjects
from stages.video import iter_frames


def rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Three key frames of one size, as a clip's are."""
    image = rgb(REAL / "astronaut.png")
    return [image, image[:, ::-1].copy(), np.roll(image, (40, -60), axis=(0, 1))]


def test_tiny_grounding_dino_has_berts_special_ids_so_phrases_attend_within_themselves(tiny_models):
    from transformers import AutoProcessor
    from transformers.models.grounding_dino.modeling_grounding_dino import SPECIAL_TOKENS, generate_masks_with_special_tokens_and_transfer_map

    tokenizer = AutoProcessor.from_pretrained(tiny_models / "grounding_dino").tokenizer
    assert [tokenizer.convert_tokens_to_ids(t) for t in ["[PAD]", "[CLS]", "[SEP]", "."]] == [0, 101, 102, 1012]
    ids = torch.tensor([tokenizer("man in a red jacket . dog .")["input_ids"]])
    masks, positions = generate_masks_with_special_tokens_and_transfer_map(ids, torch.tensor(SPECIAL_TOKENS))
    assert masks[0, 1].sum() == 6  # "man" sees its phrase: man in a red jacket .
    assert masks[0, 1, 7] == False  # noqa: E712  ... and not "dog"
    assert positions[0, 1:7].tolist() == [0, 1, 2, 3, 4, 5] and positions[0, 7] == 0


@pytest.mark.slow
def test_one_prompt_for_all_labels_equals_one_prompt_per_label_with_one_backbone_pass_per_frame(tiny_models, frames):
    """The per-label path is the model card's: processor, model, post_process_grounded_object_detection."""
    from transformers import AutoProcessor

    from model.curation.grounding import Detector

    folder = str(tiny_models / "grounding_dino")
    detector, processor = Detector.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    labels = ["person", "man in a red jacket", "dog", "teddy bear"]
    passes = []
    hook = detector.model.model.backbone.conv_encoder.register_forward_hook(lambda m, args, out: passes.append(len(args[0])))
    found = detector.detect(Detector.inputs(folder, frames, labels), threshold=0.0)
    hook.remove()
    assert passes == [len(frames)]  # one image pass per frame, not one per (frame, label)
    compared = 0
    for frame, mine in zip(frames, found):
        for label in labels:
            inputs = processor(images=[frame], text=[f"{label}."], return_tensors="pt")
            with torch.inference_mode():
                outputs = detector.model(**inputs)
            reference = processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[frame.shape[:2]]
            )[0]
            ours = [d for d in mine if d.label == label]
            assert len(ours) == len(reference["scores"]) > 0
            np.testing.assert_allclose([d.score for d in ours], reference["scores"].numpy(), atol=1e-5, rtol=0)
            np.testing.assert_allclose([d.box for d in ours], reference["boxes"].numpy(), atol=1e-3, rtol=0)
            compared += len(ours)
    assert compared == len(frames) * len(labels) * detector.model.config.num_queries


@pytest.mark.slow
def test_sam_masks_equal_sam_predictor_predict(tiny_models, frames):
    from segment_anything import SamPredictor

    from model.curation.segmenter import Segmenter, sam_input

    segmenter = Segmenter.from_pretrained(str(tiny_models / "sam"), "sam_tiny.pth", "tiny")
    reference = SamPredictor(segmenter.predictor.model)
    for frame in frames:
        h, w = frame.shape[:2]
        boxes = np.array([[10, 20, w // 2, h - 5], [w // 3, 0, w - 1, h // 2], [0.5, 0.5, w - 0.5, h - 0.5]], np.float32)
        masks, iou = segmenter.masks(sam_input(frame, "tiny"), (h, w), boxes)
        reference.set_image(frame)
        for box, mask, score in zip(boxes, masks.numpy(), iou.numpy()):
            expected, expected_iou, _ = reference.predict(box=box, multimask_output=False)
            assert mask.shape == (h, w) and mask.any()
            assert (mask != expected[0]).sum() <= mask.size * 1e-5  # float rounding of the batched decoder, at most a few pixels
            assert score == pytest.approx(expected_iou[0], abs=1e-5)


def test_clip_cutouts_are_open_clips_preprocess_of_the_grey_square(tiny_models, frames):
    """Inputs within 0.05 of open_clip's `preprocess` (normalised units, mean absolute), embeddings cosine >= 0.999."""
    from model.curation.clip import ImageEmbedder, load_clip

    model, preprocess, _ = load_clip(str(tiny_models / "clip"))
    embedder = ImageEmbedder(model, "tiny")
    frame = frames[0]
    h, w = frame.shape[:2]
    masks = np.zeros((3, h, w), bool)
    masks[0, 50:300, 100:250] = True
    masks[1, 10:400, 30:480] = True
    masks[2, 200:260, 200:240] = True
    boxes = [pixel_box(b, h, w) for b in [(90.0, 40.0, 260.5, 310.0), (0, 0, w, h), (195, 195, 250, 270)]]
    ours = embedder.pixels(torch.from_numpy(frame), torch.from_numpy(masks), boxes)
    embeddings = embedder.embed_cutouts(torch.from_numpy(frame), torch.from_numpy(masks), boxes)
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        cut = masked_crop(frame, mask, box)
        grey = np.where(cut[..., 3:] > 0, cut[..., :3], 127).astype(np.uint8)
        side = max(grey.shape[:2])
        square = np.full((side, side, 3), 127, np.uint8)
        top, left = (side - grey.shape[0]) // 2, (side - grey.shape[1]) // 2
        square[top : top + grey.shape[0], left : left + grey.shape[1]] = grey
        expected = preprocess(Image.fromarray(square))
        assert (ours[i] - expected).abs().mean() < 0.05
        with torch.inference_mode():
            theirs = model.encode_image(expected[None])[0]
        assert float(np.dot(embeddings[i], (theirs / theirs.norm()).numpy())) >= 0.999


def test_aesthetic_frames_are_open_clips_preprocess_of_the_decoded_frame(tiny_models, tmp_path):
    from model.curation.clip import load_clip

    model, preprocess, _ = load_clip(str(tiny_models / "clip"))
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}"]).aesthetic
    full = next(iter_frames(REAL / "bikes.mp4", fmt="rgb24")).image
    h, w = full.shape[:2]
    _, size = config.window_request(w, h)
    small = center_square(next(iter_frames(REAL / "bikes.mp4", fmt="rgb24", size=size)).image)
    stage = Aesthetic(config, tmp_path)
    stage.setup()
    scorer = stage.scorer
    ours = ((torch.from_numpy(small[None]).permute(0, 3, 1, 2).float() / 255 - scorer.mean) / scorer.std)[0]
    expected = preprocess(Image.fromarray(full))
    assert (ours - expected).abs().mean() < 0.05
    with torch.inference_mode():
        theirs = model.encode_image(expected[None])[0]
    assert float(torch.dot(scorer.embed(small[None])[0], theirs / theirs.norm())) >= 0.999


def test_nudenet_equals_its_file_path_call(tmp_path):
    from model.curation.nsfw import NsfwScorer

    scorer = NsfwScorer.load()
    for path in [REAL / "astronaut.png", REAL / "grace_hopper.jpg"]:
        ours = scorer.detections(rgb(path))
        assert ours == scorer.detector.detect(str(path)) and ours  # both find the face


def test_rapidocr_detector_equals_the_packages_file_path_call(tmp_path):
    from rapidocr_onnxruntime import RapidOCR

    from model.curation.ocr import TextArea

    image = next(iter_frames(REAL / "bikes.mp4", fmt="rgb24")).image.copy()
    for i, line in enumerate(["Quarterly results 2024", "Revenue grew 12 percent"]):
        cv2.putText(image, line, (30, 60 + 70 * i), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (255, 255, 255), 3, cv2.LINE_AA)
    path = tmp_path / "slide.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    ours, _ = TextArea.load().detector(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    engine = RapidOCR(det_limit_side_len=640, det_limit_type="max", det_thresh=0.3, det_box_thresh=0.5, det_unclip_ratio=1.6)
    theirs, _ = engine(str(path), use_cls=False, use_rec=False)
    key = lambda box: tuple(np.asarray(box, np.float32).ravel())  # noqa: E731  (the package sorts its boxes by position)
    assert len(theirs) >= 2 and sorted(map(key, ours)) == sorted(map(key, theirs))


class Forbidden(Exception):
    pass


def forbid(monkeypatch, target, name: str) -> None:
    def refuse(*args, **kwargs):
        raise Forbidden(f"{name} ran in the model actor")

    monkeypatch.setattr(target, name, refuse)


@pytest.mark.slow
def test_gpu_actors_process_batch_runs_no_processor_and_no_cpu_detector(tiny_models, tmp_path, monkeypatch, frames):
    """Everything CPU-side is in prepare (`Subjects.inputs`) or `finish`: with the processors, SAM's
    resize, dlib and the crop writers refusing to run, process_batch still answers."""
    import dlib
    from segment_anything.utils.transforms import ResizeLongestSide
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    import stages.subjects as subjects
    from model.curation.faces import FaceModel

    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}"])
    stage = Subjects(config.subjects, tmp_path)
    stage.setup()
    clip = [f.image for f in iter_frames(REAL / "carphone_pristine.mp4", fmt="rgb24", keep={10, 60, 110}.__contains__)]
    prepared = [stage.inputs("c1", clip, [10, 60, 110], {"person": "human", "dog": "object"}), stage.inputs("c2", frames, [0, 1, 2], {"person": "human"})]
    aesthetic = Aesthetic(config.aesthetic, tmp_path)
    aesthetic.setup()
    squares = {"clip_id": "c1", "frames": np.stack([cv2.resize(center_square(f), (224, 224)) for f in clip])}
    for target, name in [
        (GroundingDinoImageProcessor, "__call__"), (GroundingDinoImageProcessor, "preprocess"), (GroundingDinoProcessor, "__call__"),
        (PreTrainedTokenizerBase, "__call__"), (ResizeLongestSide, "apply_image"), (FaceModel, "detect"), (FaceModel, "embed"),
        (dlib, "get_frontal_face_detector"), (subjects, "write_png"), (subjects, "rle_encode"), (subjects, "mask_iou"),
        (cv2, "resize"), (cv2, "imencode"),
    ]:  # fmt: skip
        forbid(monkeypatch, target, name)
    made, errors = stage.process_batch(prepared)
    assert not errors and [m["clip_id"] for m in made] == ["c1", "c2"]
    assert all(len(finds.detections) for m in made for finds in m["found"])  # boxes were found on every frame
    rows, errors = aesthetic.process_batch([squares])
    assert not errors and rows[0]["dtype"] == "float32"
    monkeypatch.undo()
    rows, errors = run_model_stage(stage, prepared)
    assert not errors and {r["clip_id"] for r in rows} == {"c1", "c2"} and all(r["dtype"] == "float32" for r in rows)


@pytest.mark.slow
def test_a_clips_subjects_do_not_depend_on_the_clips_beside_it_in_a_batch(tiny_models, tmp_path, frames):
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}"])
    stage = Subjects(config.subjects, tmp_path)
    stage.setup()
    clip = [f.image for f in iter_frames(REAL / "carphone_pristine.mp4", fmt="rgb24", keep={10, 60, 110}.__contains__)]
    one = stage.inputs("c1", clip, [10, 60, 110], {"person": "human"})
    other = stage.inputs("c2", frames, [0, 1, 2], {"person": "human", "dog": "object"})
    alone, _ = run_model_stage(stage, [one])
    beside, _ = run_model_stage(stage, [other, one])
    assert alone and alone == [r for r in beside if r["clip_id"] == "c1"]
    aesthetic = Aesthetic(config.aesthetic, tmp_path)
    aesthetic.setup()
    squares = lambda images, i: {"clip_id": i, "frames": np.stack([cv2.resize(center_square(f), (224, 224)) for f in images])}  # noqa: E731
    alone, _ = aesthetic.process_batch([squares(clip, "c1")])
    beside, _ = aesthetic.process_batch([squares(frames, "c2"), squares(clip, "c1"), squares(frames[:1], "c3")])
    assert alone[0] == beside[1]
