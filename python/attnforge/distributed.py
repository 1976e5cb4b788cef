"""Context parallelism: attention over a sequence sharded across the ranks of a torch.distributed group.

    import torch.distributed as dist
    from attnforge import distributed as cp

    q_local = cp.zigzag_shard(q, world, rank)            # (B, S / world, H, D), likewise k and v
    out_local = cp.ring_flash_attn_func(q_local, k_local, v_local, causal=True)
    out = cp.zigzag_gather(out_local)                    # (B, S, H, D) on every rank, if wanted

Each rank holds a slice of the sequence. K/V blocks travel around the ring (rank r sends to r + 1 and
receives from r - 1 with `batch_isend_irecv`, the next block in flight while attnforge computes on the
current one); the partial outputs are merged exactly through the log-sum-exp the kernel returns,
in float32 (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"; the same merge as
FlashAttention's split-KV combine). Any backend that has point-to-point ops works: NCCL on CUDA
tensors, gloo on CPU tensors.

Layout (the zigzag of ring-flash-attention / Llama 3's context parallelism): every sequence is cut
into 2 * world contiguous chunks and rank r holds chunks r and 2 * world - 1 - r, in that order. With
a causal mask every rank then does the same work: at each ring step a rank computes against either
half of the received K/V or with half of its queries, never the full square (except its own block,
which is causal). Without a causal mask any split works for the padded entry point; the varlen entry
point always uses the zigzag layout, as it derives every rank's rows from the global cu_seqlens.

Backward: both entry points have one, done as a second ring (K/V travel again with their float32
dK/dV accumulators, which end back on their owner; each block's probabilities are recomputed in torch
from the merged LSE, FlashAttention-2's backward in torch math, so its temporaries are (B, H/Hk, S_local,
S_local) float32 per K/V head: right for fine-tuning lengths, not for 100k-token training, which needs
a backward kernel). Semantics are FlashAttention-2's (GQA/MQA by contiguous head groups, causal
mask over global positions, rows that see no key give 0 and an LSE of -inf).
"""
import itertools
import math

import torch
import torch.distributed as dist

from .flash_attn_interface import flash_attn_func, flash_attn_varlen_func

__all__ = [
    "merge_attention",
    "ring_flash_attn_func",
    "ring_flash_attn_varlen_func",
    "zigzag_gather",
    "zigzag_shard",
    "zigzag_varlen_shard",
]


def _bounds(length, world_size):
    """Start offsets of the 2 * world_size zigzag chunks of a sequence of `length` (plus the end):
    chunk c is [length * c // (2W), length * (c + 1) // (2W)), so lengths may be anything."""
    parts = 2 * world_size
    return [length * c // parts for c in range(parts + 1)]


def _rank_chunks(rank, world_size):
    return rank, 2 * world_size - 1 - rank


def zigzag_shard(x, world_size, rank, dim=1):
    """This rank's zigzag slice of x along `dim` (the sequence dim: 1 for (B, S, H, D)).

    x.shape[dim] must be divisible by 2 * world_size (the padded layout needs equal shards on every
    rank). Returns a new contiguous tensor of x.shape[dim] / world_size rows: chunk `rank` then chunk
    2 * world_size - 1 - rank. Raises ValueError otherwise."""
    _check_rank(world_size, rank)
    length = x.shape[dim]
    if length % (2 * world_size):
        raise ValueError("zigzag_shard: x.shape[%d] = %d is not divisible by 2 * world_size = %d"
                         % (dim, length, 2 * world_size))
    chunks = x.chunk(2 * world_size, dim=dim)
    first, second = _rank_chunks(rank, world_size)
    return torch.cat([chunks[first], chunks[second]], dim=dim).contiguous()


def zigzag_gather(x, group=None, dim=1):
    """Inverse of zigzag_shard: all-gathers the local slices x of every rank of `group` and returns the
    whole tensor in sequence order (on every rank). x.shape[dim] must be even and equal on all ranks."""
    world_size = dist.get_world_size(group)
    if x.shape[dim] % 2:
        raise ValueError("zigzag_gather: x.shape[%d] = %d is odd; a zigzag slice holds two equal chunks"
                         % (dim, x.shape[dim]))
    # Gathered as raw bytes: gloo's all_gather in torch 1.x has neither bf16 nor int16.
    wire = x.contiguous().view(torch.uint8)
    parts = [torch.empty_like(wire) for _ in range(world_size)]
    dist.all_gather(parts, wire, group=group)
    parts = [part.view(x.dtype) for part in parts]
    chunks = [None] * (2 * world_size)
    for rank, part in enumerate(parts):
        first, second = _rank_chunks(rank, world_size)
        chunks[first], chunks[second] = part.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)


