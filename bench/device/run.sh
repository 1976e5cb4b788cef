#!/usr/bin/env bash
# One command on a GPU machine: build attnforge, check every CUDA kernel variant against a
# float64 reference, run compute-sanitizer (memcheck, racecheck) on small shapes, benchmark
# beside torch SDPA flash and cuDNN, and write results under $OUT (default ./bench-out):
#   log, gpu-<name>-forward.{md,png,json}, check.json
# Tile and scheduling candidates are compared with bench/device/tune.sh instead.
# Needs: nvidia driver, cmake, ninja, a C++17 compiler, python3 with torch (and matplotlib).
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
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

  echo "== first-call cost (NVRTC compile per variant with an empty cache, then cached load)"
  (cd bench/device && python3 bench.py --prefix "$prefix" --first-call-only /tmp/attnforge-firstcall.json) || status=1
  cp /tmp/attnforge-firstcall.json "$prefix.firstcall.json" 2>/dev/null

  echo "== correctness (float64 reference)"
  if (cd bench/device && python3 check.py "$OUT/check.json" | tee /tmp/check.log); then
    checks="correctness: $(tail -1 /tmp/check.log)"
  else
    checks="correctness: FAILED ($(tail -1 /tmp/check.log))"; status=1
  fi

  echo "== correctness with split keys forced on every call (ATTNFORGE_NUM_SPLITS=3)"
  if (cd bench/device && ATTNFORGE_NUM_SPLITS=3 python3 check.py /tmp/check-split.json | tee /tmp/check-split.log); then
    checks="$checks; forced split keys: $(tail -1 /tmp/check-split.log)"
  else
    checks="$checks; forced split keys: FAILED ($(tail -1 /tmp/check-split.log))"; status=1
  fi

  echo "== compute-sanitizer"
  for tool in memcheck racecheck; do
    (cd bench/device && timeout 240 compute-sanitizer --tool "$tool" --kernel-name kns=af_flash_fwd \
      --error-exitcode 3 python3 sanitize.py >/tmp/sanitizer-$tool.log 2>&1)
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

  echo "== benchmark"
  (cd bench/device && python3 bench.py --prefix "$prefix" ${AF_BENCH_ARGS:-}) || status=1
  printf '\n## Checks in the same run\n\n%s (bench/device/check.py: every variant against a float64 reference; sanitizer on bench/device/sanitize.py).\n' \
    "$checks" >>"$prefix.md"
  rm -f "$prefix.firstcall.json"
  date -u
  return $status
}

main 2>&1 | tee "$OUT/log"
exit "${PIPESTATUS[0]}"
