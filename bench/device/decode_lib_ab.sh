#!/usr/bin/env bash
# Two builds of the decode kernel on an H100/H200 in one call (< 6 min): this tree ("new") against the tree in
# .carry/base ("base": e.g. `git archive BASE | tar -x -C .carry/base`, not committed). Builds both; then, at once
# (correctness only), tests/gpu's decode and kvcache files and compute-sanitizer memcheck and racecheck over
# tests/gpu/sanitize_cases.py with the new build; then alone decode_ab.py's planned variant beside cuDNN with
# base, new, base, new (each process times cuDNN too, so the ratios compare). Logs in $OUT.
#   OUT=dir bash bench/device/decode_lib_ab.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
[ -f .carry/base/CMakeLists.txt ] || { echo "no .carry/base tree"; exit 1; }
(cmake -S .carry/base -B /tmp/build-base -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null &&
  ninja -C /tmp/build-base libattnforge.so >/dev/null) &
base_build=$!
af_build
wait $base_build || { echo "BASE BUILD FAILED"; exit 1; }
NEW="$ATTNFORGE_LIBRARY" BASE=/tmp/build-base/libattnforge.so

echo "== correctness of the new build"
for t in memcheck racecheck; do
  af_sanitize_run $t sanitize_cases 240 python3 tests/gpu/sanitize_cases.py
done
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_decode.py tests/gpu/test_kvcache_append.py \
  >"$OUT/pytest-decode.log" 2>&1
rc=$?
record "pytest decode + kvcache ($(tail -1 "$OUT/pytest-decode.log"))" $rc
af_sanitize_wait

echo "== planned decode, base / new / base / new"
for i in 1 2 3 4; do
  lib=$BASE name=base
  [ $((i % 2)) -eq 0 ] && lib=$NEW name=new
  (cd bench/device && ATTNFORGE_LIBRARY=$lib AF_VARIANTS=planned timeout 100 python3 decode_ab.py "$OUT/ab-$i-$name.md") |
    tail -n +5 | sed "s/^/$name /"
  record "decode_ab run $i ($name)" $?
done
af_summary
