#!/usr/bin/env bash
# fwd_sm90's 192-row forms at head dim 64 (three consumer warpgroups, ATTNFORGE_SM90_BLOCK_M=192) on an
# H100/H200, ~3 min with a warm build (the NVRTC compiles of a cold cache add ~1 s per variant):
#   OUT=dir bash bench/device/sm90_m192.sh
# 1. builds build-device/libattnforge.so (as sm90_sequences.sh does) unless ATTNFORGE_LIBRARY names one;
# 2. correctness, at once (no timing runs meanwhile), each step under 75 s:
#    - pytest: tests/gpu/test_forward_sm90.py -k "192 or d64": every 192-row form on the d64 cases and on
#      lengths around the 192-row tile (odd lengths, Sq != Sk, causal, GQA, empty tiles), the d64
#      seqused_k/leftpad_k/varlen cases (NaN in unused cache rows) through every form, the refusals;
#    - compute-sanitizer memcheck, racecheck and synccheck on sm90_check's --quick set through
#      pingpong-persistent@192 (the default schedule's 192-row form), synccheck and racecheck through
#      pingpong@192 (the three-warpgroup turn ring without the persistent loop);
# 3. sm90_check.py A/B: $AF_M192_VARIANTS (default pingpong-persistent, the 128-row default, beside
#    pingpong-persistent@192, overlap-persistent@192 and pingpong@192): each on the reduced float64 set
#    (35 cases at head dims 56/64), then the 16 d64 shapes (--shapes d64) timed beside cuDNN, in 110 s.
# One PASS/FAIL/TIMEOUT line per step, then the A/B table (ab.md); exit status 0 only when every step
# passed. A sanitizer that only timed out: rerun it alone with the command its line prints.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export ATTNFORGE_CACHE_DIR="${ATTNFORGE_CACHE_DIR:-/tmp/attnforge-device-cache}"
export ATTNFORGE_FWD_SM90=1
VARIANTS="${AF_M192_VARIANTS:-pingpong-persistent,pingpong-persistent@192,overlap-persistent@192,pingpong@192}"
status=0
verdicts=()
record() {  # record NAME RC [RERUN]
  if [ "$2" -eq 0 ]; then
    verdicts+=("PASS $1")
  elif [ "$2" -eq 124 ]; then
    verdicts+=("TIMEOUT $1${3:+ (rerun alone: $3)}")
    status=1
  else
    verdicts+=("FAIL $1 (exit $2)")
    status=1
  fi
}

date -u
if [ -z "${ATTNFORGE_LIBRARY:-}" ]; then
  if ! cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null ||
    ! ninja -C build-device libattnforge.so >/dev/null; then
    echo "BUILD FAILED"
    exit 1
  fi
  export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"
fi
start=$SECONDS

echo "== 1. correctness: pytest and compute-sanitizer, at once"
pids=()
names=()
logs=()
commands=()
(timeout 75 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_forward_sm90.py -k "192 or d64" \
  >"$OUT/pytest-m192.log" 2>&1) &
pids+=($!)
names+=("pytest -k '192 or d64'")
logs+=("$OUT/pytest-m192.log")
commands+=("python3 -m pytest -q tests/gpu/test_forward_sm90.py -k '192 or d64'")
jobs_list="memcheck:pingpong-persistent@192 racecheck:pingpong-persistent@192 synccheck:pingpong-persistent@192
synccheck:pingpong@192 racecheck:pingpong@192"
if command -v compute-sanitizer >/dev/null; then
  for job in $jobs_list; do
    tool=${job%%:*} variant=${job#*:}
    command=(compute-sanitizer --tool "$tool" --error-exitcode 3
      python3 bench/device/sm90_check.py --stage correctness --quick --variants "$variant")
    (ATTNFORGE_CACHE_DIR="/tmp/af-m192-$tool-$variant" timeout 75 "${command[@]}" \
      >"$OUT/sanitizer-$tool-$variant.log" 2>&1) &
    pids+=($!)
    names+=("compute-sanitizer $tool $variant (--quick)")
    logs+=("$OUT/sanitizer-$tool-$variant.log")
    commands+=("ATTNFORGE_FWD_SM90=1 ${command[*]}")
  done
else
  verdicts+=("SKIP compute-sanitizer (not on PATH)")
fi
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  rc=$?
  log=${logs[$i]}
  if [ "${names[$i]#pytest}" != "${names[$i]}" ]; then
    tail -3 "$log"
  else
    # A clean run says so; an exit status of 0 without the summary line is not clean.
    grep -q "ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards" "$log" || [ $rc -ne 0 ] || rc=4
    grep -E "SUMMARY|cases passed" "$log" | tail -2
  fi
  record "${names[$i]}" $rc "${commands[$i]}"
done

echo "== 2. A/B $VARIANTS (--shapes d64)"
timeout "${AF_M192_BUDGET:-140}" python3 bench/device/sm90_check.py --variants "$VARIANTS" --shapes d64 \
  --budget "$(( ${AF_M192_BUDGET:-140} - 30 ))" --out "$OUT/m192ab"
record "A/B $VARIANTS" $?
cat "$OUT/m192ab/ab.md" 2>/dev/null

printf '%s\n' "${verdicts[@]}"
echo "sm90_m192: $([ $status -eq 0 ] && echo PASSED || echo FAILED) in $((SECONDS - start)) s after the build"
exit $status
