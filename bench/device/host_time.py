"""Host time per decode-shaped attention call (issue: kernel families and one plan, item 6; issue
generate(), item 3).

q (1, 1, 32, 128) bf16 against a 4096-key cache of 8 KV heads. Each row is the host wall time of
200 back-to-back calls divided by 200, the GPU not waited on inside the loop (median of 15 such
loops; under torch.no_grad(), as generate() runs): attnforge's flash_attn_func, plain torch SDPA
with enable_gqa=True (no backend context manager), attnforge's transformers integration (no mask,
2D padding mask) beside transformers' sdpa_attention_forward, and the C part alone:
af_attention_run with a cached plan and arguments built once, called through ctypes (so the row
includes the ctypes call itself), and, when the path of the compiled bench/device/host_time_c.cpp
is given as the second argument, the same calls from C++ (no Python) beside one cuLaunchKernel of
an empty kernel, the floor of any launch.
Prints a markdown table and writes it to the path given.
"""
import ctypes
import datetime
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import attnforge
from attnforge import _native


ROUNDS = 3


def host_us(fn, calls=200, loops=15):
    with torch.no_grad():
        return _host_us(fn, calls, loops)


def _host_us(fn, calls, loops):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(loops):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(samples)


def c_rows(binary):
    """(name, us) rows printed by host_time_c ("name<TAB>us"; its "plan" line names the kernel)."""
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(os.environ.get("ATTNFORGE_LIBRARY", "")))
    lines = subprocess.run([binary], check=True, capture_output=True, text=True, env=env).stdout.splitlines()
    rows = []
    for line in lines:
        name, value = line.split("\t")
        rows.append(("C++: " + name, value if name == "plan" else float(value)))
    return rows


def integration_rows(query, key, value):
    """Host time of one decode-step attention call through attnforge's transformers integration, in
    transformers' layout (query (1, 32, 1, 128), key/value (1, 8, 4096, 128)), with no mask and with
    a 2D padding mask (the padded-batch path: leftpad_k/seqused_k from the mask, computed once per
    mask tensor as in a forward pass), beside transformers' own sdpa_attention_forward (no mask)."""
    from attnforge.integrations.transformers import attention_forward

    class Layer(torch.nn.Module):
        is_causal = True

    layer = Layer().eval()
    mask = torch.ones(1, key.shape[2], dtype=torch.long, device="cuda")
    mask[0, :7] = 0
    rows = [("attnforge transformers integration, no mask",
             lambda: attention_forward(layer, query, key, value, None, scaling=0.088)),
            ("attnforge transformers integration, 2D padding mask",
             lambda: attention_forward(layer, query, key, value, mask, scaling=0.088))]
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError:
        return rows
    layer.config = type("Config", (), {"_attn_implementation": "sdpa"})()
    layer.num_key_value_groups = query.shape[1] // key.shape[1]
    return rows + [("transformers sdpa_attention_forward, no mask",
                    lambda: sdpa_attention_forward(layer, query, key, value, None, scaling=0.088))]


def main(path, c_binary=None):
    q = torch.randn(1, 1, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, 4096, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    out = torch.empty_like(q)
    plan = _native.Plan(q, k, v, out, backend="cuda")
    args = _native._build_args(q, k, v, out, backend="cuda")
    lib = _native.library()
    run = lib.af_attention_run
    handle, args_ref = plan._handle, ctypes.byref(args)

    def c_run():
        run(handle, args_ref, None, 0)

    # The same call without key splits (one launch, no workspace), and with a caller-owned workspace
    # (two launches, no allocation): where the C part's time goes.
    plan_1 = _native.Plan(q, k, v, out, backend="cuda", num_splits=1)
    args_1 = _native._build_args(q, k, v, out, backend="cuda", num_splits=1)
    workspace = torch.empty(plan.workspace_size(), dtype=torch.uint8, device="cuda")
    ws_pointer, ws_bytes = ctypes.c_void_p(workspace.data_ptr()), ctypes.c_size_t(workspace.numel())

    calls = [
        ("attnforge.flash_attn_func", lambda: attnforge.flash_attn_func(q, k, v)),
        ("torch SDPA, enable_gqa=True (plain call)",
         lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)),
    ] + integration_rows(qt, kt, vt) + [
        ("af_attention_run, cached plan (ctypes call included)", c_run),
        ("af_attention_run, cached plan, caller-owned workspace", lambda: run(handle, args_ref, ws_pointer, ws_bytes)),
        ("af_attention_run, cached plan, num_splits=1 (one launch)",
         lambda: run(plan_1._handle, ctypes.byref(args_1), None, 0)),
        ("af_attention_forward (plans every call; ctypes included)", lambda: lib.af_attention_forward(args_ref)),
    ]
    # Three rounds over all rows, interleaved, so that a slow stretch of the machine shows as spread
    # across one row's rounds instead of biasing one row.
    samples = {name: [] for name, _ in calls}
    for _ in range(ROUNDS):
        for name, fn in calls:
            if isinstance(samples[name], list):
                try:
                    samples[name].append(host_us(fn))
                except Exception as e:  # e.g. a transformers version whose function wants more of the module
                    samples[name] = "not timed (%s)" % e
    rows = [(name, "%.1f" % statistics.median(value) if isinstance(value, list) else value,
             " / ".join("%.1f" % x for x in value) if isinstance(value, list) else "") for name, value in
            samples.items()]
    if c_binary:
        rows += [(name, value if isinstance(value, str) else "%.1f" % value, "") for name, value in c_rows(c_binary)]
    text = ["# Host time per decode-shaped call", "",
            "%s, %s, torch %s. q (1, 1, 32, 128) bf16, 4096 cached keys, 8 KV heads; host wall time of 200 calls "
            "without waiting for the GPU, median of 15 loops, under torch.no_grad(); Python rows: median of %d "
            "rounds over all rows (bench/device/host_time.py). Kernel: %s; workspace %d bytes." % (
                datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                torch.cuda.get_device_name(), torch.__version__, ROUNDS, plan.describe(), plan.workspace_size()),
            "", "| call | host us per call | rounds |", "|---|---|---|"]
    text += ["| %s | %s | %s |" % row for row in rows]
    result = "\n".join(text) + "\n"
    print(result)
    with open(path, "w") as f:
        f.write(result)


if __name__ == "__main__":
    main(*sys.argv[1:3])
