// Probe kernels for the fwd_sm90 family's building blocks (bench/device/sm90_probe.py compiles them
// with NVRTC after common/ptx.cuh and fwd_sm90/sm90_ptx.cuh, the family's own helpers): one TMA
// tile load, one S = Q K^T wgmma product and one O = P V wgmma product, each checked against torch
// on the GPU, so that a descriptor, swizzle or fragment-layout fault shows here before it shows as
// a wrong attention. One warpgroup (128 threads) per launch; dynamic shared memory is aligned up to
// 1024 bytes as in the family.

__device__ __forceinline__ af_u32 probe_smem_base(unsigned char* smem) {
  return (shared_address(smem) + 1023u) & ~1023u;
}

// The probes' one mbarrier (one arrival plus the TMA bytes), visible to every thread and the TMA unit.
__device__ __forceinline__ void probe_barrier_init(af_u32 full) {
  if (threadIdx.x == 0) {
    mbarrier_init(full, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
}

// This thread's A fragments of p (64, 128) row-major for eight k16 steps, as fwd_sm90 packs P: warp w
// holds rows 16 w .. 16 w + 15 (mma.m16n8k16's A layout per warp).
__device__ __forceinline__ void probe_p_fragments(const af_u16* p, af_u32 (&a)[8][4]) {
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  auto pair = [&](int row, int col) { return *(const af_u32*)(p + (16 * warp + row) * 128 + col); };
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    a[kk][0] = pair(g, 16 * kk + 2 * t);
    a[kk][1] = pair(g + 8, 16 * kk + 2 * t);
    a[kk][2] = pair(g, 16 * kk + 8 + 2 * t);
    a[kk][3] = pair(g + 8, 16 * kk + 8 + 2 * t);
  }
}

// A (128 rows, 64 columns) box of map at (column 0, row `row0`, head 0, batch 0): out receives
// the 16 KB of shared memory as written (swizzled), 8192 16-bit words.
extern "C" __global__ void __launch_bounds__(128)
    af_probe_tma(const __grid_constant__ CUtensorMap map, int row0, af_u16* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) unsigned long long bar[1];
  const af_u32 tile = probe_smem_base(smem);
  const af_u32 full = shared_address(bar);
  probe_barrier_init(full);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(full, 128 * 128);
    tma_load_4d(tile, &map, full, 0, row0, 0, 0);
  }
  mbarrier_wait(full, 0);
  for (int i = int(threadIdx.x); i < 128 * 64; i += 128) {
    af_u16 x;
    asm volatile("ld.shared.b16 %0, [%1];\n" : "=h"(x) : "r"(tile + 2 * i));
    out[i] = x;
  }
}

// s (64, 128) fp32 = q (64, 64) k (128, 64)^T: q_map and k_map with (64, 64) and (64, 128) boxes.
extern "C" __global__ void __launch_bounds__(128)
    af_probe_wgmma_ss(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
                      float* s_out) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) unsigned long long bar[1];
  const af_u32 sQ = probe_smem_base(smem), sK = sQ + 64 * 128;
  const af_u32 full = shared_address(bar);
  probe_barrier_init(full);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(full, (64 + 128) * 128);
    tma_load_4d(sQ, &q_map, full, 0, 0, 0, 0);
    tma_load_4d(sK, &k_map, full, 0, 0, 0, 0);
  }
  mbarrier_wait(full, 0);
  float s[64];
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) wgmma_ss(s, smem_descriptor(sQ + ks * 32), smem_descriptor(sK + ks * 32), ks > 0);
  wgmma_commit();
  wgmma_wait<0>();
#pragma unroll
  for (int e = 0; e < 64; ++e) fence_operand(s[e]);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
#pragma unroll
  for (int e = 0; e < 64; ++e) {
    const int row = 16 * warp + (lane >> 2) + 8 * ((e >> 1) & 1);
    const int col = 8 * (e >> 2) + 2 * (lane & 3) + (e & 1);
    s_out[row * 128 + col] = s[e];
  }
}

// o (64, 64) fp32 = p (64, 128) v (128, 64): p from global memory straight into A fragments, v_map
// with a (64, 128) box, read transposed by the instruction.
extern "C" __global__ void __launch_bounds__(128)
    af_probe_wgmma_rs(const af_u16* p, const __grid_constant__ CUtensorMap v_map, float* o_out) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) unsigned long long bar[1];
  const af_u32 sV = probe_smem_base(smem);
  const af_u32 full = shared_address(bar);
  probe_barrier_init(full);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(full, 128 * 128);
    tma_load_4d(sV, &v_map, full, 0, 0, 0, 0);
  }
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  af_u32 a[8][4];
  probe_p_fragments(p, a);
  mbarrier_wait(full, 0);
  float o[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) o[e] = 0.f;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) wgmma_rs_n64(o, a[kk], smem_descriptor(sV + kk * 16 * 128));
  wgmma_commit();
  wgmma_wait<0>();
#pragma unroll
  for (int e = 0; e < 32; ++e) fence_operand(o[e]);
#pragma unroll
  for (int e = 0; e < 32; ++e) {
    const int row = 16 * warp + g + 8 * ((e >> 1) & 1);
    const int col = 8 * (e >> 2) + 2 * t + (e & 1);
    o_out[row * 64 + col] = o[e];
  }
}

// o (64, 128) fp32 = p (64, 128) v (128, 128), as fwd_sm90's P V at d128: v's two 64-column atoms
// (two (64, 128) boxes, 16 KB apart) read by one m64n128k16 per k16 step, the descriptor's leading
// offset stepping from the first atom to the second.
extern "C" __global__ void __launch_bounds__(128)
    af_probe_wgmma_rs_n128(const af_u16* p, const __grid_constant__ CUtensorMap v_map, float* o_out) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) unsigned long long bar[1];
  const af_u32 sV = probe_smem_base(smem);
  const af_u32 full = shared_address(bar);
  probe_barrier_init(full);
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(full, 2 * 128 * 128);
    tma_load_4d(sV, &v_map, full, 0, 0, 0, 0);
    tma_load_4d(sV + 128 * 128, &v_map, full, 64, 0, 0, 0);
  }
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  af_u32 a[8][4];
  probe_p_fragments(p, a);
  mbarrier_wait(full, 0);
  float o[2][32];
#pragma unroll
  for (int e = 0; e < 32; ++e) o[0][e] = o[1][e] = 0.f;
  const af_u32 v_desc = smem_descriptor_lo(sV, 128 * 128);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) wgmma_rs_n128(o[0], o[1], a[kk], smem_descriptor_at(v_desc + kk * 16 * 128 / 16));
  wgmma_commit();
  wgmma_wait<0>();
#pragma unroll
  for (int e = 0; e < 32; ++e) fence_operand(o[0][e]), fence_operand(o[1][e]);
#pragma unroll
  for (int e = 0; e < 64; ++e) {
    const int row = 16 * warp + g + 8 * ((e >> 1) & 1);
    const int col = 8 * (e >> 2) + 2 * t + (e & 1);
    o_out[row * 128 + col] = o[e >> 5][e & 31];
  }
}
