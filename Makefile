# One command to set up and run the main job (`make demo`), one to run the tests (`make test`).
# Both create .venv on first use. TORCH selects the torch build: the default is the CPU wheel that CI uses;
# on a CUDA machine use e.g. `make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
DEMO_OUT ?= labelshare-demo/$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-quick test-internet lint

$(VENV)/.base-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -U pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e .
	touch $@

# the tests and the benchmarks (their own project, benchmarks/pyproject.toml, with labelshare-bench)
$(VENV)/.test-installed: $(VENV)/.base-installed benchmarks/pyproject.toml
	$(VENV)/bin/python -m pip install -q -e ".[test]" -e ./benchmarks
	touch $@

demo: $(VENV)/.base-installed
	$(VENV)/bin/labelshare demo --out $(DEMO_OUT)

# every test but those that ask the internet (what CI runs first); test-quick leaves out the trainings too (the
# edit-test loop); test-internet runs the tests that ask PyPI (CI runs them after test)
test: $(VENV)/.test-installed
	$(VENV)/bin/python -m pytest

test-quick: $(VENV)/.test-installed
	$(VENV)/bin/python -m pytest -m "not slow and not internet"

test-internet: $(VENV)/.test-installed
	$(VENV)/bin/python -m pytest -m internet

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
