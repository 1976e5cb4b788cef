"""Where a dynamic-cache decode step of generate() spends its time, attnforge beside sdpa (issue 12): the
Qwen3-32B-shaped model of run_models.py (B 8 x 16k-token prompts, 4 layers), one process.

Per implementation and round: the wall time per decode step (generate() of 40 new tokens minus generate() of 8,
over 32 steps, GPU synchronised at both ends) on a prompt length new to the process, then on the same again;
then one generate() of 12 tokens under torch.profiler: the GPU kernels by total time and the CPU-side
operators by self time, so that a step's GPU work and host work can be told apart.
Prints markdown; writes it to the path given.
Usage: python3 bench/e2e/profile_decode.py OUT.md [--prompt N]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_models  # noqa: E402  (the model and its inputs)

from attnforge.integrations import transformers as af_transformers  # noqa: E402


def generate_seconds(model, inputs, new_tokens):
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def profile(model, inputs, lines):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        generate_seconds(model, inputs, 12)
    averages = prof.key_averages()
    lines += ["", "GPU kernels by total time (12 generated tokens, prefill included):", "```",
              averages.table(sort_by="cuda_time_total", row_limit=24, max_name_column_width=70), "```",
              "", "Host operators by self CPU time:", "```",
              averages.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=70), "```"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--prompt", type=int, default=16384)
    args = parser.parse_args()
    spec = run_models.Spec(False, torch.device("cuda"))
    spec.prompt = args.prompt
    af_transformers.register()
    model, all_inputs = run_models.build_qwen3_32b(spec)
    label, inputs, _ = all_inputs["full"]
    lines = ["# Decode step profile: %s, dynamic cache" % label, "",
             "%s, torch %s" % (torch.cuda.get_device_name(), torch.__version__), "",
             "ms per decode step = (generate(40) - generate(8)) / 32, GPU synchronised. Each round uses a prompt "
             "length neither implementation has seen (new: every step's key count is new to the process, as in "
             "real use), then the same prompt again (seen: per-shape caches warm, as run_models.py's timed run).", "",
             "| round | prompt | impl | ms per step, new lengths | ms per step, seen lengths |",
             "|---|---|---|---|---|"]
    for impl in ("sdpa", "attnforge"):  # warm-up: kernel compilation, allocator pools
        model.set_attn_implementation(impl)
        generate_seconds(model, inputs, 4)
    for round_ in range(3):
        prompt = args.prompt - 24 * (round_ + 1)
        sliced = {name: value[:, :prompt] for name, value in inputs.items()}
        for impl in ("sdpa", "attnforge"):
            model.set_attn_implementation(impl)
            steps = []
            for _ in range(2):
                short, long = generate_seconds(model, sliced, 8), generate_seconds(model, sliced, 40)
                steps.append((long - short) / 32 * 1e3)
            lines.append("| %d | %d | %s | %.2f | %.2f |" % (round_, prompt, impl, steps[0], steps[1]))
            print(lines[-1], flush=True)
    for impl in ("sdpa", "attnforge"):
        model.set_attn_implementation(impl)
        lines += ["", "## %s" % impl]
        profile(model, inputs, lines)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
