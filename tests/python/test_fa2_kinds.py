"""Issue 17, kinds 1-4: what FlashAttention-2's own test suite found in attnforge's torch paths.

1. NaN gradients for rows that see no key (causal/local, seqlen_q > seqlen_k, ALiBi).
2. ALiBi added in float32, not rounded to the inputs' 16-bit dtype.
3. deterministic=True: the backward pass is reproducible bit for bit.
4. return_attn_probs=True with dropout returns S_dmask in FlashAttention's encoding.

Each case is checked against a float64 reference written here (dense, padded batch; dropout applied
with the keep mask decoded from S_dmask), never against attnforge itself.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import attnforge
from attnforge import fallback, flash_attn_func, flash_attn_varlen_func

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_sdpa = pytest.mark.skipif(not fallback.HAS_SDPA, reason="torch %s has no SDPA path" % torch.__version__)


def _reference(q, k, v, causal=False, window=(-1, -1), alibi=None, keep=None, dropout_p=0.0, precision=None):
    """Attention in float64 (precision=None: the reference) or in precision (the naive same-precision
    implementation), q (B, Sq, H, D), k/v (B, Sk, Hk, D), alibi (B, H), keep (B, H, Sq, Sk) bool.
    Rows that see no key give 0. Differentiable (the inputs may require grad)."""
    work = precision or torch.float64
    groups = q.shape[2] // k.shape[2]
    q, k, v = q.to(work), k.to(work).repeat_interleave(groups, dim=2), v.to(work).repeat_interleave(groups, dim=2)
    sq, sk, d = q.shape[1], k.shape[1], q.shape[-1]
    i = torch.arange(sq, device=q.device)[:, None]
    j = torch.arange(sk, device=q.device)[None, :]
    diagonal = i + sk - sq
    visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    left, right = window[0], (0 if causal else window[1])
    if left >= 0:
        visible &= j >= diagonal - left
    if right >= 0:
        visible &= j <= diagonal + right
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    if alibi is not None:
        scores = scores - alibi.to(work)[:, :, None, None] * (diagonal - j).abs().to(work)
    scores = scores.masked_fill(~visible, -math.inf)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    if keep is not None:
        probs = probs.masked_fill(~keep, 0.0) / (1 - dropout_p)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v), visible


def _leaves(*shapes, dtype, device):
    return [torch.randn(shape, dtype=dtype, device=device).requires_grad_(True) for shape in shapes]


def _grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


def _assert_close(ours, expected, naive, what):
    """The house budget: error <= 2 x the naive same-precision error + a floor, against float64."""
    assert torch.isfinite(ours).all(), "%s has NaN/Inf" % what
    floor = (1e-6 if ours.dtype == torch.float32 else 1e-3) * max(1.0, expected.abs().max().item())
    err = (ours.double() - expected).abs().max().item()
    budget = 2 * (naive.double() - expected).abs().max().item() + floor
    assert err <= budget, "%s error %.3g > budget %.3g" % (what, err, budget)


def _assert_grads_close(ours, inputs, dout, what, **reference):
    """ours (dq, dk, dv) against float64 gradients of _reference(*inputs, **reference), with the budget
    of the same gradients computed in the inputs' dtype."""
    expected = _grads(_reference(*inputs, **reference)[0], inputs, dout.double())
    naive = _grads(_reference(*inputs, precision=inputs[0].dtype, **reference)[0], inputs, dout)
    for name, a, b, c in zip(("dq", "dk", "dv"), ours, expected, naive):
        _assert_close(a, b, c, "%s: %s" % (what, name))


