"""A few small decode calls through the cluster merge (key splits of a query tile as one thread-block
cluster, merged through distributed shared memory; sm_90+), each checked against the same call
through the global merge (ATTNFORGE_DECODE_CLUSTER=0) and against float64. Small enough to run under
compute-sanitizer (memcheck, racecheck) in seconds.

Cases: bf16 32/8 heads d128 (GQA 4, one query tile) and fp16 8/1 d64 Sq 4 (GQA 8, two query tiles),
forced 2, 8 and 16 splits (16: where the driver places 16-CTA clusters, else the global merge), with
one sequence of no keys, contiguous and paged (16-row pages, shuffled). Prints one line per case
with the plan string; exits 1 when a case fails or an 8-split case did not take the cluster merge.
Usage: ATTNFORGE_LIBRARY=... PYTHONPATH=python python3 bench/device/decode_cluster_check.py
"""
import math
import os
import sys

import torch

from attnforge import _native

CASES = [  # (dtype, batch, seqlen_q, heads, heads_kv, head_dim, cache_len, page_size, splits)
    (torch.bfloat16, 2, 1, 32, 8, 128, 1037, None, 2),
    (torch.bfloat16, 2, 1, 32, 8, 128, 1037, None, 8),
    (torch.bfloat16, 2, 1, 32, 8, 128, 1037, 16, 8),
    (torch.float16, 2, 4, 8, 1, 64, 333, None, 16),
]


def reference(q, k, v, used, scale):
    """float64 decode with the bottom-right causal mask: (B, Sq, H, D) and LSE (B, H, Sq)."""
    batch, seqlen_q, heads, _ = q.shape
    group = heads // k.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full((batch, heads, seqlen_q), -math.inf, dtype=torch.float64)
    for b in range(batch):
        n = int(used[b])
        if n == 0:
            continue
        kb = k[b, :n].double().repeat_interleave(group, dim=1)  # (n, H, D)
        vb = v[b, :n].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[b].double(), kb) * scale
        rows = torch.arange(seqlen_q)[:, None] + (n - seqlen_q)
        scores = scores.masked_fill(torch.arange(n)[None, :] > rows, -math.inf)
        lse[b] = torch.logsumexp(scores, dim=-1)
        probs = torch.nan_to_num(torch.exp(scores - lse[b][..., None]))
        out[b] = torch.einsum("hqk,khd->qhd", probs, vb)
    return out, lse


def run(case, merge):
    dtype, batch, seqlen_q, heads, heads_kv, head_dim, cache_len, page_size, splits = case
    os.environ["ATTNFORGE_DECODE_CLUSTER"] = "1" if merge == "cluster" else "0"
    generator = torch.Generator().manual_seed(1234)
    q = torch.randn(batch, seqlen_q, heads, head_dim, generator=generator).to(dtype)
    k = torch.randn(batch, cache_len, heads_kv, head_dim, generator=generator).to(dtype)
    v = torch.randn(batch, cache_len, heads_kv, head_dim, generator=generator).to(dtype)
    used = torch.randint(1, cache_len + 1, (batch,), generator=generator, dtype=torch.int32)
    used[0] = 0
    args = dict(seqused_k=used.cuda(), causal=True, backend="cuda", num_splits=splits)
    k_gpu, v_gpu = k.cuda(), v.cuda()
    if page_size is not None:
        pages = (cache_len + page_size - 1) // page_size
        order = torch.randperm(batch * pages, generator=generator)
        pad = pages * page_size - cache_len
        pool_k = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad)).reshape(batch * pages, page_size, heads_kv, head_dim)
        pool_v = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, pad)).reshape(batch * pages, page_size, heads_kv, head_dim)
        table = torch.empty_like(order)
        table[order] = torch.arange(batch * pages)
        k_gpu, v_gpu = pool_k[order].cuda(), pool_v[order].cuda()
        args["block_table"] = table.view(batch, pages).to(torch.int32).cuda()
    q_gpu = q.cuda()
    out = torch.full_like(q_gpu, float("nan"))
    lse = torch.full((batch, heads, seqlen_q), float("nan"), dtype=torch.float32, device="cuda")
    plan = _native.Plan(q_gpu, k_gpu, v_gpu, out, **args).describe()
    _native.attention_forward(q_gpu, k_gpu, v_gpu, out, softmax_lse=lse, **args)
    torch.cuda.synchronize()
    return plan, out.float().cpu(), lse.cpu(), (q, k, v, used)


def main():
    if torch.cuda.get_device_capability() < (9, 0):
        print("SKIP: thread-block clusters need sm_90+")
        return 0
    failures = 0
    for case in CASES:
        plan_c, out_c, lse_c, inputs = run(case, "cluster")
        plan_g, out_g, lse_g, _ = run(case, "global")
        q, k, v, used = inputs
        expected, expected_lse = reference(q, k, v, used, 1.0 / math.sqrt(q.shape[-1]))
        finite = torch.isfinite(expected_lse)
        problems = []
        if case[-1] <= 8 and not plan_c.endswith(" cluster"):
            problems.append("did not take the cluster merge")
        if plan_g.endswith(" cluster"):
            problems.append("ATTNFORGE_DECODE_CLUSTER=0 still took the cluster merge")
        for name, tensor in (("out", out_c), ("lse", lse_c), ("global out", out_g), ("global lse", lse_g)):
            if torch.isnan(tensor).any():
                problems.append(name + " has NaN (unwritten rows)")
        error = (out_c.double() - expected).abs().max().item()
        if error > 2e-2:
            problems.append("out off float64 by %.3g" % error)
        if not torch.equal(torch.isinf(lse_c), ~finite) or \
                (lse_c[finite].double() - expected_lse[finite]).abs().max().item() > 1e-3:
            problems.append("lse off float64")
        merge_gap = (out_c - out_g).abs().max().item()
        if merge_gap > 1e-2:
            problems.append("merges differ by %.3g" % merge_gap)
        failures += bool(problems)
        print("%s | %s | vs float64 %.2e | vs global merge %.2e%s" % (
            "FAIL" if problems else "ok", plan_c, error, merge_gap, " | " + "; ".join(problems) if problems else ""))
    print("decode cluster check: %d of %d cases passed" % (len(CASES) - failures, len(CASES)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
