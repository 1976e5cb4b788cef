#!/usr/bin/env bash
# Decode tile A/B on an H100/H200 in one call (1-4 min after the build): decode_layout.py (attnforge on both cache
# layouts beside cuDNN, interleaved rounds) under each $AF_TILES entry ($ATTNFORGE_DECODE_TILE, which sets the tile
# of every decode variant of that head dim; "default": unset), one process per entry, $AF_AB_ROUNDS rounds of
# processes (default 2), on the shapes $AF_SHAPES picks (decode_layout.py's labels). Prints each table's label,
# attnforge (B, S, Hk, D) us and both ratios; every table lands in $OUT/tiles.tgz.
#   OUT=dir AF_TILES="default 64:8,2" AF_SHAPES="d64 B32 ,d64 B128 " bash bench/device/decode_tiles.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs tiles.tgz
af_build
for round in $(seq "${AF_AB_ROUNDS:-2}"); do
  for tile in ${AF_TILES:-default}; do
    knob=$tile
    [ "$tile" = default ] && knob=""
    echo "== round $round tile $tile"
    (cd bench/device && ATTNFORGE_DECODE_TILE="$knob" AF_SHAPES="${AF_SHAPES:-}" timeout 150 python3 decode_layout.py \
      "$OUT/tile-$round-${tile//[:,;]/_}.md") | grep "^| [0-9]" | cut -d'|' -f2,6,7,8
    record "decode_layout.py round $round tile $tile" $?
  done
done
af_summary
