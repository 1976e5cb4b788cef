"""One shape, attnforge and SDPA flash, a few calls each: the program ncu profiles.

usage: python profile_one.py HEAD_DIM SEQLEN [causal]   (bf16, B*S = 16384, H*D = 2048, as bench.py)
"""
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import native

head_dim, seqlen = int(sys.argv[1]), int(sys.argv[2])
causal = len(sys.argv) > 3 and sys.argv[3] == "causal"
batch, heads = 16384 // seqlen, 2048 // head_dim
q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
out = torch.empty_like(q)
af = native()
for _ in range(3):
    af.attention_forward(q, k, v, out, causal=causal)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                         is_causal=causal)
torch.cuda.synchronize()
print("profiled d%d S=%d %s" % (head_dim, seqlen, "causal" if causal else "full"))
