# The two commands of the README: `make run` (the whole service, embedded defaults) and
# `make test` (the test suite). Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint services chromium clean

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

test: $(STAMP) services chromium lint
	$(BIN)/python -m pytest -ra

clean:
	rm -rf $(VENV) var
