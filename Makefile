# cinema: `make demo` curates the shipped sample footage offline; `make test` runs the tests.
# Both install what they need into .venv on first use.

PY      := .venv/bin/python
SRC     ?=
OUT     ?= runs/$(notdir $(abspath $(SRC)))
STAGES  ?=
WORKERS ?=
PROFILE ?= full
TINY_MODELS := tiny-models
# make exits 2 whenever a recipe fails, whatever its code: a tool that fails says its own code
# (README, exit codes) in one line before make does; scripts that branch on it run the tool directly.
CODE = || { code=$$?; echo "make $@: exit code $$code from the tool (README: exit codes); make itself exits 2" >&2; exit $$code; }
CURATE_ARGS = --profile $(PROFILE) $(if $(STAGES),--stages $(STAGES)) $(if $(WORKERS),--workers $(WORKERS))

.PHONY: setup demo curate weights tiny-models test test-deps test-fast bench eval clean train encode sample cinema-tiny-models gpu-check

setup: .venv/.installed

# torch first, from the CPU wheel on disk (any other torch pulls gigabytes of CUDA); then the
# project with pinned versions; then the hook that lets the CUDA-built torchvision import on CPU.
.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# rapidocr-onnxruntime asks for GUI opencv-python, which would clobber the headless cv2; its other needs are in pyproject.toml
	$(PY) -m pip install -q --no-deps rapidocr-onnxruntime==1.4.4
	$(PY) -m model.curation.torchvision_cpu
	touch $@

# Random-initialised tiny models of the real classes, for the offline demo (profile tiny).
tiny-models: setup
	HF_HUB_OFFLINE=1 $(PY) -m model.testing.tiny $(TINY_MODELS) clip aesthetic_head qwen2_5_vl grounding_dino sam

# The full profile's checkpoints, into the Hugging Face cache (needs internet); the training models are
# CONFIG's (make weights CONFIG=configs/train_wan_1_3b.yaml), only the folders their loaders read.
weights: setup
	$(PY) -m pipeline weights --set encode.train_config=$(CONFIG)

demo: PROFILE = tiny
# goldeneye's two talking faces move little (motion 0.16 and 0.26): let them through to show faces
demo: DEMO_ARGS = --set filter.min_motion=0.1
demo: setup tiny-models
	HF_HUB_OFFLINE=1 $(PY) -m pipeline curate tests/data/demo --out runs/demo $(CURATE_ARGS) $(DEMO_ARGS) $(CODE)
	@echo "Look at: runs/demo (clips/, manifests/); try: $(PY) -m manifests summary runs/demo"

curate: setup $(if $(filter tiny,$(PROFILE)),tiny-models)
	@test -n "$(SRC)" || { echo "usage: make curate SRC=raw_videos/ [OUT=runs/NAME] [PROFILE=full|tiny] [STAGES=probe,scenes,...]"; exit 2; }
	$(PY) -m pipeline curate "$(SRC)" --out "$(OUT)" $(CURATE_ARGS) $(CODE)

# Train CINEMA: `make train PROFILE=tiny` on the demo shards, or CONFIG=configs/train_full.yaml;
# multi-GPU with LAUNCH="accelerate launch --config_file configs/accelerate/ddp.yaml".
# TRAIN_ARGS="--set data.shards=runs/demo/encoded" trains on the features `make encode` cached.
CONFIG  ?= configs/train_$(PROFILE).yaml
LAUNCH  ?= $(PY)
TRAIN_ARGS ?=
train: setup $(if $(filter tiny,$(PROFILE)),cinema-tiny-models)
	HF_HUB_OFFLINE=$(if $(filter tiny,$(PROFILE)),1,0) $(LAUNCH) -m model.train --config $(CONFIG) $(TRAIN_ARGS) $(CODE)

# Cache the frozen models' features of a curated run's shards for CONFIG (a pipeline stage on Ray):
# writes RUN/encoded/, where RUN holds CONFIG's data.shards (make encode PROFILE=tiny: runs/demo).
ENCODE_RUN = $(shell $(PY) -c "import yaml,pathlib;print(pathlib.Path(yaml.safe_load(open('$(CONFIG)'))['data']['shards']).parent)" 2>/dev/null)
encode: setup $(if $(filter tiny,$(PROFILE)),cinema-tiny-models)
	HF_HUB_OFFLINE=$(if $(filter tiny,$(PROFILE)),1,0) $(PY) -m pipeline stage encode --run "$(ENCODE_RUN)" --set encode.train_config=$(CONFIG) $(if $(WORKERS),--workers $(WORKERS)) $(CODE)

