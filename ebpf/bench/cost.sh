#!/usr/bin/env bash
# The BPF side's cost, two designs of bpf/coral.bpf.c in one run (issue 14):
# BASE (a git revision, default the one before issue 14: processes filtered
# by the accept-time `hot` counter) against the working tree's (processes
# filtered by a per-process slot decided from the fd table, connections
# found open adopted at their first read/write, iovecs captured).
#
# For each design, alternated ROUNDS times: the kernel's run time of the
# sys_exit program (kernel.bpf_stats_enabled=1) per syscall of a process
# that serves no followed port (dd doing 1-byte reads and writes), and per
# request of the followed Go server (tests/ebpf/server.go, GET /hello under
# wrk -t1 -c32), with wrk's throughput; and the throughput with no program
# attached. The loader fills the rings (4 MiB per CPU) and drains them every
# 100 ms like the agent (counting records, not parsing them), so the figures
# are the programs' cost, not the agent's.
#
# Needs root, clang, libbpf-dev, bpftool, go, wrk, gcc.
# usage: ebpf/bench/cost.sh [BASE] [ROUNDS]
set -euo pipefail
BASE=${1:-45831a2}
ROUNDS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$W"' EXIT
bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$W/vmlinux.h"
git -C "$REPO" show "$BASE:ebpf/bpf/coral.bpf.c" > "$W/base.bpf.c"
cp "$REPO/ebpf/bpf/coral.bpf.c" "$W/new.bpf.c"
for v in base new; do
  clang -target bpf -O2 -g -D__TARGET_ARCH_x86 -I "$W" -I /usr/include/x86_64-linux-gnu -c "$W/$v.bpf.c" -o "$W/$v.o"
done
gcc -O2 -o "$W/loader" "$HERE/loader.c" -lbpf
GO111MODULE=off HOME=$W GOCACHE=$W/gocache go build -o "$W/server" "$REPO/tests/ebpf/server.go"
GOMAXPROCS=1 "$W/server" "$W/port" >/dev/null 2>&1 &
SERVER=$!
while [ ! -s "$W/port" ]; do sleep 0.1; done
PORT=$(cat "$W/port")
sysctl -qw kernel.bpf_stats_enabled=1

# Runs "$@" with design $1 attached; prints "run_cnt run_time_ns".
with() {
  local obj=$1; shift
  coproc L { "$W/loader" "$obj" "$PORT"; }
  read -r ready <&"${L[0]}"
  "$@" >"$W/out" 2>&1
  eval "exec ${L[1]}>&-"
  read -r cnt ns recs <&"${L[0]}"
  wait "$L_PID" || true
  echo "$cnt $ns $recs"
}
rps() { awk '/Requests\/sec/ {print $2}' "$W/out"; }
reqs() { awk '/requests in/ {print $1}' "$W/out"; }
dd_run() { dd if=/dev/zero of=/dev/null bs=1 count=1000000 status=none; }
wrk_run() { wrk -t1 -c32 -d5s "http://127.0.0.1:$PORT/hello"; }

printf "round design unrelated_ns_per_syscall ns_per_request req_per_s records_per_request\n"
for r in $(seq "$ROUNDS"); do
  wrk_run >"$W/out" 2>&1
  printf "%s none - - %s\n" "$r" "$(rps)"
  for d in base new; do
    read -r c1 n1 _ < <(with "$W/$d.o" dd_run)
    read -r c2 n2 recs < <(with "$W/$d.o" wrk_run)
    printf "%s %s %s %s %s %s\n" "$r" "$d" \
      "$(awk -v n="$n1" -v c="$c1" 'BEGIN{printf "%.1f", n/c}')" \
      "$(awk -v n="$n2" -v q="$(reqs)" 'BEGIN{printf "%.0f", n/q}')" "$(rps)" \
      "$(awk -v n="$recs" -v q="$(reqs)" 'BEGIN{printf "%.2f", n/q}')"
  done
done
