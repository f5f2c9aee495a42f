"""caption: one answer per clip from the Qwen2.5-VL tiny model, the processor in `prepare`, answers parsed strictly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REAL
from learned_fixtures import tiny_models  # noqa: F401  (fixture)

from manifests.filters import RULES, VLM_CHECKS, FilterConfig, predicate
from pipeline.config import load_config
from stages.caption import EMPTY, Caption, load_prompt
from stages.caption_answer import DEFAULT_SUBJECTS, parse_answer
from stages.video import iter_frames

SUBJECTS = '[{"kind": "human", "label": "man"}, {"kind": "object", "label": "dog"}, {"kind": "human", "label": "man"}]'
CHECKS = {name: name == "slideshow" for name in VLM_CHECKS}


def answer(subjects: str = SUBJECTS, checks: dict | None = None, caption: str = "A man walks his dog.") -> str:
    return f'{caption}\n{{"subjects": {subjects}, "reject": {json.dumps(checks or CHECKS)}}}'


def test_answers_parse_strictly():
    parsed = parse_answer(answer(), 6)
    assert parsed.caption == "A man walks his dog." and parsed.problem is None
    assert parsed.subjects == [{"kind": "human", "label": "man"}, {"kind": "object", "label": "dog"}]
    assert parsed.checks == CHECKS
    fenced = parse_answer('Two lines\nof caption.\n```json\n{"subjects": ' + SUBJECTS + ', "reject": ' + json.dumps(CHECKS) + "}\n```", 1)
    assert fenced.caption == "Two lines\nof caption." and fenced.subjects == [{"kind": "human", "label": "man"}]
    bad = [
        "A man walks his dog.",  # no JSON line
        answer() + " and more",  # text after it
        answer(subjects="[]"),
        answer(subjects='[{"kind": "animal", "label": "dog"}]'),
        answer(checks={**CHECKS, "slideshow": "yes"}),  # not a boolean
        answer(checks={k: v for k, v in CHECKS.items() if k != "artifacts"}),  # a check missing
        answer(checks={**CHECKS, "blurry": False}),  # one we did not ask
        'A man.\n{"subjects": ' + SUBJECTS + "}",  # no reject
        'A man.\n{"subjects": ' + SUBJECTS + ', "reject": {',  # cut off
    ]
    for text in bad:
        parsed = parse_answer(text, 6)
        assert parsed.subjects is None and parsed.checks is None and parsed.problem, text
        assert parsed.caption.startswith("A man"), text


def test_each_answer_gets_one_status(tmp_path):
    stage = Caption(load_config(profile="tiny").caption, tmp_path)
    raw = {"clip_id": "c1", "tokens": [1] * 7, "finished": True, "dtype": "float32"}
    row, error = stage.row(raw, answer())
    assert error is None and row["answer"] == "ok" and row["subjects_source"] == "model" and row["output_tokens"] == 7
    assert [row[f"reject_{name}"] for name in VLM_CHECKS] == [name == "slideshow" for name in VLM_CHECKS]
    row, error = stage.row(raw, "A man walks.")
    assert row["answer"] == "unparsable" and json.loads(row["subjects_json"]) == DEFAULT_SUBJECTS and row["subjects_source"] == "default"
    assert row["reject_slideshow"] is None and error["error_type"] == "bad_model_output" and "default subjects" in error["message"]
    assert row["random_weights"] and row["model"].endswith("(random weights)")
    row, error = stage.row({**raw, "finished": False}, "A man walks his dog along")
    assert row["answer"] == "truncated" and error is not None
    row, error = stage.row(raw, "  \n" + answer(caption="").strip())
    assert row is None and error["message"] == EMPTY


def test_vlm_rule_filters_only_the_checks_named():
    assert predicate("vlm", FilterConfig()) == "COALESCE((TRUE), FALSE)"
    sql = predicate("vlm", FilterConfig(vlm_reject=["synthetic", "slideshow"]))
    assert "reject_slideshow = FALSE AND reject_synthetic = FALSE" in sql
    with pytest.raises(ValueError, match="unknown VLM check"):
        FilterConfig(vlm_reject=["blurry"])


def real_clip(name: str, count: int, step: int) -> np.ndarray:
    return np.stack([f.image for f in iter_frames(REAL / name, fmt="rgb24", end_frame=count * step) if f.index % step == 0])


@pytest.fixture(scope="module")
def stage(tiny_models, tmp_path_factory):  # noqa: F811
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}"]).caption
    stage = Caption(config, tmp_path_factory.mktemp("caption-run"))
    stage.setup()
    return stage


def mixed_batch(stage: Caption) -> list[dict]:
    """Clips of different lengths (frame sizes) and different answers from the tiny model, small to keep it quick."""
    bikes, carphone = real_clip("bikes.mp4", 4, 5)[:, ::2, ::2], real_clip("carphone_pristine.mp4", 4, 3)
    clips = [("bikes", bikes, 6.0), ("bikes-crop", bikes[:, :100, :150], 6.0), ("bikes-dark", bikes[:, ::2, ::2] // 4, 3.0),
             ("carphone-inverted", 255 - carphone, 10.0)]  # fmt: skip
    prompt = load_prompt(stage.config.prompt_version)
    return [{"clip_id": key, "request": stage.processor().request(frames, fps, prompt), "frames": frames, "fps": fps} for key, frames, fps in clips]


def finished(stage: Caption, items: list[dict]) -> list[dict]:
    """The captions rows of one batch: the actor's `process_batch`, then `finish` per clip as the runner calls it."""
    raw, errors = stage.process_batch(items)
    assert not errors and [r["clip_id"] for r in raw["captions"]] == [item["clip_id"] for item in items]
    return [row for one in raw["captions"] for row in stage.finish({"captions": [one]})["captions"]]


