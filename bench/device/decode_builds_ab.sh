#!/usr/bin/env bash
# Several builds of the library in one call on an H100/H200: this tree ("new") and each tree under .carry/NAME/
# (e.g. `git archive BASE | tar -x -C .carry/base`, not committed), built at once; then a bench/device script run
# with each build in turn, $AF_AB_ROUNDS times (default 2), each process timing its own peers, so that the ratios
# compare across builds. Everything lands in $OUT/builds-ab.tgz.
#   OUT=dir [AF_AB_SCRIPT=decode_layout.py] [AF_AB_ROUNDS=2] bash bench/device/decode_builds_ab.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs builds-ab.tgz
names=() libs=() pids=()
for tree in .carry/*/; do
  name=$(basename "$tree")
  [ -f "$tree/CMakeLists.txt" ] || continue
  (cmake -S "$tree" -B "/tmp/build-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null &&
    ninja -C "/tmp/build-$name" libattnforge.so >/dev/null) &
  pids+=($!) names+=("$name") libs+=("/tmp/build-$name/libattnforge.so")
done
af_build
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "BUILD FAILED: ${names[$i]}"; exit 1; }
done
names=(new "${names[@]}") libs=("$ATTNFORGE_LIBRARY" "${libs[@]}")
script=${AF_AB_SCRIPT:-decode_layout.py}
for round in $(seq "${AF_AB_ROUNDS:-2}"); do
  for i in "${!names[@]}"; do
    echo "== round $round: ${names[$i]}"
    (cd bench/device && ATTNFORGE_LIBRARY=${libs[$i]} timeout 300 python3 "$script" "$OUT/$round-${names[$i]}.md")
    record "$script round $round ${names[$i]}" $?
  done
done
af_summary
