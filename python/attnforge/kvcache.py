"""flash_attn_with_kvcache's preparation steps, for torch tensors and numpy arrays alike:
rotary embedding of the new keys and the queries, and the in-place append of the new k/v into
the cache (contiguous or paged with any page size). On a GPU with fp16/bf16 tensors all of it is one
kernel of the library (af_kvcache_append); elsewhere torch or numpy array ops do it. Either way no host
sync.

Positions follow FlashAttention-2: new key t of sequence b sits at cache row cache_seqlens[b] + t
and is rotated for that position; queries are rotated at cache_seqlens[b] + t when the attention is
causal or local, else all at cache_seqlens[b].

Nothing is written before the whole call is known valid: validate() checks the append and the
attention over the cache (with the library's validator) before prepare() rotates or appends.
"""
import re
import sys

from . import _dispatch, _native
from ._native import AttentionOptions, AttnforgeError, Status


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


def _host_values(x):
    """x's values as a list when it lives in host memory (numpy, or a CPU tensor), else None (not read)."""
    if _is_torch(x):
        return x.tolist() if x.device.type == "cpu" else None
    return x.tolist()


# The attention over the cache is checked under af_attention_args' names; flash_attn_with_kvcache's
# caller knows those arguments by these.
_CACHE_NAMES = ((re.compile(r"\bseqused_k\b"), "cache_seqlens (+ the new keys)"),
                (re.compile(r"\bkv_batch_idx\b"), "cache_batch_idx"), (re.compile(r"\bleftpad_k\b"), "cache_leftpad"),
                (re.compile(r"\bk\b"), "k_cache"), (re.compile(r"\bv\b"), "v_cache"))


def _in_cache_terms(error: AttnforgeError) -> AttnforgeError:
    message = error.message
    for pattern, name in _CACHE_NAMES:
        message = pattern.sub(name, message)
    return AttnforgeError(error.status, message)


def _fail(status, message):
    raise AttnforgeError(status, message)


def capacity(k_cache, block_table) -> int:
    """Key rows one sequence's cache can hold: S_cache, or max_blocks * page_size when paged."""
    return block_table.shape[1] * k_cache.shape[1] if block_table is not None else k_cache.shape[1]


