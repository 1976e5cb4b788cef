"""attnforge.explain(): which path a call would take, and why, from the same selector and validator
that the call itself goes through (attnforge._dispatch.forward)."""
from typing import Dict, Optional, Tuple

from . import _dispatch, _native
from ._native import AttentionOptions, AttnforgeError, CALLER_ERRORS


def _torch_path(softcap: float) -> Tuple[Optional[str], str]:
    try:
        from .fallback import sdpa_expresses
    except ImportError as e:
        return None, "torch is not importable (%s)" % e
    ok, why = sdpa_expresses(softcap)
    return ("sdpa", "") if ok else ("eager", why)


def _error(e: AttnforgeError) -> Dict[str, str]:
    return {"path": "error", "reason": "the arguments are invalid: %s" % e}


def explain(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
            alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0,
            block_table=None, seqused_k=None, leftpad_k=None, kv_batch_idx=None) -> Dict[str, str]:
    """Which path flash_attn_func / flash_attn_varlen_func would run for these arguments.

    Takes their arguments (plus seqused_k, leftpad_k, kv_batch_idx as flash_attn_with_kvcache uses
    them). Returns a dict: path ("attnforge-cpu", "attnforge-cuda", "attnforge-cuda-padded" (head dim or strides off
    the 8-element grid: run on zero-padded copies, as FlashAttention-2 does), "sdpa", "eager" or "error");
    for attnforge's paths plan (af_attention_plan_describe: "cuda decode bf16 d128 sm_90a 16x64
    splits=8", "... splits=8 cluster" when the splits merge inside a thread-block cluster, "cpu"; on
    CUDA making the plan compiles or loads the kernel); and reason (why this
    path; for a fallback, why attnforge's kernel does not take the call; for "error", the
    AttnforgeError the call would raise). Runs no attention (allocates the output only): the
    library's af_attention_supported and af_attention_plan_create answer with the selector that
    dispatches the call.
    """
    options = AttentionOptions(
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=int(max_seqlen_q or 0),
        max_seqlen_k=int(max_seqlen_k or 0), seqused_k=seqused_k, leftpad_k=leftpad_k, block_table=block_table,
        kv_batch_idx=kv_batch_idx, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale,
        softcap=float(softcap or 0.0), causal=bool(causal), window_size=(int(window_size[0]), int(window_size[1])),
        dropout_p=float(dropout_p or 0.0))
    from .flash_attn_interface import _check_float

    try:
        for name, x in (("q", q), ("k", k), ("v", v)):
            _check_float(name, x)
        options = _dispatch.int32_indices(options)
    except AttnforgeError as e:
        return _error(e)
    if options.dropout_p == 0 and _dispatch._needs_padding(q, k, v, options):
        # Head dim or strides off the 8-element grid: the call runs on padded copies (as FlashAttention-2).
        padded = [x.new_zeros(tuple(x.shape[:-1]) + (x.shape[-1] + (-x.shape[-1]) % 8,)) for x in (q, k, v)]
        result = explain(*padded, softmax_scale=softmax_scale or q.shape[-1] ** -0.5, causal=causal,
                         window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q,
                         cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                         block_table=block_table, seqused_k=seqused_k, leftpad_k=leftpad_k,
                         kv_batch_idx=kv_batch_idx)
        if result["path"] == "attnforge-cuda":
            result["path"] = "attnforge-cuda-padded"
            result["reason"] += " after padding the head dim to a multiple of 8 (as FlashAttention-2 does)"
        return result
    out, _ = _dispatch.outputs(q, options.cu_seqlens_q is not None, False)
    if options.dropout_p > 0:
        reason = "dropout_p > 0 needs torch's RNG; attnforge's kernels have none"
    else:
        try:
            status, backend, message = _native.attention_supported(q, k, v, out, None, options)
            if status == _native.Status.AF_OK:
                plan = _native.Plan(q, k, v, out, None, options)
                return {"path": "attnforge-" + backend, "plan": plan.describe(),
                        "reason": "attnforge's selector takes the call on its %s backend" % backend}
            if status in CALLER_ERRORS:
                return _error(AttnforgeError(status, message))
            reason = "%s: %s" % (status.name, message)
        except AttnforgeError as e:
            if e.status in CALLER_ERRORS:
                return _error(e)
            reason = str(e)
        except _native._DeviceMemory as e:
            reason = str(e)
        except ImportError as e:
            reason = "libattnforge is not loadable (%s)" % e
    try:
        _native.validate(q, k, v, out, options)
    except AttnforgeError as e:
        return _error(e)
    except ImportError:
        pass
    path, why = _torch_path(options.softcap)
    if path is None:
        return {"path": "error", "reason": "attnforge's kernel does not take the call (%s) and %s" % (reason, why)}
    return {"path": path, "reason": "attnforge's kernel does not take the call: %s%s" %
            (reason, ("; torch SDPA cannot either: " + why) if why else "")}
