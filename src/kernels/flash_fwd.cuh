// Forward attention for sm_80 and newer: the FlashAttention-2 algorithm on mma.sync m16n8k16.
//
// Compiled by NVRTC with no headers; flash_fwd_params.cuh is prepended to this text.
// The variant is chosen by macros (see src/cuda/variants.cpp, the one list of variants):
//   AF_HEAD_DIM   compiled head dim D (32, 64, 96, 128, 192, 256); smaller real dims are zero-filled
//   AF_BF16       1: bfloat16, 0: float16 (inputs and output; accumulation is fp32)
//   AF_WARPS      warps per CTA; each warp owns AF_M_TILES * 16 query rows
//   AF_M_TILES    m16 tiles per warp (B fragments of K and V are reused across them)
//   AF_BLOCK_N    keys per main-loop step
//   AF_EXTRAS     1: softcap and ALiBi are compiled in
//   AF_KV_STAGES  1: one K and one V buffer; 2 or 3: K/V ring of that many blocks
//   AF_MIN_BLOCKS CTAs per SM the register allocation must allow (__launch_bounds__)
//
// One CTA per (query tile, head, batch), longest causal tiles first. Per key block, the warp computes S = Q K^T into
// accumulators, applies the mask only on tiles that cross a mask edge, runs the online
// softmax in the log2 domain (exp2 with log2(e) folded into the scale), re-packs P from the
// accumulators straight into A fragments (P never touches shared memory), and accumulates
// O += P V. Key blocks run from the last to the first (the masked ones come first). K and V
// go through cp.async: with s >= 2 stages, K[n-s+1] and V[n-s+1] load into the ring during
// block n (one barrier per block); with 1 stage, V[n] loads during S = Q K[n]^T and K[n-1]
// during P V[n]. Shared memory tiles are XOR-swizzled by 16-byte chunk so ldmatrix and
// cp.async are free of bank conflicts.

typedef unsigned short af_u16;
typedef unsigned int af_u32;

#define AF_NEG_INF (-__int_as_float(0x7f800000))

constexpr int kHeadDim = AF_HEAD_DIM;
constexpr int kWarps = AF_WARPS;
constexpr int kMTiles = AF_M_TILES;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockM = kWarps * 16 * kMTiles;  // query rows per CTA
constexpr int kBlockN = AF_BLOCK_N;             // keys per step
constexpr int kChunks = kHeadDim / 8;           // 16-byte chunks per smem row
constexpr int kKSteps = kHeadDim / 16;          // k16 steps of Q K^T
constexpr int kDTiles = kHeadDim / 8;           // n8 tiles of O
constexpr int kNTiles = kBlockN / 8;            // n8 tiles of S
constexpr bool kExtras = AF_EXTRAS != 0;
constexpr bool kBf16 = AF_BF16 != 0;
constexpr int kQBytes = kBlockM * kHeadDim * 2;
constexpr int kKVBytes = kBlockN * kHeadDim * 2;
constexpr int kStages = AF_KV_STAGES;
static_assert(kStages >= 1 && kStages <= 3, "1 to 3 K/V stages");

static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head dim must be a multiple of 32, at most 256");
static_assert(kBlockN % 16 == 0, "block N must be a multiple of 16");
static_assert(kChunks % 4 == 0, "swizzle needs at least four 16-byte chunks per row");

// Chunk position inside a row: rows of 8k chunks XOR with row % 8; rows of 4 (mod 8) chunks
// put two rows in a 128-byte line, so they XOR with (row / 2) % 4 instead.
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return (kChunks % 8 == 0) ? (chunk ^ (row & 7)) : (chunk ^ ((row >> 1) & 3));
}

// Byte offset of element (row, col) of a (rows, kHeadDim) swizzled tile.
__device__ __forceinline__ af_u32 tile_offset(int row, int col) {
  return af_u32((row * kHeadDim + swizzle(row, col >> 3) * 8 + (col & 7)) * 2);
}

