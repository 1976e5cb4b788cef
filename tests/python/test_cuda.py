"""The same API on CUDA tensors (GPU machine only): kernel or fallback, results against the float64 reference."""
import pytest
import torch

import attnforge
from reference import assert_close, assert_lse_close
from test_flash_api import batched_reference, cu_seqlens, varlen_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [(2, 129, 257, 8, 2, 128), (3, 1, 300, 16, 8, 64), (1, 77, 77, 4, 4, 96)],
                         ids=["prefill_gqa4", "decode", "hd96"])
def test_flash_attn_func_cuda(shape, dtype, seed):
    batch, sq, sk, heads, kv_heads, dim = shape
    q = torch.randn(batch, sq, heads, dim, device="cuda", dtype=dtype)
    k = torch.randn(batch, sk, kv_heads, dim, device="cuda", dtype=dtype)
    v = torch.randn(batch, sk, kv_heads, dim, device="cuda", dtype=dtype)
    out, lse, _ = attnforge.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    expected, expected_lse = batched_reference(q, k, v, causal=True)
    naive, _ = batched_reference(q, k, v, causal=True, precision=dtype)
    assert_close(out.cpu(), expected, naive, dtype)
    assert_lse_close(lse.cpu(), expected_lse)


def test_varlen_cuda(seed):
    lengths = [100, 0, 33, 257]
    cu = cu_seqlens(lengths)
    q = torch.randn(sum(lengths), 8, 64, dtype=torch.bfloat16)
    kv = torch.randn(sum(lengths), 2, 2, 64, dtype=torch.bfloat16)
    out = attnforge.flash_attn_varlen_kvpacked_func(q.cuda(), kv.cuda(), cu.cuda(), cu.cuda(), max(lengths),
                                                    max(lengths), causal=True)
    expected, _, naive = varlen_reference(q, kv[:, 0], kv[:, 1], cu, cu, torch.bfloat16, causal=True)
    assert_close(out.cpu(), expected, naive, torch.bfloat16)


def test_repeated_calls_reuse_one_plan_and_explain_names_it(seed):
    """The hot path keeps af_attention_plans keyed by call signature: a decode loop makes one plan, a new
    shape another; results equal af_attention_forward's; explain() reports the plan's kernel."""
    from attnforge import _dispatch, _native

    _dispatch.plans.clear()
    q = torch.randn(2, 1, 16, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 700, 4, 128, device="cuda", dtype=torch.bfloat16)
    outs = [attnforge.flash_attn_func(q, k, k, causal=True) for _ in range(3)]
    assert len(_dispatch.plans) == 1
    attnforge.flash_attn_func(q, k[:, :699], k[:, :699], causal=True)
    assert len(_dispatch.plans) == 2
    direct = torch.empty_like(q)
    _native.attention_forward(q, k, k, direct, causal=True)
    assert all(torch.equal(out, direct) for out in outs)
    verdict = attnforge.explain(q, k, k, causal=True)
    assert verdict["path"] == "attnforge-cuda" and verdict["plan"].startswith("cuda "), verdict


def test_kvcache_append_on_the_gpu_writes_nothing_for_an_invalid_call(seed):
    """On a GPU the append's validation is skipped once a plan for the call's signature exists; a call
    with another signature (here a wrong alibi_slopes shape) is still checked before anything is written."""
    q = torch.randn(2, 1, 16, 128, device="cuda", dtype=torch.bfloat16)
    k_cache = torch.zeros(2, 64, 4, 128, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    new = torch.randn(2, 1, 4, 128, device="cuda", dtype=torch.bfloat16)
    seqlens = torch.tensor([3, 9], dtype=torch.int32, device="cuda")
    for _ in range(2):
        out = attnforge.flash_attn_with_kvcache(q, k_cache, v_cache, k=new, v=new, cache_seqlens=seqlens, causal=True)
    assert torch.equal(k_cache[1, 9], new[1, 0]) and torch.isfinite(out).all()
    before = k_cache.clone()
    with pytest.raises(attnforge.AttnforgeError, match="alibi_slopes"):
        attnforge.flash_attn_with_kvcache(q, k_cache, v_cache, k=new, v=new, cache_seqlens=seqlens + 1, causal=True,
                                          alibi_slopes=torch.rand(3, device="cuda"))
    assert torch.equal(k_cache, before)
