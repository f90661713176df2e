# The two commands a newcomer needs: `make run` and `make test`. Everything else is here
# so that a fresh machine with Python 3.11+ needs nothing installed by hand.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The newest Python 3.11+ on PATH; override with `make PYTHON=/path/to/python3.12 ...`.
# A candidate that fails stays quiet: pyenv's shims answer `command -v` for versions not
# installed, then print "pyenv: python3.13: command not found" when run.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 \
	&& $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done)

.PHONY: help install tools bench-tools run dev sandbox test lint format typecheck pytest bench clean

help:
	@echo "make run      start the whole stack: Redis, worker, beat, the API :8000, Flower :5555, sandbox :8025, SMTP sink :1025"
	@echo "make test     install everything, then ruff, the layer contracts, mypy and pytest"
	@echo "make bench    benchmark on this machine (about 5 minutes); writes bench/results/latest.json"
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

# Debian packages the tests need (headless Chromium for browser tests, Prometheus's
# Alertmanager to send real webhooks to the API, Prometheus itself for promtool's checks
# of deploy/prometheus and a real scrape of /metrics) and the benchmark needs (wrk, a load
# generator, and Alertmanager, which pages are compared with). Each is installed when
# missing and possible (root with apt-get); otherwise what needs it is skipped and says
# why. Pairs are command:package. On a host run by systemd, Debian's package also starts
# its own Alertmanager service on :9093; the tests and the benchmark start theirs on free
# ports and do not use it (`systemctl disable --now prometheus-alertmanager` stops it).
TEST_TOOLS := chromium:chromium prometheus-alertmanager:prometheus-alertmanager \
	promtool:prometheus wrk:wrk
BENCH_TOOLS := wrk:wrk prometheus-alertmanager:prometheus-alertmanager

define install_missing
	@missing=""; for pair in $(1); do command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1; } || \
			echo "warning: could not install$$missing; what needs it will be skipped"; \
		else echo "note:$$missing not found and not installable here; what needs it will be skipped"; fi; fi
endef

tools:
	$(call install_missing,$(TEST_TOOLS))

bench-tools:
	$(call install_missing,$(BENCH_TOOLS))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

# Two test processes (pytest-xdist): most tests wait on workers, servers and timers rather
# than the CPU, so two share a 2-core machine well. `make test PYTEST_PROCESSES=0` runs
# them in one process.
PYTEST_PROCESSES ?= 2

pytest: install tools
	$(BIN)/python -m pytest -n $(PYTEST_PROCESSES) --dist worksteal

test: lint typecheck pytest

# The benchmark harness (see README, Benchmarks): starts its own Redis, sandbox and workers.
bench: install bench-tools
	$(BIN)/python -m bench

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
