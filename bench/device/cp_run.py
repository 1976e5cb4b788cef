"""Context parallelism and tensor parallelism on one multi-GPU host (issue 18, item 4).

    NCCL_NVLS_ENABLE=0 PYTHONPATH=python ATTNFORGE_LIBRARY=build/libattnforge.so \
        torchrun --nproc-per-node 2 bench/device/cp_run.py OUT.md [--lengths=32768,65536,...] [--quick] [--cpu]

Parts (each runs even if an earlier one failed; failures are written to OUT.md with their traceback):
  1. correctness on NCCL: attnforge.distributed's ring attention (padded and varlen, causal or not,
     GQA, bf16/fp16) against the float64 attention of the whole sequence; the budget is twice the
     error of single-GPU attnforge on the same inputs plus the bf16 floor (1e-3); and the ring
     backward (fp32) against float64 autograd (budget: twice the same math's fp32 error + 1e-6).
  2. prefill of one sequence with Qwen3-32B's attention shape (64 query heads, 8 K/V heads, head dim
     128, bf16, causal) for 32k..512k tokens: time and peak memory per GPU on 1 GPU (flash_attn_func,
     rank 0 alone) and on all GPUs (ring_flash_attn_func, zigzag), and the parallel efficiency
     t(1 GPU) / (GPUs * t(ring)); then 640k tokens with every process capped at 16 GiB of GPU memory
     (one GPU needs about 22 GiB for it, the ring about 14 per GPU on 2 GPUs): a length one GPU
     cannot hold, run by the ring (one call each).
  3. tensor parallelism in transformers: a tiny random-weight Qwen3 loaded with tp_plan="auto" and
     attn_implementation="attnforge" against the same weights on one GPU (logits and greedy tokens),
     next to sdpa under the same tensor parallelism as the baseline, in bf16 and fp32.
--quick times 32k and 128k only; --cpu is a smoke run of the whole script on CPU tensors over gloo
(with e.g. --lengths=512,1024; the correctness sequences shrink 8x), to catch a broken script before
the GPUs are spent on it. OUT.md (and OUT.json) are written by rank 0. NCCL_NVLS_ENABLE=0 is set here
too (NVLink multicast stays off on the lent machines).
"""
import datetime
import json
import math
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_REPO, "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnforge  # noqa: E402
from attnforge import distributed as cp  # noqa: E402
from common import reference  # noqa: E402

RANK = WORLD = 0
DEVICE = None


def log(message):
    if RANK == 0:
        print(message, flush=True)


