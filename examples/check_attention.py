"""A short attention example that checks its own answer.

Runs attnforge's flash_attn_func (FlashAttention-2's API: q, k, v as
(batch, seqlen, heads, head_dim), GQA, bottom-right causal) on torch bfloat16
tensors, or on numpy float16 arrays where torch is not installed, and compares
it with plain float64 attention written out below. Exits non-zero if they differ.
"""
import math
import random
import sys

import attnforge

try:
    import torch
except ImportError:
    torch = None

batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim = 2, 37, 53, 4, 2, 32
rng = random.Random(0)


def randn(*shape):
    values = [rng.gauss(0.0, 1.0) for _ in range(math.prod(shape))]
    if torch is not None:
        return torch.tensor(values, dtype=torch.float32).reshape(shape).to(torch.bfloat16)
    import numpy

    return numpy.array(values, dtype=numpy.float16).reshape(shape)


q = randn(batch, seqlen_q, heads, head_dim)
k = randn(batch, seqlen_k, kv_heads, head_dim)
v = randn(batch, seqlen_k, kv_heads, head_dim)
out = attnforge.flash_attn_func(q, k, v, causal=True)
dtype = "torch bfloat16" if torch is not None else "numpy float16"


def as_lists(x):
    return (x.float() if torch is not None else x).tolist()


# float64 reference on the rounded inputs: query head h reads key/value head h // (heads // kv_heads),
# and query row i sees key j when j <= i + seqlen_k - seqlen_q (causal, aligned bottom-right).
Q, K, V, Out = as_lists(q), as_lists(k), as_lists(v), as_lists(out)
errors = []
for b in range(batch):
    for h in range(heads):
        g = h // (heads // kv_heads)
        for i in range(seqlen_q):
            visible = range(min(seqlen_k, i + seqlen_k - seqlen_q + 1))
            scores = [sum(x * y for x, y in zip(Q[b][i][h], K[b][j][g])) / math.sqrt(head_dim) for j in visible]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            for d in range(head_dim):
                reference = sum(w * V[b][j][g][d] for w, j in zip(weights, visible)) / total
                errors.append(abs(Out[b][i][h][d] - reference))

nans = sum(1 for e in errors if math.isnan(e))
worst = max((e for e in errors if not math.isnan(e)), default=0.0)
print("attnforge %s: flash_attn_func (%s, causal, GQA 2:1, Sq=%d, Sk=%d) max |error| vs float64 = %.2e, NaN outputs: %d"
      % (attnforge.__version__, dtype, seqlen_q, seqlen_k, worst, nans))
ok = nans == 0 and worst < 2e-2
print("OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