# A video from a checkpoint: make sample REFS=a.png,b.png PROMPT="..." [CKPT=runs/NAME/checkpoints/step-N]
SAMPLE_RUN = $(shell $(PY) -c "import yaml;print(yaml.safe_load(open('$(CONFIG)'))['run'])" 2>/dev/null)
CKPT    ?= $(lastword $(sort $(wildcard $(SAMPLE_RUN)/checkpoints/step-*)))
SAMPLE_ARGS ?=
sample: setup
	@test -n "$(REFS)" -a -n "$(PROMPT)" || { echo 'usage: make sample REFS=a.png,b.png PROMPT="..." [CKPT=RUN/checkpoints/step-N] [SAMPLE_ARGS="--frames 45 --steps 50"]' >&2; exit 2; }
	@test -n "$(CKPT)" || { echo "error: no checkpoint yet in $(SAMPLE_RUN)/checkpoints: train first (make train PROFILE=$(PROFILE)), or name one with CKPT=RUN/checkpoints/step-N" >&2; exit 2; }
	HF_HUB_OFFLINE=1 $(PY) -m model.cinema.sample --checkpoint "$(CKPT)" --refs "$(REFS)" --prompt "$(PROMPT)" $(SAMPLE_ARGS) $(CODE)

# On a CUDA machine: real-size step time, MFU and peak memory of CogVideoX-2B and 5B (random
# weights) beside model.train.plan's estimate, in under 10 minutes; then the curation models on one
# GPU (clips/s per stage against its bare models, bench/gpu-curation.md), in under 5; fails at once without CUDA.
gpu-check: setup
	HF_HUB_OFFLINE=1 $(PY) -m model.train.gpu_check $(CODE)
	HF_HUB_OFFLINE=1 $(PY) -m model.curation.gpu_check $(CODE)

cinema-tiny-models: setup
	HF_HUB_OFFLINE=1 $(PY) -m model.testing.tiny $(TINY_MODELS) qwen2_5_vl cogvideox_2b

# Metrics of generated videos (CLIP-T, CLIP-I, DINO-I, face similarity, temporal consistency, motion):
# make eval SAMPLES=samples.jsonl [EVAL_OUT=DIR] [PROFILE=tiny]; one JSON line per video:
# {"video": "a.mp4", "prompt": "...", "references": [{"image": "ref.png", "kind": "face", "label": "woman"}]}
EVAL_OUT ?=
eval: setup
	@test -n "$(SAMPLES)" || { echo 'usage: make eval SAMPLES=samples.jsonl [EVAL_OUT=DIR] [PROFILE=full|tiny]'; exit 2; }
	$(if $(filter tiny,$(PROFILE)),HF_HUB_OFFLINE=1 $(PY) -m model.testing.tiny $(TINY_MODELS) clip_eval dino grounding_dino arcface >/dev/null)
	HF_HUB_OFFLINE=1 $(PY) -m model.cinema.evaluate "$(SAMPLES)" $(if $(EVAL_OUT),--out "$(EVAL_OUT)") $(if $(filter tiny,$(PROFILE)),--tiny-models $(TINY_MODELS)) $(CODE)

# The browser the report tests open pages in (Debian's chromium; needs root, as CI is).
test-deps:
	@test -x /usr/bin/chromium || { apt-get update -q && apt-get install -y -q chromium; }

test: setup
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(PY) -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m "not slow"

# Each bench/NAME.py writes its section to bench/results/NAME.md; bench.assemble joins them into BENCHMARKS.md.
BENCHES := model learned train wan real_models scale references curation curation_cpu scenes caption filters
bench: setup tiny-models
	for name in $(BENCHES); do HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(PY) -m bench.$$name || exit $$?; done
	$(PY) -m bench.assemble

clean:
	rm -rf runs/demo .pytest_cache
