"""Correctness of every CUDA kernel variant against a float64 reference, on fresh random inputs.

Each case poisons out and softmax_lse with NaN, runs attnforge's CUDA backend, and compares
with the float64 reference rounded to the output dtype. Tolerance: at most 2x the max error
of a naive implementation in the input precision (bf16/fp16 matmuls, fp32 softmax); LSE within
1e-3 relative; rows with nothing to attend to must give exactly 0 and -inf; NaN never passes.
Prints one line per case and exits non-zero on any failure.
"""
import json
import math
import sys

import torch

from common import native, reference

af = native()
torch.manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))
DEVICE = "cuda"
failures = []
results = []


def run_case(name, dtype, batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, causal=False, window=(-1, -1),
             softcap=0.0, alibi=False, varlen=False, empty_every=0, layout="bshd", padded_dim=None,
             seqused=False, leftpad=False, with_lse=True):
    """One case; layout 'bshd' (contiguous), 'bhsd' (transposed view) or 'slice' (view into a bigger buffer)."""
    d_store = padded_dim or head_dim
    if varlen:
        lens_q = torch.randint(0, seqlen_q + 1, (batch,)).tolist()
        lens_k = torch.randint(1, seqlen_k + 1, (batch,)).tolist()
        if empty_every:
            for b in range(0, batch, empty_every):
                lens_q[b] = 0
        if causal or window != (-1, -1):
            lens_k = [max(lk, 1) for lk in lens_k]
        cu_q = torch.tensor([0] + list(__import__("itertools").accumulate(lens_q)), dtype=torch.int32, device=DEVICE)
        cu_k = torch.tensor([0] + list(__import__("itertools").accumulate(lens_k)), dtype=torch.int32, device=DEVICE)
        total_q, total_k = int(cu_q[-1]), int(cu_k[-1])
        q = torch.randn(total_q, heads, d_store, dtype=dtype, device=DEVICE)[..., :head_dim]
        k = torch.randn(total_k, heads_kv, d_store, dtype=dtype, device=DEVICE)[..., :head_dim]
        v = torch.randn(total_k, heads_kv, d_store, dtype=dtype, device=DEVICE)[..., :head_dim]
        out = torch.full((total_q, heads, d_store), float("nan"), dtype=dtype, device=DEVICE)[..., :head_dim]
        lse = torch.full((heads, total_q), float("nan"), dtype=torch.float32, device=DEVICE)
    else:
        if layout == "bhsd":
            q = torch.randn(batch, heads, seqlen_q, d_store, dtype=dtype, device=DEVICE).transpose(1, 2)
            k = torch.randn(batch, heads_kv, seqlen_k, d_store, dtype=dtype, device=DEVICE).transpose(1, 2)
            v = torch.randn(batch, heads_kv, seqlen_k, d_store, dtype=dtype, device=DEVICE).transpose(1, 2)
        elif layout == "slice":  # kv as a view into a larger cache, q as every other head
            q = torch.randn(batch, seqlen_q, 2 * heads, d_store, dtype=dtype, device=DEVICE)[:, :, ::2]
            k = torch.randn(batch + 1, seqlen_k + 13, heads_kv, d_store, dtype=dtype, device=DEVICE)[1:, 5:5 + seqlen_k]
            v = torch.randn(batch + 1, seqlen_k + 13, heads_kv, d_store, dtype=dtype, device=DEVICE)[1:, 5:5 + seqlen_k]
        else:
            q = torch.randn(batch, seqlen_q, heads, d_store, dtype=dtype, device=DEVICE)
            k = torch.randn(batch, seqlen_k, heads_kv, d_store, dtype=dtype, device=DEVICE)
            v = torch.randn(batch, seqlen_k, heads_kv, d_store, dtype=dtype, device=DEVICE)
        q, k, v = q[..., :head_dim], k[..., :head_dim], v[..., :head_dim]
        out = torch.full((batch, seqlen_q, heads, d_store), float("nan"), dtype=dtype, device=DEVICE)[..., :head_dim]
        lse = torch.full((batch, heads, seqlen_q), float("nan"), dtype=torch.float32, device=DEVICE)
    slopes = None
    if alibi == "per_batch":  # (B, H) slopes, one row per sequence
        slopes = torch.rand(batch, heads, device=DEVICE, dtype=torch.float32) * 0.3
    elif alibi:
        slopes = torch.rand(heads, device=DEVICE, dtype=torch.float32) * 0.3
    used = lpad = None
    if seqused and not varlen:
        used = torch.randint(0, seqlen_k + 1, (batch,), dtype=torch.int32, device=DEVICE)
    if leftpad and not varlen:
        ends = used if used is not None else torch.full((batch,), seqlen_k, dtype=torch.int32, device=DEVICE)
        lpad = (torch.rand(batch, device=DEVICE) * (ends.float() + 1)).floor().clamp(max=ends.float()).to(torch.int32)
    kwargs = dict(softmax_lse=lse if with_lse else None, causal=causal, window_size=window, softcap=softcap,
                  alibi_slopes=slopes, seqused_k=used, leftpad_k=lpad, backend="cuda")
    if varlen:
        kwargs.update(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lens_q + [1]), max_seqlen_k=max(lens_k))
    try:
        af.attention_forward(q, k, v, out, **kwargs)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - reported as a failure with its message
        failures.append((name, str(e)))
        print("FAIL %-58s %s" % (name, e))
        return

    worst, worst_naive, lse_err, bad = 0.0, 0.0, 0.0, []
    for b in range(batch):
        if varlen:
            qs, qe, ks, ke = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
            qb, kb, vb, ob, lb = q[qs:qe], k[ks:ke], v[ks:ke], out[qs:qe], lse[:, qs:qe]
        else:
            k_end = int(used[b]) if used is not None else seqlen_k
            k_begin = int(lpad[b]) if lpad is not None else 0
            qb, kb, vb, ob, lb = q[b], k[b, k_begin:k_end], v[b, k_begin:k_end], out[b], lse[b]
        if qb.shape[0] == 0:
            continue
        sb = slopes[b] if slopes is not None and slopes.dim() == 2 else slopes
        ref, ref_lse = reference(qb, kb, vb, causal, window, softcap, sb)
        naive, _ = reference(qb, kb, vb, causal, window, softcap, sb, dtype=dtype)
        ref_rounded = ref.to(dtype).double()
        got = ob.double()
        if torch.isnan(got).any():
            bad.append("NaN or unwritten output in sequence %d" % b)
            continue
        worst = max(worst, (got - ref_rounded).abs().max().item())
        worst_naive = max(worst_naive, (naive.double() - ref_rounded).abs().max().item())
        if with_lse:
            lg = lb.double()
            masked = torch.isinf(ref_lse)
            if torch.isnan(lg).any() or not torch.equal(torch.isinf(lg) & (lg < 0), masked):
                bad.append("LSE NaN or -inf mismatch in sequence %d" % b)
            elif (~masked).any():
                lse_err = max(lse_err, ((lg - ref_lse).abs() / (1 + ref_lse.abs()))[~masked].max().item())
            if masked.any() and got[masked.transpose(0, 1)].abs().max().item() != 0:
                bad.append("fully masked row not zero in sequence %d" % b)
    tolerance = 2 * worst_naive + 1e-6
    if worst > tolerance:
        bad.append("max error %.3e > 2x naive %.3e" % (worst, worst_naive))
    if lse_err > 1e-3:
        bad.append("LSE relative error %.3e" % lse_err)
    status = "ok  " if not bad else "FAIL"
    print("%s %-58s err %.2e (naive %.2e) lse %.1e %s" % (status, name, worst, worst_naive, lse_err, "; ".join(bad)))
    results.append({"case": name, "error": worst, "naive_error": worst_naive, "lse_error": lse_err, "ok": not bad})
    if bad:
        failures.append((name, "; ".join(bad)))


