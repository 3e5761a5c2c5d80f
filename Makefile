# The developer's front door. Every target creates the virtual environment
# it needs, so a fresh clone only needs Python 3.11+ and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
UV     := $(BIN)/uv
CONFIG ?= deploy/config/sidecar.example.yaml
STAMP  := $(VENV)/.installed
REQ    := requirements
# The installer never reads a user's or machine's uv.toml: the lock alone decides.
export UV_NO_CONFIG := 1

.PHONY: help venv run test test-python test-node soak fuzz protos protos-check lint bench \
	lock lock-upgrade lock-check check-latest clean

help:
	@echo "make run          start the sidecar on $(CONFIG) (SQLite, no other service)"
	@echo "make test         run the whole test suite (Node.js client, then pytest; every failure)"
	@echo "make soak         rerun the stream, shutdown, replica and client tests SOAK=N times"
	@echo "make fuzz         property tests of every input boundary, FUZZ_MINUTES each"
	@echo "make test-node    run the Node.js client's tests"
	@echo "make protos       regenerate generated/ from protos/"
	@echo "make protos-check fail if generated/ is stale"
	@echo "make lint         ruff + mypy (sidecar/, clients/python, examples/, tests/)"
	@echo "make bench        run the benchmarks and print figures"
	@echo "make lock         re-pin $(REQ)/*.txt after a change to pyproject.toml"
	@echo "make lock-upgrade re-pin everything to the newest versions pyproject.toml allows"
	@echo "make lock-check   fail if $(REQ)/*.txt is stale against pyproject.toml"
	@echo "make check-latest lint + test on the newest allowed versions, in .venv-latest"

venv: $(STAMP)

# The pinned installer, bootstrapped with the interpreter's own pip (hash-checked).
$(UV): $(REQ)/uv.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
		-r $(REQ)/uv.txt
	touch $(UV)

# Exactly the locked set (anything else in the venv is removed), then the
# sidecar itself, editable, built by the locked setuptools.
$(STAMP): $(UV) $(REQ)/dev.txt pyproject.toml
	$(UV) pip sync --quiet --python $(PY) --require-hashes $(REQ)/dev.txt
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/integration-sidecar serve --config $(CONFIG)

# Every suite runs, whatever failed before it; the target fails if any did.
test: $(STAMP)
	@failed=""; \
	$(MAKE) --no-print-directory test-node || failed="$$failed test-node"; \
	$(MAKE) --no-print-directory test-python || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed" >&2; exit 1; fi; \
	echo "make test: every suite passed"

test-python: $(STAMP)
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
		$(MAKE) --no-print-directory $(NODE_STAMP) && cd $(NODE_DIR) && npm test --silent; \
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

# Repetition finds races: SOAK=20 runs the stream, shutdown, replica and client
# tests (pytest and Node.js) twenty times, each in a fresh process, and prints
# every test's pass rate. Any rate below N/N is a bug to find, never noise.
SOAK ?= 20
soak: $(STAMP)
	$(PY) -m tests.soak --runs $(SOAK) $(SOAK_ARGS)

# Every input boundary's property tests, FUZZ_MINUTES each (with FUZZ_SCALE times
# their own example budget per run); prints the examples run and any finding.
FUZZ_MINUTES ?= 10
FUZZ_SCALE ?= 20
fuzz: $(STAMP)
	$(PY) -m tests.fuzz --minutes $(FUZZ_MINUTES) --scale $(FUZZ_SCALE) $(FUZZ_ARGS)

lock: $(UV)
	$(REQ)/lock.sh $(UV) .

lock-upgrade: $(UV)
	$(REQ)/lock.sh $(UV) . --upgrade

# Re-pins into a scratch copy (keeping the committed pins as preferences): any
# difference means pyproject.toml changed without `make lock`.
lock-check: $(UV)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir "$$tmp/$(REQ)" && cp pyproject.toml "$$tmp"/ && cp $(REQ)/*.txt "$$tmp/$(REQ)"/; \
	$(REQ)/lock.sh $(UV) "$$tmp"; \
	for f in $(REQ)/*.txt; do \
		diff -u "$$f" "$$tmp/$$f" || { \
			echo "lock-check: $$f is stale against pyproject.toml: run make lock" >&2; exit 1; }; \
	done; \
	echo "lock-check: $(REQ)/*.txt is current"

# Drift on purpose, not by accident: the newest versions pyproject.toml allows
# (the published wheel's ranges), in their own venv, through lint and the tests.
LATEST := .venv-latest
check-latest: $(UV)
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade --no-cache \
		-r pyproject.toml --group pyproject.toml:dev --extra fast
	$(UV) pip install --quiet --python $(LATEST)/bin/python --no-deps --no-build-isolation -e .
	touch $(LATEST)/bin/uv $(LATEST)/.installed
	$(UV) pip list --python $(LATEST)/bin/python --outdated 2>/dev/null || true
	@failed=""; \
	$(MAKE) --no-print-directory lint VENV=$(LATEST) || failed="$$failed lint"; \
	$(MAKE) --no-print-directory test VENV=$(LATEST) || failed="$$failed test"; \
	if [ -n "$$failed" ]; then echo "check-latest: FAILED:$$failed" >&2; exit 1; fi; \
	echo "check-latest: the newest allowed versions pass"

clean:
	rm -rf $(VENV) $(LATEST) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache $(NODE_DIR)/node_modules
