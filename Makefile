# lazymigrate's commands. `make` alone lists them; CI runs `.ci/run`, which
# calls only targets defined here.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

THIS_MAKEFILE := $(lastword $(MAKEFILE_LIST))

GO ?= go
# Packages to vet, test and bench, e.g. `make test PKG=./tracker/...`.
PKG ?= ./...
# Extra `go test` flags, e.g. `make test TESTFLAGS='-run TestCopier -v'`.
TESTFLAGS ?=
TEST_TIMEOUT ?= 15m
# Benchmarks to run (a -bench regexp) and, if set, -benchtime (e.g. 2s, 100x).
BENCH ?= .
BENCHTIME ?=
# honnef.co/go/tools release (staticcheck 2026.2.2); the newest, checked to run
# on this repo with Go 1.26.8.
STATICCHECK_VERSION ?= v0.8.2

SERVICES := bash scripts/services.sh
# Prefix for a recipe line that needs Postgres and Redis: it starts them if
# need be and exports LM_PG_URL, LM_REDIS_ADDR and LM_REQUIRE_INTEGRATION=1
# into the same shell as the command that follows. (The assignment, unlike a
# bare `eval "$$(...)"`, stops the line when the script fails.)
WITH_SERVICES := lm_env="$$($(SERVICES))" && eval "$$lm_env" && export LM_REQUIRE_INTEGRATION=1 &&

.PHONY: help services test bench lint fmt tidy demo ci

help: ## list the targets (the default)
	@echo "Usage: make <target> [PKG=./...] [TESTFLAGS=...] [BENCH=.] [BENCHTIME=...]"
	@echo
	@grep -E '^[a-zA-Z_/-]+:.*## ' $(THIS_MAKEFILE) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

services: ## make Postgres, Redis and a local Redis Cluster available (starts or installs them) and print where they are
	@$(WITH_SERVICES) echo "LM_PG_URL=$$LM_PG_URL" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' && \
		echo "LM_REDIS_ADDR=$$LM_REDIS_ADDR" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' && \
		echo "LM_REDIS_CLUSTER_ADDRS=$$LM_REDIS_CLUSTER_ADDRS" && \
		echo 'Use them in a shell with: eval "$$(scripts/services.sh)"'

test: ## vet, then run all tests with -race against real Postgres and Redis
	$(GO) vet $(PKG)
	@$(WITH_SERVICES) set -x && $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS) $(PKG)

bench: ## run benchmarks against real Postgres and Redis (BENCH=regexp, BENCHTIME=2s)
	@$(WITH_SERVICES) set -x && $(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -count=1 \
		-timeout $(TEST_TIMEOUT) $(if $(BENCHTIME),-benchtime $(BENCHTIME)) $(TESTFLAGS) $(PKG)

lint: ## gofmt check, go vet and staticcheck
	@unformatted="$$(gofmt -l .)"; \
	if [[ -n "$$unformatted" ]]; then \
		echo "gofmt: these files need formatting (run make fmt):" >&2; \
		echo "$$unformatted" >&2; \
		exit 1; \
	fi
	$(GO) vet $(PKG)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKG)

fmt: ## format all Go files in place (gofmt -w)
	gofmt -w .

tidy: ## go mod tidy
	$(GO) mod tidy

demo: ## migrate 200,000 accounts live: seed, serve, Zipf reads, sweep, verify (CI=true: exit after the summary)
	@scripts/demo.sh

ci: ## what CI runs: lint, then test
	$(MAKE) lint
	$(MAKE) test
