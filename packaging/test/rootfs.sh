#!/usr/bin/env bash
# Prints the path of a cached Debian bookworm rootfs tarball for the package
# test, making it with debootstrap the first time (about 75 s; a mirror of
# deb.debian.org must be reachable). The cache lives outside the clone:
# ${CORAL_ROOTFS_CACHE:-/var/cache/coral}/rootfs-bookworm-<hash>.tar, where the
# hash covers the suite and the package list, so changing either makes a new one.
set -euo pipefail
suite=bookworm
mirror=${CORAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd boots it; dbus for logind; iproute2 to look for TUN devices;
# python3 serves HTTP for the eBPF check; curl is the client;
# ca-certificates is a dependency of the coral package; rpm upgrades and
# erases the .rpm from inside the booted container.
include=systemd,systemd-sysv,dbus,iproute2,python3,curl,ca-certificates,rpm
cache=${CORAL_ROOTFS_CACHE:-/var/cache/coral}
key=$(printf '%s %s minbase\n' "$suite" "$include" | sha256sum | cut -c1-12)
tarball=$cache/rootfs-$suite-$key.tar
mkdir -p "$cache"
exec 9>"$tarball.lock"
flock 9
if [[ ! -s $tarball ]]; then
  tmp=$(mktemp -d "$cache/rootfs-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "package-test: debootstrap $suite into $tmp (once; cached as $tarball)" >&2
  debootstrap --variant=minbase --include="$include" "$suite" "$tmp/root" "$mirror" >"$tmp/log" 2>&1 \
    || { tail -20 "$tmp/log" >&2; echo "debootstrap failed (is $mirror reachable?)" >&2; exit 1; }
  # No apt lists or package cache in the image: nothing installs from the network later.
  rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"*
  tar -C "$tmp/root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  # Older package lists' images are not used again.
  find "$cache" -maxdepth 1 -name "rootfs-$suite-*.tar*" ! -name "$(basename "$tarball")*" -delete
fi
echo "$tarball"
