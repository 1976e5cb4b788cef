"""Decode-step speed: attnforge beside torch SDPA's flash and cuDNN backends, each in its best
configuration, in one process.

One decode step: q (B, 1, H, D) against a cache of S keys per sequence. attnforge reads its cache
in FlashAttention's layout (B, S, Hk, D), or paged (pages of P rows through a shuffled block
table), and also SDPA's own cache through its transposed view (the "bhsd" column: the memory the
peers read, and what the transformers integration passes); SDPA gets the layout it prefers,
(B, Hk, S, D) contiguous, with enable_gqa=True (K/V are never repeated per query head). GPU time
comes from CUDA-graph replay of R consecutive calls over R different caches (rotations(): R x
cache bytes >= 256 MiB, five times the H200's L2, so L2 does not hold the next call's cache, as in
generate(), where the other layers' caches pass between two reads of one), median of the replays;
attnforge (both layouts) and both SDPA backends in three interleaved rounds per point (medians), so
that a drift of the GPU's speed during a point reaches all of them alike. Achieved bandwidth counts
the K and V bytes a step must read once, beside a device-to-device copy measured in the same run
(bytes read + written). Every point is validated against SDPA before it is timed.

Writes <prefix>.json, <prefix>.md and <prefix>.png. With --paged-only (and --quick: B 1/8/32/128 x
keys 4k/32k), only attnforge contiguous vs paged (validated against attnforge's contiguous output),
ratios printed per point and the worst per page size against issue 11's 0.95x target; writes
<prefix>.json and exits 1 when the target is not met.
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnforge

ROTATION_BYTES = 256 << 20


def shape_picked(label):
    """Whether $AF_SHAPES (comma-separated parts of shape labels; unset: every shape) picks the shape `label`."""
    return any(m in label for m in os.environ.get("AF_SHAPES", "").split(","))


def rotations(kv_bytes):
    """Caches a timed graph rotates over: ROTATION_BYTES of K/V at least, so that none is still in L2 when it is
    read again (at most 512: the smallest cache timed, 128 keys x 16 heads x 64 dims, needs 512). Until
    2026-12-01 capped at 8, which left caches of up to 32 MiB L2-resident between their reads (B1 x 1k keys)."""
    return max(1, min(512, math.ceil(ROTATION_BYTES / kv_bytes)))


def copy_ceiling_tbs():
    """Device-to-device copy of 2 GiB: (bytes read + bytes written) / time, median of 10."""
    a = torch.empty(1 << 30, dtype=torch.int16, device="cuda").random_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return 2 * a.numel() * 2 / (times[len(times) // 2] * 1e-3) / 1e12


def graph_timer(calls, replays=10):
    """A CUDA graph that runs every function in `calls` once, as a function that replays it `replays` times
    and returns the median GPU time per call in us."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in calls:  # warm-up outside the graph (compiles, allocator pools)
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    graph.replay()
    torch.cuda.synchronize()

    def time_us():
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        return times[len(times) // 2] * 1e3 / len(calls)
    return time_us


def graph_time_us(calls, replays=10):
    """Median GPU time per call of a CUDA graph that runs every function in `calls` once."""
    return graph_timer(calls, replays)()


ROUNDS = 3  # interleaved rounds per point: long runs of one kernel after another drift by a few percent


def interleaved_us(timers):
    """{name: median us} over ROUNDS rounds in which every timer of `timers` ({name: graph_timer}) runs once, in
    turn, so that a drift of the GPU's speed during the point reaches every implementation alike."""
    samples = {name: [] for name in timers}
    for _ in range(ROUNDS):
        for name, timer in timers.items():
            samples[name].append(timer())
    return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}


