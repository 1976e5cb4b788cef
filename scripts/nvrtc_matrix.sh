#!/usr/bin/env bash
# Compiles every kernel variant for sm_80, sm_86, sm_89 and sm_90a and fails on any
# spill (the CudaCompile GoogleTest) once per NVRTC that users load: the oldest and the
# newest CUDA 12 (PyPI's nvidia-cuda-nvrtc-cu12, what torch's cu12x wheels bring) and
# the newest CUDA 13 (nvidia-cuda-nvrtc); CUDA 13.0, the toolkit's, is the one ctest's
# compile test already uses. Needs no GPU and no CUDA toolkit.
# The wheels are downloaded once into $ATTNFORGE_CI_CACHE (default
# ~/.cache/attnforge-ci) and reused by later runs and fresh clones; only their NVRTC
# libraries are unpacked, under WORK_DIR. `attnforge info` must call each of them supported.
# Usage: nvrtc_matrix.sh TEST_BINARY ATTNFORGE_COMMAND WORK_DIR
set -euo pipefail
tests=$1 command=$2 work=$3
cache=${ATTNFORGE_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnforge-ci}/nvrtc-wheels
python=${ATTNFORGE_PYTHON:-python3}

# requirement, then the library's path inside the wheel. Pinned so that a new NVRTC
# release changes CI only when this list changes. The range is stated in README.md and
# in `attnforge info` (src/cli/info.cpp); keep the three in step.
matrix=(
  "nvidia-cuda-nvrtc-cu12==12.1.105 nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
  "nvidia-cuda-nvrtc-cu12==12.9.86 nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
  "nvidia-cuda-nvrtc==13.5.37 nvidia/cu13/lib/libnvrtc.so.13"
)

mkdir -p "$cache" "$work"
for entry in "${matrix[@]}"; do
  read -r requirement library <<<"$entry"
  name=${requirement%%==*} version=${requirement##*==}
  wheel=$(compgen -G "$cache/${name//-/_}-$version-*.whl" || true)
  if [ -z "$wheel" ]; then
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
      --python-version 3.9 --dest "$cache" "$requirement" ||
      { echo "FAIL: pip could not download $requirement into $cache"; exit 1; }
    wheel=$(compgen -G "$cache/${name//-/_}-$version-*.whl" || true)
    [ -n "$wheel" ] || { echo "FAIL: pip downloaded $requirement but no wheel is in $cache"; exit 1; }
  fi
  wheel=${wheel%%$'\n'*}
  target="$work/$name-$version"
  if [ ! -e "$target/$library" ]; then
    rm -rf "$target"
    # Only the NVRTC libraries (libnvrtc and its builtins, which it loads from its own directory).
    "$python" - "$wheel" "$target" <<'EOF' || { echo "FAIL: could not unpack $wheel"; exit 1; }
import sys, zipfile
wheel, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if "/lib/libnvrtc" in m]
    if not members:
        sys.exit("no lib/libnvrtc* in " + wheel)
    z.extractall(target, members)
EOF
  fi
  echo "== NVRTC $version ($name): every variant for sm_80/86/89/90a, no spills"
  started=$(date +%s)
  log="$target/compile.log"
  ATTNFORGE_NVRTC="$target/$library" "$tests" --gtest_filter='CudaCompile.*' --gtest_brief=1 2>&1 | tee "$log" ||
    { echo "FAIL: kernels do not all compile without spills with NVRTC $version ($target/$library)"; exit 1; }
  # The test prints this line once it runs with that NVRTC (a filter matching no test passes too).
  grep -qF "NVRTC ${version%.*} from $target/$library" "$log" ||
    { echo "FAIL: the compile test did not run with NVRTC $version"; exit 1; }
  info=$(ATTNFORGE_NVRTC="$target/$library" "$command" info) || { echo "FAIL: attnforge info with NVRTC $version"; exit 1; }
  grep -Eq "this machine: (driver CUDA [0-9.]+, )?NVRTC ${version%.*}[:,].*supported" <<<"$info" ||
    { echo "FAIL: attnforge info does not call NVRTC $version supported:"; echo "$info"; exit 1; }
  echo "NVRTC $version: ok in $(( $(date +%s) - started ))s"
done
