"""Every CUDA kernel variant against the float64 reference, on fresh random inputs (GPU only).

Each case poisons out and softmax_lse with NaN and calls the C ABI with backend="cuda" (a fallback
cannot hide a kernel fault), once with the planned key splits and once with 3 forced. Odd lengths,
batch 17, GQA ratios, windows, bottom-right causal with fully masked rows, varlen with empty
sequences, non-contiguous views, padded head dims, seqused_k/leftpad_k, ALiBi and softcap.
"""
import math

import pytest
import torch

from attnforge import _native
from reference import assert_close, assert_lse_close, sequence_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda"


def run_case(dtype, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, num_splits, causal=False,
             window=(-1, -1), softcap=0.0, alibi=False, varlen=False, empty_every=0, layout="bshd", padded_dim=None,
             seqused=False, leftpad=False, with_lse=True):
    """layout 'bshd' (contiguous), 'bhsd' (transposed view) or 'slice' (views into bigger buffers)."""
    d_store = padded_dim or head_dim
    if varlen:
        lens_q = torch.randint(0, seqlen_q + 1, (batch,)).tolist()
        lens_k = torch.randint(1, seqlen_k + 1, (batch,)).tolist()
        if empty_every:
            for b in range(0, batch, empty_every):
                lens_q[b] = 0
        cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
        cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
        q = torch.randn(int(cu_q[-1]), heads, d_store, dtype=dtype, device=DEVICE)[..., :head_dim]
        k = torch.randn(int(cu_k[-1]), heads_kv, d_store, dtype=dtype, device=DEVICE)[..., :head_dim]
        v = torch.randn(int(cu_k[-1]), heads_kv, d_store, dtype=dtype, device=DEVICE)[..., :head_dim]
        out = torch.full((q.shape[0], heads, d_store), float("nan"), dtype=dtype, device=DEVICE)[..., :head_dim]
        lse = torch.full((heads, q.shape[0]), float("nan"), dtype=torch.float32, device=DEVICE)
    else:
        if layout == "bhsd":
            q = torch.randn(batch, heads, seqlen_q, d_store, dtype=dtype, device=DEVICE).transpose(1, 2)
            k = torch.randn(batch, heads_kv, seqlen_k, d_store, dtype=dtype, device=DEVICE).transpose(1, 2)
            v = torch.randn(batch, heads_kv, seqlen_k, d_store, dtype=dtype, device=DEVICE).transpose(1, 2)
        elif layout == "slice":  # kv as a view into a larger cache, q as every other head
            q = torch.randn(batch, seqlen_q, 2 * heads, d_store, dtype=dtype, device=DEVICE)[:, :, ::2]
            k = torch.randn(batch + 1, seqlen_k + 13, heads_kv, d_store, dtype=dtype, device=DEVICE)[1:, 5:5 + seqlen_k]
            v = torch.randn(batch + 1, seqlen_k + 13, heads_kv, d_store, dtype=dtype, device=DEVICE)[1:, 5:5 + seqlen_k]
        else:
            q = torch.randn(batch, seqlen_q, heads, d_store, dtype=dtype, device=DEVICE)
            k = torch.randn(batch, seqlen_k, heads_kv, d_store, dtype=dtype, device=DEVICE)
            v = torch.randn(batch, seqlen_k, heads_kv, d_store, dtype=dtype, device=DEVICE)
        q, k, v = q[..., :head_dim], k[..., :head_dim], v[..., :head_dim]
        out = torch.full((batch, seqlen_q, heads, d_store), float("nan"), dtype=dtype, device=DEVICE)[..., :head_dim]
        lse = torch.full((batch, heads, seqlen_q), float("nan"), dtype=torch.float32, device=DEVICE)
    slopes = None
    if alibi == "per_batch":
        slopes = torch.rand(batch, heads, dtype=torch.float32) * 0.3
    elif alibi:
        slopes = torch.rand(heads, dtype=torch.float32) * 0.3
    used = pad = None
    if seqused:
        used = torch.randint(0, seqlen_k + 1, (batch,), dtype=torch.int32)
    if leftpad:
        ends = used if used is not None else torch.full((batch,), seqlen_k, dtype=torch.int32)
        pad = (torch.rand(batch) * (ends.float() + 1)).floor().clamp(max=ends.float()).to(torch.int32)
    kwargs = dict(softmax_lse=lse if with_lse else None, causal=causal, window_size=window, softcap=softcap,
                  alibi_slopes=slopes.to(DEVICE) if slopes is not None else None, backend="cuda",
                  seqused_k=used.to(DEVICE) if used is not None else None,
                  leftpad_k=pad.to(DEVICE) if pad is not None else None, num_splits=num_splits)
    if varlen:
        kwargs.update(cu_seqlens_q=cu_q.to(DEVICE), cu_seqlens_k=cu_k.to(DEVICE), max_seqlen_q=max(lens_q + [1]),
                      max_seqlen_k=max(lens_k))
    _native.attention_forward(q, k, v, out, **kwargs)
    torch.cuda.synchronize()

    scale = 1.0 / math.sqrt(head_dim)
    for b in range(batch):
        if varlen:
            qs, qe, ks, ke = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
            qb, kb, vb, ob, lb = q[qs:qe], k[ks:ke], v[ks:ke], out[qs:qe], lse[:, qs:qe]
        else:
            end = int(used[b]) if used is not None else seqlen_k
            begin = int(pad[b]) if pad is not None else 0
            qb, kb, vb, ob, lb = q[b], k[b, begin:end], v[b, begin:end], out[b], lse[b]
        qb, kb, vb = qb.cpu(), kb.cpu(), vb.cpu()
        sb = slopes[b] if slopes is not None and slopes.dim() == 2 else slopes
        expected, expected_lse = sequence_attention(qb.double(), kb.double(), vb.double(), scale, causal, window,
                                                    softcap, sb)
        naive, _ = sequence_attention(qb, kb, vb, scale, causal, window, softcap, sb, precision=dtype)
        assert_close(ob.cpu(), expected, naive, dtype, what="out[%d]" % b)
        if with_lse:
            assert_lse_close(lb.cpu(), expected_lse)


