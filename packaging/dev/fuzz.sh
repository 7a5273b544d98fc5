#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS, default 30)
# on the STABLE toolchain: cargo-fuzz comes from crates.io, RUSTC_BOOTSTRAP=1
# lets stable rustc take the few unstable flags libFuzzer coverage needs, and
# `--sanitizer none` avoids -Zsanitizer (which would need a nightly std).
# So a finding is a panic, an assertion, a timeout or an out-of-memory; no
# ASan. The rest is libFuzzer's coverage-guided search, as with nightly.
#
# The cargo-fuzz binary, the fuzz build and the corpora live under the cargo
# target dir (outside the clone), so repeated CI runs stay fast and the
# corpora keep growing. A crash leaves its input in <crate>/fuzz/artifacts/
# and fails the run; reproduce with the command it prints.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${FUZZ_SECONDS:-30}
TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/coral/target}
TOOLS="$TARGET_DIR/tools"
CARGO_FUZZ_VERSION=0.13.2

if [[ "$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS (once; cached)"
  CARGO_TARGET_DIR="$TARGET_DIR/tools-build" \
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$TARGET_DIR/fuzz"

run() { # crate-dir target
  local corpus="$TARGET_DIR/fuzz-corpus/$1/$2" log="$TARGET_DIR/fuzz/$1-$2.log"
  mkdir -p "$corpus" "$TARGET_DIR/fuzz"
  echo "== fuzz $1:$2 for ${SECS}s (corpus $corpus)"
  if (cd "$1" && cargo fuzz run --sanitizer none "$2" "$corpus" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  else
    tail -n 40 "$log"
    echo "fuzz $1:$2 FAILED (full log: $log)"
    return 1
  fi
}

status=0
for t in policy:parse policy:decide coral-privhelper:decode; do
  run "${t%%:*}" "${t##*:}" || status=1
done
exit $status
