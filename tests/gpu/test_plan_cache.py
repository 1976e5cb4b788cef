"""flash_attn_func's plan-cache shortcut (a repeated signature skips the options record and plan_key) against
the float64 reference, and the cases where a cached plan must not be reused (GPU only).

A second call with a signature that already ran on the kernel takes _dispatch.planned_forward; one that
differs in anything the plan depends on (dtype of k or v, strides, alignment, scalars) misses and takes
the full path, so a mixed-dtype call raises as the first call would have, never reads k as q's dtype.
"""
import math

import pytest
import torch

import attnforge
from attnforge import _dispatch
from attnforge._native import AttnforgeError, Status
from reference import assert_close, sequence_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def shortcut_hits(monkeypatch):
    """Counts planned_forward calls that ran the kernel (returned out)."""
    hits = []
    original = _dispatch.planned_forward

    def counted(*args):
        out = original(*args)
        if out is not None:
            hits.append(args[0])
        return out

    monkeypatch.setattr(_dispatch, "planned_forward", counted)
    return hits


def check(out, q, k, v, causal=False, window=(-1, -1), softcap=0.0, scale=None):
    assert not torch.isnan(out).any()
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    for b in range(q.shape[0]):
        expected, _ = sequence_attention(q[b].cpu().double(), k[b].cpu().double(), v[b].cpu().double(), scale,
                                         causal, window, softcap)
        naive, _ = sequence_attention(q[b].cpu(), k[b].cpu(), v[b].cpu(), scale, causal, window, softcap,
                                      precision=q.dtype)
        assert_close(out[b].cpu(), expected, naive, q.dtype)


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("seqlen_q,seqlen_k,causal", [(1, 1031, False), (77, 300, True)])
def test_repeated_signature_runs_through_the_cached_plan(seed, shortcut_hits, layout, seqlen_q, seqlen_k, causal):
    _dispatch.plans.clear()
    for call in range(3):  # fresh inputs every call, one signature
        if layout == "bhsd":  # transformers' layout: (B, H, S, D) memory seen as (B, S, H, D)
            q = torch.randn(2, 8, seqlen_q, 64, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
            k, v = (torch.randn(2, 2, seqlen_k, 64, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
                    for _ in range(2))
        else:
            q = torch.randn(2, seqlen_q, 8, 64, dtype=torch.bfloat16, device="cuda")
            k, v = (torch.randn(2, seqlen_k, 2, 64, dtype=torch.bfloat16, device="cuda") for _ in range(2))
        out = attnforge.flash_attn_func(q, k, v, causal=causal, window_size=[-1, -1], softcap=0.0)
        assert out.shape == q.shape and out.is_contiguous()
        check(out, q, k, v, causal=causal)
        assert len(shortcut_hits) == call  # the first call plans, the others reuse it


def test_a_signature_differing_in_a_dtype_misses_and_is_refused(shortcut_hits):
    _dispatch.plans.clear()
    q = torch.randn(1, 1, 8, 128, dtype=torch.bfloat16, device="cuda")
    k, v = (torch.randn(1, 512, 2, 128, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    attnforge.flash_attn_func(q, k, v)
    attnforge.flash_attn_func(q, k, v)
    assert len(shortcut_hits) == 1
    for k_other, v_other in ((k.half(), v), (k, v.half())):
        with pytest.raises(AttnforgeError) as raised:
            attnforge.flash_attn_func(q, k_other, v_other)
        assert raised.value.status == Status.AF_ERR_DTYPE
    assert len(shortcut_hits) == 1


def test_scalars_strides_and_alignment_are_part_of_the_signature(seed, shortcut_hits):
    _dispatch.plans.clear()
    base = torch.randn(2, 200, 4, 72, dtype=torch.float16, device="cuda")
    q, k, v = base[:, :40], base[:, 40:120], base[:, 120:]
    for kwargs in ({}, {"causal": True}, {"softmax_scale": 0.3}, {"window_size": (16, 0)}, {"softcap": 5.0}):
        out = attnforge.flash_attn_func(q, k, v, **kwargs)
        check(out, q, k, v, causal=kwargs.get("causal", False), window=kwargs.get("window_size", (-1, -1)),
              softcap=kwargs.get("softcap", 0.0), scale=kwargs.get("softmax_scale"))
    assert not shortcut_hits  # five signatures, five plans
    storage = torch.randn(2 * 80 * 4 * 72 + 4, dtype=torch.float16, device="cuda")
    shifted = storage[4:].view(2, 80, 4, 72)  # 8 bytes off a 16-byte boundary: padded, never the cached plan
    out = attnforge.flash_attn_func(q, shifted, shifted)
    check(out, q, shifted, shifted)
    strided_last = torch.randn(2, 40, 4, 144, dtype=torch.float16, device="cuda")[..., ::2]  # stride(-1) == 2
    out = attnforge.flash_attn_func(strided_last, k, v)
    out = attnforge.flash_attn_func(strided_last, k, v)
    check(out, strided_last, k, v)
    assert not shortcut_hits


def test_autograd_and_fallback_calls_do_not_take_the_shortcut(shortcut_hits):
    _dispatch.plans.clear()
    q = torch.randn(1, 16, 4, 64, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    k, v = (torch.randn(1, 16, 4, 64, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    for _ in range(2):
        attnforge.flash_attn_func(q, k, v).sum().backward()
    with torch.no_grad():
        attnforge.flash_attn_func(q, k, v)
        attnforge.flash_attn_func(q, k, v)
    assert len(shortcut_hits) == 1  # only the second no-grad call
    q64 = q.detach().double()
    for _ in range(2):  # float64 runs on torch: nothing is planned, nothing is cached
        attnforge.flash_attn_func(q64, k.double(), v.double())
    assert len(shortcut_hits) == 1


@pytest.mark.parametrize("seqlen_q", [1, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_transformers_calls_reuse_their_plan_in_their_own_layout(seed, shortcut_hits, seqlen_q, padded):
    """attention_forward on transformers' (B, H, S, D) tensors: the first call plans through the full path
    (transposed views), the next ones run the same plan on the untransposed tensors' memory."""
    from attnforge.integrations.transformers import attention_forward

    class Layer:
        is_causal = True
        training = False

    _dispatch.plans.clear()
    batch, heads, heads_kv, head_dim, seqlen_k = 3, 8, 2, 128, 613
    mask = torch.ones(batch, seqlen_k, dtype=torch.long, device="cuda") if padded else None
    if padded:
        mask[1, :37] = 0  # left padding
        mask[2, :5] = 0
    for call in range(3):
        query = torch.randn(batch, heads, seqlen_q, head_dim, dtype=torch.bfloat16, device="cuda")
        key, value = (torch.randn(batch, heads_kv, seqlen_k, head_dim, dtype=torch.bfloat16, device="cuda")
                      for _ in range(2))
        with torch.no_grad():
            out, weights = attention_forward(Layer(), query, key, value, mask, scaling=0.1)
        assert weights is None and out.shape == (batch, seqlen_q, heads, head_dim)
        assert not torch.isnan(out).any()
        for b in range(batch):
            first = int((mask[b] == 0).sum()) if padded else 0
            q_b, k_b, v_b = (x[b].transpose(0, 1).cpu() for x in (query, key[:, :, first:], value[:, :, first:]))
            expected, _ = sequence_attention(q_b.double(), k_b.double(), v_b.double(), 0.1, causal=True)
            naive, _ = sequence_attention(q_b, k_b, v_b, 0.1, causal=True, precision=torch.bfloat16)
            assert_close(out[b].cpu(), expected, naive, torch.bfloat16)
        assert len([key for key in shortcut_hits if key[0] == "transformers"]) == call


def test_compiled_calls_trace_without_graph_breaks_after_cached_plans(seed):
    """A signature that already has a cached plan, then traced by torch.compile(fullgraph=True): the shortcut
    must step aside (fake tensors have no data pointers) and the custom op run it (GPU: data_ptr exists)."""
    from attnforge.integrations.transformers import attention_forward

    compile_ = getattr(torch, "compile", None)
    if compile_ is None:
        pytest.skip("torch.compile needs torch >= 2.0")

    class Layer:
        is_causal = True
        training = False

    query = torch.randn(2, 8, 1, 64, dtype=torch.bfloat16, device="cuda")
    key, value = (torch.randn(2, 2, 300, 64, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    mask = torch.ones(2, 300, dtype=torch.long, device="cuda")
    mask[1, :11] = 0

    def step(query, key, value, mask):
        plain = attnforge.flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                          causal=True)
        padded, _ = attention_forward(Layer(), query, key, value, mask, scaling=0.125)
        unpadded, _ = attention_forward(Layer(), query, key, value, None, scaling=0.125)
        return plain, padded, unpadded

    with torch.no_grad():
        eager = [step(query, key, value, mask) for _ in range(2)]  # the second call runs through cached plans
        compiled = compile_(step, fullgraph=True, backend="eager")(query, key, value, mask)
    for ours, reference in zip(compiled, eager[1]):
        assert not torch.isnan(ours).any()
        assert torch.equal(ours, reference)