def main():
    dtypes = [torch.bfloat16, torch.float16]
    # Every variant: dtype x head dim x {plain, extras}, odd lengths, batch 17 somewhere.
    for dtype in dtypes:
        tag = "bf16" if dtype == torch.bfloat16 else "fp16"
        for d in (32, 64, 96, 128, 192, 256):
            run_case("%s d%d plain b3 77x131 gqa2" % (tag, d), dtype, 3, 77, 131, 4, 2, d)
            run_case("%s d%d causal b17 129x65 gqa4" % (tag, d), dtype, 17, 129, 65, 8, 2, d, causal=True)
            run_case("%s d%d softcap+alibi causal 200x333" % (tag, d), dtype, 2, 200, 333, 4, 4, d, causal=True,
                     softcap=30.0, alibi=True)
            run_case("%s d%d softcap only 150x150" % (tag, d), dtype, 2, 150, 150, 2, 1, d, softcap=5.0)
    dt = torch.bfloat16
    # GQA ratios, windows, bottom-right causal with Sq > Sk (fully masked rows), varlen with empties.
    for ratio in (1, 2, 4, 8):
        run_case("gqa%d d128 causal 300x300" % ratio, dt, 2, 300, 300, 8, 8 // ratio, 128, causal=True)
    run_case("causal Sq>Sk (masked rows) d64 257x100", dt, 3, 257, 100, 4, 2, 64, causal=True)
    run_case("causal Sq<Sk d128 63x517", dt, 3, 63, 517, 4, 1, 128, causal=True)
    run_case("window (32,16) d64 400x400", dt, 2, 400, 400, 4, 2, 64, window=(32, 16))
    run_case("window (0,0) d128 190x190", dt, 2, 190, 190, 2, 2, 128, window=(0, 0))
    run_case("window (-1,8) d96 311x280", dt, 2, 311, 280, 4, 4, 96, window=(-1, 8))
    run_case("window (5,-1) Sq>Sk masked rows d64 300x90", dt, 2, 300, 90, 4, 4, 64, window=(5, -1))
    run_case("varlen empties d128 b17", dt, 17, 300, 257, 8, 2, 128, varlen=True, empty_every=3)
    run_case("varlen causal empties d64 b17", dt, 17, 200, 333, 4, 4, 64, varlen=True, empty_every=4, causal=True)
    run_case("varlen window alibi d256 b5", dt, 5, 150, 150, 4, 2, 256, varlen=True, window=(20, 3), alibi=True)
    run_case("non-contiguous bhsd view d128 b2", dt, 2, 333, 333, 4, 4, 128, layout="bhsd", causal=True)
    run_case("kv slice of bigger cache d64 b3", dt, 3, 100, 200, 4, 2, 64, layout="slice")
    run_case("head_dim 80 (padded to 96)", dt, 2, 150, 170, 4, 2, 80)
    run_case("head_dim 100 view of 104 (partial chunk)", dt, 2, 150, 170, 4, 2, 100, padded_dim=104, causal=True)
    run_case("head_dim 40 (padded to 64) fp16", torch.float16, 2, 99, 99, 2, 2, 40)
    run_case("head_dim 160 (padded to 192)", dt, 2, 140, 230, 2, 1, 160, causal=True)
    run_case("seqused_k d128 b5", dt, 5, 100, 300, 4, 2, 128, seqused=True)
    run_case("seqused_k + leftpad_k causal d64 b5", dt, 5, 64, 300, 4, 2, 64, seqused=True, leftpad=True, causal=True)
    run_case("no lse d64", dt, 2, 100, 100, 2, 2, 64, with_lse=False)
    run_case("alibi (B, H) slopes causal d128 b3", dt, 3, 120, 140, 4, 2, 128, alibi="per_batch", causal=True)
    run_case("long 2048 causal d128", dt, 1, 2048, 2048, 4, 4, 128, causal=True)
    # Few query tiles: the key range is split over several CTAs and merged by af_flash_combine.
    run_case("split keys: decode d128 b3 1x3000 gqa8 causal", dt, 3, 1, 3000, 16, 2, 128, causal=True)
    run_case("split keys: decode kvcache seqused d64 b4 1x2000", dt, 4, 1, 2000, 8, 2, 64, seqused=True, causal=True)
    run_case("split keys: d256 b1 4x5000 window (1000,0)", dt, 1, 4, 5000, 4, 4, 256, window=(1000, 0))
    run_case("split keys: varlen empties d128 b6 3x2500", dt, 6, 3, 2500, 4, 1, 128, varlen=True, empty_every=3,
             causal=True)
    run_case("split keys: softcap+alibi d96 b2 2x1500 fp16", torch.float16, 2, 2, 1500, 4, 2, 96, softcap=10.0,
             alibi=True)

    # supports() must reject, with a reason, what the kernels cannot do (the Python layer falls back).
    q = torch.randn(1, 16, 2, 64, device=DEVICE)
    ok, _, reason = af.attention_supported(q, q, q, torch.empty_like(q), backend="cuda")
    print("fp32 rejected:", not ok, "-", reason)
    if ok or "float32" not in reason:
        failures.append(("fp32 rejection", reason))

    print("\n%d cases, %d failures" % (len(results) + len(failures) - sum(1 for r in results if not r["ok"]), len(failures)))
    with open(sys.argv[1] if len(sys.argv) > 1 else "/dev/null", "w") as f:
        json.dump({"results": results, "failures": failures}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
