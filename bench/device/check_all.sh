#!/usr/bin/env bash
# One call on an H100/H200 after kernel changes (< 7 min): build; correctness at once (tests/gpu in full,
# and compute-sanitizer memcheck, racecheck and synccheck on sm90_check's --quick set through the default
# forms, 128-row and 192-row); then alone: fwd_sm90's sweep beside cuDNN (sm90_check.py: probes, float64
# cases, timing) and ncu's executed-instruction count of d128 8 x 2k non-causal (attnforge, then cuDNN).
#   OUT=dir bash bench/device/check_all.sh
# AF_SANITIZE_VARIANTS replaces the sanitized forms (sm90_check.py --variants entries); AF_SWEEP_BUDGET sets step
# 2's seconds (default 190); AF_NCU=0 skips step 3. Outputs leave as $OUT/check_all.tgz; one PASS/FAIL line per step
# at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs check_all.tgz
af_build

echo "== 1. correctness: tests/gpu and sanitizers, at once"
af_sanitize_start "${AF_SANITIZE_VARIANTS:-pingpong-persistent pingpong-persistent@192}" \
  "memcheck racecheck synccheck"
timeout 280 python3 -m pytest -q -p no:cacheprovider tests/gpu >"$OUT/pytest-gpu.log" 2>&1
rc=$?  # before the tail below, whose status $? would otherwise be
record "tests/gpu ($(tail -1 "$OUT/pytest-gpu.log"))" $rc
af_sanitize_wait

echo "== 2. fwd_sm90 sweep"
timeout $((${AF_SWEEP_BUDGET:-190} + 10)) python3 bench/device/sm90_check.py --out "$OUT/sm90" \
  --budget "${AF_SWEEP_BUDGET:-190}"
record "sm90_check (probes, float64 cases, timing)" $?

[ "${AF_NCU:-1}" = 0 ] && af_summary
echo "== 3. ncu executed instructions, d128 8 x 2k non-causal"
for impl in attnforge cudnn; do
  filter=(--kernel-name regex:af_flash_fwd_sm90 --launch-skip 2 --launch-count 1)
  [ "$impl" = cudnn ] && filter=(--launch-skip 5 --launch-count 1)
  (cd bench/device && timeout 100 ncu --clock-control none "${filter[@]}" --section SpeedOfLight \
    --metrics smsp__inst_executed.sum python3 profile_one.py 128 2048 --impl "$impl") >"$OUT/ncu-$impl.txt" 2>&1
  record "ncu $impl" $?
  grep -E '^  [a-z_A-Z].*\(|inst_executed|Duration|Compute \(SM\)' "$OUT/ncu-$impl.txt" | cut -c1-160
done
af_summary
