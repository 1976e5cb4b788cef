// PTX helpers shared by every kernel family: 16-bit types, cp.async, ldmatrix, mma.sync m16n8k16,
// conversions and fast math. Compiled by NVRTC with no headers; AF_BF16 picks the 16-bit type
// (1: bfloat16, 0: float16) for the whole module.

typedef unsigned short af_u16;
typedef unsigned int af_u32;

#define AF_NEG_INF (-__int_as_float(0x7f800000))

constexpr bool kBf16 = AF_BF16 != 0;

__device__ __forceinline__ af_u32 shared_address(const void* pointer) {
  af_u32 address;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(address) : "l"(pointer));
  return address;
}

// Programmatic dependent launch (sm_90+; both are no-ops after an ordinary launch and before sm_90).
// The launch lets this grid's CTAs start while the stream's previous kernel still runs; they must
// wait for it (griddepcontrol.wait: it has completed and its writes are visible) before touching
// global memory. Triggering at once lets the stream's next kernel do the same while this one runs.
__device__ __forceinline__ void grid_dependency_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dependents_launch() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// 16-byte async copy; bytes < 16 zero-fills the rest (bytes == 0 reads nothing).
__device__ __forceinline__ void cp_async_16(af_u32 dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
// 16-byte async copy, or 16 zero bytes without a read when zero_fill (the ignore-src form: a
// predicate, where the src-size form costs a size and an address adjustment per copy in SASS).
__device__ __forceinline__ void cp_async_16_or_zero(af_u32 dst, const void* src, bool zero_fill) {
  asm volatile(
      "{\n .reg .pred z;\n setp.ne.b32 z, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, z;\n}\n" ::"r"(dst),
      "l"(src), "r"(int(zero_fill))
      : "memory");
}
// An L2 cache policy whose lines are evicted first (PTX createpolicy), for data read once: a decode
// step's K/V. Measured on the H200 (bench/results/decode-layout-h200-2026-12-01.md): decode 0.3-3%
// faster with it on K/V, the largest gains at batch 1; the L2::256B prefetch size instead lost 5-7%.
__device__ __forceinline__ unsigned long long l2_evict_first() {
  unsigned long long policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// cp_async_16 and cp_async_16_or_zero with an L2 cache policy (l2_evict_first).
__device__ __forceinline__ void cp_async_16_hint(af_u32 dst, const void* src, int bytes, unsigned long long policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(src), "r"(bytes),
               "l"(policy)
               : "memory");
}
__device__ __forceinline__ void cp_async_16_or_zero_hint(af_u32 dst, const void* src, bool zero_fill,
                                                         unsigned long long policy) {
  asm volatile(
      "{\n .reg .pred z;\n setp.ne.b32 z, %2, 0;\n cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, z, "
      "%3;\n}\n" ::"r"(dst),
      "l"(src), "r"(int(zero_fill)), "l"(policy)
      : "memory");
}
// base + a * b with a, b < 2^32 and an exact 64-bit product: one IMAD.WIDE.U32 (ptxas does not
// always fuse the C++ form; it may widen both factors and add the base separately).
__device__ __forceinline__ const char* mad_wide(af_u32 a, af_u32 b, const char* base) {
  const char* r;
  asm("mad.wide.u32 %0, %1, %2, %3;\n" : "=l"(r) : "r"(a), "r"(b), "l"(base));
  return r;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kPending of this thread's most recent groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(af_u32 address, af_u32 (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ __forceinline__ void ldmatrix_x4_trans(af_u32 address, af_u32 (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// d += a (16x16, row) * b (16x8, col), fp32 accumulators.
__device__ __forceinline__ void mma_16816(float (&d)[4], const af_u32 (&a)[4], af_u32 b0, af_u32 b1) {
  if (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats -> one register of two 16-bit values, lo in the low half (round to nearest).
__device__ __forceinline__ af_u32 pack2(float lo, float hi) {
  af_u32 r;
  if (kBf16) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float log2_approx(float x) {
  float y;
  asm("lg2.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Global loads that bypass L1 (other CTAs wrote the data during this grid).
__device__ __forceinline__ float load_cg(const float* address) {
  float x;
  asm volatile("ld.global.cg.f32 %0, [%1];\n" : "=f"(x) : "l"(address));
  return x;
}
__device__ __forceinline__ void load_cg_8(const float* address, float (&x)[8]) {
  asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(x[0]), "=f"(x[1]), "=f"(x[2]), "=f"(x[3])
               : "l"(address));
  asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(x[4]), "=f"(x[5]), "=f"(x[6]), "=f"(x[7])
               : "l"(address + 4));
}
// old = *counter; *counter = old >= limit ? 0 : old + 1; returns old (device scope).
__device__ __forceinline__ af_u32 atomic_inc_wrap(af_u32* counter, af_u32 limit) {
  af_u32 old;
  asm volatile("atom.global.inc.u32 %0, [%1], %2;\n" : "=r"(old) : "l"(counter), "r"(limit) : "memory");
  return old;
}

__device__ __forceinline__ int clamp_int(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }
