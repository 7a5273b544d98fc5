#!/usr/bin/env bash
# Per protocol (issue 14): a real server and its own load generator, with
# and without Coral following the server's port, alternated in one run.
# Two modes:
# - the kernel side (default): the BPF programs loaded by
#   ebpf/bench/loader.c (rings drained every 100 ms, records counted, not
#   parsed): the load generator's throughput, the programs' summed run
#   time per request (kernel BPF stats) and ring records per request;
# - a real agent (CORAL=path/to/coral, a release build; several paths
#   separated by spaces compare builds in one run, each in turn): a colony
#   and an agent (bench/agent.sh) with the three servers connected; the
#   load generator's throughput, the agent process's CPU per request and
#   its `ebpf-reader` thread's (reading the rings, parsing, aggregating),
#   and the requests the agent counted (`coral agent status`) against those
#   the load generator made.
#
#   redis:    redis-server, redis-benchmark -P 16 -c 4 -t set,get
#   postgres: postgresql (user postgres), pgbench -M simple -c 2 -T 5 (TPC-B
#             like; 7 statements per transaction)
#   http2:    nghttpd --no-tls, h2load -c 2 -m 10 -D 5
#
# Needs root, clang, libbpf-dev, bpftool, gcc, redis-server, redis-tools,
# postgresql, nghttp2-server, nghttp2-client.
# usage: [CORAL="path/to/coral ..."] ebpf/bench/protocols.sh [ROUNDS]
set -euo pipefail
ROUNDS=${1:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d)
chmod 755 "$W"
PIDS=()
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cleanup() {
  if [ -n "${CORAL:-}" ]; then
    c agent stop >/dev/null 2>&1 || true
    c colony stop >/dev/null 2>&1 || true
  fi
  sysctl -qw kernel.bpf_stats_enabled=0
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/pg/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RPORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no >/dev/null &
PIDS+=($!)
PPORT=$(free_port)
mkdir -p "$W/pg" && chown postgres: "$W/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PPORT -c unix_socket_directories=$W/pg -c fsync=off" start >/dev/null
"$PGBIN/pgbench" -h 127.0.0.1 -p "$PPORT" -U postgres -i -q -s 1 postgres >/dev/null 2>&1
HPORT=$(free_port)
mkdir -p "$W/www" && printf 'hello\n%.0s' {1..10} > "$W/www/hello.txt"
nghttpd --no-tls -a 127.0.0.1 -d "$W/www" "$HPORT" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1

redis_run() { redis-benchmark -p "$RPORT" -n 200000 -c 4 -P 16 -t set,get -q --csv; }
redis_reqs() { echo 400000; }
redis_rate() { awk -F'"' '/"SET"|"GET"/ {s += $4} END {printf "%.0f", s/2}' "$W/out"; }
pg_run() { "$PGBIN/pgbench" -h 127.0.0.1 -p "$PPORT" -U postgres -n -M simple -c 2 -T 5 postgres; }
pg_reqs() { awk '/number of transactions actually processed/ {print $NF * 7}' "$W/out" | cut -d/ -f1; }
pg_rate() { awk '/^tps/ {printf "%.0f", $3 * 7}' "$W/out"; }
h2_run() { h2load -c 2 -m 10 -D 5 "http://127.0.0.1:$HPORT/hello.txt"; }
h2_reqs() { awk '/^requests:/ {print $8}' "$W/out"; }
h2_rate() { awk '/^finished in/ {print $4}' "$W/out" | tr -d ','; }

with() {
  local port=$1; shift
  coproc L { "$W/loader" "$W/coral.o" "$port"; }
  read -r ready <&"${L[0]}"
  "$@" >"$W/out" 2>&1
  eval "exec ${L[1]}>&-"
  read -r cnt ns recs drops <&"${L[0]}"
  wait "$L_PID" || true
  echo "$ns $recs"
}

# With a real agent: the agent's CPU per request, and the requests it
# counted against those made.
with_agent() {
  local pid t0 e0 t1 e1
  agent_start
  pid=$(agent_pid)
  t0=$(ticks "$pid")
  e0=$(thread_ns "$pid" ebpf-reader)
  "$@" >"$W/out" 2>&1
  # Two flushes: what is left in the rings is parsed and counted.
  sleep 2.5
  t1=$(ticks "$pid")
  e1=$(thread_ns "$pid" ebpf-reader)
  echo "$((t1 - t0)) $((e1 - e0)) $(agent_ebpf requests) $(agent_ebpf dropped)"
  agent_stop
}

if [ -n "${CORAL:-}" ]; then
  BINS=()
  for b in $CORAL; do BINS+=("$(realpath "$b")"); done
  CORAL=${BINS[0]}
  . "$HERE/agent.sh"
  c colony start --daemon --port 0 >/dev/null
  agent_start
  c connect "redis:$RPORT:tcp" >/dev/null
  c connect "pg:$PPORT:tcp" >/dev/null
  c connect "h2:$HPORT:tcp" >/dev/null
  agent_stop
  printf "| protocol | round | agent | requests/s without | requests/s with the agent | agent CPU µs per request | of it ebpf-reader | requests counted / made | dropped |\n|---|---|---|---|---|---|---|---|---|\n"
  for r in $(seq "$ROUNDS"); do
    for p in redis pg h2; do
      "${p}_run" >"$W/out" 2>&1
      without=$("${p}_rate")
      for i in "${!BINS[@]}"; do
        CORAL=${BINS[$i]}
        with_agent "${p}_run" >"$W/with"
        read -r t e counted dropped <"$W/with"
        n=$("${p}_reqs")
        printf "| %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n" "$p" "$r" "$i" "$without" "$("${p}_rate")" \
          "$(awk -v t="$t" -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')" \
          "$(awk -v e="$e" -v n="$n" 'BEGIN{printf "%.2f", e / 1000 / n}')" "$counted" "$n" "$dropped"
      done
      CORAL=${BINS[0]}
    done
  done
  exit 0
fi

bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$W/vmlinux.h"
clang -target bpf -O2 -g -D__TARGET_ARCH_x86 -I "$W" -I /usr/include/x86_64-linux-gnu -c "$REPO/ebpf/bpf/coral.bpf.c" -o "$W/coral.o"
gcc -O2 -o "$W/loader" "$HERE/loader.c" -lbpf
sysctl -qw kernel.bpf_stats_enabled=1
printf "| protocol | round | requests/s without | requests/s with | BPF ns per request | records per request |\n|---|---|---|---|---|---|\n"
for r in $(seq "$ROUNDS"); do
  for p in redis pg h2; do
    port=$RPORT; [ "$p" = pg ] && port=$PPORT; [ "$p" = h2 ] && port=$HPORT
    "${p}_run" >"$W/out" 2>&1
    without=$("${p}_rate")
    read -r ns recs < <(with "$port" "${p}_run")
    n=$("${p}_reqs")
    printf "| %s | %s | %s | %s | %s | %s |\n" "$p" "$r" "$without" "$("${p}_rate")" \
      "$(awk -v a="$ns" -v n="$n" 'BEGIN{printf "%.0f", a/n}')" \
      "$(awk -v a="$recs" -v n="$n" 'BEGIN{printf "%.2f", a/n}')"
  done
done
