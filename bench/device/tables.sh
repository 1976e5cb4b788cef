#!/usr/bin/env bash
# The two result tables in one call on an H100/H200 (< 10 min): the decode table (decode_bench.py, every shape
# of issue 11 beside SDPA flash and cuDNN, paged pairs interleaved) and fwd_sm90's sweep with its float64
# cases (sm90_check.py). Writes decode-<gpu>.{md,json,png} and sm90/ under $OUT. AF_WITH_TESTS=1 runs
# tests/gpu first, alone (about 4 minutes more); AF_TABLES="sm90" or "decode" makes only that table.
#   OUT=dir bash bench/device/tables.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build
gpu=$(python3 -c 'import torch; n=torch.cuda.get_device_name().lower(); print("h200" if "h200" in n else "h100" if "h100" in n else n.split()[-1])')
if [ "${AF_WITH_TESTS:-0}" = 1 ]; then
  echo "== tests/gpu"
  timeout 320 python3 -m pytest -q -p no:cacheprovider tests/gpu >"$OUT/pytest-gpu.log" 2>&1 || status=1
  tail -3 "$OUT/pytest-gpu.log"
fi
tables=" ${AF_TABLES:-sm90 decode} "
if [[ $tables == *" sm90 "* ]]; then
  echo "== fwd_sm90 sweep"
  timeout 260 python3 bench/device/sm90_check.py --out "$OUT/sm90" --budget 250 || status=1
fi
if [[ $tables == *" decode "* ]]; then
  echo "== decode table"
  (cd bench/device && timeout 330 python3 decode_bench.py --prefix "$OUT/decode-$gpu") | cut -d'|' -f2-13 || status=1
fi
date -u
exit $status
