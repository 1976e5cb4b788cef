"""flash_attn_with_kvcache's preparation steps, for torch tensors and numpy arrays alike:
rotary embedding of the new keys and the queries, and the in-place append of the new k/v into
the cache (contiguous or paged with any page size). Index math uses array ops only (no host sync).

Positions follow FlashAttention-2: new key t of sequence b sits at cache row cache_seqlens[b] + t
and is rotated for that position; queries are rotated at cache_seqlens[b] + t when the attention is
causal or local, else all at cache_seqlens[b].
"""
import sys


def _is_torch(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _arange(n, like):
    if _is_torch(like):
        import torch

        return torch.arange(n, device=like.device)
    import numpy as np

    return np.arange(n)


def _as_index(x):
    return x.long() if _is_torch(x) else x.astype("int64")


def _float32(x):
    return x.float() if _is_torch(x) else x.astype("float32")


def _concat(parts, axis):
    if _is_torch(parts[0]):
        import torch

        return torch.cat(parts, dim=axis)
    import numpy as np

    return np.concatenate(parts, axis=axis)


def _stack(parts, axis):
    if _is_torch(parts[0]):
        import torch

        return torch.stack(parts, dim=axis)
    import numpy as np

    return np.stack(parts, axis=axis)


def positions(cache_seqlens, count, per_row):
    """(B, count) int64 positions: cache_seqlens[b] + t when per_row, else cache_seqlens[b] for every t."""
    base = _as_index(cache_seqlens)[:, None]
    steps = _arange(count, base)[None, :]
    return base + steps if per_row else base + 0 * steps


def apply_rotary(x, cos, sin, pos, interleaved):
    """x (B, S, H, D) rotated on its first rotary_dim = 2 * cos.shape[1] dims at pos (B, S).

    cos/sin (seqlen_ro, rotary_dim / 2). interleaved: pairs (0, 1), (2, 3), ...; else GPT-NeoX
    halves (i, i + rotary_dim / 2). Computed in float32, rounded once to x's dtype.
    """
    half = cos.shape[1]
    rotary_dim = 2 * half
    c = _float32(cos)[pos][:, :, None, :]  # (B, S, 1, rotary_dim / 2)
    s = _float32(sin)[pos][:, :, None, :]
    xr = _float32(x[..., :rotary_dim])
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rotated = _stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).reshape(xr.shape)
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
        rotated = _concat([x1 * c - x2 * s, x1 * s + x2 * c], -1)
    rotated = rotated.to(x.dtype) if _is_torch(x) else rotated.astype(x.dtype)
    return _concat([rotated, x[..., rotary_dim:]], -1)


def append(cache, new, cache_seqlens, cache_batch_idx, block_table):
    """Writes new (B, Snew, Hk, D) into cache in place at rows cache_seqlens[b] + t.

    cache is (B_cache, S_cache, Hk, D) indexed through cache_batch_idx (or b), or paged
    (num_pages, page_size, Hk, D) through block_table (B, max_blocks).
    """
    rows = positions(cache_seqlens, new.shape[1], True)  # (B, Snew)
    if block_table is not None:
        page_size = cache.shape[1]
        table = _as_index(block_table)
        pages = table[_arange(table.shape[0], rows)[:, None], rows // page_size]
        cache[pages, rows % page_size] = new
    else:
        batch = _arange(new.shape[0], rows) if cache_batch_idx is None else _as_index(cache_batch_idx)
        cache[batch[:, None], rows] = new


def prepare(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, block_table, causal,
            window_left, window_right, rotary_interleaved):
    """flash_attn_with_kvcache's steps before the attention: rotate the new k (when rotary_cos is given),
    append k/v into the caches in place, rotate q. -> (q, int32 (B,) number of used cache rows)."""
    used = cache_seqlens
    if k is not None:
        if rotary_cos is not None:
            k = apply_rotary(k, rotary_cos, rotary_sin, positions(cache_seqlens, k.shape[1], True), rotary_interleaved)
        append(k_cache, k, cache_seqlens, cache_batch_idx, block_table)
        append(v_cache, v, cache_seqlens, cache_batch_idx, block_table)
        used = cache_seqlens + k.shape[1]
        if rotary_cos is not None:
            seqlen_cache = block_table.shape[1] * k_cache.shape[1] if block_table is not None else k_cache.shape[1]
            local = (0 <= window_left < seqlen_cache) or (0 <= window_right < seqlen_cache)
            q = apply_rotary(q, rotary_cos, rotary_sin, positions(cache_seqlens, q.shape[1], causal or local),
                             rotary_interleaved)
    return q, (used.int() if _is_torch(used) else used.astype("int32"))
