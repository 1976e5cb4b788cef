#!/usr/bin/env bash
# fwd_sm90's sliding windows and softcap (its extras variants) on an H100/H200, ~3 min after the build (at most
# 200 s for step 1 and 75 s for step 2, the limits of a hang):
#   1. at once: pytest's window/softcap cases (tests/gpu/test_forward_sm90.py -k "window or softcap": 22
#      cases against float64 and fwd_sm80, each naming fwd_sm90 in its plan), and compute-sanitizer memcheck
#      and racecheck over sm90_check.py's --quick set through pingpong-persistent and pingpong (the two
#      schedules with an extras form: the set's window/softcap cases run on their extras variants, the rest
#      on the plain ones);
#   2. alone: sm90_window_bench.py, fwd_sm90 vs fwd_sm80 (ATTNFORGE_FWD_SM90=0) on a 4096-key sliding
#      window over 16k keys at d128 and Gemma-2-like d256 softcap layers, validated first, CUDA-graph
#      replay, TFLOP/s of visible score entries.
#   OUT=dir bash bench/device/sm90_window_check.sh
# One PASS/FAIL line per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build

echo "== 1. correctness: pytest window/softcap cases and sanitizers, at once"
af_sanitize_start "pingpong-persistent pingpong" "memcheck racecheck" 200
# Each status is kept before the record line: a command substitution in record's arguments would
# set $? to its own status (tail's 0) before $? is expanded.
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_forward_sm90.py -k "window or softcap" \
  >"$OUT/pytest-window.log" 2>&1
rc=$?
record "pytest window/softcap ($(tail -1 "$OUT/pytest-window.log"))" $rc
af_sanitize_wait

echo "== 2. timing: fwd_sm90 vs fwd_sm80"
timeout 75 python3 bench/device/sm90_window_bench.py --out "$OUT" 2>&1 | tee "$OUT/window-bench.log"
rc=$?
record "sm90_window_bench ($(tail -1 "$OUT/window-bench.log" | cut -c1-60))" $rc
af_summary
