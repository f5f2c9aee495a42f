# cinema: `make demo` curates the shipped sample footage offline; `make test` runs the tests.
# Both install what they need into .venv on first use.

PY      := .venv/bin/python
SRC     ?=
OUT     ?= runs/$(notdir $(abspath $(SRC)))
STAGES  ?=
WORKERS ?=
PROFILE ?= full
TINY_MODELS := tiny-models
CURATE_ARGS = --profile $(PROFILE) $(if $(STAGES),--stages $(STAGES)) $(if $(WORKERS),--workers $(WORKERS))

.PHONY: setup demo curate weights tiny-models test test-fast bench clean

setup: .venv/.installed

# torch first, from the CPU wheel on disk (any other torch pulls gigabytes of CUDA); then the
# project with pinned versions; then the hook that lets the CUDA-built torchvision import on CPU.
.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m model.torchvision_cpu
	touch $@

# Random-initialised tiny models of the real classes, for the offline demo (profile tiny).
tiny-models: setup
	HF_HUB_OFFLINE=1 $(PY) -m model.tiny $(TINY_MODELS) clip aesthetic_head qwen2_5_vl grounding_dino sam

# The full profile's checkpoints, into the Hugging Face cache (needs internet).
weights: setup
	$(PY) -m pipeline weights

demo: PROFILE = tiny
demo: setup tiny-models
	HF_HUB_OFFLINE=1 $(PY) -m pipeline curate tests/data/real --out runs/demo $(CURATE_ARGS)
	@echo "Look at: runs/demo (clips/, manifests/); try: $(PY) -m manifests summary runs/demo"

curate: setup $(if $(filter tiny,$(PROFILE)),tiny-models)
	@test -n "$(SRC)" || { echo "usage: make curate SRC=raw_videos/ [OUT=runs/NAME] [PROFILE=full|tiny] [STAGES=probe,scenes,...]"; exit 2; }
	$(PY) -m pipeline curate "$(SRC)" --out "$(OUT)" $(CURATE_ARGS)

test: setup
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(PY) -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m "not slow"

bench: setup
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(PY) -m pipeline.bench

clean:
	rm -rf runs/demo .pytest_cache