// ldmatrix addresses without per-step arithmetic. A lane reads row lane_row + 16 * r and chunk
// lane_chunk + 2 * c (lane_chunk is 0 or 1): the XOR mask depends only on lane_row (16-row
// steps keep row % 8 and (row / 2) % 4). Tiles and rows start on 16 * kGroup-byte boundaries,
// so the chunk pair inside a swizzle group is an XOR of the lane's base address and the
// group index a compile-time offset: one register per operand, one LOP3 per access.
constexpr int kGroup = (kChunks % 8 == 0) ? 8 : 4;  // chunks sharing one XOR pattern
__device__ __forceinline__ af_u32 fragment_base(af_u32 tile, int lane_row, int lane_chunk) {
  return tile + af_u32(lane_row * kHeadDim * 2 + 16 * (swizzle(lane_row, 0) ^ lane_chunk));
}
// Address of (lane_row + row_step, chunk 2 * chunk_pair + lane_chunk); both steps compile-time.
__device__ __forceinline__ af_u32 fragment_address(af_u32 base, int row_step, int chunk_pair) {
  const int chunk = 2 * chunk_pair;
  return (base ^ af_u32((chunk % kGroup) * 16)) + af_u32((chunk / kGroup) * kGroup * 16 + row_step * kHeadDim * 2);
}

__device__ __forceinline__ af_u32 shared_address(const void* pointer) {
  af_u32 address;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(address) : "l"(pointer));
  return address;
}

