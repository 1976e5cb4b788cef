"""The fwd_sm90 family (Hopper) against the float64 reference: run on an sm_90 GPU unless
ATTNFORGE_FWD_SM90=0 turns the family off for the whole pytest process.

Same cases and budget as test_forward.py (its run_case), restricted to what fwd_sm90 takes: padded
batches, head dims on the 8-element grid (64, 128 and 256 compiled, others zero-filled), causal
(bottom-right) or not, GQA, LSE, odd lengths, transposed and sliced views; and (SEQUENCE_CASES)
seqused_k / leftpad_k caches and varlen batches with empty and unaligned sequences, each run by
every schedule and by fwd_sm80 on the same inputs; the 192-row forms (ATTNFORGE_SM90_BLOCK_M=192,
head dim 64) on the d64 cases and on lengths around their tile; (WINDOW_CASES) sliding windows and
softcap, through the extras variants' two schedules and fwd_sm80 on the same inputs. Each case also
checks that the plan named fwd_sm90 (and the form asked for), so a silent routing to fwd_sm80 cannot
pass for the new family. The key-block widths of $ATTNFORGE_SM90_BLOCK_N (a tuning knob) run on
lengths off their grid in child processes (test_fwd_sm90_block_n_knob), and the softmax with the block max
after the exps (the default of d64's and d128's 128 x 128 tiles in two schedules; every 128-row tile with
$ATTNFORGE_SM90_DEFERRED_MAX=1, none with 0) in one each (test_fwd_sm90_deferred_max_knob). Scores that rise
block after block, or jump past exp2's range, check the softmax's reference max (test_fwd_sm90_rising_scores).
"""
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from attnforge import _native
from reference import assert_close, assert_lse_close, sequence_attention
from test_forward import DEVICE, run_case

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0)
    or os.environ.get("ATTNFORGE_FWD_SM90") == "0",
    reason="fwd_sm90 runs on sm_90 unless ATTNFORGE_FWD_SM90=0")


def planned_family(dtype, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, causal):
    q = torch.empty(batch, seqlen_q, heads, head_dim, dtype=dtype, device=DEVICE)
    k = torch.empty(batch, seqlen_k, heads_kv, head_dim, dtype=dtype, device=DEVICE)
    return _native.Plan(q, k, k, q, backend="cuda", causal=causal).describe()