def max_over_ranks(value):
    t = torch.tensor([float(value)], device=DEVICE)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def zigzag_rows(start, length):
    cut = [length * c // (2 * WORLD) for c in range(2 * WORLD + 1)]
    rows = []
    for c in (RANK, 2 * WORLD - 1 - RANK):
        rows.extend(range(start + cut[c], start + cut[c + 1]))
    return rows


def max_error(ours, expected):
    return (ours.double() - expected.to(ours.dtype).double()).abs().max().item()


def correctness_part(results):
    rows_out = []
    cases = [("padded causal GQA bf16", False, True, torch.bfloat16, 8, 2, 128, [4096]),
             ("padded non-causal MQA bf16", False, False, torch.bfloat16, 8, 1, 64, [2048]),
             ("padded causal fp16 d256", False, True, torch.float16, 4, 4, 256, [1024]),
             ("padded causal Qwen3-32B heads bf16 (8 head chunks)", False, True, torch.bfloat16, 64, 8, 128, [2048]),
             ("varlen causal GQA bf16, uneven lengths", True, True, torch.bfloat16, 8, 2, 128, [1500, 7, 0, 2600, 33]),
             ("varlen non-causal bf16", True, False, torch.bfloat16, 4, 2, 64, [999, 1, 2048])]
    shrink = 1 if DEVICE.type == "cuda" else 8
    for name, varlen, causal, dtype, heads, kv_heads, head_dim, lengths in cases:
        lengths = [n // shrink for n in lengths]
        if not varlen:
            lengths = [lengths[0] - lengths[0] % (2 * WORLD)]
        total = sum(lengths)
        generator = torch.Generator(device=DEVICE).manual_seed(7)
        q = torch.randn(total, heads, head_dim, device=DEVICE, generator=generator).to(dtype)
        k = torch.randn(total, kv_heads, head_dim, device=DEVICE, generator=generator).to(dtype)
        v = torch.randn(total, kv_heads, head_dim, device=DEVICE, generator=generator).to(dtype)
        cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32, device=DEVICE)
        rows = []
        for start, n in zip(cu[:-1].tolist(), lengths):
            rows.extend(zigzag_rows(start, n))
        if varlen:
            shard = [cp.zigzag_varlen_shard(x, cu, WORLD, RANK)[0] for x in (q, k, v)]
            ring = cp.ring_flash_attn_varlen_func(*shard, cu, causal=causal)
            single = attnforge.flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=causal)
        else:
            shard = [cp.zigzag_shard(x.unsqueeze(0), WORLD, RANK) for x in (q, k, v)]
            ring = cp.ring_flash_attn_func(*shard, causal=causal)[0]
            single = attnforge.flash_attn_func(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), causal=causal)[0]
        expected = torch.cat([reference(q[s:e], k[s:e], v[s:e], causal=causal)[0]
                              for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
        index = torch.tensor(rows, dtype=torch.long, device=DEVICE)
        ring_err = max_over_ranks(max_error(ring, expected[index]))
        single_err = max_error(single, expected)
        nan = max_over_ranks(float(torch.isnan(ring).any()))
        budget = 2 * single_err + 1e-3
        ok = ring_err <= budget and not nan
        rows_out.append({"case": name, "lengths": lengths, "heads": heads, "kv_heads": kv_heads,
                         "head_dim": head_dim, "ring_error": ring_err, "single_gpu_error": single_err,
                         "budget": budget, "nan": bool(nan), "pass": ok})
        log("correctness %-42s ring %.3g single %.3g budget %.3g %s" % (name, ring_err, single_err, budget,
                                                                      "PASS" if ok else "FAIL"))
        del q, k, v, expected
        empty_cache()
    rows_out.append(backward_check())
    results["correctness"] = rows_out


def math_attention(q, k, v, causal, dtype):
    """Plain attention of (B, S, H, D) q and (B, S, Hk, D) k/v in dtype, for autograd."""
    groups = q.shape[2] // k.shape[2]
    q, k, v = q.to(dtype), k.to(dtype).repeat_interleave(groups, 2), v.to(dtype).repeat_interleave(groups, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), -math.inf)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)


def backward_check():
    """The ring backward (fp32, causal, GQA) against float64 autograd of the whole sequence; budget 2 x the
    error of the same math in fp32 plus 1e-6."""
    seqlen = 2048 if DEVICE.type == "cuda" else 256
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    q, g = (torch.randn(1, seqlen, 8, 64, device=DEVICE, generator=generator) for _ in range(2))
    k, v = (torch.randn(1, seqlen, 2, 64, device=DEVICE, generator=generator) for _ in range(2))
    local = [cp.zigzag_shard(x, WORLD, RANK).requires_grad_() for x in (q, k, v)]
    with torch.enable_grad():
        (cp.ring_flash_attn_func(*local, causal=True) * cp.zigzag_shard(g, WORLD, RANK)).sum().backward()
        grads = {}
        for dtype in (torch.float64, torch.float32):
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            (math_attention(*leaves, True, dtype) * g.to(dtype)).sum().backward()
            grads[dtype] = [x.grad for x in leaves]
    index = torch.tensor(zigzag_rows(0, seqlen), dtype=torch.long, device=DEVICE)
    ring_err = max_over_ranks(max(max_error(x.grad, r[:, index]) for x, r in zip(local, grads[torch.float64])))
    math_err = max(max_error(x, r) for x, r in zip(grads[torch.float32], grads[torch.float64]))
    budget = 2 * math_err + 1e-6
    ok = ring_err <= budget
    log("correctness %-42s ring %.3g fp32 math %.3g budget %.3g %s" % ("backward causal GQA fp32", ring_err, math_err,
                                                                     budget, "PASS" if ok else "FAIL"))
    return {"case": "backward causal GQA fp32 (dq, dk, dv)", "lengths": [seqlen], "heads": 8, "kv_heads": 2,
            "head_dim": 64, "ring_error": ring_err, "single_gpu_error": math_err, "budget": budget, "nan": False,
            "pass": ok}


