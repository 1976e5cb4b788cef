"""Shared pieces of the device scripts: the attnforge binding, the float64 reference, FLOPs."""
import importlib.util
import math
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))


def native():
    """python/attnforge/_native.py loaded by path (the package __init__ is not needed here)."""
    spec = importlib.util.spec_from_file_location("attnforge_native",
                                                  os.path.join(_REPO, "python", "attnforge", "_native.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def attention_flops(batch, heads, seqlen_q, seqlen_k, head_dim, causal):
    """Forward FLOPs as in the FlashAttention benchmarks: 4*B*H*Sq*Sk*D, halved when causal."""
    flops = 4.0 * batch * heads * seqlen_q * seqlen_k * head_dim
    return flops / 2 if causal else flops


def reference(q, k, v, causal=False, window=(-1, -1), softcap=0.0, alibi=None, scale=None, dtype=torch.float64):
    """Attention of one sequence in `dtype`: q (Sq, H, D), k/v (Sk, Hk, D); alibi (H) slopes or None.

    Returns out (Sq, H, D) in `dtype` and the natural-log LSE (H, Sq) in float64; rows with no
    visible key give 0 and -inf.
    """
    sq, h, d = q.shape
    sk, hk = k.shape[0], k.shape[1]
    if sk == 0:
        return torch.zeros(sq, h, v.shape[-1], dtype=dtype, device=q.device), torch.full(
            (h, sq), float("-inf"), dtype=torch.float64, device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
    kf = kf.repeat_interleave(h // hk, dim=1)
    vf = vf.repeat_interleave(h // hk, dim=1)
    s = torch.einsum("qhd,khd->hqk", qf, kf).to(torch.float64 if dtype == torch.float64 else torch.float32) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq, device=q.device).view(-1, 1)
    j = torch.arange(sk, device=q.device).view(1, -1)
    diagonal = i + sk - sq
    if alibi is not None:
        s = s - alibi.to(s.dtype).view(-1, 1, 1) * (diagonal - j).abs().to(s.dtype)
    left, right = window
    if causal:
        right = 0
    visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if left >= 0:
        visible &= j >= diagonal - left
    if right >= 0:
        visible &= j <= diagonal + right
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s.to(torch.float64), dim=-1)
    p = torch.exp(s - s.amax(dim=-1, keepdim=True).clamp(min=-1e30))
    p = p.masked_fill(~visible, 0.0)
    denom = p.sum(-1, keepdim=True)
    p = torch.where(denom > 0, p / denom.clamp(min=1e-300), torch.zeros_like(p))
    out = torch.einsum("hqk,khd->qhd", p.to(dtype), vf)
    return out.to(dtype), lse


def time_ms(fn, warmup=5, repeats=20):
    """Median CUDA-event time of fn in milliseconds, after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]
