#!/usr/bin/env bash
# fwd_sm90's main loop with the block max after the exps (softmax_deferred in
# src/kernels/fwd_sm90/flash_fwd_sm90.cuh; the default at d128, src/cuda/families.cpp's sm90_deferred_max) against
# the block max first ($ATTNFORGE_SM90_DEFERRED_MAX=0), on an H100/H200, in one call (~6 min):
#   OUT=dir bash bench/device/sm90_deferred_max_ab.sh
# 1. sm90_check.py's timing stage at d128 (fwd_sm90 beside cuDNN, bf16, 2k and 16k keys at 16k tokens per call,
#    causal and not, and the 64/8 GQA rows) in two rounds of: no setting, the knob at 1, the knob at 0, one process
#    each (deferred_max_ab.md). No setting and 1 run the same d128 kernels: a difference between them is the
#    process's, not the kernel's.
# 2. pytest tests/gpu with the default.
# AF_SECONDS sets each timing run's budget (default 20). Outputs leave as $OUT/deferred_max.tgz; one PASS/FAIL line
# per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs deferred_max.tgz
af_build
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv,noheader
echo "== timing: no setting (the default), ATTNFORGE_SM90_DEFERRED_MAX=1, =0; two rounds"
af_knob_timing - "ATTNFORGE_SM90_DEFERRED_MAX=1 ATTNFORGE_SM90_DEFERRED_MAX=0" 128 2048,16384 "${AF_SECONDS:-20}" \
  "$OUT/deferred_max_ab.md"
echo "== pytest tests/gpu (default)"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -3
record "pytest tests/gpu (default)" "${PIPESTATUS[0]}"
af_summary
