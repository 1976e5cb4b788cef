#!/usr/bin/env bash
# One call on an H100/H200 after kernel changes (< 7 min): build; correctness at once (tests/gpu in full,
# and compute-sanitizer memcheck, racecheck and synccheck on sm90_check's --quick set through the default
# forms, 128-row and 192-row); then alone: fwd_sm90's sweep beside cuDNN (sm90_check.py: probes, float64
# cases, timing) and ncu's executed-instruction count of d128 8 x 2k non-causal (attnforge, then cuDNN).
#   OUT=dir bash bench/device/check_all.sh
# One PASS/FAIL line per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python" ATTNFORGE_CACHE_DIR=/tmp/attnforge-device-cache
verdicts=()
status=0
record() {  # record NAME RC
  if [ "$2" -eq 0 ]; then verdicts+=("PASS $1"); else verdicts+=("FAIL $1 (exit $2)"); status=1; fi
}
date -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null &&
  ninja -C build-device libattnforge.so >/dev/null || { echo "BUILD FAILED"; exit 1; }
export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"

echo "== 1. correctness: tests/gpu and sanitizers, at once"
pids=()
names=()
for v in pingpong-persistent pingpong-persistent@192; do
  for t in memcheck racecheck synccheck; do
    (ATTNFORGE_FWD_SM90=1 ATTNFORGE_CACHE_DIR="/tmp/af-san-$v-$t" timeout 280 compute-sanitizer --tool "$t" \
      --error-exitcode 3 python3 bench/device/sm90_check.py --stage correctness --quick --variants "$v" \
      >"$OUT/sanitizer-$t-$v.log" 2>&1) &
    pids+=($!)
    names+=("$t $v")
  done
done
timeout 280 python3 -m pytest -q -p no:cacheprovider tests/gpu >"$OUT/pytest-gpu.log" 2>&1
record "tests/gpu ($(tail -1 "$OUT/pytest-gpu.log"))" $?
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  rc=$?
  log="$OUT/sanitizer-${names[$i]// /-}.log"
  grep -q "ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards" "$log" || [ $rc -ne 0 ] || rc=4
  record "sanitizer ${names[$i]} ($(grep -E 'cases passed' "$log" | tail -1))" $rc
done

echo "== 2. fwd_sm90 sweep"
timeout 200 python3 bench/device/sm90_check.py --out "$OUT/sm90" --budget 190
record "sm90_check (probes, float64 cases, timing)" $?

echo "== 3. ncu executed instructions, d128 8 x 2k non-causal"
for impl in attnforge cudnn; do
  filter=(--kernel-name regex:af_flash_fwd_sm90 --launch-skip 2 --launch-count 1)
  [ "$impl" = cudnn ] && filter=(--launch-skip 5 --launch-count 1)
  (cd bench/device && timeout 100 ncu --clock-control none "${filter[@]}" --section SpeedOfLight \
    --metrics smsp__inst_executed.sum python3 profile_one.py 128 2048 --impl "$impl") >"$OUT/ncu-$impl.txt" 2>&1
  record "ncu $impl" $?
  grep -E '^  [a-z_A-Z].*\(|inst_executed|Duration|Compute \(SM\)' "$OUT/ncu-$impl.txt" | cut -c1-160
done
printf '%s\n' "${verdicts[@]}"
exit $status
