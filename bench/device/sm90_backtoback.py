"""Why fwd_sm90 trails cuDNN at short causal shapes in the sweep but much less under ncu (d128 32 x 512 causal:
0.83-0.86x in CUDA-graph replay of 10 back-to-back calls, 0.95x for one isolated launch under ncu). Times attnforge
and SDPA's cuDNN backend per shape four ways, each a median of CUDA-event timings:
  graph10   a CUDA graph of 10 back-to-back calls, replayed (the sweep's method), per call;
  graph1    a CUDA graph of one call, replayed;
  eager     one eager call between events (host launch included);
  flushed   a graph of one call preceded by a 256 MB memset that evicts the L2 (the memset's own time, measured
            alone in the same way, subtracted).
If graph10 alone loses, consecutive calls interfere (tails, clocks); if flushed loses too, the cold-L2 start does.

    ATTNFORGE_LIBRARY=$PWD/build-device/libattnforge.so PYTHONPATH=$PWD/python python3 bench/device/sm90_backtoback.py
"""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import attention_flops, native, time_ms
from sm90_check import graph_timer

SHAPES = [(32, 512, 16, 128, True), (32, 512, 8, 256, True), (32, 512, 32, 64, True), (8, 2048, 16, 128, False),
          (4, 4096, 16, 128, False)]  # (batch, seqlen, heads, head_dim, causal), bf16, B x S = 16k tokens


def ways(fn):
    """us per call: graph10, graph1, eager, flushed."""
    scratch = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flush = graph_timer(lambda: scratch.zero_(), 1, repeats=20)
    flush_then_call = graph_timer(lambda: (scratch.zero_(), fn()), 1, repeats=20)
    ten, one = graph_timer(fn, 10, repeats=20), graph_timer(fn, 1, repeats=20)
    flush_us = flush() * 1e3
    return ten() * 1e3, one() * 1e3, time_ms(fn) * 1e3, flush_then_call() * 1e3 - flush_us


def main():
    af = native()
    print("| B | S | H | D | mask | impl | graph10 us | graph1 us | eager us | flushed us |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for b, s, h, d, causal in SHAPES:
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        out = torch.empty_like(q)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        def cudnn():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        expected = cudnn().transpose(1, 2).float()
        af.attention_forward(q, k, v, out, causal=causal)
        error = (out.float() - expected).abs().max().item()
        if not error < 2e-2:  # NaN fails too
            raise SystemExit("b%d s%d d%d: attnforge differs from cuDNN by %s" % (b, s, d, error))
        flops = attention_flops(b, h, s, s, d, causal)
        for name, fn in (("attnforge", lambda: af.attention_forward(q, k, v, out, causal=causal)), ("cuDNN", cudnn)):
            times = ways(fn)
            print("| %d | %d | %d | %d | %s | %s | %s |" % (
                b, s, h, d, "causal" if causal else "full", name,
                " | ".join("%.1f (%.0f TF/s)" % (t, flops / t / 1e6) for t in times)), flush=True)


if __name__ == "__main__":
    main()
