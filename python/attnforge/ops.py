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

from . import _dispatch, kvcache
from ._native import AttentionOptions
from .fallback import TORCH_VERSION, attention as torch_attention, log_once

Tensor = torch.Tensor

HAS_CUSTOM_OP = TORCH_VERSION >= (2, 4) and hasattr(torch.library, "custom_op")
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)


def op_needed(q, k, v) -> bool:
    """Whether a call must go through the custom op: torch.compile is tracing it, or autograd must
    record it. Otherwise (inference, CUDA-graph capture) the implementation runs directly and the
    dispatcher's ~25 us per call are saved."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return True
    return _is_compiling()


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


def backward_impl(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions):
    """(dq, dk, dv) by recomputing the forward in torch and differentiating it; options.deterministic
    recomputes through the eager path (no atomics: identical gradients on every call)."""
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_(True) for x in (q, k, v)]
        out, _, path = torch_attention(*inputs, options, need_lse=False)
        grads = torch.autograd.grad(out, inputs, dout, allow_unused=True)  # unused: inputs with no elements
    log_once(("backward", path), "attnforge has no backward kernel yet: gradients are recomputed through "
             "torch %s (exact, slower, O(n^2) memory for eager)" % path)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, (q, k, v)))


def _options(cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, seqused_k=None, block_table=None,
             alibi_slopes=None, softmax_scale=None, softcap=0.0, causal=False, window_left=-1, window_right=-1,
             deterministic=False):
    """AttentionOptions from a custom op's flat arguments (op schemas take no records)."""
    return AttentionOptions(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                            max_seqlen_k=max_seqlen_k, seqused_k=seqused_k, block_table=block_table,
                            alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, softcap=softcap, causal=causal,
                            window_size=(window_left, window_right), deterministic=deterministic)


def _varlen_op_args(o: AttentionOptions):
    return (o.cu_seqlens_q, o.cu_seqlens_k, o.max_seqlen_q, o.max_seqlen_k, o.seqused_k, o.block_table,
            o.alibi_slopes, o.softmax_scale, o.softcap, o.causal, o.window_size[0], o.window_size[1],
            bool(o.deterministic))


def _lse_like(q, varlen):
    return q.new_empty(_dispatch.lse_shape(q, varlen), dtype=torch.float32)


