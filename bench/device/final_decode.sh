#!/usr/bin/env bash
# After decode changes, one call on an H100/H200 (< 6 min): build; compute-sanitizer memcheck and racecheck over
# tests/gpu/sanitize_cases.py in the background while tests/gpu runs in full; then, alone, the decode table
# (decode_bench.py: every shape of issue 11 beside SDPA flash and cuDNN, paged pairs). Writes $OUT/pytest-gpu.log,
# $OUT/sanitizer-*.log and $OUT/decode-<gpu>.{md,json,png}.
#   OUT=dir bash bench/device/final_decode.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build
gpu=$(python3 -c 'import torch; n=torch.cuda.get_device_name().lower(); print("h200" if "h200" in n else "h100" if "h100" in n else n.split()[-1])')
pids=()
for t in memcheck racecheck; do
  (ATTNFORGE_CACHE_DIR=/tmp/af-san-$t timeout 280 compute-sanitizer --tool $t --error-exitcode 3 \
    python3 tests/gpu/sanitize_cases.py >"$OUT/sanitizer-$t.log" 2>&1) &
  pids+=($!)
done
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu >"$OUT/pytest-gpu.log" 2>&1
rc=$?
record "tests/gpu ($(tail -1 "$OUT/pytest-gpu.log"))" $rc
for i in 0 1; do
  wait "${pids[$i]}"
  rc=$?
  log="$OUT/sanitizer-$([ "$i" = 0 ] && echo memcheck || echo racecheck).log"
  grep -q "ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards" "$log" || [ $rc -ne 0 ] || rc=4
  record "$(basename "$log" .log) ($(grep -o '[A-Z]* SUMMARY.*' "$log" | tail -1))" $rc
done
echo "== decode table"
(cd bench/device && timeout 330 python3 decode_bench.py --prefix "$OUT/decode-$gpu") | cut -d'|' -f2-11
record "decode table" $?
date -u
af_summary
