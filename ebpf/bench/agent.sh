# Sourced by e2e.sh and protocols.sh: a colony and an agent from the `coral`
# binary in $CORAL, in private XDG dirs under $W (no mesh, OTLP on free
# ports, eBPF aggregates flushed every second), and the CPU time of a
# process and of one of its threads.

# Runs $CORAL with the private dirs.
c() {
  XDG_RUNTIME_DIR=$W/run XDG_STATE_HOME=$W/state XDG_CONFIG_HOME=$W/config CORAL_LOG=warn "$CORAL" "$@" </dev/null
}
mkdir -p "$W/config/coral"
cat >"$W/config/coral/config.toml" <<CONF
[colony.mesh]
enabled = false
[agent.otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
[agent.ebpf]
flush_interval = "1s"
CONF

# Starts the agent and waits until its capture runs.
agent_start() {
  c agent start --daemon >/dev/null
  for _ in $(seq 200); do
    c agent status --json 2>/dev/null | grep -q '"running": *true' && return
    sleep 0.1
  done
  echo "the agent's eBPF capture did not start" >&2
  return 1
}
agent_pid() { cat "$W/run/coral/agent.pid"; }
# Stops the agent; the next starts on an empty telemetry store (a newer
# build may have migrated it past what an older one opens).
agent_stop() {
  local pid
  pid=$(agent_pid)
  c agent stop >/dev/null
  for _ in $(seq 100); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  rm -f "$W"/state/coral/agent/telemetry.duckdb*
}
# A figure of the agent's eBPF capture (`coral agent status --json`:
# requests, events, dropped), as of its last flush.
agent_ebpf() {
  c agent status --json | python3 -c 'import json, sys
def find(v):
    if isinstance(v, dict):
        if "running" in v and sys.argv[1] in v:
            return v[sys.argv[1]]
        for x in v.values():
            r = find(x)
            if r is not None:
                return r
print(find(json.load(sys.stdin)))' "$1"
}
HZ=$(getconf CLK_TCK)
# CPU ticks (utime + stime) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ns of a process's thread named $2.
thread_ns() {
  local t
  for t in /proc/"$1"/task/*; do
    if [ "$(cat "$t/comm")" = "$2" ]; then
      awk '{print $1}' "$t/schedstat"
      return
    fi
  done
  echo 0
}
