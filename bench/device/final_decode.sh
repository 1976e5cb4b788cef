#!/usr/bin/env bash
# After decode changes, one call on an H100/H200 (< 9 min): build; compute-sanitizer memcheck and racecheck over
# tests/gpu/sanitize_cases.py in the background while tests/gpu runs in full; then, alone, the decode table
# (decode_bench.py: every shape of issue 11 beside SDPA flash and cuDNN, paged pairs). Writes $OUT/pytest-gpu.log,
# $OUT/sanitizer-*.log and $OUT/decode-<gpu>.{md,json,png}.
#   OUT=dir bash bench/device/final_decode.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build
gpu=$(python3 -c 'import torch; n=torch.cuda.get_device_name().lower(); print("h200" if "h200" in n else "h100" if "h100" in n else n.split()[-1])')
for t in memcheck racecheck; do
  af_sanitize_run $t sanitize_cases 280 python3 tests/gpu/sanitize_cases.py
done
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu >"$OUT/pytest-gpu.log" 2>&1
rc=$?
record "tests/gpu ($(tail -1 "$OUT/pytest-gpu.log"))" $rc
af_sanitize_wait
echo "== decode table"
(cd bench/device && timeout 420 python3 decode_bench.py --prefix "$OUT/decode-$gpu") | cut -d"|" -f2-13
record "decode table" $?
date -u
af_summary
