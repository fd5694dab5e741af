# careserve: one entry point for setting up, testing and running.
# `make test` installs what it needs (Debian packages) and runs every test.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
export PYTHONPATH := $(CURDIR)/model

.PHONY: deps test test-python profile

deps:
	bash scripts/deps.sh

test: deps test-python

test-python:
	$(PYTHON) -m pytest -q tests/python

# Parameters, GMACs and eager-vs-TorchScript throughput of the model zoo (docs/models.md).
profile: deps
	$(PYTHON) -m carevision.profile