def point(dtype, heads, heads_kv, head_dim, batch, seqlen, page_sizes, peers=True):
    """One shape: attnforge contiguous and paged, and with peers=True SDPA flash and cuDNN. Without
    peers, the contiguous cache is also timed through flash_attn_with_kvcache with cache_seqlens
    (the paged calls' entry point), and outputs are checked against attnforge's contiguous one."""
    kv_bytes = 2 * batch * seqlen * heads_kv * head_dim * 2
    count = rotations(kv_bytes)
    qs = [torch.randn(batch, 1, heads, head_dim, dtype=dtype, device="cuda") for _ in range(count)]
    row = {"dtype": str(dtype).replace("torch.", ""), "heads": heads, "heads_kv": heads_kv, "head_dim": head_dim,
           "batch": batch, "seqlen_k": seqlen, "kv_bytes": kv_bytes, "rotations": count}
    if not peers:
        ours_kv = [(torch.randn(batch, seqlen, heads_kv, head_dim, dtype=dtype, device="cuda"),
                    torch.randn(batch, seqlen, heads_kv, head_dim, dtype=dtype, device="cuda"))
                   for _ in range(count)]
        expected = attnforge.flash_attn_func(qs[0], *ours_kv[0])
        row["attnforge_us"] = graph_time_us([(lambda i=i: attnforge.flash_attn_func(qs[i], *ours_kv[i]))
                                             for i in range(count)])
        lens = torch.full((batch,), seqlen, dtype=torch.int32, device="cuda")
        got = attnforge.flash_attn_with_kvcache(qs[0], *ours_kv[0], cache_seqlens=lens)
        row["kvcache_valid"] = (got.float() - expected.float()).abs().max().item() < 2e-2
        row["kvcache_us"] = graph_time_us([(lambda i=i: attnforge.flash_attn_with_kvcache(
            qs[i], *ours_kv[i], cache_seqlens=lens)) for i in range(count)])
        paged_points(row, qs, ours_kv, expected, batch, seqlen, heads_kv, head_dim, page_sizes)
        return row
    caches = [(torch.randn(batch, heads_kv, seqlen, head_dim, dtype=dtype, device="cuda"),
               torch.randn(batch, heads_kv, seqlen, head_dim, dtype=dtype, device="cuda")) for _ in range(count)]

    # SDPA: (B, H, 1, D) against (B, Hk, S, D), enable_gqa=True.
    sdpa_q = [q.transpose(1, 2) for q in qs]

    def sdpa(backend, i):
        def run():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(sdpa_q[i], caches[i][0], caches[i][1], enable_gqa=True)
        return run

    # attnforge: the same values in (B, S, Hk, D).
    ours_kv = [(k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()) for k, v in caches]
    expected = None
    timers = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            result = sdpa(backend, 0)().transpose(1, 2)
            expected = result if expected is None else expected
            timers[name] = graph_timer([sdpa(backend, i) for i in range(count)])
        except Exception as e:  # noqa: BLE001 - a peer that cannot run this shape is recorded as such
            row[name + "_us"] = None
            row[name + "_error"] = str(e).splitlines()[0][:160]

    # And on SDPA's own cache through its transposed view, as the transformers integration passes it: the same
    # memory the peers read (one key row of a KV head after another), where (B, S, Hk, D) puts Hk * D elements
    # between a head's rows.
    sdpa_view = [(k.transpose(1, 2), v.transpose(1, 2)) for k, v in caches]

    def ours(kv, i):
        return lambda: attnforge.flash_attn_func(qs[i], *kv[i])

    got = attnforge.flash_attn_func(qs[0], *ours_kv[0])
    row["explain"] = attnforge.explain(qs[0], *ours_kv[0]) if hasattr(attnforge, "explain") else ""
    row["max_diff"] = (got.float() - expected.float()).abs().max().item() if expected is not None else None
    row["valid"] = row["max_diff"] is not None and row["max_diff"] < 2e-2
    got = attnforge.flash_attn_func(qs[0], *sdpa_view[0])
    row["bhsd_max_diff"] = (got.float() - expected.float()).abs().max().item() if expected is not None else None
    row["bhsd_valid"] = row["bhsd_max_diff"] is not None and row["bhsd_max_diff"] < 2e-2
    timers["attnforge"] = graph_timer([ours(ours_kv, i) for i in range(count)])
    timers["attnforge_bhsd"] = graph_timer([ours(sdpa_view, i) for i in range(count)])
    for name, us in interleaved_us(timers).items():
        row[name + "_us"] = us
    del timers  # the graphs, before the paged layouts allocate
    paged_points(row, qs, ours_kv, expected, batch, seqlen, heads_kv, head_dim, page_sizes)
    return row


