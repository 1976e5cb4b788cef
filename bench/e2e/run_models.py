"""End-to-end GPU comparison of attnforge against torch SDPA and eager attention on real model shapes.

    python3 bench/e2e/run_models.py OUT.md [--quick]

Parts (each runs on its own; a failure is reported in the table, the others still run):
  1. Qwen3-shaped decoder, random weights from a config (no network): 8 layers, hidden 2048, 16 heads over 8
     KV heads, head_dim 128, bf16, attn_implementation "attnforge" / "sdpa" / "eager" on the same weights:
     logits agreement with sdpa, prefill time and peak extra memory at 2k and 8k tokens, decode tokens/s.
  2. Qwen3-32B-shaped layers (64/8 heads, 4 layers), batch 8, 4k-token prompts: decode tokens/s of each
     implementation and the share of greedy tokens equal to eager's.
  3. InternViT-shaped vision encoder (non-causal, hidden 1024, 16 heads, head_dim 64): many images of
     different sizes packed into one variable-length batch through flash_attn_varlen_qkvpacked_func,
     against per-image SDPA and eager: output agreement, time, peak extra memory.
Writes OUT.md (markdown) and OUT.json. Needs torch with CUDA and transformers; finds libattnforge through
ATTNFORGE_LIBRARY or the installed package. Runs in well under 3 minutes on an H100.
"""
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import attnforge  # noqa: E402
from attnforge.integrations import transformers as af_transformers  # noqa: E402

IMPLEMENTATIONS = ("attnforge", "sdpa", "eager")


