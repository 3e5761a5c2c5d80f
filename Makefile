# The developer's front door. Every target creates the virtual environment
# it needs, so a fresh clone only needs Python 3.11+ and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
CONFIG ?= deploy/config/sidecar.example.yaml
STAMP  := $(VENV)/.installed

.PHONY: help venv run test protos protos-check lint bench clean

help:
	@echo "make run          start the sidecar on $(CONFIG) (SQLite, no other service)"
	@echo "make test         run the whole test suite"
	@echo "make protos       regenerate generated/ from protos/"
	@echo "make protos-check fail if generated/ is stale"
	@echo "make lint         ruff + mypy on sidecar/ and clients/"
	@echo "make bench        run the benchmarks and print figures"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/integration-sidecar serve --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

protos: $(STAMP)
	$(PY) protos/generate.py

protos-check: $(STAMP)
	$(PY) protos/generate.py --check

lint: $(STAMP)
	$(BIN)/ruff check sidecar clients tests protos
	$(BIN)/mypy sidecar $(if $(wildcard clients/*/*.py clients/*/*/*.py),clients)

bench: $(STAMP)
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