// 16-byte async copy; bytes < 16 zero-fills the rest (bytes == 0 reads nothing).
__device__ __forceinline__ void cp_async_16(af_u32 dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kPending of this thread's most recent groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(af_u32 address, af_u32 (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
}
__device__ __forceinline__ void ldmatrix_x4_trans(af_u32 address, af_u32 (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
}

// d += a (16x16, row) * b (16x8, col), fp32 accumulators.
__device__ __forceinline__ void mma_16816(float (&d)[4], const af_u32 (&a)[4], af_u32 b0, af_u32 b1) {
  if (kBf16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
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

__device__ __forceinline__ int clamp_int(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Async copy of rows [0, kRows) of a (rows, head_dim) matrix into a swizzled smem tile.
// Rows >= valid_rows and dims >= head_dim are zero-filled; nothing outside them is read.
// When a pass of all threads covers whole rows (a multiple of 8 of them, or a power of two
// below 8 with rows of 8k chunks), each thread keeps one chunk column: its source pointer
// advances by a fixed stride and its smem offset by a constant (XORed with a constant swizzle
// step when passes are shorter than 8 rows), so no per-item address stays live across the
// main loop.
template <int kRows>
__device__ __forceinline__ void load_tile(af_u32 tile, const af_u16* base, long long row_stride, int valid_rows,
                                          int head_dim) {
  constexpr int kRowsPerPass = kThreads / kChunks;
  constexpr bool kWholeRows = kThreads % kChunks == 0 && kRows % kRowsPerPass == 0 &&
                              (kRowsPerPass % 8 == 0 || (kChunks % 8 == 0 && 8 % kRowsPerPass == 0));
  if constexpr (kWholeRows) {
    const int row0 = int(threadIdx.x) / kChunks;
    const int col = (int(threadIdx.x) % kChunks) * 8;
    const int left = head_dim - col;
    const int col_bytes = left >= 8 ? 16 : (left > 0 ? left * 2 : 0);
    const af_u16* src = base + row0 * row_stride + col;
    const af_u32 dst = tile + tile_offset(row0, col);
#pragma unroll
    for (int i = 0; i < kRows / kRowsPerPass; ++i) {
      const bool inside = row0 + i * kRowsPerPass < valid_rows && col_bytes > 0;
      // Row row0 + i * kRowsPerPass XORs its chunk with row0 ^ ((i * kRowsPerPass) & 7): the
      // bits are disjoint because row0 < kRowsPerPass, a power of two.
      const af_u32 swizzle_step = af_u32(((i * kRowsPerPass) & 7) * 16);
      // Rows past the end are requested with size 0: nothing is read from src, the chunk is zeroed.
      cp_async_16((dst ^ swizzle_step) + af_u32(i * kRowsPerPass * kHeadDim * 2), src, inside ? col_bytes : 0);
      src += kRowsPerPass * row_stride;
    }
  } else {
    constexpr int kItems = kRows * kChunks;
#pragma unroll
    for (int i = 0; i < (kItems + kThreads - 1) / kThreads; ++i) {
      const int item = i * kThreads + int(threadIdx.x);
      if (kItems % kThreads == 0 || item < kItems) {
        const int row = item / kChunks;
        const int col = (item % kChunks) * 8;
        const int left = head_dim - col;
        const int bytes = row < valid_rows ? (left >= 8 ? 16 : (left > 0 ? left * 2 : 0)) : 0;
        const af_u16* src = bytes > 0 ? base + row * row_stride + col : base;
        cp_async_16(tile + tile_offset(row, col), src, bytes);
      }
    }
  }
}

// Grid (pairs per group, query tiles, groups) over (batch, head) pairs; the hardware starts CTAs
// with x fastest, then y, then z. So pairs go in groups of gridDim.x, and inside a group the
// query tile runs from the last (the longest with a causal mask) to the first. One pair per
// group (no mask) keeps the CTAs that run at once on few K/V heads, so K/V are read from L2;
// with a causal mask a group about one wave large runs longest-first, so that each wave ends
// with short tiles and the grid with the shortest. The last group may run past batch * heads.
// With split keys, z = group * num_splits + split.
struct TileIndex {
  int m_block, head, batch, split;
};
__device__ __forceinline__ TileIndex tile_index(const FlashFwdParams& p) {
  const int group = int(blockIdx.z) / p.num_splits;
  const int pair = group * int(gridDim.x) + int(blockIdx.x);
  return {int(gridDim.y) - 1 - int(blockIdx.y), pair % p.heads_q, pair / p.heads_q, int(blockIdx.z) - group * p.num_splits};
}

// Query rows [row0, row0 + len) of one sequence, clamped into [0, total_q] for varlen batches.
// The prologue and the epilogue each call this (re-reading cu_seqlens_q is cheaper than keeping
// two registers live across the main loop).
struct QueryRows {
  int row0, len;
};
__device__ __forceinline__ QueryRows query_rows(const FlashFwdParams& p, int batch) {
  if (p.cu_seqlens_q == nullptr) return {0, p.seqlen_q};
  const int row0 = clamp_int(p.cu_seqlens_q[batch], 0, p.total_q);
  return {row0, clamp_int(p.cu_seqlens_q[batch + 1], row0, p.total_q) - row0};
}

extern "C" __global__ void __launch_bounds__(kThreads, AF_MIN_BLOCKS) af_flash_fwd(const FlashFwdParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const af_u32 sQ = shared_address(smem);     // (kBlockM, kHeadDim), later the output staging tile
  const af_u32 sK = sQ + kQBytes;              // (kBlockN, kHeadDim) per stage: K0 V0 [K1 V1 [K2 V2]]
  const af_u32 sV = sK + kKVBytes;             // (kBlockN, kHeadDim)
  constexpr af_u32 kStageBytes = 2 * kKVBytes;
  constexpr af_u32 kRingBytes = kStages * kStageBytes;

  const int lane = int(threadIdx.x) & 31;
  const int warp = int(threadIdx.x) >> 5;
  const TileIndex tile = tile_index(p);
  const int head = tile.head, batch = tile.batch;
  if (batch >= p.batch) return;  // past the last pair of a partial group
  const int head_kv = head / (p.heads_q / p.heads_kv);

  // Extent of this sequence, clamped so that no index array can move an access out of bounds.
  const QueryRows query = query_rows(p, batch);
  const int q_len = query.len;
  int k_row0 = 0, k_len = p.seqlen_k;
  const long long q_batch = (long long)batch * p.q_batch_stride;
  const long long k_batch = (long long)batch * p.k_batch_stride, v_batch = (long long)batch * p.v_batch_stride;
  int k_avail = p.seqlen_k;  // rows addressable from k_row0
  if (p.cu_seqlens_k != nullptr) {
    k_row0 = clamp_int(p.cu_seqlens_k[batch], 0, p.total_k);
    k_avail = p.total_k - k_row0;
    k_len = clamp_int(p.cu_seqlens_k[batch + 1], k_row0, p.total_k) - k_row0;
  }
  if (p.seqused_k != nullptr) k_len = clamp_int(p.seqused_k[batch], 0, k_avail);
  if (p.leftpad_k != nullptr) {
    const int pad = clamp_int(p.leftpad_k[batch], 0, k_len);
    k_row0 += pad;
    k_len -= pad;
  }
  const int m0 = tile.m_block * kBlockM;
  if (m0 >= q_len) return;
  const int diagonal = k_len - q_len;  // key aligned with query row i is i + diagonal (bottom-right)

  // Key blocks that can hold a visible key for rows [m0, last_row].
  const int last_row = min(m0 + kBlockM, q_len) - 1;
  int key_end = k_len;
  if (p.window_right >= 0) key_end = min(key_end, last_row + diagonal + p.window_right + 1);
  int key_begin = 0;
  if (p.window_left >= 0) key_begin = max(0, m0 + diagonal - p.window_left);
  int n_block_min = key_begin / kBlockN;
  int n_block_max = key_end > key_begin ? (key_end + kBlockN - 1) / kBlockN : n_block_min;
  if (p.num_splits > 1) {  // this CTA's share: contiguous, at most ceil(blocks / splits) blocks
    const int share = (n_block_max - n_block_min + p.num_splits - 1) / p.num_splits;
    n_block_min += tile.split * share;
    n_block_max = min(n_block_max, n_block_min + share);
  }
  // Key blocks [unmasked_begin, unmasked_end) are inside the keys and both window edges for every row.
  int unmasked_end = k_len / kBlockN;
  if (p.window_right >= 0) unmasked_end = min(unmasked_end, max(0, m0 + diagonal + p.window_right + 1) / kBlockN);
  const int unmasked_begin =
      p.window_left >= 0 ? (max(0, last_row + diagonal - p.window_left) + kBlockN - 1) / kBlockN : 0;

  const af_u16* q_base = (const af_u16*)p.q + q_batch + (long long)(query.row0 + m0) * p.q_row_stride +
                         (long long)head * p.q_head_stride;
  const af_u16* k_base = (const af_u16*)p.k + k_batch + (long long)k_row0 * p.k_row_stride +
                         (long long)head_kv * p.k_head_stride;
  const af_u16* v_base = (const af_u16*)p.v + v_batch + (long long)k_row0 * p.v_row_stride +
                         (long long)head_kv * p.v_head_stride;

  float alibi_log2 = 0.f;  // slope * log2(e)
  if (kExtras && p.alibi_slopes != nullptr)
    alibi_log2 = p.alibi_slopes[(long long)batch * p.alibi_batch_stride + (long long)head * p.alibi_head_stride] *
                 1.4426950408889634f;

  // Thread fragment coordinates: lane holds rows g and g + 8 of each m16 tile, columns 2t, 2t + 1.
  const int g = lane >> 2;
  const int t = lane & 3;
  const int warp_row0 = warp * 16 * kMTiles;  // first row of this warp inside the tile

  float o[kMTiles][kDTiles][4];  // (16 rows, 8 dims) accumulators per (m tile, d tile)
  float row_max[kMTiles][2];     // running max of rows g, g + 8 (raw scores; log2 units with extras)
  float row_sum[kMTiles][2];     // this thread's partial sum of exp2 over its columns
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = AF_NEG_INF;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  if (n_block_max > n_block_min) {
    // Q and the first K (and V with a ring) in one group; the ring's other blocks one group each.
    load_tile<kBlockM>(sQ, q_base, p.q_row_stride, q_len - m0, p.head_dim);
#pragma unroll
    for (int i = 0; i < (kStages == 1 ? 1 : kStages - 1); ++i) {
      const int n0 = (n_block_max - 1 - i) * kBlockN;
      if (n0 >= n_block_min * kBlockN) {
        const af_u32 stage = i * kStageBytes;
        load_tile<kBlockN>(sK + stage, k_base + (long long)n0 * p.k_row_stride, p.k_row_stride, k_len - n0,
                           p.head_dim);
        if (kStages > 1)
          load_tile<kBlockN>(sV + stage, v_base + (long long)n0 * p.v_row_stride, p.v_row_stride, k_len - n0,
                             p.head_dim);
      }
      cp_async_commit();
    }
    if (kStages == 1) {
      cp_async_wait<0>();
      __syncthreads();
    }

    // ldmatrix lane addressing (see the fragment layouts of mma.m16n8k16):
    // Q: x4 = one 16x16 A tile; K: x4 = two n8 B tiles; V: x4.trans = two n8 B tiles of V^T.
    const af_u32 q_frag = fragment_base(sQ, warp_row0 + (lane & 15), lane >> 4);
    const af_u32 k_frag = fragment_base(sK, ((lane >> 4) << 3) + (lane & 7), (lane >> 3) & 1);
    const af_u32 v_frag = fragment_base(sV, (((lane >> 3) & 1) << 3) + (lane & 7), lane >> 4);

    af_u32 stage = 0;  // byte offset of the K/V buffers block n_block uses
    for (int n_block = n_block_max - 1; n_block >= n_block_min; --n_block) {
      const int n0 = n_block * kBlockN;
      if (kStages > 1) {
        // K[n], V[n] have landed (one group per block; the newer kStages - 2 may be in flight)
        // and every warp is done with block n + 1: its buffers take block n - kStages + 1.
        cp_async_wait<kStages - 2>();
        __syncthreads();
        const int n_ahead = n0 - (kStages - 1) * kBlockN;
        if (n_ahead >= n_block_min * kBlockN) {
          const af_u32 ahead = (stage == 0 ? kRingBytes : stage) - kStageBytes;
          load_tile<kBlockN>(sK + ahead, k_base + (long long)n_ahead * p.k_row_stride, p.k_row_stride,
                             k_len - n_ahead, p.head_dim);
          load_tile<kBlockN>(sV + ahead, v_base + (long long)n_ahead * p.v_row_stride, p.v_row_stride,
                             k_len - n_ahead, p.head_dim);
        }
        cp_async_commit();  // possibly empty: the wait above counts one group per block
      } else {
        load_tile<kBlockN>(sV, v_base + (long long)n0 * p.v_row_stride, p.v_row_stride, k_len - n0, p.head_dim);
        cp_async_commit();
      }

      float s[kMTiles][kNTiles][4];  // (16 rows, 8 keys) score accumulators
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;

#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        af_u32 a[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
          ldmatrix_x4(fragment_address(q_frag, mt * 16, ks), a[mt]);
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
          af_u32 b[4];
          ldmatrix_x4(fragment_address(k_frag + stage, np * 16, ks), b);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            mma_16816(s[mt][2 * np], a[mt], b[0], b[1]);
            mma_16816(s[mt][2 * np + 1], a[mt], b[2], b[3]);
          }
        }
      }

      // One stage: V[n] has landed and every warp is done with K[n] (K[n - 1] loads after the
      // softmax, when the scores no longer hold registers).
      if (kStages == 1) {
        cp_async_wait<0>();
        __syncthreads();
      }

      // Scores into the softmax domain: raw dot products (scaled later in one FMA), or
      // log2-domain values when softcap / ALiBi transform them first.
      float scale = p.scale_log2;
      if (kExtras) {
        scale = 1.f;
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              float x = s[mt][nt][e];
              x = p.softcap_in != 0.f ? tanh_approx(x * p.softcap_in) * p.scale_log2 : x * p.scale_log2;
              if (alibi_log2 != 0.f) {
                const int row = m0 + warp_row0 + mt * 16 + g + (e >> 1) * 8;
                const int col = n0 + nt * 8 + 2 * t + (e & 1);
                x -= alibi_log2 * fabsf(float(row + diagonal - col));
              }
              s[mt][nt][e] = x;
            }
      }

      // Masking only where the tile crosses the end of the keys or a window edge.
      const bool needs_mask = n_block >= unmasked_end || n_block < unmasked_begin;
      if (needs_mask) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int row = m0 + warp_row0 + mt * 16 + g + (e >> 1) * 8;
              const int col = n0 + nt * 8 + 2 * t + (e & 1);
              const bool visible = col < k_len &&
                                   (p.window_right < 0 || col <= row + diagonal + p.window_right) &&
                                   (p.window_left < 0 || col >= row + diagonal - p.window_left);
              if (!visible) s[mt][nt][e] = AF_NEG_INF;
            }
      }

      // Online softmax; the 4 lanes of a quad share rows, so two xor-shuffles finish a row max.
      // O is rescaled only when some row of the warp got a new max (after the first blocks
      // that is rare, and the rescale is a multiply per accumulator).
      af_u32 pa[kMTiles][kNTiles / 2][4];  // P as A fragments, one per k16 step of P V
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        float base[2], correction[2];
        bool max_changed = false;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float m = row_max[mt][half];
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) m = fmaxf(m, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
          // A row with no visible key so far keeps max -inf; subtracting 0 then gives exp2(-inf) = 0.
          base[half] = m == AF_NEG_INF ? 0.f : m * scale;
          correction[half] = exp2_approx(row_max[mt][half] * scale - base[half]);
          max_changed = max_changed || m != row_max[mt][half];
          row_max[mt][half] = m;
        }
        if (__any_sync(0xffffffffu, max_changed)) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            row_sum[mt][half] *= correction[half];
