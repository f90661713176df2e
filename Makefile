# The two commands a newcomer needs: `make run` and `make test`. Everything else is here
# so that a fresh machine with Python 3.11+ needs nothing installed by hand.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The newest Python 3.11+ on PATH; override with `make PYTHON=/path/to/python3.12 ...`.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)

.PHONY: help install browser run dev sandbox test lint format typecheck pytest bench clean

help:
	@echo "make run      start the whole stack: Redis, worker, beat, Flower :5555, sandbox :8025, SMTP sink :1025"
	@echo "make test     install everything, then ruff, the layer contracts, mypy and pytest"
	@echo "make bench    benchmark on this machine (about 4 minutes); writes bench/results/latest.json"
	@echo "make format   rewrite the code in the project's format"
	@echo "make clean    remove the virtual environment and caches"

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required and was not found on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/gds-notify dev

dev: run

sandbox: install
	$(BIN)/gds-notify sandbox

# Headless Chromium for the browser test (Debian's package). Installed when missing and
# possible (root with apt-get); otherwise that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's chromium for the browser test"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
			echo "warning: could not install chromium; the browser test will be skipped"; \
		else echo "note: chromium not found and not installable here; the browser test will be skipped"; fi; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

pytest: install browser
	$(BIN)/python -m pytest

test: lint typecheck pytest

# The benchmark harness (see README, Benchmarks): starts its own Redis, sandbox and workers.
bench: install
	$(BIN)/python -m bench

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