def validate(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, options: AttentionOptions,
             need_lse: bool = True):
    """Checks a flash_attn_with_kvcache call that appends k/v before anything is written: the new keys'
    shapes and dtype, cache_seqlens (int32 (B,), values >= 0 when in host memory), the rotary tables
    (FlashAttention's rule: at least as many rows as the cache holds), and the attention over the
    cache after the append, with the library's validator (every appended row must land in the cache
    and, when paged, in a valid page). Raises AttnforgeError naming the argument; returns the int32
    (B,) rows used after the append. On a GPU the library's check is skipped when a plan for the
    call's signature exists (made, and so validated, by an earlier call; see _dispatch.has_plan)."""
    batch = q.shape[0]
    if tuple(cache_seqlens.shape) != (batch,):
        _fail(Status.AF_ERR_SHAPE, "cache_seqlens must have B = %d entries, got shape %s" %
              (batch, tuple(cache_seqlens.shape)))
    if str(cache_seqlens.dtype) not in ("torch.int32", "int32"):
        _fail(Status.AF_ERR_DTYPE, "cache_seqlens must be an int or int32, got %s" % cache_seqlens.dtype)
    values = _host_values(cache_seqlens)
    if values is not None:
        for b, value in enumerate(values):
            if value < 0:
                _fail(Status.AF_ERR_SEQLENS, "cache_seqlens[%d] = %d is negative" % (b, value))
    heads_kv, head_dim = k_cache.shape[-2], k_cache.shape[-1]
    shape = tuple(k.shape)
    if len(shape) != 4 or shape[0] != batch or shape[2:] != (heads_kv, head_dim):
        _fail(Status.AF_ERR_SHAPE, "k must have shape (B, Snew, Hk, D) = (%d, Snew, %d, %d), got %s" %
              (batch, heads_kv, head_dim, shape))
    if tuple(v.shape) != shape:
        _fail(Status.AF_ERR_SHAPE, "v must have k's shape %s, got %s" % (shape, tuple(v.shape)))
    for name, x in (("k", k), ("v", v)):
        if x.dtype != k_cache.dtype:
            _fail(Status.AF_ERR_DTYPE, "%s is %s but k_cache is %s" % (name, x.dtype, k_cache.dtype))
    if (rotary_cos is None) != (rotary_sin is None):
        _fail(Status.AF_ERR_INVALID_ARGUMENT, "rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None:
        rows = capacity(k_cache, options.block_table)
        if len(rotary_cos.shape) != 2 or tuple(rotary_sin.shape) != tuple(rotary_cos.shape):
            _fail(Status.AF_ERR_SHAPE, "rotary_cos and rotary_sin must have one shape (seqlen_ro, rotary_dim / 2), "
                  "got %s and %s" % (tuple(rotary_cos.shape), tuple(rotary_sin.shape)))
        if not 0 < 2 * rotary_cos.shape[1] <= head_dim:
            _fail(Status.AF_ERR_SHAPE, "rotary_cos has rotary_dim / 2 = %d columns; rotary_dim must be in 2..%d "
                  "(head_dim)" % (rotary_cos.shape[1], head_dim))
        if rotary_cos.shape[0] < rows:
            _fail(Status.AF_ERR_SHAPE, "rotary_cos has %d rows (seqlen_ro); it needs at least the %d rows of the "
                  "cache" % (rotary_cos.shape[0], rows))
        if values is not None and values and max(values) + max(q.shape[1], k.shape[1]) > rotary_cos.shape[0]:
            _fail(Status.AF_ERR_SHAPE, "rotary_cos has %d rows (seqlen_ro), fewer than the positions "
                  "cache_seqlens + Snew or + Sq need (%d)" % (rotary_cos.shape[0], max(values) +
                                                              max(q.shape[1], k.shape[1])))
    used = cache_seqlens + k.shape[1]
    used = used.int() if _is_torch(used) else used.astype("int32")
    attention = options._replace(seqused_k=used)
    if not _dispatch.has_plan(q, k_cache, v_cache, need_lse, attention):
        try:
            _native.validate(q, k_cache, v_cache, _dispatch.outputs(q, False, False)[0], attention)
        except AttnforgeError as e:
            raise _in_cache_terms(e) from None
    return used


_library_appends = None  # af_kvcache_append exists and the CUDA backend is available (asked once)


def _gpu_append(q, k_cache, k, rotary_cos) -> bool:
    """Whether the append runs as attnforge's kernel: torch CUDA tensors of one 16-bit dtype (q, the caches, the
    new rows, cos/sin) and a library with af_kvcache_append; else torch ops do it."""
    if not (_is_torch(k_cache) and k_cache.is_cuda) or str(k_cache.dtype) not in ("torch.float16", "torch.bfloat16"):
        return False
    if q.dtype != k_cache.dtype or k.dtype != k_cache.dtype or not k.is_cuda:
        return False
    if rotary_cos is not None and rotary_cos.dtype != k_cache.dtype:
        return False
    global _library_appends
    if _library_appends is None:
        try:
            _library_appends = _native.has_kvcache_append() and _native.backend_available("cuda")[0]
        except ImportError:
            _library_appends = False
    return _library_appends


def prepare(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, options: AttentionOptions,
            rotary_interleaved: bool, used=None):
    """flash_attn_with_kvcache's steps before the attention, once validate() has accepted the call (and
    returned `used`): rotate the new k and q (when rotary_cos is given), then append k/v into the
    caches in place. -> (q, int32 (B,) number of used cache rows)."""
    if k is None:
        return q, cache_seqlens
    if _gpu_append(q, k_cache, k, rotary_cos):
        # One kernel on the current stream: rotary of k and q, the append, and the used rows.
        rows = capacity(k_cache, options.block_table)
        left, right = options.window_size
        local = (0 <= left < rows) or (0 <= right < rows)
        torch = sys.modules["torch"]
        used = torch.empty_like(cache_seqlens)
        q_out = torch.empty_like(q) if rotary_cos is not None else None
        _native.kvcache_append(k_cache, v_cache, cache_seqlens, k=k, v=v, cache_batch_idx=options.kv_batch_idx,
                               block_table=options.block_table, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                               q=q if rotary_cos is not None else None, q_out=q_out, seqused_out=used,
                               rotary_interleaved=rotary_interleaved, q_positions_per_row=options.causal or local)
        return (q_out if q_out is not None else q), used
    if rotary_cos is not None:
        k = apply_rotary(k, rotary_cos, rotary_sin, positions(cache_seqlens, k.shape[1], True), rotary_interleaved)
        rows = capacity(k_cache, options.block_table)
        left, right = options.window_size
        local = (0 <= left < rows) or (0 <= right < rows)
        q = apply_rotary(q, rotary_cos, rotary_sin, positions(cache_seqlens, q.shape[1], options.causal or local),
                         rotary_interleaved)
    append(k_cache, k, cache_seqlens, options.kv_batch_idx, options.block_table)
    append(v_cache, v, cache_seqlens, options.kv_batch_idx, options.block_table)
    if used is None:
        used = cache_seqlens + k.shape[1]
    return q, (used.int() if _is_torch(used) else used.astype("int32"))


def forward(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, options: AttentionOptions,
            rotary_interleaved: bool, need_lse: bool = True):
    """flash_attn_with_kvcache on torch tensors or numpy arrays: validate, rotate, append in place, then
    attention over the cache (options.seqused_k set to the used rows). -> (out (B, Sq, H, D),
    softmax_lse float32 (B, H, Sq) or None without need_lse)."""
    used = None
    if k is not None:
        used = validate(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, options, need_lse)
    q, used = prepare(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, options, rotary_interleaved,
                      used)
    try:
        return _dispatch.forward(q, k_cache, v_cache, options._replace(seqused_k=used), need_lse)
    except AttnforgeError as e:
        raise _in_cache_terms(e) from None
