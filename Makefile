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
	$(PY) -m pip install -q --upgrade pip
	@# Torch first, and only when missing (an existing build, e.g. CUDA, is kept). A local CPU wheel
	@# (pip's find-links, no network) is preferred; otherwise the latest release from the index.
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
		if $(PY) -m pip install -q --no-index --no-deps torch==2.13.0 2>/dev/null; then \
			$(PY) -m pip install -q torch==2.13.0; else $(PY) -m pip install -q torch; fi; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/babyllama run $(CONFIG)

test: setup
	@# two workers (pytest-xdist), one module per worker at a time so module fixtures are built once:
	@# the suite is mostly single-threaded tiny models and subprocesses, so 2 cores take half the time
	$(PY) -m pytest -n 2 --dist loadscope

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	@# exit status 2 = this machine cannot run that benchmark (bench_gpu.py without CUDA): skipped, said so
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; rc=$$?; \
		if [ $$rc -eq 2 ]; then echo "(skipped)"; elif [ $$rc -ne 0 ]; then exit 1; fi; done

clean:
	rm -rf $(VENV) runs
