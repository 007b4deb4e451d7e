# Lifeline: `make demo` runs it with no outside service; `make test` runs the whole suite
# against real PostgreSQL and Redis (started, or installed with apt-get when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench bench-ingest bench-queue services clean evaluate

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "Lifeline needs Python 3.11 or newer (found: $$($(PYTHON) --version)). Run: make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/lifeline demo

services:
	./scripts/ensure-services.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy lti_tool

test: $(VENV)/.installed-test services lint typecheck
	$(BIN)/pytest

bench: $(VENV)/.installed-test services
	$(BIN)/python benchmarks/launch.py

# xAPI ingestion with 50 live rules, and event -> offer on the learner's page (docs/performance.md).
bench-ingest: $(VENV)/.installed-test services
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		{ echo "bench-ingest needs wrk (apt-get install wrk)"; exit 1; }
	$(BIN)/python benchmarks/ingest.py

# Help queue: SSE delivery to 200 / 1,000 dashboards and contended claims (docs/performance.md).
bench-queue: $(VENV)/.installed-test services
	$(BIN)/python benchmarks/queue.py

# Replay the ITAP ProgSnap2 data set through the detection engine (docs/detection.md).
ITAP ?= ../shared/data/itap-csedm2019
evaluate: $(VENV)/.installed
	@mkdir -p instance
	$(BIN)/lifeline evaluate $(ITAP) --out instance/itap-flags.csv --report --sensitivity \
	  --json instance/itap-report.json

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