def _varlen_layout(cu_seqlens, world_size):
    """Per rank: (first, second), the per-sequence lengths of its two chunks (its rows are, sequence by
    sequence, the first chunk then the second)."""
    layout = []
    for rank in range(world_size):
        c1, c2 = _rank_chunks(rank, world_size)
        bounds = [_bounds(end - start, world_size) for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:])]
        layout.append(([b[c1 + 1] - b[c1] for b in bounds], [b[c2 + 1] - b[c2] for b in bounds]))
    return layout


def _host_cu_seqlens(cu_seqlens):
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32:
        raise ValueError("cu_seqlens must be a 1-D int32 torch tensor (batch + 1), got %s"
                         % (cu_seqlens.dtype if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens)))
    cu = cu_seqlens.tolist()
    if len(cu) < 2 or cu[0] != 0 or any(b < a for a, b in zip(cu[:-1], cu[1:])):
        raise ValueError("cu_seqlens must start at 0 and not decrease, got %s" % cu)
    return cu


def zigzag_varlen_shard(x, cu_seqlens, world_size, rank):
    """This rank's zigzag slice of packed sequences x (total, ...) with global int32 cu_seqlens (B + 1).

    Each sequence is cut into 2 * world_size chunks of near-equal length (any length works; short
    sequences leave some chunks empty) and the rank keeps chunks rank and 2 * world_size - 1 - rank
    of every sequence. Returns (x_local (total_local, ...), cu_seqlens_local int32 (B + 1)) on
    x's device."""
    _check_rank(world_size, rank)
    cu = _host_cu_seqlens(cu_seqlens)
    if x.shape[0] != cu[-1]:
        raise ValueError("zigzag_varlen_shard: x has %d rows but cu_seqlens[-1] = %d" % (x.shape[0], cu[-1]))
    c1, c2 = _rank_chunks(rank, world_size)
    rows = []
    for start, end in zip(cu[:-1], cu[1:]):
        b = _bounds(end - start, world_size)
        rows.extend(range(start + b[c1], start + b[c1 + 1]))
        rows.extend(range(start + b[c2], start + b[c2 + 1]))
    first, second = _varlen_layout(cu, world_size)[rank]
    index = torch.tensor(rows, dtype=torch.long, device=x.device)
    lengths = torch.tensor([a + b for a, b in zip(first, second)], dtype=torch.int32)
    local_cu = torch.cat([torch.zeros(1, dtype=torch.int32), torch.cumsum(lengths, 0, dtype=torch.int32)])
    return x.index_select(0, index), local_cu.to(cu_seqlens.device)


def _check_rank(world_size, rank):
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError("rank %d is not in [0, world_size = %d)" % (rank, world_size))


def merge_attention(out, lse, out_part, lse_part):
    """Merges a partial attention result into an accumulator, in place.

    out (..., S, H, D) float32 and lse (..., H, S) float32 hold the accumulated result (FlashAttention's
    layouts: (B, S, H, D) with (B, H, S), or varlen (total, H, D) with (H, total)); out_part/lse_part
    are the same shapes in any float dtype, the attention of the same queries over other keys. After
    the call out/lse are the attention over both key sets: lse = log(exp(lse) + exp(lse_part)) and
    out the matching weighted sum. Rows whose lse is -inf in both stay out = 0 and lse = -inf (no NaN)."""
    new_lse = torch.logaddexp(lse, lse_part.float())
    shift = torch.where(torch.isinf(new_lse), torch.zeros_like(new_lse), new_lse)
    w_acc = torch.exp(lse - shift).transpose(-1, -2).unsqueeze(-1)
    w_part = torch.exp(lse_part.float() - shift).transpose(-1, -2).unsqueeze(-1)
    out.mul_(w_acc).addcmul_(out_part, w_part)  # no float32 copy of out_part
    lse.copy_(new_lse)


