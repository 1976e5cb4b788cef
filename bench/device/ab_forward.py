"""A/B of the forward (prefill) kernel between two builds of libattnforge.so in one process.

Usage: ab_forward.py OLD_LIBRARY NEW_LIBRARY OUTPUT.md
Both libraries run the same inputs (bf16, B*S = 16384 tokens, H*D = 2048); rounds alternate
old and new so that a transient slowdown hits both; each keeps the best of its per-round medians
of CUDA-event timings. Outputs of the two builds are compared first.
"""
import importlib.util
import os
import sys

import torch

from common import attention_flops, time_ms

HERE = os.path.dirname(os.path.abspath(__file__))


def load(library, name):
    os.environ["ATTNFORGE_LIBRARY"] = library
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "..", "..", "python", "attnforge",
                                                                      "_native.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.library()
    return module


def main(old_path, new_path, output):
    old, new = load(old_path, "native_old"), load(new_path, "native_new")
    lines = ["# Forward A/B: %s vs %s" % (old_path, new_path), "",
             "%s, torch %s; TFLOP/s (best of 3 rounds of median-of-10 CUDA-event timings)." % (
                 torch.cuda.get_device_name(), torch.__version__), "",
             "| D | causal | S | old TFLOP/s | new TFLOP/s | new / old | max diff |", "|---|---|---|---|---|---|---|"]
    for d in (64, 128, 256):
        heads = 2048 // d
        for causal in (False, True):
            for s in (1024, 4096, 16384):
                batch = 16384 // s
                q = torch.randn(batch, s, heads, d, dtype=torch.bfloat16, device="cuda")
                k, v = torch.randn_like(q), torch.randn_like(q)
                outs = {"old": torch.empty_like(q), "new": torch.empty_like(q)}
                fns = {"old": lambda: old.attention_forward(q, k, v, outs["old"], causal=causal, backend="cuda"),
                       "new": lambda: new.attention_forward(q, k, v, outs["new"], causal=causal, backend="cuda")}
                fns["old"]()
                fns["new"]()
                diff = (outs["old"].float() - outs["new"].float()).abs().max().item()
                best = {"old": float("inf"), "new": float("inf")}
                for _ in range(3):
                    for name in ("old", "new"):
                        best[name] = min(best[name], time_ms(fns[name], warmup=3, repeats=10))
                flops = attention_flops(batch, heads, s, s, d, causal)
                tf = {name: flops / (best[name] * 1e-3) / 1e12 for name in best}
                lines.append("| %d | %s | %d | %.0f | %.0f | %.3f | %.1e |" % (d, causal, s, tf["old"], tf["new"],
                                                                          tf["new"] / tf["old"], diff))
                print(lines[-1], flush=True)
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
