# `make demo` and `make test` set up .venv on first use (see scripts/setup.sh).
VENV ?= .venv

.PHONY: setup demo test test-slow lint

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/wmss demo

test: setup
	$(VENV)/bin/python -m pytest -q

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
