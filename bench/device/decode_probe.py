"""Decode-shaped calls (one query row): kernel time and per-call wall time of attnforge and SDPA."""
import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, "bench/device"); sys.path.insert(0, "python")
from common import native
af = native()
from torch.nn.attention import SDPBackend, sdpa_kernel
import attnforge.flash_attn_interface as fai
def cuda_ms(fn, n=50):
    for _ in range(5): fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(n): fn()
    e.record(); e.synchronize(); return s.elapsed_time(e) / n * 1e3
def safe(measure, fn):
    try:
        return measure(fn)
    except RuntimeError:
        return float("nan")
def wall_us(fn, n=200):
    for _ in range(5): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    w = (time.perf_counter() - t) / n * 1e6; torch.cuda.synchronize(); return w
for (b, sk, h, hk, d) in [(1, 2049, 16, 8, 128), (1, 8192, 32, 8, 128), (8, 4096, 32, 8, 128), (1, 1024, 16, 16, 128)]:
    q = torch.randn(b, 1, h, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(b, sk, hk, d, dtype=torch.bfloat16, device="cuda"); v = torch.randn_like(k)
    out = torch.empty_like(q)
    native_fn = lambda: af.attention_forward(q, k, v, out, causal=True, backend="cuda")
    api_fn = lambda: fai.flash_attn_func(q, k, v, causal=True)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    def sd(backend):
        def f():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=False, enable_gqa=True)
        return f
    print("b%d sk%d h%d/%d: native kernel %.1f us (wall %.1f); flash_attn_func wall %.1f us; sdpa flash %.1f us (wall %.1f); cudnn %.1f us; efficient %.1f" % (
        b, sk, h, hk, cuda_ms(native_fn), wall_us(native_fn), wall_us(api_fn), safe(cuda_ms, sd(SDPBackend.FLASH_ATTENTION)),
        safe(wall_us, sd(SDPBackend.FLASH_ATTENTION)), safe(cuda_ms, sd(SDPBackend.CUDNN_ATTENTION)), safe(cuda_ms, sd(SDPBackend.EFFICIENT_ATTENTION))))
