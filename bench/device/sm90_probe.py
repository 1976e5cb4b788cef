"""Stage 1 of sm90_check.py: the fwd_sm90 family's building blocks on the GPU, one at a time.

Compiles bench/device/sm90_probe.cuh after the family's own helpers (src/kernels/common/ptx.cuh,
src/kernels/fwd_sm90/sm90_ptx.cuh) with NVRTC for sm_90a, loads it with the CUDA driver and runs,
each against torch on the same GPU:
  tma        one (128 rows, 64 columns) TMA box with the 128-byte swizzle, rows past the tensor zeros;
  wgmma_ss   S (64 x 128) = Q (64 x 64) K (128 x 64)^T, both from shared memory (m64n128k16);
  wgmma_rs   O (64 x 64) = P (64 x 128) V (128 x 64), P from registers, V transposed (m64n64k16);
  wgmma_rs_n128  O (64 x 128) = P (64 x 128) V (128 x 128), V as two 64-column atoms (m64n128k16,
             the descriptor's leading offset between them: fwd_sm90's P V at d128 and d256).
Prints one line per probe (ok / FAIL with the error) and exits 1 if any failed. ctypes only: NVRTC
from torch's nvidia wheels (or $ATTNFORGE_NVRTC), libcuda.so.1, tensors from torch.
"""
import ctypes
import glob
import os
import re
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = ["src/kernels/common/ptx.cuh", "src/kernels/fwd_sm90/sm90_ptx.cuh", "bench/device/sm90_probe.cuh"]


def _nvrtc():
    names = [os.environ.get("ATTNFORGE_NVRTC", "")]
    for entry in sys.path:
        if entry and os.path.isabs(entry):
            for sub in ("cu13/lib", "cuda_nvrtc/lib", "cu12/lib"):
                names += sorted(glob.glob(os.path.join(entry, "nvidia", sub, "libnvrtc.so*")), reverse=True)
    names += ["libnvrtc.so.13", "libnvrtc.so.12", "/usr/local/cuda/lib64/libnvrtc.so"]
    for name in names:
        if name:
            try:
                return ctypes.CDLL(name), name
            except OSError:
                continue
    raise RuntimeError("no NVRTC found (set ATTNFORGE_NVRTC)")


def compile_probes(bf16):
    """cubin bytes of the probe module for sm_90a, and the ptxas log."""
    nvrtc, path = _nvrtc()
    source = "".join(open(os.path.join(REPO, f)).read() for f in SOURCES).encode()
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"sm90_probe.cu", 0, None, None) == 0
    options = [b"-arch=sm_90a", b"--std=c++17", b"-default-device", b"--ptxas-options=-v",
               b"-DAF_BF16=" + (b"1" if bf16 else b"0")]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    if status != 0:
        raise RuntimeError("NVRTC (%s) failed: %s" % (path, log.value.decode(errors="replace")[-2000:]))
    nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(program, cubin)
    return cubin.raw, log.value.decode(errors="replace")


