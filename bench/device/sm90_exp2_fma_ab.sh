#!/usr/bin/env bash
# fwd_sm90's softmax with part of its exps on the FMA pipe ($ATTNFORGE_SM90_EXP2_FMA="D:k;...": k of every 16 as
# exp2_fma's polynomial in src/kernels/fwd_sm90/sm90_ptx.cuh) against MUFU alone, on an H100/H200, in two calls:
#   OUT=dir bash bench/device/sm90_exp2_fma_ab.sh check    # correctness with every exp a polynomial (~3 min)
#   OUT=dir bash bench/device/sm90_exp2_fma_ab.sh timing   # speed (~7 min)
# check: with k = 16 at every head dim (the polynomial's worst case), pytest tests/gpu/test_forward_sm90.py and
#   sm90_check.py's float64 correctness stage (141 cases: each case's error against its budget). The change is
#   register arithmetic only (no shared or global access, no synchronisation), so no sanitizer runs.
# timing: sm90_check.py's timing stage at d64 and d128 (fwd_sm90 beside cuDNN, 512 to 16k keys at 16k tokens per
#   call, causal and not, and the 64/8 GQA rows) in two rounds of: default, then each of $AF_EXP2_FMA's settings
#   (space-separated; default "64:2;128:1 64:4;128:2"), one process each (exp2_fma_ab.md).
# AF_SECONDS sets each timing run's budget (default 45). Outputs leave as $OUT/exp2_fma-MODE.tgz; one PASS/FAIL line
# per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
mode=${1:-check}
source bench/device/lib.sh
af_pack_outputs "exp2_fma-$mode.tgz"
af_build

if [ "$mode" = check ]; then
  export ATTNFORGE_SM90_EXP2_FMA="64:16;128:16;256:16"
  echo "== pytest tests/gpu/test_forward_sm90.py, $ATTNFORGE_SM90_EXP2_FMA"
  timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_forward_sm90.py 2>&1 | tail -4
  record "pytest test_forward_sm90.py ($ATTNFORGE_SM90_EXP2_FMA)" "${PIPESTATUS[0]}"
  for knob in "$ATTNFORGE_SM90_EXP2_FMA" ""; do
    name=${knob:+exp2_fma}
    name=${name:-mufu}
    echo "== sm90_check.py correctness, ATTNFORGE_SM90_EXP2_FMA=$knob"
    mkdir -p "$OUT/$name"
    ATTNFORGE_SM90_EXP2_FMA=$knob timeout 200 python3 bench/device/sm90_check.py --stage correctness \
      --out "$OUT/$name" >"$OUT/$name.log" 2>&1
    rc=$?
    grep -E "cases passed|FAIL" "$OUT/$name.log" | tail -5
    record "sm90_check correctness ($name)" $rc
  done
  # Per case: error / budget with every exp a polynomial against MUFU alone (the same inputs' seeds differ).
  python3 - "$OUT/exp2_fma/correctness.json" "$OUT/mufu/correctness.json" <<'PY' | tee "$OUT/errors.md"
import json, sys
runs = []
for path in sys.argv[1:]:
    try:
        runs.append([r for r in json.load(open(path)) if r.get("budget")])
    except (OSError, ValueError):
        runs.append([])
for name, rows in zip(("exp2_fma k=16", "MUFU"), runs):
    ratios = sorted(r["err"] / r["budget"] for r in rows)
    if ratios:
        print("%s: %d cases, error / budget median %.3f, max %.3f" % (name, len(ratios), ratios[len(ratios) // 2],
                                                                       ratios[-1]))
PY
else
  echo "== timing: default against ${AF_EXP2_FMA:-64:2;128:1 64:4;128:2}, two rounds"
  af_knob_timing ATTNFORGE_SM90_EXP2_FMA "${AF_EXP2_FMA:-64:2;128:1 64:4;128:2}" 64,128 512,1024,2048,16384 \
    "${AF_SECONDS:-45}" "$OUT/exp2_fma_ab.md"
fi
af_summary
