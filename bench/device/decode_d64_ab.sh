#!/usr/bin/env bash
# d64 decode at one CTA per SM (8 warps x 4 K/V stages, 130 KB: so the heuristic may merge splits in
# clusters, which at two CTAs per SM ran 10-13% slower) against the default 8 x 3 (two per SM), and the
# batch-1 cluster rule at 32/8, 64/8 and 40/8 heads, in one call on an H100/H200 (< 5 min):
#   OUT=dir bash bench/device/decode_d64_ab.sh
# decode_bench.py per run (cuDNN and flash timed in each as the anchor), default / 8x4 / default again to
# see the run-to-run spread; then decode_splits.py with 8x4.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_build
d64=(--configs bf16:16/16:64 --batches 1,2,8,32,128 --lengths 1024,4096,32768)
for tile in "" "64:8,4" ""; do
  echo "== d64, ATTNFORGE_DECODE_TILE=$tile"
  (cd bench/device && ATTNFORGE_DECODE_TILE="$tile" timeout 100 python3 decode_bench.py \
    --prefix "$OUT/d64-${tile/:8,4/x4}-$SECONDS" "${d64[@]}") | grep '^| bfloat16' | cut -d'|' -f2-11,14
  record "decode_bench d64 tile=${tile:-default}" $?
done
echo "== batch 1, the cluster rule (default tiles)"
(cd bench/device && timeout 100 python3 decode_bench.py --prefix "$OUT/b1" \
  --configs bf16:32/8:128,bf16:64/8:128,bf16:40/8:128 --batches 1 --lengths 1024,2048,4096,8192,16384) |
  grep '^| bfloat16' | cut -d'|' -f2-11,14
record "decode_bench batch 1" $?
echo "== forced splits with the d64 8x4 tile"
(cd bench/device && ATTNFORGE_DECODE_TILE="64:8,4" timeout 150 python3 decode_splits.py "$OUT/splits-d64x4.md") |
  grep "d64"
record "decode_splits d64 8x4" $?
af_summary
