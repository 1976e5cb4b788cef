#!/usr/bin/env bash
# Proof on an older userland (issue 6): builds a Debian 11 (bullseye, glibc 2.31)
# root with debootstrap, copies the library and the command in, and inside a
# chroot runs `attnforge info` and `attnforge selftest --library` (a CPU
# attention call checked against a float64 reference).
# Usage: bullseye_chroot.sh LIBRARY COMMAND ROOT_CACHE_DIR
set -euo pipefail
trap 'echo "FAIL: bullseye_chroot.sh line $LINENO: $BASH_COMMAND (exit $?)"' ERR
library=$1 command=$2 root=$3

if [ "$(id -u)" -ne 0 ] || ! command -v debootstrap >/dev/null; then
  # CI runs as root with debootstrap installed by .ci/run: there this must run.
  if [ "${CI:-}" = true ]; then echo "FAIL: needs root and debootstrap in CI"; exit 1; fi
  echo "SKIP: needs root and debootstrap"; exit 77
fi
if [ ! -x "$root/usr/bin/env" ]; then
  rm -rf "$root"
  debootstrap --variant=minbase bullseye "$root" http://deb.debian.org/debian >"$root.log" 2>&1 ||
    { tail -20 "$root.log"; echo "FAIL: debootstrap"; exit 1; }
fi
# No pipe into head: under pipefail a writer killed by SIGPIPE would stop the script silently.
ldd_out=$(chroot "$root" /usr/bin/ldd --version) || { echo "FAIL: ldd --version in the chroot"; exit 1; }
echo "chroot userland: ${ldd_out%%$'\n'*}"
mkdir -p "$root/opt/attnforge"
cp "$library" "$command" "$root/opt/attnforge/"
chroot "$root" /opt/attnforge/attnforge info
chroot "$root" /opt/attnforge/attnforge selftest --library /opt/attnforge/libattnforge.so
chroot "$root" /opt/attnforge/attnforge selftest
