"""Attention in torch with FlashAttention's exact semantics: the fallback when attnforge's kernel
cannot run a call, the recompute path of the backward pass, and dropout (which needs torch's RNG).

Every call is first brought to one padded form:
  q (B, Mq, H, D), k/v (B, Mk, Hk, D) and a visibility mask (B, 1, Mq, Mk)
where Mq/Mk are the padded lengths (varlen: max_seqlen_*, paged: max_blocks * page_size) and the
mask encodes sequence lengths, seqused_k, leftpad_k, bottom-right causal alignment and the
inclusive window. Index tensors are built with tensor ops only (no .item(), no host sync), so the
fallback can run under CUDA-graph capture and torch.compile.

Then torch's scaled_dot_product_attention runs it when it can express the call (no softcap; ALiBi
becomes a float32 additive mask, shifted per row), else explicit ("eager") math in float32; the eager
path also serves deterministic=True and S_dmask. Rows that see no key give 0, lse = -inf and zero
gradients, never NaN.
"""
import logging
from typing import Tuple

import torch
import torch.nn.functional as F

from ._dispatch import S_DMASK_BLOCK_N, lse_shape
from ._native import DEFAULT_OPTIONS, AttentionOptions

logger = logging.getLogger("attnforge")

_logged = set()


def log_once(key, message: str, level: int = logging.WARNING) -> None:
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


def sdpa_expresses(softcap: float) -> Tuple[bool, str]:
    """(True, "") when torch SDPA computes the call exactly, else (False, why): SDPA has no softcap
    and no `scale` argument before torch 2.1."""
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