CASES = {
    "d64": dict(batch=3, seqlen_q=77, seqlen_k=131, heads=4, heads_kv=2, head_dim=64),
    "d128": dict(batch=2, seqlen_q=200, seqlen_k=333, heads=4, heads_kv=4, head_dim=128),
    "d64_causal_b17": dict(batch=17, seqlen_q=129, seqlen_k=65, heads=8, heads_kv=2, head_dim=64, causal=True),
    "d128_causal_sq_lt_sk": dict(batch=3, seqlen_q=63 + 64, seqlen_k=517, heads=4, heads_kv=1, head_dim=128,
                                 causal=True),
    "causal_masked_rows": dict(batch=3, seqlen_q=257, seqlen_k=100, heads=4, heads_kv=2, head_dim=64, causal=True),
    "gqa_64_8_causal": dict(batch=1, seqlen_q=1000, seqlen_k=1000, heads=64, heads_kv=8, head_dim=128, causal=True),
    "gqa_32_8": dict(batch=2, seqlen_q=300, seqlen_k=1000, heads=32, heads_kv=8, head_dim=64),
    "one_key_block_edge": dict(batch=2, seqlen_q=128, seqlen_k=129, heads=2, heads_kv=2, head_dim=128, causal=True),
    "long_4097": dict(batch=1, seqlen_q=4097, seqlen_k=4097, heads=2, heads_kv=1, head_dim=128, causal=True),
    "d256": dict(batch=2, seqlen_q=300, seqlen_k=333, heads=4, heads_kv=2, head_dim=256),
    "d256_causal_gqa": dict(batch=2, seqlen_q=1000, seqlen_k=1000, heads=16, heads_kv=2, head_dim=256, causal=True),
    "head_dim_192": dict(batch=2, seqlen_q=150, seqlen_k=170, heads=4, heads_kv=2, head_dim=192, causal=True),
    "head_dim_72": dict(batch=2, seqlen_q=150, seqlen_k=170, heads=4, heads_kv=2, head_dim=72, causal=True),
    "head_dim_40_of_48": dict(batch=2, seqlen_q=150, seqlen_k=170, heads=4, heads_kv=2, head_dim=40, padded_dim=48),
    "bhsd_view": dict(batch=2, seqlen_q=333, seqlen_k=333, heads=4, heads_kv=4, head_dim=128, layout="bhsd",
                      causal=True),
    "kv_slice_of_cache": dict(batch=3, seqlen_q=100, seqlen_k=200, heads=4, heads_kv=2, head_dim=64, layout="slice"),
    "no_lse": dict(batch=2, seqlen_q=100, seqlen_k=100, heads=2, heads_kv=2, head_dim=64, with_lse=False),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fwd_sm90_case(name, dtype, seed):
    case = dict(CASES[name])
    plan = planned_family(dtype, case["batch"], case["seqlen_q"], case["seqlen_k"], case["heads"], case["heads_kv"],
                          case["head_dim"], case.get("causal", False))
    assert "fwd_sm90" in plan, plan
    batch, seqlen_q, seqlen_k = case.pop("batch"), case.pop("seqlen_q"), case.pop("seqlen_k")
    heads, heads_kv, head_dim = case.pop("heads"), case.pop("heads_kv"), case.pop("head_dim")
    run_case(dtype, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, 0, **case)


# The persistent forms (ATTNFORGE_SM90_VARIANT) on the cases that stress them: several tiles per CTA
# (b17, GQA 64/8), tiles with no key (causal_masked_rows), d256 (O staged in Q's buffer by the
# TMA-store forms), and out's tensor map clipping columns (head_dim 40 in 48) and describing a
# (B, H, S, D) view; the dynamic forms (tiles from the counter) on the same cases.
PERSISTENT_CASES = ["d64_causal_b17", "causal_masked_rows", "gqa_64_8_causal", "d256_causal_gqa",
                    "head_dim_40_of_48", "bhsd_view"]


@pytest.mark.parametrize("schedule", ["overlap-persistent", "pingpong-persistent", "overlap-persistent-tma-store",
                                      "pingpong-persistent-tma-store", "overlap-dynamic", "pingpong-dynamic"])
@pytest.mark.parametrize("name", PERSISTENT_CASES)
def test_fwd_sm90_persistent_forms(name, schedule, seed, monkeypatch):
    monkeypatch.setenv("ATTNFORGE_SM90_VARIANT", schedule)  # read at each plan
    case = dict(CASES[name])
    plan = planned_family(torch.bfloat16, case["batch"], case["seqlen_q"], case["seqlen_k"], case["heads"],
                          case["heads_kv"], case["head_dim"], case.get("causal", False))
    assert "fwd_sm90" in plan and " %s sm_90a" % schedule in plan, plan
    batch, seqlen_q, seqlen_k = case.pop("batch"), case.pop("seqlen_q"), case.pop("seqlen_k")
    heads, heads_kv, head_dim = case.pop("heads"), case.pop("heads_kv"), case.pop("head_dim")
    run_case(torch.bfloat16, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, 0, **case)


# The 192-row forms (three consumer warpgroups; head dims that compile to 64), every schedule's, on
# every d64 case above and on lengths around the 192-row tile: 191/193/385 rows, Sq != Sk, tiles with
# no key (causal, Sq > Sk: the first two 192-row tiles of the b9 case see none), several tiles per
# CTA (b9 x 8 heads: 288 tiles), 13 key blocks under a causal mask with GQA (8/2 heads at 1537).
WIDE_CASES = dict({name: case for name, case in CASES.items() if case["head_dim"] <= 64}, **{
    "m192_rows_193_keys_385": dict(batch=2, seqlen_q=193, seqlen_k=385, heads=4, heads_kv=2, head_dim=64),
    "m192_rows_385_keys_191_causal": dict(batch=3, seqlen_q=385, seqlen_k=191, heads=4, heads_kv=4, head_dim=64,
                                          causal=True),
    "m192_empty_tiles_b9": dict(batch=9, seqlen_q=600, seqlen_k=100, heads=8, heads_kv=2, head_dim=64, causal=True),
    "m192_gqa_8_2_causal_1537": dict(batch=1, seqlen_q=1537, seqlen_k=1537, heads=8, heads_kv=2, head_dim=64,
                                     causal=True),
    "m192_d56_bhsd": dict(batch=2, seqlen_q=333, seqlen_k=333, heads=4, heads_kv=4, head_dim=56, layout="bhsd",
                          causal=True),
})


WIDE_SCHEDULES = ["v0", "overlap", "pingpong", "overlap-persistent", "pingpong-persistent",
                  "overlap-persistent-tma-store", "pingpong-persistent-tma-store", "overlap-dynamic",
                  "pingpong-dynamic"]


@pytest.mark.parametrize("schedule", WIDE_SCHEDULES)
@pytest.mark.parametrize("name", sorted(WIDE_CASES))
def test_fwd_sm90_192_row_forms(name, schedule, seed, monkeypatch):
    monkeypatch.setenv("ATTNFORGE_SM90_VARIANT", schedule)  # both read at each plan
    monkeypatch.setenv("ATTNFORGE_SM90_BLOCK_M", "192")
    case = dict(WIDE_CASES[name])
    # bf16, and fp16 for the default schedule.
    for dtype in [torch.bfloat16] + ([torch.float16] if schedule == "pingpong-persistent" else []):
        plan = planned_family(dtype, case["batch"], case["seqlen_q"], case["seqlen_k"], case["heads"],
                              case["heads_kv"], case["head_dim"], case.get("causal", False))
        assert "fwd_sm90" in plan and " %s sm_90a 192x128" % schedule in plan, plan
        args = dict(case)
        batch, seqlen_q, seqlen_k = args.pop("batch"), args.pop("seqlen_q"), args.pop("seqlen_k")
        heads, heads_kv, head_dim = args.pop("heads"), args.pop("heads_kv"), args.pop("head_dim")
        run_case(dtype, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, 0, **args)


def test_fwd_sm90_192_rows_only_at_d64_and_other_values_refused(monkeypatch):
    """ATTNFORGE_SM90_BLOCK_M=192: 192 rows at head dims that compile to 64 (d40 too), 128 at d128; any
    value but 128 or 192 is an error that names the variable."""
    q = torch.empty(2, 300, 4, 128, dtype=torch.bfloat16, device=DEVICE)
    monkeypatch.delenv("ATTNFORGE_SM90_VARIANT", raising=False)
    monkeypatch.setenv("ATTNFORGE_SM90_BLOCK_M", "192")
    assert " sm_90a 128x128" in _native.Plan(q, q, q, q, backend="cuda").describe()
    q64, q40 = q[..., :64].contiguous(), q[..., :40].contiguous()
    for x in (q64, q40):
        assert " sm_90a 192x128" in _native.Plan(x, x, x, x, backend="cuda").describe()
    monkeypatch.setenv("ATTNFORGE_SM90_BLOCK_M", "256")
    with pytest.raises(_native.AttnforgeError, match="ATTNFORGE_SM90_BLOCK_M=256 is not a fwd_sm90 tile height"):
        _native.Plan(q64, q64, q64, q64, backend="cuda")


def _dynamic_problem(dtype=torch.bfloat16):
    """b2 s2048 16/4 heads d128 causal: 512 query tiles of 1 to 16 key blocks, about 4 per CTA of one
    wave: the counter hands out most of them."""
    shape_q, shape_k = (2, 2048, 16, 128), (2, 2048, 4, 128)
    return ([torch.randn(shape_q, dtype=dtype, device=DEVICE)] +
            [torch.randn(shape_k, dtype=dtype, device=DEVICE) for _ in range(2)])


def _reference32(q, k, v):
    """Causal attention in fp32 on the GPU (torch SDPA; square, so top-left = bottom-right), (B, S, H, D)."""
    group = q.shape[2] // k.shape[2]
    q32, k32, v32 = (x.float().transpose(1, 2) for x in (q, k.repeat_interleave(group, 2),
                                                         v.repeat_interleave(group, 2)))
    return torch.nn.functional.scaled_dot_product_attention(q32, k32, v32, is_causal=True).transpose(1, 2)


@pytest.mark.parametrize("schedule", ["overlap-dynamic", "pingpong-dynamic"])
def test_fwd_sm90_dynamic_forms_counter_across_launches_graphs_streams_and_workspaces(schedule, seed, monkeypatch):
    """The tile counter must be back at 0 after every launch, and no two launches may share one: each
    launch's out starts as NaN, so a tile skipped (a counter left past 0) or taken by another launch
    (a shared counter) stays NaN. Runs: attnforge's stream workspace three times in a row; a CUDA
    graph replayed three times on new inputs; the same plan on two streams at once, four launches
    each; a caller's workspace filled with 0xff. Each result is within twice the one-CTA-per-tile
    pingpong's max error against fp32 attention on the same inputs (no NaN)."""
    def plan_for(variant, q, k, v, out, lse):
        monkeypatch.setenv("ATTNFORGE_SM90_VARIANT", variant)
        plan = _native.Plan(q, k, v, out, lse, backend="cuda", causal=True)
        assert " %s sm_90a" % variant in plan.describe(), plan.describe()
        return plan

    def fresh():
        q, k, v = _dynamic_problem()
        out = torch.full_like(q, float("nan"))
        lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"), dtype=torch.float32, device=DEVICE)
        return q, k, v, out, lse

    q, k, v, out, lse = fresh()
    plan = plan_for(schedule, q, k, v, out, lse)
    assert plan.workspace_size() == 4, "the tile counter, one 32-bit word"

    def check(q, k, v, out, what):
        torch.cuda.synchronize()
        ref = _reference32(q, k, v)
        base_out = torch.full_like(q, float("nan"))
        base = plan_for("pingpong", q, k, v, base_out, None)
        base.run(q, k, v, base_out, None, backend="cuda", causal=True)
        torch.cuda.synchronize()
        monkeypatch.setenv("ATTNFORGE_SM90_VARIANT", schedule)
        budget = 2 * (base_out.float() - ref).abs().max().item()
        assert not base_out.isnan().any() and budget < 0.1, "pingpong's error %g" % budget
        nan_rows = out.isnan().any(-1).sum().item()
        assert nan_rows == 0, "%s %s: %d (row, head) vectors not written" % (schedule, what, nan_rows)
        error = (out.float() - ref).abs().max().item()
        assert error <= budget, "%s %s: max error %g, budget %g" % (schedule, what, error, budget)

    for launch in range(3):
        out.fill_(float("nan"))
        plan.run(q, k, v, out, lse, backend="cuda", causal=True)
        check(q, k, v, out, "stream workspace, launch %d" % launch)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graph asks
        plan.run(q, k, v, out, lse, backend="cuda", causal=True)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan.run(q, k, v, out, lse, backend="cuda", causal=True)
    for replay in range(3):
        for x, y in zip((q, k, v), _dynamic_problem()):
            x.copy_(y)
        out.fill_(float("nan"))
        graph.replay()
        check(q, k, v, out, "graph replay %d" % replay)

    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    runs = [fresh() for _ in streams]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    for _ in range(4):
        for s, (q2, k2, v2, out2, lse2) in zip(streams, runs):
            with torch.cuda.stream(s):
                out2.fill_(float("nan"))
                plan.run(q2, k2, v2, out2, lse2, backend="cuda", causal=True)
    for s in streams:
        torch.cuda.current_stream().wait_stream(s)
    for i, (q2, k2, v2, out2, _) in enumerate(runs):
        check(q2, k2, v2, out2, "stream %d of 2" % i)

    workspace = torch.full((plan.workspace_size(),), 255, dtype=torch.uint8, device=DEVICE)
    for launch in range(2):
        out.fill_(float("nan"))
        plan.run(q, k, v, out, lse, backend="cuda", causal=True, workspace=workspace)
        check(q, k, v, out, "caller's workspace, launch %d" % launch)
    assert workspace.view(torch.int32).item() == 0, "a launch left the counter at %d" % workspace.view(
        torch.int32).item()


def rising_scores(dtype, batch, seqlen, heads, heads_kv, head_dim, spike):
    """q, k, v (B, S, H, D) whose scores rise toward key 0 by about 4 (log2 units, after the softmax scale) per 64
    keys, the order in which fwd_sm90's main loop meets them (from the last key block to the first), so that the
    lazy reference max moves again and again; with spike, keys 0-7 score about 150 above the rest, past exp2's
    range (2^128) relative to any earlier reference. A shared direction u in q and k carries the rise."""
    u = torch.randint(0, 2, (head_dim,), device=DEVICE).float() * 2 - 1
    q = torch.randn(batch, seqlen, heads, head_dim, device=DEVICE) + 2 * u
    per_unit = 2 * head_dim / math.sqrt(head_dim) * math.log2(math.e)  # log2 units per unit of u in a key
    chunks = (seqlen - 1 - torch.arange(seqlen, device=DEVICE)) // 64
    lift = chunks.float() * 4 / per_unit
    if spike:
        lift[:8] = lift.max() + 150 / per_unit
    k = torch.randn(batch, seqlen, heads_kv, head_dim, device=DEVICE) + lift[None, :, None, None] * u
    v = torch.randn(batch, seqlen, heads_kv, head_dim, device=DEVICE)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("spike", [False, True], ids=["rising", "spike"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fwd_sm90_rising_scores(dtype, head_dim, causal, spike, seed):
    """Scores that keep rising block after block, and a jump past exp2's range, against float64: the softmax's
    reference max must move (O, row sums and LSE rescaled) wherever P would pass 2^8."""
    batch, seqlen, heads, heads_kv = 2, 700, 4, 2
    q, k, v = rising_scores(dtype, batch, seqlen, heads, heads_kv, head_dim, spike)
    plan = planned_family(dtype, batch, seqlen, seqlen, heads, heads_kv, head_dim, causal)
    assert "fwd_sm90" in plan, plan
    out = torch.full_like(q, float("nan"))
    lse = torch.full((batch, heads, seqlen), float("nan"), dtype=torch.float32, device=DEVICE)
    _native.attention_forward(q, k, v, out, softmax_lse=lse, causal=causal, backend="cuda")
    torch.cuda.synchronize()
    scale = 1.0 / math.sqrt(head_dim)
    for b in range(batch):
        qb, kb, vb = q[b].cpu(), k[b].cpu(), v[b].cpu()
        expected, expected_lse = sequence_attention(qb.double(), kb.double(), vb.double(), scale, causal)
        naive, _ = sequence_attention(qb, kb, vb, scale, causal, precision=dtype)
        assert_close(out[b].cpu(), expected, naive, dtype, what="out[%d]" % b)
        assert_lse_close(lse[b].cpu(), expected_lse)


def test_calls_fwd_sm90_does_not_take_run_on_fwd_sm80_and_say_why(seed):
    """ALiBi goes to fwd_sm80 (still correct), also beside a window and softcap; the plan names
    fwd_sm80 and the reason."""
    q = torch.empty(2, 300, 4, 128, dtype=torch.bfloat16, device=DEVICE)
    slopes = torch.rand(4, dtype=torch.float32, device=DEVICE) * 0.3
    plan = _native.Plan(q, q, q, q, backend="cuda", alibi_slopes=slopes, softcap=30.0, window_size=(64, 0),
                        causal=True).describe()
    assert "fwd_sm80" in plan and "ALiBi" in plan, plan
    run_case(torch.bfloat16, 2, 300, 300, 4, 4, 128, 0, alibi=True, softcap=30.0, window=(64, 0), causal=True)


# Sliding windows and softcap on fwd_sm90 (FlashAttention-2's semantics: query row i of a sequence sees
# keys i + Sk - Sq - left .. i + Sk - Sq + right, a negative edge unbounded; softcap * tanh(scores /
# softcap)): a left edge or softcap runs an extras variant (pingpong or pingpong-persistent, 128-row
# tiles), a right edge alone the plain variants (as causal). Windows left only, right only, both,
# left = 0, smaller than a tile, larger than the keys (and 2^31 - 1), edges off the 128/192-row and
# 128-key grids, Sq < Sk and Sq > Sk (rows that see no key: out 0, LSE -inf), GQA 64/8 and 32/8,
# d64/d128/d256, varlen with empty sequences, seqused_k and leftpad_k (rows outside the used keys
# NaN), softcap with and without causal or a window. Keys: (lens_q, cache / lens_k, ...) as
# sequence_inputs takes them; "extras": whether the extras variant must run (not for a right edge
# alone, nor for edges past every row's keys, which the plan drops); "fp16": also in fp16.
WINDOW_CASES = {
    "window_left_only_gqa_32_8_d128": dict(lens_q=[700], cache=700, heads=32, heads_kv=8, head_dim=128,
                                           window=(200, -1), fp16=True),
    "window_right_only_d64": dict(lens_q=[500] * 2, cache=500, heads=4, heads_kv=4, head_dim=64, window=(-1, 37),
                                  extras=False),
    "window_both_sq_lt_sk_d256": dict(lens_q=[333] * 2, cache=600, heads=4, heads_kv=2, head_dim=256,
                                      window=(100, 50), fp16=True),
    "window_left0_causal_d128": dict(lens_q=[300] * 2, cache=300, heads=4, heads_kv=2, head_dim=128, window=(0, 0),
                                     causal=True),
    "window_5_causal_gqa_64_8_d64": dict(lens_q=[400], cache=400, heads=64, heads_kv=8, head_dim=64, window=(5, 0),
                                         causal=True, fp16=True),
    "window_past_the_keys_sq_gt_sk_d128": dict(lens_q=[300] * 2, cache=200, heads=4, heads_kv=2, head_dim=128,
                                               window=(5000, 5000), extras=False),
    "window_int_max_causal_sq_gt_sk_d64": dict(lens_q=[300] * 2, cache=200, heads=4, heads_kv=2, head_dim=64,
                                               window=(2 ** 31 - 1, 0), causal=True, extras=False),
    "window_masked_rows_sq_gt_sk_d64": dict(lens_q=[400] * 2, cache=150, heads=4, heads_kv=2, head_dim=64,
                                            window=(30, 10)),
    "window_off_grid_127_129_d64": dict(lens_q=[777] * 2, cache=777, heads=4, heads_kv=2, head_dim=64,
                                        window=(127, 129)),
    "window_off_grid_191_193_d128": dict(lens_q=[333], cache=777, heads=4, heads_kv=2, head_dim=128,
                                         window=(191, 193)),
    "window_700_causal_long_d128": dict(lens_q=[2500], cache=2500, heads=4, heads_kv=2, head_dim=128,
                                        window=(700, 0), causal=True),
    "softcap_full_d128": dict(lens_q=[300] * 2, cache=400, heads=8, heads_kv=2, head_dim=128, softcap=30.0, fp16=True),
    "softcap_causal_d256": dict(lens_q=[600] * 2, cache=600, heads=8, heads_kv=4, head_dim=256, softcap=50.0,
                                causal=True),
    "softcap_window_causal_d64": dict(lens_q=[500] * 2, cache=500, heads=4, heads_kv=2, head_dim=64, softcap=20.0,
                                      window=(256, 0), causal=True, fp16=True),
    "window_varlen_empties_d128": dict(lens_q=[0, 300, 1, 129, 77], lens_k=[5, 300, 0, 200, 77], heads=8, heads_kv=2,
                                       head_dim=128, window=(64, 16)),
    "softcap_window_varlen_seqused_causal_d64": dict(lens_q=[100, 200, 3], lens_k=[150, 300, 50], used=[150, 0, 7],
                                                     heads=4, heads_kv=2, head_dim=64, window=(40, 0), causal=True,
                                                     softcap=30.0),
    "window_seqused_leftpad_causal_d256": dict(lens_q=[150] * 3, cache=333, used=[333, 200, 17], pad=[0, 50, 17],
                                               heads=8, heads_kv=2, head_dim=256, window=(100, 0), causal=True),
}
WINDOW_RUNS = [(name, torch.bfloat16) for name in sorted(WINDOW_CASES)] + [
    (name, torch.float16) for name in sorted(WINDOW_CASES) if WINDOW_CASES[name].get("fp16")]


@pytest.mark.parametrize("name,dtype", WINDOW_RUNS, ids=["%s-%s" % (n, "bf16" if d == torch.bfloat16 else "fp16")
                                                         for n, d in WINDOW_RUNS])
def test_fwd_sm90_window_softcap(name, dtype, seed, monkeypatch):
    """Each case through fwd_sm90 (its default schedule; bf16 also both extras schedules) and fwd_sm80 on
    the same inputs: within the float64 reference's budget, LSE within 1e-4 and -inf exactly on rows
    that see no key (their out exactly 0), the two families within that budget of each other and
    agreeing on those rows; the plan names fwd_sm90 and the extras variant where one is needed."""
    case = dict(WINDOW_CASES[name])
    window, softcap = case.pop("window", (-1, -1)), case.pop("softcap", 0.0)
    extras = case.pop("extras", True)
    case.pop("fp16", None)
    q, k, v, fields, spans = sequence_inputs(dtype, **case)
    fields.update(window_size=window, softcap=softcap)
    varlen = "cu_seqlens_q" in fields
    causal = case.get("causal", False)
    scale = 1.0 / math.sqrt(case["head_dim"])
    expected = []
    for span in spans:
        qb, kb, vb = (q[span[0]], k[span[1]], v[span[1]]) if varlen else (q[span[0]], k[span[1], span[2]],
                                                                             v[span[1], span[2]])
        qb, kb, vb = qb.cpu(), kb.cpu(), vb.cpu()
        reference = sequence_attention(qb.double(), kb.double(), vb.double(), scale, causal, window, softcap)
        naive, _ = sequence_attention(qb, kb, vb, scale, causal, window, softcap, precision=dtype)
        expected.append(reference + (naive,))
    assert any(torch.isinf(lse).any() for _, lse, _ in expected) == name.startswith(
        ("window_int_max", "window_masked", "window_varlen", "softcap_window_varlen",
         "window_seqused")), "the case list's rows that see no key changed"

    def run(family, schedule=None):
        monkeypatch.setenv("ATTNFORGE_FWD_SM90", "1" if family == "fwd_sm90" else "0")
        monkeypatch.delenv("ATTNFORGE_SM90_BLOCK_M", raising=False)
        if schedule:
            monkeypatch.setenv("ATTNFORGE_SM90_VARIANT", schedule)
        else:
            monkeypatch.delenv("ATTNFORGE_SM90_VARIANT", raising=False)
        out = torch.full_like(q, float("nan"))
        lse_shape = (case["heads"], q.shape[0]) if varlen else (q.shape[0], case["heads"], q.shape[1])
        lse = torch.full(lse_shape, float("nan"), dtype=torch.float32, device=DEVICE)
        plan = _native.Plan(q, k, v, out, lse, backend="cuda", **fields)
        described = plan.describe()
        kernel = described.split("(")[0]  # what follows is the reason
        assert " %s " % family in kernel, described
        if family == "fwd_sm90":
            assert (" extras " in kernel) == extras and " sm_90a 128x" in kernel, described
            assert schedule is None or " %s sm_90a" % schedule in kernel, described
        plan.run(q, k, v, out, lse, backend="cuda", **fields)
        torch.cuda.synchronize()
        for b, (span, (want, want_lse, naive)) in enumerate(zip(spans, expected)):
            ob, lb = (out[span[0]], lse[:, span[0]]) if varlen else (out[span[0]], lse[span[0]])
            what = "%s %s out[%d]" % (family, schedule or "default", b)
            assert_close(ob.cpu(), want, naive, dtype, what=what)
            assert_lse_close(lb.cpu(), want_lse)
            seen = ~torch.isinf(want_lse)  # (H, Sq)
            assert (ob.cpu().permute(1, 0, 2)[~seen] == 0).all(), what + ": a row that sees no key is not 0"
        return out, lse

    sm90_out, sm90_lse = run("fwd_sm90")
    sm80_out, sm80_lse = run("fwd_sm80")
    assert torch.equal(sm90_lse.isinf(), sm80_lse.isinf()), "fwd_sm90 and fwd_sm80 differ on which rows see no key"
    for span, (_, _, naive) in zip(spans, expected):
        assert_close(sm90_out[span[0]].cpu(), sm80_out[span[0]].cpu().double(), naive, dtype,
                     what="fwd_sm90 vs fwd_sm80")
    if dtype == torch.bfloat16 and extras:
        for schedule in ("pingpong", "pingpong-persistent"):
            run("fwd_sm90", schedule)


def test_a_fwd_sm90_plan_refuses_a_call_it_would_get_wrong(seed):
    """A plan compares shapes, flags and which strides are multiples of 8, not the strides themselves:
    run() of an fwd_sm90 plan with an expanded k (batch stride 0, which TMA cannot describe) must
    raise (naming fwd_sm90's k and its batch stride) and write nothing."""
    q = torch.randn(2, 300, 4, 128, dtype=torch.bfloat16, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    plan = _native.Plan(q, q, q, out, backend="cuda")
    assert "fwd_sm90" in plan.describe(), plan.describe()
    expanded = q[:1].expand(2, -1, -1, -1)
    with pytest.raises(_native.AttnforgeError, match="fwd_sm90: k: TMA needs the batch stride"):
        plan.run(q, expanded, q, out, backend="cuda")
    torch.cuda.synchronize()
    assert out.isnan().all(), "the refused call wrote to out"


# seqused_k / leftpad_k (padded caches: keys [leftpad_b, seqused_b) of row b's cache; None: all rows,
# 0 pad) and varlen (lens_q / lens_k per sequence, optional seqused_k within lens_k): empty key
# ranges (seqused 0, leftpad == seqused, an empty varlen key sequence), empty query sequences,
# lengths that are not multiples of the 128-row tiles, GQA, causal and not, d64/128/256. Key and
# value rows outside a sequence's used range are NaN where they are not another sequence's keys:
# TMA boxes read past the range, and 0 x NaN in P V is NaN.
SEQUENCE_CASES = {
    "seqused_d128": dict(lens_q=[100] * 5, cache=300, used=[0, 1, 129, 300, 257], heads=4, heads_kv=2,
                         head_dim=128),
    "seqused_leftpad_causal_d64": dict(lens_q=[64] * 6, cache=300, used=[300, 200, 130, 17, 0, 256],
                                       pad=[0, 50, 130, 3, 0, 255], heads=4, heads_kv=2, head_dim=64, causal=True),
    "leftpad_causal_gqa_d256": dict(lens_q=[150] * 3, cache=333, pad=[0, 100, 333], heads=8, heads_kv=2,
                                    head_dim=256, causal=True),
    # transformers' generate() with an all-ones 2-D mask: seqused_k = the cache's length, leftpad 0.
    "all_ones_mask_causal_gqa": dict(lens_q=[600] * 2, cache=600, used=[600, 600], pad=[0, 0], heads=16,
                                     heads_kv=4, head_dim=128, causal=True),
    "varlen_empties_d128": dict(lens_q=[0, 300, 1, 129, 0, 77], lens_k=[5, 300, 0, 200, 0, 77], heads=8, heads_kv=2,
                                head_dim=128),
    "varlen_causal_d64": dict(lens_q=[130, 0, 257, 64], lens_k=[130, 10, 600, 1], heads=4, heads_kv=4, head_dim=64,
                              causal=True),
    "varlen_seqused_causal_d256": dict(lens_q=[100, 200, 3], lens_k=[150, 300, 50], used=[150, 0, 7], heads=4,
                                       heads_kv=2, head_dim=256, causal=True),
    "varlen_gqa_causal_d128": dict(lens_q=[1000, 17, 555], lens_k=[1000, 17, 555], heads=16, heads_kv=2,
                                   head_dim=128, causal=True),
    # Lengths off the 192-row grid (and the 128-key one) for the 192-row forms.
    "seqused_leftpad_rows_400_d64": dict(lens_q=[400] * 3, cache=700, used=[700, 333, 0], pad=[0, 10, 0], heads=8,
                                         heads_kv=2, head_dim=64, causal=True),
    "varlen_off_192_gqa_d64": dict(lens_q=[193, 0, 385, 191], lens_k=[200, 5, 1000, 191], used=[200, 5, 999, 0],
                                   heads=8, heads_kv=2, head_dim=64),
}
SCHEDULES = ["v0", "overlap", "pingpong", "overlap-persistent", "pingpong-persistent", "overlap-persistent-tma-store",
             "pingpong-persistent-tma-store", "overlap-dynamic", "pingpong-dynamic"]


def sequence_inputs(dtype, lens_q, heads, heads_kv, head_dim, lens_k=None, cache=None, used=None, pad=None,
                    causal=False):
    """q, k, v and the call's fields for one SEQUENCE_CASES entry, and per sequence (q rows, k/v rows)
    as index ranges into q and k."""
    def ints(values):
        return torch.tensor(values, dtype=torch.int32, device=DEVICE)

    fields = dict(causal=causal)
    spans = []
    if lens_k is not None:  # varlen
        cu_q = [0] + torch.tensor(lens_q).cumsum(0).tolist()
        cu_k = [0] + torch.tensor(lens_k).cumsum(0).tolist()
        q = torch.randn(cu_q[-1], heads, head_dim, dtype=dtype, device=DEVICE)
        k = torch.randn(cu_k[-1], heads_kv, head_dim, dtype=dtype, device=DEVICE)
        v = torch.randn_like(k)
        for b in range(len(lens_q)):
            end = cu_k[b] + (used[b] if used is not None else lens_k[b])
            k[end:cu_k[b + 1]] = float("nan")
            v[end:cu_k[b + 1]] = float("nan")
            spans.append((slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], end)))
        fields.update(cu_seqlens_q=ints(cu_q), cu_seqlens_k=ints(cu_k), max_seqlen_q=max(lens_q),
                      max_seqlen_k=max(lens_k))
    else:  # padded cache rows [pad_b, used_b) of batch b
        batch = len(lens_q)
        q = torch.randn(batch, lens_q[0], heads, head_dim, dtype=dtype, device=DEVICE)
        k = torch.randn(batch, cache, heads_kv, head_dim, dtype=dtype, device=DEVICE)
        v = torch.randn_like(k)
        for b in range(batch):
            begin, end = (pad[b] if pad else 0), (used[b] if used else cache)
            for x in (k, v):
                x[b, :begin] = float("nan")
                x[b, end:] = float("nan")
            spans.append((b, b, slice(begin, end)))
    if used is not None:
        fields["seqused_k"] = ints(used)
    if pad is not None:
        fields["leftpad_k"] = ints(pad)
    return q, k, v, fields, spans


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(SEQUENCE_CASES))
def test_fwd_sm90_sequences(name, dtype, seed, monkeypatch):
    """Each case through fwd_sm90's default schedule (bf16: every schedule, and at d64 every 192-row
    form) and fwd_sm80, on the same inputs: every run within the float64 reference's budget, LSE -inf
    exactly on rows that see no key (their out 0), and fwd_sm90 and fwd_sm80 within that budget of
    each other."""
    case = dict(SEQUENCE_CASES[name])
    q, k, v, fields, spans = sequence_inputs(dtype, **case)
    varlen = "cu_seqlens_q" in fields
    head_dim = case["head_dim"]
    scale = 1.0 / math.sqrt(head_dim)
    expected = []
    for span in spans:
        qb, kb, vb = (q[span[0]], k[span[1]], v[span[1]]) if varlen else (q[span[0]], k[span[1], span[2]],
                                                                             v[span[1], span[2]])
        qb, kb, vb = qb.cpu(), kb.cpu(), vb.cpu()
        reference = sequence_attention(qb.double(), kb.double(), vb.double(), scale, case.get("causal", False))
        naive, _ = sequence_attention(qb, kb, vb, scale, case.get("causal", False), precision=dtype)
        expected.append(reference + (naive,))

    def run(family, schedule=None, block_m=128):
        monkeypatch.setenv("ATTNFORGE_FWD_SM90", "1" if family == "fwd_sm90" else "0")
        monkeypatch.setenv("ATTNFORGE_SM90_BLOCK_M", str(block_m))
        if schedule:
            monkeypatch.setenv("ATTNFORGE_SM90_VARIANT", schedule)
        else:
            monkeypatch.delenv("ATTNFORGE_SM90_VARIANT", raising=False)
        out = torch.full_like(q, float("nan"))
        lse_shape = (case["heads"], q.shape[0]) if varlen else (q.shape[0], case["heads"], q.shape[1])
        lse = torch.full(lse_shape, float("nan"), dtype=torch.float32, device=DEVICE)
        plan = _native.Plan(q, k, v, out, lse, backend="cuda", **fields)
        described = plan.describe()
        kernel = described.split("(")[0]  # what follows is the reason, which may name the other family
        assert " %s " % family in kernel and (schedule is None or " %s sm_90a" % schedule in kernel), described
        assert family != "fwd_sm90" or " sm_90a %dx" % block_m in kernel, described
        plan.run(q, k, v, out, lse, backend="cuda", **fields)
        torch.cuda.synchronize()
        for b, (span, (want, want_lse, naive)) in enumerate(zip(spans, expected)):
            ob, lb = (out[span[0]], lse[:, span[0]]) if varlen else (out[span[0]], lse[span[0]])
            what = "%s %s out[%d]" % (family, schedule or "default", b)
            assert_close(ob.cpu(), want, naive, dtype, what=what)
            assert_lse_close(lb.cpu(), want_lse)
            seen = ~torch.isinf(want_lse)  # (H, Sq): rows that see no key give exactly 0
            assert (ob.cpu().permute(1, 0, 2)[~seen] == 0).all(), what + ": a row that sees no key is not 0"
        return out, lse

    sm90_out, sm90_lse = run("fwd_sm90")
    sm80_out, sm80_lse = run("fwd_sm80")
    assert torch.equal(sm90_lse.isinf(), sm80_lse.isinf()), "fwd_sm90 and fwd_sm80 differ on which rows see no key"
    for span, (want, _, naive) in zip(spans, expected):
        # Each family is within the budget of the float64 result; against each other, within that
        # budget of fwd_sm80's result as it stands.
        assert_close(sm90_out[span[0]].cpu(), sm80_out[span[0]].cpu().double(), naive, dtype,
                     what="fwd_sm90 vs fwd_sm80")
    if dtype == torch.bfloat16:
        for schedule in SCHEDULES:
            run("fwd_sm90", schedule)
        if head_dim <= 64:
            for schedule in SCHEDULES:
                run("fwd_sm90", schedule, block_m=192)


# $ATTNFORGE_SM90_BLOCK_N (tuning runs: the 128-row tiles' key-block width per head dim, read once per
# process when the variant table is built). The block_n_forms tests skip unless the variable is set, and
# then check that process's widths (`ATTNFORGE_SM90_BLOCK_N=128:176 pytest -k block_n_forms`, as
# bench/device/sm90_block_n_ab.sh runs them); test_fwd_sm90_block_n_knob runs their bf16 cases up to
# 1000 keys in a child pytest per BLOCK_N_KNOBS value (about 12 cases and their compiles each, so that a
# run of the whole file stays short). Lengths off every width's grid (1, 17, 177, 1000, 4097 keys),
# causal and not, GQA, LSE, varlen with empty sequences; every schedule on two GQA cases per head dim,
# the sequence cases (seqused_k, leftpad_k, varlen) and the window and softcap cases (extras variants'
# window edges) of the head dims the knob changes. BLOCK_N: the widths the knob asks for, which each
# plan must show (an entry the library ignores, e.g. one too big for shared memory, fails there).
BLOCK_N_KNOBS = ["128:176;256:80", "64:96;128:192"]
BLOCK_N = {int(m.group(1)): int(m.group(2)) for m in (re.fullmatch(r"(\d+):(\d+)", entry) for entry in
                                                      os.environ.get("ATTNFORGE_SM90_BLOCK_N", "").split(";")) if m}
block_n_forms = pytest.mark.skipif(not BLOCK_N, reason="needs ATTNFORGE_SM90_BLOCK_N (test_fwd_sm90_block_n_knob)")
BLOCK_N_CASES = {}
for _d in (64, 128, 256):
    BLOCK_N_CASES.update({
        "d%d_keys_1" % _d: dict(batch=2, seqlen_q=100, seqlen_k=1, heads=4, heads_kv=2, head_dim=_d),
        # 100 query rows: 17 rows of 4 heads would be the decode family's (64 packed rows or fewer).
        "d%d_keys_17_causal" % _d: dict(batch=3, seqlen_q=100, seqlen_k=17, heads=4, heads_kv=4, head_dim=_d,
                                        causal=True),
        "d%d_keys_177_gqa" % _d: dict(batch=2, seqlen_q=200, seqlen_k=177, heads=8, heads_kv=2, head_dim=_d),
        "d%d_keys_1000_causal_gqa" % _d: dict(batch=1, seqlen_q=1000, seqlen_k=1000, heads=16, heads_kv=2,
                                              head_dim=_d, causal=True),
        "d%d_keys_4097_causal" % _d: dict(batch=1, seqlen_q=4097, seqlen_k=4097, heads=2, heads_kv=1, head_dim=_d,
                                          causal=True),
        "d%d_rows_300_keys_4097" % _d: dict(batch=1, seqlen_q=300, seqlen_k=4097, heads=2, heads_kv=2, head_dim=_d),
        "d%d_varlen_empties" % _d: dict(batch=5, seqlen_q=300, seqlen_k=1000, heads=8, heads_kv=2, head_dim=_d,
                                        varlen=True, empty_every=3),
        "d%d_varlen_causal_gqa" % _d: dict(batch=4, seqlen_q=1000, seqlen_k=1000, heads=8, heads_kv=2, head_dim=_d,
                                           varlen=True, causal=True),
    })


def block_n_case_names(head_dims, suffix=""):
    return sorted(n for n in BLOCK_N_CASES if BLOCK_N_CASES[n]["head_dim"] in head_dims and n.endswith(suffix))


@block_n_forms
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(BLOCK_N_CASES))
def test_fwd_sm90_block_n_forms_cases(name, dtype, seed, monkeypatch):
    """Each case through the plan's default schedule, in the width the knob gives its head dim."""
    case = dict(BLOCK_N_CASES[name])
    if case["head_dim"] not in BLOCK_N:
        pytest.skip("the knob leaves d%d at its default width" % case["head_dim"])
    monkeypatch.delenv("ATTNFORGE_SM90_VARIANT", raising=False)
    monkeypatch.setenv("ATTNFORGE_SM90_BLOCK_M", "128")  # the knob's tiles (d64 may default to 192 rows)
    plan = planned_family(dtype, case["batch"], case["seqlen_q"], case["seqlen_k"], case["heads"], case["heads_kv"],
                          case["head_dim"], case.get("causal", False))
    assert "fwd_sm90" in plan and " sm_90a 128x%d" % BLOCK_N[case["head_dim"]] in plan, plan
    batch, seqlen_q, seqlen_k = case.pop("batch"), case.pop("seqlen_q"), case.pop("seqlen_k")
    heads, heads_kv, head_dim = case.pop("heads"), case.pop("heads_kv"), case.pop("head_dim")
    run_case(dtype, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, 0, **case)


