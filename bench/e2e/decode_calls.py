"""Where a decode step's time goes: a Qwen3-shaped model (8 layers, hidden 2048, 16/8 heads) generating 33 tokens
after a 2k prompt, with attnforge's attention function wrapped to record the host time of each
call (no synchronisation inside), beside sdpa; prints tokens/s and per-call host-time percentiles."""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import transformers  # noqa: E402

from attnforge.integrations import transformers as af_transformers  # noqa: E402

af_transformers.register()
host_us = []
inner = af_transformers.attention_forward


def timed(*args, **kwargs):
    start = time.perf_counter()
    result = inner(*args, **kwargs)
    host_us.append((time.perf_counter() - start) * 1e6)
    return result


transformers.AttentionInterface.register("attnforge", timed)
config = transformers.Qwen3Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=8,
                                  num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                  max_position_embeddings=40960, tie_word_embeddings=True)
torch.manual_seed(0)
with torch.device("cuda"):
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                          dtype=torch.bfloat16).eval()
prompt = torch.randint(0, config.vocab_size, (1, 2048)).cuda()
for name in ("sdpa", "attnforge", "sdpa", "attnforge"):
    model.set_attn_implementation(name)
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        host_us.clear()
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=33, min_new_tokens=33, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    line = "%-9s 33 tokens in %.1f ms (%.1f tokens/s incl. prefill)" % (name, seconds * 1e3, 33 / seconds)
    if host_us:
        decode = sorted(host_us[8:])  # the first 8 calls are the prefill
        line += "; attention host time per decode call: median %.1f us, p90 %.1f us, max %.1f us, total %.1f ms" % (
            statistics.median(decode), decode[int(0.9 * len(decode))], decode[-1], sum(decode) / 1e3)
    print(line)
