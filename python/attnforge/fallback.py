"""Attention in torch with FlashAttention's exact semantics: the fallback when attnforge's kernel
cannot run a call, the recompute path of the backward pass, and dropout (which needs torch's RNG).

Every call is first brought to one padded form:
  q (B, Mq, H, D), k/v (B, Mk, Hk, D) and a visibility mask (B, 1, Mq, Mk)
where Mq/Mk are the padded lengths (varlen: max_seqlen_*, paged: max_blocks * page_size) and the
mask encodes sequence lengths, seqused_k, leftpad_k, bottom-right causal alignment and the
inclusive window. Index tensors are built with tensor ops only (no .item(), no host sync), so the
fallback can run under CUDA-graph capture and torch.compile.

Then torch's scaled_dot_product_attention runs it when it can express the call (no softcap; ALiBi
becomes an additive mask), else explicit ("eager") math in float32. Rows that see no key give 0
and lse = -inf, never NaN.
"""
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger("attnforge")

_logged = set()


def log_once(key, message, level=logging.WARNING):
    """Logs message the first time key is seen in this process (one line per distinct fallback)."""
    if key in _logged:
        return
    _logged.add(key)
    logger.log(level, message)


def _torch_version():
    parts = []
    for piece in torch.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


TORCH_VERSION = _torch_version()
# SDPA with a `scale` argument exists from torch 2.1.
HAS_SDPA = TORCH_VERSION >= (2, 1)


def sdpa_expresses(softcap):
    """Whether torch SDPA can compute the call exactly (plus the reason when it cannot)."""
    if not HAS_SDPA:
        return False, "torch %s has no scaled_dot_product_attention with a scale argument" % torch.__version__
    if softcap and softcap > 0:
        return False, "softcap has no SDPA equivalent"
    return True, ""


def _gather_rows(x, rows, valid):
    """x (N, ...) gathered at rows (B, M) -> (B, M, ...); rows outside [0, N) read row 0 (masked later)."""
    if x.shape[0] == 0:
        return x.new_zeros(tuple(rows.shape) + tuple(x.shape[1:]))
    safe = torch.where(valid, rows, torch.zeros_like(rows)).clamp(0, x.shape[0] - 1)
    return x[safe]


