"""The GPU kernels behind one decode step where attnforge trails cuDNN (latency-bound: batch 1, short caches),
for attnforge and SDPA's flash and cuDNN backends: per kernel its grid, block, registers, shared memory and
median duration, and per step the span from its first kernel's start to its last one's end (kernels and the
gaps between them), from torch.profiler's CUDA trace of eager calls, each step alone (synchronised).

    ATTNFORGE_LIBRARY=... PYTHONPATH=python python3 bench/device/decode_kernels.py [out.md]
"""
import json
import os
import statistics
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import attnforge

SHAPES = [  # (heads, heads_kv, head_dim, batch, keys, page size or 0)
    (16, 16, 64, 1, 1024, 0), (16, 16, 64, 1, 4096, 0), (32, 8, 128, 1, 1024, 0), (32, 8, 128, 1, 4096, 0),
    (32, 8, 128, 1, 4096, 16),
]
STEPS = 20


def step_fns(heads, heads_kv, head_dim, batch, keys, page):
    q = torch.randn(batch, 1, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(batch, keys, heads_kv, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    lens = torch.full((batch,), keys, dtype=torch.int32, device="cuda")
    fns = {}
    if page:
        pages = keys // page
        table = torch.arange(batch * pages, dtype=torch.int32, device="cuda").view(batch, pages)
        kp, vp = (t.view(batch * pages, page, heads_kv, head_dim) for t in (k, v))
        fns["attnforge paged"] = lambda: attnforge.flash_attn_with_kvcache(q, kp, vp, cache_seqlens=lens,
                                                                           block_table=table)
        fns["attnforge kvcache"] = lambda: attnforge.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens)
    else:
        fns["attnforge"] = lambda: attnforge.flash_attn_func(q, k, v, causal=True)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    for name, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
        def sdpa(backend=backend):
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=heads != heads_kv)
        fns[name] = sdpa
    return fns


def kernels_of(fn):
    """[(name, grid, block, registers, shared bytes, [durations us]), ...] and the per-step spans (us)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            fn()
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    events.sort(key=lambda e: e["ts"])
    per_step = len(events) // STEPS
    kinds, spans = {}, []
    for i in range(STEPS):
        step = events[i * per_step:(i + 1) * per_step]
        if not step:
            continue
        spans.append(step[-1]["ts"] + step[-1]["dur"] - step[0]["ts"])
        for e in step:
            a = e.get("args", {})
            key = (e["name"][:70], str(a.get("grid")), str(a.get("block")), a.get("registers per thread"),
                   a.get("shared memory"))
            kinds.setdefault(key, []).append(e["dur"])
    return kinds, spans, per_step


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else ""
    lines = ["# Decode kernels, %s, torch %s, cuDNN %s (eager, each step synchronised; durations in us, medians of %d)"
             % (torch.cuda.get_device_name(), torch.__version__, torch.backends.cudnn.version(), STEPS), "",
             "| shape | impl | kernels per step | step span us | kernel | grid | block | regs | smem B | us |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        heads, heads_kv, head_dim, batch, keys, page = shape
        label = "%d/%d d%d B%d %dk" % (heads, heads_kv, head_dim, batch, keys // 1024)
        label += " page %d" % page if page else ""
        for name, fn in step_fns(*shape).items():
            try:
                kinds, spans, per_step = kernels_of(fn)
            except Exception as e:  # a backend that refuses the shape
                lines.append("| %s | %s | - | - | %s | | | | | |" % (label, name, str(e)[:80]))
                continue
            first = True
            for (kernel, grid, block, regs, smem), durs in kinds.items():
                lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f |" % (
                    label if first else "", name if first else "", per_step if first else "",
                    "%.2f" % statistics.median(spans) if first else "", kernel, grid, block, regs, smem,
                    statistics.median(durs)))
                first = False
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