def timed(fn, reps):
    """(median seconds per call, peak bytes allocated during the calls above those allocated before; 0
    on CPU). Calls of seconds: host time around a synchronize is as good as events here."""
    cuda = DEVICE.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], (torch.cuda.max_memory_allocated() - base) if cuda else 0


def allocated():
    return torch.cuda.memory_allocated() if DEVICE.type == "cuda" else 0


def empty_cache():
    if DEVICE.type == "cuda":
        empty_cache()


def prefill_part(results, lengths):
    heads, kv_heads, head_dim = 64, 8, 128
    rows = []
    for seqlen in lengths:
        row = {"seqlen": seqlen, "gpus": WORLD}
        reps = 3 if seqlen <= 131072 else 2
        flops = 4.0 * seqlen * seqlen * heads * head_dim / 2
        # One GPU: rank 0 alone holds the whole sequence (inputs and output counted in its memory).
        if RANK == 0:
            try:
                q = torch.randn(1, seqlen, heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
                k = torch.randn(1, seqlen, kv_heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
                v = torch.randn_like(k)
                inputs = allocated()
                t1, extra = timed(lambda: attnforge.flash_attn_func(q, k, v, causal=True), reps)
                row.update(t1_s=t1, mem1_gib=(inputs + extra) / 2 ** 30, tflops1=flops / t1 / 1e12)
            except torch.cuda.OutOfMemoryError:  # the point of context parallelism: record it
                row["t1_s"] = "OOM"
            q = k = v = None
            empty_cache()
        dist.barrier()
        local = seqlen // WORLD
        q = torch.randn(1, local, heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
        k = torch.randn(1, local, kv_heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        inputs = allocated()
        dist.barrier()
        t_ring, extra = timed(lambda: cp.ring_flash_attn_func(q, k, v, causal=True), reps)
        t_ring = max_over_ranks(t_ring)
        mem = max_over_ranks(inputs + extra)
        row.update(t_ring_s=t_ring, mem_ring_gib=mem / 2 ** 30, tflops_ring_total=flops / t_ring / 1e12)
        if isinstance(row.get("t1_s"), float):
            row["efficiency"] = row["t1_s"] / (WORLD * t_ring)
        q = k = v = None
        empty_cache()
        rows.append(row)
        log("prefill %s" % json.dumps(row))
    results["prefill"] = rows


def capacity_part(results, cap_gib, seqlen):
    """A length one GPU cannot hold: every process capped at cap_gib of GPU memory (the caching
    allocator's limit), the whole sequence on rank 0 alone, then the ring on all GPUs (one call each)."""
    heads, kv_heads, head_dim = 64, 8, 128
    total = torch.cuda.get_device_properties(DEVICE).total_memory
    empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap_gib * 2 ** 30 / total, DEVICE)
    row = {"seqlen": seqlen, "cap_gib": cap_gib, "gpus": WORLD}
    try:
        if RANK == 0:
            try:
                q = torch.randn(1, seqlen, heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
                k = torch.randn(1, seqlen, kv_heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
                v = torch.randn_like(k)
                row["t1_s"] = timed(lambda: attnforge.flash_attn_func(q, k, v, causal=True), 0)[0]
                row["one_gpu"] = "ran"
            except torch.cuda.OutOfMemoryError:
                row["one_gpu"] = "out of memory"
            q = k = v = None
            empty_cache()
        dist.barrier()
        local = seqlen // WORLD
        q = torch.randn(1, local, heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
        k = torch.randn(1, local, kv_heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:  # every rank goes on to the same collectives whatever happens here
            cp.ring_flash_attn_func(q, k, v, causal=True)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        except torch.cuda.OutOfMemoryError:
            seconds = math.inf
        q = k = v = None
        row["t_ring_s"] = max_over_ranks(seconds)
        row["peak_ring_gib"] = max_over_ranks(torch.cuda.max_memory_allocated()) / 2 ** 30
    finally:
        empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, DEVICE)
    log("capacity %s" % json.dumps(row))
    results["capacity"] = row


def tp_part(results):
    import transformers
    from transformers import AutoModelForCausalLM
    from attnforge.integrations import transformers as af_transformers

    af_transformers.register()
    directory = os.path.join(tempfile.gettempdir(), "attnforge-cp-run-tiny-qwen3")
    if RANK == 0:
        config = transformers.Qwen3Config(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                                          num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                                          max_position_embeddings=1024)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    dist.barrier()
    ids = torch.randint(0, 1024, (2, 200), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        outputs = {}
        for impl in ("sdpa", "attnforge"):
            for tp in (False, True):
                if tp:
                    model = AutoModelForCausalLM.from_pretrained(directory, tp_plan="auto", attn_implementation=impl,
                                                                 dtype=dtype)
                else:
                    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation=impl,
                                                                 dtype=dtype).to(DEVICE)
                model.eval()
                with torch.no_grad():
                    logits = model(ids).logits.float()
                    tokens = model.generate(ids[:, :32], max_new_tokens=24, do_sample=False)
                outputs[(impl, tp)] = (logits, tokens)
                del model
                empty_cache()
        for impl in ("sdpa", "attnforge"):
            single_logits, single_tokens = outputs[(impl, False)]
            reference_logits = outputs[("sdpa", False)][0]
            tp_logits, tp_tokens = outputs[(impl, True)]
            scale = reference_logits.abs().max().item()
            rows.append({
                "dtype": str(dtype).replace("torch.", ""), "impl": impl,
                "tp_vs_one_gpu_same_impl_rel_err": (tp_logits - single_logits).abs().max().item() / scale,
                "tp_vs_one_gpu_sdpa_rel_err": (tp_logits - reference_logits).abs().max().item() / scale,
                "top1_agreement_vs_one_gpu_sdpa":
                    (tp_logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item(),
                # New tokens only (the prompt is the first 32 of each row).
                "greedy_tokens_equal_to_one_gpu_same_impl":
                    (tp_tokens[:, 32:] == single_tokens[:, 32:]).float().mean().item()})
            log("tp %s" % json.dumps(rows[-1]))
    by = {(r["dtype"], r["impl"]): r for r in rows}
    for dtype in ("bfloat16", "float32"):
        ours, sdpa = by[(dtype, "attnforge")], by[(dtype, "sdpa")]
        ours["pass"] = ours["tp_vs_one_gpu_sdpa_rel_err"] <= 2 * sdpa["tp_vs_one_gpu_sdpa_rel_err"] + 1e-4 and (
            dtype != "float32" or ours["greedy_tokens_equal_to_one_gpu_same_impl"] == 1.0)
    results["tensor_parallel"] = rows


def environment():
    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpus": WORLD, "torch": torch.__version__,
           "cuda": torch.version.cuda, "attnforge": attnforge.__version__, "library": attnforge.library_path(),
           "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE")}
    if DEVICE.type == "cuda":
        env.update(gpu=torch.cuda.get_device_properties(DEVICE).name,
                   nccl=".".join(map(str, torch.cuda.nccl.version())))
    else:
        env.update(gpu="CPU (gloo smoke run)", nccl="none")
    return env


def markdown(results):
    env = results["environment"]
    lines = ["# Context and tensor parallelism, %d x %s (%s)" % (env["gpus"], env["gpu"], env["date"]), "",
             "torch %s, CUDA %s, NCCL %s, attnforge %s; produced by `bench/device/cp_run.py`." % (
                 env["torch"], env["cuda"], env["nccl"], env["attnforge"]), "",
             "## Correctness on NCCL (ring vs float64; budget 2 x single-GPU error + 1e-3)", "",
             "| case | lengths | H/Hk/D | ring error | 1-GPU error | budget | result |",
             "|---|---|---|---|---|---|---|"]
    for r in results.get("correctness", []):
        lines.append("| %s | %s | %d/%d/%d | %.3g | %.3g | %.3g | %s |" % (
            r["case"], r["lengths"], r["heads"], r["kv_heads"], r["head_dim"], r["ring_error"],
            r["single_gpu_error"], r["budget"], "pass" if r["pass"] else "FAIL"))
    lines += ["", "## Prefill attention, Qwen3-32B heads (64 q, 8 kv, d128), bf16, causal, batch 1", "",
              "| tokens | 1 GPU s | 1 GPU TFLOP/s | 1 GPU GiB | %d GPUs s | GiB per GPU | efficiency |" % env["gpus"],
              "|---|---|---|---|---|---|---|"]
    for r in results.get("prefill", []):
        one = r.get("t1_s")
        lines.append("| %d | %s | %s | %s | %.3f | %.1f | %s |" % (
            r["seqlen"], "%.3f" % one if isinstance(one, float) else one,
            "%.0f" % r["tflops1"] if "tflops1" in r else "", "%.1f" % r["mem1_gib"] if "mem1_gib" in r else "",
            r["t_ring_s"], r["mem_ring_gib"], "%.2f" % r["efficiency"] if "efficiency" in r else ""))
    lines += ["", "Efficiency = t(1 GPU) / (GPUs x t(ring)); GiB = inputs + output + peak temporaries on that GPU.",
              "", "## Tensor parallelism in transformers (tiny random Qwen3, tp_plan=\"auto\")", "",
              "| dtype | attention | rel. err vs 1 GPU same impl | rel. err vs 1 GPU sdpa | top-1 vs 1 GPU sdpa | "
              "greedy tokens equal | result |", "|---|---|---|---|---|---|---|"]
    for r in results.get("tensor_parallel", []):
        lines.append("| %s | %s | %.4g | %.4g | %.3f | %.3f | %s |" % (
            r["dtype"], r["impl"], r["tp_vs_one_gpu_same_impl_rel_err"], r["tp_vs_one_gpu_sdpa_rel_err"],
            r["top1_agreement_vs_one_gpu_sdpa"], r["greedy_tokens_equal_to_one_gpu_same_impl"],
            ("pass" if r["pass"] else "FAIL") if "pass" in r else "baseline"))
    if "capacity" in results:
        c = results["capacity"]
        lines += ["", "## A length one GPU cannot hold (every process capped at %d GiB of GPU memory)" % c["cap_gib"],
                  "",
                  "%d tokens, same shape as above: one GPU: %s; ring on %d GPUs: %.2f s (inf: out of memory), "
                  "peak %.1f GiB per GPU." % (
                      c["seqlen"], c.get("one_gpu"), c["gpus"], c["t_ring_s"], c["peak_ring_gib"])]
    for failure in results["failures"]:
        lines += ["", "FAILED part %s:" % failure["part"], "```", failure["traceback"], "```"]
    return "\n".join(lines) + "\n"


def main():
    global RANK, WORLD, DEVICE
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out_path = args[0] if args else "cp_run.md"
    quick = "--quick" in sys.argv
    lengths = [32768, 65536, 131072, 262144, 524288]
    for a in sys.argv[1:]:
        if a.startswith("--lengths="):
            lengths = [int(x) for x in a.split("=", 1)[1].split(",")]
    if quick:
        lengths = [32768, 131072]
    local_rank = int(os.environ["LOCAL_RANK"])
    # A rank that fails inside a collective makes the others time out (and exit) instead of hanging.
    timeout = datetime.timedelta(minutes=5)
    if "--cpu" in sys.argv:  # smoke run of this script on CPU tensors over gloo, before a GPU run
        DEVICE = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    else:
        torch.cuda.set_device(local_rank)
        DEVICE = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", timeout=timeout)
    RANK, WORLD = dist.get_rank(), dist.get_world_size()
    results = {"environment": environment(), "failures": []}
    parts = (("correctness", lambda: correctness_part(results)),
             ("prefill", lambda: prefill_part(results, lengths)),
             ("tensor_parallel", lambda: tp_part(results)))
    if DEVICE.type == "cuda":
        parts = parts[:2] + (("capacity", lambda: capacity_part(results, 16, 655360)),) + parts[2:]
    for name, part in parts:
        started = time.time()
        try:
            with torch.no_grad():
                part()
        except Exception:
            results["failures"].append({"part": name, "rank": RANK, "traceback": traceback.format_exc()[-3000:]})
            log(results["failures"][-1]["traceback"])
        results.setdefault("seconds", {})[name] = round(time.time() - started, 1)
        empty_cache()
        if RANK == 0:  # after every part: a later hang or kill keeps what was measured
            with open(out_path, "w") as f:
                f.write(markdown(results))
            with open(os.path.splitext(out_path)[0] + ".json", "w") as f:
                json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
