"""Decode-step speed by cache layout (issue 11): the same K/V values stored two ways, each read by attnforge and by
SDPA's cuDNN backend (enable_gqa=True), all captured as CUDA graphs and timed in interleaved rounds in one process.

Layouts: "bhsd", (B, Hk, S, D) contiguous: transformers' KV cache and SDPA's preferred layout; attnforge reads it
through the transposed (B, S, Hk, D) view, as the transformers integration passes it. "bshd", (B, S, Hk, D)
contiguous: FlashAttention's layout; SDPA reads it through the transposed (B, Hk, S, D) view. A key row of one KV
head is D elements either way; "bhsd" keeps a head's rows adjacent, "bshd" puts Hk * D elements between them.
Every attnforge output is checked against cuDNN's before timing.
Usage: python3 decode_layout.py [out.md] ($AF_SHAPES: comma-separated label parts picks shapes)
"""
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnforge
from decode_bench import rotations as rotation_count, graph_timer, shape_picked

SHAPES = [  # (heads, heads_kv, head_dim, batch, keys): v14's lowest ratios, and batch-1 and B8 references
    (32, 8, 128, 16, 32768), (32, 8, 128, 32, 32768), (32, 8, 128, 32, 131072), (64, 8, 128, 64, 16384),
    (32, 8, 128, 128, 4096), (32, 8, 128, 64, 1024), (16, 16, 64, 32, 32768), (16, 16, 64, 32, 131072),
    (16, 16, 64, 128, 4096), (64, 8, 128, 1, 32768), (32, 8, 128, 8, 1024), (32, 8, 128, 1, 1024),
    # wide grids at d128 (more CTAs than SMs), for tile choices ($ATTNFORGE_DECODE_TILE)
    (32, 8, 128, 32, 1024), (32, 8, 128, 32, 4096), (32, 8, 128, 64, 4096), (32, 8, 128, 64, 32768),
    (32, 8, 128, 128, 1024), (64, 8, 128, 32, 16384), (32, 8, 128, 24, 8192), (32, 8, 128, 48, 8192),
    (32, 8, 128, 48, 1024), (32, 8, 128, 96, 1024), (32, 8, 128, 96, 4096),
    # and at d64 (16 KV heads: B x 16 CTAs)
    (16, 16, 64, 32, 4096), (16, 16, 64, 32, 16384), (16, 16, 64, 128, 1024), (16, 16, 64, 128, 16384),
    (16, 16, 64, 48, 8192),
]
ROUNDS = 5


def main(path=None):
    lines = ["# Decode by cache layout: %s, torch %s, cuDNN %s, bf16, us per step (CUDA-graph replay, medians of %d "
             "interleaved rounds); TB/s = K and V bytes / time" % (torch.cuda.get_device_name(), torch.__version__,
                                                                    torch.backends.cudnn.version(), ROUNDS), "",
             "| shape | cuDNN bhsd | cuDNN bshd | attnforge bhsd | attnforge bshd | bhsd: cuDNN / ours | "
             "bshd: cuDNN best / ours | TB/s ours bhsd, bshd |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    worst = math.inf
    for heads, heads_kv, head_dim, batch, keys in SHAPES:
        label = "%d/%d d%d B%d %d" % (heads, heads_kv, head_dim, batch, keys)
        if not shape_picked(label):
            continue
        kv_bytes = 2 * batch * keys * heads_kv * head_dim * 2
        rotations = rotation_count(kv_bytes)
        qs = [torch.randn(batch, 1, heads, head_dim, dtype=torch.bfloat16, device="cuda") for _ in range(rotations)]
        bhsd = [tuple(torch.randn(batch, heads_kv, keys, head_dim, dtype=torch.bfloat16, device="cuda")
                      for _ in range(2)) for _ in range(rotations)]
        bshd = [tuple(x.transpose(1, 2).contiguous() for x in kv) for kv in bhsd]
        # SDPA takes (B, Hk, S, D); attnforge (B, S, Hk, D).
        layouts = {"bhsd": ([kv for kv in bhsd], [tuple(x.transpose(1, 2) for x in kv) for kv in bhsd]),
                   "bshd": ([tuple(x.transpose(1, 2) for x in kv) for kv in bshd], [kv for kv in bshd])}

        def cudnn(kv, i):
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(qs[i].transpose(1, 2), *kv[i], enable_gqa=heads != heads_kv)

        expected = cudnn(layouts["bhsd"][0], 0).transpose(1, 2).float()
        timers = {}
        for name, (sdpa_kv, ours_kv) in layouts.items():
            got = attnforge.flash_attn_func(qs[0], *ours_kv[0]).float()
            diff = (got - expected).abs().max().item()
            if not diff < 2e-2:  # NaN fails too
                raise SystemExit("%s %s: attnforge differs from cuDNN by %s" % (label, name, diff))
            timers["cudnn " + name] = graph_timer([lambda i=i, kv=sdpa_kv: cudnn(kv, i) for i in range(rotations)])
            timers["ours " + name] = graph_timer([lambda i=i, kv=ours_kv: attnforge.flash_attn_func(qs[i], *kv[i])
                                                  for i in range(rotations)])
        samples = {name: [] for name in timers}
        for _ in range(ROUNDS):
            for name, timer in timers.items():
                samples[name].append(timer())
        us = {name: sorted(v)[len(v) // 2] for name, v in samples.items()}
        best = min(us["cudnn bhsd"], us["cudnn bshd"])
        worst = min(worst, us["cudnn bhsd"] / us["ours bhsd"])
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f | %.3fx | %.3fx | %.2f, %.2f |" % (
            label, us["cudnn bhsd"], us["cudnn bshd"], us["ours bhsd"], us["ours bshd"],
            us["cudnn bhsd"] / us["ours bhsd"], best / us["ours bshd"], kv_bytes / us["ours bhsd"] / 1e6,
            kv_bytes / us["ours bshd"] / 1e6))
        print(lines[-1], flush=True)
        del timers, layouts, bhsd, bshd
        torch.cuda.empty_cache()
    lines += ["", "Lowest cuDNN / attnforge on the bhsd cache: %.3fx" % worst]
    print(lines[-1])
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:2])
