#!/usr/bin/env bash
# Batch-1 decode at d64 (16/16 heads), where attnforge trails cuDNN most (issue 11), in one call on an H100/H200
# (< 5 min), timings alone:
# 1. decode_splits.py on the d64 batch-1 shapes (every forced split count, the planned one, cuDNN) with the
#    default tile and each $AF_TILES entry ($ATTNFORGE_DECODE_TILE: "64:warps,stages");
# 2. ncu on the planned d64 B1 x 1k kernel: launch, occupancy, speed of light, warp states and the source
#    counters, then the per-instruction (SASS) view as CSV where this ncu prints one.
# Everything lands in $OUT/decode-latency.tgz.
#   OUT=dir [AF_TILES="64:4,2 64:4,4"] bash bench/device/decode_latency_probe.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs decode-latency.tgz
af_build
for tile in default ${AF_TILES:-64:4,2 64:4,3 64:4,4 64:2,4}; do
  echo "-- tile $tile"
  knob=$tile
  [ "$tile" = default ] && knob=""
  (cd bench/device && ATTNFORGE_DECODE_TILE="$knob" timeout 120 python3 decode_splits.py \
    "$OUT/splits-${tile//[:,]/_}.md" "d64 B1")
  record "decode_splits tile $tile" $?
done
echo "-- ncu d64 B1 x 1k"
(cd bench/device && timeout 120 ncu --clock-control none --kernel-name regex:af_decode --launch-skip 2 \
  --launch-count 1 --section LaunchStats --section Occupancy --section SpeedOfLight --section WarpStateStats \
  --section SourceCounters --section MemoryWorkloadAnalysis -o "$OUT/ncu-d64-b1-1k" -f \
  python3 profile_decode_one.py --batch 1 --keys 1024 --heads 16 --heads-kv 16 --head-dim 64) >"$OUT/ncu.log" 2>&1
record "ncu" $?
ncu --import "$OUT/ncu-d64-b1-1k.ncu-rep" --print-details all >"$OUT/ncu-details.txt" 2>&1
grep -E 'Duration|Grid Size|Block Size|Registers|Shared Memory|Warp Cycles Per Issued|Stall|Achieved|Eligible|Issued Warp' \
  "$OUT/ncu-details.txt" | cut -c1-150 | head -50
ncu --import "$OUT/ncu-d64-b1-1k.ncu-rep" --page source --csv --print-source sass >"$OUT/ncu-sass.csv" 2>&1
record "ncu source page" $?
head -c 600 "$OUT/ncu-sass.csv"
af_summary
