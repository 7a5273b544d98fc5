#!/usr/bin/env bash
# make build-dev: for developers working from the tree. After 'make build',
# installs the helper built here and its systemd units (the package's, with
# ExecStart pointing at the copy), creates group coral, starts the socket and
# adds you to the group. No setcap: the colony and agent stay unprivileged
# and get TUN devices, keys and BPF from the helper, as with the packages.
# Uses sudo when not root; needs a running systemd.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
: "${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR (the Makefile does)}"
helper=$CARGO_TARGET_DIR/debug/coral-privhelper
[[ -x $helper ]] || { echo "$helper is missing: run 'make build' first" >&2; exit 1; }
[[ -d /run/systemd/system ]] || {
  echo "systemd is not running here: start the helper by hand with 'sudo $helper' instead" >&2
  exit 1
}
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
me=${SUDO_USER:-$(id -un)}
units=$root/packaging/linux/systemd
dest=/usr/local/libexec/coral/coral-privhelper

# A root-owned copy: a unit must never run a file that a user can rewrite.
$SUDO install -D -m 0755 -o root -g root "$helper" "$dest"
$SUDO install -D -m 0644 "$root/packaging/linux/sysusers-coral.conf" /etc/sysusers.d/coral.conf
$SUDO systemd-sysusers /etc/sysusers.d/coral.conf
[[ -e /etc/coral/privhelper.conf ]] || $SUDO install -D -m 0644 "$root/packaging/linux/privhelper.conf" /etc/coral/privhelper.conf
$SUDO install -m 0644 "$units/coral-privhelper.socket" /etc/systemd/system/coral-privhelper.socket
sed "s|^ExecStart=/usr/libexec/coral/coral-privhelper|ExecStart=$dest|" "$units/coral-privhelper.service" |
  $SUDO tee /etc/systemd/system/coral-privhelper.service >/dev/null
$SUDO systemctl daemon-reload
$SUDO systemctl enable --now coral-privhelper.socket
# A helper still running the previous build restarts with this one.
$SUDO systemctl try-restart coral-privhelper.service
if [[ $me != root ]] && ! id -nG "$me" | tr ' ' '\n' | grep -qx coral; then
  $SUDO usermod -aG coral "$me"
  echo "added $me to group coral: log in again (or run 'newgrp coral') before 'coral colony start'"
fi
echo "coral-privhelper.socket is listening on /run/coral/privhelper.sock; 'coral doctor' checks the rest"
