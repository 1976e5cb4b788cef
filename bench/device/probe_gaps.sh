#!/usr/bin/env bash
# Two probes on an H100/H200 (< 4 min): where paged decode's B128 gap comes from (paged_gap.py), and the
# instruction mix of fwd_sm90 against cuDNN at d128 8 x 2k non-causal (ncu InstructionStats, per opcode).
#   OUT=dir bash bench/device/probe_gaps.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build
cd bench/device || exit 1
echo "== paged gap"
timeout 120 python3 paged_gap.py --batch 128 --keys 4096 --page 256 || status=1
timeout 120 python3 paged_gap.py --batch 128 --keys 4096 --page 16 || status=1
echo "== ncu instruction mix, d128 8 x 2k non-causal"
for impl in attnforge cudnn; do
  filter=(--kernel-name regex:af_flash_fwd_sm90 --launch-skip 2 --launch-count 1)
  [ "$impl" = cudnn ] && filter=(--launch-skip 5 --launch-count 1)
  timeout 150 ncu --clock-control none "${filter[@]}" --section InstructionStats --section WarpStateStats \
    --print-metric-instances values --metrics smsp__inst_executed.sum,smsp__pcsamp_warps_issue_stalled_barrier,smsp__pcsamp_warps_issue_stalled_long_scoreboard \
    python3 profile_one.py 128 2048 --impl "$impl" >"$OUT/ncu-mix-$impl.txt" 2>&1 || status=1
  grep -E '^  [a-z_A-Z].*\(|inst_executed|sass__inst_executed_per_opcode|Executed Instructions|Stall' "$OUT/ncu-mix-$impl.txt" | cut -c1-400 | head -20
done
exit $status
