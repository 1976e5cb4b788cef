#!/usr/bin/env bash
# fwd_sm90's dynamic form with the static form's L2 pair groups (issue 13), and the decode placement probe (issue
# 11), in one call on an H100/H200 (~5 min): build; sm90_check.py's A/B of pingpong, pingpong-persistent and
# pingpong-dynamic (float64 cases of each, then timing beside cuDNN) on the causal preset and on the d64 one; the
# dynamic form's GPU tests; then decode_placement.py. Everything lands in $OUT/dyn.tgz.
#   OUT=dir bash bench/device/sm90_dynamic_groups.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs dyn.tgz
af_build
timeout 150 python3 bench/device/sm90_check.py --shapes causal --budget 140 --out "$OUT/causal" \
  --variants pingpong,pingpong-persistent,pingpong-dynamic | grep -E "^  (b[0-9]|shape|faster)|PASS|FAIL"
record "sm90_check A/B causal preset" $?
timeout 130 python3 bench/device/sm90_check.py --shapes d64 --budget 120 --out "$OUT/d64" \
  --variants pingpong-persistent,pingpong-dynamic | grep -E "^  (b[0-9]|shape|faster)|PASS|FAIL"
record "sm90_check A/B d64 preset" $?
ATTNFORGE_FWD_SM90=1 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_forward_sm90.py -k dynamic \
  >"$OUT/pytest-dynamic.log" 2>&1
rc=$?  # before the record line: its $(tail ...) would set $? first
record "test_forward_sm90.py -k dynamic ($(tail -1 "$OUT/pytest-dynamic.log"))" $rc
(cd bench/device && timeout 120 python3 decode_placement.py "$OUT/placement.md")
record "decode_placement.py" $?
af_summary
