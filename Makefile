# One-command set-up: `make serve` and `make test` create .venv when missing and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODELS ?= models

.PHONY: serve test lint format demo-models clean

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

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Rebuild the bundled demo models from scratch: synthetic data, training, fp16 export.
demo-models: $(VENV)/.installed
	$(BIN)/pix2pix data synth --out data/synth-labels --n 1000 --size 128 --seed 0
	$(BIN)/pix2pix data synth --task color --out data/synth-color --n 1000 --size 128 --seed 1
	rm -rf runs/synth-labels runs/synth-color
	$(BIN)/pix2pix train --config configs/synth-labels.toml
	$(BIN)/pix2pix train --config configs/synth-color.toml
	$(BIN)/pix2pix export runs/synth-labels --half --out models/labels2photo
	$(BIN)/pix2pix export runs/synth-color --half --out models/gray2color

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info
