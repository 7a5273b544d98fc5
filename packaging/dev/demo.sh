#!/usr/bin/env bash
# Coral's main job end to end, on one machine:
#   a colony on this host, and a "shop host" in its own network namespace
#   with an agent, PostgreSQL (an orders table of DEMO_ROWS rows), an api
#   and a frontend instrumented with OpenTelemetry. Load runs, the index on
#   orders.user_id is dropped, load runs again, and
#       coral ask "What's wrong with the API?"
#   must find the slow query, the sequential scan and recommend the index.
# Everything it starts is stopped, and the namespace and files removed.
# Needs root (network namespace, PostgreSQL as user postgres).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/../.." && pwd)
CORAL=${CORAL:-${CARGO_TARGET_DIR:-/var/cache/coral/target}/debug/coral}
PY=${CORAL_PYTHON:-${XDG_CACHE_HOME:-$HOME/.cache}/coral/venv/bin/python}
ROWS=${DEMO_ROWS:-500000}
BASE_S=${DEMO_BASELINE_SECONDS:-40}
SLOW_S=${DEMO_INCIDENT_SECONDS:-30}
RPS=${DEMO_RPS:-20}

if [[ $(id -u) -ne 0 ]]; then
  echo "the demo creates a network namespace and runs PostgreSQL: run it as root (sudo make demo)" >&2
  exit 77
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $PGBIN/initdb ]] || { echo "PostgreSQL is missing: run packaging/dev/deps.sh" >&2; exit 69; }
"$PY" -c 'import opentelemetry, psycopg' 2>/dev/null || { echo "the demo's Python packages are missing: run packaging/dev/deps.sh" >&2; exit 69; }

NS=cdemo$$
HOST_IP=10.213.0.1
SHOP_IP=10.213.0.2
WORK=$(mktemp -d /tmp/coral-demo.XXXXXX)
chmod 755 "$WORK"
export XDG_RUNTIME_DIR=$WORK/run XDG_STATE_HOME=$WORK/state XDG_CONFIG_HOME=$WORK/config
mkdir -p "$XDG_RUNTIME_DIR" "$XDG_CONFIG_HOME/coral"
chmod 700 "$XDG_RUNTIME_DIR"