def _to_padded(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, leftpad_k,
               block_table, kv_batch_idx):
    """Returns (q_pad, k_pad, v_pad, q_len, k_start, k_len) with q_len/k_start/k_len int64 (B,)."""
    device = q.device
    varlen = cu_seqlens_q is not None
    if varlen:
        cu_q = cu_seqlens_q.long()
        batch = cu_q.shape[0] - 1
        q_len = cu_q[1:] - cu_q[:-1]
        positions = torch.arange(max_seqlen_q, device=device)
        rows = cu_q[:-1, None] + positions[None, :]
        q_pad = _gather_rows(q, rows, positions[None, :] < q_len[:, None])
    else:
        batch, seqlen_q = q.shape[0], q.shape[1]
        q_len = torch.full((batch,), seqlen_q, dtype=torch.long, device=device)
        q_pad = q

    if block_table is not None:
        # k/v (num_pages, page_size, Hk, D); sequence b's key row r is in page block_table[b, r // page_size].
        page_size = k.shape[1]
        rows = torch.arange(block_table.shape[1] * page_size, device=device)
        pages = block_table.long()[:, rows // page_size]  # (B, Mk)
        k_pad, v_pad = k[pages, rows % page_size], v[pages, rows % page_size]
        if varlen and cu_seqlens_k is not None:
            k_len = cu_seqlens_k.long()[1:] - cu_seqlens_k.long()[:-1]
        else:
            k_len = torch.full((batch,), k_pad.shape[1], dtype=torch.long, device=device)
    elif varlen:
        cu_k = cu_seqlens_k.long()
        k_len = cu_k[1:] - cu_k[:-1]
        positions = torch.arange(max_seqlen_k, device=device)
        rows = cu_k[:-1, None] + positions[None, :]
        # Left padding shifts the used keys to the right, so the gather covers it too.
        extent = k_len if seqused_k is None else seqused_k.long()
        valid = positions[None, :] < extent[:, None]
        k_pad, v_pad = _gather_rows(k, rows, valid), _gather_rows(v, rows, valid)
    else:
        if kv_batch_idx is not None:
            k, v = k[kv_batch_idx.long()], v[kv_batch_idx.long()]
        k_pad, v_pad = k, v
        k_len = torch.full((batch,), k.shape[1], dtype=torch.long, device=device)

    if seqused_k is not None:
        k_len = seqused_k.long()
    k_start = torch.zeros_like(k_len)
    if leftpad_k is not None:
        k_start = leftpad_k.long()
        k_len = k_len - k_start
    return q_pad, k_pad, v_pad, q_len, k_start, k_len


def _visibility(q_len, k_start, k_len, mq, mk, causal, window_left, window_right):
    """(B, 1, mq, mk) bool mask and (B, 1, mq, mk) |diagonal - j| distances for ALiBi."""
    device = q_len.device
    i = torch.arange(mq, device=device)[None, :, None]
    j = torch.arange(mk, device=device)[None, None, :] - k_start[:, None, None]
    diagonal = i + (k_len - q_len)[:, None, None]
    visible = (j >= 0) & (j < k_len[:, None, None]) & (i < q_len[:, None, None])
    if causal:
        window_right = 0
    if window_left >= 0:
        visible &= j >= diagonal - window_left
    if window_right >= 0:
        visible &= j <= diagonal + window_right
    return visible[:, None], (diagonal - j).abs()[:, None]


def _from_padded(out_pad, lse_pad, q, cu_seqlens_q):
    """Back to q's layout: varlen out (total_q, H, D), lse (H, total_q); padded unchanged."""
    if cu_seqlens_q is None:
        return out_pad, lse_pad
    cu_q = cu_seqlens_q.long()
    rows = torch.arange(q.shape[0], device=q.device)
    seq = torch.searchsorted(cu_q[1:].contiguous(), rows, right=True).clamp(max=max(cu_q.shape[0] - 2, 0))
    pos = rows - cu_q[seq]
    return out_pad[seq, pos], lse_pad[seq, :, pos].transpose(0, 1)


def attention(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0,
              seqused_k=None, leftpad_k=None, block_table=None, kv_batch_idx=None, alibi_slopes=None,
              softmax_scale=None, softcap=0.0, causal=False, window_size=(-1, -1), dropout_p=0.0,
              need_lse=True):
    """FlashAttention forward in torch; differentiable. Returns (out like q, lse fp32 or None, path).

    path is "sdpa" or "eager". Inputs are never modified.
    """
    heads, head_dim = q.shape[-2], q.shape[-1]
    scale = head_dim ** -0.5 if softmax_scale is None else softmax_scale
    q_pad, k_pad, v_pad, q_len, k_start, k_len = _to_padded(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, leftpad_k, block_table,
        kv_batch_idx)
    batch, mq, mk = q_pad.shape[0], q_pad.shape[1], k_pad.shape[1]
    visible, distance = _visibility(q_len, k_start, k_len, mq, mk, causal, window_size[0], window_size[1])
    groups = heads // k_pad.shape[2]
    if groups > 1:  # contiguous head groups: q head h reads kv head h // groups
        k_pad = k_pad.repeat_interleave(groups, dim=2)
        v_pad = v_pad.repeat_interleave(groups, dim=2)
    bias = None
    if alibi_slopes is not None:
        slopes = alibi_slopes.float().reshape(-1, heads) if alibi_slopes.dim() == 2 else alibi_slopes.float()[None]
        bias = -slopes[:, :, None, None] * distance  # (B or 1, H, mq, mk)
    any_visible = visible.any(dim=-1, keepdim=True)  # (B, 1, mq, 1)

    # The math runs in float32 on the CPU; on a GPU SDPA keeps the input dtype (its kernels accumulate in fp32).
    compute_dtype = q.dtype if (q.device.type != "cpu" or q.dtype == torch.float64) else torch.float32
    qt = q_pad.transpose(1, 2).to(compute_dtype)  # (B, H, mq, D)
    kt = k_pad.transpose(1, 2).to(compute_dtype)
    vt = v_pad.transpose(1, 2).to(compute_dtype)

    work = torch.float64 if q.dtype == torch.float64 else torch.float32  # eager math and lse
    use_sdpa, _ = sdpa_expresses(softcap)
    lse = None
    if use_sdpa:
        path = "sdpa"
        # Rows with no visible key would be NaN in SDPA: let them see everything, then zero them.
        mask = visible | ~any_visible
        if bias is not None:
            mask = torch.where(mask, bias.to(compute_dtype), torch.tensor(float("-inf"), dtype=compute_dtype,
                                                                             device=q.device))
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, dropout_p=dropout_p, scale=scale)
        if need_lse:
            scores = torch.matmul(qt.to(work), kt.to(work).transpose(-1, -2)) * scale
            if bias is not None:
                scores = scores + bias
            lse = torch.logsumexp(scores.masked_fill(~visible, float("-inf")), dim=-1)
    else:
        path = "eager"
        scores = torch.matmul(qt.to(work), kt.to(work).transpose(-1, -2)) * scale  # (B, H, mq, mk)
        if softcap and softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        if bias is not None:
            scores = scores + bias
        scores = scores.masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, mq); -inf where nothing is visible
        finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        probs = torch.exp(scores - finite_lse[..., None])
        if dropout_p > 0:
            probs = F.dropout(probs, p=dropout_p, training=True)
        out = torch.matmul(probs, vt.to(work))
    out = torch.where(any_visible, out, torch.zeros_like(out)).transpose(1, 2).to(q.dtype)  # (B, mq, H, D)
    if lse is not None:
        lse = lse.float()
    else:
        lse = torch.full((batch, heads, mq), float("nan"), device=q.device)  # never returned to a caller
    out, lse = _from_padded(out, lse, q, cu_seqlens_q)
    return out, (lse if need_lse else None), path