DTYPES = [torch.bfloat16, torch.float16]
SPLITS = pytest.mark.parametrize("num_splits", [0, 3], ids=["planned", "split3"])


@pytest.fixture(params=["default", "fwd_sm80"], autouse=True)
def prefill_family(request, monkeypatch):
    """Every case twice: with the plan's default prefill family (fwd_sm90 on sm_90a) and with
    ATTNFORGE_FWD_SM90=0 (fwd_sm80, the family every other GPU runs). Read at each plan: these
    calls go to the C ABI directly, past the Python plan cache."""
    if request.param == "fwd_sm80":
        monkeypatch.setenv("ATTNFORGE_FWD_SM90", "0")
    return request.param


@SPLITS
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [32, 64, 96, 128, 192, 256])
@pytest.mark.parametrize("case", ["plain", "causal_b17", "extras", "softcap"])
def test_every_variant(case, head_dim, dtype, num_splits, seed):
    if case == "plain":
        run_case(dtype, 3, 77, 131, 4, 2, head_dim, num_splits)
    elif case == "causal_b17":
        run_case(dtype, 17, 129, 65, 8, 2, head_dim, num_splits, causal=True)
    elif case == "extras":
        run_case(dtype, 2, 200, 333, 4, 4, head_dim, num_splits, causal=True, softcap=30.0, alibi=True)
    else:
        run_case(dtype, 2, 150, 150, 2, 1, head_dim, num_splits, softcap=5.0)