pids=()
cleanup() {
  set +e
  "$CORAL" agent stop >/dev/null 2>&1
  "$CORAL" colony stop >/dev/null 2>&1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [[ -f $WORK/pg/postmaster.pid ]] && ip netns exec "$NS" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1
  # Whatever still runs in the demo's own namespace was started by it
  # (issue 16: the shop's processes outlived the namespace's name).
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  ip link del "$NS-h" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
step() { printf '\033[1m$ %s\033[0m\n' "$*"; "$@"; }
in_ns() { ip netns exec "$NS" "$@"; }

say "a shop host: network namespace $NS ($SHOP_IP), linked to this host ($HOST_IP)"
ip netns add "$NS"
ip link add "$NS-h" type veth peer name "$NS-n"
ip link set "$NS-n" netns "$NS"
ip addr add "$HOST_IP/24" dev "$NS-h"
ip link set "$NS-h" up
in_ns ip addr add "$SHOP_IP/24" dev "$NS-n"
in_ns ip link set "$NS-n" up
in_ns ip link set lo up

say "PostgreSQL with an orders table of $ROWS rows, indexed on user_id"
mkdir -p "$WORK/pg" "$WORK/pgsock"
chown postgres: "$WORK/pg" "$WORK/pgsock"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
in_ns runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" -w \
  -o "-p 5432 -k $WORK/pgsock -c listen_addresses=127.0.0.1 -c max_parallel_workers_per_gather=0" start >/dev/null
psql() { in_ns "$PGBIN/psql" -X -q -h 127.0.0.1 -p 5432 "$@"; }
psql -U postgres -c "CREATE ROLE shop LOGIN" -c "CREATE DATABASE shop OWNER shop"
psql -U shop -d shop <<SQL
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int NOT NULL, total numeric(10,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO orders (user_id, total) SELECT (random() * 19999)::int + 1, round((random() * 200)::numeric, 2) FROM generate_series(1, $ROWS);
CREATE INDEX orders_user_id_idx ON orders (user_id);
ANALYZE orders;
SQL

cat > "$XDG_CONFIG_HOME/coral/config.toml" <<TOML
[colony]
heartbeat_interval = "1s"
agent_timeout = "5s"

[colony.mcp]
# The analyzer (and an LLM) may run diagnostic commands, under each host's policy.
allow_exec = true

[colony.mesh]
listen = "$HOST_IP:51820"
helper_socket = "$WORK/privhelper.sock"
interface = "coraldm$$"

[agent]
name = "shop-host"
probe_interval = "1s"
probe_timeout = "500ms"

[agent.mesh]
key = "file"

[agent.exec]
policy = "$WORK/policy.toml"

[agent.otlp]
grpc_listen = "127.0.0.1:4317"
http_listen = "127.0.0.1:4318"
TOML

# The shop host's exec policy: EXPLAIN (and nothing else) against the shop
# database, for requests that come through this colony. Debian's psql is a
# link to pg_wrapper; policies name the resolved program.
cat > "$WORK/policy.toml" <<'TOML'
version = 1

[[rule]]
name = "psql-explain"
callers = ["identity:demo"]
services = ["db"]
program = "/usr/share/postgresql-common/pg_wrapper"
args = [
  "-X", "-h", "127.0.0.1", "-p", { range = [1, 65535] },
  "-U", { regex = '[a-z_]+' }, "-d", { regex = '[a-z_]+' },
  "-c", { regex = '(?i)EXPLAIN SELECT [^;\\\n]*' },
]
timeout = "20s"

[[test]]
caller = ["identity:demo"]
service = "db"
argv = ["/usr/share/postgresql-common/pg_wrapper", "-X", "-h", "127.0.0.1", "-p", "5432", "-U", "shop", "-d", "shop", "-c", "EXPLAIN SELECT 1; DROP TABLE orders"]
expect = "deny"
TOML
"$CORAL" policy check "$WORK/policy.toml"

say "coral-privhelper, the only root process: it makes the colony's TUN device and keeps its WireGuard key"
HELPER=${CORAL_PRIVHELPER:-$(dirname "$CORAL")/coral-privhelper}
"$HELPER" --socket "$WORK/privhelper.sock" --config "$WORK/privhelper.conf" --state-dir "$WORK/privhelper" 2>"$WORK/privhelper.log" &
helper_pid=$!; pids+=($helper_pid)
for _ in $(seq 100); do [[ -S $WORK/privhelper.sock ]] && break; sleep 0.05; done

say "Coral: a colony here, an agent on the shop host joining over the WireGuard mesh"
step "$CORAL" colony start --daemon --colony-id demo
TOKEN=$("$CORAL" colony token create --ttl 10m --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
step in_ns "$CORAL" agent start --daemon --join "$TOKEN"
step "$CORAL" colony agents

say "the root helper is needed only to set things up: stopping it changes nothing for the running daemons"
kill "$helper_pid"; wait "$helper_pid" 2>/dev/null || true

say "the shop: api and frontend, sending traces to the agent"
export OTLP_HTTP=http://127.0.0.1:4318
# Not through in_ns: '$!' of a backgrounded function is its subshell, and
# killing that left python running (issue 16). 'ip netns exec' execs the
# command, so '$!' is the shop's own pid.
ip netns exec "$NS" "$PY" "$HERE/packaging/demo/shop.py" api 8080 "host=127.0.0.1 port=5432 user=shop dbname=shop" >"$WORK/api.log" 2>&1 & pids+=($!)
ip netns exec "$NS" "$PY" "$HERE/packaging/demo/shop.py" frontend 3000 http://127.0.0.1:8080 >"$WORK/frontend.log" 2>&1 & pids+=($!)
for port in 8080 3000; do
  for _ in $(seq 100); do in_ns "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break; sleep 0.1; done
done
step "$CORAL" connect frontend:3000:/health api:8080:/health db:5432:tcp
sleep 2
step "$CORAL" colony status

say "normal traffic: $RPS checkouts/s for ${BASE_S}s"
in_ns "$PY" "$HERE/packaging/demo/shop.py" load http://127.0.0.1:3000/checkout "$RPS" "$BASE_S"

say "the incident: someone drops the index on orders.user_id"
step psql -U shop -d shop -c "DROP INDEX orders_user_id_idx"
say "traffic goes on for ${SLOW_S}s"
in_ns "$PY" "$HERE/packaging/demo/shop.py" load http://127.0.0.1:3000/checkout "$RPS" "$SLOW_S"
sleep 1  # the last spans reach the colony

say "ask Coral (no LLM configured: the built-in analyzer answers; it may run EXPLAIN under the host's policy)"
step "$CORAL" ask "What's wrong with the API?" | tee "$WORK/answer.txt"
if grep -q "sequential scan on orders" "$WORK/answer.txt" && grep -q "CREATE INDEX CONCURRENTLY ON orders (user_id)" "$WORK/answer.txt"; then
  say "Coral found it. Cleaning up."
else
  say "Coral did not find the missing index: see the answer above" >&2
  exit 1
fi
