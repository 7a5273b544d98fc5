#!/usr/bin/env bash
# Coral's main job on one machine, in a private sandbox of directories:
# start a colony and an agent, start a sample HTTP service and a TCP
# service, connect them, show what the colony sees (including a failure),
# then stop everything it started.
set -euo pipefail

CORAL=${CORAL:-${CARGO_TARGET_DIR:-/var/cache/coral/target}/debug/coral}
WORK=$(mktemp -d /tmp/coral-demo.XXXXXX)
export XDG_RUNTIME_DIR=$WORK/run XDG_STATE_HOME=$WORK/state XDG_CONFIG_HOME=$WORK/config
mkdir -p "$XDG_RUNTIME_DIR" "$XDG_CONFIG_HOME/coral"
chmod 700 "$XDG_RUNTIME_DIR"
cat > "$XDG_CONFIG_HOME/coral/config.toml" <<TOML
[colony]
heartbeat_interval = "1s"
agent_timeout = "3s"

[agent]
name = "demo-host"
probe_interval = "500ms"
probe_timeout = "300ms"

[agent.otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
TOML
# The mesh needs a TUN device: through coral-privhelper, or directly as root.
# Without either, the demo uses the plain-TCP development transport.
if [[ $(id -u) -ne 0 && ! -S /run/coral/privhelper.sock ]]; then
  printf '\n[colony.mesh]\nenabled = false\n' >> "$XDG_CONFIG_HOME/coral/config.toml"
fi

pids=()
cleanup() {
  "$CORAL" agent stop >/dev/null 2>&1 || true
  "$CORAL" colony stop >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WEB=$(free_port); DB=$(free_port)
mkdir -p "$WORK/www" && echo ok > "$WORK/www/health"
python3 -m http.server "$WEB" --bind 127.0.0.1 --directory "$WORK/www" >/dev/null 2>&1 & pids+=($!)
python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',$DB)); s.listen(); time.sleep(3600)" & db_pid=$!; pids+=($db_pid)

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
step "$CORAL" colony start --daemon --port 0 --colony-id demo
step "$CORAL" agent start --daemon
step "$CORAL" connect "web:$WEB:/health" "db:$DB:tcp"
sleep 2
step "$CORAL" colony status
echo; echo "# stopping the db service: the colony sees it go down"
kill "$db_pid"; sleep 2
step "$CORAL" colony status
step "$CORAL" agent status
