#!/usr/bin/env bash
# Where the kernel side's cost per traced request comes from (issue 14):
# the Go /hello server (tests/ebpf/server.go, GOMAXPROCS=1, pinned to CPU 0)
# under wrk -t1 -c32 (pinned to CPU 1), alternating, ROUNDS times:
#   none   no program attached;
#   entry  the working tree's bpf/coral.bpf.c with on_data returning at
#          its first line: what the two socket tracepoints cost by
#          themselves (every socket read and write on the machine runs a
#          program that does nothing);
#   lookup the same, returning after the followed connection's lookup
#          (port filter, process, saved registers, `conns` entry): the
#          least a per-request design that keeps state per connection pays;
#   agg    the lookup, then what in-kernel HTTP/1 aggregation would do
#          instead of the copy and the ring records (bench/agg.c): scan
#          the request and response heads, one per-CPU hash update per
#          exchange: the least such a design pays (docs/benchmarks.md);
#   full   the object as it is (a copy of the bytes and a ring record per
#          read and write), its rings drained by bench/loader.c;
#   cgentry cgroup_skb ingress/egress programs (bench/cgskb.c) on the
#          server's cgroup only, returning at once: what a per-cgroup
#          packet design pays for attaching (wrk's sockets run nothing);
#   cgfull the same doing the least such a design does per packet: port
#          test, socket storage, and for a segment with a payload a copy
#          and a ring record (no process, no stream rebuilding).
# The server runs in a cgroup v2 of its own for every variant.
# VARIANTS="entry full ..." picks the variants (default: all).
# Per run: wrk's requests/s, and the CPU time (utime + stime) of the server
# and wrk per request. Means per variant at the end. BPF stats off, unless
# STATS=1: then each run also gives the programs' own run time per request
# (kernel.bpf_stats_enabled, which adds two clock reads per program run),
# a figure the machine's noise moves far less than the rates.
# Needs root, clang, libbpf-dev, bpftool, go, wrk, gcc.
# usage: [STATS=1] ebpf/bench/floor.sh [ROUNDS]
set -euo pipefail
ROUNDS=${1:-6}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$W"' EXIT
bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$W/vmlinux.h"
SRC=$REPO/ebpf/bpf/coral.bpf.c
ENTRY='static __always_inline int on_data(struct sock *sk, long ret, __u8 dir)
{'
LOOKUP='	if (!c)
		return 0;
	__u32 zero = 0;'
python3 - "$SRC" "$W" "$ENTRY" "$LOOKUP" "$HERE" <<'PY'
import sys
src, w, entry, lookup, here = sys.argv[1:]
s = open(src).read()
for anchor in (entry, lookup):
    if s.count(anchor) != 1:
        sys.exit(f"floor.sh: anchor not found once in {src}: {anchor!r}")
open(f"{w}/full.bpf.c", "w").write(s)
open(f"{w}/entry.bpf.c", "w").write(s.replace(entry, entry + "\n\treturn 0;"))
# Touch the entry (so the lookup is not optimised away) and stop.
open(f"{w}/lookup.bpf.c", "w").write(
    s.replace(lookup, "\tif (!c)\n\t\treturn 0;\n\tc->h2[0].skip += 1;\n\treturn 0;\n\t__u32 zero = 0;"))
# In-kernel aggregation (bench/agg.c) after the lookup, instead of the copy
# and the ring record.
conn = "\tstruct h2_dir h2[2]; /* per direction (DIR_IN, DIR_OUT) */\n"
if s.count(conn) != 1:
    sys.exit(f"floor.sh: anchor not found once in {src}: {conn!r}")
a = s.replace(conn, conn + "\t__u64 agg_start;\n\t__u64 agg_hash;\n\t__u32 agg_in;\n\t__u32 agg_pending;\n")
a = a.replace(entry, open(f"{here}/agg.c").read() + "\n" + entry)
a = a.replace(lookup, "\tif (!c)\n\t\treturn 0;\n\treturn agg(c, dir, ret, SYSCALL_ARG2(regs), kind);\n\t__u32 zero = 0;")
open(f"{w}/agg.bpf.c", "w").write(a)
PY
for v in cgentry cgfull; do
  clang -target bpf -O2 -g -D__TARGET_ARCH_x86 $([ $v = cgentry ] && echo -DCG_ENTRY) -I "$W" -I /usr/include/x86_64-linux-gnu -c "$HERE/cgskb.c" -o "$W/$v.o"
done
for v in full entry lookup agg; do
  clang -target bpf -O2 -g -D__TARGET_ARCH_x86 -I "$W" -I /usr/include/x86_64-linux-gnu -c "$W/$v.bpf.c" -o "$W/$v.o"
done
gcc -O2 -o "$W/loader" "$HERE/loader.c" -lbpf
GO111MODULE=off HOME=$W GOCACHE=$W/gocache go build -o "$W/server" "$REPO/tests/ebpf/server.go"
# The server's own cgroup (v2), entered before it starts: a socket belongs
# to the cgroup of the process that made it.
CG=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)/coral-floor-$$
mkdir "$CG"
GOMAXPROCS=1 taskset -c 0 sh -c 'echo $$ > "$1/cgroup.procs" && exec "$2" "$3"' sh "$CG" "$W/server" "$W/port" >/dev/null 2>&1 &
SERVER=$!
while [ ! -s "$W/port" ]; do sleep 0.1; done
PORT=$(cat "$W/port")
STATS=${STATS:-0}
sysctl -qw kernel.bpf_stats_enabled="$STATS"
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; sysctl -qw kernel.bpf_stats_enabled=0; sleep 0.2; rmdir "$CG"; rm -rf "$W"' EXIT
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {
  local s0 s1
  s0=$(ticks "$SERVER")
  taskset -c 1 /usr/bin/time -f '%U %S' -o "$W/wrk_cpu" wrk -t1 -c32 -d5s "http://127.0.0.1:$PORT/hello" >"$W/out" 2>&1
  s1=$(ticks "$SERVER")
  awk -v s="$((s1 - s0))" -v hz="$HZ" -v n="$(awk '/requests in/ {print $1}' "$W/out")" \
    -v w="$(awk '{print $1 + $2}' "$W/wrk_cpu")" -v rps="$(awk '/Requests\/sec/ {print $2}' "$W/out")" \
    'BEGIN { printf "%.0f %.2f %d\n", rps, (s / hz + w) * 1e6 / n, n }'
}
with() {
  coproc L { CGROUP=$CG "$W/loader" "$W/$1.o" "$PORT"; }
  local ready pid=$L_PID out=${L[0]} in=${L[1]}
  read -r ready <&"$out"
  local r
  r=$(run)
  eval "exec $in>&-"
  local cnt ns _
  read -r cnt ns _ <&"$out" || true
  wait "$pid" || true
  # requests/s, CPU µs per request, BPF ns per request (0 with stats off)
  awk -v r="$r" -v ns="${ns:-0}" 'BEGIN { split(r, a, " "); printf "%s %s %.0f\n", a[1], a[2], ns / a[3] }'
}
echo "variant req_per_s server_wrk_cpu_us_per_req bpf_ns_per_req"
for _ in $(seq "$ROUNDS"); do
  echo "none $(run | awk '{print $1, $2, 0}')"
  for v in ${VARIANTS:-entry lookup agg full cgentry cgfull}; do echo "$v $(with "$v")"; done
done | awk '{ print; n[$1]++; r[$1] += $2; c[$1] += $3; b[$1] += $4 }
  END { for (k in n) printf "mean %s %.0f %.2f %.0f (%d runs)\n", k, r[k] / n[k], c[k] / n[k], b[k] / n[k], n[k] }'
