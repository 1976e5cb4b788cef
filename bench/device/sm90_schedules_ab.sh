#!/usr/bin/env bash
# fwd_sm90's schedules ranked again after the cross-tile pipeline (issue 13: the persistent forms at d64/d128 now
# carry each tile's last P V into the next tile, which the one-CTA-per-tile pingpong cannot), in one call on an
# H100/H200 (~9 min): build; sm90_check.py's A/B (float64 cases of each variant, then timing beside cuDNN) on the
# causal preset (pingpong, pingpong-persistent, pingpong-dynamic, pingpong-persistent-tma-store), the d64 preset
# (128- and 192-row persistent, dynamic and TMA-store forms) and the default preset (the non-causal schedules).
# Everything lands in $OUT/schedules.tgz.
#   OUT=dir bash bench/device/sm90_schedules_ab.sh
#   OUT=dir bash bench/device/sm90_schedules_ab.sh long-causal   # only d128 causal from 8k keys, three rounds
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs schedules.tgz
af_build
ab() {  # ab PRESET SECONDS VARIANTS
  timeout $(($2 + 10)) python3 bench/device/sm90_check.py --shapes "$1" --budget "$2" --out "$OUT/$1" --variants "$3" |
    grep -E "^  (b[0-9]|shape|faster)|PASS|FAIL"
  record "sm90_check A/B $1 preset" "${PIPESTATUS[0]}"
}
if [ "${1:-}" = long-causal ]; then
  # d128 causal from 8k: the one-CTA-per-tile pingpong against the dynamic form, three rounds (~4 min).
  for round in 1 2 3; do
    ab long-causal 70 pingpong,pingpong-dynamic,overlap-dynamic
    mv "$OUT/long-causal" "$OUT/long-causal-$round"
  done
  af_summary
fi
ab causal 160 pingpong,pingpong-persistent,pingpong-dynamic,pingpong-persistent-tma-store
ab d64 170 pingpong-persistent,pingpong-dynamic,pingpong-persistent-tma-store,pingpong-persistent@192,pingpong-dynamic@192
ab all 160 pingpong,overlap,pingpong-persistent,pingpong-persistent-tma-store
af_summary
