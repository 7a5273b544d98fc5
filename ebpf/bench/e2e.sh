#!/usr/bin/env bash
# What a traced request costs end to end (issue 14): the Go /hello server
# (tests/ebpf/server.go, GOMAXPROCS=1) under wrk -t1 -c32 -d5s, without and
# with a real Coral agent following it (colony and agent from the `coral`
# binaries given, private XDG dirs, flush every second), rounds interleaved:
# no agent, then each binary's agent in turn (two builds compare two designs
# in one run: copy the first binary away before building the second).
# Per request, over the wrk run:
# - the CPU time of the server and wrk together (utime + stime), without
#   and with the agent: the difference is what tracing adds inside the
#   traced syscalls (BPF programs, ring writes and wakeups), whatever else
#   runs on the machine;
# - the kernel's run time of the agent's BPF programs
#   (kernel.bpf_stats_enabled=1; every socket read and write on the machine
#   runs them, wrk's included). BPF_STATS=0 turns the stats
#   off (their clock reads cost every program run ~20-40 ns on a VM) and
#   leaves the column empty;
# - the agent process's CPU time (utime + stime from /proc/PID/stat), and
#   of it the `ebpf-reader` thread's (ring reading, parsing, aggregation:
#   the part that grows with requests; the rest is mostly the store's
#   per-flush work, ~20 ms per second whatever the rate);
# - total: the server's and wrk's added CPU plus the agent's.
# CPU-time figures do not move with the other jobs on the machine the way
# throughput does.
#
# Needs root, go, wrk, bpftool, and a built coral (cargo build; the agent's
# CPU in a debug build is several times a release build's).
# PERF=FILE records the agent with perf during each wrk run (FILE.ROUND.AGENT).
# usage: [BPF_STATS=0] [PERF=FILE] ebpf/bench/e2e.sh ROUNDS CORAL [CORAL...]
set -euo pipefail
ROUNDS=$1
shift
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
CORAL=${BINS[0]}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d)
SERVER=
cleanup() {
  c agent stop >/dev/null 2>&1 || true
  c colony stop >/dev/null 2>&1 || true
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
. "$HERE/agent.sh"
GO111MODULE=off HOME=$W GOCACHE=$W/gocache go build -o "$W/server" "$REPO/tests/ebpf/server.go"
GOMAXPROCS=1 "$W/server" "$W/port" >/dev/null 2>&1 &
SERVER=$!
while [ ! -s "$W/port" ]; do sleep 0.1; done
PORT=$(cat "$W/port")
STATS=${BPF_STATS:-1}
sysctl -qw kernel.bpf_stats_enabled="$STATS"
c colony start --daemon --port 0 >/dev/null

wrk_run() { /usr/bin/time -f '%U %S' -o "$W/wrk_cpu" wrk -t1 -c32 -d5s "http://127.0.0.1:$PORT/hello" >"$W/out" 2>&1; }
# CPU seconds wrk used in the last run.
wrk_cpu() { awk '{print $1 + $2}' "$W/wrk_cpu"; }
rps() { awk '/Requests\/sec/ {print $2}' "$W/out"; }
reqs() { awk '/requests in/ {print $1}' "$W/out"; }
# Run time (ns) of the BPF programs a process holds.
bpf_ns() {
  local total=0 id
  for id in $(grep -h '^prog_id:' /proc/"$1"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -u); do
    total=$((total + $(bpftool prog show id "$id" -j | python3 -c 'import json,sys; print(json.load(sys.stdin).get("run_time_ns", 0))')))
  done
  echo "$total"
}

printf "| round | agent | req/s without | req/s with | server+wrk CPU µs/req without | with | BPF ns/req | agent CPU µs/req | of it ebpf-reader | total added µs/req |\n|---|---|---|---|---|---|---|---|---|---|\n"
for r in $(seq "$ROUNDS"); do
 s0=$(ticks "$SERVER")
 wrk_run
 s1=$(ticks "$SERVER")
 without=$(rps)
 base=$(awk -v s="$((s1 - s0))" -v w="$(wrk_cpu)" -v n="$(reqs)" -v hz="$HZ" 'BEGIN { printf "%.3f", (s / hz + w) * 1e6 / n }')
 for i in "${!BINS[@]}"; do
  CORAL=${BINS[$i]}
  agent_start
  [ "$r" = 1 ] && [ "$i" = 0 ] && c connect "hello:$PORT:tcp" >/dev/null
  sleep 1.5
  pid=$(agent_pid)
  t0=$(ticks "$pid")
  b0=$(bpf_ns "$pid")
  e0=$(thread_ns "$pid" ebpf-reader)
  s0=$(ticks "$SERVER")
  [ -n "${PERF:-}" ] && { perf record -F 4999 -g -p "$pid" -o "$PERF.$r.$i" >/dev/null 2>&1 & perf_pid=$!; }
  wrk_run
  s1=$(ticks "$SERVER")
  [ -n "${PERF:-}" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  # The agent reads and parses what is left in the rings within ~100 ms.
  sleep 0.5
  t1=$(ticks "$pid")
  b1=$(bpf_ns "$pid")
  e1=$(thread_ns "$pid" ebpf-reader)
  n=$(reqs)
  agent_stop
  CORAL=${BINS[0]}
  awk -v r="$r" -v a="$i" -v wo="$without" -v w="$(rps)" -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v n="$n" -v hz="$HZ" \
    -v base="$base" -v s="$((s1 - s0))" -v wc="$(wrk_cpu)" -v e="$((e1 - e0))" -v stats="$STATS" \
    'BEGIN { cpu = t / hz * 1e6 / n; sw = (s / hz + wc) * 1e6 / n;
      bpf = stats == 1 ? sprintf("%.0f", b / n) : "-";
      printf "| %s | %s | %.0f | %.0f | %.2f | %.2f | %s | %.2f | %.2f | %.2f |\n", r, a, wo, w, base, sw, bpf, cpu, e / 1000 / n, sw - base + cpu }'
done
 done