def model_card_generate(stage: Caption, item: dict) -> tuple[str, int]:
    """The model card's way, one clip at a time: chat template, processor on the video, generate, trim, decode."""
    processor, model = stage.processor().processor, stage.captioner.model
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": load_prompt(stage.config.prompt_version)}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    from transformers.video_utils import VideoMetadata

    inputs = processor(text=[text], videos=[list(item["frames"])], video_metadata=[VideoMetadata(total_num_frames=len(item["frames"]), fps=item["fps"])],
                       size={"shortest_edge": 28 * 28, "longest_edge": stage.config.max_pixels}, padding=True, return_tensors="pt")  # fmt: skip
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=stage.config.max_new_tokens, do_sample=False)
    trimmed = [out[len(ids) :] for ids, out in zip(inputs.input_ids, generated)]
    decoded = processor.batch_decode(trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
    return decoded, len(trimmed[0])


@pytest.mark.slow
def test_batched_captions_equal_the_model_cards_one_at_a_time_generate(stage):
    items = mixed_batch(stage)
    assert len({len(item["request"]["input_ids"]) for item in items}) == len(items)  # every clip a different length
    assert items[0]["request"]["video_grid_thw"][0, 0] == 2  # 4 frames in 2 temporal patches: one video, not 4 stills
    captions = {row["clip_id"]: row for row in finished(stage, items)}
    for item in items:
        text, n_tokens = model_card_generate(stage, item)
        assert captions[item["clip_id"]]["caption"] == parse_answer(text, 6).caption
        assert captions[item["clip_id"]]["output_tokens"] == n_tokens
    assert len({row["caption"] for row in captions.values()}) == len(items)  # distinct answers: a swap would show
    assert {row["dtype"] for row in captions.values()} == {"float32"}


@pytest.mark.slow
def test_a_caption_stays_with_its_clip_in_a_padded_batch(stage):
    """The batched path (the one CUDA takes): left padding, attention mask and rope positions give each
    clip its own answer whatever shares its batch, in either order."""
    items = mixed_batch(stage)
    requests = [item["request"] for item in items]
    alone = [stage.captioner.generate([r], stage.config.max_new_tokens)[0].tokens.tolist() for r in requests]
    together = stage.captioner.generate(requests, stage.config.max_new_tokens)
    reversed_ = stage.captioner.generate(requests[::-1], stage.config.max_new_tokens)[::-1]
    assert [a.tokens.tolist() for a in together] == alone == [a.tokens.tolist() for a in reversed_]
    assert len({tuple(a) for a in alone}) == len(items)


def test_the_actor_runs_no_processor(stage, monkeypatch):
    """`process_batch` (the GPU actor) gets tensors and returns token ids: no image or video preprocessing, no
    tokeniser either way, no frame decode; `finish` (a CPU task after it) decodes and parses."""
    items = mixed_batch(stage)[1:3]
    processor = stage.processor().processor
    with monkeypatch.context() as patched:

        def refuse(*args, **kwargs):
            raise AssertionError("CPU work inside the model actor")

        for target in (processor, processor.video_processor, processor.image_processor, processor.tokenizer):
            patched.setattr(type(target), "__call__", refuse)
        for target, name in [(type(processor), "apply_chat_template"), (type(processor), "batch_decode"),
                             (type(processor.video_processor), "preprocess"), (type(processor.image_processor), "preprocess"),
                             (type(processor.tokenizer), "encode"), (type(processor.tokenizer), "decode"),
                             (type(processor.tokenizer), "batch_decode")]:  # fmt: skip
            patched.setattr(target, name, refuse)
        patched.setattr("stages.caption.clip_frames", refuse)
        patched.setattr("stages.caption.cv2.resize", refuse)
        raw, errors = stage.process_batch(items)
    assert not errors and all(set(row) == {"clip_id", "tokens", "finished", "dtype"} for row in raw["captions"])
    done = [stage.finish({"captions": [row]}) for row in raw["captions"]]
    assert [d["captions"][0]["caption"] for d in done] and all(d["errors"][0]["error_type"] == "bad_model_output" for d in done)


def test_summary_counts_answers_and_checks(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from manifests import store, views
    from manifests.report import answers_text, checks_text

    stage = Caption(load_config(profile="tiny").caption, tmp_path)
    raw = {"clip_id": "c1", "tokens": [1] * 30, "finished": True, "dtype": "bfloat16"}
    made = [stage.row(raw, answer()), stage.row({**raw, "clip_id": "c2"}, answer(checks={**CHECKS, "synthetic": True})),
            stage.row({**raw, "clip_id": "c3", "finished": False}, "A man walks"), stage.row({**raw, "clip_id": "c4"}, "A dog."),
            stage.row({**raw, "clip_id": "c5"}, "")]  # fmt: skip
    old = {"clip_id": "c0", "caption": "A caption_v1 row.", "subjects_json": json.dumps(DEFAULT_SUBJECTS), "subjects_source": "default",
           "model": "m", "prompt_version": "caption_v1", "random_weights": False}  # fmt: skip
    store.ensure_table(tmp_path, "captions")  # a part of the schema before the answer columns: read as nulls, counted nowhere
    pq.write_table(pa.Table.from_pylist([old]), store.table_dir(tmp_path, "captions") / "part-00000000000000000001-old.parquet")
    store.write_part(tmp_path, "captions", [row for row, _ in made if row])
    store.write_part(tmp_path, "errors", [error for _, error in made if error])
    runs = [{"run_started": "t1", "stage": "caption", "busy_s": 2.0, "gpus": 0.25}, {"run_started": "t2", "stage": "caption", "busy_s": 1.0, "gpus": 0.5},
            {"run_started": "t1", "stage": "subjects", "busy_s": 9.0, "gpus": 0.25}]  # fmt: skip
    store.write_part(tmp_path, "stage_runs", runs)
    con = views.connect(tmp_path)  # 4 answered rows of 30 tokens in 2 x 0.25 + 1 x 0.5 GPU-seconds
    assert answers_text(con) == "answers: 2 ok, 1 truncated, 1 unparsable, 1 empty; 120.0 output tokens/s per GPU of model time, bfloat16"
    assert checks_text(con).startswith("of 2 answered: slideshow 2, synthetic 1, text_overlay 0,")
    assert con.execute("SELECT answer, reject_slideshow FROM captions WHERE clip_id = 'c0'").fetchone() == (None, None)


def test_vlm_rule_shows_in_the_funnel_only_when_set(curated, tmp_path):
    """Score only by default: the checks are columns to look at; naming one in filter.vlm_reject adds the rule."""
    import shutil

    from conftest import KEEP_ALL
    from manifests import store, views

    run = tmp_path / "run"
    shutil.copytree(curated.run, run, ignore=shutil.ignore_patterns("report"))
    stage = Caption(load_config(profile="tiny").caption, run)
    keep_all = load_config(overrides=[s for s in KEEP_ALL[KEEP_ALL.index("--set") :] if s != "--set"]).filter
    earlier = list(RULES)[: list(RULES).index("vlm")]
    passing = views.candidates(run, earlier, keep_all).column("clip_id").to_pylist()
    windows = store.read_table(run, "scenes").column("clip_id").to_pylist()
    assert len(passing) >= 3
    raw = {"tokens": [1], "finished": True, "dtype": "float32"}
    texts = {passing[0]: answer(), passing[1]: "no JSON line"}  # slideshow (CHECKS), unknown checks; the rest clean
    clean = answer(checks=dict.fromkeys(VLM_CHECKS, False))
    store.write_part(run, "captions", [stage.row({**raw, "clip_id": c}, texts.get(c, clean))[0] for c in windows])
    assert not any(step == "filter: vlm" for step, *_ in views.funnel(run, keep_all))
    steps = {step: cut for step, _, cut in views.funnel(run, keep_all.model_copy(update={"vlm_reject": ["slideshow"]}))}
    assert steps["filter: vlm"] == 2
    steps = {step: cut for step, _, cut in views.funnel(run, keep_all.model_copy(update={"vlm_reject": ["synthetic"]}))}
    assert steps["filter: vlm"] == 1  # only the unknown answer


def test_bf16_model_takes_the_fp32_processor_output(stage):
    """The CUDA path's precision, run on the CPU: the model in bf16, the processor's fp32 pixels cast on the way in."""
    from model.curation.captioner import CaptionModel

    model = CaptionModel.from_pretrained(stage.config.model, "cpu", torch.bfloat16)
    request = mixed_batch(stage)[2]["request"]
    assert request["pixel_values_videos"].dtype == np.float32 and model.batch([request])["pixel_values_videos"].dtype == torch.bfloat16
    answers = model.generate([request, request], 4)
    assert len(answers) == 2 and all(0 < len(a.tokens) <= 4 for a in answers)