def cuda_time(fn, repeats):
    """Median milliseconds of fn() over repeats (after one warm-up), by CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_extra_mib(fn):
    """Peak memory allocated during fn() above what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def relative_error(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def qwen3_part(results, quick):
    import transformers

    config = transformers.Qwen3Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                                      num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8,
                                      head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                              dtype=torch.bfloat16).eval()
    results["qwen3_best_attn_implementation"] = af_transformers.best_attn_implementation(model, "cuda")
    generator = torch.Generator(device="cpu").manual_seed(1)
    seqlens = (2048,) if quick else (2048, 8192)
    rows = []

    # Agreement: logits of the last 64 positions of a 2k prompt, against sdpa.
    ids = torch.randint(0, config.vocab_size, (1, 2048), generator=generator).cuda()
    logits = {}
    for name in IMPLEMENTATIONS:
        model.set_attn_implementation(name)
        with torch.no_grad():
            logits[name] = model(ids, logits_to_keep=64).logits
    error_ours = relative_error(logits["attnforge"], logits["sdpa"])
    error_eager = relative_error(logits["eager"], logits["sdpa"])
    top1 = (logits["attnforge"].argmax(-1) == logits["sdpa"].argmax(-1)).float().mean().item()
    results["qwen3_agreement"] = {"rel_error_attnforge_vs_sdpa": error_ours, "rel_error_eager_vs_sdpa": error_eager,
                                  "top1_agreement_attnforge_vs_sdpa": top1,
                                  "ok": error_ours <= max(2 * error_eager, 1e-2)}

    for seqlen in seqlens:
        ids = torch.randint(0, config.vocab_size, (1, seqlen), generator=generator).cuda()
        for name in IMPLEMENTATIONS:
            row = {"model": "Qwen3-shaped", "impl": name, "tokens": seqlen}
            try:
                model.set_attn_implementation(name)

                def prefill():
                    with torch.no_grad():
                        model(ids, logits_to_keep=1)
                row["prefill_ms"] = cuda_time(prefill, 2 if seqlen > 4096 else 3)
                row["peak_extra_mib"] = peak_extra_mib(prefill)
            except Exception as e:
                row["error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
                torch.cuda.empty_cache()
            rows.append(row)

    # Decode: 64 greedy tokens after a 2k prompt; tokens/s from (65-token generate - 1-token generate).
    prompt = torch.randint(0, config.vocab_size, (1, 2048), generator=generator).cuda()
    for name in IMPLEMENTATIONS:
        row = {"model": "Qwen3-shaped decode", "impl": name, "tokens": 64}
        try:
            model.set_attn_implementation(name)

            def generate(count):
                with torch.no_grad():
                    return model.generate(prompt, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                                          pad_token_id=0)
            generate(4)
            one = cuda_time(lambda: generate(1), 2)
            many = cuda_time(lambda: generate(65), 2)
            row["decode_tok_s"] = 64 / ((many - one) / 1000)
        except Exception as e:
            row["error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
        rows.append(row)
    results["qwen3"] = rows
    model = None  # free the weights before the next part
    torch.cuda.empty_cache()


def qwen3_32b_decode_part(results, quick):
    """Qwen3-32B-shaped layers (hidden 5120, 64 query heads over 8 KV heads, head_dim 128; 4 layers), batch 8,
    4k-token prompts, 64 greedy new tokens: decode tokens/s of each implementation on the same weights
    (dynamic cache, eager mode), and how many generated tokens agree with eager's."""
    import transformers

    config = transformers.Qwen3Config(vocab_size=151936, hidden_size=5120, intermediate_size=25600,
                                      num_hidden_layers=4, num_attention_heads=64, num_key_value_heads=8,
                                      head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                              dtype=torch.bfloat16).eval()
    generator = torch.Generator(device="cpu").manual_seed(2)
    batch, prompt_len, new = (2, 1024, 16) if quick else (8, 4096, 64)
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=generator).cuda()
    rows, tokens = [], {}
    for name in IMPLEMENTATIONS:
        row = {"model": "Qwen3-32B-shaped decode (4 layers, B %d, %d-token prompts)" % (batch, prompt_len),
               "impl": name, "tokens": new}
        try:
            model.set_attn_implementation(name)

            def generate(count):
                with torch.no_grad():
                    return model.generate(prompt, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                                          pad_token_id=0)
            tokens[name] = generate(new)[:, prompt_len:]
            one = cuda_time(lambda: generate(1), 2)
            many = cuda_time(lambda: generate(new + 1), 2)
            row["decode_tok_s"] = batch * new / ((many - one) / 1000)
        except Exception as e:
            row["error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
            torch.cuda.empty_cache()
        rows.append(row)
    if "eager" in tokens:
        for row in rows:
            if row["impl"] in tokens:
                row["tokens_equal_to_eager"] = (tokens[row["impl"]] == tokens["eager"]).float().mean().item()
    results["qwen3_32b_decode"] = rows
    model = None  # free the weights before the next part
    torch.cuda.empty_cache()


class VisionEncoder(torch.nn.Module):
    """InternViT-shaped pre-norm encoder blocks: qkv projection, non-causal attention, MLP."""

    def __init__(self, layers, hidden=1024, heads=16, mlp=4096):
        super().__init__()
        self.heads = heads
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            block = torch.nn.ModuleDict({
                "norm1": torch.nn.LayerNorm(hidden), "qkv": torch.nn.Linear(hidden, 3 * hidden),
                "proj": torch.nn.Linear(hidden, hidden), "norm2": torch.nn.LayerNorm(hidden),
                "fc1": torch.nn.Linear(hidden, mlp), "fc2": torch.nn.Linear(mlp, hidden)})
            self.blocks.append(block)

    def forward(self, x, cu_seqlens, max_seqlen, impl):
        """x (total_tokens, hidden): all images back to back; cu_seqlens int32 (images + 1)."""
        total, hidden = x.shape
        head_dim = hidden // self.heads
        for block in self.blocks:
            qkv = block["qkv"](block["norm1"](x)).reshape(total, 3, self.heads, head_dim)
            if impl == "attnforge":
                attn = attnforge.flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen)
            else:  # what transformers does for non-flash implementations: one image at a time
                outs = []
                for b in range(cu_seqlens.shape[0] - 1):
                    part = qkv[int(cu_seqlens[b]):int(cu_seqlens[b + 1])].permute(1, 2, 0, 3)  # (3, H, S, D)
                    q, k, v = part[0], part[1], part[2]
                    if impl == "sdpa":
                        o = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
                    else:
                        weights = torch.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(head_dim), -1)
                        o = weights.to(v.dtype) @ v
                    outs.append(o.transpose(0, 1))
                attn = torch.cat(outs)
            x = x + block["proj"](attn.reshape(total, hidden))
            x = x + block["fc2"](F.gelu(block["fc1"](block["norm2"](x))))
        return x


def vision_part(results, quick):
    torch.manual_seed(0)
    encoder = VisionEncoder(layers=4 if quick else 8).cuda().to(torch.bfloat16).eval()
    generator = torch.Generator(device="cpu").manual_seed(2)
    # Dynamic-resolution tiles: 448x448 tiles of 14x14 patches -> 1024 patches + 1 class token, plus smaller images.
    lengths = [1025] * 6 + [int(n) for n in torch.randint(64, 1025, (18,), generator=generator)]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device="cuda")
    x = torch.randn(sum(lengths), 1024, generator=generator).to("cuda", torch.bfloat16)
    outputs, rows = {}, []
    for impl in IMPLEMENTATIONS:
        row = {"model": "InternViT-shaped (%d images, %d tokens)" % (len(lengths), sum(lengths)), "impl": impl,
               "tokens": sum(lengths)}
        try:
            def run():
                with torch.no_grad():
                    outputs[impl] = encoder(x, cu, max(lengths), impl)
            row["prefill_ms"] = cuda_time(run, 3)
            row["peak_extra_mib"] = peak_extra_mib(run)
        except Exception as e:
            row["error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
        rows.append(row)
    if "attnforge" in outputs and "sdpa" in outputs:
        error_ours = relative_error(outputs["attnforge"], outputs["sdpa"])
        error_eager = relative_error(outputs["eager"], outputs["sdpa"]) if "eager" in outputs else float("nan")
        results["vision_agreement"] = {"rel_error_attnforge_vs_sdpa": error_ours,
                                       "rel_error_eager_vs_sdpa": error_eager,
                                       "ok": error_ours <= max(2 * error_eager, 1e-2)}
    results["vision"] = rows


def environment():
    env = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name()}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError as e:
        env["transformers"] = "not importable (%s)" % e
    env["attnforge"] = attnforge.__version__
    try:
        env["library"] = attnforge.library_path()
        q = torch.randn(1, 128, 16, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 128, 8, 128, device="cuda", dtype=torch.bfloat16)
        env["explain_qwen3_attention"] = attnforge.explain(q, k, k, causal=True)
    except Exception as e:
        env["library"] = "error: %s" % e
    return env


