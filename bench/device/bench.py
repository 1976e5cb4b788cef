"""Forward attention speed: attnforge's CUDA kernel beside torch SDPA's flash (FlashAttention-2)
and cuDNN backends, in one process, on the sweep of shared/reference/anchors-h100.md:
bf16, B*S = 16384 tokens, H*D = 2048, head_dim 64/128/256, causal and not, seqlen 512..16384.

Each point: validate attnforge against SDPA flash on the same inputs, then warm up and time
each implementation with CUDA events (median of --repeats). Inputs (3 x 64 MiB) exceed L2.
Writes <prefix>.json, <prefix>.md and <prefix>.png.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import attention_flops, native, time_ms

af = native()


def sweep(head_dims, seqlens, repeats, rounds):
    rows = []
    for d in head_dims:
        heads = 2048 // d
        for causal in (False, True):
            for s in seqlens:
                batch = 16384 // s
                q = torch.randn(batch, s, heads, d, dtype=torch.bfloat16, device="cuda")
                k = torch.randn_like(q)
                v = torch.randn_like(q)
                out = torch.empty_like(q)
                qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

                def ours():
                    af.attention_forward(q, k, v, out, causal=causal, backend="cuda")

                def peer(backend):
                    def run():
                        with sdpa_kernel([backend]):
                            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
                    return run

                ours()
                expected = peer(SDPBackend.FLASH_ATTENTION)().transpose(1, 2)
                diff = (out.float() - expected.float()).abs().max().item()
                valid = diff < 0.05
                flops = attention_flops(batch, heads, s, s, d, causal)
                row = {"head_dim": d, "causal": causal, "seqlen": s, "batch": batch, "heads": heads,
                       "max_diff_vs_flash": diff, "valid": valid}
                # Rounds alternate the three implementations so that a transient slowdown of the
                # GPU hits all of them; each keeps the best of its per-round medians.
                impls = (("attnforge", ours), ("flash", peer(SDPBackend.FLASH_ATTENTION)),
                         ("cudnn", peer(SDPBackend.CUDNN_ATTENTION)))
                for name, _ in impls:
                    row[name] = None
                for _ in range(rounds):
                    for name, fn in impls:
                        if row.get(name + "_error"):
                            continue
                        try:
                            ms = time_ms(fn, warmup=3, repeats=repeats)
                        except RuntimeError as e:
                            row[name + "_error"] = str(e)[:200]
                            continue
                        tflops = flops / ms / 1e9
                        row[name] = tflops if row[name] is None else max(row[name], tflops)
                rows.append(row)
                print("d%-3d %-6s S=%-5d  attnforge %6.1f  flash %6.1f  cudnn %6.1f TFLOP/s  "
                      "(x%.2f flash, x%.2f cudnn)%s" % (
                    d, "causal" if causal else "full", s, row["attnforge"] or 0, row["flash"] or 0, row["cudnn"] or 0,
                    (row["attnforge"] or 0) / (row["flash"] or 1), (row["attnforge"] or 0) / (row["cudnn"] or 1),
                    "" if valid else "  INVALID (max diff %.3g)" % diff))
                q = k = v = out = qt = kt = vt = None  # free before the next point allocates
    return rows


DECODE_SHAPES = (  # (batch, cached keys, query heads, kv heads, head dim): one new token per sequence
    (1, 2048, 16, 8, 128), (1, 8192, 32, 8, 128), (8, 4096, 32, 8, 128), (32, 1024, 32, 8, 128), (1, 16384, 16, 16, 64))


def decode_sweep(rounds):
    """Decode steps (one query row per sequence): microseconds per call in a loop of 50 back-to-back
    calls, so the time is what an eager decode loop sees (GPU time, or launch overhead when larger).
    attnforge gets GQA K/V as they are; SDPA gets K/V with the heads repeated (as transformers' sdpa
    path does), materialised before timing."""
    rows = []
    for batch, keys, heads, heads_kv, d in DECODE_SHAPES:
        q = torch.randn(batch, 1, heads, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(batch, keys, heads_kv, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        out = torch.empty_like(q)
        qt = q.transpose(1, 2)
        kt = k.repeat_interleave(heads // heads_kv, dim=2).transpose(1, 2)
        vt = v.repeat_interleave(heads // heads_kv, dim=2).transpose(1, 2)

        def ours():
            af.attention_forward(q, k, v, out, causal=True, backend="cuda")

        def peer(backend):
            def run():
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(qt, kt, vt)
            return run

        ours()
        expected = peer(SDPBackend.FLASH_ATTENTION)().transpose(1, 2)
        row = {"batch": batch, "keys": keys, "heads": heads, "heads_kv": heads_kv, "head_dim": d,
               "max_diff_vs_flash": (out.float() - expected.float()).abs().max().item()}
        impls = (("attnforge", ours), ("flash", peer(SDPBackend.FLASH_ATTENTION)),
                 ("cudnn", peer(SDPBackend.CUDNN_ATTENTION)), ("efficient", peer(SDPBackend.EFFICIENT_ATTENTION)))
        for _ in range(rounds):
            for name, fn in impls:
                try:
                    for _ in range(5):
                        fn()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(50):
                        fn()
                    end.record()
                    end.synchronize()
                    us = start.elapsed_time(end) / 50 * 1e3
                    row[name] = us if row.get(name) is None else min(row[name], us)
                except RuntimeError as e:
                    row[name + "_error"] = str(e)[:200]
        # GPU time alone: 50 calls captured in a CUDA graph, replayed (no launch overhead).
        for name, fn in impls[:2]:
            try:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    fn()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(50):
                        fn()
                graph.replay()
                for _ in range(rounds):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    graph.replay()
                    end.record()
                    end.synchronize()
                    us = start.elapsed_time(end) / 50 * 1e3
                    row[name + "_graph"] = min(row.get(name + "_graph", us), us)
                del graph
            except RuntimeError as e:
                row[name + "_graph_error"] = str(e)[:200]
        rows.append(row)
        print("decode b%-2d keys=%-5d heads %d/%d d%d: attnforge %.1f us (graph %s), flash %s us (graph %s), "
              "cudnn %s us, "
              "efficient %s us" % (batch, keys, heads, heads_kv, d, row.get("attnforge", 0),
                                   *("%.1f" % row[n] if row.get(n) else "n/a"
                                     for n in ("attnforge_graph", "flash", "flash_graph", "cudnn", "efficient"))))
        q = k = v = out = qt = kt = vt = None  # free before the next point allocates
    return rows


def first_call_cost(arch):
    """First call of every variant with an empty cache (NVRTC compile + cache write + module load +
    launch + sync), one variant at a time in one fresh process, and the first call with a warm cache
    in another fresh process (cache read + module load + launch)."""
    cache = "/tmp/attnforge-firstcall-cache"
    fresh = "/tmp/attnforge-firstcall-home"
    subprocess.run(["rm", "-rf", cache, fresh], check=True)
    os.makedirs(fresh)
    # NVRTC 12.9+ and the driver keep caches of their own (seen: a warm machine compiled every
    # variant in 0.02 s): point HOME, XDG_CACHE_HOME, TMPDIR and the driver's cache at an empty
    # directory so that the compile times are cold ones.
    env = dict(os.environ, ATTNFORGE_CACHE_DIR=cache, HOME=fresh, XDG_CACHE_HOME=fresh, TMPDIR=fresh,
               CUDA_CACHE_PATH=fresh, CUDA_CACHE_DISABLE="1")
    code_compile = (
        "import json,time,sys,torch; sys.path.insert(0,%r); from common import native; af=native(); r=[]\n"
        "torch.zeros(1,device='cuda'); torch.cuda.synchronize()\n"
        "for dtype,name in ((torch.bfloat16,'bf16'),(torch.float16,'fp16')):\n"
        "  for d in (32,64,96,128,192,256):\n"
        "    for softcap in (0.0,30.0):\n"
        "      q=torch.randn(1,64,2,d,dtype=dtype,device='cuda'); o=torch.empty_like(q); torch.cuda.synchronize()\n"
        "      t=time.perf_counter(); af.attention_forward(q,q,q,o,softcap=softcap,backend='cuda'); "
        "torch.cuda.synchronize()\n"
        "      r.append(('%%s flash_fwd_%%s_d%%d%%s'%%(%r,name,d,'_extras' if softcap else ''), "
        "time.perf_counter()-t))\n"
        "print(json.dumps(r))" % (os.path.dirname(os.path.abspath(__file__)), arch))
    compile_out = subprocess.run([sys.executable, "-c", code_compile], env=env, capture_output=True, text=True)
    compiled = json.loads(compile_out.stdout.strip().splitlines()[-1]) if compile_out.returncode == 0 else []
    code_load = (
        "import json,time,sys,torch; sys.path.insert(0,%r); from common import native; af=native(); r={}\n"
        "for d in (64,128,256):\n"
        "  q=torch.randn(1,128,2,d,dtype=torch.bfloat16,device='cuda'); o=torch.empty_like(q); "
        "torch.cuda.synchronize()\n"
        "  t=time.perf_counter(); af.attention_forward(q,q,q,o,backend='cuda'); torch.cuda.synchronize(); "
        "first=time.perf_counter()-t\n"
        "  t=time.perf_counter(); af.attention_forward(q,q,q,o,backend='cuda'); torch.cuda.synchronize(); "
        "again=time.perf_counter()-t\n"
        "  r['flash_fwd_bf16_d%%d'%%d]={'first_call_ms':first*1e3,'steady_call_ms':again*1e3}\n"
        "print(json.dumps(r))" % (os.path.dirname(os.path.abspath(__file__)),))
    load_out = subprocess.run([sys.executable, "-c", code_load], env=env, capture_output=True, text=True)
    loaded = json.loads(load_out.stdout.strip().splitlines()[-1]) if load_out.returncode == 0 else {}
    if compile_out.returncode or load_out.returncode:
        print("first-call measurement failed:", compile_out.stderr[-800:], load_out.stderr[-800:])
    return {"compile_seconds": compiled, "cached_first_call": loaded}


def environment():
    report = af.runtime_report()
    cuda = report.get("backends", {}).get("cuda", {})
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(),
        "nvidia_smi": smi,
        "driver": smi.split(",")[-1].strip() if smi else "?",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "nvrtc": cuda.get("nvrtc", {}).get("version"),
        "nvrtc_library": cuda.get("nvrtc", {}).get("library"),
        "tile_override": os.environ.get("ATTNFORGE_TILE", ""),
        "pair_group_override": os.environ.get("ATTNFORGE_PAIR_GROUP", ""),
    }


def write_markdown(path, env, rows, first_call, decode):
    lines = ["# attnforge forward attention vs torch SDPA (flash = FlashAttention-2, cuDNN)", "",
             "Date %s; GPU %s; driver %s; torch %s; CUDA %s; cuDNN %s; NVRTC %s; Python %s." % (
                 env["date"], env["gpu"], env["driver"], env["torch"], env["cuda"], env["cudnn"], env["nvrtc"],
                 env["python"]), "",
             "bf16, (B, S, H, D) with B*S = 16384 and H*D = 2048; forward TFLOP/s = 4*B*H*S^2*D (halved when causal) "
             "/ time, where time is the best of %d rounds' medians of %d CUDA-event-timed calls (3 warm-ups each); "
             "the rounds alternate attnforge, flash and cuDNN in the same process. "
             "attnforge output validated against SDPA flash before timing. Produced by bench/device/run.sh." % (
                 env["rounds"], env["repeats"]), ""]
    for d in sorted({r["head_dim"] for r in rows}):
        for causal in (False, True):
            sel = [r for r in rows if r["head_dim"] == d and r["causal"] == causal]
            if not sel:
                continue
            lines += ["## head_dim %d, %s" % (d, "causal" if causal else "non-causal"), "",
                      "| seqlen | attnforge | flash (FA2) | cuDNN | attnforge / flash | attnforge / cuDNN |",
                      "|---|---|---|---|---|---|"]
            for r in sel:
                a, f, c = r["attnforge"], r["flash"], r["cudnn"]
                lines.append("| %d | %s | %s | %s | %s | %s |" % (
                    r["seqlen"], "%.0f" % a if a else "n/a", "%.0f" % f if f else "n/a", "%.0f" % c if c else "n/a",
                    "%.2f" % (a / f) if a and f else "n/a", "%.2f" % (a / c) if a and c else "n/a")
                    + ("" if r["valid"] else " (INVALID output)"))
            lines.append("")
    if decode:
        lines += ["## Decode steps (one query row per sequence, causal)", "",
                  "Microseconds per call over 50 back-to-back calls (what an eager decode loop sees: GPU time, or "
                  "launch overhead where that is larger); best of %d rounds. "
                  "SDPA gets K/V with heads repeated." % env["rounds"],
                  "The graph columns replay 50 calls captured in a CUDA graph: GPU time without launch overhead.",
                  "", "| batch | cached keys | heads (q/kv) | head dim | attnforge us | flash us | cuDNN us | "
                  "efficient us | flash / attnforge | attnforge graph us | flash graph us | ratio (graph) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in decode:
            def cell(n):
                return "%.1f" % r[n] if r.get(n) else "n/a"

            def ratio(a, b):
                return "%.2f" % (r[b] / r[a]) if r.get(a) and r.get(b) else "n/a"
            lines.append("| %d | %d | %d/%d | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                r["batch"], r["keys"], r["heads"], r["heads_kv"], r["head_dim"], cell("attnforge"), cell("flash"),
                cell("cudnn"), cell("efficient"), ratio("attnforge", "flash"), cell("attnforge_graph"),
                cell("flash_graph"), ratio("attnforge_graph", "flash_graph")))
        lines.append("")
    lines += ["## First-call cost", "",
              "First call of each variant with an empty cache, one at a time (NVRTC compile for "
              "this GPU + cache write + module load + launch + sync):", "",
              "| variant | first call s |", "|---|---|"]
    for item, seconds in first_call.get("compile_seconds", []):
        lines.append("| %s | %.2f |" % (item, seconds))
    lines += ["", "First call in a fresh process with a warm cache (cache read + module load + launch + sync) "
              "vs the second call:", "", "| variant | first call ms | second call ms |", "|---|---|---|"]
    for name, v in first_call.get("cached_first_call", {}).items():
        lines.append("| %s | %.1f | %.2f |" % (name, v["first_call_ms"], v["steady_call_ms"]))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_chart(path, env, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dims = sorted({r["head_dim"] for r in rows})
    fig, axes = plt.subplots(2, len(dims), figsize=(5 * len(dims), 8), squeeze=False)
    for col, d in enumerate(dims):
        for row_i, causal in enumerate((False, True)):
            ax = axes[row_i][col]
            sel = [r for r in rows if r["head_dim"] == d and r["causal"] == causal]
            for name, style in (("attnforge", "o-"), ("flash", "s--"), ("cudnn", "^:")):
                xs = [r["seqlen"] for r in sel if r.get(name)]
                ax.plot(xs, [r[name] for r in sel if r.get(name)], style, label=name)
            ax.set_xscale("log", base=2)
            ax.set_title("hdim %d, %s" % (d, "causal" if causal else "non-causal"))
            ax.set_xlabel("seqlen")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("Forward bf16, B*S=16k, H*D=2048 — %s, driver %s, torch %s, CUDA %s, %s" % (
        env["gpu"], env["driver"], env["torch"], env["cuda"], env["date"]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True, help="output path without extension")
    parser.add_argument("--head-dims", default="64,128,256")
    parser.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-first-call", action="store_true")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode-step table")
    parser.add_argument("--first-call-only", help="measure first-call cost into this JSON file and stop")
    args = parser.parse_args()
    major, minor = torch.cuda.get_device_capability()
    arch = "sm_90a" if (major, minor) == (9, 0) else "sm_%d%d" % (major, minor)
    if args.first_call_only:
        # Run before anything else compiles, so that no compiler-side cache can shorten it.
        first_call = first_call_cost(arch)
        with open(args.first_call_only, "w") as f:
            json.dump(first_call, f)
        print(json.dumps(first_call))
        return
    env = environment()
    env["rounds"], env["repeats"] = args.rounds, args.repeats
    print(json.dumps(env))
    rows = sweep([int(x) for x in args.head_dims.split(",")], [int(x) for x in args.seqlens.split(",")], args.repeats,
                 args.rounds)
    decode = [] if args.no_decode else decode_sweep(args.rounds)
    first_call = {}
    if os.path.exists(args.prefix + ".firstcall.json"):
        with open(args.prefix + ".firstcall.json") as f:
            first_call = json.load(f)
    elif not args.no_first_call:
        first_call = first_call_cost(arch)
    with open(args.prefix + ".json", "w") as f:
        json.dump({"environment": env, "rows": rows, "decode": decode, "first_call": first_call}, f, indent=1)
    write_markdown(args.prefix + ".md", env, rows, first_call, decode)
    write_chart(args.prefix + ".png", env, rows)
    print(open(args.prefix + ".md").read())


if __name__ == "__main__":
    main()
