# careserve: one entry point for setting up, building, testing and running.
# `make test` installs what it needs (Debian packages), builds, and runs every test.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
export PYTHONPATH := $(CURDIR)/model

.PHONY: deps build test test-python test-cpp profile clean

deps:
	bash scripts/deps.sh

build: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(BUILD_DIR) -j$(JOBS)

test: build test-python test-cpp

test-python:
	$(PYTHON) -m pytest -q tests/python

test-cpp:
	cd $(BUILD_DIR) && ctest --output-on-failure --timeout 300

# Parameters, GMACs and eager-vs-TorchScript throughput of the model zoo (docs/models.md).
profile: deps
	$(PYTHON) -m carevision.profile

clean:
	rm -rf $(BUILD_DIR)
