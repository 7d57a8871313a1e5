# raykube — `make help` lists the targets.
#
# Everything runs from a project virtual environment (.venv) that `make install` creates;
# every other target depends on it, so on a fresh machine `make test` or `make run` is the
# only command needed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
IMAGE_TAG ?= dev
REGISTRY ?= raykube
# One place for versions: k8s/base/config.env (also the operator's RAYKUBE_* settings).
KUBERAY_VERSION ?= v$(shell sed -n 's/^RAYKUBE_KUBERAY_VERSION=//p' k8s/base/config.env)
KUBERAY_CRDS ?= build/kuberay/$(KUBERAY_VERSION)
PYTEST_ARGS ?=

export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: help
help: ## list the targets
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; else on=; off=; fi; \
	awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  %s%-16s%s %s\n", on, $$1, off, $$2}' $(MAKEFILE_LIST)

# ---------------------------------------------------------------------------- set-up
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e ".[dev]"
	@touch $@

.PHONY: install
install: $(STAMP) ## create .venv and install raykube with the train, operator and dev extras

# ------------------------------------------------------------------------------ use
.PHONY: run
run: $(STAMP) ## train, check and serve the quickstart on this machine (embedded Ray)
	$(BIN)/raykube run jobs/quickstart.yaml

.PHONY: validate
validate: $(STAMP) ## validate every TrainingRun in jobs/
	$(BIN)/raykube validate jobs/*.yaml

.PHONY: render
render: $(STAMP) ## print the KubeRay objects of every job in jobs/ (GitOps)
	$(BIN)/raykube render jobs/*.yaml

.PHONY: crd
crd: $(STAMP) ## regenerate k8s/base/crd.yaml and README's reference table from the spec
	$(BIN)/raykube crd --out k8s/base/crd.yaml
	@mkdir -p build
	$(BIN)/raykube crd --markdown > build/reference.md
	$(BIN)/python -c 'import pathlib, re; readme = pathlib.Path("README.md"); table = pathlib.Path("build/reference.md").read_text(); \
	  readme.write_text(re.sub(r"(<!-- BEGIN REFERENCE -->\n).*?(<!-- END REFERENCE -->)", lambda m: m[1] + table + m[2], readme.read_text(), flags=re.S))'

# ------------------------------------------------------------- local control plane
.PHONY: cluster-bins
cluster-bins: ## build etcd, Kubernetes, kwok and KubeRay from Go modules (cached by version)
	tests/cluster/build-bins.sh

.PHONY: cluster-up
cluster-up: $(STAMP) cluster-bins ## start a real control plane + KubeRay on loopback (build/cluster/kubeconfig)
	$(BIN)/python -m raykube.testing.control_plane up --dir build/cluster

.PHONY: cluster-down
cluster-down: $(STAMP) ## stop the local control plane (no process left behind)
	$(BIN)/python -m raykube.testing.control_plane down --dir build/cluster

# ------------------------------------------------------------------ a real node
.PHONY: node-bins
node-bins: ## build kubelet, kube-proxy and the pause binary (same cache as cluster-bins)
	tests/node/build-node-bins.sh

.PHONY: node-up
node-up: node-bins ## join a real node (containerd+runc+CNI+kubelet+kube-proxy) to `make cluster-up`'s control plane
	tests/node/node.sh up

.PHONY: node-demo
node-demo: ## run a Pod from raykube/raykube:dev-operator on the real node
	tests/node/node.sh demo

.PHONY: node-down
node-down: ## stop the real node (processes, pod network, iptables rule)
	tests/node/node.sh down

.PHONY: e2e-local
e2e-local: $(STAMP) ## the mission on this machine: real node, our images, TrainingRun -> Ray pods -> served (~30 min; not in make test)
	k8s/local/e2e.sh

.PHONY: e2e-local-down
e2e-local-down: $(STAMP) ## stop what `KEEP=1 make e2e-local` left running
	tests/node/node.sh down
	$(BIN)/python -m raykube.testing.control_plane down --dir build/e2e-local/cluster

# ---------------------------------------------------------------------------- tests
# wrk (Debian's package) drives the serve benchmark's load and its smoke test; a fresh
# machine gets it from apt the first time (the bench falls back to httpx without it).
.PHONY: bench-tools
bench-tools: ## install wrk from Debian's packages when it is not on the PATH
	@command -v wrk > /dev/null || { echo "apt-get install wrk"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }

.PHONY: test
test: $(STAMP) cluster-bins s3-build fluxcel-build bench-tools ## set up (first time) and run the unit and integration tests
	$(BIN)/python -m pytest tests/unit tests/integration $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(STAMP) fluxcel-build ## unit tests only (no Ray, seconds)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff + the layering check (spec/render never import torch or ray)
	$(BIN)/ruff check src operator tests
	$(BIN)/python -m pytest -q tests/unit/test_layering.py

.PHONY: kuberay-crds
kuberay-crds: ## fetch KubeRay's CRDs (for schema tests outside this repo's CI)
	mkdir -p $(KUBERAY_CRDS)
	for kind in rayclusters rayjobs rayservices; do \
	  curl -fsSL -o $(KUBERAY_CRDS)/ray.io_$$kind.yaml \
	    https://raw.githubusercontent.com/ray-project/kuberay/$(KUBERAY_VERSION)/ray-operator/config/crd/bases/ray.io_$$kind.yaml; \
	done

# ------------------------------------------------------------------------------ s3
# MinIO, built from its Go module (pinned in tests/s3/versions.env + go.mod), cached per
# user outside the checkout and linked into build/bin/minio. The s3:// tests start their
# own on a free port; s3-up is for trying raykube against S3 by hand (README). The build
# is skipped when the cached binary exists, so s3-build costs nothing after the first time.
.PHONY: s3-build
s3-build: ## build the pinned MinIO once into ~/.cache/raykube (needs Go) and link build/bin/minio
	tests/s3/build.sh

.PHONY: s3-up
s3-up: $(STAMP) s3-build ## start MinIO on 127.0.0.1:9000 with bucket s3://raykube; prints the AWS_* to export
	tests/s3/up.sh

.PHONY: s3-down
s3-down: ## stop the MinIO of s3-up (data stays in build/s3/data)
	tests/s3/down.sh

# ----------------------------------------------------------------------------- flux
# fluxcel (tests/gitops/fluxcel): Flux's own healthCheckExprs evaluation (fluxcd/pkg/runtime,
# pinned in its go.mod/go.sum), for the test that runs k8s/gitops/flux.yaml's TrainingRun
# health check on the Argo CD check's cases. Cached like MinIO, under a name that changes
# with its source; nothing is built when the cached binary exists.
.PHONY: fluxcel-build
fluxcel-build: ## build fluxcel once into ~/.cache/raykube (needs Go) and link build/bin/fluxcel
	tests/gitops/fluxcel/build.sh

# --------------------------------------------------------------------------- bench
.PHONY: bench
bench: $(STAMP) bench-tools ## benchmarks vs baselines, quick mode (~10 min); bench-out/
	$(BIN)/raykube bench all --quick --out bench-out

.PHONY: bench-full
bench-full: $(STAMP) bench-tools ## benchmarks vs baselines, full size
	$(BIN)/raykube bench all --out bench-out

# ------------------------------------------------------------------- images & kind
# standin: build the bases locally (no registry on this project's machines; PyPI only);
# official: FROM rayproject/ray and python:slim, torch from download.pytorch.org.
IMAGE_BASE ?= standin

.PHONY: images
images: ## build the cpu, cuda and operator images (installs/starts docker; IMAGE_BASE=official for the registry bases; IMAGES="cpu operator" skips CUDA)
	TAG=$(IMAGE_TAG) REGISTRY=$(REGISTRY) BASE=$(IMAGE_BASE) images/build.sh

.PHONY: kind-up
kind-up: ## create a kind cluster with the KubeRay operator (needs kind, helm, docker)
	k8s/kind/up.sh

.PHONY: kind-load
kind-load: ## load the images into kind (LOAD_CUDA=1 for the CUDA image too)
	TAG=$(IMAGE_TAG) REGISTRY=raykube k8s/kind/load.sh

.PHONY: deploy
deploy: ## install raykube (CRD, operator, storage) with the kind overlay (OVERLAY=... for others)
	k8s/kind/deploy.sh

.PHONY: e2e
e2e: ## apply the quickstart on the cluster, wait, call the served endpoint
	k8s/kind/e2e.sh

.PHONY: test-e2e
test-e2e: $(STAMP) ## the e2e flow as a pytest test against the current kube context
	RAYKUBE_E2E=1 $(BIN)/python -m pytest tests/e2e -q -s $(PYTEST_ARGS)

.PHONY: kind-down
kind-down: ## delete the kind cluster
	k8s/kind/down.sh

.PHONY: kind
kind: kind-up images kind-load deploy e2e ## the whole kind walkthrough, from nothing to a served prediction

.PHONY: kuberay-manifests
kuberay-manifests: $(STAMP) ## regenerate the plain KubeRay manifests in k8s/kuberay/
	$(BIN)/python k8s/kuberay/generate.py

.PHONY: clean
clean: ## remove local runs, benchmark output and caches (keeps .venv)
	rm -rf runs bench-out build .pytest_cache .ruff_cache
