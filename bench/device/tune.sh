#!/usr/bin/env bash
# Tuning in one device call: build once, then for each candidate (environment settings such as
# ATTNFORGE_TILE and ATTNFORGE_PAIR_GROUP, separated by spaces; empty = the defaults) check every
# variant against float64 (check.py, first pass only) and time it beside SDPA flash and cuDNN.
# Candidates run in order, and the whole list `passes` times (A B C A B C), so that run-to-run
# drift shows up as a spread instead of as a difference between candidates.
#   bash bench/device/tune.sh "|ATTNFORGE_TILE=128:4,2,32,2 ATTNFORGE_PAIR_GROUP=8" [head_dims=128] \
#     [seqlens=1024,2048,4096,8192] [passes=2]
# Writes $OUT/tune.log and $OUT/tune-summary.md (ratio to flash per candidate, pass and point).
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export ATTNFORGE_CACHE_DIR="${ATTNFORGE_CACHE_DIR:-/tmp/attnforge-device-cache}"
IFS='|' read -ra candidates <<<"$1"
head_dims="${2:-128}"
seqlens="${3:-1024,2048,4096,8192}"
passes="${4:-2}"
status=0

main() {
  date -u
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null &&
    ninja -C build-device libattnforge.so attnforge >/dev/null || { echo "BUILD FAILED"; return 1; }
  export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"
  for pass in $(seq 1 "$passes"); do
    for i in "${!candidates[@]}"; do
      candidate="${candidates[$i]}"
      echo "== pass $pass, candidate $i: ${candidate:-defaults}"
      read -ra settings <<<"$candidate"
      if [ "$pass" = 1 ]; then
        (cd bench/device && env "${settings[@]}" python3 check.py "/tmp/tune-check-$i.json" | tail -1) || status=1
      fi
      (cd bench/device && env "${settings[@]}" python3 bench.py --prefix "/tmp/tune-$pass-$i" \
        --head-dims "$head_dims" --seqlens "$seqlens" --no-first-call | grep -E "^d[0-9]|Error|error") || status=1
    done
  done
  python3 - "$passes" "${candidates[@]}" >"$OUT/tune-summary.md" <<'EOF'
import json, sys
passes, candidates = int(sys.argv[1]), sys.argv[2:]
print("# Tile candidates, attnforge / SDPA flash (same process, same inputs)\n")
rows = {}
for p in range(1, passes + 1):
    for i, c in enumerate(candidates):
        for r in json.load(open("/tmp/tune-%d-%d.json" % (p, i)))["rows"]:
            key = (r["head_dim"], r["causal"], r["seqlen"])
            rows.setdefault(key, {}).setdefault(c, []).append(r["attnforge"] / r["flash"] if r["attnforge"] and r["flash"] else 0)
print("| d | causal | S | " + " | ".join(c or "defaults" for c in candidates) + " |")
print("|---|---|---|" + "---|" * len(candidates))
for (d, causal, s), by in sorted(rows.items()):
    print("| %d | %s | %d | " % (d, "yes" if causal else "no", s) +
          " | ".join("/".join("%.2f" % x for x in by.get(c, [])) for c in candidates) + " |")
EOF
  cat "$OUT/tune-summary.md"
  date -u
  return $status
}

main 2>&1 | tee "$OUT/tune.log"
exit "${PIPESTATUS[0]}"
