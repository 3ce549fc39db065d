PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pcmci demo --out runs/demo

# -P: the repo root stays off sys.path, so the top-level name `kernels` is Hugging Face's package (transformers
# imports it when installed), not our kernels/ folder, which is importable only as pcmci.kernels.
test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -P -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -P -m pytest -q bench --benchmark-json=bench/results/cpu-$$(date +%F).json

clean:
	rm -rf runs .pytest_cache
