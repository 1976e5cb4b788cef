#!/usr/bin/env bash
# Issue 11's paged target on one GPU in about two minutes: build libattnforge.so, run the paged
# decode tests of tests/gpu/test_decode.py (float64 reference; pools past 2^32 bytes and page
# strides past 32 bits: up to 17 GiB of GPU memory), then time contiguous vs paged decode
# (bf16 32/8 heads d128, B 8 and 128 x 4k and 32k keys, pages 16/64/256 in order and shuffled,
# the contiguous cache also through flash_attn_with_kvcache with cache_seqlens) with
# decode_bench.py --paged-only. Writes $OUT/paged-tests.log (with the seed) and
# $OUT/decode-paged-check.json (default ./bench-out).
# The last line is "PAGED CHECK PASSED" only when every test passed and every paged ratio is >= 0.95.
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export ATTNFORGE_CACHE_DIR="${ATTNFORGE_CACHE_DIR:-/tmp/attnforge-device-cache}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null &&
  ninja -C build-device libattnforge.so >/dev/null || { echo "BUILD FAILED"; echo "PAGED CHECK FAILED"; exit 1; }
export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"

echo "== paged decode tests (tests/gpu/test_decode.py -k paged)"
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_decode.py -k paged 2>&1 | tee "$OUT/paged-tests.log" | tail -30
tests=${PIPESTATUS[0]}

echo "== contiguous / paged time (>= 0.95 wanted at every point)"
(cd bench/device && python3 decode_bench.py --paged-only --batches 8,128 --lengths 4096,32768 \
  --prefix "$OUT/decode-paged-check")
bench=$?

echo "tests exit $tests, bench exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ] && echo "PAGED CHECK PASSED" || { echo "PAGED CHECK FAILED"; exit 1; }
