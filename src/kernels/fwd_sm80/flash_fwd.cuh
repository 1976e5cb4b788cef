// The sm_80 forward family's loader, scheduler and kernel (constants in flash_fwd_config.cuh).

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
  return {int(gridDim.y) - 1 - int(blockIdx.y), pair % p.heads_q, pair / p.heads_q,
          int(blockIdx.z) - group * p.num_splits};
}

extern "C" __global__ void __launch_bounds__(kThreads, AF_MIN_BLOCKS) af_flash_fwd(const FlashFwdParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const af_u32 sQ = shared_address(smem);  // (kBlockM, kHeadDim), later the output staging tile
  const af_u32 sK = sQ + kQBytes;          // (kBlockN, kHeadDim) per stage: K0 V0 [K1 V1 [K2 V2]]
  const af_u32 sV = sK + kKVBytes;         // (kBlockN, kHeadDim)
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

  const af_u16* q_base =
      (const af_u16*)p.q + q_batch + (long long)(query.row0 + m0) * p.q_row_stride + (long long)head * p.q_head_stride;
  const af_u16* k_base =
      (const af_u16*)p.k + k_batch + (long long)k_row0 * p.k_row_stride + (long long)head_kv * p.k_head_stride;
  const af_u16* v_base =
      (const af_u16*)p.v + v_batch + (long long)k_row0 * p.v_row_stride + (long long)head_kv * p.v_head_stride;

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
        load_tile<kBlockN>(sK + stage, k_base + (long long)n0 * p.k_row_stride, p.k_row_stride, k_len - n0, p.head_dim);
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
          load_tile<kBlockN>(sK + ahead, k_base + (long long)n_ahead * p.k_row_stride, p.k_row_stride, k_len - n_ahead,
                             p.head_dim);
          load_tile<kBlockN>(sV + ahead, v_base + (long long)n_ahead * p.v_row_stride, p.v_row_stride, k_len - n_ahead,
                             p.head_dim);
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
        for (int mt = 0; mt < kMTiles; ++mt) ldmatrix_x4(fragment_address(q_frag, mt * 16, ks), a[mt]);
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
              const bool visible = col < k_len && (p.window_right < 0 || col <= row + diagonal + p.window_right) &&
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
        load_tile<kBlockN>(sK, k_base + (long long)n_prev * p.k_row_stride, p.k_row_stride, k_len - n_prev, p.head_dim);
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
                     (long long)(out_rows.row0 + out_m0) * p.out_row_stride +
                     (long long)out_tile.head * p.out_head_stride;
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
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(x0), "=r"(x1), "=r"(x2), "=r"(x3)
                     : "r"(address));
        asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "r"(x0), "r"(x1), "r"(x2), "r"(x3)
                     : "memory");
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
