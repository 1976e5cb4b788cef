#!/usr/bin/env bash
# One command on a GPU machine: build attnforge, check every CUDA kernel variant against a
# float64 reference (tests/gpu), run compute-sanitizer (memcheck,
# racecheck, synccheck) on small shapes, benchmark decode steps and the forward pass beside torch SDPA
# flash and cuDNN, time host overhead per call, A/B the forward kernel against the build in
# .carry/old when present, and write results under $OUT (default ./bench-out):
#   log, decode-<gpu>.{md,png,json}, host-time-<gpu>.md, ab-forward-<gpu>.md,
#   gpu-<gpu>-forward.{md,png,json}
# AF_DECODE_ARGS=--quick, AF_SKIP_FIRST_CALL=1, AF_SKIP_AB=1 and AF_SKIP_FORWARD=1 shorten a run;
# AF_PYTEST_TIMEOUT and AF_SANITIZER_TIMEOUT (seconds, default 480 and 240 each) bound those steps.
# Tile and scheduling candidates are compared with bench/device/tune.sh instead.
# Needs: nvidia driver, cmake, ninja, a C++17 compiler, python3 with torch (and matplotlib).
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export ATTNFORGE_CACHE_DIR="${ATTNFORGE_CACHE_DIR:-/tmp/attnforge-device-cache}"
status=0

main() {
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'

  echo "== build"
  cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null &&
    ninja -C build-device libattnforge.so attnforge || { echo "BUILD FAILED"; return 1; }
  export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"
  ./build-device/attnforge info || true
  gpu=$(python3 -c 'import torch; n=torch.cuda.get_device_name().lower(); print("h200" if "h200" in n else "h100" if "h100" in n else n.split()[-1])')
  prefix="$OUT/gpu-$gpu-forward"

  if [ -z "${AF_SKIP_FIRST_CALL:-}" ]; then
    echo "== first-call cost (NVRTC compile per variant with an empty cache, then cached load)"
    (cd bench/device && python3 bench.py --prefix "$prefix" --first-call-only /tmp/attnforge-firstcall.json) || status=1
    cp /tmp/attnforge-firstcall.json "$prefix.firstcall.json" 2>/dev/null
  fi

  echo "== correctness: GPU pytest (tests/gpu: every variant of both families, planned and forced key splits, plan/run, against float64)"
  if timeout "${AF_PYTEST_TIMEOUT:-480}" python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee /tmp/gpu-pytest.log; then
    checks="tests/gpu: $(tail -1 /tmp/gpu-pytest.log)"
  else
    checks="tests/gpu: FAILED ($(tail -1 /tmp/gpu-pytest.log))"; status=1
  fi

  echo "== compute-sanitizer"
  # memcheck, racecheck and synccheck with the default families (fwd_sm90 on sm_90a), then memcheck
  # with ATTNFORGE_FWD_SM90=0 (fwd_sm80, the prefill family of every other GPU).
  for tool in memcheck racecheck synccheck memcheck-sm80; do
    (export ATTNFORGE_FWD_SM90; [ "$tool" = memcheck-sm80 ] && ATTNFORGE_FWD_SM90=0
     timeout "${AF_SANITIZER_TIMEOUT:-240}" compute-sanitizer --tool "${tool%-sm80}" \
      --error-exitcode 3 python3 tests/gpu/sanitize_cases.py >/tmp/sanitizer-$tool.log 2>&1)
    rc=$?
    head -40 /tmp/sanitizer-$tool.log
    tail -4 /tmp/sanitizer-$tool.log
    if [ $rc -ne 0 ] || grep -q "hazards displayed ([0-9]* errors, [1-9]" /tmp/sanitizer-$tool.log; then
      echo "compute-sanitizer $tool: FAILED (exit $rc)"; status=1
      checks="$checks; compute-sanitizer $tool: FAILED"
    else
      echo "compute-sanitizer $tool: clean"
      checks="$checks; compute-sanitizer $tool: clean ($(grep -o 'SUMMARY: .*' /tmp/sanitizer-$tool.log | tail -1))"
    fi
  done

  echo "== decode benchmark"
  (cd bench/device && python3 decode_bench.py --prefix "$OUT/decode-$gpu" ${AF_DECODE_ARGS:-}) || status=1
  echo "== host time per call"
  nvcc -O2 -std=c++17 -I include bench/device/host_time_c.cpp -L build-device -lattnforge -lcuda \
    -o build-device/host_time_c || echo "host_time_c did not build"
  (cd bench/device && python3 host_time.py "$OUT/host-time-$gpu.md" \
    "$([ -x ../../build-device/host_time_c ] && echo "$PWD/../../build-device/host_time_c")") || status=1
  if [ -f .carry/old/libattnforge.so ] && [ -z "${AF_SKIP_AB:-}" ]; then
    echo "== forward A/B: .carry/old vs this build"
    (cd bench/device && python3 ab_forward.py "$PWD/../../.carry/old/libattnforge.so" "$ATTNFORGE_LIBRARY" \
      "$OUT/ab-forward-$gpu.md") || status=1
  fi
  if [ -z "${AF_SKIP_FORWARD:-}" ]; then
    echo "== forward benchmark"
    (cd bench/device && python3 bench.py --prefix "$prefix" --no-decode ${AF_BENCH_ARGS:-}) || status=1
  fi
  printf '\n## Checks in the same run\n\n%s (tests/gpu: every kernel variant and decode shape against a float64 reference; sanitizer on tests/gpu/sanitize_cases.py).\n' \
    "$checks" >>"$OUT/decode-$gpu.md"
  rm -f "$prefix.firstcall.json"
  date -u
  return $status
}

main 2>&1 | tee "$OUT/log"
exit "${PIPESTATUS[0]}"