def _merge_rows(out, lse, index, out_part, lse_part):
    """merge_attention on the rows `index` of a varlen accumulator (out (total, H, D), lse (H, total))."""
    o, rows_lse = out.index_select(0, index), lse.index_select(1, index)
    merge_attention(o, rows_lse, out_part, lse_part)
    out.index_copy_(0, index, o)
    lse.index_copy_(1, index, rows_lse)


def _global_rank(group, rank):
    if group is None:
        return rank
    if hasattr(dist, "get_global_rank"):
        return dist.get_global_rank(group, rank)
    return dist.distributed_c10d._get_global_rank(group, rank)  # torch < 2.0


class _Ring:
    """Passes (k, v) blocks around the group: send to rank + 1, receive from rank - 1."""

    def __init__(self, group):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.next = _global_rank(group, (self.rank + 1) % self.world_size)
        self.prev = _global_rank(group, (self.rank - 1) % self.world_size)

    def start(self, tensors, shapes):
        """Posts the sends of `tensors` and receives of fresh tensors of `shapes`; returns (requests,
        received tensors), the latter valid after wait()."""
        received = [torch.empty(shape, dtype=t.dtype, device=t.device) for t, shape in zip(tensors, shapes)]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group) for t in received]
        return dist.batch_isend_irecv(ops), received

    @staticmethod
    def wait(requests):
        for request in requests:
            request.wait()


# The kernel's dtypes (the float32 accumulators would not keep float64's precision).
_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_META_LEN = 16  # ints describing a call, compared across ranks by _agree


def _check_inputs(q, k, v, ndim, what):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError("%s: %s must be a torch tensor, got %s" % (what, name, type(x)))
        if x.dim() != ndim:
            raise ValueError("%s: %s must have %d dims, got shape %s" % (what, name, ndim, tuple(x.shape)))
        if x.dtype != q.dtype or x.device != q.device:
            raise ValueError("%s: %s is %s on %s but q is %s on %s" % (what, name, x.dtype, x.device, q.dtype,
                                                                      q.device))
    if q.dtype not in _DTYPES:
        raise ValueError("%s: dtype %s is not one of %s" % (what, q.dtype, _DTYPES))
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError("%s: k %s and v %s differ before the head dim" % (what, tuple(k.shape), tuple(v.shape)))
    if q.shape[-1] != k.shape[-1]:
        raise ValueError("%s: q head dim %d != k head dim %d" % (what, q.shape[-1], k.shape[-1]))
    if q.shape[-2] % k.shape[-2]:
        raise ValueError("%s: q heads %d is not a multiple of k/v heads %d" % (what, q.shape[-2], k.shape[-2]))


def _agree(group, validate, what):
    """Runs validate() -> meta (a list of ints describing the call; raises on a bad call) and all-gathers
    the meta, so that a bad or mismatched call raises on every rank instead of leaving the others in a
    receive that never completes. One small collective per call."""
    try:
        meta, problem = [1] + validate(), None
    except (TypeError, ValueError) as error:
        meta, problem = None, error
    world_size = dist.get_world_size(group)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    every = [torch.zeros(_META_LEN, dtype=torch.int64, device=device) for _ in range(world_size)]
    mine = torch.zeros(_META_LEN, dtype=torch.int64, device=device)
    if meta is not None:
        mine[:len(meta)] = torch.tensor(meta, dtype=torch.int64)
    dist.all_gather(every, mine, group=group)
    if problem is not None:
        raise problem
    every = [t.tolist() for t in every]
    bad = [rank for rank, m in enumerate(every) if m[0] == 0]
    if bad:
        raise ValueError("%s: the call on rank(s) %s of the group is invalid (see the error there)" % (what, bad))
    if any(m != every[0] for m in every):
        raise ValueError("%s: ranks disagree on the call (batch/length, heads, head dims, dtype, causal, "
                         "cu_seqlens): %s" % (what, [m[1:] for m in every]))


