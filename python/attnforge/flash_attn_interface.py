"""FlashAttention-2's public API (flash_attn 2.8 `flash_attn_interface`), same signatures and semantics.

Switching is one line: `from flash_attn import flash_attn_func` becomes
`from attnforge import flash_attn_func` (or `from attnforge.flash_attn_interface import ...`).

Inputs are torch tensors (CPU or CUDA; float16, bfloat16, float32 or float64) or numpy arrays
(answered with numpy arrays). Layouts: q (B, Sq, H, D), k/v (B, Sk, Hk, D) with H % Hk == 0; varlen
q (total_q, H, D), k/v (total_k, Hk, D) with int32 cu_seqlens (B + 1). Any head dim up to 256 runs
as is (no padding to a multiple of 8). Differences from flash_attn, all in the user's favour: fp32
and fp64 run, index arrays may be int64 (torch.cumsum's), page sizes of paged KV may be anything,
and when attnforge's kernel cannot take a call (or dropout_p > 0, which needs torch's RNG) the call
runs through torch with the same semantics and the reason is logged once to the "attnforge"
logger. Invalid arguments raise AttnforgeError (a
RuntimeError, as flash_attn's checks) naming the argument, whichever path would run the call.

Each entry point builds one AttentionOptions record and passes it unchanged to the path that runs
the call (attnforge._dispatch.forward: kernel, else validated torch fallback).
"""
import sys

from . import _dispatch, kvcache
from ._native import AttentionOptions, AttnforgeError, Status

try:
    import torch

    from . import ops
except (ImportError, OSError):  # numpy-only installs (or a broken torch): numpy inputs still work
    torch = None
    ops = None

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]

# q, k and v dtypes that some path runs: the kernel's (float16, bfloat16, float32) and float64
# (torch). FlashAttention raises for any other; so does attnforge, before either path runs.
_FLOAT_DTYPES = frozenset({"torch.float16", "torch.bfloat16", "torch.float32", "torch.float64",
                           "float16", "bfloat16", "float32", "float64"})


def _is_numpy(x) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


_ACCEPTED_DTYPES = set()  # dtype objects (torch or numpy) that passed _check_float: one hash lookup per call


def _check_float(name: str, x) -> None:
    dtype = x.dtype
    if dtype in _ACCEPTED_DTYPES:
        return
    # numpy names a dtype in non-native byte order by its type string (">f4"); .name is "float32" and
    # the descriptor refuses the byte order with its own message.
    if str(dtype) not in _FLOAT_DTYPES and getattr(dtype, "name", None) not in _FLOAT_DTYPES:
        raise AttnforgeError(Status.AF_ERR_DTYPE, "%s must be float16, bfloat16, float32 or float64, got %s" %
                             (name, dtype))
    _ACCEPTED_DTYPES.add(dtype)


def _contiguous_last_dim(x):
    """FlashAttention's maybe_contiguous: kernels need unit stride in the last dimension."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x if x.stride(-1) == 1 else x.contiguous()
    import numpy as np

    return x if x.strides[-1] == x.itemsize or x.size == 0 else np.ascontiguousarray(x)


def _options(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
             **varlen) -> AttentionOptions:
    return AttentionOptions(dropout_p=float(dropout_p or 0.0), softmax_scale=softmax_scale, causal=bool(causal),
                            window_size=(int(window_size[0]), int(window_size[1])), softcap=float(softcap or 0.0),
                            alibi_slopes=alibi_slopes, deterministic=bool(deterministic), **varlen)


def _forward(q, k, v, options: AttentionOptions, return_attn_probs: bool):
    """(out, softmax_lse, S_dmask) for every flash_attn_*func entry point. softmax_lse is None unless
    return_attn_probs (inference calls that do not return it skip computing it); S_dmask is None
    unless return_attn_probs and dropout_p > 0 (as flash_attn, which materialises it only then)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_float(name, x)
    q, k, v = _contiguous_last_dim(q), _contiguous_last_dim(k), _contiguous_last_dim(v)
    if return_attn_probs and options.dropout_p > 0:
        return _dispatch.forward(q, k, v, options, True, return_s_dmask=True)
    if _is_numpy(q):
        return _dispatch.forward(q, k, v, options, return_attn_probs) + (None,)
    if ops is None:
        raise TypeError("attnforge: expected numpy arrays (torch is not importable), got %r" % type(q))
    return ops.attention(q, k, v, options, return_attn_probs) + (None,)


