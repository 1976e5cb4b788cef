# shellcheck shell=bash
# Shared steps of the device scripts (sourced, not run): the build, a PASS/FAIL ledger, and
# compute-sanitizer runs (any command, or sm90_check.py's --quick set) started in the background and collected later.
# After `source bench/device/lib.sh` from the repository root: $OUT exists, the Python package and the
# kernel cache are set up, and `af_build` leaves $ATTNFORGE_LIBRARY naming build-device/libattnforge.so.

OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python" ATTNFORGE_CACHE_DIR="${ATTNFORGE_CACHE_DIR:-/tmp/attnforge-device-cache}"
verdicts=()
status=0
san_pids=()
san_logs=()

# record NAME RC: a PASS or FAIL line for the summary (af_summary); a failure makes the exit status 1.
record() {
  if [ "$2" -eq 0 ]; then verdicts+=("PASS $1"); else verdicts+=("FAIL $1 (exit $2)"); status=1; fi
}

# The machine, then build-device/libattnforge.so (exits on a failed build).
af_build() {
  date -u
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
  if ! cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNFORGE_BUILD_TESTS=OFF >/dev/null ||
    ! ninja -C build-device libattnforge.so >/dev/null; then
    echo "BUILD FAILED"
    exit 1
  fi
  export ATTNFORGE_LIBRARY="$PWD/build-device/libattnforge.so"
}

# af_sanitize_run TOOL NAME SECONDS COMMAND...: compute-sanitizer TOOL over COMMAND in the background, with
# its own kernel cache; logs $OUT/sanitizer-TOOL-NAME.log (characters of NAME past [A-Za-z0-9@._-] as _:
# the device returns plain names only). af_sanitize_wait collects it.
af_sanitize_run() {
  local tool=$1 name=${2//[^A-Za-z0-9@._-]/_} seconds=$3
  shift 3
  (ATTNFORGE_CACHE_DIR="/tmp/af-san-$name-$tool" timeout "$seconds" compute-sanitizer --tool "$tool" \
    --error-exitcode 3 "$@" >"$OUT/sanitizer-$tool-$name.log" 2>&1) &
  san_pids+=($!)
  san_logs+=("$OUT/sanitizer-$tool-$name.log")
}

# af_sanitize_start "VARIANT..." "TOOL..." [SECONDS]: each tool over sm90_check.py's --quick set through
# each fwd_sm90 variant (an --variants entry), all at once in the background (af_sanitize_run). The
# environment (e.g. ATTNFORGE_SM90_STAGES) passes through.
af_sanitize_start() {
  local v t
  for v in $1; do
    for t in $2; do
      ATTNFORGE_FWD_SM90=1 af_sanitize_run "$t" "$v" "${3:-280}" python3 bench/device/sm90_check.py \
        --stage correctness --quick --variants "$v"
    done
  done
}

# Waits for the af_sanitize_run jobs and records each: clean only with exit 0 and the tool's zero summary.
af_sanitize_wait() {
  local i rc log
  for i in "${!san_pids[@]}"; do
    wait "${san_pids[$i]}"
    rc=$?
    log=${san_logs[$i]}
    grep -q "ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards" "$log" || [ $rc -ne 0 ] || rc=4
    record "$(basename "$log" .log) ($(grep -E 'cases passed' "$log" | tail -1) $(grep -oE '[A-Z]+ SUMMARY.*' "$log" |
      tail -1))" $rc
  done
  san_pids=()
  san_logs=()
}

# The ledger, then exit with its status.
af_summary() {
  printf '%s\n' "${verdicts[@]}"
  if [ -n "${pack_name:-}" ]; then
    mkdir -p "$FINAL_OUT"
    tar czf "$FINAL_OUT/$pack_name" -C "$OUT" .
  fi
  exit $status
}

# af_pack_outputs NAME: the script's outputs go to a private folder from here on and leave as one tarball,
# $OUT/NAME as given, when af_summary runs (the device returns only a few files per call).
af_pack_outputs() {
  FINAL_OUT=$OUT pack_name=$1
  OUT=$(mktemp -d)
}

