# Every target creates and uses .venv. torch is installed first, and only when it is not
# importable: an unpinned torch would pull several GB of CUDA wheels (Kaggle/Colab already have it).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_SPEC ?= torch>=2.4,<2.15

.PHONY: setup demo test test-all lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m hwocr.run +experiment=demo

test: setup  # the fast tier, one pytest-xdist worker per core (up to 4): minutes on 2 cores
	$(PY) -m pytest -q -m "not slow" -n auto --maxprocesses=4 --dist worksteal

test-all: setup  # everything, including end-to-end runs, sweeps and resume (CI runs this)
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf outputs/runs outputs/sweeps outputs/cache outputs/mlflow.db
