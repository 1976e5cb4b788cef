"""Decode steps where attnforge trails cuDNN (short caches: latency, not bandwidth), timed with every
forced key-split count beside the planned one and SDPA's cuDNN backend, to see whether the split
heuristic or the kernel's fixed cost is what is left (issue 11).

Same method as decode_bench.py (CUDA-graph replay over rotating caches, SDPA with enable_gqa=True);
attnforge runs through flash_attn_with_kvcache(num_splits=N) on the whole cache. Prints one markdown
table: per shape, the planned kernel (explain()), its time, the best forced count and its time, cuDNN.
Usage: python3 decode_splits.py [out.md [MATCH]] (MATCH: only the shapes whose label, e.g. "16/16 d64 B1 1k",
contains it)
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnforge
from decode_bench import rotations as rotation_count, graph_time_us

SHAPES = [  # (heads, heads_kv, head_dim, batch, keys)
    (32, 8, 128, 1, 1024), (64, 8, 128, 1, 1024), (32, 8, 128, 1, 4096), (16, 16, 64, 1, 1024),
    (16, 16, 64, 8, 1024), (32, 8, 128, 8, 1024), (40, 8, 128, 1, 2048), (64, 8, 128, 1, 4096),
    (16, 16, 64, 1, 4096), (32, 8, 128, 1, 16384), (32, 8, 128, 1, 32768),
]
SPLITS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]


def shape_row(heads, heads_kv, head_dim, batch, keys, dtype=torch.bfloat16):
    kv_bytes = 2 * batch * keys * heads_kv * head_dim * 2
    rotations = rotation_count(kv_bytes)
    qs = [torch.randn(batch, 1, heads, head_dim, dtype=dtype, device="cuda") for _ in range(rotations)]
    caches = [(torch.randn(batch, keys, heads_kv, head_dim, dtype=dtype, device="cuda"),
               torch.randn(batch, keys, heads_kv, head_dim, dtype=dtype, device="cuda")) for _ in range(rotations)]
    sdpa_kv = [(k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()) for k, v in caches]

    def cudnn(i):
        def run():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(qs[i].transpose(1, 2), *sdpa_kv[i], enable_gqa=True)
        return run

    def ours(i, splits):
        return lambda: attnforge.flash_attn_with_kvcache(qs[i], *caches[i], num_splits=splits)

    expected = cudnn(0)().transpose(1, 2).float()
    row = {"shape": "%d/%d d%d B%d %dk" % (heads, heads_kv, head_dim, batch, keys // 1024),
           "planned": attnforge.explain(qs[0], *caches[0]).get("plan", "") if hasattr(attnforge, "explain") else "",
           "cudnn_us": graph_time_us([cudnn(i) for i in range(rotations)])}
    times = {}
    for splits in [0] + SPLITS:
        got = ours(0, splits)().float()
        error = (got - expected).abs().max().item()
        if not error < 2e-2:  # NaN fails too
            raise SystemExit("%s num_splits=%d: max error %s against cuDNN" % (row["shape"], splits, error))
        times[splits] = graph_time_us([ours(i, splits) for i in range(rotations)])
    row["planned_us"] = times.pop(0)
    row["best_splits"] = min(times, key=times.get)
    row["best_us"] = times[row["best_splits"]]
    row["all"] = " ".join("%d:%.1f" % item for item in sorted(times.items()))
    return row


def main(path=None, match=""):
    lines = ["| shape | planned kernel | planned us | best forced splits | its us | cuDNN us | planned / cuDNN "
             "| best / cuDNN | splits: us |", "|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        heads, heads_kv, head_dim, batch, keys = shape
        if match not in "%d/%d d%d B%d %dk" % (heads, heads_kv, head_dim, batch, keys // 1024):
            continue
        r = shape_row(*shape)
        lines.append("| %s | %s | %.1f | %d | %.1f | %.1f | %.2fx | %.2fx | %s |" % (
            r["shape"], r["planned"], r["planned_us"], r["best_splits"], r["best_us"], r["cudnn_us"],
            r["cudnn_us"] / r["planned_us"], r["cudnn_us"] / r["best_us"], r["all"]))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if path:
        with open(path, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main(*sys.argv[1:3])
