#!/bin/sh
# coral: before the files go (Debian prerm; RPM %preun).
# Debian: $1 = remove | upgrade | deconfigure | failed-upgrade.
# RPM: $1 = how many versions remain (0: erase).
set -e

case "$1" in
  remove|deconfigure|0) ;;
  *) exit 0 ;;  # an upgrade: leave everything running
esac

# Removing the package stops its processes: the helper and its socket, then
# every colony and agent started from /usr/bin/coral (their TUN devices and
# BPF programs go with their fds).
if [ -d /run/systemd/system ]; then
  systemctl disable --now coral-privhelper.socket coral-privhelper.service >/dev/null 2>&1 || true
else
  systemctl disable coral-privhelper.socket >/dev/null 2>&1 || true
fi
pids=""
for p in /proc/[0-9]*; do
  # A daemon started before an upgrade runs the replaced file: "(deleted)".
  case "$(readlink "$p/exe" 2>/dev/null)" in
    "/usr/bin/coral" | "/usr/bin/coral (deleted)") pids="$pids ${p#/proc/}" ;;
  esac
done
if [ -n "$pids" ]; then
  echo "coral: stopping colony/agent processes:$pids"
  kill -TERM $pids 2>/dev/null || true
  i=0
  while [ $i -lt 100 ]; do
    alive=""
    for pid in $pids; do
      [ -d "/proc/$pid" ] && alive="$alive $pid"
    done
    [ -n "$alive" ] || break
    sleep 0.1
    i=$((i + 1))
  done
  [ -z "$alive" ] || kill -KILL $alive 2>/dev/null || true
fi
exit 0