class Driver:
    """The few libcuda calls the probes need, in torch's current (primary) context."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.keep = []  # buffers behind the tensor maps
        torch.zeros(1, device="cuda")  # torch makes its primary context current on this thread

    def check(self, result, what):
        if result != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(text))
            raise RuntimeError("%s: CUDA error %d (%s)" % (what, result, text.value.decode() if text.value else "?"))

    def load(self, cubin):
        module = ctypes.c_void_p()
        self.check(self.lib.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
        return module

    def function(self, module, name, smem):
        f = ctypes.c_void_p()
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(f), module, name.encode()), "cuModuleGetFunction " + name)
        self.check(self.lib.cuFuncSetAttribute(f, 8, smem), "cuFuncSetAttribute")  # max dynamic shared memory
        return f

    def tensor_map(self, t, box_rows):
        """Rank-4 map of a (B, S, H, D) 16-bit tensor, (64, box_rows) boxes, 128-byte swizzle (as launch.cpp)."""
        b, s, h, d = t.shape
        # cuTensorMapEncodeTiled wants the 128-byte map 64-byte aligned: place it in a larger buffer.
        raw = (ctypes.c_ubyte * 192)()
        self.keep.append(raw)
        mapping = (ctypes.c_ulonglong * 16).from_address((ctypes.addressof(raw) + 63) & ~63)
        dims = (ctypes.c_ulonglong * 4)(d, s, h, b)
        strides = (ctypes.c_ulonglong * 3)(t.stride(1) * 2, t.stride(2) * 2, t.stride(0) * 2)
        box = (ctypes.c_uint * 4)(64, box_rows, 1, 1)
        ones = (ctypes.c_uint * 4)(1, 1, 1, 1)
        dtype = 9 if t.dtype == torch.bfloat16 else 6
        self.check(self.lib.cuTensorMapEncodeTiled(mapping, dtype, 4, ctypes.c_void_p(t.data_ptr()), dims, strides,
                                                   box, ones, 0, 3, 3, 0), "cuTensorMapEncodeTiled")
        return mapping

    def launch(self, f, smem, *args):
        """One CTA of 128 threads; args are ctypes objects (c_int, c_void_p, a tensor map array)."""
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        self.check(self.lib.cuLaunchKernel(f, 1, 1, 1, 128, 1, 1, smem, None, pointers, None), "cuLaunchKernel")
        self.check(self.lib.cuCtxSynchronize(), "kernel")


def unswizzle(raw):
    """(128, 64) tile from the 128-byte-swizzled shared-memory words: element (r, c) sits at word
    r * 64 + ((c // 8) ^ (r % 8)) * 8 + c % 8."""
    r = torch.arange(128, device=raw.device).view(-1, 1)
    c = torch.arange(64, device=raw.device).view(1, -1)
    return raw[(r * 64 + ((c // 8) ^ (r % 8)) * 8 + c % 8).view(-1)].view(128, 64)


def run_probes(dtype):
    """[(name, ok, detail)] for one dtype."""
    results = []
    driver = Driver()
    cubin, log = compile_probes(dtype == torch.bfloat16)
    spills = [line.strip() for line in log.splitlines() if re.search(r"[1-9][0-9]* bytes spill", line)]
    module = driver.load(cubin)
    smem = 1024 + 192 * 128
    gen = torch.Generator(device="cuda").manual_seed(0)

    def attempt(name, body):
        try:
            ok, detail = body()
        except Exception as e:  # a probe that faults is reported, the next one still runs
            ok, detail = False, "%s: %s" % (type(e).__name__, e)
        results.append((name, ok, detail))

    def tma():
        x = torch.randn(1, 200, 1, 64, device="cuda", dtype=dtype, generator=gen)
        raw = torch.zeros(128 * 64, device="cuda", dtype=torch.int16)
        row0 = ctypes.c_int(100)
        driver.launch(driver.function(module, "af_probe_tma", smem), smem, driver.tensor_map(x, 128), row0,
                      ctypes.c_void_p(raw.data_ptr()))
        tile = unswizzle(raw).view(dtype)
        expected = torch.zeros(128, 64, device="cuda", dtype=dtype)
        expected[:100] = x[0, 100:, 0]
        bad = (tile != expected).sum().item()
        return bad == 0, "%d of 8192 elements differ (rows 100..199 copied, rows 200..227 zero-filled)" % bad

    def wgmma_ss():
        q = torch.randn(1, 64, 1, 64, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(1, 128, 1, 64, device="cuda", dtype=dtype, generator=gen)
        s = torch.full((64, 128), float("nan"), device="cuda")
        driver.launch(driver.function(module, "af_probe_wgmma_ss", smem), smem, driver.tensor_map(q, 64),
                      driver.tensor_map(k, 128), ctypes.c_void_p(s.data_ptr()))
        expected = q[0, :, 0].double() @ k[0, :, 0].double().T
        err = (s.double() - expected).abs().max().item()
        return err < 1e-3 and not s.isnan().any().item(), "max |S - Q K^T| = %.3g" % err

    def wgmma_rs():
        p = torch.rand(64, 128, device="cuda", generator=gen).to(dtype)
        v = torch.randn(1, 128, 1, 64, device="cuda", dtype=dtype, generator=gen)
        o = torch.full((64, 64), float("nan"), device="cuda")
        driver.launch(driver.function(module, "af_probe_wgmma_rs", smem), smem, ctypes.c_void_p(p.data_ptr()),
                      driver.tensor_map(v, 128), ctypes.c_void_p(o.data_ptr()))
        expected = p.double() @ v[0, :, 0].double()
        err = (o.double() - expected).abs().max().item()
        return err < 1e-3 and not o.isnan().any().item(), "max |O - P V| = %.3g" % err

    def wgmma_rs_n128():
        p = torch.rand(64, 128, device="cuda", generator=gen).to(dtype)
        v = torch.randn(1, 128, 1, 128, device="cuda", dtype=dtype, generator=gen)
        o = torch.full((64, 128), float("nan"), device="cuda")
        smem_v = 1024 + 2 * 128 * 128
        driver.launch(driver.function(module, "af_probe_wgmma_rs_n128", smem_v), smem_v,
                      ctypes.c_void_p(p.data_ptr()), driver.tensor_map(v, 128), ctypes.c_void_p(o.data_ptr()))
        expected = p.double() @ v[0, :, 0].double()
        err = (o.double() - expected).abs().max().item()
        return err < 1e-3 and not o.isnan().any().item(), "max |O - P V| = %.3g" % err

    attempt("compile", lambda: (not spills, "ptxas: " + ("; ".join(spills) or "no spills")))
    attempt("tma", tma)
    attempt("wgmma_ss", wgmma_ss)
    attempt("wgmma_rs", wgmma_rs)
    attempt("wgmma_rs_n128", wgmma_rs_n128)
    return results


def main():
    failed = 0
    for dtype in (torch.bfloat16, torch.float16):
        for name, ok, detail in run_probes(dtype):
            failed += not ok
            print("  probe %-13s %-5s %s  %s" % (name, str(dtype).replace("torch.", ""), "ok" if ok else "FAIL",
                                                  detail), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
