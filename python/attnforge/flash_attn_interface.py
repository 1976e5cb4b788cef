"""FlashAttention-2's public API (flash_attn 2.8 `flash_attn_interface`), same signatures and semantics.

Switching is one line: `from flash_attn import flash_attn_func` becomes
`from attnforge import flash_attn_func` (or `from attnforge.flash_attn_interface import ...`).

Inputs are torch tensors (CPU or CUDA; any float dtype attnforge or torch can run) or numpy arrays
(answered with numpy arrays). Layouts: q (B, Sq, H, D), k/v (B, Sk, Hk, D) with H % Hk == 0; varlen
q (total_q, H, D), k/v (total_k, Hk, D) with int32 cu_seqlens (B + 1). Any head dim up to 256 runs
as is (no padding to a multiple of 8). Differences from flash_attn, all in the user's favour: fp32
runs, page sizes of paged KV may be anything, and when attnforge's kernel cannot take a call (or
dropout_p > 0, which needs torch's RNG) the call runs through torch with the same semantics and
the reason is logged once to the "attnforge" logger.
"""
import sys

from . import _dispatch, kvcache

try:
    import torch

    from . import fallback, ops
except (ImportError, OSError):  # numpy-only installs (or a broken torch): numpy inputs still work
    torch = None
    fallback = ops = None

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]


def _is_numpy(x):
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def _contiguous_last_dim(x):
    """FlashAttention's maybe_contiguous: kernels need unit stride in the last dimension."""
    if x is None:
        return None
    if _is_numpy(x):
        import numpy as np

        return x if x.strides[-1] == x.itemsize else np.ascontiguousarray(x)
    return x if x.stride(-1) == 1 else x.contiguous()


def _numpy_forward(q, k, v, varlen, **kwargs):
    """The numpy path: attnforge's kernel writes fresh numpy outputs; torch (if present) is the fallback."""
    import numpy as np

    heads = q.shape[-2]
    out = np.empty(q.shape, dtype=q.dtype)
    lse = np.empty((heads, q.shape[0]) if varlen else (q.shape[0], heads, q.shape[1]), dtype=np.float32)
    reason = _dispatch.native_forward(q, k, v, out, lse, **kwargs)
    if reason is None:
        return out, lse
    if torch is None:
        raise RuntimeError("attnforge: the kernel cannot run this call (%s) and torch, the fallback, is not "
                           "installed" % reason)
    as_torch = {name: (torch.from_numpy(value) if _is_numpy(value) else value) for name, value in kwargs.items()}
    t_out, t_lse, path = fallback.attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                            **as_torch)
    fallback.log_once(("forward", path, reason), "attnforge kernel not used (%s); ran torch %s instead" %
                      (reason, path))
    return t_out.numpy(), t_lse.numpy()


def _dropout_forward(q, k, v, dropout_p, **kwargs):
    """dropout_p > 0 needs torch's RNG (and its saved state for backward): torch SDPA/eager with dropout."""
    out, lse, path = fallback.attention(q, k, v, dropout_p=dropout_p, **kwargs)
    fallback.log_once(("dropout", path), "attnforge: dropout_p > 0 runs through torch %s with dropout (attnforge's "
                      "kernels have no RNG)" % path)
    return out, lse


def _run(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, cu_seqlens_q=None,
         cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, block_table=None, need_lse=True):
    """(out, softmax_lse) for the padded (cu_seqlens_q is None) and varlen entry points; softmax_lse may
    be None when need_lse is False (inference calls that do not return it skip computing it)."""
    varlen = cu_seqlens_q is not None
    q, k, v = (_contiguous_last_dim(x) for x in (q, k, v))
    window_left, window_right = int(window_size[0]), int(window_size[1])
    softcap = float(softcap or 0.0)
    if _is_numpy(q):
        if dropout_p > 0:
            raise ValueError("attnforge: dropout_p > 0 needs torch tensors (dropout is training-only)")
        return _numpy_forward(q, k, v, varlen, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                              max_seqlen_q=int(max_seqlen_q or 0), max_seqlen_k=int(max_seqlen_k or 0),
                              block_table=block_table, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale,
                              softcap=softcap, causal=causal, window_size=(window_left, window_right))
    if ops is None:
        raise TypeError("attnforge: expected numpy arrays (torch is not importable), got %r" % type(q))
    if dropout_p > 0:
        return _dropout_forward(q, k, v, dropout_p, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                max_seqlen_q=int(max_seqlen_q or 0), max_seqlen_k=int(max_seqlen_k or 0),
                                block_table=block_table, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale,
                                softcap=softcap, causal=causal, window_size=(window_left, window_right))
    if varlen:
        return ops.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), None,
                                    block_table, alibi_slopes, softmax_scale, softcap, bool(causal), window_left,
                                    window_right, need_lse=need_lse)
    return ops.attention(q, k, v, alibi_slopes, softmax_scale, softcap, bool(causal), window_left, window_right,
                         need_lse=need_lse)


