#!/usr/bin/env bash
# fwd_sm90's K/V ring depth and the decode wide-grid tile on an H100/H200, one call (< 8 min):
#   OUT=dir bash bench/device/stages_ab.sh
# 1. compute-sanitizer memcheck, racecheck, synccheck on sm90_check's --quick set with the deeper ring
#    ($AF_STAGES, default "128:3;64:4" for ATTNFORGE_SM90_STAGES) through pingpong-persistent and its
#    TMA-store form (which then stages O in Q's buffer at d128), all at once;
# 2. pytest: tests/gpu/test_decode.py (wide-grid, split and paged-loader cases) and tests/gpu/test_forward_sm90.py,
#    as built (defaults: the TMA-store form up to 1k keys);
# 3. the A/B of pingpong-persistent and pingpong-persistent-tma-store beside cuDNN (sm90_check.py --variants), once
#    as built (2 stages) and once with $AF_STAGES;
# 4. ncu of one decode step, B128 x 4k keys, the contiguous cache and pages of 256 rows in order (same addresses,
#    same order: only the loader differs).
# One PASS/FAIL line per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
STAGES="${AF_STAGES:-128:3;64:4}"
AB=pingpong-persistent,pingpong-persistent-tma-store
af_build

echo "== 1. sanitizers with ATTNFORGE_SM90_STAGES=$STAGES"
ATTNFORGE_SM90_STAGES="$STAGES" af_sanitize_start "${AB//,/ }" "memcheck racecheck synccheck" 300
af_sanitize_wait

echo "== 2. pytest"
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_decode.py \
  -k "wide_grid or splits or paged_loader" 2>&1 | tail -3
record "pytest test_decode (wide grid, splits, paged loader)" $?
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_forward_sm90.py 2>&1 | tail -3
record "pytest test_forward_sm90" $?

echo "== 3. A/B $AB: 2 stages, then $STAGES"
timeout 240 python3 bench/device/sm90_check.py --variants "$AB" --budget 220 --out "$OUT/ab-2stages"
record "A/B 2 stages" $?
ATTNFORGE_SM90_STAGES="$STAGES" timeout 240 python3 bench/device/sm90_check.py --variants "$AB" --budget 220 \
  --out "$OUT/ab-stages"
record "A/B stages $STAGES" $?
grep "^|" "$OUT/ab-2stages/ab.md" 2>/dev/null || true
grep '^|' "$OUT/ab-stages/ab.md" 2>/dev/null || true

echo "== 4. ncu decode B128 x 4k: contiguous, then pages of 256"
for page in 0 256; do
  (cd bench/device && timeout 120 ncu --clock-control none --kernel-name regex:af_decode_fwd --launch-skip 2 \
    --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section SchedulerStats --section LaunchStats --section Occupancy \
    --metrics dram__bytes_read.sum,lts__t_sectors_op_read.sum,lts__t_requests_srcunit_tex_op_read.sum,smsp__inst_executed.sum,smsp__inst_executed_op_ldgsts.sum,lts__t_sector_op_read_hit_rate.pct \
    python3 profile_decode_one.py --page "$page") >"$OUT/ncu-decode-page$page.txt" 2>&1
  record "ncu decode page $page" $?
  grep -E 'profiled|Duration|DRAM Throughput|dram__bytes_read|lts__t_sectors_op_read|lts__t_requests|inst_executed|hit_rate|Issue Slots Busy|No Eligible|Registers Per|Achieved Occ' \
    "$OUT/ncu-decode-page$page.txt" | head -16
done

af_summary
