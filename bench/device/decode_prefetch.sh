#!/usr/bin/env bash
# The decode successor prefetch (issue 11) in one call on an H100/H200 (~5 min): build; the GPU tests of decode grids
# past one wave and compute-sanitizer memcheck over tests/gpu/sanitize_cases.py (in the background); then
# decode_ab.py's "planned" against "planned-n" (the prefetch off), interleaved in one process, on grids of more than
# one wave, on both cache layouts, $AF_AB_ROUNDS processes each (default 2). Tables land in $OUT/prefetch.tgz.
#   OUT=dir [AF_SHAPES="d128 B64 1024"] bash bench/device/decode_prefetch.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs prefetch.tgz
af_build
af_sanitize_run memcheck sanitize_cases 280 python3 tests/gpu/sanitize_cases.py
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_decode.py -k "successor or wide_grid" \
  >"$OUT/pytest-decode.log" 2>&1
rc=$?  # before the record line: its $(tail ...) would set $? first
record "test_decode.py successor, wide_grid ($(tail -1 "$OUT/pytest-decode.log"))" $rc
af_sanitize_wait
shapes=${AF_SHAPES:-"d128 B64 ,d128 B128 ,d64 B32 ,d64 B64 "}
for round in $(seq "${AF_AB_ROUNDS:-2}"); do
  for layout in bshd bhsd; do
    echo "== round $round layout $layout"
    (cd bench/device && AF_LAYOUT=$layout AF_VARIANTS=planned,planned-n AF_SHAPES="$shapes" timeout 150 \
      python3 decode_ab.py "$OUT/prefetch-$round-$layout.md") | grep "^| [0-9]"
    record "decode_ab.py round $round $layout" $?
  done
done
af_summary
