#!/usr/bin/env bash
# Decode probes in one call on an H100/H200 (< 8 min): build; tests/gpu's decode and fwd_sm90 files with
# memcheck and racecheck of fwd_sm90's dynamic forms in the background; then alone decode_splits.py (every
# forced key-split count beside the planned one and cuDNN) with the cluster merge on and off.
#   OUT=dir bash bench/device/decode_probes.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build

echo "== 1. correctness: decode and fwd_sm90 tests, dynamic forms under sanitizers"
af_sanitize_start "pingpong-dynamic overlap-dynamic" "memcheck racecheck"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_decode.py tests/gpu/test_forward_sm90.py \
  tests/gpu/test_kvcache_append.py >"$OUT/pytest-gpu.log" 2>&1
rc=$?  # before the tail below, whose status $? would otherwise be
record "tests/gpu decode + fwd_sm90 ($(tail -1 "$OUT/pytest-gpu.log"))" $rc
af_sanitize_wait

echo "== 2. forced key splits, cluster merge on, then off"
for cluster in 1 0; do
  echo "-- ATTNFORGE_DECODE_CLUSTER=$cluster"
  (cd bench/device && ATTNFORGE_DECODE_CLUSTER=$cluster timeout 150 python3 decode_splits.py "$OUT/splits-$cluster.md")
  record "decode_splits cluster=$cluster" $?
done
af_summary