#pragma unroll
            for (int dt = 0; dt < kDTiles; ++dt) {
              o[mt][dt][2 * half] *= correction[half];
              o[mt][dt][2 * half + 1] *= correction[half];
            }
          }
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float sum = 0.f;
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) {
            const float p0 = exp2_approx(fmaf(s[mt][nt][2 * half], scale, -base[half]));
            const float p1 = exp2_approx(fmaf(s[mt][nt][2 * half + 1], scale, -base[half]));
            s[mt][nt][2 * half] = p0;
            s[mt][nt][2 * half + 1] = p1;
            sum += p0 + p1;
          }
          row_sum[mt][half] += sum;
        }
#pragma unroll
        for (int kp = 0; kp < kNTiles / 2; ++kp) {
          pa[mt][kp][0] = pack2(s[mt][2 * kp][0], s[mt][2 * kp][1]);
          pa[mt][kp][1] = pack2(s[mt][2 * kp][2], s[mt][2 * kp][3]);
          pa[mt][kp][2] = pack2(s[mt][2 * kp + 1][0], s[mt][2 * kp + 1][1]);
          pa[mt][kp][3] = pack2(s[mt][2 * kp + 1][2], s[mt][2 * kp + 1][3]);
        }
      }

      if (kStages == 1 && n_block > n_block_min) {
        const int n_prev = n0 - kBlockN;
        load_tile<kBlockN>(sK, k_base + (long long)n_prev * p.k_row_stride, p.k_row_stride, k_len - n_prev,
                           p.head_dim);
        cp_async_commit();
      }

      // O += P V: V^T fragments come from ldmatrix.trans of the row-major V tile.
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
#pragma unroll
        for (int kp = 0; kp < kNTiles / 2; ++kp) {
          af_u32 b[4];
          ldmatrix_x4_trans(fragment_address(v_frag + stage, kp * 16, dp), b);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            mma_16816(o[mt][2 * dp], pa[mt][kp], b[0], b[1]);
            mma_16816(o[mt][2 * dp + 1], pa[mt][kp], b[2], b[3]);
          }
        }
      }

      if (kStages == 1) {
        // K[n - 1] has landed and every warp is done with V[n].
        cp_async_wait<0>();
        __syncthreads();
      } else {
        stage = stage + kStageBytes == kRingBytes ? 0 : stage + kStageBytes;
      }
    }
  }

  // Epilogue: normalise, stage this warp's rows in its own part of sQ, store 16-byte chunks.
  // The staging rows are the ones this warp's ldmatrix read; the warp barrier orders those
  // reads before the writes of other lanes.
  __syncwarp();
  // Coordinates again rather than kept live through the main loop (registers are the limit).
  const TileIndex out_tile = tile_index(p);
  const QueryRows out_rows = query_rows(p, out_tile.batch);
  const int out_m0 = out_tile.m_block * kBlockM;
  const float ln2 = 0.6931471805599453f;
  const float lse_scale = kExtras ? 1.f : p.scale_log2;
  if (p.num_splits > 1) {
    // Partial results straight from the accumulators: rows g and g + 8, columns 2t and 2t + 1.
    // A loop of its own: folded into the staging loop below it costs the 128x64 d128 tile a
    // spill on sm_90a.
    const long long split_row0 =
        ((long long)(out_tile.split * p.batch + out_tile.batch) * p.heads_q + out_tile.head) * p.seqlen_q + out_m0;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float sum = row_sum[mt][half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inverse = sum > 0.f ? 1.f / sum : 0.f;
        const int row = warp_row0 + mt * 16 + g + half * 8;
        if (out_m0 + row >= out_rows.len) continue;
        float* dst = p.partial_out + (split_row0 + row) * kHeadDim + 2 * t;
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt)
          *(float2*)(dst + dt * 8) = make_float2(o[mt][dt][2 * half] * inverse, o[mt][dt][2 * half + 1] * inverse);
        if (t == 0)
          p.partial_lse[split_row0 + row] =
              sum > 0.f ? (row_max[mt][half] * lse_scale + log2_approx(sum)) * ln2 : AF_NEG_INF;
      }
    }
    return;
  }
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = row_sum[mt][half];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inverse = sum > 0.f ? 1.f / sum : 0.f;
      const int row = warp_row0 + mt * 16 + g + half * 8;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        const af_u32 packed = pack2(o[mt][dt][2 * half] * inverse, o[mt][dt][2 * half + 1] * inverse);
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sQ + tile_offset(row, dt * 8 + 2 * t)), "r"(packed) : "memory");
      }
      if (p.lse != nullptr && t == 0 && out_m0 + row < out_rows.len) {
        const float lse = sum > 0.f ? (row_max[mt][half] * lse_scale + log2_approx(sum)) * ln2 : AF_NEG_INF;
        p.lse[(long long)out_tile.batch * p.lse_batch_stride + (long long)out_tile.head * p.lse_head_stride +
              (long long)(out_rows.row0 + out_m0 + row) * p.lse_row_stride] = lse;
      }
    }
  }
  __syncwarp();
  af_u16* out_base = (af_u16*)p.out + (long long)out_tile.batch * p.out_batch_stride +
                     (long long)(out_rows.row0 + out_m0) * p.out_row_stride + (long long)out_tile.head * p.out_head_stride;
  constexpr int kWarpItems = 16 * kMTiles * kChunks;
