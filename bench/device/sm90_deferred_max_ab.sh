#!/usr/bin/env bash
# fwd_sm90's softmax order, A/B on an H100/H200 in one call (~6 min): the block max after the exps (each step's P V
# issued before its S, softmax_deferred in src/kernels/fwd_sm90/flash_fwd_sm90.cuh; the default on the measured
# 128 x 128 tiles, sm90_deferred_max in src/cuda/families.cpp) against the block max first and against every 128-row
# tile deferred:
#   OUT=dir bash bench/device/sm90_deferred_max_ab.sh
# 1. pytest tests/gpu/test_forward_sm90.py with ATTNFORGE_SM90_DEFERRED_MAX=1 (every form and case on deferred tiles,
#    the rising-score and beyond-exp2 cases among them).
# 2. sm90_check.py's timing stage (fwd_sm90 beside cuDNN, bf16, 512 to 16k keys at 16k tokens per call, causal and
#    not, d64/d128/d256 and the 64/8 GQA rows) in two rounds of: default; =0 (the block max first everywhere); =1
#    (every 128-row tile deferred), one process each (deferred_max_ab.md).
# AF_SECONDS sets each timing run's budget (default 45); AF_SETTINGS replaces the settings timed beside the default
# (af_knob_timing's "-" form). Outputs leave as $OUT/deferred_max.tgz; one PASS/FAIL line per step at the end; exit
# status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs deferred_max.tgz
af_build
echo "== pytest tests/gpu/test_forward_sm90.py, ATTNFORGE_SM90_DEFERRED_MAX=1"
ATTNFORGE_SM90_DEFERRED_MAX=1 timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_forward_sm90.py \
  2>&1 | tail -3
record "pytest test_forward_sm90.py (deferred max)" "${PIPESTATUS[0]}"
echo "== timing: default, ATTNFORGE_SM90_DEFERRED_MAX=0, =1; two rounds"
af_knob_timing - "${AF_SETTINGS:-ATTNFORGE_SM90_DEFERRED_MAX=0 ATTNFORGE_SM90_DEFERRED_MAX=1}" 64,128,256 \
  512,1024,2048,16384 "${AF_SECONDS:-45}" "$OUT/deferred_max_ab.md"
af_summary
