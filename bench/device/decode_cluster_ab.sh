#!/usr/bin/env bash
# The decode cluster merge (issue 11) on an H100/H200, in one call (< 150 s):
#   OUT=dir bash bench/device/decode_cluster_ab.sh
# 1. build libattnforge.so (build-device/);
# 2. tests/gpu/test_decode.py -k "cluster or merge or heuristic": forced splits 2-8 and 16 through the
#    cluster merge against float64, both merges on the same inputs, the planned counts per merge,
#    graph replay, no workspace;
# 3. compute-sanitizer memcheck and racecheck on bench/device/decode_cluster_check.py (4 small cluster-path
#    calls, each against the global merge and float64);
# 4. decode_bench.py --batches 1,8 --lengths 1024,4096,32768 over $AF_CONFIGS (default bf16 32/8 d128 and
#    bf16 16/16 d64; 64/8 has the CTA counts of 32/8) with ATTNFORGE_DECODE_CLUSTER=0 and =1, then per
#    shape: the global merge's time, the cluster merge's, cuDNN's (its faster time over both runs), the
#    ratios and each run's plan string.
# One PASS/FAIL line per step at the end; exit status 0 only when every step passed.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python" ATTNFORGE_CACHE_DIR=/tmp/attnforge-device-cache
CONFIGS="${AF_CONFIGS:-bf16:32/8:128,bf16:16/16:64}"
verdicts=()
status=0
record() {  # record NAME RC
  if [ "$2" -eq 0 ]; then verdicts+=("PASS $1"); else verdicts+=("FAIL $1 (exit $2)"); status=1; fi
}

date -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== 1. build"
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null &&
  ninja -C build-device libattnforge.so >/dev/null || { echo "BUILD FAILED"; exit 1; }
export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"

# Steps 2 and 3 run at once (correctness only); the timings of step 4 run alone.
echo "== sanitizers started (their results: step 3)"
pids=()
for t in memcheck racecheck; do
  (timeout 150 compute-sanitizer --tool "$t" --error-exitcode 3 python3 bench/device/decode_cluster_check.py \
    >"$OUT/sanitizer-$t.log" 2>&1) &
  pids+=($!)
done

echo "== 2. pytest (cluster cases)"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_decode.py -k "cluster or merge or heuristic" \
  -rs 2>&1 | tail -15
record "pytest cluster cases" $?

echo "== 3. sanitizers"
tools=(memcheck racecheck)
for i in 0 1; do
  t=${tools[$i]}
  wait "${pids[$i]}"
  rc=$?
  log="$OUT/sanitizer-$t.log"
  grep -q "ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards" "$log" || [ $rc -ne 0 ] || rc=4
  grep -E "^(ok|FAIL|SKIP)|cases passed|SUMMARY" "$log"
  record "sanitizer $t" $rc
done

echo "== 4. A/B: ATTNFORGE_DECODE_CLUSTER=0 (global merge) vs =1 (cluster merge)"
for c in 0 1; do
  (cd bench/device && ATTNFORGE_DECODE_CLUSTER=$c timeout 150 python3 decode_bench.py --batches 1,8 \
    --lengths 1024,4096,32768 --configs "$CONFIGS" --prefix "$OUT/decode-cluster$c") >"$OUT/decode-cluster$c.log" 2>&1
  record "decode_bench ATTNFORGE_DECODE_CLUSTER=$c" $?
done
python3 - "$OUT/decode-cluster0.json" "$OUT/decode-cluster1.json" <<'EOF'
import json, sys
runs = [json.load(open(path))["rows"] for path in sys.argv[1:3]]
key = lambda r: (r["dtype"], r["heads"], r["heads_kv"], r["head_dim"], r["batch"], r["seqlen_k"])
cluster = {key(r): r for r in runs[1]}
plan = lambda r: (r.get("explain") or {}).get("plan", "?").replace("cuda decode ", "")
print("| dtype | H/Hk | D | B | keys | global us | cluster us | global/cluster | cuDNN us | cuDNN/global |"
      " cuDNN/cluster | plan (=0) | plan (=1) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for g in runs[0]:
    c = cluster.get(key(g))
    if c is None:
        continue
    cudnn = min(x for x in (g.get("cudnn_us"), c.get("cudnn_us"), float("inf")) if x)
    invalid = "" if g.get("valid") and c.get("valid") else " INVALID"
    print("| %s | %d/%d | %d | %d | %d | %.1f | %.1f | %.2fx | %.1f | %.2fx | %.2fx | %s | %s |%s" % (
        g["dtype"], g["heads"], g["heads_kv"], g["head_dim"], g["batch"], g["seqlen_k"], g["attnforge_us"],
        c["attnforge_us"], g["attnforge_us"] / c["attnforge_us"], cudnn, cudnn / g["attnforge_us"],
        cudnn / c["attnforge_us"], plan(g), plan(c), invalid))
EOF
record "A/B table" $?

echo "== summary"
printf '%s\n' "${verdicts[@]}"
exit $status
