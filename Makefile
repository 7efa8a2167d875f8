# The two commands of the README: `make run` (the whole service, embedded defaults) and
# `make test` (the test suite). Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-fast lint services chromium clean

# `make test-fast`: no server, no browser, no network, SQLite only (about a minute on 2 cores).
FAST_TESTS := not postgres and not redis and not e2e and not browser and not faults and not load \
	and not shared_data and not slow

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/leukoscreen serve

services:
	./scripts/services.sh

chromium:
	./scripts/chromium.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The full suite (CI runs it): a test whose PostgreSQL or Redis is down fails, never skips.
test: $(STAMP) services chromium lint
	LEUKOSCREEN_TEST_SERVICES=required $(BIN)/python -m pytest -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "$(FAST_TESTS)"

clean:
	rm -rf $(VENV) var
