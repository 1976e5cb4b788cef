#!/usr/bin/env bash
# Installs what testing attnforge needs on Debian 12 (run as root or with sudo
# available): compilers, GoogleTest, Debian's torch 1.13 (the old torch the package
# is tested with), debootstrap and clang's libFuzzer, then a virtual environment
# .venv with the newest torch from PyPI, numpy, pytest, transformers and the wheel
# tools. Safe to run again: it skips what is already there. (Building and using
# attnforge needs none of this: see scripts/setup_and_demo.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=(
  build-essential cmake ninja-build libgtest-dev git ca-certificates
  python3 python3-venv python3-pip python3-dev
  python3-torch libtorch-dev python3-numpy python3-pytest python3-packaging
  debootstrap binutils clang-14 libclang-rt-14-dev clang-format-14 zip
)
missing=()
for p in "${apt_packages[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The CUDA toolkit is not required: NVRTC (for compiling the GPU kernels in the
# tests) comes from /usr/local/cuda when present, else from PyPI's wheel below.
python=${ATTNFORGE_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# scikit-build-core and build: the wheel and sdist are built without build isolation.
.venv/bin/python -m pip install -q torch numpy pytest packaging transformers auditwheel scikit-build-core build \
  'ruff==0.17.6'
if [ ! -e /usr/local/cuda/lib64/libnvrtc.so ] && ! ls /usr/local/cuda/lib64/libnvrtc.so.* >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q nvidia-cuda-nvrtc
fi
echo "== dependencies ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)') in .venv," \
  "$(/usr/bin/python3 -c 'import torch; print("torch", torch.__version__)' 2>/dev/null) in /usr/bin/python3"
