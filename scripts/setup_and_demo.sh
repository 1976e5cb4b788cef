#!/usr/bin/env bash
# The main job, as any user (no root, no CUDA toolkit): build attnforge and install it
# into a Python environment, show what the library found on this machine, and run an
# attention example that checks its own answer.
#
# Needs a C++17 compiler (g++ >= 8 or clang >= 7) and Python >= 3.9 with pip and venv.
# Installs into the active virtual environment or conda environment if there is one, else
# into .venv (made with --system-site-packages, so a torch the system already has is used).
# Uses the environment's torch; without torch it installs numpy, which the example can use
# instead. cmake and ninja come from PyPI in pip's isolated build when the system's are
# missing or too old. Arguments go to `pip install`: add --no-build-isolation to build
# offline with the environment's scikit-build-core and the system's cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'echo "setup_and_demo.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

compiler=""
for candidate in "${CXX:-}" c++ g++ clang++; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null; then compiler=$candidate; break; fi
done
if [ -z "$compiler" ]; then
  echo "attnforge needs a C++17 compiler to build (g++ >= 8 or clang >= 7) and found none on PATH." >&2
  echo "Install one (Debian/Ubuntu: apt-get install g++; conda: conda install -c conda-forge gxx)," >&2
  echo "or set CXX to its path, then run this again." >&2
  exit 1
fi

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  python=$(command -v python)
else
  if [ ! -x .venv/bin/python ]; then
    base=${ATTNFORGE_PYTHON:-python3}
    echo "== creating .venv from $("$base" --version) (with the system's site-packages)"
    "$base" -m venv --system-site-packages .venv ||
      { echo "could not create .venv: Debian/Ubuntu need python3-venv; or activate a venv or conda env first" >&2; exit 1; }
  fi
  python=$PWD/.venv/bin/python
fi
echo "== Python environment: $python ($("$python" --version))"

if "$python" -c "import torch" 2>/dev/null; then
  echo "== using its torch $("$python" -c 'import torch; print(torch.__version__)')"
elif "$python" -c "import numpy" 2>/dev/null; then
  echo "== no torch here: using its numpy $("$python" -c 'import numpy; print(numpy.__version__)')"
else
  echo "== no torch or numpy here: installing numpy"
  "$python" -m pip install -q numpy
fi

echo "== building and installing attnforge: pip install ${*:+$* }. ($("$compiler" --version | sed -n 1p))"
"$python" -m pip install -q "$@" .

bin=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
echo; echo "== attnforge info"
"$bin/attnforge" info
echo; echo "== attention example"
"$python" examples/check_attention.py
echo; echo "Next: 'attnforge doctor' (in $bin) checks the compiled extensions of a Python environment;"
echo "'attnforge bench --help' times a shape."
