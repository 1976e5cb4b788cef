"""The fwd_sm90 family (Hopper: wgmma, TMA, warp specialisation) on the GPU, stage by stage.

    ATTNFORGE_LIBRARY=$PWD/build-device/libattnforge.so python3 bench/device/sm90_check.py --out $OUT/sm90

Stages, each in its own subprocess with its own time limit (a hang or a fatal CUDA error in one is
reported and the next still runs; the whole script stays under --budget seconds, 240 by default):
  1 probes       bench/device/sm90_probe.py: one TMA box, one wgmma S = Q K^T, wgmma O = P V at N 64 and 128;
  2 correctness  attnforge with fwd_sm90 on (ATTNFORGE_FWD_SM90=1) against a float64 reference (computed on the
                 GPU) on hd 64/128 (and 72, 192, 256), causal and not, heads 64/8, 32/8 and 16/16,
                 seqlens 1, 17, 128, 1000, 4097 (and Sq != Sk), batch 1-3, fp16 and bf16, a
                 (B, H, S, D) view, seqused_k/leftpad_k caches and varlen batches (empty key ranges and
                 sequences, lengths off the 128-row grid; key/value rows outside a sequence's used
                 range NaN), sliding windows and softcap (fwd_sm90's extras variants: windows with
                 both edges, a left edge under a causal mask, Sq > Sk with rows that see no key,
                 softcap with and without a mask, varlen): per case the family that ran, max error
                 against the house budget
                 (2x a same-precision naive implementation, tests/python/reference.py), LSE error, NaN;
  3 timing       only when stage 2 passed: fwd_sm90 vs attnforge's fwd_sm80 vs torch SDPA's flash and
                 cuDNN backends (enable_gqa=True), hd 64/128/256, causal and not, seqlen 512-16k at
                 16k tokens per call, plus 64/8 GQA rows; CUDA-graph replay, each shape's implementations in
                 three interleaved rounds (medians); TFLOP/s and ratios.
Writes sm90_check.log, correctness.json, timing.json, timing.md and timing.png (with matplotlib) under --out;
`--chart DIR/timing.json` redraws a saved sweep's chart without a GPU; `--stage timing` alone takes
--head-dims, --seqlens and --backends to time part of the sweep (bench/device/sm90_block_n_ab.sh). Exit status 0 only
when every stage that ran passed. `--stage correctness --quick` runs a few small cases only (for
compute-sanitizer, see bench/device/NOTES.md; its window/softcap cases run on the extras variants).
A variant without an extras form (sm90_has_extras in src/cuda/families.cpp: only pingpong and
pingpong-persistent, 128-row tiles, have one) skips the window/softcap cases of its sets.

A/B of fwd_sm90's schedules (ATTNFORGE_SM90_VARIANT, src/cuda/families.h), < 150 s:

    python3 bench/device/sm90_check.py --variants pingpong,pingpong-persistent,overlap,overlap-persistent \
        --out $OUT/sm90ab

runs, per variant, the correctness stage on a reduced set (32 cases: hd 64/128/256 and 72, causal and
not, GQA, odd and unequal lengths, fp16 and bf16, a (B, H, S, D) view, many (batch, head) pairs of
short tiles; each case must report that variant in its plan), then times every variant that passed
beside cuDNN on 16 shapes (bf16; hd 128 causal and not at batch 4 x 1k and at 512/2k/8k/16k, hd 64
and 256 at 1k/8k, 64/8 GQA at 4k): per shape each variant's
TFLOP/s and ratio to cuDNN, and the faster variant. Writes correctness-<variant>.json, ab.json and
ab.md under --out. A "-dynamic" variant's correctness stage also checks its tile counter across
relaunches, CUDA-graph replays, two streams and a caller's workspace (relaunch_check).
`--shapes causal` times 10 shapes instead (ab_shapes), for the dynamic scheduler's A/B in ~100 s:

    python3 bench/device/sm90_check.py --shapes causal --budget 110 --out $OUT/sm90dyn \
        --variants pingpong,pingpong-persistent,pingpong-dynamic,overlap,overlap-dynamic

A variant "SCHEDULE@192" is that schedule's 192-row form (three consumer warpgroups, head dim 64 only:
ATTNFORGE_SM90_BLOCK_M=192 beside ATTNFORGE_SM90_VARIANT=SCHEDULE); its correctness stage runs the
reduced (or --quick) set with every head dim moved to one that compiles to 64 (wide_case), and each
case must report "SCHEDULE sm_90a 192x" in its plan; in timing it is timed on d64 shapes only.
`--shapes d64` times 16 d64 shapes (32 heads at 16k tokens per call 512-16k, b4 1k, 64/8 GQA 4k, causal
and not), for the 192-row forms' A/B (bench/device/sm90_m192.sh):

    python3 bench/device/sm90_check.py --shapes d64 --budget 110 --out $OUT/m192 \
        --variants pingpong-persistent,pingpong-persistent@192,overlap-persistent@192,pingpong@192
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def split_variant(variant):
    """(schedule, block_m) of an --variants entry: "pingpong" -> ("pingpong", 128), "pingpong@192" ->
    ("pingpong", 192); a "+D:N" suffix (key-block widths, block_widths) is not part of either."""
    schedule, _, rows = variant.split("+")[0].partition("@")
    return schedule, int(rows or 128)


def block_widths(variant):
    """{head_dim: key-block width} of an entry's "+D:N" suffixes ($ATTNFORGE_SM90_BLOCK_N's entries):
    "pingpong-persistent+128:176+256:80" -> {128: 176, 256: 80}."""
    return {int(d): int(n) for d, n in (x.split(":") for x in variant.split("+")[1:])}


def variant_env(variant):
    """The environment that selects a variant (read by the library at each plan)."""
    schedule, block_m = split_variant(variant)
    widths = ";".join("%d:%d" % x for x in block_widths(variant).items())
    return dict(ATTNFORGE_SM90_VARIANT=schedule, ATTNFORGE_SM90_BLOCK_M=str(block_m), ATTNFORGE_SM90_BLOCK_N=widths)


def variant_in_plan(variant, plan):
    """Whether a plan's describe() names this variant: "fwd_sm90 bf16 d64 pingpong sm_90a 192x128 ...", with
    the key-block width of its head dim where the entry sets one."""
    schedule, block_m = split_variant(variant)
    kernel = plan.split("(")[0]  # the reason in parentheses may name fwd_sm90 when fwd_sm80 runs
    if " fwd_sm90 " not in " " + kernel or " %s sm_90a %dx" % (schedule, block_m) not in kernel:
        return False
    width = next((n for d, n in block_widths(variant).items() if " d%d " % d in kernel), None)
    return width is None or " %s sm_90a %dx%d" % (schedule, block_m, width) in kernel


# fwd_sm90's schedules with an extras variant (a sliding window's left edge and softcap compiled in;
# 128-row tiles only): sm90_has_extras in src/cuda/families.cpp.
EXTRAS_SCHEDULES = ("pingpong", "pingpong-persistent")


def has_extras(case):
    """Whether a case needs fwd_sm90's extras variant: softcap, or a window's left edge within its keys
    (window_left_in_effect in src/cuda/plan.cpp: one of at least seqlen_k keys is no edge)."""
    return case.get("softcap", 0.0) > 0 or 0 <= case.get("window", (-1, -1))[0] < case["sk"]


def runs_extras(variant):
    """Whether a --variants entry (or "", the plan's own choice) has an extras form to run such cases."""
    return not variant or split_variant(variant) in [(x, 128) for x in EXTRAS_SCHEDULES]


def wide_case(case):
    """A case moved to a head dim that compiles to 64 (the 192-row forms' only one): 128 and 256 -> 64,
    72 -> 56 (zero-filled dims 56..63)."""
    return dict(case, d={72: 56}.get(case["d"], min(case["d"], 64)))


def log(out_dir, text):
    print(text, flush=True)
    if out_dir:
        with open(os.path.join(out_dir, "sm90_check.log"), "a") as f:
            f.write(text + "\n")


# ---------------------------------------------------------------------------------------------- stage 2


def seq_case(dtype, d, heads, heads_kv, causal, lens_q, lens_k=None, cache=None, used=None, pad=None, **extra):
    """A case of per-sequence keys: varlen (lens_q/lens_k packed, optional seqused_k within lens_k) or
    padded (lens_q all equal, a cache of `cache` rows per sequence, seqused_k `used`, leftpad_k `pad`);
    extra: window=(left, right), softcap."""
    return dict(dtype=dtype, batch=len(lens_q), sq=max(lens_q), sk=max(lens_k) if lens_k else cache, heads=heads,
                heads_kv=heads_kv, d=d, causal=causal, lens_q=lens_q, lens_k=lens_k, used=used, pad=pad,
                layout="varlen" if lens_k else "cache", **extra)


def window_cases(quick):
    """Sliding windows and softcap (fwd_sm90's extras variants). quick: five small ones for compute-sanitizer
    (a sliding window of several key blocks, Sq > Sk with rows that see no key, softcap d256, varlen with
    empty sequences, 288 query tiles: several per CTA of a persistent form); else also per dtype and head
    dim a causal sliding window and a non-causal softcap at GQA 32/8, two-sided windows with Sq < Sk and
    Sq > Sk, a 4097-row causal window of 1024 (16/2 heads) and seqused_k/leftpad_k with an empty range."""
    cases = [dict(dtype="bf16", batch=2, sq=300, sk=300, heads=8, heads_kv=2, d=128, causal=True, window=(100, 0)),
             dict(dtype="fp16", batch=2, sq=257, sk=130, heads=4, heads_kv=2, d=64, causal=False, window=(20, 5)),
             dict(dtype="bf16", batch=2, sq=200, sk=333, heads=4, heads_kv=2, d=256, causal=True, softcap=50.0),
             seq_case("bf16", 128, 8, 2, True, [0, 300, 1, 129, 77], lens_k=[5, 300, 0, 200, 77], window=(64, 0),
                      softcap=30.0),
             dict(dtype="bf16", batch=12, sq=300, sk=300, heads=8, heads_kv=2, d=64, causal=True, window=(50, 0))]
    if quick:
        return cases
    for dtype in ("bf16", "fp16"):
        for d in (64, 128, 256):
            cases.append(dict(dtype=dtype, batch=2, sq=1000, sk=1000, heads=32, heads_kv=8, d=d, causal=True,
                              window=(256, 0)))
            cases.append(dict(dtype=dtype, batch=2, sq=1000, sk=1000, heads=32, heads_kv=8, d=d, causal=False,
                              softcap=30.0))
        cases.append(dict(dtype=dtype, batch=2, sq=333, sk=1000, heads=8, heads_kv=4, d=128, causal=False,
                          window=(191, 193)))
        cases.append(dict(dtype=dtype, batch=2, sq=1000, sk=333, heads=8, heads_kv=4, d=64, causal=False,
                          window=(127, 129), softcap=20.0))
    cases.append(dict(dtype="bf16", batch=1, sq=4097, sk=4097, heads=16, heads_kv=2, d=128, causal=True,
                      window=(1024, 0)))
    cases.append(seq_case("fp16", 256, 8, 2, True, [150] * 3, cache=333, used=[333, 200, 17], pad=[0, 50, 17],
                          window=(100, 0)))
    return cases


def sequence_cases(dtypes, head_dims):
    cases = []
    for dtype in dtypes:
        for d in head_dims:
            cases.append(seq_case(dtype, d, 16, 4, True, [300] * 4, cache=1000, used=[1000, 517, 0, 129],
                                  pad=[0, 100, 0, 129]))
            cases.append(seq_case(dtype, d, 16, 4, False, [0, 1000, 129, 1, 555], lens_k=[7, 1000, 0, 300, 555]))
            cases.append(seq_case(dtype, d, 8, 8, True, [257, 64, 900], lens_k=[300, 64, 1000], used=[300, 10, 901]))
    return cases


def sequence_inputs(case, dtype):
    """q, k, v, the call's per-sequence fields, and per sequence (q index, k/v index, lse index), for
    a seq_case; key/value rows outside a sequence's used keys that are no other sequence's are NaN."""
    import torch

    h, hk, d = case["heads"], case["heads_kv"], case["d"]
    lens_q, lens_k, used, pad = case["lens_q"], case["lens_k"], case["used"], case["pad"]

    def ints(values):
        return torch.tensor(values, dtype=torch.int32, device="cuda")

    fields, spans = {}, []
    if lens_k:
        cu_q = [0] + torch.tensor(lens_q).cumsum(0).tolist()
        cu_k = [0] + torch.tensor(lens_k).cumsum(0).tolist()
        q = torch.randn(cu_q[-1], h, d, device="cuda", dtype=dtype)
        k = torch.randn(cu_k[-1], hk, d, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        for i in range(len(lens_q)):
            end = cu_k[i] + (used[i] if used else lens_k[i])
            k[end:cu_k[i + 1]] = float("nan")
            v[end:cu_k[i + 1]] = float("nan")
            spans.append((slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], end), (slice(None), slice(cu_q[i], cu_q[i + 1]))))
        fields.update(cu_seqlens_q=ints(cu_q), cu_seqlens_k=ints(cu_k), max_seqlen_q=max(lens_q),
                      max_seqlen_k=max(lens_k))
    else:
        q = torch.randn(len(lens_q), lens_q[0], h, d, device="cuda", dtype=dtype)
        k = torch.randn(len(lens_q), case["sk"], hk, d, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        for i in range(len(lens_q)):
            begin, end = (pad[i] if pad else 0), (used[i] if used else case["sk"])
            for x in (k, v):
                x[i, :begin] = float("nan")
                x[i, end:] = float("nan")
            spans.append((i, (i, slice(begin, end)), i))
    if used:
        fields["seqused_k"] = ints(used)
    if pad:
        fields["leftpad_k"] = ints(pad)
    return q, k, v, fields, spans


def reduced_cases():
    """32 cases that cover what the full set does, for an A/B run of several variants. Most have more
    query tiles (of 128 rows) than the H200's 132 SMs, so a persistent variant's CTAs run several
    tiles each; the last two are many short tiles of many (batch, head) pairs, one with query rows
    that see no key (empty tiles: zero out, -inf LSE)."""
    cases = []
    for dtype in ("bf16", "fp16"):
        for d in (64, 128, 256):
            for causal in (False, True):
                cases.append(dict(dtype=dtype, batch=2, sq=1000, sk=1000, heads=32, heads_kv=8, d=d, causal=causal))
        for causal in (False, True):
            cases.append(dict(dtype=dtype, batch=2, sq=1000, sk=4097, heads=16, heads_kv=16, d=128, causal=causal))
            cases.append(dict(dtype=dtype, batch=2, sq=4097, sk=1000, heads=16, heads_kv=16, d=64, causal=causal))
        cases.append(dict(dtype=dtype, batch=3, sq=17, sk=17, heads=64, heads_kv=8, d=128, causal=True))
        cases.append(dict(dtype=dtype, batch=2, sq=128, sk=128, heads=64, heads_kv=8, d=128, causal=False))
        cases.append(dict(dtype=dtype, batch=3, sq=333, sk=517, heads=8, heads_kv=4, d=72, causal=True))
        cases.append(dict(dtype=dtype, batch=2, sq=777, sk=777, heads=8, heads_kv=8, d=128, causal=True, layout="bhsd"))
    cases.append(dict(dtype="bf16", batch=1, sq=4097, sk=4097, heads=64, heads_kv=8, d=128, causal=True))
    cases.append(dict(dtype="fp16", batch=1, sq=4097, sk=4097, heads=64, heads_kv=8, d=128, causal=False))
    cases.append(dict(dtype="bf16", batch=40, sq=257, sk=257, heads=12, heads_kv=4, d=64, causal=True))
    cases.append(dict(dtype="fp16", batch=24, sq=300, sk=100, heads=8, heads_kv=8, d=256, causal=True))
    cases.append(seq_case("bf16", 128, 16, 4, True, [300] * 4, cache=1000, used=[1000, 517, 0, 129],
                          pad=[0, 100, 0, 129]))
    cases.append(seq_case("fp16", 64, 16, 4, False, [0, 1000, 129, 1, 555], lens_k=[7, 1000, 0, 300, 555]))
    cases.append(seq_case("bf16", 256, 8, 8, True, [257, 64, 900], lens_k=[300, 64, 1000], used=[300, 10, 901]))
    cases += window_cases(True)
    return sorted(cases, key=lambda c: c["batch"] * c["sq"] * c["sk"] * c["heads"])


def correctness_cases(quick):
    cases = []
    if quick:
        for causal in (False, True):
            cases.append(dict(dtype="bf16", batch=2, sq=200, sk=200, heads=8, heads_kv=2, d=128, causal=causal))
            cases.append(dict(dtype="fp16", batch=1, sq=130, sk=257, heads=4, heads_kv=4, d=64, causal=causal))
        # 576 query tiles: several per CTA of a persistent variant, some of them empty (sq > sk, causal).
        cases.append(dict(dtype="bf16", batch=24, sq=300, sk=100, heads=8, heads_kv=2, d=64, causal=True))
        # d256 under a causal mask: the first warpgroup of a diagonal tile skips its first key block (64 keys), on
        # the square diagonal and a shifted one.
        cases.append(dict(dtype="bf16", batch=2, sq=300, sk=300, heads=4, heads_kv=2, d=256, causal=True))
        cases.append(dict(dtype="fp16", batch=1, sq=200, sk=333, heads=4, heads_kv=4, d=256, causal=True))
        # seqused_k/leftpad_k (an empty range, leftpad == seqused) and varlen with empty sequences,
        # rows past each sequence NaN: the boxes read them; V's are zeroed before P V.
        cases.append(seq_case("bf16", 128, 4, 2, True, [200] * 3, cache=300, used=[300, 130, 7], pad=[0, 3, 7]))
        cases.append(seq_case("fp16", 64, 8, 2, False, [0, 300, 1, 129, 77] * 4, lens_k=[5, 300, 0, 200, 77] * 4))
        return cases + window_cases(True)
    cases += sequence_cases(("bf16", "fp16"), (64, 128, 256))
    cases += window_cases(False)
    batch_of = {1: 3, 17: 3, 128: 2, 1000: 2, 4097: 1}
    for dtype in ("bf16", "fp16"):
        for d in (64, 128):
            for heads, heads_kv in ((64, 8), (32, 8)):
                for causal in (False, True):
                    for s in (1, 17, 128, 1000, 4097):
                        cases.append(dict(dtype=dtype, batch=batch_of[s], sq=s, sk=s, heads=heads, heads_kv=heads_kv,
                                          d=d, causal=causal))
        for causal in (False, True):
            cases.append(dict(dtype=dtype, batch=2, sq=1000, sk=4097, heads=16, heads_kv=16, d=128, causal=causal))
            cases.append(dict(dtype=dtype, batch=2, sq=4097, sk=1000, heads=16, heads_kv=16, d=64, causal=causal))
        cases.append(dict(dtype=dtype, batch=3, sq=333, sk=517, heads=8, heads_kv=4, d=72, causal=True))
        for causal in (False, True):
            cases.append(dict(dtype=dtype, batch=2, sq=1000, sk=1000, heads=32, heads_kv=8, d=256, causal=causal))
            cases.append(dict(dtype=dtype, batch=3, sq=17 * 8, sk=200, heads=4, heads_kv=2, d=192, causal=causal))
        cases.append(dict(dtype=dtype, batch=2, sq=777, sk=777, heads=8, heads_kv=8, d=128, causal=True, layout="bhsd"))
    # Small cases first: if the stage runs out of time, the many short ones have been reported.
    return sorted(cases, key=lambda c: c["batch"] * c["sq"] * c["sk"] * c["heads"])


def run_correctness(out_dir, quick, variant=""):
    """variant: a fwd_sm90 schedule that every fwd_sm90 case must report in its plan (the reduced
    set unless quick, results in correctness-<variant>.json), or "" (the full set, or --quick's)."""
    import importlib.util

    import torch

    sys.path.insert(0, HERE)
    import common

    spec = importlib.util.spec_from_file_location("reference", os.path.join(REPO, "tests", "python", "reference.py"))
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    native = common.native()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    torch.manual_seed(0)
    results, failures = [], 0
    cases = correctness_cases(True) if quick else (reduced_cases() if variant else correctness_cases(False))
    wide = bool(variant) and split_variant(variant)[1] == 192
    if wide:
        cases = [wide_case(c) for c in cases]
    if not runs_extras(variant):
        cases = [c for c in cases if not has_extras(c)]
    for case in cases:
        dtype = dtypes[case["dtype"]]
        b, sq, sk, h, hk, d = case["batch"], case["sq"], case["sk"], case["heads"], case["heads_kv"], case["d"]
        fields = {}
        spans = [(i, i, i) for i in range(b)]  # (q and out, k and v, lse) of each sequence
        if "lens_q" in case:
            q, k, v, fields, spans = sequence_inputs(case, dtype)
        elif case.get("layout") == "bhsd":
            q = torch.randn(b, h, sq, d, device="cuda", dtype=dtype).transpose(1, 2)
            k = torch.randn(b, hk, sk, d, device="cuda", dtype=dtype).transpose(1, 2)
            v = torch.randn(b, hk, sk, d, device="cuda", dtype=dtype).transpose(1, 2)
        else:
            q = torch.randn(b, sq, h, d, device="cuda", dtype=dtype)
            k = torch.randn(b, sk, hk, d, device="cuda", dtype=dtype)
            v = torch.randn(b, sk, hk, d, device="cuda", dtype=dtype)
        out = torch.full(q.shape[:-2] + (h, d), float("nan"), device="cuda", dtype=dtype)
        lse_shape = (h, q.shape[0]) if "cu_seqlens_q" in fields else (b, h, sq)
        lse = torch.full(lse_shape, float("nan"), device="cuda", dtype=torch.float32)
        row = {x: y for x, y in case.items() if x not in ("lens_q", "lens_k", "used", "pad")}
        window, softcap = case.get("window", (-1, -1)), case.get("softcap", 0.0)
        fields.update(window_size=window, softcap=softcap)
        try:
            row["plan"] = native.Plan(q, k, v, out, lse, backend="cuda", causal=case["causal"], **fields).describe()
            native.attention_forward(q, k, v, out, lse, backend="cuda", causal=case["causal"], **fields)
            torch.cuda.synchronize()
            err = budget = lse_err = worst = 0.0
            nan = bool(out.isnan().any().item() or lse.isnan().any().item())
            lse_pattern = lse_ok = True
            for q_index, k_index, lse_index in spans:
                if q[q_index].shape[0] == 0:
                    continue  # an empty query sequence: nothing to compare
                for h0 in range(0, h, 16):  # heads in chunks: the float64 scores of 4097 x 4097 x 16 are 2 GB
                    h1, g = min(h, h0 + 16), h // hk
                    qs, ks, vs = q[q_index], k[k_index], v[k_index]
                    qi, ki, vi = qs[:, h0:h1], ks[:, h0 // g:(h1 - 1) // g + 1], vs[:, h0 // g:(h1 - 1) // g + 1]
                    if g > 1:  # the chunk's query heads against their own KV heads
                        index = torch.arange(h0, h1, device="cuda") // g - h0 // g
                        ki, vi = ki[:, index], vi[:, index]
                    expected, expected_lse = common.reference(qi, ki, vi, causal=case["causal"], window=window,
                                                              softcap=softcap)
                    naive, _ = common.reference(qi, ki, vi, causal=case["causal"], window=window, softcap=softcap,
                                                dtype=dtype)
                    e, bud = reference.error_budget(out[q_index][:, h0:h1], expected, naive, dtype)
                    if e / bud >= worst:  # the chunk nearest its budget (or furthest past it) is reported
                        worst, err, budget = e / bud, e, bud
                    ours_lse = lse[lse_index][h0:h1].double()
                    lse_pattern &= bool(torch.equal(torch.isinf(ours_lse), torch.isinf(expected_lse)))
                    finite = ~torch.isinf(expected_lse)
                    if finite.any():  # tests/python/reference.py's rule: 1e-4 relative to the largest |LSE|
                        e = (ours_lse[finite] - expected_lse[finite]).abs().max().item()
                        tolerance = 1e-4 * max(1.0, expected_lse[finite].abs().max().item())
                        lse_err, lse_ok = max(lse_err, e), lse_ok and e <= tolerance
            row.update(err=err, budget=budget, lse_err=lse_err, nan=nan, lse_inf_pattern=lse_pattern)
            row["ok"] = (not nan) and worst <= 1.0 and lse_pattern and lse_ok
        except Exception as e:  # reported per case; a sticky CUDA error ends the stage in the parent's report
            row.update(ok=False, error="%s: %s" % (type(e).__name__, e))
        expect_sm90 = sq * (h // hk) > 64
        # describe(): "fwd_sm90 bf16 d128 overlap sm_90a 128x128 ...": the variant asked for, not another.
        kernel = row.get("plan", "").split("(")[0]
        # and the extras variant exactly where softcap or a left window edge needs it
        row["family_ok"] = (not expect_sm90) or (
            (variant_in_plan(variant, kernel) if variant else " fwd_sm90 " in " " + kernel)
            and (" extras " in kernel) == has_extras(case))
        row["ok"] = row["ok"] and row["family_ok"]
        failures += not row["ok"]
        results.append(row)
        masks = ("window=(%d,%d) " % window if window != (-1, -1) else "") + (
            "softcap=%g " % softcap if softcap else "")
        log(out_dir, "  %s%-4s %-5s b%d sq%-5d sk%-5d h%d/%d d%-3d %-6s %-5s %s%s" % (
            "[%s] " % variant if variant else "", "ok" if row["ok"] else "FAIL", case["dtype"], b, sq, sk, h, hk, d,
            "causal" if case["causal"] else "full", case.get("layout", "bshd"), masks,
            row.get("error") or "err %.3g (budget %.3g) lse %.2g nan=%s | %s%s" % (
                row["err"], row["budget"], row["lse_err"], row["nan"], row["plan"],
                "" if row["family_ok"] else "  <- expected fwd_sm90 %s" % variant)))
    if split_variant(variant)[0].endswith("-dynamic"):
        d = 64 if wide else 128
        row = relaunch_check(native, d)
        failures += not row["ok"]
        results.append(row)
        log(out_dir, "  [%s] %-4s relaunches b2 s2048 h16/4 d%d causal: %s" % (
            variant, "ok" if row["ok"] else "FAIL", d, row.get("error") or row["detail"]))
    if out_dir:
        name = "correctness-%s.json" % re.sub("[^A-Za-z0-9@._-]", "_", variant) if variant else "correctness.json"
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(results, f, indent=1)
    log(out_dir, "%s: %d of %d cases passed" % ("correctness of " + variant if variant else "stage 2",
                                               len(results) - failures, len(results)))
    return 0 if failures == 0 else 1


def relaunch_check(native, d=128):
    """A dynamic form's tile counter must be 0 again after each launch and never shared by two launches
    at once: one plan (b2 s2048 16/4 heads, head dim d, causal; at d128 512 query tiles, ~4 per CTA) runs on the
    stream's workspace 3 times, as a CUDA graph replayed 3 times, on two streams at once (4 launches
    each, different inputs), and on a caller's workspace filled with 0xff (2 launches); out is NaN
    before each launch, and every result must equal (bit for bit: the same kernel computes each tile
    the same way, whichever CTA takes it) the first launch's on the same inputs, which also passes
    the float64 budget in the reduced set's case of this shape kind."""
    import torch

    def inputs():
        return (torch.randn(2, 2048, 16, d, device="cuda", dtype=torch.bfloat16),
                torch.randn(2, 2048, 4, d, device="cuda", dtype=torch.bfloat16),
                torch.randn(2, 2048, 4, d, device="cuda", dtype=torch.bfloat16))

    checks = []
    try:
        q, k, v = inputs()
        out = torch.full_like(q, float("nan"))
        plan = native.Plan(q, k, v, out, backend="cuda", causal=True)
        bytes_ = plan.workspace_size()

        def launch(q, k, v, out, **kw):
            out.fill_(float("nan"))
            plan.run(q, k, v, out, backend="cuda", causal=True, **kw)

        launch(q, k, v, out)
        torch.cuda.synchronize()
        first = out.clone()
        checks.append(("first launch has no NaN", not first.isnan().any().item()))
        for i in range(2):
            launch(q, k, v, out)
            torch.cuda.synchronize()
            checks.append(("stream workspace launch %d" % (i + 2), torch.equal(out, first)))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            launch(q, k, v, out)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            plan.run(q, k, v, out, backend="cuda", causal=True)
        for i in range(3):
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            checks.append(("graph replay %d" % (i + 1), torch.equal(out, first)))
        streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        data = [(q, k, v, torch.empty_like(q)), inputs() + (torch.empty_like(q),)]
        second_first = torch.full_like(q, float("nan"))
        launch(*data[1][:3], second_first)
        torch.cuda.synchronize()
        for s in streams:
            s.wait_stream(torch.cuda.current_stream())
        for _ in range(4):
            for s, d in zip(streams, data):
                with torch.cuda.stream(s):
                    launch(*d)
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        checks.append(("two streams at once, stream 1", torch.equal(data[0][3], first)))
        checks.append(("two streams at once, stream 2", torch.equal(data[1][3], second_first)))
        workspace = torch.full((max(bytes_, 4),), 255, device="cuda", dtype=torch.uint8)
        for i in range(2):
            launch(q, k, v, out, workspace=workspace)
            torch.cuda.synchronize()
            checks.append(("caller's workspace launch %d" % (i + 1), torch.equal(out, first)))
        checks.append(("caller's counter back at 0", workspace[:4].view(torch.int32).item() == 0))
        failed = [name for name, ok in checks if not ok]
        return dict(case="relaunch", plan=plan.describe(), workspace_bytes=bytes_, ok=not failed and bytes_ == 4,
                    detail="%d of %d checks passed, workspace %d bytes%s | %s" % (
                        len(checks) - len(failed), len(checks), bytes_,
                        "; FAILED: " + ", ".join(failed) if failed else "", plan.describe()))
    except Exception as e:
        return dict(case="relaunch", ok=False, error="%s: %s" % (type(e).__name__, e))


# ---------------------------------------------------------------------------------------------- stage 3


def graph_timer(fn, calls=10, repeats=7):
    """fn captured `calls` times in a CUDA graph, as a function that returns milliseconds per call of its
    replay (median of `repeats`, common.time_ms)."""
    import torch

    import common

    fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(calls):
            fn()
    return lambda: common.time_ms(graph.replay, warmup=2, repeats=repeats) / calls


def graph_ms(fn, calls=10):
    """Milliseconds per call of fn: CUDA-graph replay of `calls` calls, median of 7 (common.time_ms)."""
    return graph_timer(fn, calls)()


SWEEP_ROUNDS = 3  # the sweep's implementations timed in turn, medians: single runs drift by a few percent


ALL_BACKENDS = ("fwd_sm90", "fwd_sm80", "sdpa_flash", "sdpa_cudnn")


def run_timing(out_dir, seconds, head_dims=(64, 128, 256), seqlens=(512, 1024, 2048, 4096, 8192, 16384),
               backends=ALL_BACKENDS):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sys.path.insert(0, HERE)
    import common

    native = common.native()
    deadline = time.time() + seconds
    rows = []
    shapes = []
    for d in head_dims:
        for causal in (False, True):
            for s in seqlens:
                shapes.append((16384 // s, s, 2048 // d, 2048 // d, d, causal))
    for causal in (False, True) if 128 in head_dims else ():
        shapes.append((1, 4096, 64, 8, 128, causal))
        shapes.append((2, 8192, 64, 8, 128, causal))

    def attnforge_fn(q, k, v, out, causal, sm90):
        os.environ["ATTNFORGE_FWD_SM90"] = "1" if sm90 else "0"
        plan = native.Plan(q, k, v, out, backend="cuda", causal=causal)
        return (lambda: plan.run(q, k, v, out, backend="cuda", causal=causal)), plan.describe()

    for b, s, h, hk, d, causal in shapes:
        if time.time() > deadline:
            log(out_dir, "  (time budget reached: later shapes not timed)")
            break
        q, k, v, out, flops, row = timing_case(b, s, h, hk, d, causal)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        timers = {}
        for name in backends:
            try:
                if name.startswith("fwd"):
                    fn, plan = attnforge_fn(q, k, v, out, causal, name == "fwd_sm90")
                    row[name + "_plan"] = plan
                    if name not in plan:
                        row[name] = None
                        continue
                else:
                    backend = SDPBackend.FLASH_ATTENTION if name == "sdpa_flash" else SDPBackend.CUDNN_ATTENTION

                    def fn(backend=backend):
                        with sdpa_kernel([backend]):
                            torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal,
                                                                             enable_gqa=hk != h)
                timers[name] = graph_timer(fn, repeats=5)
            except Exception as e:
                row[name] = None
                row[name + "_error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
        samples = {name: [] for name in timers}
        for _ in range(SWEEP_ROUNDS):
            for name, timer in timers.items():
                samples[name].append(timer())
        for name, ms in samples.items():
            row[name] = flops / sorted(ms)[len(ms) // 2] / 1e9
        del timers, samples  # the graphs, before the next shape allocates
        rows.append(row)

        def fmt(x):
            return "%6.0f" % x if x else "     -"

        ratio = lambda a, c: "%.2f" % (row[a] / row[c]) if row.get(a) and row.get(c) else "-"  # noqa: E731
        log(out_dir, "  b%-2d s%-5d h%d/%d d%-3d %-6s  TFLOP/s sm90 %s sm80 %s flash %s cudnn %s  sm90/cudnn %s "
            "sm90/sm80 %s" % (b, s, h, hk, d, "causal" if causal else "full", fmt(row.get("fwd_sm90")),
                               fmt(row.get("fwd_sm80")), fmt(row.get("sdpa_flash")), fmt(row.get("sdpa_cudnn")),
                               ratio("fwd_sm90", "sdpa_cudnn"), ratio("fwd_sm90", "fwd_sm80")))
    if out_dir:
        with open(os.path.join(out_dir, "timing.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)
        with open(os.path.join(out_dir, "timing.md"), "w") as f:
            f.write("# fwd_sm90 vs fwd_sm80 vs SDPA (%s, torch %s, bf16, TFLOP/s, CUDA-graph replay, median)\n\n"
                    % (torch.cuda.get_device_name(), torch.__version__))
            f.write("| B | S | H/Hk | D | mask | fwd_sm90 | fwd_sm80 | sdpa flash | sdpa cuDNN | sm90/cuDNN "
                    "| sm90/sm80 |\n")
            f.write("|---|---|---|---|---|---|---|---|---|---|---|\n")
            for r in rows:
                cell = lambda x: "%.0f" % r[x] if r.get(x) else "-"  # noqa: E731
                rat = lambda a, c: "%.2f" % (r[a] / r[c]) if r.get(a) and r.get(c) else "-"  # noqa: E731
                f.write("| %d | %d | %d/%d | %d | %s | %s | %s | %s | %s | %s | %s |\n" % (
                    r["batch"], r["seqlen"], r["heads"], r["heads_kv"], r["head_dim"],
                    "causal" if r["causal"] else "full", cell("fwd_sm90"), cell("fwd_sm80"), cell("sdpa_flash"),
                    cell("sdpa_cudnn"), rat("fwd_sm90", "sdpa_cudnn"), rat("fwd_sm90", "fwd_sm80")))
        timing_chart(os.path.join(out_dir, "timing.json"), os.path.join(out_dir, "timing.png"))
    return 0


def timing_chart(json_path, png_path):
    """The sweep of a timing.json as a chart: TFLOP/s against seqlen per head dim (columns) and mask (rows),
    fwd_sm90, fwd_sm80 and SDPA's flash and cuDNN backends; the GQA rows are left out. Needs matplotlib
    (skipped without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(json_path) as f:
        data = json.load(f)
    rows = [r for r in data["rows"] if r["heads"] == r["heads_kv"]]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    series = (("fwd_sm90", "attnforge fwd_sm90", "o-"), ("fwd_sm80", "attnforge fwd_sm80", "s:"),
              ("sdpa_flash", "SDPA flash", "x--"), ("sdpa_cudnn", "SDPA cuDNN", "d--"))
    for col, d in enumerate((64, 128, 256)):
        for row_index, causal in enumerate((False, True)):
            ax = axes[row_index][col]
            pts = [r for r in rows if r["head_dim"] == d and r["causal"] == causal]
            for key, label, style in series:
                xy = [(r["seqlen"], r[key]) for r in pts if r.get(key)]
                if xy:
                    ax.plot(*zip(*xy), style, label=label)
            ax.set_xscale("log", base=2)
            ax.set_title("d%d, %s" % (d, "causal" if causal else "no mask"), fontsize=9)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("TFLOP/s")
            if row_index == 1:
                ax.set_xlabel("seqlen (B x S = 16k tokens)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Forward, bf16, CUDA-graph replay (%s, torch %s)" % (data.get("device", "?"), data.get("torch", "?")))
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


def timing_case(b, s, h, hk, d, causal):
    """A timed shape's random bf16 q (B, S, H, D), k and v (B, S, Hk, D), out like q, its forward FLOPs
    and the start of its result row."""
    import torch

    sys.path.insert(0, HERE)
    import common

    q = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16)
    row = dict(batch=b, seqlen=s, heads=h, heads_kv=hk, head_dim=d, causal=causal)
    return q, k, v, torch.empty_like(q), common.attention_flops(b, h, s, s, d, causal), row


def ab_shapes(preset="all"):
    """(batch, seqlen, heads, heads_kv, head_dim, causal): batch 4 at 1k first (512 query tiles: under 4 per
    SM, where a persistent grid's tail shows; first, so that a cut budget keeps them), then 16k tokens per call,
    2048 query-head dims. preset "causal" (the dynamic scheduler's A/B, 10 shapes): d128 causal at b4 1k and
    at 16k tokens of 1k/2k/8k/16k, d256 causal 1k/4k, 64/8 GQA causal 4k, and d128 non-causal b4 1k and 8k.
    preset "d64" (the 192-row forms' A/B, 16 shapes): d64 with 32 heads at 16k tokens per call from 512 to 16k
    keys, b4 1k (32 heads) and 64/8 GQA 4k, each causal and not, the short ones first. preset "short-causal" (the
    causal schedules up to 4k keys, 10 shapes): d128 and d256 causal at 16k tokens of 512 to 4k keys, b4 1k d128,
    64/8 GQA causal 4k. preset "long-causal" (4 shapes): d128 causal at 16k tokens of 8k and 16k keys, 16 and 64/8
    heads."""
    if preset == "long-causal":
        return [(16384 // s, s, h, hk, 128, True) for s in (8192, 16384) for h, hk in ((16, 16), (64, 8))]
    if preset == "short-causal":
        shapes = [(16384 // s, s, 2048 // d, 2048 // d, d, True) for d in (128, 256) for s in (512, 1024, 2048, 4096)]
        return shapes + [(4, 1024, 16, 16, 128, True), (1, 4096, 64, 8, 128, True)]
    if preset == "d64":
        shapes = [(16384 // s, s, 32, 32, 64, causal) for s in (512, 1024, 2048) for causal in (False, True)]
        shapes += [(4, 1024, 32, 32, 64, causal) for causal in (False, True)]
        shapes += [(1, 4096, 64, 8, 64, causal) for causal in (False, True)]
        shapes += [(16384 // s, s, 32, 32, 64, causal) for s in (4096, 8192, 16384) for causal in (False, True)]
        return shapes
    if preset == "causal":
        shapes = [(4, 1024, 16, 16, 128, True)]
        shapes += [(16384 // s, s, 16, 16, 128, True) for s in (1024, 2048, 8192, 16384)]
        shapes += [(16384 // s, s, 8, 8, 256, True) for s in (1024, 4096)]
        shapes += [(1, 4096, 64, 8, 128, True), (4, 1024, 16, 16, 128, False), (2, 8192, 16, 16, 128, False)]
        return shapes
    shapes = [(4, 1024, 16, 16, 128, causal) for causal in (False, True)]
    shapes += [(16384 // s, s, 16, 16, 128, causal) for causal in (False, True) for s in (512, 2048, 8192, 16384)]
    shapes += [(16384 // s, s, 2048 // d, 2048 // d, d, False) for d in (64, 256) for s in (1024, 8192)]
    shapes += [(1, 4096, 64, 8, 128, causal) for causal in (False, True)]
    return shapes


def run_ab_timing(out_dir, seconds, variants, preset="all"):
    """Each fwd_sm90 variant beside SDPA's cuDNN backend on ab_shapes(), bf16; a variant whose plan
    does not name it (or is not fwd_sm90) is reported, not timed; a 192-row variant ("@192") is timed on
    the d64 shapes only."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sys.path.insert(0, HERE)
    import common

    native = common.native()
    os.environ["ATTNFORGE_FWD_SM90"] = "1"
    deadline = time.time() + seconds
    rows = []
    log(out_dir, "  columns: TFLOP/s of each variant and of cuDNN | each variant / cuDNN | the faster variant (and "
        "by how much it beats the runner-up)")
    log(out_dir, "  %-30s" % "shape" + "".join(" %9s" % x for x in variants) + " %9s" % "cudnn" + "  |" +
        "".join(" %9s" % x for x in variants) + "  | faster")
    for b, s, h, hk, d, causal in ab_shapes(preset):
        if time.time() > deadline:
            log(out_dir, "  (time budget reached: later shapes not timed)")
            break
        q, k, v, out, flops, row = timing_case(b, s, h, hk, d, causal)
        for variant in variants:
            if split_variant(variant)[1] == 192 and d != 64:
                row[variant] = None
                row[variant + "_plan"] = "no 192-row form at d%d" % d
                continue
            try:
                os.environ.update(variant_env(variant))  # read when the plan is made
                plan = native.Plan(q, k, v, out, backend="cuda", causal=causal)
                row[variant + "_plan"] = plan.describe()
                if not variant_in_plan(variant, row[variant + "_plan"]):
                    row[variant] = None
                    continue
                row[variant] = flops / graph_ms(lambda: plan.run(q, k, v, out, backend="cuda", causal=causal)) / 1e9
            except Exception as e:
                row[variant] = None
                row[variant + "_error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
        try:
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

            def cudnn():
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=hk != h)

            row["sdpa_cudnn"] = flops / graph_ms(cudnn) / 1e9
        except Exception as e:
            row["sdpa_cudnn"] = None
            row["sdpa_cudnn_error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
        timed = [x for x in variants if row.get(x)]
        row["faster"] = max(timed, key=lambda x: row[x]) if timed else None
        if len(timed) > 1:  # by how much the best beats the runner-up
            second = sorted((row[x] for x in timed), reverse=True)[1]
            row["margin"] = row[row["faster"]] / second
        rows.append(row)
        def cell(x, row=row):
            return "%9.0f" % row[x] if row.get(x) else "%9s" % "-"

        def ratio(x, row=row):
            return "%9.2f" % (row[x] / row["sdpa_cudnn"]) if row.get(x) and row.get("sdpa_cudnn") else "%9s" % "-"

        shape = "b%d s%d h%d/%d d%d %s" % (b, s, h, hk, d, "causal" if causal else "full")
        faster = "%s (x%.2f)" % (row["faster"], row["margin"]) if "margin" in row else (row["faster"] or "-")
        log(out_dir, "  %-30s" % shape + "".join(cell(x) for x in variants) + cell("sdpa_cudnn") + "  |" +
            "".join(ratio(x) for x in variants) + "  | " + faster)
        if not row.get("sdpa_cudnn"):
            log(out_dir, "    cudnn not timed: %s" % row.get("sdpa_cudnn_error"))
        for x in variants:
            if not row.get(x):
                log(out_dir, "    %s not timed: %s" % (x, row.get(x + "_error") or "plan " + row.get(x + "_plan", "?")))
    wins = {x: sum(r.get("faster") == x for r in rows) for x in variants}
    log(out_dir, "faster per shape: " + ", ".join("%s %d" % (x, n) for x, n in wins.items()) + " of %d" % len(rows))
    if out_dir:
        with open(os.path.join(out_dir, "ab.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, variants=variants, rows=rows),
                      f, indent=1)
        with open(os.path.join(out_dir, "ab.md"), "w") as f:
            f.write("# fwd_sm90 variants vs cuDNN (%s, torch %s, bf16, TFLOP/s, CUDA-graph replay, median)\n\n"
                    % (torch.cuda.get_device_name(), torch.__version__))
            f.write("| B | S | H/Hk | D | mask | " + " | ".join(variants) + " | cuDNN | " +
                    " | ".join(x + "/cuDNN" for x in variants) + " | faster |\n")
            f.write("|" + "---|" * (7 + 2 * len(variants)) + "\n")
            for r in rows:
                cell = lambda x: "%.0f" % r[x] if r.get(x) else "-"  # noqa: E731
                rat = lambda x: "%.2f" % (r[x] / r["sdpa_cudnn"]) if r.get(x) and r.get("sdpa_cudnn") else "-"  # noqa
                f.write("| %d | %d | %d/%d | %d | %s | " % (r["batch"], r["seqlen"], r["heads"], r["heads_kv"],
                                                          r["head_dim"], "causal" if r["causal"] else "full") +
                        " | ".join(cell(x) for x in variants) + " | " + cell("sdpa_cudnn") + " | " +
                        " | ".join(rat(x) for x in variants) + " | %s |\n" % (r["faster"] or "-"))
    return 0 if rows and all(r.get(x) for r in rows for x in variants
                             if split_variant(x)[1] != 192 or r["head_dim"] == 64) else 1


# ---------------------------------------------------------------------------------------------- driver


def stage(out_dir, title, argv, env, limit):
    log(out_dir, "== %s (limit %.0f s)" % (title, limit))
    start = time.time()
    try:
        p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=limit)
        text, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout) or ""
        rc = "timeout"
    # The child logs its own lines into sm90_check.log; the parent keeps what it printed otherwise.
    print(text, end="", flush=True)
    if out_dir and argv[1].endswith("sm90_probe.py"):
        with open(os.path.join(out_dir, "sm90_check.log"), "a") as f:
            f.write(text)
    if rc not in (0, "timeout") and out_dir and "Traceback" in text:
        with open(os.path.join(out_dir, "sm90_check.log"), "a") as f:
            f.write(text[-3000:])
    verdict = "PASS" if rc == 0 else ("TIMEOUT (a hang?)" if rc == "timeout" else "FAIL (exit %s)" % rc)
    log(out_dir, "== %s: %s in %.1f s" % (title, verdict, time.time() - start))
    return rc == 0


def main_ab(args, variants):
    start = time.time()
    budget = args.budget if "--budget" in sys.argv else 145.0
    left = lambda: budget - (time.time() - start) - 3  # noqa: E731
    env = dict(os.environ, ATTNFORGE_FWD_SM90="1", PYTHONUNBUFFERED="1")
    try:
        import torch

        log(args.out, "sm90_check A/B %s: %s, torch %s, library %s" % (
            ",".join(variants), torch.cuda.get_device_name(), torch.__version__,
            os.environ.get("ATTNFORGE_LIBRARY", "(default)")))
        if torch.cuda.get_device_capability() != (9, 0):
            log(args.out, "not an sm_90 GPU: fwd_sm90 does not run here")
            return 1
    except Exception as e:
        log(args.out, "torch/CUDA not usable: %s" % e)
        return 1
    me = os.path.abspath(__file__)
    extra = ["--out", args.out] if args.out else []
    passed = []
    for i, variant in enumerate(variants):
        share = max(10.0, (left() * 0.6) / (len(variants) - i))  # 60% of the budget for correctness
        selection = " ".join("%s=%s" % x for x in variant_env(variant).items())
        if stage(args.out, "correctness of %s (reduced set, %s)" % (variant, selection),
                 [sys.executable, me, "--stage", "correctness", "--variants", variant] + extra,
                 dict(env, **variant_env(variant)), share):
            passed.append(variant)
    ok = False
    if len({variant_env(x)["ATTNFORGE_SM90_BLOCK_N"] for x in passed}) > 1:
        # The library reads the key-block widths once per process (its variant table), so one timing process
        # cannot interleave them.
        log(args.out, "== timing skipped: key-block widths differ between variants; time them with "
            "sm90_block_n_ab.sh (a process per width)")
    elif passed and left() > 15:
        ok = stage(args.out, "timing of %s beside cuDNN" % ",".join(passed),
                   [sys.executable, me, "--stage", "ab-timing", "--variants", ",".join(passed), "--shapes", args.shapes,
                    "--seconds", str(max(10.0, left() - 10))] + extra, env, left())
    else:
        log(args.out, "== timing skipped (%s)" % ("no variant passed" if not passed else "no time left"))
    log(args.out, "sm90_check A/B: correct %s of %s; timing %s (%.0f s)" % (
        ",".join(passed) or "none", ",".join(variants), "ok" if ok else "not run or FAILED", time.time() - start))
    return 0 if ok and len(passed) == len(variants) else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the whole script")
    parser.add_argument("--stage", choices=("all", "correctness", "timing", "ab-timing"), default="all")
    parser.add_argument("--quick", action="store_true", help="stage 2: a few small cases (for compute-sanitizer)")
    parser.add_argument("--seconds", type=float, default=120.0, help="stage 3's own time budget")
    parser.add_argument("--head-dims", default="64,128,256", help="--stage timing: head dims of its sweep")
    parser.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384",
                        help="--stage timing: sequence lengths of its sweep (16k tokens per call)")
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS),
                        help="--stage timing: what it times (of %s)" % ",".join(ALL_BACKENDS))
    parser.add_argument("--shapes", choices=("all", "causal", "d64", "short-causal", "long-causal"), default="all",
                        help="the A/B's timed shapes: all 16 (ab_shapes), 'causal': 10, mostly causal, 'd64': 16, or "
                             "'short-causal': 10 causal up to 4k keys, 'long-causal': 4 from 8k")
    parser.add_argument("--variants", default="", help="A/B run of these fwd_sm90 schedules, e.g. v0,overlap, "
                        "pingpong@192 (a 192-row form) or pingpong-persistent+128:176 (key-block widths per head dim); "
                        "correctness on the reduced set, then timing beside cuDNN; budget 145 s unless --budget)")
    parser.add_argument("--chart", metavar="TIMING_JSON", help="only draw a timing.json's chart (no GPU), into "
                        "the same name with .png")
    args = parser.parse_args()
    if args.chart:
        return timing_chart(args.chart, os.path.splitext(args.chart)[0] + ".png")
    variants = [x for x in args.variants.split(",") if x]
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    if args.stage == "correctness":
        os.environ["ATTNFORGE_FWD_SM90"] = "1"
        if len(variants) > 1:
            parser.error("--stage correctness takes one variant")
        if variants:
            os.environ.update(variant_env(variants[0]))
        return run_correctness(args.out, args.quick, variants[0] if variants else "")
    if args.stage == "timing":
        ints = lambda text: tuple(int(x) for x in text.split(",") if x)  # noqa: E731
        return run_timing(args.out, args.seconds, ints(args.head_dims), ints(args.seqlens),
                          tuple(x for x in args.backends.split(",") if x in ALL_BACKENDS))
    if args.stage == "ab-timing":
        return run_ab_timing(args.out, args.seconds, variants, args.shapes)
    if variants:
        return main_ab(args, variants)

    start = time.time()
    env = dict(os.environ, ATTNFORGE_FWD_SM90="1", PYTHONUNBUFFERED="1")
    try:
        import torch

        name = torch.cuda.get_device_name()
        capability = torch.cuda.get_device_capability()
        log(args.out, "sm90_check: %s (sm_%d%d), torch %s, library %s" % (
            name, capability[0], capability[1], torch.__version__, os.environ.get("ATTNFORGE_LIBRARY", "(default)")))
        if capability != (9, 0):
            log(args.out, "not an sm_90 GPU: fwd_sm90 does not run here")
            return 1
    except Exception as e:
        log(args.out, "torch/CUDA not usable: %s" % e)
        return 1
    me = os.path.abspath(__file__)
    left = lambda: args.budget - (time.time() - start) - 5  # noqa: E731
    ok1 = stage(args.out, "stage 1: probes (TMA, wgmma SS, wgmma RS n64/n128)",
                [sys.executable, os.path.join(HERE, "sm90_probe.py")], env, min(60.0, left()))
    extra = ["--out", args.out] if args.out else []
    ok2 = stage(args.out, "stage 2: correctness vs float64 (ATTNFORGE_FWD_SM90=1)",
                [sys.executable, me, "--stage", "correctness"] + extra, env, min(110.0, left()))
    ok3 = True
    if ok2 and left() > 20:
        ok3 = stage(args.out, "stage 3: timing", [sys.executable, me, "--stage", "timing", "--seconds",
                                                  str(max(10.0, left() - 25))] + extra, env, left())
    else:
        log(args.out, "== stage 3: timing skipped (%s)" % ("stage 2 failed" if not ok2 else "no time left"))
    log(args.out, "sm90_check: probes %s, correctness %s, timing %s (%.0f s)" % (
        "ok" if ok1 else "FAILED", "ok" if ok2 else "FAILED", "ok" if (ok2 and ok3) else "not run or FAILED",
        time.time() - start))
    return 0 if (ok1 and ok2 and ok3) else 1


if __name__ == "__main__":
    sys.exit(main())
