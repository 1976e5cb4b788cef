"""attnforge.explain(): which path a call would take, and why, from the same selector that dispatches."""
import sys

from . import _dispatch


def _torch_path(softcap):
    try:
        from .fallback import sdpa_expresses
    except ImportError as e:
        return None, "torch is not importable (%s)" % e
    ok, why = sdpa_expresses(softcap)
    return ("sdpa", "") if ok else ("eager", why)


def explain(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
            alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0,
            block_table=None, seqused_k=None, leftpad_k=None, kv_batch_idx=None):
    """Which path flash_attn_func / flash_attn_varlen_func would run for these arguments.

    Takes their arguments (plus seqused_k, leftpad_k, kv_batch_idx as flash_attn_with_kvcache uses
    them). Returns a dict: path ("attnforge-cpu", "attnforge-cuda", "sdpa", "eager" or "error"),
    reason (why this path; for a fallback, why attnforge's kernel does not take the call).
    Runs nothing: the kernel's selector is asked through af_attention_supported.
    """
    softcap = float(softcap or 0.0)
    if dropout_p > 0:
        path, why = _torch_path(softcap)
        reason = "dropout_p > 0 needs torch's RNG; attnforge's kernels have none"
        return {"path": path or "error", "reason": reason + ("; " + why if why else "")}
    np = sys.modules.get("numpy")
    heads = q.shape[-2]
    varlen = cu_seqlens_q is not None
    lse_shape = (heads, q.shape[0]) if varlen else (q.shape[0], heads, q.shape[1])
    if np is not None and isinstance(q, np.ndarray):
        out, lse = np.empty(q.shape, dtype=q.dtype), np.empty(lse_shape, dtype=np.float32)
    else:
        import torch

        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    ok, backend, reason = _dispatch.native_supported(
        q, k, v, out, lse, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=int(max_seqlen_q or 0),
        max_seqlen_k=int(max_seqlen_k or 0), seqused_k=seqused_k, leftpad_k=leftpad_k, block_table=block_table,
        kv_batch_idx=kv_batch_idx, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, softcap=softcap,
        causal=causal, window_size=tuple(int(w) for w in window_size))
    if ok:
        return {"path": "attnforge-" + backend, "reason": "attnforge's selector takes the call on its %s backend" %
                backend}
    if reason.split(":")[0] in ("AF_ERR_INVALID_ARGUMENT", "AF_ERR_NULL_POINTER", "AF_ERR_SHAPE", "AF_ERR_STRIDE",
                                "AF_ERR_SEQLENS", "AF_ERR_OVERFLOW", "AF_ERR_STRUCT_SIZE"):
        return {"path": "error", "reason": "the arguments are invalid: " + reason}
    path, why = _torch_path(softcap)
    if path is None:
        return {"path": "error", "reason": "attnforge's kernel does not take the call (%s) and %s" % (reason, why)}
    return {"path": path, "reason": "attnforge's kernel does not take the call: %s%s" %
            (reason, ("; torch SDPA cannot either: " + why) if why else "")}