if HAS_CUSTOM_OP:

    @torch.library.custom_op("attnforge::flash_attn_forward", mutates_args=())
    def _forward_op(q: Tensor, k: Tensor, v: Tensor, alibi_slopes: Optional[Tensor], softmax_scale: Optional[float],
                    softcap: float, causal: bool, window_left: int, window_right: int,
                    deterministic: bool = False) -> Tuple[Tensor, Tensor]:
        # deterministic only changes the backward (the forward is deterministic); it rides along for it.
        return _dispatch.forward(q, k, v, _options(alibi_slopes=alibi_slopes, softmax_scale=softmax_scale,
                                                   softcap=softcap, causal=causal, window_left=window_left,
                                                   window_right=window_right, deterministic=deterministic))

    @_forward_op.register_fake
    def _(q, k, v, alibi_slopes, softmax_scale, softcap, causal, window_left, window_right, deterministic=False):
        return torch.empty_like(q), _lse_like(q, False)

    @torch.library.custom_op("attnforge::flash_attn_varlen_forward", mutates_args=())
    def _varlen_forward_op(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Optional[Tensor],
                           max_seqlen_q: int, max_seqlen_k: int, seqused_k: Optional[Tensor],
                           block_table: Optional[Tensor], alibi_slopes: Optional[Tensor],
                           softmax_scale: Optional[float], softcap: float, causal: bool, window_left: int,
                           window_right: int, deterministic: bool = False) -> Tuple[Tensor, Tensor]:
        return _dispatch.forward(q, k, v, _options(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k,
                                                   block_table, alibi_slopes, softmax_scale, softcap, causal,
                                                   window_left, window_right, deterministic))

    @_varlen_forward_op.register_fake
    def _(q, k, v, cu_seqlens_q, *rest):
        return torch.empty_like(q), _lse_like(q, True)

    @torch.library.custom_op("attnforge::flash_attn_backward", mutates_args=())
    def _backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor],
                     cu_seqlens_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int,
                     seqused_k: Optional[Tensor], block_table: Optional[Tensor], alibi_slopes: Optional[Tensor],
                     softmax_scale: Optional[float], softcap: float, causal: bool, window_left: int,
                     window_right: int, deterministic: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
        with _AutogradInsideOp():
            dq, dk, dv = backward_impl(dout, q, k, v, _options(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                               seqused_k, block_table, alibi_slopes, softmax_scale,
                                                               softcap, causal, window_left, window_right,
                                                               deterministic))
        return dq.contiguous(), dk.contiguous(), dv.contiguous()

    @_backward_op.register_fake
    def _(dout, q, k, v, *rest):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def _setup_forward(ctx, inputs, output):
        q, k, v, alibi_slopes, softmax_scale, softcap, causal, window_left, window_right, deterministic = inputs
        ctx.save_for_backward(q, k, v, alibi_slopes)
        ctx.params = (softmax_scale, softcap, causal, window_left, window_right, deterministic)

    def _backward_forward(ctx, dout, dlse):
        q, k, v, alibi_slopes = ctx.saved_tensors
        dq, dk, dv = _backward_op(dout, q, k, v, None, None, 0, 0, None, None, alibi_slopes, *ctx.params)
        return (dq, dk, dv) + (None,) * 7

    _forward_op.register_autograd(_backward_forward, setup_context=_setup_forward)

    def _setup_varlen(ctx, inputs, output):
        (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, block_table, alibi_slopes,
         softmax_scale, softcap, causal, window_left, window_right, deterministic) = inputs
        ctx.save_for_backward(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, alibi_slopes)
        ctx.params = (max_seqlen_q, max_seqlen_k, softmax_scale, softcap, causal, window_left, window_right,
                      deterministic)

    def _backward_varlen(ctx, dout, dlse):
        q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, alibi_slopes = ctx.saved_tensors
        max_q, max_k, scale, softcap, causal, left, right, deterministic = ctx.params
        dq, dk, dv = _backward_op(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, seqused_k, block_table,
                                  alibi_slopes, scale, softcap, causal, left, right, deterministic)
        return (dq, dk, dv) + (None,) * 13

    _varlen_forward_op.register_autograd(_backward_varlen, setup_context=_setup_varlen)

    @torch.library.custom_op("attnforge::flash_attn_with_kvcache", mutates_args=("k_cache", "v_cache"))
    def _kvcache_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor],
                    rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor], cache_seqlens: Tensor,
                    cache_batch_idx: Optional[Tensor], cache_leftpad: Optional[Tensor], block_table: Optional[Tensor],
                    alibi_slopes: Optional[Tensor], softmax_scale: Optional[float], causal: bool, window_left: int,
                    window_right: int, softcap: float, rotary_interleaved: bool,
                    num_splits: int) -> Tuple[Tensor, Tensor]:
        options = AttentionOptions(leftpad_k=cache_leftpad, block_table=block_table, kv_batch_idx=cache_batch_idx,
                                   alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, softcap=softcap,
                                   causal=causal, window_size=(window_left, window_right), num_splits=num_splits)
        return kvcache.forward(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, options,
                               rotary_interleaved)

    @_kvcache_op.register_fake
    def _(q, k_cache, v_cache, *rest):
        return torch.empty_like(q), _lse_like(q, False)

    # The same call without k/v to append reads the cache only: as a non-mutating op, torch.compile
    # neither copies the caches (functionalisation of a mutation) nor orders it against other writes.
    @torch.library.custom_op("attnforge::flash_attn_with_kvcache_read", mutates_args=())
    def _kvcache_read_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor,
                         cache_batch_idx: Optional[Tensor], cache_leftpad: Optional[Tensor],
                         block_table: Optional[Tensor], alibi_slopes: Optional[Tensor], softmax_scale: Optional[float],
                         causal: bool, window_left: int, window_right: int, softcap: float,
                         num_splits: int) -> Tuple[Tensor, Tensor]:
        options = AttentionOptions(seqused_k=cache_seqlens, leftpad_k=cache_leftpad, block_table=block_table,
                                   kv_batch_idx=cache_batch_idx, alibi_slopes=alibi_slopes,
                                   softmax_scale=softmax_scale, softcap=softcap, causal=causal,
                                   window_size=(window_left, window_right), num_splits=num_splits)
        return _dispatch.forward(q, k_cache, v_cache, options)

    @_kvcache_read_op.register_fake
    def _(q, k_cache, v_cache, *rest):
        return q.new_empty(q.shape), _lse_like(q, False)

