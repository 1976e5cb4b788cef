"""One decode shape through attnforge, contiguous or paged, a few calls: the program ncu profiles.

usage: python profile_decode_one.py [--batch 128] [--keys 4096] [--page 0|16|256] [--heads 32] [--heads-kv 8]
    [--head-dim 128]
(bf16, one query row per sequence; --page 0: the contiguous cache through
flash_attn_with_kvcache with cache_seqlens, else pages of that many rows in the sequences' order, so the two
read the same addresses in the same order and differ only in the loader)
"""
import argparse

import torch

import attnforge

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--keys", type=int, default=4096)
parser.add_argument("--page", type=int, default=0)
parser.add_argument("--heads", type=int, default=32)
parser.add_argument("--heads-kv", type=int, default=8)
parser.add_argument("--head-dim", type=int, default=128)
args = parser.parse_args()
shape = (args.batch, args.keys, args.heads_kv, args.head_dim)
k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(2))
q = torch.randn(args.batch, 1, args.heads, args.head_dim, device="cuda", dtype=torch.bfloat16)
lens = torch.full((args.batch,), args.keys, dtype=torch.int32, device="cuda")
table = None
if args.page:
    assert args.keys % args.page == 0, "--keys must be a multiple of --page"
    pages = args.keys // args.page
    k, v = (t.view(args.batch * pages, args.page, args.heads_kv, args.head_dim) for t in (k, v))
    table = torch.arange(args.batch * pages, dtype=torch.int32, device="cuda").view(args.batch, pages)
for _ in range(4):
    attnforge.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, block_table=table)
torch.cuda.synchronize()
print("profiled decode B%d keys %d page %d: %s" % (args.batch, args.keys, args.page,
                                                  attnforge.explain(q, k, v, block_table=table, seqused_k=lens)))
