"""fwd_sm90 against fwd_sm80 on sliding windows and softcap (the extras variants), one process, < 60 s.

    ATTNFORGE_LIBRARY=$PWD/build-device/libattnforge.so python3 bench/device/sm90_window_bench.py [--out DIR]

Shapes (bf16): a sliding window of 4096 keys (window_size (4095, 0), causal) over 16k keys at d128 with
32/8 heads, the same call without the window (the plain causal variant, for scale), and Gemma-2-like
d256 16/8 layers at 8k: a local one (the window, softcap 50) and a global one (causal, softcap 50).
Per shape each family (ATTNFORGE_FWD_SM90=1 / =0, read at each plan) is validated first: its plan must
name that family (fwd_sm90: the extras variant where softcap or a left window edge needs it), its
output must hold no NaN, and batch 0 head 0 must be within the float64 budget of tests/python/
reference.py (2x a same-precision naive implementation); then timed by CUDA-graph replay (median,
sm90_check.graph_ms). TFLOP/s count only the visible score entries (4 x D per visible (query, key)
pair and head). Prints a table and a PASS/FAIL line (timing itself passes or fails nothing); writes
window-bench.md and window-bench.json under --out. Exit status 0 only when every validation passed.
"""
import argparse
import importlib.util
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from sm90_check import graph_ms  # noqa: E402

_spec = importlib.util.spec_from_file_location("reference", os.path.join(HERE, "..", "..", "tests", "python",
                                                                          "reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

# (label, batch, seqlen, heads, heads_kv, head_dim, causal, window, softcap)
SHAPES = [
    ("window 4096 of 16k keys d128", 1, 16384, 32, 8, 128, True, (4095, 0), 0.0),
    ("causal 16k d128 (no window)", 1, 16384, 32, 8, 128, True, (-1, -1), 0.0),
    ("Gemma-2 local: window 4096 + softcap 50, 8k d256", 1, 8192, 16, 8, 256, True, (4095, 0), 50.0),
    ("Gemma-2 global: causal + softcap 50, 8k d256", 1, 8192, 16, 8, 256, True, (-1, -1), 50.0),
]


def visible_pairs(seqlen_q, seqlen_k, causal, window):
    """(query, key) pairs a sequence's mask leaves visible: FlashAttention-2's rule, bottom-right."""
    left, right = window
    if causal:
        right = 0
    rows = torch.arange(seqlen_q, dtype=torch.int64)
    diagonal = rows + seqlen_k - seqlen_q
    first = (diagonal - left).clamp(min=0) if left >= 0 else torch.zeros_like(rows)
    last = (diagonal + right).clamp(max=seqlen_k - 1) if right >= 0 else torch.full_like(rows, seqlen_k - 1)
    return int((last - first + 1).clamp(min=0).sum().item())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    native = common.native()
    torch.manual_seed(0)
    rows, failures = [], []
    print("%s, torch %s, library %s" % (torch.cuda.get_device_name(), torch.__version__,
                                        os.environ.get("ATTNFORGE_LIBRARY", "(default)")), flush=True)
    header = "| shape | visible | fwd_sm90 ms | TFLOP/s | fwd_sm80 ms | TFLOP/s | sm90/sm80 | fwd_sm90 plan |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    print(header, flush=True)
    for label, b, s, h, hk, d, causal, window, softcap in SHAPES:
        q = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16)
        pairs = visible_pairs(s, s, causal, window)
        flops = 4.0 * b * h * d * pairs
        fields = dict(causal=causal, window_size=window, softcap=softcap)
        extras = softcap > 0 or 0 <= window[0] < s
        want, _ = common.reference(q[0, :, :1], k[0, :, :1], v[0, :, :1], causal=causal, window=window,
                                   softcap=softcap)
        naive, _ = common.reference(q[0, :, :1], k[0, :, :1], v[0, :, :1], causal=causal, window=window,
                                    softcap=softcap, dtype=torch.bfloat16)
        row = dict(shape=label, batch=b, seqlen=s, heads=h, heads_kv=hk, head_dim=d, causal=causal, window=window,
                   softcap=softcap, visible_pairs=pairs)
        for family in ("fwd_sm90", "fwd_sm80"):
            os.environ["ATTNFORGE_FWD_SM90"] = "1" if family == "fwd_sm90" else "0"
            out = torch.full_like(q, float("nan"))
            try:
                plan = native.Plan(q, k, v, out, backend="cuda", **fields)
                described = plan.describe()
                kernel = described.split("(")[0]
                row[family + "_plan"] = described
                if " %s " % family not in " " + kernel or (family == "fwd_sm90" and (" extras " in kernel) != extras):
                    raise RuntimeError("plan %r is not the expected %s%s" % (described, family,
                                                                             " extras" if extras else ""))
                plan.run(q, k, v, out, backend="cuda", **fields)
                torch.cuda.synchronize()
                if out.isnan().any().item():
                    raise RuntimeError("NaN in the output")
                err, budget = reference.error_budget(out[0, :, :1].cpu(), want.cpu(), naive.cpu(), torch.bfloat16)
                row[family + "_error"], row[family + "_budget"] = err, budget
                if not err <= budget:
                    raise RuntimeError("batch 0 head 0 error %.3g over the float64 budget %.3g" % (err, budget))
                ms = graph_ms(lambda: plan.run(q, k, v, out, backend="cuda", **fields))
                row[family + "_ms"], row[family + "_tflops"] = ms, flops / ms / 1e9
            except Exception as e:  # reported per shape and family; the next still runs
                row[family + "_failure"] = "%s: %s" % (type(e).__name__, str(e)[:300])
                failures.append("%s %s: %s" % (label, family, row[family + "_failure"]))
        os.environ.pop("ATTNFORGE_FWD_SM90", None)

        def cell(family, key, fmt, row=row):
            return fmt % row[family + key] if family + key in row else "FAILED"

        ratio = ("%.2fx" % (row["fwd_sm80_ms"] / row["fwd_sm90_ms"])
                 if "fwd_sm90_ms" in row and "fwd_sm80_ms" in row else "-")
        lines.append("| %s | %.1f%% | %s | %s | %s | %s | %s | %s |" % (
            label, 100.0 * pairs / (s * s), cell("fwd_sm90", "_ms", "%.3f"), cell("fwd_sm90", "_tflops", "%.0f"),
            cell("fwd_sm80", "_ms", "%.3f"), cell("fwd_sm80", "_tflops", "%.0f"), ratio,
            row.get("fwd_sm90_plan", "-")))
        print(lines[-1], flush=True)
        rows.append(row)
    for failure in failures:
        print("FAILED: " + failure, flush=True)
    validated = sum("fwd_sm90_ms" in r and "fwd_sm80_ms" in r for r in rows)
    print("%s: %d of %d shapes validated and timed on both families (sm90/sm80: fwd_sm80's time over fwd_sm90's; "
          "TFLOP/s of visible score entries only)" % ("PASS" if not failures else "FAIL", validated, len(SHAPES)),
          flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "window-bench.md"), "w") as f:
            f.write("# fwd_sm90 vs fwd_sm80, sliding windows and softcap (%s, torch %s, bf16, CUDA-graph replay, "
                    "median; TFLOP/s of visible score entries)\n\n" % (torch.cuda.get_device_name(),
                                                                      torch.__version__))
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(args.out, "window-bench.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows,
                           failures=failures), f, indent=1)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
