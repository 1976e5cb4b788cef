"""torch entry points: attnforge's kernel when it takes the call, else the torch fallback, wrapped
as torch custom ops (torch >= 2.4: torch.library.custom_op with fake implementations, so
torch.compile traces through without a graph break) or autograd.Function (older torch).

Ops (one per flash_attn forward family; the packed entry points call them on views):
  attnforge::flash_attn_forward         padded batch        -> (out, softmax_lse)
  attnforge::flash_attn_varlen_forward  variable length     -> (out, softmax_lse)
  attnforge::flash_attn_with_kvcache    decode / prefill from a cache; appends k/v in place
  attnforge::flash_attn_backward        gradients (recomputed through torch until native backward exists)

The hot path allocates only the outputs (torch's caching allocator) and never synchronises with
the host, so calls can be captured in CUDA graphs; the kernel runs on torch's current stream.
"""
from typing import Optional, Tuple

import torch

from . import kvcache
from ._dispatch import native_forward
from .fallback import TORCH_VERSION, attention as torch_attention, log_once

Tensor = torch.Tensor

HAS_CUSTOM_OP = TORCH_VERSION >= (2, 4) and hasattr(torch.library, "custom_op")
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)


def _op_needed(q, k, v):
    """Whether a call must go through the custom op: torch.compile is tracing it, or autograd must
    record it. Otherwise (inference, CUDA-graph capture) the implementation runs directly and the
    dispatcher's ~25 us per call are saved."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return True
    return _is_compiling()

def forward_impl(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, seqused_k=None,
                 leftpad_k=None, block_table=None, kv_batch_idx=None, alibi_slopes=None, softmax_scale=None,
                 softcap=0.0, causal=False, window_left=-1, window_right=-1, need_lse=True):
    """(out like q, softmax_lse fp32 (B, H, Sq) or varlen (H, total_q), or None when not need_lse)
    through the best path."""
    varlen = cu_seqlens_q is not None
    heads = q.shape[-2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = None
    if need_lse:
        lse_shape = (heads, q.shape[0]) if varlen else (q.shape[0], heads, q.shape[1])
        lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    common = dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                  max_seqlen_k=max_seqlen_k, seqused_k=seqused_k, leftpad_k=leftpad_k, block_table=block_table,
                  kv_batch_idx=kv_batch_idx, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale,
                  softcap=softcap, causal=causal, window_size=(window_left, window_right))
    reason = native_forward(q, k, v, out, lse, **common)
    if reason is None:
        return out, lse
    out, lse, path = torch_attention(q, k, v, need_lse=need_lse, **common)
    log_once(("forward", path, reason), "attnforge kernel not used (%s); ran torch %s instead" % (reason, path))
    return out, lse


class _AutogradInsideOp:
    """Re-enables autograd inside a custom op's implementation, where the dispatcher has excluded it
    (the backward op recomputes the forward and differentiates it); restores the exclusions after."""

    _KEYS = ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor", "ADInplaceOrView")

    def __enter__(self):
        keys = [getattr(torch._C.DispatchKey, name) for name in self._KEYS]
        self._saved = [(key, torch._C._dispatch_tls_is_dispatch_key_excluded(key)) for key in keys]
        for key, _ in self._saved:
            torch._C._dispatch_tls_set_dispatch_key_excluded(key, False)
        return self

    def __exit__(self, *exc):
        for key, excluded in self._saved:
            torch._C._dispatch_tls_set_dispatch_key_excluded(key, excluded)
        return False


def backward_impl(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, block_table,
                  alibi_slopes, softmax_scale, softcap, causal, window_left, window_right):
    """(dq, dk, dv) by recomputing the forward in torch and differentiating it."""
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_(True) for x in (q, k, v)]
        out, _, path = torch_attention(*inputs, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                       max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, seqused_k=seqused_k,
                                       block_table=block_table, alibi_slopes=alibi_slopes,
                                       softmax_scale=softmax_scale, softcap=softcap, causal=causal,
                                       window_size=(window_left, window_right), need_lse=False)
        grads = torch.autograd.grad(out, inputs, dout)
    log_once(("backward", path), "attnforge has no backward kernel yet: gradients are recomputed through "
             "torch %s (exact, slower, O(n^2) memory for eager)" % path)
    return grads


def kvcache_impl(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
                 block_table, alibi_slopes, softmax_scale, causal, window_left, window_right, softcap,
                 rotary_interleaved):
    """flash_attn_with_kvcache on torch tensors: rotary, in-place append, then attention over the cache."""
    q, used = kvcache.prepare(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                              block_table, causal, window_left, window_right, rotary_interleaved)
    return forward_impl(q, k_cache, v_cache, seqused_k=used, leftpad_k=cache_leftpad,
                        block_table=block_table, kv_batch_idx=cache_batch_idx, alibi_slopes=alibi_slopes,
                        softmax_scale=softmax_scale, softcap=softcap, causal=causal, window_left=window_left,
                        window_right=window_right)


def _lse_like(q, varlen):
    heads = q.shape[-2]
    shape = (heads, q.shape[0]) if varlen else (q.shape[0], heads, q.shape[1])
    return q.new_empty(shape, dtype=torch.float32)


if HAS_CUSTOM_OP:

    @torch.library.custom_op("attnforge::flash_attn_forward", mutates_args=())
    def _forward_op(q: Tensor, k: Tensor, v: Tensor, alibi_slopes: Optional[Tensor], softmax_scale: Optional[float],
                    softcap: float, causal: bool, window_left: int, window_right: int) -> Tuple[Tensor, Tensor]:
        return forward_impl(q, k, v, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, softcap=softcap,
                            causal=causal, window_left=window_left, window_right=window_right)

    @_forward_op.register_fake
    def _(q, k, v, alibi_slopes, softmax_scale, softcap, causal, window_left, window_right):
        return torch.empty_like(q), _lse_like(q, False)

    @torch.library.custom_op("attnforge::flash_attn_varlen_forward", mutates_args=())
    def _varlen_forward_op(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Optional[Tensor],
                           max_seqlen_q: int, max_seqlen_k: int, seqused_k: Optional[Tensor],
                           block_table: Optional[Tensor], alibi_slopes: Optional[Tensor],
                           softmax_scale: Optional[float], softcap: float, causal: bool, window_left: int,
                           window_right: int) -> Tuple[Tensor, Tensor]:
        return forward_impl(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                            max_seqlen_k=max_seqlen_k, seqused_k=seqused_k, block_table=block_table,
                            alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, softcap=softcap, causal=causal,
                            window_left=window_left, window_right=window_right)

    @_varlen_forward_op.register_fake
    def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, block_table, alibi_slopes,
          softmax_scale, softcap, causal, window_left, window_right):
        return torch.empty_like(q), _lse_like(q, True)

    @torch.library.custom_op("attnforge::flash_attn_backward", mutates_args=())
    def _backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor],
                     cu_seqlens_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int,
                     seqused_k: Optional[Tensor], block_table: Optional[Tensor], alibi_slopes: Optional[Tensor],
                     softmax_scale: Optional[float], softcap: float, causal: bool, window_left: int,
                     window_right: int) -> Tuple[Tensor, Tensor, Tensor]:
        with _AutogradInsideOp():
            dq, dk, dv = backward_impl(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                       seqused_k, block_table, alibi_slopes, softmax_scale, softcap, causal,
                                       window_left, window_right)
        return dq.contiguous(), dk.contiguous(), dv.contiguous()

    @_backward_op.register_fake
    def _(dout, q, k, v, *rest):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def _setup_forward(ctx, inputs, output):
        q, k, v, alibi_slopes, softmax_scale, softcap, causal, window_left, window_right = inputs
        ctx.save_for_backward(q, k, v, alibi_slopes)
        ctx.params = (softmax_scale, softcap, causal, window_left, window_right)

    def _backward_forward(ctx, dout, dlse):
        q, k, v, alibi_slopes = ctx.saved_tensors
        dq, dk, dv = _backward_op(dout, q, k, v, None, None, 0, 0, None, None, alibi_slopes, *ctx.params)
        return dq, dk, dv, None, None, None, None, None, None

    _forward_op.register_autograd(_backward_forward, setup_context=_setup_forward)

    def _setup_varlen(ctx, inputs, output):
        (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, block_table, alibi_slopes,
         softmax_scale, softcap, causal, window_left, window_right) = inputs
        ctx.save_for_backward(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, alibi_slopes)
        ctx.params = (max_seqlen_q, max_seqlen_k, softmax_scale, softcap, causal, window_left, window_right)

    def _backward_varlen(ctx, dout, dlse):
        q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, alibi_slopes = ctx.saved_tensors
        max_q, max_k, scale, softcap, causal, left, right = ctx.params
        dq, dk, dv = _backward_op(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, seqused_k, block_table,
                                  alibi_slopes, scale, softcap, causal, left, right)
        return (dq, dk, dv) + (None,) * 12

    _varlen_forward_op.register_autograd(_backward_varlen, setup_context=_setup_varlen)

    @torch.library.custom_op("attnforge::flash_attn_with_kvcache", mutates_args=("k_cache", "v_cache"))
    def _kvcache_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor],
                    rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor], cache_seqlens: Tensor,
                    cache_batch_idx: Optional[Tensor], cache_leftpad: Optional[Tensor], block_table: Optional[Tensor],
                    alibi_slopes: Optional[Tensor], softmax_scale: Optional[float], causal: bool, window_left: int,
                    window_right: int, softcap: float, rotary_interleaved: bool) -> Tuple[Tensor, Tensor]:
        return kvcache_impl(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                            cache_leftpad, block_table, alibi_slopes, softmax_scale, causal, window_left,
                            window_right, softcap, rotary_interleaved)

    @_kvcache_op.register_fake
    def _(q, k_cache, v_cache, *rest):
        return torch.empty_like(q), _lse_like(q, False)

    # The same call without k/v to append reads the cache only: as a non-mutating op, torch.compile
    # neither copies the caches (functionalisation of a mutation) nor orders it against other writes.
    @torch.library.custom_op("attnforge::flash_attn_with_kvcache_read", mutates_args=())
    def _kvcache_read_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor,
                         cache_batch_idx: Optional[Tensor], cache_leftpad: Optional[Tensor],
                         block_table: Optional[Tensor], alibi_slopes: Optional[Tensor], softmax_scale: Optional[float],
                         causal: bool, window_left: int, window_right: int, softcap: float) -> Tuple[Tensor, Tensor]:
        return forward_impl(q, k_cache, v_cache, seqused_k=cache_seqlens, leftpad_k=cache_leftpad,
                            block_table=block_table, kv_batch_idx=cache_batch_idx, alibi_slopes=alibi_slopes,
                            softmax_scale=softmax_scale, softcap=softcap, causal=causal, window_left=window_left,
                            window_right=window_right)

    @_kvcache_read_op.register_fake
    def _(q, k_cache, v_cache, *rest):
        return q.new_empty(q.shape), _lse_like(q, False)

else:

    class _AttentionFunction(torch.autograd.Function):
        """Forward through forward_impl; backward recomputed through torch (no native backward yet)."""

        @staticmethod
        def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, block_table,
                    alibi_slopes, softmax_scale, softcap, causal, window_left, window_right):
            out, lse = forward_impl(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                    max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, seqused_k=seqused_k,
                                    block_table=block_table, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale,
                                    softcap=softcap, causal=causal, window_left=window_left,
                                    window_right=window_right)
            ctx.save_for_backward(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, alibi_slopes)
            ctx.params = (max_seqlen_q, max_seqlen_k, softmax_scale, softcap, causal, window_left, window_right)
            ctx.mark_non_differentiable(lse)
            return out, lse

        @staticmethod
        def backward(ctx, dout, dlse):
            q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, alibi_slopes = ctx.saved_tensors
            max_q, max_k, scale, softcap, causal, left, right = ctx.params
            dq, dk, dv = backward_impl(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, seqused_k,
                                       block_table, alibi_slopes, scale, softcap, causal, left, right)
            return (dq, dk, dv) + (None,) * 12


def attention(q, k, v, alibi_slopes, softmax_scale, softcap, causal, window_left, window_right, need_lse=True):
    """Padded batch: (out (B, Sq, H, D), softmax_lse (B, H, Sq); None without need_lse on the direct path)."""
    if not _op_needed(q, k, v):
        return forward_impl(q, k, v, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, softcap=softcap,
                            causal=causal, window_left=window_left, window_right=window_right, need_lse=need_lse)
    if HAS_CUSTOM_OP:
        return _forward_op(q, k, v, alibi_slopes, softmax_scale, softcap, causal, window_left, window_right)
    return _AttentionFunction.apply(q, k, v, None, None, 0, 0, None, None, alibi_slopes, softmax_scale, softcap,
                                    causal, window_left, window_right)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, block_table,
                     alibi_slopes, softmax_scale, softcap, causal, window_left, window_right, need_lse=True):
    """Variable-length batch: (out (total_q, H, D), softmax_lse (H, total_q); None without need_lse on the
    direct path)."""
    if not _op_needed(q, k, v):
        return forward_impl(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                            max_seqlen_k=max_seqlen_k, seqused_k=seqused_k, block_table=block_table,
                            alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, softcap=softcap, causal=causal,
                            window_left=window_left, window_right=window_right, need_lse=need_lse)
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, block_table, alibi_slopes,
            softmax_scale, softcap, causal, window_left, window_right)
    if HAS_CUSTOM_OP:
        return _varlen_forward_op(*args)
    return _AttentionFunction.apply(*args)


def kvcache_attention(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                      cache_leftpad, block_table, alibi_slopes, softmax_scale, causal, window_left, window_right,
                      softcap, rotary_interleaved):
    """flash_attn_with_kvcache: (out (B, Sq, H, D), softmax_lse (B, H, Sq)); no autograd (as FlashAttention)."""
    args = (q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
            block_table, alibi_slopes, softmax_scale, causal, window_left, window_right, softcap, rotary_interleaved)
    if HAS_CUSTOM_OP and _is_compiling():
        if k is None and v is None:
            return _kvcache_read_op(q, k_cache, v_cache, cache_seqlens.int(), cache_batch_idx, cache_leftpad,
                                    block_table, alibi_slopes, softmax_scale, causal, window_left, window_right,
                                    softcap)
        return _kvcache_op(*args)
    with torch.no_grad():
        return kvcache_impl(*args)
