# Two entry points that work on a fresh machine:
#   make up    set up .venv, then run the local mesh from examples/quickstart
#   make test  set up .venv, then run lint and the whole test suite
PY ?= python3
VENV ?= .venv

.PHONY: setup up test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	PY=$(PY) VENV=$(VENV) bash scripts/setup.sh
	touch $@

up: setup
	$(VENV)/bin/msm up examples/quickstart

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -ra

bench: setup
	$(VENV)/bin/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
