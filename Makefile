# Two commands for a fresh clone:
#   make demo   set up a virtual environment and run the CPU demo (configs/demo.yaml)
#   make test   set up the same environment and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/demo.yaml

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# pip upgrades itself only when older than 22.2 (editable installs from pyproject.toml, --dry-run)
	@$(PY) -c "import pip, sys; sys.exit(tuple(int(x) for x in pip.__version__.split('.')[:2]) < (22, 2))" \
		|| $(PY) -m pip install -q --upgrade pip
	@# Torch is kept when present (e.g. a CUDA build); when missing, the local CPU wheel 2.13.0 is taken if
	@# pip finds one (find-links, no network), else the latest release that pyproject.toml allows. One pip
	@# call resolves torch and the project together; --no-compile: Python writes the bytecode of what is
	@# imported on first use instead of pip compiling every module of torch, scipy and sympy (half the set-up)
	@torch=""; if ! $(PY) -c "import torch" 2>/dev/null && \
		$(PY) -m pip install -q --dry-run --no-index --no-deps torch==2.13.0 >/dev/null 2>&1; then \
		torch="torch==2.13.0"; fi; \
	echo "$(PY) -m pip install -q --no-compile -e .[dev] $$torch"; \
	$(PY) -m pip install -q --no-compile -e ".[dev]" $$torch
	@# The bytecode of what the commands import (torch, transformers' models and tokenizer loading, matplotlib),
	@# written once here rather than by every first process, and also where PYTHONDONTWRITEBYTECODE is set
	PYTHONDONTWRITEBYTECODE= $(PY) -c "import babyllama.cli, babyllama.pipeline, babyllama.train.loop, \
		babyllama.evaluate.blimp, babyllama.evaluate.perplexity, babyllama.report, matplotlib.pyplot, \
		transformers.models.auto.tokenization_auto, transformers.tokenization_utils_tokenizers, \
		transformers.convert_slow_tokenizer"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/babyllama run $(CONFIG)

test: setup
	@# two workers (pytest-xdist), one module per worker at a time so module fixtures are built once:
	@# the suite is mostly single-threaded tiny models and subprocesses, so 2 cores take half the time.
	@# Modules go out in collection order, the longest first (tests/conftest.py), so both finish together.
	@# Bytecode is written on first import even where PYTHONDONTWRITEBYTECODE is set (many processes start).
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n 2 --dist loadscope --no-loadscope-reorder

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	@# exit status 2 = this machine cannot run that benchmark (bench_gpu.py without CUDA): skipped, said so
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; rc=$$?; \
		if [ $$rc -eq 2 ]; then echo "(skipped)"; elif [ $$rc -ne 0 ]; then exit 1; fi; done

clean:
	rm -rf $(VENV) runs