def paged_ratio(row, page, order):
    """Contiguous time / paged time of one layout, both timed in the same interleaved rounds."""
    key = "paged%d_%s" % (page, order)
    return row[key + "_contiguous_us"] / row[key + "_us"]


def paged_points(row, qs, ours_kv, expected, batch, seqlen, heads_kv, head_dim, page_sizes):
    """The same keys in pages of P rows, in the sequences' order and shuffled: paged<P>_<order>_us, and the
    contiguous cache (flash_attn_with_kvcache with cache_seqlens, as the paged call) timed in the same three
    interleaved rounds (paged<P>_<order>_contiguous_us, medians).
    Timing the contiguous cache once and every paged layout after it read paged 10-12% slower at B128 where
    the kernels were equally fast when interleaved (bench/device/paged_gap.py, session 6): long runs of one
    memory-bound kernel after another do not keep the same speed, so each ratio compares neighbours."""
    rotations = len(qs)
    lens = torch.full((batch,), seqlen, dtype=torch.int32, device="cuda")
    # The contiguous cache through the same call as the paged one (with cache_seqlens, whose load every CTA
    # waits for first), so that a ratio prices the block table alone; the table's own column is
    # flash_attn_func's (transformers' decode path), which reads no lengths.
    contiguous = [(lambda i=i: attnforge.flash_attn_with_kvcache(qs[i], *ours_kv[i], cache_seqlens=lens))
                  for i in range(rotations)]
    for page in page_sizes:
        blocks = (seqlen + page - 1) // page
        for order in ("ordered", "shuffled"):
            paged = []
            for k, v in ours_kv:
                pad = blocks * page - seqlen
                kp = F.pad(k, (0, 0, 0, 0, 0, pad)).reshape(batch * blocks, page, heads_kv, head_dim)
                vp = F.pad(v, (0, 0, 0, 0, 0, pad)).reshape(batch * blocks, page, heads_kv, head_dim)
                perm = torch.randperm(batch * blocks, device="cuda") if order == "shuffled" else \
                    torch.arange(batch * blocks, device="cuda")
                inverse = torch.empty_like(perm)
                inverse[perm] = torch.arange(batch * blocks, device="cuda")
                paged.append((kp[perm].contiguous(), vp[perm].contiguous(),
                              inverse.view(batch, blocks).to(torch.int32)))
                del kp, vp

            def ours_paged(i):
                kp, vp, table = paged[i]
                return lambda: attnforge.flash_attn_with_kvcache(qs[i], kp, vp, cache_seqlens=lens, block_table=table)
            got = attnforge.flash_attn_with_kvcache(qs[0], paged[0][0], paged[0][1], cache_seqlens=lens,
                                                    block_table=paged[0][2])
            diff = (got.float() - expected.float()).abs().max().item() if expected is not None else None
            key = "paged%d_%s" % (page, order)
            row[key + "_valid"] = diff is not None and diff < 2e-2
            pairs = [(graph_time_us(contiguous), graph_time_us([ours_paged(i) for i in range(rotations)]))
                     for _ in range(3)]
            row[key + "_contiguous_us"] = sorted(c for c, _ in pairs)[1]
            row[key + "_us"] = sorted(t for _, t in pairs)[1]
            paged = None  # free before the next layout allocates


PAGED_TARGET = 0.95  # issue 11: paged decode at >= 0.95x the contiguous cache's speed


def paged_line(r):
    """One --paged-only point: contiguous times, then contiguous time / paged time per page size."""
    cells = ["%s %d/%d d%d B %4d keys %6d" % (r["dtype"], r["heads"], r["heads_kv"], r["head_dim"], r["batch"],
                                              r["seqlen_k"]),
             "contiguous %8.1f us (with_kvcache %8.1f us)" % (r["attnforge_us"], r["kvcache_us"])]
    for order in ("ordered", "shuffled"):
        cells.append(order + " " + " ".join(
            "P%d %.3f" % (p, paged_ratio(r, p, order)) for p in (16, 64, 256)))
    invalid = [k for k, v in r.items() if k.endswith("valid") and v is False]
    return " | ".join(cells) + (" | INVALID " + ",".join(invalid) if invalid else "")


