#!/usr/bin/env bash
# Where fwd_sm90 loses at short causal tiles (512 keys: 0.84x cuDNN at d128, 0.70x at d256): ncu's
# speed of light, warp state (stall reasons) and scheduler sections for one launch of attnforge and of
# SDPA's cuDNN backend per shape, in one call on an H100/H200 (< 3 min):
#   OUT=dir bash bench/device/ncu_short_causal.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build
for shape in "128 512 causal" "256 512 causal" "128 4096 full"; do
  for impl in attnforge cudnn; do
    filter=(--kernel-name regex:af_flash_fwd_sm90 --launch-skip 2 --launch-count 1)
    [ "$impl" = cudnn ] && filter=(--kernel-name regex:fprop --launch-skip 2 --launch-count 1)
    name="ncu-${shape// /-}-$impl"
    (cd bench/device && timeout 60 ncu --clock-control none "${filter[@]}" --section SpeedOfLight \
      --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
      python3 profile_one.py $shape --impl "$impl") >"$OUT/$name.txt" 2>&1
    record "$name" $?
    echo "-- $name"
    grep -E 'Duration|Compute \(SM\) Throughput|Issue Slots Busy|Warp Cycles Per Issued|No Eligible|Grid Size|Registers Per|Achieved Occupancy|Stall' "$OUT/$name.txt" | cut -c1-130
  done
done
af_summary
