# One-command set-up: `make serve` and `make test` create .venv when missing and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODELS ?= models

.PHONY: serve test test-kernels lint format demo-models clean ablation reliability docker-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/pix2pix serve --models $(MODELS) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# The tests that compare floating-point results across code paths (marked numeric), again on
# other oneDNN kernels: AVX2 has other blockings and summation orders than the AVX-512 and AMX
# ones picked by default, so a tolerance that only held by luck on one CPU fails here too.
test-kernels: $(VENV)/.installed-dev
	ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -m numeric -q

# Build the serve-cpu image with buildah (root; apt-get install buildah podman debootstrap), run
# it and check it from outside: readiness, a translation per model, non-root, health check,
# graceful SIGTERM. Not part of `make test`; cleans up after itself. See docker/test.sh.
docker-test: $(VENV)/.installed
	PYTHON=$(BIN)/python timeout 3600 docker/test.sh

# The long reliability runs (a few minutes each, niced): 10,000 fuzzed uploads and the
# SIGKILL/resume soak (pytest -m reliability), then 5,000 requests at 32 connections while
# every model is replaced ten times (bench/load.py; docs/reliability.md).
reliability: $(VENV)/.installed-dev
	nice $(BIN)/python -m pytest -m reliability -s tests/test_fuzz.py tests/test_training_faults.py
	nice $(BIN)/python bench/load.py --requests 5000 --concurrency 32 --models $(MODELS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Rebuild the bundled demo models from scratch: labels2photo on the synthetic landscapes, facades
# (paint facade labels -> a building) on the real photos of CMP Facades, and gray2color
# (colorization) on 367 photos of cbsd432 (ONNX, fp16-stored weights: 5.0, 7.4 and 8.5 MB). About an
# hour on two CPU cores. FACADES names an existing copy of the facades set (otherwise it is
# downloaded there); CBSD432 the cbsd432 photos (see ../shared/datasets/README.md), split into
# train/val/test by `pix2pix data holdout`. Last, bench/demo_examples.py puts back each model's
# opening scenes and examples (facades and Kodak24 photos read from DATASETS).
FACADES ?= data/facades
CBSD432 ?= ../shared/datasets/cbsd432
DATASETS ?= ../shared/datasets
demo-models: $(VENV)/.installed
	$(BIN)/pix2pix data synth --out data/synth-labels --n 1000 --size 128 --seed 0
	test -d $(FACADES) || $(BIN)/pix2pix data download facades --root $(dir $(FACADES))
	rm -rf data/cbsd432-photos
	$(BIN)/pix2pix data holdout $(CBSD432) --out data/cbsd432-photos --seed 0
	rm -rf runs/synth-labels runs/demo-facades runs/demo-gray2color
	$(BIN)/pix2pix train --config configs/synth-labels.toml
	$(BIN)/pix2pix train --config configs/demo-facades.toml --data.root $(FACADES)
	$(BIN)/pix2pix train --config configs/demo-gray2color.toml
	$(BIN)/pix2pix export runs/synth-labels --format onnx --half --out models/labels2photo
	$(BIN)/pix2pix export runs/demo-facades --format onnx --half --out models/facades
	$(BIN)/pix2pix export runs/demo-gray2color --format onnx --half --temperature 0.5 --out models/gray2color
	$(BIN)/python bench/demo_examples.py --datasets $(DATASETS) --models models

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info

# cGAN vs L1: train configs/ablation-l1.toml and configs/ablation-cgan.toml (same data, same
# steps, lambda_gan 0 vs 1) on the synthetic landscapes, train the FCN-score segmenter, and
# write a side-by-side report; its figure and table are copied to docs/. Finished steps are
# kept: editing a config retrains only that arm. About 8 minutes on two CPU cores; on a busy
# machine OMP_NUM_THREADS=1 avoids thread oversubscription, which costs far more than it saves.
ABLATION_DATA ?= data/ablation
ABLATION_REPORT ?= runs/ablation-report

ablation: $(ABLATION_REPORT)/index.html

$(ABLATION_DATA)/.complete: | $(VENV)/.installed
	$(BIN)/pix2pix data synth --out $(ABLATION_DATA) --n 600 --size 64 --seed 7 --quiet
	touch $@

$(ABLATION_DATA)/segmenter/segmenter.json: $(ABLATION_DATA)/.complete
	$(BIN)/pix2pix segmenter train --data $(ABLATION_DATA) --steps 1500 --quiet

runs/ablation-%/checkpoints/latest: configs/ablation-%.toml $(ABLATION_DATA)/.complete
	rm -rf runs/ablation-$*
	$(BIN)/pix2pix train --config $< --data.root $(ABLATION_DATA) --quiet

$(ABLATION_REPORT)/index.html: runs/ablation-l1/checkpoints/latest \
		runs/ablation-cgan/checkpoints/latest $(ABLATION_DATA)/segmenter/segmenter.json
	$(BIN)/pix2pix compare runs/ablation-l1 runs/ablation-cgan --data $(ABLATION_DATA) \
		--names "L1 only,L1 + cGAN" --title "cGAN vs L1 on the synthetic landscapes" \
		--samples 6 --out $(ABLATION_REPORT) --quiet
	mkdir -p docs
	cp $(ABLATION_REPORT)/samples.png docs/ablation.png
	cp $(ABLATION_REPORT)/table.md docs/ablation.md