def paged_summary(rows):
    """Lines: the worst ratio per page size (over shapes and orders) against the target, then
    "PAGED TARGET MET" or "PAGED TARGET NOT MET" (also when an output was invalid); and whether it was met."""
    lines, met = [], True
    for p in (16, 64, 256):
        ratios = [(paged_ratio(r, p, o), r, o)
                  for r in rows for o in ("ordered", "shuffled")]
        worst, r, o = min(ratios, key=lambda x: x[0])
        ok = worst >= PAGED_TARGET
        met = met and ok
        lines.append("page %3d: worst contiguous/paged %.3f (B %d, keys %d, %s): %s %.2f" % (
            p, worst, r["batch"], r["seqlen_k"], o, "meets" if ok else "BELOW", PAGED_TARGET))
    invalid = [r for r in rows if any(k.endswith("valid") and v is False for k, v in r.items())]
    if invalid:
        met = False
        lines.append("INVALID outputs at %d points (paged output differs from contiguous)" % len(invalid))
    lines.append("PAGED TARGET %s" % ("MET" if met else "NOT MET"))
    return lines, met


def plan_text(row):
    """The plan attnforge.explain() gave for a point (its "plan" entry), or the whole explanation."""
    explain = row.get("explain", "")
    return explain.get("plan", str(explain)) if isinstance(explain, dict) else str(explain)


