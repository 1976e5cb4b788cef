"""Does one decode point's time depend on where its cache lies in memory? bf16 32/8 heads d128, batch 64 x 1k keys
(K + V = 256 MiB, one rotation in decode_bench.py: the point read 77 us in the v16 table and 69-71 us in
decode_ab.py, for attnforge and cuDNN alike). Allocates the caches of several (K, V) pairs, each after a spacer
allocation of a different size, and times attnforge (on (B, S, Hk, D) and through SDPA's (B, Hk, S, D) layout) and
SDPA's cuDNN backend on each pair alone: CUDA-graph replay, medians of interleaved rounds (decode_bench).
Usage: python3 decode_placement.py [out.md]
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnforge
from decode_bench import graph_timer, interleaved_us

BATCH, KEYS, HEADS, HEADS_KV, HEAD_DIM = 64, 1024, 32, 8, 128
SPACERS_MIB = [0, 1, 3, 17, 64, 130]


def main(path=None):
    kv_bytes = 2 * BATCH * KEYS * HEADS_KV * HEAD_DIM * 2
    lines = ["# Decode time by cache placement: %s, torch %s, bf16 %d/%d d%d B%d x %d keys (K + V %.0f MiB), us per "
             "step" % (torch.cuda.get_device_name(), torch.__version__, HEADS, HEADS_KV, HEAD_DIM, BATCH, KEYS,
                       kv_bytes / 2**20), "",
             "| spacer MiB | K address mod 2 MiB | V - K MiB | attnforge | attnforge bhsd | cuDNN | TB/s (attnforge) |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    keep = []
    for spacer in SPACERS_MIB:
        keep.append(torch.empty(spacer << 20, dtype=torch.uint8, device="cuda") if spacer else None)
        q = torch.randn(BATCH, 1, HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(BATCH, HEADS_KV, KEYS, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        k_bshd, v_bshd = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        keep.append((q, k, v, k_bshd, v_bshd))

        def cudnn():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                F.scaled_dot_product_attention(q.transpose(1, 2), k, v, enable_gqa=True)

        timers = {"attnforge": graph_timer([lambda: attnforge.flash_attn_func(q, k_bshd, v_bshd)], replays=20),
                  "bhsd": graph_timer([lambda: attnforge.flash_attn_func(q, k.transpose(1, 2), v.transpose(1, 2))],
                                      replays=20),
                  "cudnn": graph_timer([cudnn], replays=20)}
        us = interleaved_us(timers)
        lines.append("| %d | %d KiB | %.1f | %.1f | %.1f | %.1f | %.2f |" % (
            spacer, (k_bshd.data_ptr() % (2 << 20)) >> 10, (v_bshd.data_ptr() - k_bshd.data_ptr()) / 2**20,
            us["attnforge"], us["bhsd"], us["cudnn"], kv_bytes / us["attnforge"] / 1e6))
        print(lines[-1], flush=True)
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:2])
