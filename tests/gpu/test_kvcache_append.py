"""The kvcache family (af_kvcache_append) against a float64 rotary reference written here, on the GPU.

New k/v rows land at cache_seqlens[b] + t (padded caches, cache_batch_idx, paged caches of page
sizes 1, 3 and 16 in shuffled order), k and q are rotated (interleaved and GPT-NeoX,
rotary_dim < head_dim), rows outside the cache are not written, nothing else in the cache changes,
and seqused_out = cache_seqlens + S_new.
"""
import pytest
import torch

from attnforge import _native

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rotate64(x, cos, sin, pos, interleaved):
    """x (S, H, D) float64 rotated on its first 2 * cos.shape[1] dims at positions pos (S,)."""
    half = cos.shape[1]
    c, s = cos.double()[pos][:, None, :], sin.double()[pos][:, None, :]
    out = x.double().clone()
    if interleaved:
        x1, x2 = x[..., 0:2 * half:2].double(), x[..., 1:2 * half:2].double()
        out[..., 0:2 * half:2], out[..., 1:2 * half:2] = x1 * c - x2 * s, x1 * s + x2 * c
    else:
        x1, x2 = x[..., :half].double(), x[..., half:2 * half].double()
        out[..., :half], out[..., half:2 * half] = x1 * c - x2 * s, x1 * s + x2 * c
    return out


@pytest.mark.parametrize("layout", ["padded", "batch_idx", "paged1", "paged3", "paged16"])
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "neox"])
@pytest.mark.parametrize("per_row", [True, False], ids=["causal", "noncausal"])
def test_append_and_rotary(layout, interleaved, per_row, seed):
    dtype, device = torch.bfloat16, "cuda"
    batch, new, heads_kv, heads, dim, rotary_dim, capacity = 3, 4, 2, 8, 128, 64, 48
    seqlens = torch.tensor([0, 17, capacity - new], dtype=torch.int32)
    table = batch_idx = None
    if layout.startswith("paged"):
        page = int(layout[5:])
        blocks = (capacity + page - 1) // page
        k_cache = torch.randn(batch * blocks + 2, page, heads_kv, dim, dtype=dtype, device=device)
        table = torch.randperm(batch * blocks + 2, dtype=torch.int32)[: batch * blocks].view(batch, blocks)
    else:
        cache_batches = batch + 2 if layout == "batch_idx" else batch
        k_cache = torch.randn(cache_batches, capacity, heads_kv, dim, dtype=dtype, device=device)
        if layout == "batch_idx":
            batch_idx = torch.randperm(cache_batches, dtype=torch.int32)[:batch]
    v_cache = torch.randn_like(k_cache)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    k = torch.randn(batch, new, heads_kv, dim, dtype=dtype, device=device)
    v = torch.randn_like(k)
    q = torch.randn(batch, 2, heads, dim, dtype=dtype, device=device)
    angles = torch.rand(capacity + 5, rotary_dim // 2, dtype=torch.float64) * 6.3
    cos, sin = angles.cos().to(dtype).to(device), angles.sin().to(dtype).to(device)
    q_out = torch.full_like(q, float("nan"))
    used = torch.full((batch,), -7, dtype=torch.int32, device=device)
    _native.kvcache_append(k_cache, v_cache, seqlens.to(device), k=k, v=v,
                           cache_batch_idx=batch_idx.to(device) if batch_idx is not None else None,
                           block_table=table.to(device) if table is not None else None, rotary_cos=cos,
                           rotary_sin=sin, q=q, q_out=q_out, seqused_out=used, rotary_interleaved=interleaved,
                           q_positions_per_row=per_row)
    torch.cuda.synchronize()

    assert torch.equal(used.cpu(), seqlens + new)
    expected_k, expected_v = k_before.clone(), v_before.clone()
    for b in range(batch):
        rows = torch.arange(int(seqlens[b]), int(seqlens[b]) + new)
        rotated = rotate64(k[b].cpu(), cos.cpu(), sin.cpu(), rows, interleaved).to(dtype).to(device)
        if table is not None:
            page = k_cache.shape[1]
            pages, offsets = table[b, rows // page].long(), rows % page
            expected_k[pages, offsets], expected_v[pages, offsets] = rotated, v[b]
        else:
            cb = int(batch_idx[b]) if batch_idx is not None else b
            expected_k[cb, rows], expected_v[cb, rows] = rotated, v[b]
        q_pos = rows[:2] if per_row else torch.full((2,), int(seqlens[b]))
        expected_q = rotate64(q[b].cpu(), cos.cpu(), sin.cpu(), q_pos, interleaved)
        err = (q_out[b].cpu().double() - expected_q).abs().max().item()
        assert err <= 2 * torch.finfo(dtype).eps * max(1.0, expected_q.abs().max().item()), "q error %.3g" % err
    # k: rounded once from a float32 rotation, so within one bf16 ulp of the float64 result rounded.
    k_err = (k_cache.double() - expected_k.double()).abs().max().item()
    assert k_err <= 2 * torch.finfo(dtype).eps * 8, "k error %.3g" % k_err
    assert torch.equal(v_cache, expected_v), "v rows differ, or rows outside the append changed"


def test_rows_past_the_cache_are_not_written(seed):
    k_cache = torch.randn(2, 16, 1, 64, dtype=torch.float16, device="cuda")
    v_cache = torch.randn_like(k_cache)
    before = k_cache.clone()
    k = torch.randn(2, 3, 1, 64, dtype=torch.float16, device="cuda")
    seqlens = torch.tensor([15, -4], dtype=torch.int32, device="cuda")  # row 15 fits, 16 and 17 do not; -4 never
    _native.kvcache_append(k_cache, v_cache, seqlens, k=k, v=k)
    torch.cuda.synchronize()
    assert torch.equal(k_cache[0, 15], k[0, 0])
    assert torch.equal(k_cache[0, :15], before[0, :15]) and torch.equal(k_cache[1], before[1])
