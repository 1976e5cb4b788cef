#!/usr/bin/env bash
# fwd_sm90 with seqused_k, leftpad_k and varlen (cu_seqlens) on an H100/H200, < 120 s with a warm
# build (the NVRTC compiles of a cold cache are most of it):
#   bash bench/device/sm90_sequences.sh
# 1. builds build-device/libattnforge.so (as run.sh does) unless ATTNFORGE_LIBRARY names one;
# 2. tests/gpu/test_forward_sm90.py's sequence cases: 8 cases x bf16/fp16, each against the float64
#    reference through fwd_sm90's default schedule and fwd_sm80 on the same inputs (and the two
#    against each other), bf16 also through all 7 schedules; plus the refused-plan test;
# 3. sm90_check.py --stage correctness --quick (7 cases, 2 of them seqused_k/leftpad_k and varlen);
# 4. compute-sanitizer on that --quick set with the default schedule: the tools in AF_SANITIZERS
#    (default memcheck; "memcheck racecheck synccheck" for all three, past the 120 s).
# Prints one PASS/FAIL line per step and a verdict; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export ATTNFORGE_CACHE_DIR="${ATTNFORGE_CACHE_DIR:-/tmp/attnforge-device-cache}"
export ATTNFORGE_FWD_SM90=1
status=0
verdicts=()

step() {  # step NAME COMMAND...: runs it, records PASS or FAIL
  local name=$1
  shift
  local start=$SECONDS
  echo "== $name"
  if "$@"; then
    verdicts+=("PASS $name ($((SECONDS - start)) s)")
  else
    verdicts+=("FAIL $name ($((SECONDS - start)) s)")
    status=1
  fi
}

if [ -z "${ATTNFORGE_LIBRARY:-}" ]; then
  if ! cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null ||
    ! ninja -C build-device libattnforge.so >/dev/null; then
    echo "BUILD FAILED"
    exit 1
  fi
  export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"
fi
step "pytest: fwd_sm90 sequence cases (seqused_k, leftpad_k, varlen) vs float64 and fwd_sm80" \
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_forward_sm90.py -k "sequences or refuses"
step "sm90_check --quick correctness" python3 bench/device/sm90_check.py --stage correctness --quick
for tool in ${AF_SANITIZERS:-memcheck}; do
  if command -v compute-sanitizer >/dev/null; then
    step "compute-sanitizer $tool (--quick set)" compute-sanitizer --tool "$tool" --error-exitcode 3 \
      python3 bench/device/sm90_check.py --stage correctness --quick
  else
    verdicts+=("SKIP compute-sanitizer $tool (not on PATH)")
  fi
done
printf '%s\n' "${verdicts[@]}"
echo "sm90_sequences: $([ $status -eq 0 ] && echo PASSED || echo FAILED)"
exit $status
