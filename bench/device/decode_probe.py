"""Host time of one decode-shaped call (one query row, 2k cached keys, 16/8 heads, d128) through each
layer of attnforge, beside SDPA: where the per-call overhead goes. Prints microseconds per call
(host wall time of 2000 back-to-back calls; the GPU work per call is ~13 us) and a cProfile of the
transformers-level call."""
import cProfile
import os
import pstats
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from attnforge import _native  # noqa: E402
from attnforge import flash_attn_interface as fai  # noqa: E402
from attnforge.integrations import transformers as aft  # noqa: E402


def host_us(fn, calls=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


q = torch.randn(1, 1, 16, 128, dtype=torch.bfloat16, device="cuda")
k = torch.randn(1, 2048, 8, 128, dtype=torch.bfloat16, device="cuda")
v = torch.randn_like(k)
out = torch.empty_like(q)
lse = torch.empty(1, 16, 1, device="cuda")
module = torch.nn.Module()
module.is_causal = True
qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # transformers' (B, H, S, D) views
kr, vr = kh.repeat_interleave(2, dim=1), vh.repeat_interleave(2, dim=1)
with torch.no_grad():
    rows = [
        ("_build_args (Python, ctypes)", lambda: _native._build_args(q, k, v, out, softmax_lse=lse, causal=True)),
        ("native af_attention_forward", lambda: _native.attention_forward(q, k, v, out, softmax_lse=lse, causal=True)),
        ("flash_attn_func", lambda: fai.flash_attn_func(q, k, v, causal=True)),
        ("transformers attention_forward", lambda: aft.attention_forward(module, qh, kh, vh, None, scaling=None)),
        ("torch.empty x2 (out, lse)", lambda: (torch.empty_like(q), torch.empty(1, 16, 1, device="cuda"))),
        ("SDPA (heads repeated, flash)", lambda: F.scaled_dot_product_attention(qh, kr, vr)),
    ]
    for name, fn in rows:
        if fn is not None:
            print("%-34s %7.1f us" % (name, host_us(fn)))
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(2000):
        aft.attention_forward(module, qh, kh, vh, None, scaling=None)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)