def _result(out, lse, return_attn_probs):
    # S_dmask is only materialised by flash_attn when dropout is on and is "for testing only"; None here.
    return (out, lse, None) if return_attn_probs else out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (B, Sq, H, D), k/v (B, Sk, Hk, D) -> out (B, Sq, H, D) [, softmax_lse (B, H, Sq), None]."""
    out, lse = _run(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                    need_lse=return_attn_probs)
    return _result(out, lse, return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """qkv (B, S, 3, H, D) -> out (B, S, H, D)."""
    out, lse = _run(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal, window_size,
                    softcap, alibi_slopes, need_lse=return_attn_probs)
    return _result(out, lse, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (B, Sq, H, D), kv (B, Sk, 2, Hk, D) -> out (B, Sq, H, D)."""
    out, lse = _run(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                    alibi_slopes, need_lse=return_attn_probs)
    return _result(out, lse, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q (total_q, H, D), k/v (total_k, Hk, D) or paged (num_blocks, page_size, Hk, D) with block_table
    (B, max_blocks); cu_seqlens_* int32 (B + 1) -> out (total_q, H, D) [, softmax_lse (H, total_q), None]."""
    out, lse = _run(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, cu_seqlens_q,
                    cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table, need_lse=return_attn_probs)
    return _result(out, lse, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv (total, 3, H, D) -> out (total, H, D)."""
    out, lse = _run(qkv[:, 0], qkv[:, 1], qkv[:, 2], dropout_p, softmax_scale, causal, window_size, softcap,
                    alibi_slopes, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, need_lse=return_attn_probs)
    return _result(out, lse, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (total_q, H, D), kv (total_k, 2, Hk, D) -> out (total_q, H, D)."""
    out, lse = _run(q, kv[:, 0], kv[:, 1], dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                    cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, need_lse=return_attn_probs)
    return _result(out, lse, return_attn_probs)


def _kvcache_numpy(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
                   block_table, alibi_slopes, softmax_scale, causal, window_left, window_right, softcap,
                   rotary_interleaved):
    q, used = kvcache.prepare(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                              block_table, causal, window_left, window_right, rotary_interleaved)
    return _numpy_forward(q, k_cache, v_cache, False, seqused_k=used, leftpad_k=cache_leftpad,
                          block_table=block_table, kv_batch_idx=cache_batch_idx, alibi_slopes=alibi_slopes,
                          softmax_scale=softmax_scale, softcap=softcap, causal=causal,
                          window_size=(window_left, window_right))


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """q (B, Sq, H, D); k_cache/v_cache (B_cache, S_cache, Hk, D) or paged (num_blocks, page_size, Hk, D) with
    block_table (B, max_blocks) and any page_size; k/v (B, Snew, Hk, D) are rotated (rotary_cos/sin
    (seqlen_ro, rotary_dim / 2)) and written into the cache in place at cache_seqlens (int or int32 (B,)).
    -> out (B, Sq, H, D) [, softmax_lse (B, H, Sq)]. num_splits is a scheduling hint and is ignored."""
    if (k is None) != (v is None):
        raise ValueError("attnforge: k and v must be given together")
    if block_table is not None and cache_batch_idx is not None:
        raise ValueError("Paged KVcache does not support cache_batch_idx")
    if k_cache.shape[-1] != q.shape[-1] or (_stride_last(k_cache) != 1 or _stride_last(v_cache) != 1):
        raise ValueError("attnforge: k_cache and v_cache need head_dim %d with a contiguous last dimension" %
                         q.shape[-1])
    q, k, v = (_contiguous_last_dim(x) for x in (q, k, v))
    batch = q.shape[0]
    if cache_seqlens is None:
        if k is not None:
            raise ValueError("attnforge: appending k/v needs cache_seqlens (where to write them)")
        full = block_table.shape[1] * k_cache.shape[1] if block_table is not None else k_cache.shape[1]
        cache_seqlens = full
    window_left, window_right = int(window_size[0]), int(window_size[1])
    softcap = float(softcap or 0.0)
    if _is_numpy(q):
        import numpy as np

        seqlens = np.full((batch,), cache_seqlens, dtype=np.int32) if isinstance(cache_seqlens, int) else \
            np.asarray(cache_seqlens, dtype=np.int32)
        out, lse = _kvcache_numpy(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seqlens, cache_batch_idx,
                                  cache_leftpad, block_table, alibi_slopes, softmax_scale, bool(causal), window_left,
                                  window_right, softcap, rotary_interleaved)
    else:
        if ops is None:
            raise TypeError("attnforge: expected numpy arrays (torch is not importable), got %r" % type(q))
        if isinstance(cache_seqlens, int):
            seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
        else:
            seqlens = cache_seqlens.to(torch.int32)
        out, lse = ops.kvcache_attention(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seqlens, cache_batch_idx,
                                         cache_leftpad, block_table, alibi_slopes, softmax_scale, bool(causal),
                                         window_left, window_right, softcap, bool(rotary_interleaved))
    return (out, lse) if return_softmax_lse else out


def _stride_last(x):
    return x.strides[-1] // x.itemsize if _is_numpy(x) else x.stride(-1)
