# modelloop — every target does its own set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
CLUSTER   := hack/cluster.sh
# What the runtimes share (the artifact layout, the dataset hash, model loading, the detector's API): one
# package that every runtime's environment installs, and reinstalls when it changes.
CONTRACTS         := contracts
CONTRACTS_SOURCES := $(CONTRACTS)/pyproject.toml $(wildcard $(CONTRACTS)/src/modelloop_contracts/*.py)
# The trainer runtime has dependencies of its own (scikit-learn, PyTorch): its own environment.
TRAINER       := runtimes/trainer
TRAINER_VENV  ?= .venvs/trainer
TRAINER_STAMP := $(TRAINER_VENV)/.installed
# The model server runtime (kserve, scikit-learn, onnxruntime for the trainer's MLP): its own environment too.
SERVER        := runtimes/server
SERVER_VENV   ?= .venvs/server
SERVER_STAMP  := $(SERVER_VENV)/.installed
# The Seldon model server runtime (seldon-core 1.17.1, scikit-learn, onnxruntime): its own environment as well.
SELDON        := runtimes/seldon
SELDON_VENV   ?= .venvs/seldon
SELDON_STAMP  := $(SELDON_VENV)/.installed
# The drift detector (alibi-detect 0.11.4: pydantic < 2, numpy < 2): its own environment.
DETECTOR       := runtimes/detector
DETECTOR_VENV  ?= .venvs/detector
DETECTOR_STAMP := $(DETECTOR_VENV)/.installed
# Every environment is installed by uv from its lock files, through one cache: a wheel that several
# environments hold (PyTorch in the trainer and the detector, numpy, scikit-learn...) is downloaded once and
# hard-linked into each, not copied. uv itself is pinned and installed once per version.
UV_VERSION := 0.13.9
UV_HOME    := $(HOME)/.cache/modelloop/uv-$(UV_VERSION)
UV         := $(UV_HOME)/bin/uv
export UV_CACHE_DIR ?= $(HOME)/.cache/modelloop/uv
export UV_LINK_MODE ?= hardlink
export UV_PYTHON_DOWNLOADS := never
# $(call install-env,ENVIRONMENT,LOCK FILES,EDITABLE PACKAGES): exactly the locks (uv pip sync removes
# what they do not list, so a dependency dropped from a lock leaves the environment), then the packages of
# this repository, editable and without their dependencies (the locks hold them).
define install-env
	@test -x $(1)/bin/python || $(UV) venv -q --python 3.11 $(1)
	$(UV) pip sync -q --python $(1)/bin/python $(2)
	$(UV) pip install -q --python $(1)/bin/python --no-deps $(foreach p,$(3),-e $(p))
endef
export KUBECONFIG := $(CURDIR)/.cluster/kubeconfig

.PHONY: help setup chaos venv lock crds cluster-bins kserve-bins engine-bins helm-bin prometheus-bin cluster cluster-down lint typecheck unit alerts-test argocd-health argocd-health-build argocd-health-test e2e runtime-checks checks test demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(UV):
	@rm -rf $(UV_HOME)
	python3 -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION) \
	  || $(UV_HOME)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): requirements/operator.lock requirements/dev.lock pyproject.toml $(CONTRACTS_SOURCES) | $(UV)
	$(call install-env,$(VENV),requirements/operator.lock requirements/dev.lock,$(CONTRACTS) .)
	@touch $@

venv: $(STAMP) ## create the Python environment (.venv) from the lock files

lock: ## re-resolve every environment's lock files from its *.in files (one of them: make lock ONLY=trainer)
	hack/lock.sh $(ONLY)

crds: $(STAMP) ## regenerate crds/ (and the chart's copy) from the API models, and what follows from the backends
	$(PY) hack/sync_backends.py
	$(VENV)/bin/modelloop crds --output-dir crds
	$(PY) hack/sync_chart.py

cluster-bins: ## build the control plane's binaries from their Go modules (once; cached in ~/.cache/modelloop)
	hack/build-cluster-bins.sh >/dev/null

kserve-bins: ## build KServe's controller and agent from KServe's Go module (once; cached in ~/.cache/modelloop)
	hack/build-kserve.sh >/dev/null

engine-bins: ## build Kubeflow Trainer's, JobSet's and Kueue's controllers from their Go modules (once; cached in ~/.cache/modelloop)
	hack/build-training-engines.sh >/dev/null

helm-bin: ## build Helm from its Go module (once; cached in ~/.cache/modelloop)
	hack/build-helm.sh >/dev/null

prometheus-bin: ## install Debian's Prometheus (a real server for the e2e tests; its service is not started)
	@command -v prometheus >/dev/null || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q --no-install-recommends prometheus \
	  || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends prometheus; }; }

cluster: ## build (once, cached) and start the local control plane; kubeconfig in .cluster/kubeconfig
	$(CLUSTER) up

cluster-down: ## stop the local control plane and remove its state
	$(CLUSTER) down

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check operator tests e2e hack bench $(CONTRACTS)
	$(VENV)/bin/ruff format --check operator tests e2e hack bench $(CONTRACTS)

typecheck: $(STAMP) ## mypy --strict on operator/modelloop
	$(VENV)/bin/mypy

unit: $(STAMP) helm-bin ## unit tests (no cluster; the chart's tests render it with Helm)
	$(VENV)/bin/pytest tests -q

argocd-health: $(STAMP) ## regenerate manifests/argocd/argocd-cm-health.yaml from argocd/resource_customizations
	$(PY) hack/argocd_health.py

argocd-health-build: ## build the Argo CD health test with Argo CD's Go module (once; cached in ~/.cache/modelloop)
	hack/test-argocd-health.sh -run '^$$' >/dev/null

argocd-health-test: argocd-health-build ## the Argo CD health checks, run by Argo CD's own Lua code (Go)
	hack/test-argocd-health.sh

alerts-test: prometheus-bin ## promtool's unit tests of the alerts (manifests/monitoring/alerts.test.yaml)
	hack/test-alerts.sh

# Two workers, each with its own control plane, take whole test files (their fixtures are per file or per
# session): the suite waits on controllers much of the time, and two files at once fill both cores.
# E2E_PARALLEL= runs it in one process.
E2E_PARALLEL ?= -n 2 --dist loadfile

# Kubeflow Trainer's, JobSet's and Kueue's controllers (minutes of compiling, cold) build in the background
# while the suite starts: the tests that need them wait for the build (e2e/conftest.py says when they start).
E2E_ENGINE_LOG := .cluster/engine-build.log

e2e: $(STAMP) $(TRAINER_STAMP) $(SERVER_STAMP) $(SELDON_STAMP) $(DETECTOR_STAMP) cluster-bins kserve-bins helm-bin prometheus-bin images-test ## end-to-end tests on the local control plane (started and stopped by the tests)
	@mkdir -p .cluster && { hack/build-training-engines.sh >$(E2E_ENGINE_LOG) 2>&1 & }
	$(VENV)/bin/pytest e2e -q $(E2E_PARALLEL) --durations=25

# Everything at once: the Go scripts download unlocked and compile one at a time (hack/lib/gobuild.sh), so
# KServe's slow module resolution overlaps the control plane's compile, the environments' installs and the
# image builds.
SETUP_TARGETS := venv trainer-venv server-venv seldon-venv detector-venv cluster-bins kserve-bins helm-bin argocd-health-build prometheus-bin image-tools images-test
# `make test`'s set-up leaves out Argo CD's health test: only a check needs it, and its cold compile (about
# 140 s of both cores, idle) was a third of the one-at-a-time Go chain that the set-up waits on. It compiles
# in `make checks`, beside the e2e suite, where the CPU has room.
TEST_SETUP_TARGETS := $(filter-out argocd-health-build,$(SETUP_TARGETS))
chaos: $(STAMP) $(TRAINER_STAMP) $(SERVER_STAMP) $(SELDON_STAMP) $(DETECTOR_STAMP) cluster-bins kserve-bins prometheus-bin ## the whole loop under a full storm of faults (30 operator SIGKILLs; MODELLOOP_CHAOS_SEED=N replays a run)
	MODELLOOP_CHAOS_KILLS=$${MODELLOOP_CHAOS_KILLS:-30} MODELLOOP_CHAOS_SEED=$${MODELLOOP_CHAOS_SEED:-$$(od -An -N3 -tu4 /dev/urandom | tr -d ' ')} \
	  $(VENV)/bin/pytest e2e/test_chaos.py -q -s

setup: ## every environment, binary and image the tests need, made in parallel (what is there already is kept)
	$(MAKE) --no-print-directory -j$(words $(SETUP_TARGETS)) $(SETUP_TARGETS)

# The runtimes' checks, each in its own environment: two at a time, each one's output kept together (about
# 0.6 of the time they take one after the other).
RUNTIME_CHECKS := contracts-lint contracts-test trainer-lint trainer-test server-lint server-test seldon-lint seldon-test detector-lint detector-test

runtime-checks: ## lint, types and tests of the contracts and the four runtimes, two at a time
	$(MAKE) -j2 --output-sync=target $(RUNTIME_CHECKS)

# Every check that needs no cluster, two at a time, the longest first (the lints, mypy and the unit tests
# take one core each, and alone would leave the other idle). Argo CD's health test comes third: cold, it
# compiles (under the Go build lock, hack/lib/gobuild.sh), and in `make test` the training engines hold that
# lock for the suite's first minutes; by the time one of the first two checks ends, they are done.
CHECKS := trainer-test server-test argocd-health-test seldon-test detector-test unit contracts-test lint typecheck alerts-test $(filter-out %-test,$(RUNTIME_CHECKS))

checks: ## lint, types, unit tests and the runtimes' checks: everything but the e2e suite, two at a time
	$(MAKE) --no-print-directory -j2 --output-sync=target $(CHECKS)

# `make test` is the set-up, then the e2e suite with every other check beside it. On two cores the set-up
# is all CPU (compiles, image builds), while the e2e suite mostly waits on controllers, timers and its
# processes' start: it keeps the CPU 62% busy on average. So the set-up has the machine to itself, and the
# checks (lint, types, unit and the runtimes' tests, `make checks`) run beside the suite in a session of
# their own, at a lower priority (nice CHECKS_NICE), taking the CPU the suite leaves rather than the
# suite's; their output goes to CHECKS_LOG and is printed after the suite's, and either failing fails
# `make test` (every check runs, -k, so that all failures show). At nice 10 a check had a tenth of a core
# while the suite kept both busy, and the model server's MLP fixture (11 s alone) ran past its 120 s
# timeout; at nice 5 it has a quarter, and beside the suite the runtimes' per-test timeouts (pytest-timeout,
# there to catch a hang) are CHECKS_TIMEOUT seconds.
CHECKS_NICE    ?= 5
CHECKS_TIMEOUT ?= 600
CHECKS_LOG     := .cluster/checks.log

test: ## everything: lint, types, unit and e2e tests (operator and runtimes)
	$(MAKE) --no-print-directory -j$(words $(TEST_SETUP_TARGETS)) $(TEST_SETUP_TARGETS)
	@mkdir -p $(dir $(CHECKS_LOG))
	@PYTEST_TIMEOUT=$(CHECKS_TIMEOUT) setsid -w nice -n $(CHECKS_NICE) $(MAKE) -k --no-print-directory checks >$(CHECKS_LOG) 2>&1 & checks=$$!; \
	trap 'kill -TERM -- -$$checks 2>/dev/null' INT TERM; \
	echo "make checks: beside the e2e suite (nice $(CHECKS_NICE)), its output in $(CHECKS_LOG) until the suite ends"; \
	e2e=0; $(MAKE) --no-print-directory e2e || e2e=$$?; \
	started=$$(date +%s); checked=0; wait $$checks || checked=$$?; \
	echo "--- make checks, run beside the e2e suite (waited $$(( $$(date +%s) - started ))s for it after the suite) ---"; \
	cat $(CHECKS_LOG); \
	[ $$checked -eq 0 ] || echo "make test: the checks failed (exit $$checked; $(CHECKS_LOG))"; \
	[ $$e2e -eq 0 ] || echo "make test: the e2e suite failed (exit $$e2e)"; \
	[ $$checked -eq 0 ] && [ $$e2e -eq 0 ]

demo: $(STAMP) $(TRAINER_STAMP) $(SERVER_STAMP) $(DETECTOR_STAMP) kserve-bins prometheus-bin ## the whole show on a local control plane, ending with the drift loop
	hack/demo.sh

clean: cluster-down ## remove the environment and local state (the binary cache stays)
	rm -rf $(VENV) $(TRAINER_VENV) $(SERVER_VENV) $(SELDON_VENV) $(DETECTOR_VENV) .cluster .images .mypy_cache .ruff_cache .pytest_cache

# --- images, built and run without a Docker daemon (hack/images.sh, hack/run_image.py) ---------------

.PHONY: image-tools images images-test

image-tools: prometheus-bin ## the tools that build and run the images without Docker (apt: mmdebstrap, buildah, podman, skopeo, bubblewrap)
	hack/image-tools.sh

images: image-tools ## build the five images without a Docker daemon into .images/ (OCI archives), pinned by digest in .images/values-digests.yaml
	hack/images.sh --values .images/values-digests.yaml

images-test: image-tools ## the images the e2e suite runs (operator, server, seldon); rebuilt only when their inputs change
	hack/images.sh operator server seldon

# --- the runtimes' shared contracts (contracts/): installed into each runtime's environment -----------

.PHONY: contracts-lint contracts-test

contracts-lint: $(STAMP) $(TRAINER_STAMP) ## mypy --strict on the runtimes' shared contracts (make lint runs ruff on them)
	cd $(CONTRACTS) && $(CURDIR)/$(VENV)/bin/mypy --python-executable $(CURDIR)/$(TRAINER_VENV)/bin/python

contracts-test: $(TRAINER_STAMP) $(SERVER_STAMP) $(SELDON_STAMP) $(DETECTOR_STAMP) ## the contracts' tests in each runtime's environment (pandas 2 and 3, numpy 1 and 2)
	for venv in $(TRAINER_VENV) $(SERVER_VENV) $(SELDON_VENV) $(DETECTOR_VENV); do \
	  echo "contracts in $$venv"; (cd $(CONTRACTS) && $(CURDIR)/$$venv/bin/pytest -q) || exit 1; \
	done

# --- the trainer runtime (runtimes/trainer): its own environment, .venvs/trainer ---------------------

.PHONY: trainer-venv trainer-lint trainer-test

$(TRAINER_STAMP): $(TRAINER)/requirements.lock $(TRAINER)/requirements-dev.lock $(TRAINER)/pyproject.toml $(CONTRACTS_SOURCES) | $(UV)
	$(call install-env,$(TRAINER_VENV),$(TRAINER)/requirements.lock $(TRAINER)/requirements-dev.lock,$(CONTRACTS) $(TRAINER))
	@touch $@

trainer-venv: $(TRAINER_STAMP) ## the trainer's environment (.venvs/trainer, with PyTorch) from its lock files

trainer-lint: $(STAMP) $(TRAINER_STAMP) ## ruff and mypy --strict on the trainer runtime and its benchmark
	$(VENV)/bin/ruff check $(TRAINER) bench/mlp_epoch.py
	$(VENV)/bin/ruff format --check $(TRAINER) bench/mlp_epoch.py
	cd $(TRAINER) && $(CURDIR)/$(VENV)/bin/mypy --python-executable $(CURDIR)/$(TRAINER_VENV)/bin/python

trainer-test: $(TRAINER_STAMP) ## the trainer's tests (real data, files and a local S3 server)
	cd $(TRAINER) && $(CURDIR)/$(TRAINER_VENV)/bin/pytest -q

# --- the model server runtime (runtimes/server): its own environment, .venvs/server -----------------

.PHONY: server-venv server-lint server-test

$(SERVER_STAMP): $(SERVER)/requirements.lock $(SERVER)/requirements-dev.lock $(SERVER)/pyproject.toml $(CONTRACTS_SOURCES) | $(UV)
	$(call install-env,$(SERVER_VENV),$(SERVER)/requirements.lock $(SERVER)/requirements-dev.lock,$(CONTRACTS) $(SERVER))
	@touch $@

server-venv: $(SERVER_STAMP) ## the model server's environment (.venvs/server, with kserve and onnxruntime) from its lock files

server-lint: $(STAMP) $(SERVER_STAMP) ## ruff and mypy --strict on the model server runtime and its benchmark
	$(VENV)/bin/ruff check $(SERVER) bench/model_server.py
	$(VENV)/bin/ruff format --check $(SERVER) bench/model_server.py
	cd $(SERVER) && $(CURDIR)/$(VENV)/bin/mypy --python-executable $(CURDIR)/$(SERVER_VENV)/bin/python

server-test: $(SERVER_STAMP) $(TRAINER_STAMP) ## the model server's tests (real artifacts, a real server process, real HTTP)
	cd $(SERVER) && $(CURDIR)/$(SERVER_VENV)/bin/pytest -q

# --- the Seldon model server runtime (runtimes/seldon): its own environment, .venvs/seldon ----------

.PHONY: seldon-venv seldon-lint seldon-test

$(SELDON_STAMP): $(SELDON)/requirements.lock $(SELDON)/requirements-dev.lock $(SELDON)/pyproject.toml $(CONTRACTS_SOURCES) | $(UV)
	$(call install-env,$(SELDON_VENV),$(SELDON)/requirements.lock $(SELDON)/requirements-dev.lock,$(CONTRACTS) $(SELDON))
	@# The lock pins setuptools below 82, whose removal of pkg_resources breaks seldon-core's gunicorn.
	$(SELDON_VENV)/bin/python -W ignore -c 'import seldon_core.microservice, modelloop_seldon'
	@touch $@

seldon-venv: $(SELDON_STAMP) ## the Seldon model server's environment (.venvs/seldon, with seldon-core and onnxruntime) from its lock files

seldon-lint: $(STAMP) $(SELDON_STAMP) ## ruff and mypy --strict on the Seldon model server runtime and its benchmark
	$(VENV)/bin/ruff check $(SELDON) bench/seldon_server.py
	$(VENV)/bin/ruff format --check $(SELDON) bench/seldon_server.py
	cd $(SELDON) && $(CURDIR)/$(VENV)/bin/mypy --python-executable $(CURDIR)/$(SELDON_VENV)/bin/python

seldon-test: $(SELDON_STAMP) $(TRAINER_STAMP) prometheus-bin ## the Seldon model server's tests (real server processes, real HTTP, a real Prometheus)
	cd $(SELDON) && $(CURDIR)/$(SELDON_VENV)/bin/pytest -q

# --- the drift detector runtime (runtimes/detector): its own environment, .venvs/detector -----------

.PHONY: detector-venv detector-lint detector-test

# After the trainer's: both hold the same PyTorch and CUDA libraries (about 5 GB), which the detector's install
# then hard-links from uv's cache; two installs at once into an empty cache would each unpack their own copy.
$(DETECTOR_STAMP): $(DETECTOR)/requirements.lock $(DETECTOR)/requirements-dev.lock $(DETECTOR)/pyproject.toml $(CONTRACTS_SOURCES) | $(UV) $(TRAINER_STAMP)
	$(call install-env,$(DETECTOR_VENV),$(DETECTOR)/requirements.lock $(DETECTOR)/requirements-dev.lock,$(CONTRACTS) $(DETECTOR))
	@touch $@

detector-venv: $(DETECTOR_STAMP) ## the drift detector's environment (.venvs/detector, with alibi-detect and PyTorch) from its lock files

detector-lint: $(STAMP) $(DETECTOR_STAMP) ## ruff and mypy --strict on the drift detector and its benchmarks
	$(VENV)/bin/ruff check $(DETECTOR) bench/detector_ingest.py bench/detector_mmd.py
	$(VENV)/bin/ruff format --check $(DETECTOR) bench/detector_ingest.py bench/detector_mmd.py
	cd $(DETECTOR) && $(CURDIR)/$(VENV)/bin/mypy --python-executable $(CURDIR)/$(DETECTOR_VENV)/bin/python

detector-test: $(DETECTOR_STAMP) $(TRAINER_STAMP) ## the drift detector's tests (real alibi-detect, real CloudEvents over real HTTP)
	cd $(DETECTOR) && $(CURDIR)/$(DETECTOR_VENV)/bin/pytest -q
