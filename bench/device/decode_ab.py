"""Decode plan choices A/B (issue 11): per shape, attnforge with each variant (a forced key-split count and the
cluster merge on or off) beside SDPA's cuDNN backend, all captured as CUDA graphs first and then timed in
interleaved rounds (decode_bench.interleaved_us), so that the GPU's drift reaches every variant alike.
The variants' plans are read when the graphs are captured ($ATTNFORGE_DECODE_CLUSTER is read at each plan).

Variants: "planned" (num_splits=0), "planned-g" (the same with the cluster merge off), "planned-n" (the same
without the successor's L2 prefetch, $ATTNFORGE_DECODE_PREFETCH=0), and "Nc" / "Ng" (num_splits=N, cluster merge
on / off); $AF_VARIANTS picks some, $AF_SHAPES (comma-separated label parts, e.g. "d64 B2,d64 B4") some shapes.
$AF_LAYOUT=bhsd keeps the caches in SDPA's (B, Hk, S, D) layout (attnforge reads them through a transposed view),
else FlashAttention's (B, S, Hk, D) (SDPA reads that through a transposed view).
Usage: python3 decode_ab.py [out.md]
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnforge import _native
from decode_bench import rotations as rotation_count, graph_timer, shape_picked, interleaved_us

SHAPES = [  # (heads, heads_kv, head_dim, batch, keys)
    (16, 16, 64, 1, 128), (16, 16, 64, 1, 1024), (16, 16, 64, 1, 2048), (16, 16, 64, 1, 4096),
    (16, 16, 64, 2, 1024), (16, 16, 64, 3, 1024), (16, 16, 64, 4, 1024), (16, 16, 64, 6, 1024),
    (16, 16, 64, 2, 2048), (16, 16, 64, 4, 2048),  # the d64 cluster rule at batch 2-6
    (32, 8, 128, 1, 128), (32, 8, 128, 1, 1024), (32, 8, 128, 1, 4096), (16, 16, 64, 8, 1024),
    (32, 8, 128, 8, 1024), (32, 8, 128, 1, 16384),
    # grids of more than one wave (the successor prefetch)
    (32, 8, 128, 64, 1024), (32, 8, 128, 128, 1024), (32, 8, 128, 64, 4096), (32, 8, 128, 128, 4096),
    (64, 8, 128, 64, 1024), (16, 16, 64, 32, 1024), (16, 16, 64, 64, 1024), (16, 16, 64, 32, 4096),
]
# $AF_VARIANTS (comma-separated) picks some, e.g. "planned" to compare two builds of the library.
VARIANTS = os.environ.get("AF_VARIANTS", "planned,planned-g,2c,2g,4c,4g,6c,6g,8c,8g").split(",")


def attnforge_timer(variant, qs, caches):
    """A graph timer of attnforge's decode through the library's own call (no torch op around it; num_splits
    is its option), and the plan's description."""
    splits = 0 if variant.startswith("planned") else int(variant[:-1])
    os.environ["ATTNFORGE_DECODE_CLUSTER"] = "0" if variant.endswith("g") else "1"
    os.environ["ATTNFORGE_DECODE_PREFETCH"] = "0" if variant.endswith("n") else "1"
    outs = [torch.empty_like(q) for q in qs]
    timer = graph_timer([lambda i=i: _native.attention_forward(qs[i], *caches[i], outs[i], causal=True, backend="cuda",
                                                               num_splits=splits) for i in range(len(qs))])
    plan = _native.Plan(qs[0], *caches[0], outs[0], causal=True, backend="cuda", num_splits=splits).describe()
    os.environ.pop("ATTNFORGE_DECODE_CLUSTER")
    os.environ.pop("ATTNFORGE_DECODE_PREFETCH")
    return timer, plan


def main(path=None):
    lines = ["# Decode plan A/B: %s, torch %s, cuDNN %s, bf16, %s caches, us per step (CUDA-graph replay, medians of "
             "interleaved rounds)" % (torch.cuda.get_device_name(), torch.__version__, torch.backends.cudnn.version(),
                                      "(B, Hk, S, D)" if os.environ.get("AF_LAYOUT") == "bhsd" else "(B, S, Hk, D)"),
             "",
             "| shape | cuDNN | " + " | ".join(VARIANTS) + " | fastest / cuDNN | planned plan |",
             "|---|---|" + "---|" * len(VARIANTS) + "---|---|"]
    print("\n".join(lines), flush=True)
    for heads, heads_kv, head_dim, batch, keys in SHAPES:
        label = "%d/%d d%d B%d %d" % (heads, heads_kv, head_dim, batch, keys)
        if not shape_picked(label):
            continue
        kv_bytes = 2 * batch * keys * heads_kv * head_dim * 2
        rotations = rotation_count(kv_bytes)
        qs = [torch.randn(batch, 1, heads, head_dim, dtype=torch.bfloat16, device="cuda") for _ in range(rotations)]
        if os.environ.get("AF_LAYOUT") == "bhsd":
            caches = [tuple(torch.randn(batch, heads_kv, keys, head_dim, dtype=torch.bfloat16, device="cuda")
                            .transpose(1, 2) for _ in range(2)) for _ in range(rotations)]
        else:
            caches = [tuple(torch.randn(batch, keys, heads_kv, head_dim, dtype=torch.bfloat16, device="cuda")
                            for _ in range(2)) for _ in range(rotations)]
        sdpa_kv = [tuple(x.transpose(1, 2) for x in kv) for kv in caches]

        def cudnn(i):
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                F.scaled_dot_product_attention(qs[i].transpose(1, 2), *sdpa_kv[i], enable_gqa=heads != heads_kv)

        timers, plans = {"cudnn": graph_timer([lambda i=i: cudnn(i) for i in range(rotations)])}, {}
        for variant in VARIANTS:
            splits = 0 if variant.startswith("planned") else int(variant[:-1])
            if splits > (keys + 127) // 128:
                continue
            timers[variant], plans[variant] = attnforge_timer(variant, qs, caches)
        us = interleaved_us(timers)
        fastest = min((v for v in VARIANTS if v in us), key=us.get)
        lines.append("| %s | %.1f | " % (label, us["cudnn"]) +
                     " | ".join("%.1f" % us[v] if v in us else "-" for v in VARIANTS) +
                     " | %s %.2fx | %s |" % (fastest, us["cudnn"] / us[fastest], plans.get("planned", "-")[12:]))
        print(lines[-1], flush=True)
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:2])
