#!/usr/bin/env bash
# Decode-family A/B on a GPU machine: builds, runs tests/gpu, then the decode benchmark once per
# $ATTNFORGE_DECODE_TILE candidate (head dim: warps, stages), and the host-time probe.
# Usage: OUT=dir bash bench/device/tune_decode.sh ["128:4,4" "128:8,2" ...]   ("" = defaults)
# AF_DECODE_BENCH_ARGS replaces decode_bench.py's arguments (default --quick); AF_SKIP_PYTEST=1 and
# AF_SKIP_HOST_TIME=1 leave those steps out.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/bench-out}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python" ATTNFORGE_CACHE_DIR=/tmp/attnforge-tune-cache
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null &&
  ninja -C build-device libattnforge.so attnforge >/dev/null || { echo "BUILD FAILED"; exit 1; }
export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"
[ -n "${AF_SKIP_PYTEST:-}" ] || timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/gpu 2>&1 | tail -15
cd bench/device
for tile in "" "$@"; do
  echo "== ATTNFORGE_DECODE_TILE=$tile"
  # shellcheck disable=SC2086  # the arguments are words
  ATTNFORGE_DECODE_TILE="$tile" timeout 200 python3 decode_bench.py ${AF_DECODE_BENCH_ARGS:---quick} \
    --prefix "$OUT/decode-tile-$(tr ':,;' '___' <<<"${tile:-default}")" | cut -d'|' -f2-12
done
[ -n "${AF_SKIP_HOST_TIME:-}" ] || python3 host_time.py "$OUT/host-time.md" | tail -6
