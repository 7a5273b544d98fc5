# Coral's everyday commands. The cargo target directory lives outside the
# clone so that rebuilding bundled DuckDB (about 25 minutes) happens once.
# /var/cache/coral/target when writable (CI runs as root), else ~/.cache.
CARGO_TARGET_DIR ?= $(shell mkdir -p /var/cache/coral/target 2>/dev/null && test -w /var/cache/coral/target && echo /var/cache/coral/target || echo $(HOME)/.cache/coral/target)
export CARGO_TARGET_DIR
# The venv deps.sh fills with the OpenTelemetry Python SDK (OTLP tests).
export CORAL_VENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/coral/venv
export CORAL_PYTHON ?= $(CORAL_VENV)/bin/python
PREFIX ?= /usr/local
CARGO ?= cargo

.PHONY: all deps build test fmt lint install demo bench eval fuzz clean package package-test build-dev

all: build

## Install the Debian packages the build and tests need (uses sudo if not root).
deps:
	bash packaging/dev/deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

## The whole test suite: unit tests and integration tests with real processes, then the CLI alone as macOS builds it (packaging/dev/cli-only.sh).
test: deps
	$(CARGO) test --workspace
	bash packaging/dev/cli-only.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(CARGO_TARGET_DIR)/debug/coral $(DESTDIR)$(PREFIX)/bin/coral

## Every cargo-fuzz target for FUZZ_SECONDS (default 30) each, on stable.
fuzz: deps
	bash packaging/dev/fuzz.sh

## Coral's main job end to end on one machine, then clean up.
demo: build
	bash packaging/dev/demo.sh

## The incident suite (issue 15): every incident class in both forms (OTLP,
## passive eBPF) on a real colony and agent, answered by `coral ask --json`
## and scored against ground truth and a naive baseline. EVAL_SEEDS picks
## the seeds, EVAL_MIN_RANK1/EVAL_MIN_DETAIL the thresholds (percent),
## EVAL_WRITE=1 writes the figures to docs/benchmarks.md, EVAL_FLAGS=--release
## measures the release build.
EVAL_SEEDS ?= 1
EVAL_MIN_RANK1 ?= 0
EVAL_MIN_DETAIL ?= 0
EVAL_FLAGS ?=
eval: deps
	EVAL_SEEDS=$(EVAL_SEEDS) EVAL_MIN_RANK1=$(EVAL_MIN_RANK1) EVAL_MIN_DETAIL=$(EVAL_MIN_DETAIL) \
	  $(CARGO) test $(EVAL_FLAGS) -p coral --test incidents -- --ignored --nocapture eval

## Benchmarks (release build): control plane, OTLP, freshness, exec, analyzer and MCP, policy, helper, mesh, eBPF, join; figures go to docs/benchmarks.md.
bench:
	$(CARGO) bench -p coral --bench control_plane
	$(CARGO) bench -p coral --bench otlp_ingest
	$(CARGO) bench -p coral --bench freshness
	$(CARGO) bench -p coral --bench exec
	$(CARGO) bench -p coral --bench analyze
	$(CARGO) bench -p coral-policy --bench decide
	$(CARGO) bench -p coral-privhelper --bench requests
	$(CARGO) build --release -p coral-mesh --examples
	$(CARGO) bench -p coral-mesh --bench mesh
	$(CARGO) bench -p coral --bench ebpf
	$(CARGO) bench -p coral --bench mesh_join

clean:
	$(CARGO) clean

## Linux packages (.deb, .rpm) from packaging/linux/nfpm.yaml into $(CARGO_TARGET_DIR)/package. PKG_PROFILE=release packages a release build (default: the debug build).
PKG_PROFILE ?= debug
package: deps
	$(CARGO) build $(if $(filter release,$(PKG_PROFILE)),--release) -p coral -p coral-privhelper --bins
	PKG_PROFILE=$(PKG_PROFILE) bash packaging/linux/build.sh

## Root: installs the packages into a Debian rootfs booted with systemd-nspawn and runs Coral there without sudo (packaging/test/package-test.sh).
package-test: package
	PKG_PROFILE=$(PKG_PROFILE) bash packaging/test/package-test.sh

## Builds, then installs and starts coral-privhelper's systemd units from the tree (sudo; no setcap).
build-dev: build
	bash packaging/dev/build-dev.sh
