#!/usr/bin/env bash
# The main job for a newcomer on a fresh Debian 12 machine: install what is
# needed, build attnforge, install the Python package into .venv, show what the
# library found on this machine, and run an attention example that checks its
# own answer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2
.venv/bin/python -m pip install . --no-build-isolation --no-deps -q
echo; echo "== attnforge info"
.venv/bin/attnforge info
echo; echo "== attention example"
(cd /tmp && "$OLDPWD/.venv/bin/python" "$OLDPWD/examples/check_attention.py")
echo; echo "Next: 'source .venv/bin/activate', then 'attnforge doctor' to check the compiled"
echo "extensions of a Python environment, or 'attnforge bench --help'."