else:

    class _AttentionFunction(torch.autograd.Function):
        """Forward through _dispatch.forward; backward recomputed through torch (no native backward yet)."""

        @staticmethod
        def forward(ctx, q, k, v, options):
            out, lse = _dispatch.forward(q, k, v, options)
            ctx.save_for_backward(q, k, v)
            ctx.options = options
            ctx.mark_non_differentiable(lse)
            return out, lse

        @staticmethod
        def backward(ctx, dout, dlse):
            q, k, v = ctx.saved_tensors
            dq, dk, dv = backward_impl(dout, q, k, v, ctx.options)
            return dq, dk, dv, None


def attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions, need_lse: bool = True):
    """The torch entry point of flash_attn_func / flash_attn_varlen_func (options.cu_seqlens_q selects
    varlen): (out like q, softmax_lse float32 (B, H, Sq) or varlen (H, total_q)); softmax_lse may be
    None without need_lse on the direct path. Through the custom op when autograd or torch.compile
    needs it; dropout_p > 0 runs torch's own differentiable math directly.
    options.deterministic makes the backward pass reproducible bit for bit (flash_attn's flag)."""
    if options.dropout_p > 0 or not op_needed(q, k, v):
        return _dispatch.forward(q, k, v, options, need_lse)
    if HAS_CUSTOM_OP:
        if options.cu_seqlens_q is None:
            return _forward_op(q, k, v, options.alibi_slopes, options.softmax_scale, options.softcap, options.causal,
                               options.window_size[0], options.window_size[1], bool(options.deterministic))
        return _varlen_forward_op(q, k, v, *_varlen_op_args(options))
    return _AttentionFunction.apply(q, k, v, options)


def kvcache_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor],
                      rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor], cache_seqlens: Tensor,
                      options: AttentionOptions, rotary_interleaved: bool, need_lse: bool = True):
    """flash_attn_with_kvcache on torch tensors: (out (B, Sq, H, D), softmax_lse (B, H, Sq)); no autograd
    (as FlashAttention). Through the custom op only while torch.compile traces (it mutates the caches)."""
    if HAS_CUSTOM_OP and _is_compiling():
        o = options
        if k is None and v is None:
            return _kvcache_read_op(q, k_cache, v_cache, cache_seqlens.int(), o.kv_batch_idx, o.leftpad_k,
                                    o.block_table, o.alibi_slopes, o.softmax_scale, o.causal, o.window_size[0],
                                    o.window_size[1], o.softcap, o.num_splits)
        return _kvcache_op(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, o.kv_batch_idx,
                           o.leftpad_k, o.block_table, o.alibi_slopes, o.softmax_scale, o.causal, o.window_size[0],
                           o.window_size[1], o.softcap, rotary_interleaved, o.num_splits)
    with torch.no_grad():
        return kvcache.forward(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, options,
                               rotary_interleaved, need_lse)
