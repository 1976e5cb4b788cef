"""Float64 reference for FlashAttention semantics, written independently of attnforge (one sequence and
one head at a time, FlashAttention-2's docstring rules), and the error budget of the house:

    error(ours) <= 2 * error(naive same-precision implementation) + floor (3 * for fp32 outputs),
    both measured against the float64 result rounded to the output dtype; NaN never passes. The floor
    (1e-6 for fp32 outputs, 1e-3 for fp16/bf16) is the one the C++ CPU-backend tests use: the naive
    implementation's own error can be near zero on a lucky draw.
"""
import math

import torch


def sequence_attention(q, k, v, scale, causal=False, window=(-1, -1), softcap=0.0, alibi=None, precision=None):
    """One sequence: q (Sq, H, D), k/v (Sk, Hk, D) -> out (Sq, H, D) float64, lse (H, Sq) float64.

    precision=None computes in float64 (the reference); precision=dtype is the naive same-precision
    implementation: float32 arithmetic rounded to dtype after every step (scores, weights, output).
    """
    sq, heads, _ = q.shape
    sk, kv_heads, _ = k.shape
    groups = heads // kv_heads
    work = torch.float64 if precision is None else torch.float32

    def rnd(x):
        return x if precision is None else x.to(precision).to(work)

    left, right = window
    if causal:
        right = 0
    i = torch.arange(sq)[:, None]
    j = torch.arange(sk)[None, :]
    diagonal = i + sk - sq
    visible = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        visible &= j >= diagonal - left
    if right >= 0:
        visible &= j <= diagonal + right
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full((heads, sq), -math.inf, dtype=torch.float64)
    if sk == 0 or sq == 0:
        return out, lse
    for h in range(heads):
        qh, kh, vh = q[:, h].to(work), k[:, h // groups].to(work), v[:, h // groups].to(work)
        scores = rnd(qh @ kh.T * scale)  # (Sq, Sk)
        if softcap > 0:
            scores = rnd(softcap * torch.tanh(scores / softcap))
        if alibi is not None:
            scores = rnd(scores - float(alibi[h]) * (diagonal - j).abs().to(work))
        scores = scores.masked_fill(~visible, -math.inf)
        top = scores.max(dim=1, keepdim=True).values
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
        weights = rnd(torch.exp(scores - top))
        total = weights.sum(dim=1, keepdim=True)
        seen = visible.any(dim=1)
        probs = rnd(weights / torch.where(total > 0, total, torch.ones_like(total)))
        out[:, h] = rnd(probs @ vh).double() * seen[:, None]
        lse[h] = torch.where(seen, (top[:, 0] + torch.log(total[:, 0])).double(), lse[h])
    return out, lse


def error_budget(ours, expected64, naive, dtype):
    """(error of ours, allowed error): both against the float64 result rounded to dtype."""
    rounded = expected64.to(dtype).double()
    ours_err = (ours.double() - rounded).abs().max().item() if ours.numel() else 0.0
    naive_err = (naive.double() - rounded).abs().max().item() if naive.numel() else 0.0
    floor = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-3
    # Plus one ulp of the output dtype at the largest output: a 16-bit result that lands on the other
    # side of a rounding boundary is off by a whole ulp whatever its fp32 accuracy (same rule as the
    # C++ tests).
    magnitude = rounded.abs().max().item() if rounded.numel() else 0.0
    ulp = torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(magnitude)) if magnitude > 0 else 0.0
    # fp32: both results carry rounding errors of one size from different summation orders, so the naive error
    # is a sample of that size, not a bound: 3x it (the C++ tests' rule). 16-bit: their output rounding dominates.
    factor = 3 if dtype in (torch.float32, torch.float64) else 2
    return ours_err, factor * naive_err + floor + ulp


def assert_close(ours, expected64, naive, dtype, what="out"):
    ours = torch.as_tensor(ours)
    assert not torch.isnan(ours.double()).any(), "%s has NaN" % what
    err, budget = error_budget(ours, expected64, naive, dtype)
    assert err <= budget, "%s error %.3g exceeds budget %.3g" % (what, err, budget)


def assert_lse_close(ours, expected64):
    """softmax_lse is float32 from any input dtype: -inf exactly where nothing is visible, else ~fp32 accuracy."""
    ours = torch.as_tensor(ours).double()
    assert not torch.isnan(ours).any(), "lse has NaN"
    assert torch.equal(torch.isinf(ours), torch.isinf(expected64)), "lse -inf pattern differs"
    finite = ~torch.isinf(expected64)
    if finite.any():
        err = (ours[finite] - expected64[finite]).abs().max().item()
        assert err <= 1e-4 * max(1.0, expected64[finite].abs().max().item()), "lse error %.3g" % err
