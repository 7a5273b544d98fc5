#!/usr/bin/env bash
# The BPF side's cost, two designs of bpf/coral.bpf.c in one run (issue 14):
# BASE (a git revision, e.g. 45831a2, before issue 14: processes filtered
# by the accept-time `hot` counter; or 6984379, before the HTTP/2 frame
# walk) against the working tree's.
#
# For each design, alternated ROUNDS times: the kernel's run time of the
# object's programs, summed (kernel.bpf_stats_enabled=1), per program run
# while a process that serves no followed port runs (dd doing 1-byte reads
# and writes: "no run" when none ran, as with the socket tracepoints), and per
# request of the followed Go server (tests/ebpf/server.go, GET /hello under
# wrk -t1 -c32), with wrk's throughput; and the throughput with no program
# attached. HTTP/2: nghttpd --no-tls under h2load -c 2 -m 10 (10 streams per
# connection), a 60-byte file and a 100 KiB one (its DATA frames share
# writes with other streams' HEADERS): the program's run time and ring
# records per request. The loader fills the rings (4 MiB per CPU) and drains
# them every 100 ms like the agent (counting records, not parsing them), so
# the figures are the programs' cost, not the agent's.
#
# Needs root, clang, libbpf-dev, bpftool, go, wrk, gcc, nghttp2-server,
# nghttp2-client.
# usage: ebpf/bench/cost.sh [BASE] [ROUNDS]
set -euo pipefail
BASE=${1:-45831a2}
ROUNDS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d)
trap 'kill $SERVER $H2 2>/dev/null || true; rm -rf "$W"' EXIT
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
mkdir -p "$W/www" && printf 'hello\n%.0s' {1..10} > "$W/www/small" && head -c 102400 /dev/zero > "$W/www/big"
HPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nghttpd --no-tls -a 127.0.0.1 -d "$W/www" "$HPORT" >/dev/null 2>&1 &
H2=$!
sleep 0.5
sysctl -qw kernel.bpf_stats_enabled=1

# Runs "$@" with design $1 attached following port $2; prints "run_cnt
# run_time_ns records dropped".
with() {
  local obj=$1 port=$2; shift 2
  coproc L { "$W/loader" "$obj" "$port"; }
  read -r ready <&"${L[0]}"
  "$@" >"$W/out" 2>&1
  eval "exec ${L[1]}>&-"
  read -r cnt ns recs drops <&"${L[0]}"
  wait "$L_PID" || true
  echo "$cnt $ns $recs $drops"
}
rps() { awk '/Requests\/sec/ {print $2}' "$W/out"; }
reqs() { awk '/requests in/ {print $1}' "$W/out"; }
dd_run() { dd if=/dev/zero of=/dev/null bs=1 count=1000000 status=none; }
wrk_run() { wrk -t1 -c32 -d5s "http://127.0.0.1:$PORT/hello"; }
h2_small() { h2load -n 20000 -c 2 -m 10 "http://127.0.0.1:$HPORT/small"; }
h2_big() { h2load -n 4000 -c 2 -m 10 "http://127.0.0.1:$HPORT/big" "http://127.0.0.1:$HPORT/small"; }
h2_reqs() { awk '/^requests:/ {print $8}' "$W/out"; }
per() { awk -v a="$1" -v q="$2" -v f="$3" 'BEGIN{ if (q == 0) printf "no_run"; else printf f, a/q }'; }

printf "round design unrelated_ns_per_syscall hello_ns_per_request hello_req_per_s hello_records_per_request h2_small_ns_per_request h2_small_records_per_request h2_big_ns_per_request h2_big_records_per_request dropped\n"
for r in $(seq "$ROUNDS"); do
  wrk_run >"$W/out" 2>&1
  printf "%s none - - %s\n" "$r" "$(rps)"
  for d in base new; do
    read -r c1 n1 _ < <(with "$W/$d.o" "$PORT" dd_run)
    read -r _ n2 recs dr2 < <(with "$W/$d.o" "$PORT" wrk_run)
    hello="$(per "$n2" "$(reqs)" %.0f) $(rps) $(per "$recs" "$(reqs)" %.2f)"
    read -r _ n3 recs3 dr3 < <(with "$W/$d.o" "$HPORT" h2_small)
    q3=$(h2_reqs)
    read -r _ n4 recs4 dr4 < <(with "$W/$d.o" "$HPORT" h2_big)
    q4=$(h2_reqs)
    printf "%s %s %s %s %s %s %s %s %s\n" "$r" "$d" "$(per "$n1" "$c1" %.1f)" "$hello" \
      "$(per "$n3" "$q3" %.0f)" "$(per "$recs3" "$q3" %.2f)" "$(per "$n4" "$q4" %.0f)" "$(per "$recs4" "$q4" %.2f)" \
      "$((dr2 + dr3 + dr4))"
  done
done