# af_knob_timing VAR VALUES HEAD_DIMS SEQLENS SECONDS TABLE: sm90_check.py's timing stage (fwd_sm90 beside cuDNN,
# bf16, 16k tokens per call; HEAD_DIMS and SEQLENS as its --head-dims and --seqlens) in two rounds, each with the
# environment variable VAR unset and then set to each of VALUES (space-separated) in turn (a knob read when the
# kernel table is built, so one process per setting; each process times cuDNN too, so the ratios compare), each
# run given SECONDS; then TABLE: sm90/cuDNN per shape (rows) and run (columns) with fwd_sm90's TFLOP/s and its
# plan's tile. VAR "-": each of VALUES is itself a comma-separated list of NAME=value settings.
af_knob_timing() {
  local var=$1 values=$2 head_dims=$3 seqlens=$4 seconds=$5 table=$6 i=0 round knob label dir rc runs=() names=()
  local settings
  for round in 1 2; do
    for knob in "" $values; do
      i=$((i + 1))
      if [ "$var" = - ]; then
        IFS=, read -r -a settings <<<"$knob"
        label=${knob:-default}
      else
        settings=("$var=$knob")
        if [ -z "$knob" ]; then label=default; else label="$var=$knob"; fi
      fi
      dir="$OUT/timing-$i"
      env "${settings[@]}" timeout $((seconds + 20)) python3 bench/device/sm90_check.py --stage timing \
        --head-dims "$head_dims" --seqlens "$seqlens" --backends fwd_sm90,sdpa_cudnn --seconds "$seconds" \
        --out "$dir" >"$dir.log" 2>&1
      rc=$?
      record "timing run $i ($label)" $rc
      runs+=("$dir")
      names+=("$label")
    done
  done
  python3 - "${#runs[@]}" "${runs[@]}" "${names[@]}" <<'EOF' | tee "$table"
import json
import re
import sys

count = int(sys.argv[1])
dirs, names = sys.argv[2:2 + count], sys.argv[2 + count:]
runs = []
for d in dirs:
    try:
        with open(d + "/timing.json") as f:
            runs.append({(r["batch"], r["seqlen"], r["heads"], r["heads_kv"], r["head_dim"], r["causal"]): r
                         for r in json.load(f)["rows"]})
    except (OSError, ValueError):
        runs.append({})
print("# fwd_sm90 / cuDNN, default against %s, bf16, CUDA-graph replay\n" % ", ".join(sorted(set(names) - {"default"})))
keys = sorted(set().union(*runs), key=lambda k: (k[4], k[5], k[3] != k[2], k[1]))
print("| shape | " + " | ".join("run %d: %s" % (i + 1, n) for i, n in enumerate(names)) + " |")
print("|---|" + "---|" * len(names))
for key in keys:
    b, s, h, hk, d, causal = key
    cells = []
    for run in runs:
        r = run.get(key)
        if not r or not r.get("fwd_sm90") or not r.get("sdpa_cudnn"):
            cells.append("-")
            continue
        tile = re.search(r"sm_90a (\d+x\d+)", r.get("fwd_sm90_plan", ""))
        cells.append("%.3f (%.0f, %s)" % (r["fwd_sm90"] / r["sdpa_cudnn"], r["fwd_sm90"],
                                          tile.group(1) if tile else "?"))
    print("| b%d s%d h%d/%d d%d %s | %s |" % (b, s, h, hk, d, "causal" if causal else "full", " | ".join(cells)))
print("\ncells: sm90/cuDNN (fwd_sm90 TFLOP/s, the plan's tile)")
# Each setting against the default: fwd_sm90's mean TFLOP/s over the setting's runs / over the default's runs.
labels = [n for n in dict.fromkeys(names) if n != "default"]
print("\n| shape | " + " | ".join("%s / default" % n for n in labels) + " |")
print("|---|" + "---|" * len(labels))
for key in keys:
    def mean(label):
        values = [run[key]["fwd_sm90"] for run, n in zip(runs, names)
                  if n == label and key in run and run[key].get("fwd_sm90")]
        return sum(values) / len(values) if values else None
    base = mean("default")
    cells = ["%.3f" % (mean(n) / base) if base and mean(n) else "-" for n in labels]
    b, s, h, hk, d, causal = key
    print("| b%d s%d h%d/%d d%d %s | %s |" % (b, s, h, hk, d, "causal" if causal else "full", " | ".join(cells)))
EOF
}