def markdown(rows, meta):
    lines = ["# Decode steps: attnforge vs torch SDPA (flash, cuDNN; enable_gqa=True)", "",
             "%(date)s, %(gpu)s, driver %(driver)s, torch %(torch)s, CUDA %(cuda)s, cuDNN %(cudnn)s. "
             "GPU time per step from CUDA-graph replay over rotating caches (bench/device/decode_bench.py); "
             "attnforge, SDPA flash and SDPA cuDNN timed in three interleaved rounds per point (medians). "
             "Copy ceiling in the same run: %(copy_tbs).2f TB/s (read + write)." % meta, "",
             "Paged columns: contiguous time / paged time, both through flash_attn_with_kvcache with cache_seqlens, "
             "pages of 16/64/256 rows in the sequences' order and shuffled over the whole pool, each pair timed in "
             "three interleaved rounds (medians). The attnforge column is flash_attn_func on the contiguous cache.",
             "",
             "The bhsd columns: attnforge on SDPA's own (B, Hk, S, D) cache through its transposed view, the same "
             "memory the peers read (transformers' cache layout).", "",
             "| dtype | H/Hk | D | B | keys | attnforge us | TB/s | flash us | cuDNN us | vs best SDPA | "
             "attnforge bhsd us | bhsd vs best SDPA | paged in order 16/64/256 | paged shuffled 16/64/256 | kernel |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peers = [r[n] for n in ("flash_us", "cudnn_us") if r.get(n)]
        ratio = min(peers) / r["attnforge_us"] if peers else float("nan")
        tbs = r["kv_bytes"] / (r["attnforge_us"] * 1e-6) / 1e12
        paged = ["/".join("%.2f" % paged_ratio(r, p, order)
                          if r.get("paged%d_%s_us" % (p, order)) else "-" for p in (16, 64, 256))
                 for order in ("ordered", "shuffled")]
        invalid = [k for k, v in r.items() if k.endswith("valid") and v is False]
        bhsd = r.get("attnforge_bhsd_us")
        lines.append("| %s | %d/%d | %d | %d | %d | %.1f | %.2f | %s | %s | %.3fx%s | %s | %s | %s | %s | %s |" % (
            r["dtype"], r["heads"], r["heads_kv"], r["head_dim"], r["batch"], r["seqlen_k"], r["attnforge_us"], tbs,
            "%.1f" % r["flash_us"] if r.get("flash_us") else "n/a",
            "%.1f" % r["cudnn_us"] if r.get("cudnn_us") else "n/a",
            ratio, " INVALID " + ",".join(invalid) if invalid else "", "%.1f" % bhsd if bhsd else "-",
            "%.3fx" % (min(peers) / bhsd) if bhsd and peers else "-", paged[0], paged[1], plan_text(r)))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--quick", action="store_true", help="a few points only")
    parser.add_argument("--paged-only", action="store_true",
                        help="bf16 32/8 heads d128: attnforge contiguous vs paged only (no peers, no table or chart); "
                             "with --quick B 1/8/32/128 x keys 4k/32k")
    parser.add_argument("--batches", help="comma-separated batch sizes instead of the full sweep's")
    parser.add_argument("--lengths", help="comma-separated cached-key counts instead of the full sweep's")
    parser.add_argument("--configs", help="comma-separated dtype:H/Hk:D (bf16:32/8:128, fp16:16/16:64...) instead "
                                          "of the full sweep's, without paged columns")
    args = parser.parse_args()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "gpu": torch.cuda.get_device_name(),
            "driver": subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True).stdout.strip(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "host": platform.node(), "copy_tbs": copy_ceiling_tbs()}
    configs = [(torch.bfloat16, 32, 8, 128, True), (torch.bfloat16, 64, 8, 128, False),
               (torch.bfloat16, 40, 8, 128, False), (torch.bfloat16, 16, 16, 64, False),
               (torch.float16, 32, 8, 128, False)]
    batches = [1, 8, 16, 32, 64, 128]
    lengths = [1024, 4096, 16384, 32768, 131072]
    if args.quick:
        configs, batches, lengths = configs[:1], [1, 32], [4096, 32768]
    if args.configs:
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        configs = []
        for item in args.configs.split(","):
            dtype, heads, head_dim = item.split(":")
            heads_q, heads_kv = heads.split("/")
            configs.append((dtypes[dtype], int(heads_q), int(heads_kv), int(head_dim), False))
    batches = [int(x) for x in args.batches.split(",")] if args.batches else batches
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else lengths
    if args.paged_only:
        batches, lengths = ([1, 8, 32, 128], [4096, 32768]) if args.quick else (batches, lengths)
        rows = []
        for batch in batches:
            for seqlen in lengths:
                if batch * seqlen > (4 << 20):
                    continue
                rows.append(point(torch.bfloat16, 32, 8, 128, batch, seqlen, (16, 64, 256), peers=False))
                print(paged_line(rows[-1]), flush=True)
                torch.cuda.empty_cache()
        lines, met = paged_summary(rows)
        print("\n".join(lines))
        with open(args.prefix + ".json", "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        sys.exit(0 if met else 1)
    rows = []
    for dtype, heads, heads_kv, head_dim, with_paged in configs:
        for batch in batches:
            if not with_paged and batch in (16, 64):
                continue
            for seqlen in lengths:
                if batch * seqlen > (4 << 20):
                    continue
                row = point(dtype, heads, heads_kv, head_dim, batch, seqlen, (16, 64, 256) if with_paged else ())
                rows.append(row)
                print(markdown([row], meta).splitlines()[-1], flush=True)
                torch.cuda.empty_cache()
    with open(args.prefix + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(args.prefix + ".md", "w") as f:
        f.write(markdown(rows, meta))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 5))
        for batch in batches:
            pts = [r for r in rows if r["batch"] == batch and r["heads"] == 32 and r["dtype"] == "bfloat16"]
            if pts:
                ax.plot([r["seqlen_k"] for r in pts], [r["kv_bytes"] / r["attnforge_us"] / 1e6 for r in pts], "o-",
                        label="attnforge B=%d" % batch)
                best = [min(x for x in (r.get("flash_us"), r.get("cudnn_us")) if x) for r in pts]
                ax.plot([r["seqlen_k"] for r in pts], [r["kv_bytes"] / b / 1e6 for r, b in zip(pts, best)], "x--",
                        label="best SDPA B=%d" % batch)
        ax.axhline(meta["copy_tbs"], color="gray", linestyle=":", label="copy ceiling")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("cached keys")
        ax.set_ylabel("K/V read TB/s")
        ax.set_title("Decode, bf16, 32/8 heads, D 128 (%s)" % meta["gpu"])
        ax.legend(fontsize=7)
        fig.savefig(args.prefix + ".png", dpi=110)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
