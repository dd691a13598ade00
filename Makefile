# Semore: `make quickstart` runs the whole pipeline on the embedded highway simulator;
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SDL_VIDEODRIVER=offscreen
OUT ?= runs/quickstart

.PHONY: quickstart test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch and torchvision are installed first, as a matching pair, so that no other package
# pulls a different torch; then the project with its dev extras.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(OFFLINE) $(BIN)/semore-run --config configs/quickstart.yaml --out $(OUT)

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check semore pipeline tests benchmarks
	$(BIN)/ruff format --check semore pipeline tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format semore pipeline tests benchmarks

clean:
	rm -rf $(VENV) runs data
