# One task runner, the same verbs the README uses.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
WORKERS ?= 1

.PHONY: install run test check lint typecheck unit integration system-deps bench bench-compare bench-http lint-docker promtool loadtest-smoke clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/python -m gateway serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

system-deps:
	./scripts/system-deps.sh

lint: install
	$(BIN)/ruff check gateway adapters tests benchmarks loadtest
	$(BIN)/ruff format --check gateway adapters tests benchmarks loadtest

typecheck: install
	$(BIN)/mypy

lint-docker: install
	$(BIN)/hadolint Dockerfile

check: lint typecheck lint-docker

unit: install
	$(BIN)/python -m pytest tests/unit benchmarks -q

integration: install system-deps
	$(BIN)/python -m pytest tests/integration -q

test: install system-deps check
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-autosave --benchmark-columns=min,median,mean,ops -q

bench-compare: install
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-compare --benchmark-compare-fail=median:25% -q

bench-http: install
	$(BIN)/python benchmarks/http_harness.py --duration 8 --concurrency 64

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks
