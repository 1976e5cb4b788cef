"""One rank of test_distributed.py's gloo runs: `python distributed_worker.py RANK WORLD PORT SEED`.

Every rank draws the same global q/k/v from SEED, takes its zigzag slice, runs attnforge.distributed
and checks its rows against the float64 reference of the whole sequence (reference.py's budget).
The rows a rank must hold are worked out here independently of attnforge's sharding helpers.
Prints one "PASS name" or "FAIL name: why" line per case; exits 1 if any case failed.
"""
import datetime
import math
import os
import sys
import traceback

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import assert_close, assert_lse_close, error_budget, sequence_attention  # noqa: E402

from attnforge import distributed as cp  # noqa: E402


def zigzag_rows(start, length, world, rank):
    """Global row indices of chunks rank and 2*world-1-rank of the sequence [start, start + length)."""
    cut = [length * c // (2 * world) for c in range(2 * world + 1)]
    rows = []
    for c in (rank, 2 * world - 1 - rank):
        rows.extend(range(start + cut[c], start + cut[c + 1]))
    return rows


def expected(q, k, v, lengths, causal, dtype):
    """Packed q/k/v (total, H, D) of sequences `lengths` -> float64 out, naive same-precision out, lse (H, total)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    outs, naives, lses, start = [], [], [], 0
    for n in lengths:
        sl = slice(start, start + n)
        out, lse = sequence_attention(q[sl], k[sl], v[sl], scale, causal=causal)
        naive, _ = sequence_attention(q[sl], k[sl], v[sl], scale, causal=causal, precision=dtype)
        outs.append(out)
        naives.append(naive)
        lses.append(lse)
        start += n
    return torch.cat(outs), torch.cat(naives), torch.cat(lses, dim=1)


def padded_case(world, rank, dtype, causal, batch, seqlen, heads, kv_heads, head_dim):
    q = torch.randn(batch, seqlen, heads, head_dim).to(dtype)
    k = torch.randn(batch, seqlen, kv_heads, head_dim).to(dtype)
    v = torch.randn(batch, seqlen, kv_heads, head_dim).to(dtype)
    out, lse, _ = cp.ring_flash_attn_func(cp.zigzag_shard(q, world, rank), cp.zigzag_shard(k, world, rank),
                                          cp.zigzag_shard(v, world, rank), causal=causal, return_attn_probs=True)
    gathered = cp.zigzag_gather(out)  # the collective first: a failed assertion must not strand the other ranks
    assert out.dtype == dtype and out.shape == (batch, seqlen // world, heads, head_dim), (out.dtype, out.shape)
    assert lse.dtype == torch.float32 and lse.shape == (batch, heads, seqlen // world), (lse.dtype, lse.shape)
    rows = zigzag_rows(0, seqlen, world, rank)
    for b in range(batch):
        ref, naive, ref_lse = expected(q[b], k[b], v[b], [seqlen], causal, dtype)
        assert_close(out[b], ref[rows], naive[rows], dtype)
        assert_lse_close(lse[b], ref_lse[:, rows])
    assert torch.equal(gathered[:, rows], out), "zigzag_gather does not put the rows back in order"


def varlen_case(world, rank, dtype, causal, lengths, heads, kv_heads, head_dim):
    total = sum(lengths)
    q = torch.randn(total, heads, head_dim).to(dtype)
    k = torch.randn(total, kv_heads, head_dim).to(dtype)
    v = torch.randn(total, kv_heads, head_dim).to(dtype)
    cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32)
    q_local, cu_local = cp.zigzag_varlen_shard(q, cu, world, rank)
    k_local, _ = cp.zigzag_varlen_shard(k, cu, world, rank)
    v_local, _ = cp.zigzag_varlen_shard(v, cu, world, rank)
    rows, local_lengths = [], []
    for start, n in zip(cu[:-1].tolist(), lengths):
        mine = zigzag_rows(start, n, world, rank)
        rows.extend(mine)
        local_lengths.append(len(mine))
    assert cu_local.tolist() == [sum(local_lengths[:i]) for i in range(len(lengths) + 1)], cu_local
    out, lse, _ = cp.ring_flash_attn_varlen_func(q_local, k_local, v_local, cu, causal=causal, return_attn_probs=True)
    ref, naive, ref_lse = expected(q, k, v, lengths, causal, dtype)
    assert_close(out, ref[rows], naive[rows], dtype)
    assert_lse_close(lse, ref_lse[:, rows])


def math_attention(q, k, v, causal, dtype):
    """Plain attention of (B, S, H, D) q and (B, S, Hk, D) k/v computed in dtype, for autograd."""
    groups = q.shape[2] // k.shape[2]
    q, k, v = q.to(dtype), k.to(dtype).repeat_interleave(groups, 2), v.to(dtype).repeat_interleave(groups, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)


def largest_lse(lse):
    """max |lse| over every rank's finite rows (one all_reduce: call it before any assertion can fail)."""
    finite = lse[torch.isfinite(lse)]
    value = torch.tensor([finite.abs().max().item() if finite.numel() else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


def assert_grad_close(ours, expected64, naive, lse_max, what):
    """The house budget for fp32 (3x the naive fp32 error + floor + ulp), plus what FlashAttention's
    backward adds by design: it recomputes the probabilities from the fp32 LSE the forward returned, whose
    rounding (eps * |lse|) is a relative error of the probabilities and so of every gradient."""
    assert not torch.isnan(ours).any(), "%s has NaN" % what
    err, budget = error_budget(ours, expected64, naive, torch.float32)
    budget += 4 * torch.finfo(torch.float32).eps * lse_max * expected64.abs().max().item()
    assert err <= budget, "%s error %.3g exceeds budget %.3g" % (what, err, budget)


def backward_case(world, rank, causal, batch, seqlen, heads, kv_heads, head_dim):
    """Gradients of sum(out * g) through the ring against float64 autograd over the whole sequence."""
    q = torch.randn(batch, seqlen, heads, head_dim)
    k = torch.randn(batch, seqlen, kv_heads, head_dim)
    v = torch.randn(batch, seqlen, kv_heads, head_dim)
    g = torch.randn(batch, seqlen, heads, head_dim)
    local = [cp.zigzag_shard(x, world, rank).requires_grad_() for x in (q, k, v)]
    with torch.enable_grad():
        out, lse, _ = cp.ring_flash_attn_func(*local, causal=causal, return_attn_probs=True)
        (out * cp.zigzag_shard(g, world, rank)).sum().backward()
        expected, naive = [], []
        for dtype, into in ((torch.float64, expected), (torch.float32, naive)):
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            (math_attention(*leaves, causal, dtype) * g.to(dtype)).sum().backward()
            into.extend(x.grad for x in leaves)
    lse_max = largest_lse(lse)
    rows = zigzag_rows(0, seqlen, world, rank)
    for name, ours, ref, same in zip(("dq", "dk", "dv"), local, expected, naive):
        assert_grad_close(ours.grad, ref[:, rows], same[:, rows], lse_max, name)


def varlen_backward_case(world, rank, causal, lengths, heads, kv_heads, head_dim):
    """Gradients through ring_flash_attn_varlen_func against float64 autograd, sequence by sequence."""
    total = sum(lengths)
    q, g = torch.randn(total, heads, head_dim), torch.randn(total, heads, head_dim)
    k, v = torch.randn(total, kv_heads, head_dim), torch.randn(total, kv_heads, head_dim)
    cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32)
    local = [cp.zigzag_varlen_shard(x, cu, world, rank)[0].requires_grad_() for x in (q, k, v)]
    with torch.enable_grad():
        out, lse, _ = cp.ring_flash_attn_varlen_func(*local, cu, causal=causal, return_attn_probs=True)
        (out * cp.zigzag_varlen_shard(g, cu, world, rank)[0]).sum().backward()
        expected, naive = [], []
        for dtype, into in ((torch.float64, expected), (torch.float32, naive)):
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
                part = [x[start:end][None] for x in leaves]
                (math_attention(*part, causal, dtype)[0] * g[start:end].to(dtype)).sum().backward()
            into.extend(x.grad for x in leaves)
    lse_max = largest_lse(lse)
    rows = []
    for start, n in zip(cu[:-1].tolist(), lengths):
        rows.extend(zigzag_rows(start, n, world, rank))
    for name, ours, ref, same in zip(("dq", "dk", "dv"), local, expected, naive):
        assert_grad_close(ours.grad, ref[rows], same[rows], lse_max, name)


def bad_call_case(world, rank):
    """A call that is wrong on one rank only raises on every rank (no rank is left waiting)."""
    heads = 4 if rank else 3
    q = torch.randn(1, 4, heads, 8)
    k = torch.randn(1, 4, 1, 8)
    try:
        cp.ring_flash_attn_func(q, k, k, causal=True)
    except ValueError as error:
        assert "heads" in str(error) or "rank(s) [0]" in str(error), error
    else:
        raise AssertionError("a call that disagrees across ranks did not raise")
    odd = torch.randn(1, 3, 2, 8)
    try:
        cp.ring_flash_attn_func(odd, odd, odd, causal=True)
    except ValueError as error:
        assert "local length is 3" in str(error), error
    else:
        raise AssertionError("causal with an odd local length did not raise")
    double = torch.randn(1, 4, 2, 8, dtype=torch.float64)
    try:
        cp.ring_flash_attn_func(double, double, double)
    except ValueError as error:
        assert "dtype torch.float64" in str(error), error
    else:
        raise AssertionError("float64 did not raise")
    q = torch.randn(5, 2, 8)
    try:
        cp.ring_flash_attn_varlen_func(q, q, q, torch.tensor([0, 4 * world], dtype=torch.int32), causal=True)
    except ValueError as error:
        assert "must hold 4 rows" in str(error) and "got q 5" in str(error), error
    else:
        raise AssertionError("rows that do not match cu_seqlens did not raise")


def cases(world):
    # Local lengths are odd multiples of small numbers (no tile multiples); the varlen lengths are
    # uneven and include sequences shorter than 2 * world (empty chunks) and an empty one.
    yield "padded_causal_fp32_gqa", (
        lambda rank: padded_case(world, rank, torch.float32, True, 2, 2 * world * 5, 4, 2, 16))
    yield "padded_noncausal_fp32_mqa", (
        lambda rank: padded_case(world, rank, torch.float32, False, 1, 2 * world * 3, 4, 1, 32))
    yield "padded_causal_bf16", lambda rank: padded_case(world, rank, torch.bfloat16, True, 1, 2 * world * 7, 2, 2, 64)
    yield "padded_causal_fp32_two_head_chunks", (
        lambda rank: padded_case(world, rank, torch.float32, True, 1, 2 * world * 3, 16, 4, 8))
    yield "varlen_causal_fp32_gqa", (
        lambda rank: varlen_case(world, rank, torch.float32, True, [37, 1, 0, 2 * world + 1, 20], 6, 2, 16))
    yield "varlen_noncausal_fp16", lambda rank: varlen_case(world, rank, torch.float16, False, [13, 29, 3], 4, 4, 8)
    yield "varlen_causal_bf16_mqa", lambda rank: varlen_case(world, rank, torch.bfloat16, True, [50, 9], 4, 1, 32)
    yield "backward_causal_fp32_gqa", lambda rank: backward_case(world, rank, True, 2, 2 * world * 3, 4, 2, 8)
    yield "backward_noncausal_fp32_mqa", lambda rank: backward_case(world, rank, False, 1, 2 * world * 5, 2, 1, 16)
    yield "varlen_backward_causal_fp32_gqa", (
        lambda rank: varlen_backward_case(world, rank, True, [21, 0, 3, 2 * world + 1], 4, 2, 8))
    yield "varlen_backward_noncausal_fp32", lambda rank: varlen_backward_case(world, rank, False, [9, 14], 2, 2, 8)
    yield "bad_calls", lambda rank: bad_call_case(world, rank)


def main():
    rank, world, port, seed = (int(a) for a in sys.argv[1:5])
    # gloo honours the timeout: a rank left in a collective by a failed case errors out instead of hanging.
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    failed = False
    with torch.no_grad():
        for name, run in cases(world):
            torch.manual_seed(seed)  # the same global tensors on every rank
            try:
                run(rank)
                print("PASS %s" % name, flush=True)
            except Exception as error:  # report every case, then fail the rank
                failed = True
                print("FAIL %s: %s\n%s" % (name, error, traceback.format_exc()), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
