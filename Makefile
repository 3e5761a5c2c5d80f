# The developer's front door. Every target creates the virtual environment
# it needs, so a fresh clone only needs Python 3.11+ and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
CONFIG ?= deploy/config/sidecar.example.yaml
STAMP  := $(VENV)/.installed

.PHONY: help venv run test test-node protos protos-check lint bench clean

help:
	@echo "make run          start the sidecar on $(CONFIG) (SQLite, no other service)"
	@echo "make test         run the whole test suite"
	@echo "make test-node    run the Node.js client's tests"
	@echo "make protos       regenerate generated/ from protos/"
	@echo "make protos-check fail if generated/ is stale"
	@echo "make lint         ruff + mypy (sidecar/, clients/python, examples/, tests/)"
	@echo "make bench        run the benchmarks and print figures"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/integration-sidecar serve --config $(CONFIG)

test: $(STAMP) test-node
	$(PY) -m pytest $(PYTEST_ARGS)

# The Node.js client's tests (clients/node) against a real sidecar from $(VENV).
# Like tests/system_tools.py: without node/npm they fail under CI=true, skip elsewhere.
NODE_DIR   := clients/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

test-node: $(STAMP)
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
		what="the Node.js client tests need node and npm on PATH (Debian: apt-get install nodejs npm)"; \
		if [ "$$CI" = "true" ]; then echo "test-node: FAILED: $$what; in CI they must run" >&2; exit 1; fi; \
		echo "test-node: SKIPPED: $$what"; \
	else \
		$(MAKE) --no-print-directory $(NODE_STAMP) && cd $(NODE_DIR) && node --test test/*.test.js; \
	fi

$(NODE_STAMP): $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

protos: $(STAMP)
	$(PY) protos/generate.py

protos-check: $(STAMP)
	$(PY) protos/generate.py --check

lint: $(STAMP)
	$(BIN)/ruff check sidecar clients tests protos examples deploy
	$(BIN)/mypy sidecar $(wildcard clients/python/src) examples tests

bench: $(STAMP)
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache $(NODE_DIR)/node_modules
