#!/usr/bin/env bash
# fwd_sm90's key-block width ($ATTNFORGE_SM90_BLOCK_N, a tuning knob) on an H100/H200, one call (~5.5 min):
#   OUT=dir bash bench/device/sm90_block_n_ab.sh
# The knob is $AF_BLOCK_N, default "128:176;256:80" (FlashAttention-3's d128 non-causal and d256 tiles).
# 1. compute-sanitizer memcheck and racecheck on sm90_check.py's --quick set with the knob, through
#    pingpong-persistent and pingpong-persistent-tma-store (which at 128 x 176 stages O in Q's buffer), in the
#    background while step 2 runs;
# 2. pytest: tests/gpu/test_forward_sm90.py's block_n_forms tests with the knob (float64 reference; 1, 17, 177,
#    1000 and 4097 keys, causal and not, GQA, LSE, varlen; every schedule; the sequence and window cases), less
#    the fp16 runs of the 4097-key cases (their CPU references take the longest);
# 3. sm90_check.py's timing stage at d128 and d256 (fwd_sm90 beside cuDNN, 1k/4k/16k keys at 16k tokens per
#    call, causal and not, and the 64/8 GQA rows) with the knob unset, set, unset, set (each process times
#    cuDNN too, so the ratios are comparable), then one table of sm90/cuDNN per shape and run
#    ($OUT/block_n_ab.md).
# AF_SKIP_CHECKS=1 leaves out steps 1 and 2 (e.g. after check_decode.sh's A/B ran the knob's sanitizers and
# float64 cases); AF_SECONDS sets each timing run's budget (default 55).
# One PASS/FAIL line per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
BLOCK_N="${AF_BLOCK_N:-128:176;256:80}"
af_build

if [ "${AF_SKIP_CHECKS:-0}" != 1 ]; then
  echo "== 1. sanitizers with ATTNFORGE_SM90_BLOCK_N=$BLOCK_N (background)"
  ATTNFORGE_SM90_BLOCK_N="$BLOCK_N" af_sanitize_start "pingpong-persistent pingpong-persistent-tma-store" \
    "memcheck racecheck" 240

  echo "== 2. pytest block_n_forms with ATTNFORGE_SM90_BLOCK_N=$BLOCK_N"
  ATTNFORGE_SM90_BLOCK_N="$BLOCK_N" timeout 230 python3 -m pytest -q -x -p no:cacheprovider \
    tests/gpu/test_forward_sm90.py -k "block_n_forms and not (fp16 and 4097)" 2>&1 | tail -4
  rc=$?
  record "pytest block_n_forms ($BLOCK_N)" $rc
  af_sanitize_wait
fi

echo "== 3. timing: default, $BLOCK_N, default, $BLOCK_N"
af_knob_timing ATTNFORGE_SM90_BLOCK_N "$BLOCK_N" 128,256 1024,4096,16384 "${AF_SECONDS:-55}" "$OUT/block_n_ab.md"

af_summary