def ring_flash_attn_func(q, k, v, softmax_scale=None, causal=False, group=None, return_attn_probs=False):
    """Context-parallel flash_attn_func over the ranks of `group` (default: the world).

    q (B, S_local, H, D), k/v (B, S_local, Hk, D): this rank's slice of the sequence, the same shape on
    every rank; H % Hk == 0. With causal=True the slices must be zigzag_shard's layout (S_local even);
    without, any split along the sequence works. Returns out (B, S_local, H, D) in q's dtype [,
    softmax_lse float32 (B, H, S_local), None with return_attn_probs], equal to this rank's rows of
    flash_attn_func on the whole sequence. The merge is done in float32. Differentiable in q, k, v
    (a ring backward, see the module's docstring; the returned lse carries no gradient). Raises
    ValueError on bad shapes (on every rank when ranks disagree)."""
    what = "ring_flash_attn_func"
    ring = _Ring(group)

    def validate():
        _check_inputs(q, k, v, 4, what)
        if q.shape[:2] != k.shape[:2]:
            raise ValueError("%s: q %s and k %s differ in batch or local length (self-attention over one "
                             "sharded sequence)" % (what, tuple(q.shape), tuple(k.shape)))
        if causal and q.shape[1] % 2:
            raise ValueError("%s: causal needs the zigzag layout (two equal chunks), but the local length "
                             "is %d" % (what, q.shape[1]))
        return list(q.shape) + list(k.shape[2:]) + [v.shape[-1], _DTYPES.index(q.dtype), int(causal)]

    _agree(group, validate, what)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        out, lse = _RingAttention.apply(q, k, v, scale, causal, ring)
    else:
        out, lse = _ring_forward(q, k, v, scale, causal, ring)
    return (out, lse, None) if return_attn_probs else out