#pragma unroll
  for (int i = 0; i < kWarpItems / 32; ++i) {
    const int item = i * 32 + lane;
    const int row = warp_row0 + item / kChunks;
    const int col = (item % kChunks) * 8;
    if (out_m0 + row < out_rows.len && col < p.head_dim) {
      const af_u32 address = sQ + tile_offset(row, col);
      af_u16* dst = out_base + (long long)row * p.out_row_stride + col;
      if (col + 8 <= p.head_dim) {
        af_u32 x0, x1, x2, x3;
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(x0), "=r"(x1), "=r"(x2), "=r"(x3) : "r"(address));
        asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "r"(x0), "r"(x1), "r"(x2), "r"(x3) : "memory");
      } else {
        for (int e = 0; e < p.head_dim - col; ++e) {
          af_u16 x;
          asm volatile("ld.shared.b16 %0, [%1];\n" : "=h"(x) : "r"(address + 2 * e));
          dst[e] = x;
        }
      }
    }
  }
}

// Merges the num_splits partial results of each query row (see FlashFwdParams) into out and lse:
// lse = log(sum_s exp(lse_s)), out = sum_s exp(lse_s - lse) * out_s. One warp per row, each lane
// kHeadDim / 32 consecutive columns. Grid (batch * heads, ceil(seqlen_q / 4)), 128 threads.
extern "C" __global__ void __launch_bounds__(128) af_flash_combine(const FlashFwdParams p) {
  constexpr int kColumns = kHeadDim / 32;
  const int lane = int(threadIdx.x) & 31;
  const int row = int(blockIdx.y) * 4 + (int(threadIdx.x) >> 5);
  const int head = int(blockIdx.x) % p.heads_q;
  const int batch = int(blockIdx.x) / p.heads_q;
  const QueryRows rows = query_rows(p, batch);
  if (row >= rows.len) return;
  const long long split_stride = (long long)p.batch * p.heads_q * p.seqlen_q;
  const long long row_index = ((long long)batch * p.heads_q + head) * p.seqlen_q + row;

  float top = AF_NEG_INF;
  for (int s = lane; s < p.num_splits; s += 32) top = fmaxf(top, p.partial_lse[s * split_stride + row_index]);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
  float total = 0.f;
  if (top != AF_NEG_INF)
    for (int s = lane; s < p.num_splits; s += 32) total += __expf(p.partial_lse[s * split_stride + row_index] - top);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_xor_sync(0xffffffffu, total, offset);
  const float lse = total > 0.f ? top + __logf(total) : AF_NEG_INF;

  float acc[kColumns];
#pragma unroll
  for (int c = 0; c < kColumns; ++c) acc[c] = 0.f;
  if (total > 0.f) {
    for (int s = 0; s < p.num_splits; ++s) {
      const float weight = __expf(p.partial_lse[s * split_stride + row_index] - lse);
      const float* partial = p.partial_out + (s * split_stride + row_index) * kHeadDim + lane * kColumns;
#pragma unroll
      for (int c = 0; c < kColumns; ++c) acc[c] += weight * partial[c];
    }
  }
  af_u16* dst = (af_u16*)p.out + (long long)batch * p.out_batch_stride + (long long)(rows.row0 + row) * p.out_row_stride +
                (long long)head * p.out_head_stride;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int col = lane * kColumns + c;
    if (col < p.head_dim) dst[col] = af_u16(pack2(acc[c], 0.f) & 0xffffu);
  }
  if (p.lse != nullptr && lane == 0)
    p.lse[(long long)batch * p.lse_batch_stride + (long long)head * p.lse_head_stride +
          (long long)(rows.row0 + row) * p.lse_row_stride] = lse;
}
