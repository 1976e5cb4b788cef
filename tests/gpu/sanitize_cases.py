"""Run by bench/device/run.sh under compute-sanitizer: a few small attnforge CUDA calls for
compute-sanitizer (memcheck / racecheck): odd lengths,
varlen with empty sequences, GQA, windows, extras, padded head dims; both kernel families, split
keys, paged K/V (page sizes 3 to 1024, garbage table entries past the used pages), left padding
and kv_batch_idx in the decode family; decode's programmatic dependent launches back to back;
flash_attn_with_kvcache's rotary and in-place append (contiguous, pages of 1 and 16 rows); decode grids past one
wave (each CTA prefetches its successor's first key blocks into L2)."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from attnforge import _native as af  # noqa: E402
from attnforge import flash_attn_with_kvcache  # noqa: E402

torch.manual_seed(0)


def call(batch, sq, sk, h, hk, d, dtype=torch.bfloat16, **kw):
    q = torch.randn(batch, sq, h, d, dtype=dtype, device="cuda")
    k = torch.randn(batch, sk, hk, d, dtype=dtype, device="cuda")
    v = torch.randn(batch, sk, hk, d, dtype=dtype, device="cuda")
    out = torch.empty_like(q)
    lse = torch.empty(batch, h, sq, dtype=torch.float32, device="cuda")
    af.attention_forward(q, k, v, out, softmax_lse=lse, backend="cuda", **kw)


call(3, 77, 131, 4, 2, 64)
call(2, 129, 65, 4, 1, 128, causal=True)
call(2, 100, 100, 2, 2, 256, dtype=torch.float16, softcap=20.0)
call(1, 70, 90, 2, 2, 96, window_size=(8, 4), alibi_slopes=torch.rand(2, device="cuda"))
call(1, 45, 45, 2, 2, 40)
call(2, 33, 200, 2, 2, 192, causal=True)
cu_q = torch.tensor([0, 0, 37, 37, 100], dtype=torch.int32, device="cuda")
cu_k = torch.tensor([0, 50, 90, 90, 171], dtype=torch.int32, device="cuda")
q = torch.randn(100, 4, 32, dtype=torch.bfloat16, device="cuda")
k = torch.randn(171, 2, 32, dtype=torch.bfloat16, device="cuda")
out = torch.empty_like(q)
af.attention_forward(q, k, k, out, softmax_lse=torch.empty(4, 100, device="cuda"), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                     max_seqlen_q=63, max_seqlen_k=81, causal=True, backend="cuda")
# seqused_k / leftpad_k (an empty range, leftpad == seqused): on sm_90a fwd_sm90's boxes read past the
# used keys and zero V's tail in shared memory.
call(3, 200, 300, 4, 2, 128, causal=True, seqused_k=torch.tensor([300, 130, 7], dtype=torch.int32, device="cuda"),
     leftpad_k=torch.tensor([0, 3, 7], dtype=torch.int32, device="cuda"))
call(1, 200, 3000, 2, 2, 128, causal=True)  # fwd_sm80, few query tiles: split keys + af_flash_combine
call(2, 1, 1500, 8, 2, 128, causal=True)  # decode family, split keys
call(17, 1, 333, 16, 16, 64, causal=True)  # d64 decode grid past one wave of the default tile: the wide-grid tile
call(17, 1, 333, 32, 8, 128)  # d128 past one wave (H200: 136 CTAs): the 2-block wide-grid tile
call(66, 1, 200, 32, 8, 128)  # d128, two waves of the 3-block wide-grid tile on 132 SMs (H200)
call(17, 1, 2100, 16, 16, 64)  # d64 past one wave, past 2k keys: the default tile at two CTAs per SM
# Grids past one wave prefetch their successors' first key rows and query rows into L2 (the two above too): a cache
# shorter than those rows, two packed tiles per KV head, and SDPA's (B, Hk, S, D) cache through a transposed view.
call(70, 5, 7, 32, 8, 128)
kv = torch.randn(2, 66, 8, 300, 128, dtype=torch.bfloat16, device="cuda").transpose(2, 3)
q = torch.randn(66, 1, 32, 128, dtype=torch.bfloat16, device="cuda")
af.attention_forward(q, kv[0], kv[1], torch.empty_like(q), backend="cuda")
call(1, 3, 1100, 4, 4, 64, window_size=(300, 0))
call(3, 5, 999, 16, 2, 256, dtype=torch.float16, softcap=15.0, alibi_slopes=torch.rand(16, device="cuda"))
# Paged decode over shuffled pages, cache lengths per sequence: per-row table reads (page 3), table
# entries read ahead and shared by shuffles (5, 16, 100), pages longer than the keys (1024). Entries
# past each sequence's used pages are garbage (-1, num_pages, 2^31 - 1), which must never be read
# as an address; leftpad and a window start the first key block mid-sequence.
for page in (3, 5, 16, 100, 1024):
    blocks = (700 + page - 1) // page
    num_pages = 3 * blocks + 2
    pages = torch.randn(num_pages, page, 2, 128, dtype=torch.bfloat16, device="cuda")
    table = torch.randperm(num_pages, device="cuda")[: 3 * blocks].view(3, blocks).to(torch.int32)
    used = [700, 1, 333]
    for b in range(3):
        table[b, (used[b] + page - 1) // page:] = [-1, num_pages, 2**31 - 1][b]
    q = torch.randn(3, 2, 8, 128, dtype=torch.bfloat16, device="cuda")
    for kw in ({}, {"leftpad_k": torch.tensor([129, 0, 200], dtype=torch.int32, device="cuda"),
                    "window_size": (150, 0)}):
        af.attention_forward(q, pages, pages, torch.empty_like(q), block_table=table, causal=True, num_splits=4,
                             seqused_k=torch.tensor(used, dtype=torch.int32, device="cuda"), backend="cuda", **kw)
q = torch.randn(2, 1, 8, 64, dtype=torch.bfloat16, device="cuda")
cache = torch.randn(4, 300, 2, 64, dtype=torch.bfloat16, device="cuda")
af.attention_forward(q, cache, cache, torch.empty_like(q), kv_batch_idx=torch.tensor([3, 1], dtype=torch.int32,
                     device="cuda"), leftpad_k=torch.tensor([10, 0], dtype=torch.int32, device="cuda"),
                     seqused_k=torch.tensor([250, 0], dtype=torch.int32, device="cuda"), backend="cuda")
# Decode plans that hold every SM alone (bf16 32/8 d128, 2 x 1k keys, heuristic splits) launch with
# programmatic dependent launch on sm_90+: three back to back, each waiting on the one before.
q = torch.randn(2, 1, 32, 128, dtype=torch.bfloat16, device="cuda")
cache = torch.randn(2, 1024, 8, 128, dtype=torch.bfloat16, device="cuda")
out = torch.empty_like(q)
for _ in range(3):
    af.attention_forward(q, cache, cache, out, causal=True, backend="cuda")
# flash_attn_with_kvcache: rotary (interleaved and GPT-NeoX, rotary_dim < head_dim) and the in-place append
# (af_kvcache_append), then decode over a contiguous cache and over shuffled pages of 1 and 16 rows.
for page, interleaved in ((None, True), (1, False), (16, True)):
    rows, new = 320, 3
    seqlens = torch.tensor([0, 150, rows - new], dtype=torch.int32, device="cuda")
    if page is None:
        k_cache = torch.randn(3, rows, 2, 64, dtype=torch.float16, device="cuda")
        table = None
    else:
        blocks = rows // page
        k_cache = torch.randn(3 * blocks, page, 2, 64, dtype=torch.float16, device="cuda")
        table = torch.randperm(3 * blocks, device="cuda").view(3, blocks).to(torch.int32)
    v_cache = torch.randn_like(k_cache)
    angles = torch.rand(rows, 16, device="cuda") * 6.3
    flash_attn_with_kvcache(torch.randn(3, new, 8, 64, dtype=torch.float16, device="cuda"), k_cache, v_cache,
                            k=torch.randn(3, new, 2, 64, dtype=torch.float16, device="cuda"),
                            v=torch.randn(3, new, 2, 64, dtype=torch.float16, device="cuda"),
                            rotary_cos=angles.cos().half(), rotary_sin=angles.sin().half(), cache_seqlens=seqlens,
                            block_table=table, causal=True, rotary_interleaved=interleaved, num_splits=0 if page else 3)
torch.cuda.synchronize()
print("sanitize cases ran")