def _head_chunks(heads, kv_heads):
    """(query-head slice, kv-head slice) chunks of whole GQA groups with >= 8 query heads each (or all).

    The ring runs once per chunk, so its float32 accumulator and the kernel's partial output cover one
    chunk at a time: per local token the forward then holds q, k/v (twice), the output and 1/chunks of
    the (float32 + partial) buffers, instead of 3x the output's size more than one GPU would."""
    groups = heads // kv_heads
    per_chunk = min(kv_heads, max(1, -(-8 // groups)))
    return [(slice(h * groups, min(h + per_chunk, kv_heads) * groups), slice(h, min(h + per_chunk, kv_heads)))
            for h in range(0, kv_heads, per_chunk)]


def _ring_forward(q, k, v, scale, causal, ring):
    """out (B, S, H, D) in q's dtype and lse (B, H, S) float32 of this rank's queries over every rank's keys."""
    batch, length, heads = q.shape[:3]
    half = length // 2
    out = torch.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, length), dtype=torch.float32, device=q.device)
    for q_heads, kv_heads in _head_chunks(heads, k.shape[2]):
        qc = q[:, :, q_heads]
        acc = torch.zeros(qc.shape[:-1] + v.shape[-1:], dtype=torch.float32, device=q.device)
        acc_lse = torch.full((batch, qc.shape[2], length), -math.inf, dtype=torch.float32, device=q.device)
        kv = (k[:, :, kv_heads].contiguous(), v[:, :, kv_heads].contiguous())
        for step in range(ring.world_size):
            source = (ring.rank - step) % ring.world_size
            pending = None
            if step + 1 < ring.world_size:
                pending = ring.start(kv, [t.shape for t in kv])
            k_blk, v_blk = kv
            if not causal:
                o, lse_p, _ = flash_attn_func(qc, k_blk, v_blk, softmax_scale=scale, return_attn_probs=True)
                merge_attention(acc, acc_lse, o, lse_p)
            elif source == ring.rank:
                o, lse_p, _ = flash_attn_func(qc, k_blk, v_blk, softmax_scale=scale, causal=True,
                                              return_attn_probs=True)
                merge_attention(acc, acc_lse, o, lse_p)
            elif source < ring.rank:
                # The source's chunks are `source` (before both of ours) and 2W-1-source (after both).
                o, lse_p, _ = flash_attn_func(qc, k_blk[:, :half], v_blk[:, :half], softmax_scale=scale,
                                              return_attn_probs=True)
                merge_attention(acc, acc_lse, o, lse_p)
            else:
                # Both of the source's chunks lie after our first chunk and before our second.
                o, lse_p, _ = flash_attn_func(qc[:, half:], k_blk, v_blk, softmax_scale=scale,
                                              return_attn_probs=True)
                merge_attention(acc[:, half:], acc_lse[:, :, half:], o, lse_p)
            o = lse_p = None  # the next step's partial output takes this one's memory
            if pending is not None:
                requests, kv = pending
                ring.wait(requests)
        out[:, :, q_heads] = acc
        lse[:, q_heads] = acc_lse
        acc = acc_lse = None
    return out, lse


def _block_backward(q, k, v, dout, delta, lse, scale, causal, dq, dk, dv):
    """Adds one block's gradients into the float32 accumulators dq (B, Sq, H, D), dk/dv (B, Sk, Hk, D).

    The probabilities are recomputed from the merged (global) lse (B, H, Sq), and delta (B, Sq, H) is
    rowsum(dout * out) of the merged output, so each block's share is exact (FlashAttention-2's backward,
    Dao 2023, Algorithm 2). Torch math, one K/V head group at a time: (B, groups, Sq, Sk) float32 of
    temporaries; causal is bottom-right aligned."""
    heads, kv_heads = q.shape[2], k.shape[2]
    groups = heads // kv_heads
    sq, sk = q.shape[1], k.shape[1]
    hidden = torch.arange(sk, device=q.device)[None, :] > torch.arange(sq, device=q.device)[:, None] + (sk - sq)
    for h in range(kv_heads):
        heads_of = slice(h * groups, (h + 1) * groups)
        qh, do = q[:, :, heads_of].float(), dout[:, :, heads_of].float()  # (B, Sq, g, D)
        kh, vh = k[:, :, h].float(), v[:, :, h].float()  # (B, Sk, D)
        scores = torch.einsum("bqgd,bkd->bgqk", qh, kh) * scale
        if causal:
            scores = scores.masked_fill(hidden, -math.inf)
        row_lse = lse[:, heads_of].unsqueeze(-1)  # (B, g, Sq, 1)
        probs = torch.exp(scores - torch.where(torch.isinf(row_lse), torch.zeros_like(row_lse), row_lse))
        probs = probs.masked_fill(torch.isinf(row_lse), 0.0)
        dv[:, :, h] += torch.einsum("bgqk,bqgd->bkd", probs, do)
        dprobs = torch.einsum("bqgd,bkd->bgqk", do, vh)
        dscores = probs * (dprobs - delta[:, :, heads_of].transpose(1, 2).unsqueeze(-1))
        dq[:, :, heads_of] += torch.einsum("bgqk,bkd->bqgd", dscores, kh) * scale
        dk[:, :, h] += torch.einsum("bgqk,bqgd->bkd", dscores, qh) * scale


def _ring_backward(dout, q, k, v, out, lse, scale, causal, ring):
    """dq, dk, dv of this rank's slices: K/V travel the ring again with their float32 dK/dV accumulators,
    which end one hop later back on the rank that owns them."""
    half = q.shape[1] // 2
    delta = (dout.float() * out.float()).sum(-1)  # (B, S, H)
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    blocks = (k.contiguous(), v.contiguous(), torch.zeros(k.shape, dtype=torch.float32, device=k.device),
              torch.zeros(v.shape, dtype=torch.float32, device=v.device))
    for step in range(ring.world_size):
        source = (ring.rank - step) % ring.world_size
        k_blk, v_blk, dk_blk, dv_blk = blocks
        if not causal or source == ring.rank:
            _block_backward(q, k_blk, v_blk, dout, delta, lse, scale, causal, dq, dk_blk, dv_blk)
        elif source < ring.rank:
            _block_backward(q, k_blk[:, :half], v_blk[:, :half], dout, delta, lse, scale, False, dq,
                            dk_blk[:, :half], dv_blk[:, :half])
        else:
            _block_backward(q[:, half:], k_blk, v_blk, dout[:, half:], delta[:, half:], lse[:, :, half:], scale,
                            False, dq[:, half:], dk_blk, dv_blk)
        if step + 1 < ring.world_size:
            requests, blocks = ring.start(blocks, [t.shape for t in blocks])
            ring.wait(requests)
    dk, dv = blocks[2:]
    if ring.world_size > 1:  # the accumulators held now are those of rank + 1
        requests, (dk, dv) = ring.start((dk, dv), (dk.shape, dv.shape))
        ring.wait(requests)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _RingAttention(torch.autograd.Function):
    """ring_flash_attn_func with a backward: the forward ring, then a second ring that recomputes each
    block's probabilities from the merged lse (no gradient flows into the returned lse)."""

    @staticmethod
    def forward(ctx, q, k, v, scale, causal, ring):
        out, lse = _ring_forward(q, k, v, scale, causal, ring)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.causal, ctx.ring = scale, causal, ring
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _ring_backward(dout.contiguous(), q, k, v, out, lse, ctx.scale, ctx.causal, ctx.ring)
        return dq, dk, dv, None, None, None


def ring_flash_attn_varlen_func(q, k, v, cu_seqlens, softmax_scale=None, causal=False, group=None,
                                return_attn_probs=False):
    """Context-parallel flash_attn_varlen_func (self-attention of packed sequences) over `group`.

    cu_seqlens: the GLOBAL int32 (B + 1) offsets of the packed sequences, the same on every rank.
    q (total_local, H, D), k/v (total_local, Hk, D): this rank's rows in zigzag_varlen_shard's layout
    (any sequence lengths, empty ones included). Returns out (total_local, H, D) in q's dtype [,
    softmax_lse float32 (H, total_local), None], equal to this rank's rows of flash_attn_varlen_func
    on the whole pack. Differentiable in q, k, v (a ring backward as for ring_flash_attn_func; its
    torch-math blocks run one sequence at a time). Raises ValueError when the rows do not match
    cu_seqlens' layout or ranks disagree."""
    what = "ring_flash_attn_varlen_func"
    ring = _Ring(group)
    layout = None

    def validate():
        nonlocal layout
        _check_inputs(q, k, v, 3, what)
        cu = _host_cu_seqlens(cu_seqlens)
        layout = _varlen_layout(cu, ring.world_size)
        rows = sum(layout[ring.rank][0]) + sum(layout[ring.rank][1])
        if q.shape[0] != rows or k.shape[0] != rows:
            raise ValueError("%s: rank %d of %d must hold %d rows for these cu_seqlens, got q %d and k %d"
                             % (what, ring.rank, ring.world_size, rows, q.shape[0], k.shape[0]))
        checksum = sum(i * c for i, c in enumerate(cu)) % (1 << 61)
        return list(q.shape[1:]) + list(k.shape[1:]) + [v.shape[-1], _DTYPES.index(q.dtype), int(causal),
                                                        len(cu), cu[-1], checksum]

    _agree(group, validate, what)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    plan = _VarlenPlan(layout, ring, causal, q.device)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        out, lse = _RingVarlenAttention.apply(q, k, v, scale, plan)
    else:
        out, lse = _ring_varlen_forward(q, k, v, scale, plan)
    return (out, lse, None) if return_attn_probs else out


class _VarlenPlan:
    """What each ring step computes for packed sequences in the zigzag layout, shared by the forward and
    the backward. step(source) -> (q_rows, k_rows, cu_q, cu_k, max_q, max_k, causal): q_rows/k_rows are
    None (all rows) or device indices of the rows taking part; cu_* are host lists."""

    def __init__(self, layout, ring, causal, device):
        self.layout, self.ring, self.causal, self.device = layout, ring, causal, device

    def rows(self, rank):
        return sum(self.layout[rank][0]) + sum(self.layout[rank][1])

    @staticmethod
    def offsets(lengths):
        return [0] + list(itertools.accumulate(lengths)), max(lengths, default=0)

    def chunk_index(self, rank, which):
        """Packed-row indices (on the device) of every sequence's first (which=0) or second (which=1) chunk."""
        first, second = (torch.tensor(x, dtype=torch.long) for x in self.layout[rank])
        lengths = second if which else first
        starts = torch.cumsum(first + second, 0) - first - second + (first if which else 0)
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        return (torch.repeat_interleave(starts, lengths) + within).to(self.device)

    def step(self, source):
        me = self.ring.rank
        whole = [a + b for a, b in zip(*self.layout[me])]
        if not self.causal or source == me:
            return (None, None) + self._pair(whole, [a + b for a, b in zip(*self.layout[source])]) + (self.causal,)
        if source < me:
            # The source's first chunks lie before both of ours, its second chunks after both.
            return (None, self.chunk_index(source, 0)) + self._pair(whole, self.layout[source][0]) + (False,)
        # Both of the source's chunks lie after our first chunks and before our second ones.
        return (self.chunk_index(me, 1), None) + self._pair(self.layout[me][1], [
            a + b for a, b in zip(*self.layout[source])]) + (False,)

    def _pair(self, q_lengths, k_lengths):
        (cu_q, max_q), (cu_k, max_k) = self.offsets(q_lengths), self.offsets(k_lengths)
        return cu_q, cu_k, max_q, max_k


def _select(x, rows, dim=0):
    return x if rows is None else x.index_select(dim, rows)


def _ring_varlen_forward(q, k, v, scale, plan):
    """out (total_local, H, D) in q's dtype and lse (H, total_local) float32."""
    ring, device = plan.ring, q.device
    out = torch.zeros(q.shape[:-1] + v.shape[-1:], dtype=torch.float32, device=device)
    lse = torch.full((q.shape[1], q.shape[0]), -math.inf, dtype=torch.float32, device=device)
    kv = (k.contiguous(), v.contiguous())
    for step in range(ring.world_size):
        source = (ring.rank - step) % ring.world_size
        pending = None
        if step + 1 < ring.world_size:
            rows = plan.rows((source - 1) % ring.world_size)
            pending = ring.start(kv, [(rows,) + t.shape[1:] for t in kv])
        q_rows, k_rows, cu_q, cu_k, max_q, max_k, causal = plan.step(source)
        o, lse_p, _ = flash_attn_varlen_func(_select(q, q_rows), _select(kv[0], k_rows), _select(kv[1], k_rows),
                                             torch.tensor(cu_q, dtype=torch.int32, device=device),
                                             torch.tensor(cu_k, dtype=torch.int32, device=device), max_q, max_k,
                                             softmax_scale=scale, causal=causal, return_attn_probs=True)
        if q_rows is None:
            merge_attention(out, lse, o, lse_p)
        else:
            _merge_rows(out, lse, q_rows, o, lse_p)
        o = lse_p = None
        if pending is not None:
            requests, kv = pending
            ring.wait(requests)
    return out.to(q.dtype), lse


def _ring_varlen_backward(dout, q, k, v, out, lse, scale, plan):
    """dq, dk, dv of this rank's rows (the ring of _ring_backward; blocks one sequence at a time)."""
    ring = plan.ring
    delta = (dout.float() * out.float()).sum(-1)  # (total, H)
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    blocks = (k.contiguous(), v.contiguous(), torch.zeros(k.shape, dtype=torch.float32, device=k.device),
              torch.zeros(v.shape, dtype=torch.float32, device=v.device))
    for step in range(ring.world_size):
        source = (ring.rank - step) % ring.world_size
        q_rows, k_rows, cu_q, cu_k, _, _, causal = plan.step(source)
        k_blk, v_blk, dk_blk, dv_blk = blocks
        qs, dos, deltas, lses = (_select(q, q_rows), _select(dout, q_rows), _select(delta, q_rows),
                                 _select(lse, q_rows, 1))
        ks, vs = _select(k_blk, k_rows), _select(v_blk, k_rows)
        dqs = dq if q_rows is None else torch.zeros(qs.shape, dtype=torch.float32, device=q.device)
        dks, dvs = ((dk_blk, dv_blk) if k_rows is None else
                    (torch.zeros(ks.shape, dtype=torch.float32, device=k.device),
                     torch.zeros(vs.shape, dtype=torch.float32, device=k.device)))
        for i in range(len(cu_q) - 1):
            a, b, c, d = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
            if b > a and d > c:
                _block_backward(qs[a:b][None], ks[c:d][None], vs[c:d][None], dos[a:b][None], deltas[a:b][None],
                                lses[:, a:b][None], scale, causal, dqs[a:b][None], dks[c:d][None], dvs[c:d][None])
        if q_rows is not None:
            dq.index_add_(0, q_rows, dqs)
        if k_rows is not None:
            dk_blk.index_add_(0, k_rows, dks)
            dv_blk.index_add_(0, k_rows, dvs)
        if step + 1 < ring.world_size:
            rows = plan.rows((source - 1) % ring.world_size)
            requests, blocks = ring.start(blocks, [(rows,) + t.shape[1:] for t in blocks])
            ring.wait(requests)
    dk, dv = blocks[2:]
    if ring.world_size > 1:  # the accumulators held now are those of rank + 1
        requests, (dk, dv) = ring.start((dk, dv), (k.shape, v.shape))
        ring.wait(requests)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _RingVarlenAttention(torch.autograd.Function):
    """ring_flash_attn_varlen_func with a ring backward (no gradient flows into the returned lse)."""

    @staticmethod
    def forward(ctx, q, k, v, scale, plan):
        out, lse = _ring_varlen_forward(q, k, v, scale, plan)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.plan = scale, plan
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _ring_varlen_backward(dout.contiguous(), q, k, v, out, lse, ctx.scale, ctx.plan)
        return dq, dk, dv, None, None
