#!/usr/bin/env bash
# The Homebrew formula and the launchd plist (part of make package-test):
# ruby -c, the formula DSL evaluated by packaging/test/brew_loader.rb, and
# the plist read by Python's plistlib with its socket mode as a decimal integer.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ruby -c "$root/packaging/homebrew/coral.rb" >/dev/null
ruby "$here/brew_loader.rb" "$root/packaging/homebrew/coral.rb" "$root"
python3 - "$root/packaging/homebrew/dev.coral.privhelper.plist" <<'PY'
import plistlib, sys
with open(sys.argv[1], "rb") as f:
    p = plistlib.load(f)
assert p["Label"] == "dev.coral.privhelper", p
assert p["ProgramArguments"][0].endswith("/libexec/coral-privhelper"), p
assert p.get("UserName") == "root", p
listener = p["Sockets"]["Listener"]
assert listener["SockPathName"] == "/var/run/coral/privhelper.sock", listener
mode = listener["SockPathMode"]
# A decimal integer in the plist (an <integer>), not an octal string.
assert type(mode) is int and mode == 0o666, mode
assert listener.get("SockType", "stream") == "stream", listener
print(f"plist ok: {p['Label']}, socket {listener['SockPathName']} mode {mode} (0{mode:o})")
PY
