# careserve: one entry point for setting up, building, testing and running.
#   make serve   installs what it needs, builds, exports the default model repository and
#                starts care-server on it (gRPC :50051, metrics :9091)
#   make test    installs what it needs, builds, and runs every test
SHELL := /bin/bash
PYTHON := /usr/bin/python3
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
export PYTHONPATH := $(CURDIR)/model
export BUILD_DIR

# make serve settings
MODEL_REPOSITORY ?= models/default
CHECKPOINT_DIR ?=
PORT ?= 50051
METRICS_PORT ?= 9091
HTTP_PORT ?= 8000
SERVER_FLAGS ?=

.PHONY: deps bench-deps console-deps test-console build repository samples serve test test-python test-cpp test-deploy test-serve test-demo train-demo evaluate-demo test-bench test-fuzz test-asan test-tsan fuzz fuzz-build soak profile bench clean

deps:
	bash scripts/deps.sh

build: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(BUILD_DIR) -j$(JOBS)
	bash scripts/sample_images.sh $(BUILD_DIR)/samples

# The default repository: CARE-S0 ImageNet classifier, random weights unless
# CHECKPOINT_DIR holds the authors' care_s0.pth.
repository: deps
	bash scripts/default_repository.sh $(MODEL_REPOSITORY) $(CHECKPOINT_DIR)

serve: build repository
	$(BUILD_DIR)/care-server --model_repository=$(MODEL_REPOSITORY) --port=$(PORT) --metrics_port=$(METRICS_PORT) --http_port=$(HTTP_PORT) $(SERVER_FLAGS)

test: build test-python test-cpp test-deploy test-serve test-demo test-console test-bench test-fuzz

test-python:
	$(PYTHON) -m pytest -q tests/python

test-cpp:
	cd $(BUILD_DIR) && ctest --output-on-failure --timeout 600

# Kubernetes manifests, Prometheus config and alerts (promtool), the Dockerfile, and a real
# Prometheus scraping a real care-server for every dashboard query.
test-deploy:
	$(PYTHON) -m pytest -q tests/deploy

test-serve:
	bash scripts/serve_smoke_test.sh

# The Fashion-MNIST demo models (docs/models.md): a few hundred test images and scenes through
# a real care-server must reach 85% of the figures in model/weights/metrics.json.
test-demo:
	$(PYTHON) -m pytest -q tests/demo

# The web console in Debian's headless chromium, driven by playwright-core (npm, pinned by
# tests/console/package-lock.json), against a real care-server with the demo models.
test-console: build console-deps
	$(PYTHON) -m pytest -q tests/console

# Chromium, Node.js and npm (Debian's), and playwright-core into tests/console/node_modules.
console-deps:
	bash scripts/deps.sh --console
	cd tests/console && npm ci --no-audit --no-fund --loglevel=error

# Retrains the three demo models from scratch into model/weights/ (printing how long it took),
# then evaluates them through care-server into model/weights/metrics.json.
train-demo: build
	$(PYTHON) -m carevision.demo.train
	bash scripts/evaluate_demo.sh

# Only the evaluation, of the weights in model/weights/.
evaluate-demo: build
	bash scripts/evaluate_demo.sh

# Parameters, GMACs and eager-vs-TorchScript throughput of the model zoo (docs/models.md),
# with tcmalloc as care-server links it (glibc's malloc slows LibTorch several-fold here).
profile: deps
	LD_PRELOAD=libtcmalloc_minimal.so.4 TCMALLOC_RELEASE_RATE=0 $(PYTHON) -m carevision.profile

# Engine ceiling, ONNX Runtime, care-server under care-bench load (closed and open loop), the
# Python baseline, memory: writes docs/benchmarks.md and docs/bench/*.png (about 30 minutes).
bench: build bench-deps
	$(PYTHON) bench/run.py

# Node.js and npm for the ONNX Runtime baseline (bench/ort).
bench-deps:
	bash scripts/deps.sh --bench

# The same run in seconds (numbers meaningless), so that make bench keeps working.
test-bench: bench-deps
	$(PYTHON) bench/run.py --smoke

# 10 minutes of mixed load on the default repository; RSS at the start and the end.
soak: build
	bash scripts/soak.sh

# libFuzzer (clang, ASan + UBSan): image decoding + preprocessing, request validation.
# make test runs each for FUZZ_SECONDS on the checked-in corpora; make fuzz for 10 minutes.
FUZZ_DIR ?= build-fuzz
FUZZ_SECONDS ?= 20
fuzz-build: deps
	cmake -S tests/fuzz -B $(FUZZ_DIR) -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
	cmake --build $(FUZZ_DIR) -j$(JOBS)

test-fuzz: fuzz-build
	bash tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SECONDS)

fuzz: fuzz-build
	bash tests/fuzz/run.sh $(FUZZ_DIR) 600

# The C++ tests (and the care-server they start) built with sanitizers, each in its own
# build directory: ASan + UBSan + LeakSanitizer for every C++ test; TSan for the batcher
# tests and care-server under load (scripts/sanitize_test.sh; docs/service.md).
export ASAN_DIR ?= build-asan
export TSAN_DIR ?= build-tsan
test-asan: deps
	bash scripts/sanitize_test.sh address

test-tsan: build
	bash scripts/sanitize_test.sh thread

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_DIR) $(ASAN_DIR) $(TSAN_DIR)
