#!/usr/bin/env bash
# fwd_sm90's two Q tiles and cross-tile pipeline (AF_Q_BUFFERS=2: the persistent forms up to d128 load the next
# tile's Q while the consumers work on this one, and issue each tile's last P V with the next tile's first
# Q K^T) against one Q tile ($ATTNFORGE_SM90_Q_BUFFERS=1: neither), on an H100/H200, in two calls (~2 and ~4 min):
#   OUT=dir bash bench/device/sm90_q_buffers_ab.sh check    # correctness
#   OUT=dir bash bench/device/sm90_q_buffers_ab.sh timing   # speed, then the remaining sanitizers
# check: pytest tests/gpu/test_forward_sm90.py (float64 reference; every schedule and form, sequences,
#   windows) while compute-sanitizer's memcheck runs sm90_check.py's --quick set (a case of 576 query tiles:
#   several per CTA, some of them empty) through pingpong-persistent and pingpong-persistent-tma-store.
# timing: sm90_check.py's timing stage at d64 and d128 (fwd_sm90 beside cuDNN, 512 to 16k keys at 16k tokens
#   per call, causal and not) with two Q tiles, one, two, one (q_buffers_ab.md); then memcheck through
#   pingpong-dynamic, overlap-persistent and pingpong-persistent@192, racecheck and synccheck through
#   pingpong-persistent.
# AF_SECONDS sets each timing run's budget (default 55). Outputs leave as $OUT/q_buffers-MODE.tgz; one
# PASS/FAIL line per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
mode=${1:-check}
source bench/device/lib.sh
af_pack_outputs "q_buffers-$mode.tgz"
af_build

if [ "$mode" = check ]; then
  af_sanitize_start "pingpong-persistent pingpong-persistent-tma-store" memcheck 420
  echo "== pytest tests/gpu/test_forward_sm90.py"
  timeout 400 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_forward_sm90.py 2>&1 | tail -4
  record "pytest test_forward_sm90.py" "${PIPESTATUS[0]}"
  af_sanitize_wait
else
  echo "== timing: two Q tiles, one, two, one"
  af_knob_timing ATTNFORGE_SM90_Q_BUFFERS 1 64,128 512,1024,2048,4096,16384 "${AF_SECONDS:-55}" \
    "$OUT/q_buffers_ab.md"
  echo "== sanitizers"
  af_sanitize_start "pingpong-dynamic overlap-persistent pingpong-persistent@192" memcheck 200
  af_sanitize_start pingpong-persistent "racecheck synccheck" 200
  af_sanitize_wait
fi
af_summary