def _result(out, lse, s_dmask, return_attn_probs):
    return (out, lse, s_dmask) if return_attn_probs else out


def _get_block_size_n(device, head_dim, is_dropout, is_causal):
    """Key-block width (int) of the S_dmask encoding that return_attn_probs=True returns with dropout:
    each entry is exp(score - m) with m the row's maximum over its key block and all later ones,
    negated where dropped. flash_attn's private helper of the same name (its tests decode S_dmask
    with it); attnforge's width is one constant, whatever the arguments."""
    return _dispatch.S_DMASK_BLOCK_N


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """FlashAttention-2's flash_attn_func: softmax(q k^T * softmax_scale [softcap, ALiBi, mask]) v.

    q (B, Sq, H, D), k/v (B, Sk, Hk, D) with H % Hk == 0 (GQA: query head h reads key head
    h // (H / Hk)); float16, bfloat16, float32 (kernel) or float64 (torch). softmax_scale None is
    1/sqrt(D); causal aligns the mask bottom-right when Sq != Sk; window_size (left, right) in keys,
    inclusive, -1 unbounded; softcap > 0 caps scores as softcap * tanh(s / softcap); alibi_slopes
    float32 (H) or (B, H) adds -slope * |i + Sk - Sq - j| (in float32). dropout_p > 0 runs through
    torch. deterministic=True makes the backward pass reproducible bit for bit (the forward always
    is). Returns out (B, Sq, H, D), or with return_attn_probs (out, softmax_lse float32 (B, H, Sq)
    natural log, S_dmask): S_dmask is None unless dropout_p > 0, then (B, H, round128(Sq),
    round128(Sk)) in q's dtype, dropped entries negative (encoding: _get_block_size_n), "for testing
    only" as in flash_attn. Raises AttnforgeError naming the argument for invalid input.
    Semantics: flash_attn/flash_attn_interface.py (2.8), see FLASH_ATTN_API.md.
    """
    key = None
    if ops is not None and not (dropout_p or return_attn_probs) and alibi_slopes is None:
        # Inference calls that repeat a signature (every layer of every decode step) skip the options record,
        # the checks and plan_key: a plan filed under their own arguments exists only if one such call passed.
        key = _dispatch.func_key(q, k, v, softmax_scale, causal, window_size, softcap)
        if key is not None and not ops.op_needed(q, k, v):
            out = _dispatch.planned_forward(key, q, k, v)
            if out is not None:
                return out
        else:
            key = None
    options = _options(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic)
    out, lse, s_dmask = _forward(q, k, v, options, return_attn_probs)
    if key is not None:
        _dispatch.remember(key, q, k, v, options)
    return _result(out, lse, s_dmask, return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn_func on qkv (B, S, 3, H, D) (views, not copies) -> out (B, S, H, D)."""
    options = _options(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic)
    out, lse, s_dmask = _forward(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], options, return_attn_probs)
    return _result(out, lse, s_dmask, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn_func on q (B, Sq, H, D) and kv (B, Sk, 2, Hk, D) -> out (B, Sq, H, D)."""
    options = _options(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic)
    out, lse, s_dmask = _forward(q, kv[:, :, 0], kv[:, :, 1], options, return_attn_probs)
    return _result(out, lse, s_dmask, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """FlashAttention-2's flash_attn_varlen_func: sequences of different lengths packed along rows.

    q (total_q, H, D), k/v (total_k, Hk, D), or paged (num_blocks, page_size, Hk, D) with block_table
    int32 (B, max_blocks) (any page_size; flash_attn needs multiples of 256). cu_seqlens_q/k (B + 1)
    int32 offsets (int64 accepted), starting at 0, non-decreasing, within the rows of q/k;
    max_seqlen_q/k >= every length. Other arguments as flash_attn_func. Returns out (total_q, H, D),
    or with return_attn_probs (out, softmax_lse float32 (H, total_q), S_dmask (B, H,
    round128(max_seqlen_q), round128(max_seqlen_k)) with dropout, else None). Offsets in host memory
    are checked (AttnforgeError AF_ERR_SEQLENS naming the array); in GPU memory they are not read.
    """
    options = _options(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                       cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=int(max_seqlen_q or 0),
                       max_seqlen_k=int(max_seqlen_k or 0), block_table=block_table)
    out, lse, s_dmask = _forward(q, k, v, options, return_attn_probs)
    return _result(out, lse, s_dmask, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """flash_attn_varlen_func on qkv (total, 3, H, D) with one cu_seqlens (B + 1) -> out (total, H, D)."""
    options = _options(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                       cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=int(max_seqlen or 0),
                       max_seqlen_k=int(max_seqlen or 0))
    out, lse, s_dmask = _forward(qkv[:, 0], qkv[:, 1], qkv[:, 2], options, return_attn_probs)
    return _result(out, lse, s_dmask, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn_varlen_func on q (total_q, H, D) and kv (total_k, 2, Hk, D) -> out (total_q, H, D)."""
    options = _options(dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                       cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=int(max_seqlen_q or 0),
                       max_seqlen_k=int(max_seqlen_k or 0))
    out, lse, s_dmask = _forward(q, kv[:, 0], kv[:, 1], options, return_attn_probs)
    return _result(out, lse, s_dmask, return_attn_probs)


def _seqlens_array(cache_seqlens, q, k_cache, block_table):
    """cache_seqlens as int32 (B,) like q (an int, None = the whole cache, or an integer array)."""
    batch = q.shape[0]
    if cache_seqlens is None:
        cache_seqlens = kvcache.capacity(k_cache, block_table)
    if isinstance(cache_seqlens, int):
        if _is_numpy(q):
            import numpy as np

            return np.full((batch,), cache_seqlens, dtype=np.int32)
        return torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    if _is_numpy(q) and not _is_numpy(cache_seqlens):
        import numpy as np

        cache_seqlens = np.asarray(cache_seqlens)
    if str(cache_seqlens.dtype) in ("torch.int64", "int64"):
        return _dispatch._int64_as_int32("cache_seqlens", cache_seqlens)
    return cache_seqlens


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """FlashAttention-2's flash_attn_with_kvcache: decode / chunked prefill from a KV cache.

    q (B, Sq, H, D); k_cache/v_cache (B_cache, S_cache, Hk, D), or paged (num_blocks, page_size, Hk, D)
    with block_table int32 (B, max_blocks) (any page_size). k/v (B, Snew, Hk, D), when given, are
    rotated (rotary_cos/sin (seqlen_ro >= the cache's rows, rotary_dim / 2); interleaved pairs or
    GPT-NeoX halves) and written into the caches in place at rows cache_seqlens[b] + t. cache_seqlens:
    int or int32 (B,) (int64 accepted; None = the whole cache). cache_batch_idx int32 (B,) picks cache
    rows (not with block_table); cache_leftpad int32 (B,) first used cache row. Attention then runs
    over each sequence's used rows with flash_attn_func's other arguments. num_splits: how many parts
    the CUDA kernel splits each sequence's keys into (0 its heuristic, 1 none, N forced; the CPU
    kernel and the fallback ignore it). Returns out (B, Sq, H, D) [, softmax_lse float32 (B, H, Sq)].
    Nothing is written unless the whole call is valid; AttnforgeError names the argument otherwise.
    """
    if (k is None) != (v is None):
        raise AttnforgeError(Status.AF_ERR_INVALID_ARGUMENT, "k and v must be given together")
    if block_table is not None and cache_batch_idx is not None:
        raise AttnforgeError(Status.AF_ERR_INVALID_ARGUMENT, "Paged KVcache does not support cache_batch_idx")
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_float(name, x)
    q = _contiguous_last_dim(q)
    if k is not None:
        k, v = _contiguous_last_dim(k), _contiguous_last_dim(v)
    seqlens = _seqlens_array(cache_seqlens, q, k_cache, block_table)
    options = AttentionOptions(leftpad_k=cache_leftpad, block_table=block_table, kv_batch_idx=cache_batch_idx,
                               alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, softcap=float(softcap or 0.0),
                               causal=bool(causal), window_size=(int(window_size[0]), int(window_size[1])),
                               num_splits=int(num_splits or 0))
    options = _dispatch.int32_indices(options)
    if _is_numpy(q):
        out, lse = kvcache.forward(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seqlens, options,
                                   bool(rotary_interleaved), return_softmax_lse)
    else:
        if ops is None:
            raise TypeError("attnforge: expected numpy arrays (torch is not importable), got %r" % type(q))
        out, lse = ops.kvcache_attention(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seqlens, options,
                                         bool(rotary_interleaved), return_softmax_lse)
    return (out, lse) if return_softmax_lse else out
