# numail-operator: the two commands that matter are `make dev` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
NUMAIL_CACHE ?= $(HOME)/.cache/numail
CP_SRC := $(sort $(wildcard hack/controlplane/*.go) hack/controlplane/go.mod hack/controlplane/go.sum)
# The binary's name carries a hash of its sources, so a clean clone reuses a
# cached build and any change to the Go code builds a new one.
CP_HASH := $(shell cat $(CP_SRC) | sha256sum | cut -c1-16)
CP_BIN := $(NUMAIL_CACHE)/bin/numail-controlplane-$(CP_HASH)
DEV_DIR ?= $(NUMAIL_CACHE)/dev
HELM_VERSION := v3.22.0
HELM_BIN := $(NUMAIL_CACHE)/bin/helm-$(HELM_VERSION)
# What helm's own release build sets: its version, and the Kubernetes version `helm template`
# assumes (that of its client-go, v0.37), which `go install` alone leaves at 1.20.
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach p,pkg/chartutil pkg/lint/rules,-X helm.sh/helm/v3/$(p).k8sVersionMajor=1 \
	-X helm.sh/helm/v3/$(p).k8sVersionMinor=37)
PYTEST_ARGS ?=

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: controlplane
controlplane: $(CP_BIN) ## build the local Kubernetes control plane (cached)

$(CP_BIN): $(CP_SRC)
	@mkdir -p $(dir $@)
	@echo "building $@ (a cold build takes several minutes)"
	cd hack/controlplane && time go build -trimpath -o $@.tmp . && mv $@.tmp $@

.PHONY: controlplane-path
controlplane-path:
	@echo $(CP_BIN)

.PHONY: helm
helm: $(HELM_BIN) ## build helm from the Go module proxy (cached)

$(HELM_BIN):
	@mkdir -p $(dir $@)
	@echo "building $@ from the Go module proxy"
	GOBIN=$(dir $@).helm-$(HELM_VERSION).tmp go install -trimpath -ldflags "$(HELM_LDFLAGS)" \
		helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(dir $@).helm-$(HELM_VERSION).tmp/helm $@ && rmdir $(dir $@).helm-$(HELM_VERSION).tmp

.PHONY: helm-path
helm-path:
	@echo $(HELM_BIN)

.PHONY: chart-crds
chart-crds: ## copy crds/ into the chart (byte for byte) and regenerate its member ClusterRoles
	$(PYTHON) -m tests.support.helm sync-crds

.PHONY: deploy-manifest
deploy-manifest: helm chart-crds ## render deploy/{crds,numail-operator}.yaml from the chart's defaults
	$(PYTHON) -m tests.support.helm deploy-manifest --helm $(HELM_BIN)

.PHONY: lint
lint: ## ruff, mypy --strict, import-linter and hadolint
	ruff check .
	ruff format --check .
	mypy
	lint-imports
	hadolint Dockerfile

.PHONY: test
test: controlplane lint ## lint, then every test tier but chaos
	NUMAIL_CONTROLPLANE_BIN=$(CP_BIN) $(PYTHON) -m pytest -m "not chaos" $(PYTEST_ARGS)

.PHONY: test-chaos
test-chaos: controlplane ## the chaos tier: processes killed at random points
	NUMAIL_CONTROLPLANE_BIN=$(CP_BIN) $(PYTHON) -m pytest -m chaos $(PYTEST_ARGS)

.PHONY: dev
dev: controlplane ## local control plane + PostgreSQL + operator, samples applied
	NUMAIL_CONTROLPLANE_BIN=$(CP_BIN) DEV_DIR=$(DEV_DIR) $(PYTHON) hack/dev.py

.PHONY: bench
bench: controlplane ## print benchmark figures (ratios against same-run baselines)
	@for b in bench/*.py; do echo "== $$b"; NUMAIL_CONTROLPLANE_BIN=$(CP_BIN) $(PYTHON) $$b || exit 1; done

.PHONY: fmt
fmt:
	ruff format .
	ruff check --fix .
