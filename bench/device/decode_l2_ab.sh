#!/usr/bin/env bash
# Decode probes in one call on an H100/H200 (< 8 min): build; tests/gpu's decode and fwd_sm90 files with
# memcheck and racecheck of fwd_sm90's dynamic forms in the background; then alone: decode_bench.py at
# 24 points (bf16 32/8 d128 and 16/16 d64, B 1/8/32/128 x 1k/4k/32k) without and with cp.async's L2
# prefetch hint ($ATTNFORGE_CP_ASYNC_L2=128, 256; cuDNN timed in each run as the anchor), and
# decode_splits.py (every forced key-split count) with the cluster merge on and off.
#   OUT=dir bash bench/device/decode_l2_ab.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build

echo "== 1. correctness: decode and fwd_sm90 tests, dynamic forms under sanitizers"
af_sanitize_start "pingpong-dynamic overlap-dynamic" "memcheck racecheck"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_decode.py tests/gpu/test_forward_sm90.py \
  tests/gpu/test_kvcache_append.py >"$OUT/pytest-gpu.log" 2>&1
record "tests/gpu decode + fwd_sm90 ($(tail -1 "$OUT/pytest-gpu.log"))" $?
af_sanitize_wait

echo "== 2. cp.async L2 prefetch A/B"
for l2 in none 256 128; do
  echo "-- ATTNFORGE_CP_ASYNC_L2=$l2"
  (cd bench/device && ATTNFORGE_CP_ASYNC_L2=$([ $l2 = none ] || echo $l2) timeout 120 python3 decode_bench.py \
    --prefix "$OUT/decode-l2-$l2" --configs bf16:32/8:128,bf16:16/16:64 --batches 1,8,32,128 \
    --lengths 1024,4096,32768) | grep '^| bfloat16' | cut -d'|' -f2-11
  record "decode_bench L2=$l2" $?
done

echo "== 3. forced key splits, cluster merge on, then off"
for cluster in 1 0; do
  echo "-- ATTNFORGE_DECODE_CLUSTER=$cluster"
  (cd bench/device && ATTNFORGE_DECODE_CLUSTER=$cluster timeout 150 python3 decode_splits.py "$OUT/splits-$cluster.md")
  record "decode_splits cluster=$cluster" $?
done
af_summary