@block_n_forms
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", block_n_case_names((64, 128, 256), "_keys_1000_causal_gqa") +
                         block_n_case_names((64, 128, 256), "_keys_177_gqa"))
def test_fwd_sm90_block_n_forms_schedules(name, schedule, seed, monkeypatch):
    """Every schedule in the knob's width, on a causal GQA case and a non-causal one of 177 keys."""
    case = dict(BLOCK_N_CASES[name])
    if case["head_dim"] not in BLOCK_N:
        pytest.skip("the knob leaves d%d at its default width" % case["head_dim"])
    monkeypatch.setenv("ATTNFORGE_SM90_VARIANT", schedule)
    monkeypatch.setenv("ATTNFORGE_SM90_BLOCK_M", "128")
    plan = planned_family(torch.bfloat16, case["batch"], case["seqlen_q"], case["seqlen_k"], case["heads"],
                          case["heads_kv"], case["head_dim"], case.get("causal", False))
    assert " %s sm_90a 128x%d" % (schedule, BLOCK_N[case["head_dim"]]) in plan, plan
    batch, seqlen_q, seqlen_k = case.pop("batch"), case.pop("seqlen_q"), case.pop("seqlen_k")
    heads, heads_kv, head_dim = case.pop("heads"), case.pop("heads_kv"), case.pop("head_dim")
    run_case(torch.bfloat16, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, 0, **case)


