"""A short attention example that checks its own answer.

Runs attnforge's flash_attn_func (FlashAttention-2's API: q, k, v as
(batch, seqlen, heads, head_dim), GQA, bottom-right causal) and compares it
with plain float64 attention written out below. Exits non-zero if they differ.
"""
import math
import sys

import torch

import attnforge

torch.manual_seed(0)
batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim = 2, 100, 130, 8, 2, 64
dtype = torch.bfloat16
q = torch.randn(batch, seqlen_q, heads, head_dim, dtype=dtype)
k = torch.randn(batch, seqlen_k, kv_heads, head_dim, dtype=dtype)
v = torch.randn(batch, seqlen_k, kv_heads, head_dim, dtype=dtype)

out = attnforge.flash_attn_func(q, k, v, causal=True)

# float64 reference: GQA by contiguous head groups, causal mask aligned bottom-right.
group = heads // kv_heads
k64 = k.double().repeat_interleave(group, dim=2)
v64 = v.double().repeat_interleave(group, dim=2)
scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k64) / math.sqrt(head_dim)
i = torch.arange(seqlen_q)[:, None]
j = torch.arange(seqlen_k)[None, :]
scores = scores.masked_fill(j > i + seqlen_k - seqlen_q, float("-inf"))
reference = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v64)

error = (out.double() - reference).abs().max().item()
print("attnforge %s: flash_attn_func (bf16, causal, GQA 4:1, Sq=%d, Sk=%d) max |error| vs float64 = %.2e"
      % (attnforge.__version__, seqlen_q, seqlen_k, error))
ok = error < 2e-2 and not torch.isnan(out).any()
print("OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
