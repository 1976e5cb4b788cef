"""One shape, one implementation, a few calls: the program ncu profiles.

usage: python profile_one.py HEAD_DIM SEQLEN [causal] [--impl attnforge|flash|cudnn]
(bf16, B*S = 16384, H*D = 2048, as bench.py and sm90_check.py's sweep; SDPA in (B, H, S, D) views)
"""
import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import native

parser = argparse.ArgumentParser()
parser.add_argument("head_dim", type=int)
parser.add_argument("seqlen", type=int)
parser.add_argument("mask", nargs="?", default="full", choices=["full", "causal"])
parser.add_argument("--impl", default="attnforge", choices=["attnforge", "flash", "cudnn"])
args = parser.parse_args()
causal = args.mask == "causal"
batch, heads = 16384 // args.seqlen, 2048 // args.head_dim
q, k, v = (torch.randn(batch, args.seqlen, heads, args.head_dim, device="cuda", dtype=torch.bfloat16)
           for _ in range(3))
out = torch.empty_like(q)
backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}.get(args.impl)
af = native() if backend is None else None
for _ in range(4):
    if af is not None:
        af.attention_forward(q, k, v, out, causal=causal)
    else:
        with sdpa_kernel([backend]):
            torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                             v.transpose(1, 2), is_causal=causal)
torch.cuda.synchronize()
print("profiled %s d%d S=%d %s" % (args.impl, args.head_dim, args.seqlen, args.mask))