class _LseRecoveringSDPA(torch.autograd.Function):
    """Stand-in for an SDPA backend whose backward recovers probabilities as exp(s - lse) in fp32 over
    key tiles of 128, scoring the padded part of the last tile 0 (cuDNN on sm90, pytorch#196678).
    A row whose lse is below ln(FLT_MAX) ~ -88.7 overflows there and gives NaN in dq."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        scores = (q.float() @ k.float().transpose(-1, -2)) * scale + mask.float()
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        ctx.save_for_backward(q, k, v, scores, lse)
        ctx.scale = scale
        return (torch.exp(scores - lse) @ v.float()).to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, scores, lse = ctx.saved_tensors
        pad = (-scores.shape[-1]) % 128
        probs = torch.exp(F.pad(scores, (0, pad), value=0.0) - lse)  # padded keys scored 0
        k_pad, v_pad = (F.pad(x.float(), (0, 0, 0, pad)) for x in (k, v))
        dout = dout.float()
        dprobs = dout @ v_pad.transpose(-1, -2)
        delta = (dprobs * probs).sum(-1, keepdim=True)
        dscores = probs * (dprobs - delta) * ctx.scale
        dq = dscores @ k_pad
        dk = (dscores.transpose(-1, -2) @ q.float())[..., :k.shape[-2], :]
        dv = (probs.transpose(-1, -2) @ dout)[..., :v.shape[-2], :]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def _lse_recovering_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, scale=None, **unused):
    assert attn_mask is not None and attn_mask.dtype != torch.bool and dropout_p == 0.0
    return _LseRecoveringSDPA.apply(q, k, v, attn_mask, scale)


# Kind 1: the cases (test_flash_attn_splitkv: seqlen_q 800 or 2048 against seqlen_k 64), smaller.
@needs_sdpa
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (20, 3))])
def test_rows_that_see_nothing_get_zero_gradients_not_nan(seed, dtype, causal, window, monkeypatch):
    """The named example under an SDPA backward that overflows for lse < -88.7: before the fix ALiBi
    rows far from the diagonal (bias -0.3 * ~700) reached it unshifted and dq was NaN."""
    monkeypatch.setattr(F, "scaled_dot_product_attention", _lse_recovering_sdpa)
    batch, sq, sk, heads, d = 1, 800, 64, 2, 32
    q, k, v = _leaves((batch, sq, heads, d), (batch, sk, heads, d), (batch, sk, heads, d), dtype=dtype,
                      device="cpu")
    alibi = torch.rand(batch, heads) * 0.3 + 0.1
    out, _, path = fallback.attention(q, k, v, alibi_slopes=alibi, causal=causal, window_size=window,
                                      need_lse=False)
    assert path == "sdpa"
    dout = torch.randn_like(out)
    grads = _grads(out, (q, k, v), dout)
    _, visible = _reference(q.detach(), k.detach(), v.detach(), causal, window, alibi)
    blind = ~visible.any(dim=-1)  # (Sq,) rows that see no key
    assert blind.sum() > 0
    assert (out[:, blind] == 0).all()
    assert (grads[0][:, blind] == 0).all(), "rows that see nothing must get zero dq"
    _assert_grads_close(grads, (q, k, v), dout, "sdpa", causal=causal, window=window, alibi=alibi)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_blind_rows_through_the_public_api_have_finite_gradients(seed, device, deterministic):
    """flash_attn_func (kernel forward where it runs, torch recompute backward), both recompute paths."""
    batch, sq, sk, heads, d = 2, 300, 64, 3, 40
    q, k, v = _leaves((batch, sq, heads, d), (batch, sk, heads, d), (batch, sk, heads, d), dtype=torch.bfloat16,
                      device=device)
    alibi = torch.rand(batch, heads, device=device) * 0.3
    out = flash_attn_func(q, k, v, causal=True, alibi_slopes=alibi, deterministic=deterministic)
    dout = torch.randn_like(out)
    grads = _grads(out, (q, k, v), dout)
    _, visible = _reference(q.detach(), k.detach(), v.detach(), True, (-1, -1), alibi)
    assert (grads[0][:, ~visible.any(dim=-1)] == 0).all()
    _assert_grads_close(grads, (q, k, v), dout, "public", causal=True, alibi=alibi)


# Kind 2: the forward example (head dim 111, non-causal, 2048 against 64, bf16), smaller.
@needs_sdpa
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_alibi_is_added_in_float32(seed, device, dtype, monkeypatch):
    masks = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    batch, sq, sk, heads, d = 1, 1024, 64, 2, 111
    q, k, v = _leaves((batch, sq, heads, d), (batch, sk, heads, d), (batch, sk, heads, d), dtype=dtype,
                      device=device)
    alibi = torch.rand(batch, heads, device=device) * 0.3 + 0.1
    out, _, _ = fallback.attention(q, k, v, alibi_slopes=alibi, need_lse=False)
    assert masks and all(m.dtype == torch.float32 for m in masks), "ALiBi rounded to %s" % masks[0].dtype
    dout = torch.randn_like(out)
    grads = _grads(out, (q, k, v), dout)
    with torch.no_grad():
        _assert_close(out, _reference(q, k, v, alibi=alibi)[0], _reference(q, k, v, alibi=alibi, precision=dtype)[0],
                      "out")
    _assert_grads_close(grads, (q, k, v), dout, "alibi", alibi=alibi)


# Kind 3
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("varlen", [False, True])
def test_deterministic_backward_is_bitwise_reproducible_and_avoids_sdpa(seed, device, varlen, monkeypatch):
    """deterministic=True recomputes through the eager path (SDPA's fused backward kernels accumulate
    dq with atomics on GPUs); three backward passes give identical bits."""
    calls = []
    sdpa = getattr(F, "scaled_dot_product_attention", None)

    def spy(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    batch, s, heads, d = 2, 96, 4, 64
    q, k, v = _leaves((batch, s, heads, d), (batch, s, 2, d), (batch, s, 2, d), dtype=torch.bfloat16, device=device)
    dout = torch.randn(batch, s, heads, d, dtype=torch.bfloat16, device=device)
    cu = torch.arange(0, (batch + 1) * s, s, dtype=torch.int32, device=device)

    def run(deterministic):
        if varlen:
            flat = [x.reshape(batch * s, x.shape[2], d) for x in (q, k, v)]
            out = flash_attn_varlen_func(*flat, cu, cu, s, s, causal=True, deterministic=deterministic)
            return _grads(out, (q, k, v), dout.reshape(batch * s, heads, d))
        return _grads(flash_attn_func(q, k, v, causal=True, deterministic=deterministic), (q, k, v), dout)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy, raising=False)
    first = run(True)
    assert not calls, "deterministic=True went through SDPA"
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(first, run(True)))
    run(False)
    assert calls or not fallback.HAS_SDPA, "deterministic=False should keep the SDPA recompute"
    _assert_grads_close(first, (q, k, v), dout, "deterministic", causal=True)


# Kind 4
def _decode_s_dmask(s_dmask, scores, block_n):
    """FlashAttention's S_dmask decoding, written from its documented encoding: |S| * exp(m - lse) with m
    the maximum of the row's scores over the entry's key block and all later ones; keep = S >= 0."""
    sk = scores.shape[-1]
    blocks = scores.split(block_n, dim=-1)
    lse = torch.logsumexp(scores, dim=-1)
    lse = torch.where(torch.isinf(lse), torch.full_like(lse, math.inf), lse)
    block_max = torch.stack([b.amax(dim=-1) for b in blocks], dim=-1)
    running = block_max.flip(-1).cummax(dim=-1).values.flip(-1)
    s = s_dmask[:, :, :scores.shape[2], :sk].double()
    probs = torch.cat([part.abs() * torch.exp(running[..., n:n + 1] - lse[..., None])
                       for n, part in enumerate(s.split(block_n, dim=-1))], dim=-1)
    return probs.nan_to_num(0.0), s >= 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal,alibi", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_s_dmask_with_dropout(seed, device, causal, alibi, deterministic):
    batch, sq, sk, heads, d, p = 2, 200, 300, 3, 32, 0.17
    dtype = torch.bfloat16
    q, k, v = _leaves((batch, sq, heads, d), (batch, sk, heads, d), (batch, sk, heads, d), dtype=dtype,
                      device=device)
    slopes = torch.rand(batch, heads, device=device) * 0.3 if alibi else None
    out, lse, s_dmask = flash_attn_func(q, k, v, p, causal=causal, alibi_slopes=slopes, deterministic=deterministic,
                                        return_attn_probs=True)
    assert s_dmask is not None and s_dmask.dtype == dtype
    assert s_dmask.shape == (batch, heads, 256, 384)
    assert torch.isfinite(s_dmask).all()

    _, visible = _reference(q, k, v, causal)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(d)
    if alibi:
        diagonal = torch.arange(sq, device=device)[:, None] + sk - sq
        distance = (diagonal - torch.arange(sk, device=device)[None, :]).abs().double()
        scores = scores - slopes.double()[:, :, None, None] * distance
    scores = scores.masked_fill(~visible, -math.inf)
    block_n = attnforge.flash_attn_interface._get_block_size_n(q.device, d, True, causal)
    probs, keep = _decode_s_dmask(s_dmask, scores, block_n)
    assert (s_dmask[:, :, sq:] == 0).all() and (s_dmask[:, :, :, sk:] == 0).all(), "padding must be 0"
    expected_probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    assert (probs - expected_probs).abs().max().item() <= 1e-2

    dropped = (~keep & visible).sum().item() / (visible.sum().item() * batch * heads)
    assert abs(dropped - p) <= 0.02, dropped

    reference = dict(causal=causal, alibi=slopes, keep=keep, dropout_p=p)
    with torch.no_grad():
        _assert_close(out, _reference(q, k, v, **reference)[0], _reference(q, k, v, precision=dtype, **reference)[0],
                      "out")
    dout = torch.randn_like(out)
    _assert_grads_close(_grads(out, (q, k, v), dout), (q, k, v), dout, "dropout", **reference)


def test_s_dmask_varlen_layout_and_none_without_dropout(seed):
    lens = [70, 130]
    heads, d, p = 2, 16, 0.25
    cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), heads, d, dtype=torch.float16) for _ in range(3))
    out, lse, s_dmask = flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), p, return_attn_probs=True)
    assert s_dmask.shape == (2, heads, 256, 256)
    for b, n in enumerate(lens):
        assert (s_dmask[b, :, n:] == 0).all() and (s_dmask[b, :, :, n:] == 0).all()
        seq = slice(int(cu[b]), int(cu[b + 1]))
        scores = torch.einsum("qhd,khd->hqk", q[seq].double(), k[seq].double())[None] / math.sqrt(d)
        probs, keep = _decode_s_dmask(s_dmask[b:b + 1], scores, 128)
        expected = torch.einsum("bhqk,khd->qhd", probs.masked_fill(~keep, 0.0) / (1 - p), v[seq].double())
        assert (out[seq].double() - expected).abs().max().item() <= 1e-2
    assert flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), 0.0, return_attn_probs=True)[2] is None


def test_deterministic_is_not_part_of_the_plan_key():
    """deterministic changes only the backward: calls that differ in it share one forward plan."""
    from attnforge import _dispatch
    from attnforge._native import AttentionOptions

    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    plain = AttentionOptions(causal=True)
    assert _dispatch.plan_key(q, k, v, True, plain) == _dispatch.plan_key(q, k, v, True,
                                                                         plain._replace(deterministic=True))
    assert _dispatch.plan_key(q, k, v, True, plain) != _dispatch.plan_key(q, k, v, True, plain._replace(causal=False))