@block_n_forms
@pytest.mark.parametrize("name", sorted(SEQUENCE_CASES))
def test_fwd_sm90_block_n_forms_sequences(name, seed, monkeypatch):
    """test_fwd_sm90_sequences (bf16: every schedule, and fwd_sm80 on the same inputs) in the knob's width
    (the 192-row d64 forms keep theirs)."""
    if SEQUENCE_CASES[name]["head_dim"] not in BLOCK_N:
        pytest.skip("the knob leaves d%d at its default width" % SEQUENCE_CASES[name]["head_dim"])
    test_fwd_sm90_sequences(name, torch.bfloat16, seed, monkeypatch)


@block_n_forms
@pytest.mark.parametrize("name", sorted(WINDOW_CASES))
def test_fwd_sm90_block_n_forms_windows(name, seed, monkeypatch):
    """test_fwd_sm90_window_softcap (bf16: the default schedule and both extras schedules) in the knob's width."""
    if WINDOW_CASES[name]["head_dim"] not in BLOCK_N:
        pytest.skip("the knob leaves d%d at its default width" % WINDOW_CASES[name]["head_dim"])
    test_fwd_sm90_window_softcap(name, torch.bfloat16, seed, monkeypatch)


# Ids without digits, so that a -k of a length or tile height ("192 or d64") does not select them.
@pytest.mark.parametrize("knob", BLOCK_N_KNOBS, ids=["fa3_widths", "other_widths"])
def test_fwd_sm90_block_n_knob(knob):
    """The bf16 block_n_forms cases up to 1000 keys in a child pytest with ATTNFORGE_SM90_BLOCK_N=knob (the
    variant table is built once per process): all pass, and the child ran some (a knob that changed no
    width would only skip them)."""
    if BLOCK_N:
        pytest.skip("this process already has ATTNFORGE_SM90_BLOCK_N")
    env = dict(os.environ, ATTNFORGE_SM90_BLOCK_N=knob)
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k",
                            "block_n_forms_cases and bf16 and not 4097", os.path.abspath(__file__)], env=env,
                           capture_output=True, text=True, timeout=600)
    tail = child.stdout[-6000:] + child.stderr[-2000:]
    assert child.returncode == 0, tail
    assert re.search(r"\b\d+ passed", tail), tail


@pytest.mark.parametrize("setting", ["0", "1"])
def test_fwd_sm90_deferred_max_knob(setting):
    """ATTNFORGE_SM90_DEFERRED_MAX=1 (every 128-row tile's softmax with the block max after the exps; by default only
    the measured d64/d128 forms') and =0 (the block max first everywhere; read once per process): the default cases,
    the persistent forms, sequences, windows/softcap and the rising-score cases in a child pytest, all passing, and
    the child ran some."""
    if os.environ.get("ATTNFORGE_SM90_DEFERRED_MAX"):
        pytest.skip("this process already has ATTNFORGE_SM90_DEFERRED_MAX")
    env = dict(os.environ, ATTNFORGE_SM90_DEFERRED_MAX=setting)
    selection = "fwd_sm90_case or persistent_forms or rising_scores or fwd_sm90_sequences or window_softcap"
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", selection,
                            os.path.abspath(__file__)], env=env, capture_output=True, text=True, timeout=600)
    tail = child.stdout[-6000:] + child.stderr[-2000:]
    assert child.returncode == 0, tail
    assert re.search(r"\b\d+ passed", tail), tail
