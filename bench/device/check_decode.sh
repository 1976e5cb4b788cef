#!/usr/bin/env bash
# Issue 11's item-7 checks on an H100/H200 in one call (< 10 min), then an optional fwd_sm90 A/B in the time left:
#   OUT=dir [AF_AB_VARIANTS=pingpong-persistent,pingpong-persistent+128:176] bash bench/device/check_decode.sh
# 1. in the background: compute-sanitizer memcheck, racecheck and synccheck over tests/gpu/sanitize_cases.py
#    (decode: split keys, shuffled pages of 1 to 1024 rows with garbage table entries, leftpad, kv_batch_idx,
#    programmatic dependent launches back to back, flash_attn_with_kvcache's rotary and append) and memcheck and
#    racecheck over decode_cluster_check.py (the cluster merge), plus memcheck and racecheck on sm90_check.py's
#    --quick set through each $AF_AB_VARIANTS entry;
# 2. tests/gpu in full (float64 references), meanwhile;
# 3. with $AF_AB_VARIANTS: sm90_check.py --variants (their correctness on the reduced set, then timing beside
#    cuDNN), alone, within the seconds left of $AF_BUDGET (default 540).
# One PASS/FAIL line per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
start=$SECONDS
source bench/device/lib.sh
af_build

echo "== 1. sanitizers (background)"
for tool in memcheck racecheck synccheck; do
  af_sanitize_run $tool sanitize_cases 300 python3 tests/gpu/sanitize_cases.py
done
for tool in memcheck racecheck; do
  af_sanitize_run $tool decode_cluster_check 300 python3 bench/device/decode_cluster_check.py
done
[ -n "${AF_AB_VARIANTS:-}" ] && af_sanitize_start "${AF_AB_VARIANTS//,/ }" "memcheck racecheck" 300

echo "== 2. tests/gpu"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu >"$OUT/pytest-gpu.log" 2>&1
rc=$?  # before the tail below
record "tests/gpu ($(tail -1 "$OUT/pytest-gpu.log"))" $rc
tail -3 "$OUT/pytest-gpu.log"
af_sanitize_wait

if [ -n "${AF_AB_VARIANTS:-}" ]; then
  left=$((${AF_BUDGET:-540} - (SECONDS - start)))
  echo "== 3. sm90_check.py --variants $AF_AB_VARIANTS ($left s left)"
  if [ "$left" -gt 60 ]; then
    timeout $((left + 5)) python3 bench/device/sm90_check.py --variants "$AF_AB_VARIANTS" --budget "$left" \
      --out "$OUT/ab"
    record "sm90_check A/B" $?
  else
    record "sm90_check A/B (no time left)" 1
  fi
fi
date -u
af_summary
