# One command per job. Both install what they need into .venv first.
#   make demo   collect labelled traces with a real small model (Qwen2.5-Coder-0.5B) on this CPU, train a
#               hazard predictor on them, then run the shipped guard as a live controller (frontier table)
#   make test   the test suite (CPU, tiny random models, no downloads)
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
MODELS ?= $(HOME)/.cache/hazard-models
# The CPU build lies on this disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install test lint demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	WANDB_MODE=disabled TQDM_DISABLE=1 $(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check hazard tests

$(MODELS)/qwen2.5-coder-0.5b-instruct.gguf:
	@test -f $(SHARED)/tools/models.py || { echo "make demo: $(SHARED)/tools/models.py not found; set SHARED=path/to/shared"; exit 2; }
	$(PY) $(SHARED)/tools/models.py fetch qwen2.5-coder-0.5b-instruct --dest $(MODELS)

demo: install $(MODELS)/qwen2.5-coder-0.5b-instruct.gguf
	$(VENV)/bin/hazard collect --config configs/collect/demo.yaml --model.path $(MODELS)
	WANDB_MODE=offline $(VENV)/bin/hazard train report --config configs/train/demo.yaml
	$(VENV)/bin/hazard evaluate --config configs/evaluate/demo.yaml --model.path $(MODELS)

clean:
	rm -rf traces runs
