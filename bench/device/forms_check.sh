#!/usr/bin/env bash
# Checks for fwd_sm90's opt-in forms and a profile beside cuDNN, in one call on an H100/H200 (< 9 min):
#   OUT=dir bash bench/device/forms_check.sh
# 1. compute-sanitizer memcheck, racecheck and synccheck on sm90_check's --quick set through each form in
#    $AF_FORMS (default: the two TMA-store forms and pingpong-dynamic), all jobs at once (correctness only);
# 2. A/B timing of $AF_AB_VARIANTS (sm90_check.py --variants: float64 cases per variant, then 16 shapes
#    beside cuDNN);
# 3. ncu (--clock-control none) of one d128 8 x 2k non-causal call: attnforge's kernel, then cuDNN's;
# 4. decode at B128 x 1k/4k/32k beside SDPA flash and cuDNN (paged columns for 32/8 bf16), with the default
#    tile and each $AF_DECODE_TILES entry.
# One PASS/FAIL line per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
FORMS="${AF_FORMS:-pingpong-persistent-tma-store overlap-persistent-tma-store pingpong-dynamic}"
AB="${AF_AB_VARIANTS:-pingpong-persistent,pingpong-persistent-tma-store,pingpong-dynamic}"
TILES="${AF_DECODE_TILES:-128:4,3}"
af_build

echo "== 1. sanitizers ($FORMS)"
af_sanitize_start "$FORMS" "memcheck racecheck synccheck" 300
af_sanitize_wait

echo "== 2. A/B $AB"
timeout 240 python3 bench/device/sm90_check.py --variants "$AB" --budget 220 --out "$OUT/ab"
record "A/B $AB" $?
cat "$OUT/ab/ab.md" 2>/dev/null

echo "== 3. ncu d128 8 x 2k non-causal"
for impl in attnforge cudnn; do
  # attnforge: its kernel by name; cuDNN: the 6th and 7th launches (3 randn and 2 warm-up calls before)
  filter=(--kernel-name regex:af_flash_fwd_sm90 --launch-skip 2 --launch-count 1)
  [ "$impl" = cudnn ] && filter=(--launch-skip 5 --launch-count 2)
  (cd bench/device && timeout 150 ncu --clock-control none "${filter[@]}" \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
    --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis \
    python3 profile_one.py 128 2048 --impl "$impl") >"$OUT/ncu-$impl.txt" 2>&1
  record "ncu $impl" $?
  grep -E '^  [a-zA-Z_].*\(|Duration|Compute \(SM\) Throughput|Issue Slots Busy|Executed Ipc Active|No Eligible|Registers Per|Warp Cycles Per Issued' "$OUT/ncu-$impl.txt" | head -20
done

echo "== 4. decode B128 tiles: default $TILES"
for tile in "" $TILES; do
  echo "-- ATTNFORGE_DECODE_TILE=$tile"
  (cd bench/device && ATTNFORGE_DECODE_TILE="$tile" timeout 150 python3 decode_bench.py \
    --batches 128 --lengths 1024,4096,32768 --prefix "$OUT/decode-b128-$(tr ':,;' '___' <<<"${tile:-default}")") |
    cut -d'|' -f2-13
  record "decode tile ${tile:-default}" $?
done

af_summary
