#!/usr/bin/env bash
# Programmatic dependent launch (fwd_sm90 and decode on sm_90+) against ordinary launches, in one call on an
# H100/H200 (< 6 min): build; tests/gpu's decode and fwd_sm90 files with PDL on (the default); then alone, in
# the order off, on, off, on: fwd_sm90's sweep (sm90_check.py --stage timing, cuDNN timed in each run as the
# anchor) and decode_bench.py at 18 points. ATTNFORGE_PDL=0 is the off switch.
#   OUT=dir bash bench/device/pdl_ab.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_decode.py tests/gpu/test_forward_sm90.py \
  tests/gpu/test_kvcache_append.py >"$OUT/pytest-gpu.log" 2>&1
rc=$?
record "tests/gpu decode + fwd_sm90 with PDL ($(tail -1 "$OUT/pytest-gpu.log"))" $rc
for round in 1 2; do
  for pdl in 0 1; do
    echo "== round $round, ATTNFORGE_PDL=$pdl"
    ATTNFORGE_PDL=$pdl timeout 100 python3 bench/device/sm90_check.py --stage timing --out "$OUT/sm90-$pdl-$round" \
      --seconds 80 | grep -E "TFLOP/s" | sed 's/TFLOP\/s//'
    record "sm90 timing PDL=$pdl round $round" $?
    (cd bench/device && ATTNFORGE_PDL=$pdl timeout 80 python3 decode_bench.py --prefix "$OUT/decode-$pdl-$round" \
      --configs bf16:32/8:128,bf16:16/16:64 --batches 1,8,32 --lengths 1024,4096,32768) |
      grep '^| bfloat16' | cut -d'|' -f2-11
    record "decode_bench PDL=$pdl round $round" $?
  done
done
af_summary
