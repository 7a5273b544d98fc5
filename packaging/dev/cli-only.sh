#!/usr/bin/env bash
# The CLI alone (issue 13): `coral` built without its `daemons` feature, what
# Homebrew installs on macOS (`coral ask`, `coral mcp`, the commands that talk
# to a colony's or agent's socket). No macOS target is installed here, so this
# checks what can be checked on Linux:
#   1. macOS's dependency tree of that build holds none of the Linux-only crates
#      (TUN, eBPF, landlock, seccomp, capabilities, the helper, the daemons);
#   2. it builds (own target dir: its feature set differs, and it must not
#      replace the full `coral` the tests run);
#   3. the binary answers: `--help`, `version` (no DuckDB in it), `ask
#      --tools-file` with the built-in analyzer, and a daemon command refused
#      with one line naming the reason (exit 64).
# make cli-only runs it; .ci/run runs it after make test.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
target=${CORAL_CLI_TARGET_DIR:-${CARGO_TARGET_DIR:-/var/cache/coral/target}-cli}

linux_only='^(coral-agent|coral-colony|coral-mesh|coral-sandbox|coral-privhelper|coral-ebpf|aya|aya-obj|landlock|seccompiler|caps|tun|boringtun|duckdb|libduckdb-sys|iced-x86|gimli|object) '
for t in aarch64-apple-darwin x86_64-apple-darwin; do
  tree=$(cargo tree -p coral --no-default-features -e normal --target "$t" --prefix none)
  if bad=$(grep -E "$linux_only" <<<"$tree" | sort -u) && [[ -n $bad ]]; then
    echo "cli-only: the $t tree of 'coral --no-default-features' holds Linux-only crates:" >&2
    echo "$bad" >&2
    exit 1
  fi
  echo "cli-only: $t tree: $(sort -u <<<"$tree" | wc -l) crates, none Linux-only"
done

log=$(cargo build -p coral --no-default-features --bin coral --target-dir "$target" 2>&1) || { echo "$log" >&2; exit 1; }
# Dependencies' warnings are capped, so any warning is Coral's own (code that
# only the full build uses, left ungated).
if grep -q '^warning' <<<"$log"; then
  echo "$log" >&2
  echo "cli-only: the build without the daemons warns" >&2
  exit 1
fi
bin=$target/debug/coral
"$bin" --help >/dev/null
ver=$("$bin" version --json)
grep -q '"duckdb": *"none (CLI only)"' <<<"$ver" || { echo "cli-only: unexpected version: $ver" >&2; exit 1; }

work=$(mktemp -d)
full=${CARGO_TARGET_DIR:-/var/cache/coral/target}/debug/coral
cleanup() {
  [[ -x $full ]] && "$full" colony stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export XDG_CONFIG_HOME=$work/config XDG_STATE_HOME=$work/state XDG_DATA_HOME=$work/data XDG_RUNTIME_DIR=$work/run
mkdir -p "$XDG_RUNTIME_DIR" "$XDG_CONFIG_HOME/coral" && chmod 700 "$XDG_RUNTIME_DIR"
set +e
err=$("$bin" colony start 2>&1 >/dev/null); code=$?
set -e
[[ $code == 64 && $(wc -l <<<"$err") == 1 && $err == *"CLI alone"* ]] || {
  echo "cli-only: 'coral colony start' should fail with one line and exit 64, got $code: $err" >&2
  exit 1
}
# A config file shared with a Linux host keeps its daemon tables: the CLI
# alone leaves them unchecked and still reads the file.
printf '[colony.mesh]\nenabled = false\n[agent]\nname = "web-1"\n' \
  >"$XDG_CONFIG_HOME/coral/config.toml"
"$bin" config validate >/dev/null

# Against a real colony (started by the full build, as a Linux host would
# run it; on a workstation its sockets come over `ssh -L`): status, the MCP
# tools, and `coral ask` answered by the built-in analyzer over MCP.
if [[ ! -x $full ]]; then
  echo "cli-only: $full is not built: skipping the checks against a colony (make build)" >&2
else
  "$full" colony start --daemon --port 0 --colony-id cli-only >/dev/null
  status=$("$bin" colony status --json)
  grep -q '"colony_id": *"cli-only"' <<<"$status" || { echo "cli-only: unexpected status: $status" >&2; exit 1; }
  tools=$("$bin" mcp tools)
  grep -q coral_red_metrics <<<"$tools" || { echo "cli-only: 'coral mcp tools' lists no coral_red_metrics: $tools" >&2; exit 1; }
  ans=$("$bin" ask "is anything wrong?")
  grep -q "No problem found" <<<"$ans" || { echo "cli-only: unexpected answer: $ans" >&2; exit 1; }
fi
echo "cli-only: ok ($(du -h "$bin" | cut -f1) unstripped, without DuckDB; daemon commands refused in one line; status, mcp tools and ask answered by a real colony)"
