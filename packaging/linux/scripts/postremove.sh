#!/bin/sh
# coral: after the files are gone (Debian postrm; RPM %postun).
# Debian: $1 = remove | purge | upgrade | ... RPM: $1 = versions left (0: erase).
# Debian keeps the helper's state (the WireGuard key) until purge; RPM has no
# purge, so erase removes it.
set -e

[ -d /run/systemd/system ] && systemctl daemon-reload >/dev/null 2>&1 || true

case "$1" in
  purge|0)
    rm -rf /var/lib/coral-privhelper /run/coral
    rm -f /etc/systemd/system/sockets.target.wants/coral-privhelper.socket
    rmdir /etc/coral 2>/dev/null || true
    ;;
esac
exit 0
