#!/bin/sh
# coral: after the files are in place (Debian postinst; RPM %post).
# Debian: $1 = configure, $2 = the version being upgraded from (empty on a
# first install). RPM: $1 = how many versions are installed (1: first install).
set -e

upgrade=no
case "$1" in
  configure) [ -z "$2" ] || upgrade=yes ;;
  abort-upgrade|abort-remove|abort-deconfigure) exit 0 ;;
  [0-9]*) [ "$1" -le 1 ] || upgrade=yes ;;
esac

# The group first: the socket is chowned to it when it is created.
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers coral.conf
elif ! getent group coral >/dev/null; then
  groupadd --system coral
fi

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "$upgrade" = yes ]; then
    # Only the helper restarts (its socket stays, so no caller is refused);
    # the users' colonies and agents keep running and keep their fds.
    systemctl try-restart coral-privhelper.service
    systemctl start coral-privhelper.socket
  else
    systemctl enable --now coral-privhelper.socket
  fi
else
  # No running systemd (a chroot, an image build): enable for the next boot.
  systemctl enable coral-privhelper.socket >/dev/null 2>&1 || true
fi
exit 0