def _to_padded(q, k, v, o: AttentionOptions):
    """Returns (q_pad, k_pad, v_pad, q_len, k_start, k_len) with q_len/k_start/k_len int64 (B,).

    Host index arrays were checked by the library's validator before this runs; device ones are not
    read (as by the kernel), so gathers stay in bounds by clamping and masked rows are never used.
    """
    device = q.device
    varlen = o.cu_seqlens_q is not None
    if varlen:
        cu_q = o.cu_seqlens_q.long()
        batch = cu_q.shape[0] - 1
        q_len = cu_q[1:] - cu_q[:-1]
        positions = torch.arange(o.max_seqlen_q, device=device)
        rows = cu_q[:-1, None] + positions[None, :]
        q_pad = _gather_rows(q, rows, positions[None, :] < q_len[:, None])
    else:
        batch, seqlen_q = q.shape[0], q.shape[1]
        q_len = torch.full((batch,), seqlen_q, dtype=torch.long, device=device)
        q_pad = q

    if o.block_table is not None:
        # k/v (num_pages, page_size, Hk, D); sequence b's key row r is in page block_table[b, r // page_size].
        page_size = k.shape[1]
        rows = torch.arange(o.block_table.shape[1] * page_size, device=device)
        pages = o.block_table.long()[:, rows // page_size].clamp(0, max(k.shape[0] - 1, 0))  # (B, Mk)
        k_pad, v_pad = k[pages, rows % page_size], v[pages, rows % page_size]
        if varlen and o.cu_seqlens_k is not None:
            k_len = o.cu_seqlens_k.long()[1:] - o.cu_seqlens_k.long()[:-1]
        else:
            k_len = torch.full((batch,), k_pad.shape[1], dtype=torch.long, device=device)
    elif varlen:
        cu_k = o.cu_seqlens_k.long()
        k_len = cu_k[1:] - cu_k[:-1]
        positions = torch.arange(o.max_seqlen_k, device=device)
        rows = cu_k[:-1, None] + positions[None, :]
        # Left padding shifts the used keys to the right, so the gather covers it too.
        extent = k_len if o.seqused_k is None else o.seqused_k.long()
        valid = positions[None, :] < extent[:, None]
        k_pad, v_pad = _gather_rows(k, rows, valid), _gather_rows(v, rows, valid)
    else:
        if o.kv_batch_idx is not None:
            index = o.kv_batch_idx.long().clamp(0, max(k.shape[0] - 1, 0))
            k, v = k[index], v[index]
        k_pad, v_pad = k, v
        k_len = torch.full((batch,), k.shape[1], dtype=torch.long, device=device)

    if o.seqused_k is not None:
        k_len = o.seqused_k.long()
    k_start = torch.zeros_like(k_len)
    if o.leftpad_k is not None:
        k_start = o.leftpad_k.long()
        k_len = k_len - k_start
    return q_pad, k_pad, v_pad, q_len, k_start, k_len


def visibility_mask(q_len, k_start, k_len, mq: int, mk: int, causal: bool, window_left: int, window_right: int):
    """Which keys each query row sees, with FlashAttention-2's semantics.

    q_len, k_start, k_len: int64 (B,) query rows, first used key row and number of used keys per
    sequence; mq, mk: padded query and key lengths. Query row i of sequence b sees key row j when
    k_start <= j < k_start + k_len, i < q_len, and, relative to the bottom-right-aligned diagonal
    d = i + k_len - q_len (flash_attn's causal alignment when Sq != Sk), d - window_left <= j - k_start
    <= d + window_right (inclusive; -1 unbounded; causal sets window_right = 0).
    Returns (visible bool (B, 1, mq, mk), |d - (j - k_start)| int64 (B, 1, mq, mk), the ALiBi distance).
    """
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


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def _s_dmask_shape(q, k, o: AttentionOptions):
    """(B, H, round128(Sq), round128(Sk)): FlashAttention's S_dmask sides, from the padded lengths."""
    if o.cu_seqlens_q is not None:
        batch, mq = o.cu_seqlens_q.shape[0] - 1, o.max_seqlen_q
    else:
        batch, mq = q.shape[0], q.shape[1]
    if o.block_table is not None:
        mk = o.block_table.shape[1] * k.shape[1]
    else:
        mk = o.max_seqlen_k if o.cu_seqlens_k is not None else k.shape[1]
    return batch, q.shape[-2], _round_up(mq, 128), _round_up(mk, 128)


def _s_dmask(scores, keep, dtype):
    """FlashAttention's S_dmask encoding of the eager path's scores (B, H, mq, mk) and dropout keep mask:
    (B, H, round128(mq), round128(mk)) in dtype, entry exp(s - m) where m is the maximum of the row's
    scores in this key block (S_DMASK_BLOCK_N wide) and every later one (FlashAttention visits key
    blocks last to first, so m is its running maximum there), negated where the entry was dropped;
    0 where nothing is visible and in the padding."""
    batch, heads, mq, mk = scores.shape
    mq_r, mk_r = _round_up(mq, 128), _round_up(mk, 128)
    n = S_DMASK_BLOCK_N
    padded = F.pad(scores, (0, mk_r - mk), value=float("-inf"))
    block_max = padded.reshape(batch, heads, mq, mk_r // n, n).amax(dim=-1)
    running = block_max.flip(-1).cummax(dim=-1).values.flip(-1).repeat_interleave(n, dim=-1)
    unnormalized = torch.exp(padded - torch.where(torch.isinf(running), torch.zeros_like(running), running))
    keep = F.pad(keep, (0, mk_r - mk), value=True)
    s_dmask = torch.where(keep, unnormalized, -unnormalized)
    return F.pad(s_dmask, (0, 0, 0, mq_r - mq)).to(dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: AttentionOptions = DEFAULT_OPTIONS,
              need_lse: bool = True, return_s_dmask: bool = False, **fields):
    """FlashAttention-2's forward in torch, differentiable; inputs are never modified.

    q (B, Sq, H, D), k/v (B, Sk, Hk, D), or varlen / paged as in AttentionOptions (fields given by
    keyword override options). Any float dtype; float64 is computed in float64, other dtypes in
    float32 on the CPU or with ALiBi (added in float32, as FlashAttention and its reference do), else
    in their own dtype by SDPA on a GPU. Returns (out like q, softmax_lse float32 (B, H, Sq) or varlen
    (H, total_q), natural log, -inf for rows that see no key; None without need_lse, path "sdpa" or
    "eager"), plus, with return_s_dmask, S_dmask (see _s_dmask; (B, H, round128(Sq), round128(Sk)) in
    q's dtype, varlen sequences at rows/columns 0..len) as a fourth element. options.deterministic and
    return_s_dmask take the eager path, whose backward has no atomics (repeated backward passes give
    identical gradients) and whose dropout mask is explicit. Does not validate: attnforge's forward
    path runs the library's validator first.
    """
    o = options._replace(**fields) if fields else options
    window_left, window_right = int(o.window_size[0]), int(o.window_size[1])
    heads, head_dim = q.shape[-2], q.shape[-1]
    scale = head_dim ** -0.5 if o.softmax_scale is None else o.softmax_scale
    use_sdpa = sdpa_expresses(o.softcap)[0] and not o.deterministic and not return_s_dmask
    path = "sdpa" if use_sdpa else "eager"
    if q.numel() == 0:  # nothing to compute; the per-sequence index tensors below would be linear in B
        lse = q.new_empty(lse_shape(q, o.cu_seqlens_q is not None), dtype=torch.float32) if need_lse else None
        if return_s_dmask:
            return torch.zeros_like(q), lse, path, q.new_zeros(_s_dmask_shape(q, k, o))
        return torch.zeros_like(q), lse, path
    q_pad, k_pad, v_pad, q_len, k_start, k_len = _to_padded(q, k, v, o)
    batch, mq, mk = q_pad.shape[0], q_pad.shape[1], k_pad.shape[1]
    visible, distance = visibility_mask(q_len, k_start, k_len, mq, mk, o.causal, window_left, window_right)
    groups = heads // k_pad.shape[2]
    if groups > 1:  # contiguous head groups: q head h reads kv head h // groups
        # expand + reshape, whose backward is a plain sum over the group (repeat_interleave's may
        # accumulate with atomics on CUDA; deterministic=True must not).
        k_pad = k_pad[:, :, :, None].expand(-1, -1, -1, groups, -1).reshape(batch, mk, heads, k_pad.shape[-1])
        v_pad = v_pad[:, :, :, None].expand(-1, -1, -1, groups, -1).reshape(batch, mk, heads, v_pad.shape[-1])
    bias = None
    if o.alibi_slopes is not None:
        slopes = o.alibi_slopes.float()
        slopes = slopes.reshape(-1, heads) if slopes.dim() == 2 else slopes[None]
        bias = -slopes[:, :, None, None] * distance  # (B or 1, H, mq, mk) float32
    any_visible = visible.any(dim=-1, keepdim=True)  # (B, 1, mq, 1)

    # The math runs in float32 on the CPU and with ALiBi (an SDPA mask has the inputs' dtype, and a
    # bias of hundreds rounded to bf16 is off by units); else SDPA keeps the input dtype (its kernels
    # accumulate in fp32).
    if q.dtype == torch.float64:
        compute_dtype = torch.float64
    elif q.device.type == "cpu" or bias is not None:
        compute_dtype = torch.float32
    else:
        compute_dtype = q.dtype
    # Rows that see no key read zeros instead of q, so no gradient (nor NaN) can come out of them.
    qt = q_pad.transpose(1, 2).to(compute_dtype)  # (B, H, mq, D)
    qt = torch.where(any_visible, qt, torch.zeros_like(qt))
    kt = k_pad.transpose(1, 2).to(compute_dtype)
    vt = v_pad.transpose(1, 2).to(compute_dtype)

    work = torch.float64 if q.dtype == torch.float64 else torch.float32  # eager math and lse
    lse = s_dmask = None
    if use_sdpa:
        # Rows with no visible key would be NaN in SDPA: let them see everything, then zero them.
        mask = visible | ~any_visible
        if bias is not None:
            # Softmax ignores a per-row constant: shift each row's bias so its largest visible entry is
            # 0. Unshifted, ALiBi rows far from the diagonal have lse < -88 and SDPA backends that
            # recover probabilities as exp(s - lse) in fp32 overflow (NaN dq; cuDNN on sm90).
            row_max = bias.masked_fill(~visible, float("-inf")).amax(dim=-1, keepdim=True)
            row_max = torch.where(any_visible, row_max, torch.zeros_like(row_max))
            shifted = torch.where(any_visible, bias - row_max, torch.zeros_like(bias))
            mask = torch.where(mask, shifted.to(compute_dtype),
                               torch.tensor(float("-inf"), dtype=compute_dtype, device=q.device))
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, dropout_p=o.dropout_p, scale=scale)
        if need_lse:
            scores = torch.matmul(qt.to(work), kt.to(work).transpose(-1, -2)) * scale
            if bias is not None:
                scores = scores + bias
            lse = torch.logsumexp(scores.masked_fill(~visible, float("-inf")), dim=-1)
    else:
        scores = torch.matmul(qt.to(work), kt.to(work).transpose(-1, -2)) * scale  # (B, H, mq, mk)
        if o.softcap and o.softcap > 0:
            scores = o.softcap * torch.tanh(scores / o.softcap)
        if bias is not None:
            scores = scores + bias
        scores = scores.masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, mq); -inf where nothing is visible
        finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        probs = torch.exp(scores - finite_lse[..., None])
        keep = None
        if o.dropout_p > 0:
            keep = torch.rand(probs.shape, device=probs.device) >= o.dropout_p
            probs = probs.masked_fill(~keep, 0.0) / (1.0 - o.dropout_p)
        if return_s_dmask:
            if keep is None:
                keep = torch.ones(scores.shape, dtype=torch.bool, device=q.device)
            s_dmask = _s_dmask(scores.detach(), keep, q.dtype)
        out = torch.matmul(probs, vt.to(work))
    out = torch.where(any_visible, out, torch.zeros_like(out)).transpose(1, 2).to(q.dtype)  # (B, mq, H, D)
    if lse is not None:
        lse = lse.float()
    else:
        lse = torch.full((batch, heads, mq), float("nan"), device=q.device)  # never returned to a caller
    out, lse = _from_padded(out, lse, q, o.cu_seqlens_q)
    if return_s_dmask:
        return out, (lse if need_lse else None), path, s_dmask
    return out, (lse if need_lse else None), path
