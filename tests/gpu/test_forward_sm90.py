"""The fwd_sm90 family (Hopper) against the float64 reference: run on an sm_90 GPU unless
ATTNFORGE_FWD_SM90=0 turns the family off for the whole pytest process.

Same cases and budget as test_forward.py (its run_case), restricted to what fwd_sm90 takes: padded
batches, head dims on the 8-element grid (64, 128 and 256 compiled, others zero-filled), causal
(bottom-right) or not, GQA, LSE, odd lengths, transposed and sliced views. Each case also checks
that the plan named fwd_sm90, so a silent routing to fwd_sm80 cannot pass for the new family.
"""
import os

import pytest
import torch

from attnforge import _native
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


# The persistent forms (ATTNFORGE_SM90_VARIANT; not defaults yet) on the cases that stress them:
# several tiles per CTA (b17, GQA 64/8), tiles with no key (causal_masked_rows), d256 (O staged in
# Q's buffer by the TMA-store forms), and out's tensor map clipping columns (head_dim 40 in 48) and
# describing a (B, H, S, D) view.
PERSISTENT_CASES = ["d64_causal_b17", "causal_masked_rows", "gqa_64_8_causal", "d256_causal_gqa",
                    "head_dim_40_of_48", "bhsd_view"]


@pytest.mark.parametrize("schedule", ["overlap-persistent", "pingpong-persistent", "overlap-persistent-tma-store",
                                      "pingpong-persistent-tma-store"])
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


def test_calls_fwd_sm90_does_not_take_run_on_fwd_sm80_and_say_why(seed):
    """softcap goes to fwd_sm80 (still correct); the plan names fwd_sm80 and the reason."""
    q = torch.empty(2, 300, 4, 128, dtype=torch.bfloat16, device=DEVICE)
    plan = _native.Plan(q, q, q, q, backend="cuda", softcap=30.0).describe()
    assert "fwd_sm80" in plan and "softcap" in plan, plan
    run_case(torch.bfloat16, 2, 300, 300, 4, 4, 128, 0, softcap=30.0)


def test_a_fwd_sm90_plan_refuses_a_call_it_would_get_wrong(seed):
    """A plan compares shapes and flags, not seqused_k: run() of an fwd_sm90 plan with seqused_k must
    raise (naming fwd_sm90 and seqused_k) and write nothing, not ignore it."""
    q = torch.randn(2, 300, 4, 128, dtype=torch.bfloat16, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    plan = _native.Plan(q, q, q, out, backend="cuda")
    assert "fwd_sm90" in plan.describe(), plan.describe()
    used = torch.tensor([100, 200], dtype=torch.int32, device=DEVICE)
    with pytest.raises(_native.AttnforgeError, match="seqused_k"):
        plan.run(q, q, q, out, backend="cuda", seqused_k=used)
    torch.cuda.synchronize()
    assert out.isnan().all(), "the refused call wrote to out"
