"""Where paged decode's gap at large batch comes from: one B x keys shape (bf16, 32/8 heads, d128, one query row)
through five ways of holding the same keys, GPU time per call by CUDA-graph replay, three interleaved rounds:

  func        flash_attn_func on the contiguous cache (B, S, Hk, D)
  kvcache     flash_attn_with_kvcache on that cache with cache_seqlens
  paged-view  the same memory viewed as pages of --page rows, block_table in order (same addresses, same order)
  paged-copy  a copy of the cache as pages in order (a new allocation, as decode_bench.py builds its pools)
  paged-shuf  that copy with its pages shuffled

then the kernels each way launches (torch.profiler), so a kernel outside attention shows. ncu found the decode
kernel equally fast on the contiguous cache and on the paged view (session 6), while decode_bench.py timed paged
calls ~12% slower at B128: this separates the kernel, the allocation and the call path.

usage: python paged_gap.py [--batch 128] [--keys 4096] [--page 256]
"""
import argparse

import torch

import attnforge
from decode_bench import graph_time_us

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--keys", type=int, default=4096)
parser.add_argument("--page", type=int, default=256)
args = parser.parse_args()
B, S, P = args.batch, args.keys, args.page
assert S % P == 0
k, v = (torch.randn(B, S, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
q = torch.randn(B, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
lens = torch.full((B,), S, dtype=torch.int32, device="cuda")
pages = B * (S // P)
ordered = torch.arange(pages, dtype=torch.int32, device="cuda").view(B, S // P)
kv_view = (k.view(pages, P, 8, 128), v.view(pages, P, 8, 128))
kv_copy = (k.clone().view(pages, P, 8, 128), v.clone().view(pages, P, 8, 128))
perm = torch.randperm(pages, device="cuda")
inverse = torch.empty_like(perm)
inverse[perm] = torch.arange(pages, device="cuda")
kv_shuf = (kv_copy[0][perm].contiguous(), kv_copy[1][perm].contiguous())
table_shuf = inverse.view(B, S // P).to(torch.int32)
ways = {
    "func": lambda: attnforge.flash_attn_func(q, k, v),
    "kvcache": lambda: attnforge.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens),
    "paged-view": lambda: attnforge.flash_attn_with_kvcache(q, *kv_view, cache_seqlens=lens, block_table=ordered),
    "paged-copy": lambda: attnforge.flash_attn_with_kvcache(q, *kv_copy, cache_seqlens=lens, block_table=ordered),
    "paged-shuf": lambda: attnforge.flash_attn_with_kvcache(q, *kv_shuf, cache_seqlens=lens, block_table=table_shuf),
}
expected = ways["func"]().float()
for name, fn in ways.items():
    diff = (fn().float() - expected).abs().max().item()
    assert diff < 2e-2, "%s differs from flash_attn_func by %g" % (name, diff)
times = {name: [] for name in ways}
for _ in range(3):
    for name, fn in ways.items():
        times[name].append(graph_time_us([fn] * 4))
kv_bytes = 2 * B * S * 8 * 128 * 2
print("B %d keys %d page %d (K+V %.2f GB); us per call, three rounds, TB/s of the median" % (B, S, P, kv_bytes / 1e9))
for name, ts in times.items():
    med = sorted(ts)[1]
    print("  %-10s %s  median %7.1f  %.2f TB/s  func/this %.3f" % (
        name, " ".join("%7.1f" % t for t in ts), med, kv_bytes / med / 1e6, sorted(times["func"])[1] / med))
for name in ("kvcache", "paged-view", "paged-shuf"):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ways[name]()
        torch.cuda.synchronize()
    kernels = [(e.key, e.device_time_total) for e in prof.key_averages() if e.device_time_total > 0]
    print("  kernels of %s: %s" % (name, ", ".join("%s %.1f us" % (n[:60], t) for n, t in kernels)))