CASES = {
    "gqa1_causal": dict(batch=2, seqlen_q=300, seqlen_k=300, heads=8, heads_kv=8, head_dim=128, causal=True),
    "gqa8_causal": dict(batch=2, seqlen_q=300, seqlen_k=300, heads=8, heads_kv=1, head_dim=128, causal=True),
    "causal_sq_gt_sk_masked_rows": dict(batch=3, seqlen_q=257, seqlen_k=100, heads=4, heads_kv=2, head_dim=64,
                                        causal=True),
    "causal_sq_lt_sk": dict(batch=3, seqlen_q=63, seqlen_k=517, heads=4, heads_kv=1, head_dim=128, causal=True),
    "window_32_16": dict(batch=2, seqlen_q=400, seqlen_k=400, heads=4, heads_kv=2, head_dim=64, window=(32, 16)),
    "window_0_0": dict(batch=2, seqlen_q=190, seqlen_k=190, heads=2, heads_kv=2, head_dim=128, window=(0, 0)),
    "window_left_open": dict(batch=2, seqlen_q=311, seqlen_k=280, heads=4, heads_kv=4, head_dim=96, window=(-1, 8)),
    "window_masked_rows": dict(batch=2, seqlen_q=300, seqlen_k=90, heads=4, heads_kv=4, head_dim=64, window=(5, -1)),
    "varlen_empties_b17": dict(batch=17, seqlen_q=300, seqlen_k=257, heads=8, heads_kv=2, head_dim=128, varlen=True,
                               empty_every=3),
    "varlen_causal_empties": dict(batch=17, seqlen_q=200, seqlen_k=333, heads=4, heads_kv=4, head_dim=64,
                                  varlen=True, empty_every=4, causal=True),
    "varlen_window_alibi_d256": dict(batch=5, seqlen_q=150, seqlen_k=150, heads=4, heads_kv=2, head_dim=256,
                                     varlen=True, window=(20, 3), alibi=True),
    "bhsd_view": dict(batch=2, seqlen_q=333, seqlen_k=333, heads=4, heads_kv=4, head_dim=128, layout="bhsd",
                      causal=True),
    "kv_slice_of_cache": dict(batch=3, seqlen_q=100, seqlen_k=200, heads=4, heads_kv=2, head_dim=64, layout="slice"),
    "head_dim_80": dict(batch=2, seqlen_q=150, seqlen_k=170, heads=4, heads_kv=2, head_dim=80),
    "head_dim_100_of_104": dict(batch=2, seqlen_q=150, seqlen_k=170, heads=4, heads_kv=2, head_dim=100,
                                padded_dim=104, causal=True),
    "head_dim_160": dict(batch=2, seqlen_q=140, seqlen_k=230, heads=2, heads_kv=1, head_dim=160, causal=True),
    "seqused_k": dict(batch=5, seqlen_q=100, seqlen_k=300, heads=4, heads_kv=2, head_dim=128, seqused=True),
    "seqused_leftpad_causal": dict(batch=5, seqlen_q=64, seqlen_k=300, heads=4, heads_kv=2, head_dim=64, seqused=True,
                                   leftpad=True, causal=True),
    "no_lse": dict(batch=2, seqlen_q=100, seqlen_k=100, heads=2, heads_kv=2, head_dim=64, with_lse=False),
    "alibi_per_batch": dict(batch=3, seqlen_q=120, seqlen_k=140, heads=4, heads_kv=2, head_dim=128, alibi="per_batch",
                            causal=True),
    "long_2048_causal": dict(batch=1, seqlen_q=2048, seqlen_k=2048, heads=4, heads_kv=4, head_dim=128, causal=True),
    "few_tiles_long_keys": dict(batch=1, seqlen_q=200, seqlen_k=3000, heads=2, heads_kv=2, head_dim=128, causal=True),
    "decode_gqa8": dict(batch=3, seqlen_q=1, seqlen_k=3000, heads=16, heads_kv=2, head_dim=128, causal=True),
    "decode_window_d256": dict(batch=1, seqlen_q=4, seqlen_k=5000, heads=4, heads_kv=4, head_dim=256,
                               window=(1000, 0)),
    "decode_varlen_empties": dict(batch=6, seqlen_q=3, seqlen_k=2500, heads=4, heads_kv=1, head_dim=128, varlen=True,
                                  empty_every=3, causal=True),
}


@SPLITS
@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes(name, num_splits, seed):
    run_case(torch.bfloat16, num_splits=num_splits, **CASES[name])


def test_float32_is_refused_with_a_reason():
    q = torch.randn(1, 16, 2, 64, device=DEVICE)
    status, _, reason = _native.attention_supported(q, q, q, torch.empty_like(q), backend="cuda")
    assert status == _native.Status.AF_ERR_UNSUPPORTED and "float32" in reason


@pytest.mark.parametrize("head_dim", [36, 59, 100, 111])
def test_head_dims_off_the_8_grid_run_on_the_kernel_padded(head_dim, seed):
    """FlashAttention-2 pads head dims that are not multiples of 8; so does attnforge, and the kernel runs."""
    import attnforge

    q = torch.randn(2, 70, 4, head_dim, dtype=torch.bfloat16, device=DEVICE)
    k = torch.randn(2, 90, 2, head_dim, dtype=torch.bfloat16, device=DEVICE)
    v = torch.randn_like(k)
    assert attnforge.explain(q, k, v, causal=True)["path"] == "attnforge-cuda-padded"
    out, lse, _ = attnforge.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    scale = 1.0 / math.sqrt(head_dim)
    for b in range(2):
        qb, kb, vb = q[b].cpu(), k[b].cpu(), v[b].cpu()
        expected, expected_lse = sequence_attention(qb.double(), kb.double(), vb.double(), scale, True)
        naive, _ = sequence_attention(qb, kb, vb, scale, True, precision=torch.bfloat16)
        assert_close(out[b].cpu(), expected, naive, torch.bfloat16)
        assert_lse_close(lse[b].cpu(), expected_lse)
