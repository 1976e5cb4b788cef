#!/usr/bin/env bash
# Where the remaining gaps to cuDNN come from, in one call on an H100/H200 (< 8 min), timings only (no step runs
# beside another):
# 1. fwd_sm90's key-block widths: sm90_block_n_ab.sh's timing runs (default, $AF_BLOCK_N, default, $AF_BLOCK_N);
# 2. decode_kernels.py: the kernels of latency-bound decode steps (batch 1) for attnforge and SDPA's backends;
# 3. sm90_backtoback.py: short causal prefill timed back to back, alone, eager and after an L2 flush.
# Everything lands in $OUT/latency-probes.tgz (the device returns few files) and the log.
#   OUT=dir bash bench/device/latency_probes.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs latency-probes.tgz
af_build
echo "== 1. key-block widths"
OUT="$OUT/block-n" AF_SKIP_CHECKS=1 AF_SECONDS="${AF_SECONDS:-50}" bash bench/device/sm90_block_n_ab.sh 2>&1 | tail -30
record "sm90_block_n_ab.sh timing" $?
echo "== 2. decode kernels"
(cd bench/device && timeout 120 python3 decode_kernels.py "$OUT/decode-kernels.md") | tail -60
record "decode_kernels.py" $?
echo "== 3. short causal back to back"
(cd bench/device && timeout 150 python3 sm90_backtoback.py) 2>&1 | tee "$OUT/backtoback.txt" | tail -30
record "sm90_backtoback.py" $?
af_summary