def markdown(results):
    env = results["environment"]
    lines = ["# attnforge end to end on %s" % env.get("gpu"), "",
             "%s UTC; torch %s (CUDA %s), transformers %s, attnforge %s (%s)." % (
                 env.get("date_utc"), env.get("torch"), env.get("cuda"), env.get("transformers"),
                 env.get("attnforge"), env.get("library")), ""]
    if "explain_qwen3_attention" in env:
        lines += ["Path for Qwen3 attention (explain): `%s` (%s)." % (
            env["explain_qwen3_attention"]["path"], env["explain_qwen3_attention"]["reason"]), ""]
    if "qwen3_best_attn_implementation" in results:
        lines += ["best_attn_implementation(Qwen3-shaped, cuda): `%s` (%s)." % tuple(
            results["qwen3_best_attn_implementation"]), ""]
    for key, title in (("qwen3_agreement", "Qwen3-shaped logits"), ("vision_agreement", "InternViT-shaped output")):
        if key in results:
            a = results[key]
            lines.append("%s vs sdpa: attnforge max rel. error %.3g, eager %.3g%s -> %s" % (
                title, a["rel_error_attnforge_vs_sdpa"], a["rel_error_eager_vs_sdpa"],
                (", top-1 agreement %.4f" % a["top1_agreement_attnforge_vs_sdpa"])
                if "top1_agreement_attnforge_vs_sdpa" in a else "", "OK" if a["ok"] else "MISMATCH"))
    lines += ["", "| model | impl | tokens | prefill ms | vs sdpa | vs eager | peak extra MiB | decode tok/s | note |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for part in ("qwen3", "qwen3_32b_decode", "vision"):
        rows = results.get(part, [])
        for row in rows:
            peers = {r["impl"]: r for r in rows if r["model"] == row["model"] and r["tokens"] == row["tokens"]}

            def ratio(other, key="prefill_ms"):
                if key in row and key in peers.get(other, {}) and row["impl"] != other:
                    return "%.2fx" % (peers[other][key] / row[key])
                if "decode_tok_s" in row and "decode_tok_s" in peers.get(other, {}) and row["impl"] != other:
                    return "%.2fx" % (row["decode_tok_s"] / peers[other]["decode_tok_s"])
                return ""
            lines.append("| %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
                row["model"], row["impl"], row["tokens"],
                "%.1f" % row["prefill_ms"] if "prefill_ms" in row else "",
                ratio("sdpa"), ratio("eager"),
                "%.0f" % row["peak_extra_mib"] if "peak_extra_mib" in row else "",
                "%.1f" % row["decode_tok_s"] if "decode_tok_s" in row else "",
                row.get("error", "") or ("tokens equal to eager's: %.3f" % row["tokens_equal_to_eager"]
                                         if "tokens_equal_to_eager" in row else "")))
    lines += ["", "Ratios are speed-ups (other time / this time; for decode rows, tokens/s over the other's). "
              "Peak extra MiB: peak allocation during the call "
              "above what was allocated before it (weights and inputs excluded)."]
    for failure in results.get("failures", []):
        lines += ["", "FAILED part %s:" % failure["part"], "```", failure["traceback"], "```"]
    return "\n".join(lines) + "\n"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    out_path = args[0] if args else "e2e.md"
    af_transformers.register()
    results = {"environment": environment(), "failures": []}
    for name, part in (("qwen3", qwen3_part), ("qwen3_32b_decode", qwen3_32b_decode_part), ("vision", vision_part)):
        started = time.time()
        try:
            part(results, quick)
        except Exception:
            results["failures"].append({"part": name, "traceback": traceback.format_exc()[-3000:]})
        results.setdefault("seconds", {})[name] = round(time.time() - started, 1)
        torch.cuda.empty_cache()
    text = markdown(results)
    with open(out_path, "w") as f:
        f.write(text)
    with open(os.path.splitext(out_path)[0] + ".json", "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(text)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
