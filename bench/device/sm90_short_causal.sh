#!/usr/bin/env bash
# fwd_sm90's causal schedules up to 4k keys (issue 13) in one call on an H100/H200 (~4 min): build;
# compute-sanitizer memcheck, racecheck and synccheck over sm90_check.py's --quick set through pingpong-dynamic
# (together, then waited for: a timing beside them reads the sanitizers' load); sm90_check.py's A/B of pingpong, pingpong-persistent, pingpong-persistent-tma-store and
# pingpong-dynamic on the short-causal preset. Everything lands in $OUT/short.tgz.
#   OUT=dir bash bench/device/sm90_short_causal.sh
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
source bench/device/lib.sh
af_pack_outputs short.tgz
af_build
af_sanitize_start "pingpong-dynamic" "memcheck racecheck synccheck" 280
af_sanitize_wait
timeout 200 python3 bench/device/sm90_check.py --shapes short-causal --budget 190 --out "$OUT/short" \
  --variants pingpong,pingpong-persistent,pingpong-persistent-tma-store,pingpong-dynamic |
  grep -E "^  (b[0-9]|shape|faster)|PASS|FAIL"
record "sm90_check A/B short-causal preset" $?
af_summary
