#!/usr/bin/env bash
# The whole GPU-machine check in one command (for the device tool's one-call budget):
#  1. the library and command built on Debian 12 (carried in .carry/debian12, unchanged)
#     run on this machine's userland: `attnforge info` and `attnforge selftest --library`;
#  2. bench/device/run.sh: build here, every kernel variant vs float64, compute-sanitizer,
#     benchmark beside SDPA flash and cuDNN (writes $OUT/log and $OUT/gpu-*);
#  3. the Python package's pytest suite on the GPU (CUDA tensors, CUDA-graph capture);
#  4. bench/e2e/run_models.py: Qwen3- and InternViT-shaped models vs sdpa and eager;
#  5. the doctor's GPU-architecture verdicts against real launches (.carry/fatbin).
# Everything else goes to $OUT/full.log.
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
log() { tee -a "$OUT/full.log"; }

{
  echo "== 1. Debian 12 build on $(. /etc/os-release; echo "$PRETTY_NAME"), $(ldd_out=$(ldd --version); echo "${ldd_out%%$'\n'*}")"
  if [ -x .carry/debian12/attnforge ]; then
    .carry/debian12/attnforge info || status=1
    .carry/debian12/attnforge selftest --library "$PWD/.carry/debian12/libattnforge.so" || status=1
  else
    echo "no carried build in .carry/debian12"
  fi
} 2>&1 | log

bash bench/device/run.sh || status=1

export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"
{
  echo "== 3. pytest tests/python on the GPU ($ATTNFORGE_LIBRARY)"
  timeout 300 python3 -m pytest -q -rs -p no:cacheprovider tests/python || status=1
  echo "== 4. end to end"
  timeout 240 python3 bench/e2e/run_models.py "$OUT/e2e-$(python3 -c 'import torch; n=torch.cuda.get_device_name().lower(); print("h200" if "h200" in n else "h100")').md" || status=1
  echo "== 5. doctor GPU-architecture verdicts vs real launches"
  if [ -d .carry/fatbin ]; then
    mkdir -p /tmp/doctor-fixtures/fatbin && cp .carry/fatbin/*.so /tmp/doctor-fixtures/fatbin/
    python3 tests/doctor/check_gpu_arch_on_device.py "$PWD/build-device/attnforge" /tmp/doctor-fixtures || status=1
  fi
  echo "== full run status: $status"
} 2>&1 | log
exit $status
