"""A small program written for flash_attn (FlashAttention-2), as users write them: a packed-QKV encoder
layer over variable-length sequences, a causal decoder step with a KV cache, and a GQA prefill. It checks
its own answers against plain torch. tests/python/test_drop_in.py runs it with only the import line below
changed to attnforge's."""
import torch
from flash_attn import flash_attn_func, flash_attn_varlen_qkvpacked_func, flash_attn_with_kvcache


def reference(q, k, v, causal):
    """q (Sq, H, D), k/v (Sk, Hk, D) in float64, bottom-right causal."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1).double(), v.repeat_interleave(groups, 1).double()
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) / q.shape[-1] ** 0.5
    if causal:
        sq, sk = q.shape[0], k.shape[0]
        scores = scores.masked_fill(torch.ones(sq, sk, dtype=torch.bool).triu(sk - sq + 1), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


torch.manual_seed(0)
lengths = [5, 12, 3]
cu = torch.tensor([0, 5, 17, 20], dtype=torch.int32)
qkv = torch.randn(20, 3, 4, 64)
out = flash_attn_varlen_qkvpacked_func(qkv, cu, max(lengths))
for b in range(3):
    rows = slice(int(cu[b]), int(cu[b + 1]))
    expected = reference(qkv[rows, 0], qkv[rows, 1], qkv[rows, 2], causal=False)
    assert (out[rows].double() - expected).abs().max() < 1e-4

q, k, v = torch.randn(2, 33, 8, 64), torch.randn(2, 33, 2, 64), torch.randn(2, 33, 2, 64)
out = flash_attn_func(q, k, v, causal=True)
assert (out[1].double() - reference(q[1], k[1], v[1], causal=True)).abs().max() < 1e-4

k_cache, v_cache = torch.zeros(2, 40, 2, 64), torch.zeros(2, 40, 2, 64)
k_cache[:, :33], v_cache[:, :33] = k, v
q_new, k_new, v_new = torch.randn(2, 1, 8, 64), torch.randn(2, 1, 2, 64), torch.randn(2, 1, 2, 64)
out = flash_attn_with_kvcache(q_new, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=33, causal=True)
assert torch.equal(k_cache[:, 33], k_new[:, 0])
expected = reference(q_new[0], k_cache[0, :34], v_cache[0, :34], causal=True)
assert (out[0].double() - expected).abs().max() < 1e-4
print("flash_attn script OK")
