// The decode family's loader and kernel (constants and the design in decode_config.cuh).

// Where the keys of one (sequence, KV head) live, resolved once per CTA; every index read from
// device memory is clamped so that no value can move an access outside k and v.
struct KeySpan {
  const af_u16* k;  // element 0 of this KV head in sequence b's rows (paged: in page 0)
  const af_u16* v;
  int row0;  // first used key row (varlen offset and left padding)
  int len;   // used keys
};

__device__ __forceinline__ KeySpan key_span(const FlashFwdParams& p, int batch, int head_kv) {
  const bool paged = p.block_table != nullptr;
  int row0 = 0, len = p.seqlen_k, avail = p.seqlen_k;
  long long k_off = (long long)head_kv * p.k_head_stride, v_off = (long long)head_kv * p.v_head_stride;
  if (paged) {
    avail = p.max_blocks_per_seq * p.page_size;
    if (p.cu_seqlens_k != nullptr) {  // paged varlen: lengths only, keys start at row 0
      const int begin = clamp_int(p.cu_seqlens_k[batch], 0, 0x7fffffff);
      len = clamp_int(p.cu_seqlens_k[batch + 1], begin, 0x7fffffff) - begin;
    }
    len = min(len, avail);
  } else if (p.cu_seqlens_k != nullptr) {
    row0 = clamp_int(p.cu_seqlens_k[batch], 0, p.total_k);
    avail = p.total_k - row0;
    len = clamp_int(p.cu_seqlens_k[batch + 1], row0, p.total_k) - row0;
  } else {
    const int kv_batch = p.kv_batch_idx != nullptr ? clamp_int(p.kv_batch_idx[batch], 0, p.kv_batches - 1) : batch;
    k_off += (long long)kv_batch * p.k_batch_stride;
    v_off += (long long)kv_batch * p.v_batch_stride;
  }
  if (p.seqused_k != nullptr) len = clamp_int(p.seqused_k[batch], 0, avail);
  if (p.leftpad_k != nullptr) {
    const int pad = clamp_int(p.leftpad_k[batch], 0, len);
    row0 += pad;
    len -= pad;
  }
  return {(const af_u16*)p.k + k_off, (const af_u16*)p.v + v_off, row0, len};
}

constexpr int kRowsPerPass = kThreads / kChunks;        // K/V rows one pass of all threads covers
constexpr int kRowsPerThread = kBlockN / kRowsPerPass;  // rows each thread copies per key block
static_assert(kThreads % kChunks == 0 && kBlockN % kRowsPerPass == 0, "whole rows per pass");

// Paged K/V. A key block spans at most ceil((kBlockN - 1) / page_size) + 1 pages; from
// kMinSharedPage rows per page that is at most 32, so lane l of every warp holds the block-table
// entry of the block's page first + l and each key row takes its page from that lane by a shuffle.
// Those entries are read kPagesAhead key blocks before their copies are issued, so a block's
// copies wait for no table load. Reason: reading them when the block is issued (v5 in
// bench/device/NOTES.md) put the only dependent global load of the loop between a block landing
// and the next copies, stalling the warps that keep the K/V stream going; paged ran at 0.82-0.92x
// of the contiguous cache where the stream is near 4.4 TB/s. That shared-page path also needs
// page_offsets_32 and head_dim % 8 == 0 (shared_pages); other paged calls read each row's entry
// when its block is issued and address it in 64 bits.
constexpr int kMinSharedPage = (kBlockN - 1 + 30) / 31;
constexpr int kPagesAhead = kStages - 1;  // the blocks in flight ahead of the one computed
static_assert(kPagesAhead >= 1, "one table lookup ahead at least");

// The shared-page loader serves this call (uniform over the grid). Its row addressing is
// 32x32 -> 64-bit multiply-adds (page_offsets_32) and its copies are whole 16-byte chunks or
// nothing (head_dim % 8 == 0: no chunk is cut by head_dim).
__device__ __forceinline__ bool shared_pages(const FlashFwdParams& p) {
  return p.page_size >= kMinSharedPage && p.page_offsets_32 != 0 && (p.head_dim & 7) == 0;
}

// x / d for 0 <= x < 2^31 from d's magic number and shift (src/cuda/page_divisor.h), without a division.
__device__ __forceinline__ int magic_divide(int x, af_u32 magic, int shift) {
  return int(__umulhi(af_u32(x) << 1, magic) >> shift);
}

// Page index of key row r (0 <= r < 2^31): r / page_size without a division.
__device__ __forceinline__ int page_of(const FlashFwdParams& p, int r) {
  return magic_divide(r, p.page_magic, p.page_magic_shift);
}

// Query row of packed row r: r / G.
__device__ __forceinline__ int packed_query_row(const FlashFwdParams& p, int r) {
  return magic_divide(r, p.group_magic, p.group_shift);
}

// Paged K/V: the first kThreads entries of the CTA's block-table row, copied into shared memory when the CTA
// starts, loaded while the lengths are, so that the first K/V copies wait on two dependent loads (lengths, then
// K/V), not three (lengths, table, K/V). Here rather than passed along: a pointer to it kept one more register
// through the loop, which NVRTC 13.5 spilled in the d64 4-warp tile.
__shared__ int table_head[kThreads];

// Entry i of the CTA's block-table row `table` (global): from table_head where it holds it.
__device__ __forceinline__ int table_entry(const FlashFwdParams& p, const int* table, int i) {
  return i < min(p.max_blocks_per_seq, kThreads) ? table_head[i] : table[i];
}

// This lane's block-table entry for key block n_block, which must hold a key: page first + lane of
// the block, or the last key's page past it, so every entry read lies in the sequence's used pages.
// Not clamped here: the clamp would wait for the load; the loader clamps when it uses the entry.
__device__ __forceinline__ int block_page_entry(const FlashFwdParams& p, const KeySpan& span, const int* table,
                                                int n_block) {
  const int first = page_of(p, span.row0 + n_block * kBlockN);
  const int last = page_of(p, span.row0 + span.len - 1);
  return table_entry(p, table, min(first + (int(threadIdx.x) & 31), last));
}

// Async copy of one paged key row into row j of the K and V tiles: `row` of the span lies in page
// `index` of the table, whose entry is `page` (clamped into the pool); nothing is read unless inside.
__device__ __forceinline__ void copy_paged_row(const FlashFwdParams& p, const KeySpan& span, af_u32 s_k, af_u32 s_v,
                                               int j, int col, int bytes, int row, int index, int page,
                                               unsigned long long policy) {
  // page and in_page are >= 0 and strides are validated >= 0: zero-extended factors make each
  // product one 32x32 -> 64-bit multiply plus one multiply-add, not a full 64-bit multiply.
  const unsigned long long pg = unsigned(page), in_page = unsigned(row - index * p.page_size);
  const long long k_off = bytes > 0 ? (long long)(pg * p.k_batch_stride + in_page * p.k_row_stride) : 0;
  const long long v_off = bytes > 0 ? (long long)(pg * p.v_batch_stride + in_page * p.v_row_stride) : 0;
  cp_async_16_hint(s_k + tile_offset(j, col), span.k + k_off + col, bytes, policy);
  cp_async_16_hint(s_v + tile_offset(j, col), span.v + v_off + col, bytes, policy);
}

// Async copy of key rows of key block n_block of a span into the swizzled K and V tiles of one ring
// stage, with an evict-first L2 policy: a decode step (one query tile per (sequence, KV head)) reads each block
// once; where several CTAs read the same K/V (packed rows past one tile, paged prefill, repeated kv_batch_idx)
// the policy is unmeasured. Each thread keeps one 16-byte chunk column; rows past the keys and dims past head_dim are
// zero-filled without reading. Paged rows read their page clamped into the pool; rows past the keys
// take the last key's row (a used page) and copy nothing. With shared pages (shared_pages(p)),
// entries[0] holds this block's entry (block_page_entry); the call shifts entries
// down and reads block n_block + kPagesAhead's into the last slot when that block holds keys
// (n_block + kPagesAhead < n_block_max). Calls come for consecutive blocks.
__device__ __forceinline__ void load_kv_block(const FlashFwdParams& p, const KeySpan& span, const int* table,
                                              int (&entries)[kPagesAhead], int n_block_max, af_u32 s_k, af_u32 s_v,
                                              int n_block) {
  const int n0 = n_block * kBlockN;
  const int row_in_pass = int(threadIdx.x) / kChunks;
  const int col = (int(threadIdx.x) % kChunks) * 8;
  const int left = p.head_dim - col;
  const int col_bytes = left >= 8 ? 16 : (left > 0 ? left * 2 : 0);
  const unsigned long long policy = l2_evict_first();  // a decode step reads each K/V block once (see load_kv_block)
  if (table == nullptr) {
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int j = row_in_pass + i * kRowsPerPass;
      const bool inside = n0 + j < span.len && col_bytes > 0;
      const long long row = span.row0 + n0 + j;
      const int bytes = inside ? col_bytes : 0;
      cp_async_16_hint(s_k + tile_offset(j, col), span.k + (inside ? row * p.k_row_stride : 0) + col, bytes, policy);
      cp_async_16_hint(s_v + tile_offset(j, col), span.v + (inside ? row * p.v_row_stride : 0) + col, bytes, policy);
    }
    return;
  }
  if (shared_pages(p)) {
    const int lane_page = clamp_int(entries[0], 0, p.num_pages - 1);  // the block's page first + lane
#pragma unroll
    for (int a = 0; a + 1 < kPagesAhead; ++a) entries[a] = entries[a + 1];
    if (n_block + kPagesAhead < n_block_max)
      entries[kPagesAhead - 1] = block_page_entry(p, span, table, n_block + kPagesAhead);
    const int first = page_of(p, span.row0 + n0);
    // Per row: its doubled key row (one min-add), page index (multiply-high, shift), the entry (a
    // shuffle), twice its in-page row (one multiply-add), then per tensor two 32x32 -> 64-bit
    // multiply-adds onto a base hoisted out of the loop: page * page bytes, 2 in-page rows * row
    // stride. The form before paid two 64-bit multiplies per row and tensor and a src-size per copy
    // (23 SASS instructions per 16-byte copy, the contiguous loader 18: bench/device/NOTES.md).
    // Columns past head_dim point at column 0 and copy nothing.
    const int src_col = col < p.head_dim ? col : 0;
    const char* k_base = (const char*)(span.k + src_col);
    const char* v_base = (const char*)(span.v + src_col);
    const af_u32 k_page_bytes = af_u32(p.k_batch_stride) * 2u, v_page_bytes = af_u32(p.v_batch_stride) * 2u;
    const af_u32 k_row = af_u32(p.k_row_stride), v_row = af_u32(p.v_row_stride);
    const int keys_left = col < p.head_dim ? span.len - n0 : 0;  // rows j < keys_left hold keys
    // Doubled key rows (page_of's 2 r), unsigned: rows < 2^31, so 2 r < 2^32.
    const af_u32 row2_first = 2u * (af_u32(span.row0 + n0) + af_u32(row_in_pass));
    const af_u32 row2_last = 2u * af_u32(span.row0 + span.len - 1);  // rows past the keys: the last key's
    const af_u32 minus_page2 = 0u - 2u * af_u32(p.page_size);
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int j = row_in_pass + i * kRowsPerPass;
      const af_u32 row2 = min(row2_first + af_u32(2 * i * kRowsPerPass), row2_last);
      const af_u32 index = __umulhi(row2, p.page_magic) >> p.page_magic_shift;
      const af_u32 page = af_u32(__shfl_sync(0xffffffffu, lane_page, int(index) - first));
      const af_u32 in_page2 = row2 + index * minus_page2;  // 2 (row - index * page_size), mod 2^32
      const char* k_src = mad_wide(in_page2, k_row, mad_wide(page, k_page_bytes, k_base));
      const char* v_src = mad_wide(in_page2, v_row, mad_wide(page, v_page_bytes, v_base));
      cp_async_16_or_zero_hint(s_k + tile_offset(j, col), k_src, j >= keys_left, policy);
      cp_async_16_or_zero_hint(s_v + tile_offset(j, col), v_src, j >= keys_left, policy);
    }
    return;
  }
  // All of a thread's table loads back to back, so that their latencies overlap (measured: one load
  // then one copy per row ran paged decode at 0.74-0.85x of the contiguous cache).
  int index[kRowsPerThread], page[kRowsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i)
    index[i] = page_of(p, span.row0 + min(n0 + row_in_pass + i * kRowsPerPass, span.len - 1));
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) page[i] = table_entry(p, table, index[i]);
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int j = row_in_pass + i * kRowsPerPass;
    copy_paged_row(p, span, s_k, s_v, j, col, n0 + j < span.len ? col_bytes : 0, span.row0 + min(n0 + j, span.len - 1),
                   index[i], clamp_int(page[i], 0, p.num_pages - 1), policy);
  }
}

// The L2 lines of `bytes` bytes from `address` (global memory).
__device__ __forceinline__ void prefetch_l2(const void* address, int bytes) {
  const unsigned long long end = (unsigned long long)address + bytes;
  for (unsigned long long line = (unsigned long long)address & ~127ull; line < end; line += 128)
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(line));
}

// Key rows a CTA's prologue copies: its first kStages - 1 key blocks.
constexpr int kPrefetchRows = (kStages - 1) * kBlockN;

// Grids of more CTAs than run at once: the CTA p.decode_successor places after this one in linear grid order
// (x fastest; unsplit, so x is 0) takes the place of one that finishes about when this one does. Its first
// kPrefetchRows key rows of K and V and its packed query rows go into L2 now, while this CTA computes its last
// blocks and merges its warps, so that DRAM keeps streaming between a CTA and the next and the next one's first
// copies are L2 hits. The host sets decode_successor only where those addresses need no loads: keys from row 0 of
// an unpadded, unpaged cache, no varlen, leftpad, kv_batch_idx or left window edge. Rows past seqlen_k are skipped.
__device__ __forceinline__ void prefetch_successor(const FlashFwdParams& p) {
  const int next = int(blockIdx.z * gridDim.y + blockIdx.y) + p.decode_successor;
  if (next >= int(gridDim.y * gridDim.z)) return;
  const int batch = next / int(gridDim.y), y = next - batch * int(gridDim.y);
  const int head_kv = magic_divide(y, p.m_tiles_magic, p.m_tiles_shift);
  const int r0 = (y - head_kv * p.decode_m_tiles) * kBlockM;
  const int row_bytes = p.head_dim * 2;
  const af_u16* k = (const af_u16*)p.k + (long long)batch * p.k_batch_stride + (long long)head_kv * p.k_head_stride;
  const af_u16* v = (const af_u16*)p.v + (long long)batch * p.v_batch_stride + (long long)head_kv * p.v_head_stride;
  for (int row = int(threadIdx.x); row < min(kPrefetchRows, p.seqlen_k); row += kThreads) {
    prefetch_l2(k + (long long)row * p.k_row_stride, row_bytes);
    prefetch_l2(v + (long long)row * p.v_row_stride, row_bytes);
  }
  const int r = r0 + int(threadIdx.x);
  if (int(threadIdx.x) < kBlockM && r < p.seqlen_q * p.decode_group) {
    const int i = packed_query_row(p, r), head = head_kv * p.decode_group + r - i * p.decode_group;
    prefetch_l2((const af_u16*)p.q + (long long)batch * p.q_batch_stride + (long long)i * p.q_row_stride +
                    (long long)head * p.q_head_stride,
                row_bytes);
  }
}

// Columns [col, col + 8) of out row `row` (of sequence b's rows), head `head`, and its lse.
__device__ __forceinline__ void store_row_chunk(const FlashFwdParams& p, int batch, int row, int head, int col,
                                                const float (&acc)[8], float lse) {
  af_u16* dst = (af_u16*)p.out + (long long)batch * p.out_batch_stride + (long long)row * p.out_row_stride +
                (long long)head * p.out_head_stride + col;
  if (col + 8 <= p.head_dim) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "r"(pack2(acc[0], acc[1])),
                 "r"(pack2(acc[2], acc[3])), "r"(pack2(acc[4], acc[5])), "r"(pack2(acc[6], acc[7]))
                 : "memory");
  } else {
#pragma unroll
    for (int c = 0; c < 8; ++c)
      if (c < p.head_dim - col) dst[c] = af_u16(pack2(acc[c], 0.f) & 0xffffu);
  }
  if (p.lse != nullptr && col == 0)
    p.lse[(long long)batch * p.lse_batch_stride + (long long)head * p.lse_head_stride +
          (long long)row * p.lse_row_stride] = lse;
}

#if __CUDA_ARCH__ >= 900
// Thread-block clusters (sm_90+): the splits of a query tile as the CTAs of one cluster, which
// merge their shares through distributed shared memory (DSMEM) instead of global memory.

// CTAs in this CTA's cluster (1 without a cluster launch) and this CTA's rank in it.
__device__ __forceinline__ int cluster_ctas() {
  af_u32 n;
  asm("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return int(n);
}
__device__ __forceinline__ int cluster_rank() {
  af_u32 r;
  asm("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return int(r);
}
// The address of this CTA's shared-memory word `address` in the CTA of rank `rank` of the cluster.
__device__ __forceinline__ af_u32 cluster_address(af_u32 address, int rank) {
  af_u32 mapped;
  asm("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(mapped) : "r"(address), "r"(rank));
  return mapped;
}
__device__ __forceinline__ float cluster_load(af_u32 address) {
  float x;
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(x) : "r"(address) : "memory");
  return x;
}
__device__ __forceinline__ void cluster_load_8(af_u32 address, float (&x)[8]) {
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(x[0]), "=f"(x[1]), "=f"(x[2]), "=f"(x[3])
               : "r"(address)
               : "memory");
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(x[4]), "=f"(x[5]), "=f"(x[6]), "=f"(x[7])
               : "r"(address + 16)
               : "memory");
}
// Every thread of every CTA of the cluster: the writes before it (release) are visible to the
// reads after it (acquire) in any CTA of the cluster.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// Every thread of every CTA of the cluster, without ordering memory: before a CTA exits, so that its
// shared memory outlives its peers' reads (their values were used before they arrive). The release
// form would also wait for this CTA's global stores to be visible GPU-wide (MEMBAR.GPU in SASS).
__device__ __forceinline__ void cluster_sync_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
}

// Shares a cluster merges at most: the largest cluster (16 CTAs on sm_90, non-portable above 8).
constexpr int kMaxClusterSplits = 16;

// Merges the num_splits shares of a query tile, one per CTA of the cluster, each left by its CTA in
// its own shared memory at `share` (kBlockM rows of kHeadDim normalised fp32 outputs, then kBlockM
// natural-log LSEs, -inf for an empty share): lse = log(sum_s exp(lse_s)),
// out = sum_s exp(lse_s - lse) * out_s. The tile's (row, 8-column chunk) items are dealt out in
// contiguous ranges, CTA r taking the r-th, so the CTAs merge in parallel and each reads every
// peer's share of its items once. Two rounds of distributed shared-memory loads per item, each with
// all its loads in flight: every share's LSE, then every share's 8 outputs (the global merge's
// running maximum would put a round trip between each 4 shares' LSEs and their outputs). Called by
// every thread after the first cluster_sync; the caller syncs the cluster again before any CTA exits
// (a peer may still be reading its share).
__device__ __forceinline__ void merge_cluster_shares(const FlashFwdParams& p, int batch, int query_row0, int head_kv,
                                                     int group, int r0, int rows, af_u32 share) {
  constexpr float kLog2e = 1.4426950408889634f;
  const int splits = p.num_splits;  // 2..kMaxClusterSplits (the cluster's CTAs)
  const int chunks = (p.head_dim + 7) / 8;
  const int items = min(kBlockM, rows - r0) * chunks;
  const int per_cta = (items + splits - 1) / splits;
  const int first = cluster_rank() * per_cta, last = min(items, first + per_cta);
  const af_u32 share_lse = share + kBlockM * kHeadDim * 4;
  for (int item = first + int(threadIdx.x); item < last; item += kThreads) {
    const int row = item / chunks;
    const int col = (item % chunks) * 8;
    const af_u32 lse_address = share_lse + row * 4;
    const af_u32 out_address = share + (row * kHeadDim + col) * 4;
    float lse_s[kMaxClusterSplits];
#pragma unroll
    for (int s = 0; s < kMaxClusterSplits; ++s)
      lse_s[s] = s < splits ? cluster_load(cluster_address(lse_address, s)) : AF_NEG_INF;
    float top = AF_NEG_INF;
#pragma unroll
    for (int s = 0; s < kMaxClusterSplits; ++s) top = fmaxf(top, lse_s[s]);
    float total = 0.f, acc[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[c] = 0.f;
    if (top != AF_NEG_INF) {
      // Shares whose outputs are loaded together: 8 (16 16-byte loads), 4 at d64, where 8 took the
      // kernel from 99 to 128 registers (nvcc 13.0), the limit for two CTAs per SM.
      constexpr int kBatch = kHeadDim >= 128 ? 8 : 4;
#pragma unroll
      for (int s0 = 0; s0 < kMaxClusterSplits; s0 += kBatch) {
        if (s0 >= splits) break;
        float out_s[kBatch][8];
#pragma unroll
        for (int u = 0; u < kBatch; ++u)
          if (s0 + u < splits) cluster_load_8(cluster_address(out_address, s0 + u), out_s[u]);
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          if (s0 + u >= splits) break;
          const float weight = exp2_approx((lse_s[s0 + u] - top) * kLog2e);  // 0 for an empty share
          total += weight;
#pragma unroll
          for (int c = 0; c < 8; ++c) acc[c] += weight * out_s[u][c];
        }
      }
    }
    const float inverse = total > 0.f ? 1.f / total : 0.f;
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[c] *= inverse;
    const int r = r0 + row, i = packed_query_row(p, r);
    store_row_chunk(p, batch, query_row0 + i, head_kv * group + r - i * group, col, acc,
                    total > 0.f ? top + log2_approx(total) * 0.6931471805599453f : AF_NEG_INF);
  }
}
#endif

extern "C" __global__ void __launch_bounds__(kThreads, AF_MIN_BLOCKS) af_decode_fwd(const FlashFwdParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const af_u32 sQ = shared_address(smem);  // (kBlockM, kHeadDim) packed query rows
  const af_u32 sK = sQ + kQBytes;          // (kBlockN, kHeadDim) per stage: K0 V0 K1 V1 ...
  const af_u32 sV = sK + kKVBytes;
  constexpr af_u32 kStageBytes = 2 * kKVBytes;

  const int lane = int(threadIdx.x) & 31;
  const int warp = int(threadIdx.x) >> 5;
  const int split = int(blockIdx.x);
  const int head_kv = magic_divide(int(blockIdx.y), p.m_tiles_magic, p.m_tiles_shift);
  const int r0 = (int(blockIdx.y) - head_kv * p.decode_m_tiles) * kBlockM;  // first packed row of this CTA
  const int batch = int(blockIdx.z);
  const int group = p.decode_group;  // G
  // Launched as a programmatic dependent on sm_90+ (launch.cpp): cache_seqlens, the block table
  // and K/V may come from the previous kernel, so nothing global is read before this.
  grid_dependents_launch();
  grid_dependency_wait();
  // Paged: the sequence's first kThreads block-table entries are loaded (one per thread) before the lengths,
  // and stored to table_head after them, so that both loads are in flight at once; the row's first
  // kThreads * 32 entries go into L2 (one 128-byte line per thread) for the later blocks.
  const int* table = p.block_table != nullptr ? p.block_table + (long long)batch * p.block_table_batch_stride : nullptr;
  int own_entry = 0;
  if (table != nullptr) {
    if (int(threadIdx.x) < p.max_blocks_per_seq) own_entry = table[threadIdx.x];
    if (int(threadIdx.x) * 32 < p.max_blocks_per_seq)
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(table + int(threadIdx.x) * 32));
  }

  const QueryRows query = query_rows(p, batch);
  const int rows = query.len * group;  // packed rows of this (sequence, KV head)
  if (r0 >= rows) return;
  const KeySpan span = key_span(p, batch, head_kv);
  if (table != nullptr) {  // uniform over the CTA
    if (int(threadIdx.x) < p.max_blocks_per_seq) table_head[threadIdx.x] = own_entry;
    __syncthreads();
  }
  const int diagonal = span.len - query.len;  // key aligned with query row i is i + diagonal (bottom-right)

  // Key blocks that can hold a visible key for the query rows [i_first, i_last] of this tile.
  const int i_first = packed_query_row(p, r0), i_last = packed_query_row(p, min(r0 + kBlockM, rows) - 1);
  int key_end = span.len;
  if (p.window_right >= 0) key_end = min(key_end, i_last + diagonal + p.window_right + 1);
  const int key_begin = p.window_left >= 0 ? max(0, i_first + diagonal - p.window_left) : 0;
  int n_block_min = key_begin / kBlockN;
  int n_block_max = key_end > key_begin ? (key_end + kBlockN - 1) / kBlockN : n_block_min;
  if (p.num_splits > 1) {  // this CTA's share: contiguous, at most ceil(blocks / splits) blocks
    const int share = magic_divide(n_block_max - n_block_min + p.num_splits - 1, p.splits_magic, p.splits_shift);
    n_block_min += split * share;
    n_block_max = min(n_block_max, n_block_min + share);
  }
  // Key blocks [unmasked_begin, unmasked_end) are inside the keys and both window edges for every row.
  int unmasked_end = span.len / kBlockN;
  if (p.window_right >= 0) unmasked_end = min(unmasked_end, max(0, i_first + diagonal + p.window_right + 1) / kBlockN);
  const int unmasked_begin =
      p.window_left >= 0 ? (max(0, i_last + diagonal - p.window_left) + kBlockN - 1) / kBlockN : 0;

  // The block-table entries of the first kPagesAhead key blocks, read before anything waits on them.
  int page_entries[kPagesAhead];
#pragma unroll
  for (int a = 0; a < kPagesAhead; ++a)
    page_entries[a] = table != nullptr && shared_pages(p) && n_block_min + a < n_block_max
                          ? block_page_entry(p, span, table, n_block_min + a)
                          : 0;

  // Q: packed rows r0..r0+15, row r from query row r / G of head hk * G + r % G.
  {
    constexpr int kItems = kBlockM * kChunks;
#pragma unroll
    for (int i = 0; i < (kItems + kThreads - 1) / kThreads; ++i) {
      const int item = i * kThreads + int(threadIdx.x);
      if (kItems % kThreads == 0 || item < kItems) {
        const int row = item / kChunks;
        const int col = (item % kChunks) * 8;
        const int r = r0 + row, query_row = packed_query_row(p, r);
        const int left = p.head_dim - col;
        const int bytes = r < rows ? (left >= 8 ? 16 : (left > 0 ? left * 2 : 0)) : 0;
        const af_u16* src = (const af_u16*)p.q;
        if (bytes > 0)
          src += (long long)batch * p.q_batch_stride + (long long)(query.row0 + query_row) * p.q_row_stride +
                 (long long)(head_kv * group + r - query_row * group) * p.q_head_stride + col;
        cp_async_16(sQ + tile_offset(row, col), src, bytes);
      }
    }
  }
  // Q with the first block, then one group per ring block ahead.
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    const int n_block = n_block_min + i;
    if (n_block < n_block_max)
      load_kv_block(p, span, table, page_entries, n_block_max, sK + i * kStageBytes, sV + i * kStageBytes, n_block);
    cp_async_commit();
  }

  // Thread fragment coordinates: lane holds rows g and g + 8 of the m16 tile, columns 2t, 2t + 1
  // (after the first copies are issued: nothing here delays them).
  const int g = lane >> 2;
  const int t = lane & 3;
  int row_query[2];                  // query row of packed rows g, g + 8
  float alibi_log2[2] = {0.f, 0.f};  // slope * log2(e) of their heads
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = r0 + g + 8 * half;
    row_query[half] = packed_query_row(p, r);
    if (kExtras && p.alibi_slopes != nullptr && r < rows)
      alibi_log2[half] =
          p.alibi_slopes[(long long)batch * p.alibi_batch_stride +
                         (long long)(head_kv * group + r - row_query[half] * group) * p.alibi_head_stride] *
          1.4426950408889634f;
  }

  float o[kDTiles][4];                          // (16 rows, 8 dims) accumulators
  float row_max[2] = {AF_NEG_INF, AF_NEG_INF};  // rows g, g + 8 (raw scores; log2 units with extras)
  float row_sum[2] = {0.f, 0.f};                // this thread's partial sums of exp2
#pragma unroll
  for (int dt = 0; dt < kDTiles; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;

  // ldmatrix lane addressing (fragment layouts of mma.m16n8k16): Q x4 = one 16x16 A tile; this
  // warp's 16 keys of K: x4 = two n8 B tiles; of V: x4.trans = two n8 B tiles of V^T.
  const af_u32 q_frag = fragment_base(sQ, lane & 15, lane >> 4);
  const af_u32 k_frag = fragment_base(sK, warp * 16 + ((lane >> 4) << 3) + (lane & 7), (lane >> 3) & 1);
  const af_u32 v_frag = fragment_base(sV, warp * 16 + (((lane >> 3) & 1) << 3) + (lane & 7), lane >> 4);
  const float scale = kExtras ? 1.f : p.scale_log2;

  // A CTA with no key block (an empty sequence, rows before the keys) prefetches its successor's at once.
  if (n_block_min == n_block_max && p.decode_successor != 0) prefetch_successor(p);
  int stage_index = 0;
  for (int n_block = n_block_min; n_block < n_block_max; ++n_block) {
    // Block n has landed (the newer kStages - 2 groups may be in flight) and every warp is done
    // with block n - 1: its buffers take block n + kStages - 1.
    cp_async_wait<kStages - 2>();
    __syncthreads();
    {
      const int ahead = n_block + kStages - 1;
      const int ahead_stage = (stage_index + kStages - 1) % kStages;
      if (ahead < n_block_max)
        load_kv_block(p, span, table, page_entries, n_block_max, sK + ahead_stage * kStageBytes,
                      sV + ahead_stage * kStageBytes, ahead);
      else if (p.decode_successor != 0 && (ahead == n_block_max || n_block == n_block_min))
        prefetch_successor(p);  // once, when this CTA has no more copies to issue
      cp_async_commit();
    }
    const af_u32 stage = af_u32(stage_index) * kStageBytes;
    const int n0 = n_block * kBlockN + warp * 16;  // this warp's first key

    float s[2][4];  // (16 rows, 8 keys) x 2
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      af_u32 a[4], b[4];
      ldmatrix_x4(fragment_address(q_frag, 0, ks), a);
      ldmatrix_x4(fragment_address(k_frag + stage, 0, ks), b);
      mma_16816(s[0], a, b[0], b[1]);
      mma_16816(s[1], a, b[2], b[3]);
    }

    if (kExtras) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[nt][e];
          x = p.softcap_in != 0.f ? tanh_approx(x * p.softcap_in) * p.scale_log2 : x * p.scale_log2;
          const int half = e >> 1;
          if (alibi_log2[half] != 0.f) {
            const int col = n0 + nt * 8 + 2 * t + (e & 1);
            x -= alibi_log2[half] * fabsf(float(row_query[half] + diagonal - col));
          }
          s[nt][e] = x;
        }
    }
    if (n_block >= unmasked_end || n_block < unmasked_begin) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = row_query[e >> 1];
          const int col = n0 + nt * 8 + 2 * t + (e & 1);
          const bool visible = col < span.len && (p.window_right < 0 || col <= row + diagonal + p.window_right) &&
                               (p.window_left < 0 || col >= row + diagonal - p.window_left);
          if (!visible) s[nt][e] = AF_NEG_INF;
        }
    }

    // Online softmax over this warp's 16 keys; a quad's 4 lanes share rows.
    float base[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float m = fmaxf(row_max[half],
                      fmaxf(fmaxf(s[0][2 * half], s[0][2 * half + 1]), fmaxf(s[1][2 * half], s[1][2 * half + 1])));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      // A row with no visible key so far keeps max -inf; subtracting 0 then gives exp2(-inf) = 0.
      base[half] = m == AF_NEG_INF ? 0.f : m * scale;
      const float correction = exp2_approx(row_max[half] * scale - base[half]);
      row_max[half] = m;
      row_sum[half] *= correction;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        o[dt][2 * half] *= correction;
        o[dt][2 * half + 1] *= correction;
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        s[nt][2 * half] = exp2_approx(fmaf(s[nt][2 * half], scale, -base[half]));
        s[nt][2 * half + 1] = exp2_approx(fmaf(s[nt][2 * half + 1], scale, -base[half]));
        row_sum[half] += s[nt][2 * half] + s[nt][2 * half + 1];
      }
    }
    af_u32 pa[4];  // P as one A fragment (16 rows, 16 keys)
    pa[0] = pack2(s[0][0], s[0][1]);
    pa[1] = pack2(s[0][2], s[0][3]);
    pa[2] = pack2(s[1][0], s[1][1]);
    pa[3] = pack2(s[1][2], s[1][3]);
#pragma unroll
    for (int dp = 0; dp < kDTiles / 2; ++dp) {
      af_u32 b[4];
      ldmatrix_x4_trans(fragment_address(v_frag + stage, 0, dp), b);
      mma_16816(o[2 * dp], pa, b[0], b[1]);
      mma_16816(o[2 * dp + 1], pa, b[2], b[3]);
    }
    stage_index = stage_index + 1 == kStages ? 0 : stage_index + 1;
  }

  // Merge the warps' states through the (now idle) K/V ring: per warp, 16 rows of
  // (max in log2 units, sum) and 16 x kHeadDim unnormalised outputs, all fp32.
  cp_async_wait<0>();
  __syncthreads();
  float* merge_o = (float*)(smem + kQBytes);           // (kWarps, 16, kHeadDim)
  float* merge_ml = merge_o + kWarps * 16 * kHeadDim;  // (kWarps, 16, 2)
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = row_sum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = g + 8 * half;
    float* dst = merge_o + (warp * 16 + row) * kHeadDim + 2 * t;
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) *(float2*)(dst + dt * 8) = make_float2(o[dt][2 * half], o[dt][2 * half + 1]);
    if (t == 0) {
      merge_ml[(warp * 16 + row) * 2] = row_max[half] == AF_NEG_INF ? AF_NEG_INF : row_max[half] * scale;
      merge_ml[(warp * 16 + row) * 2 + 1] = sum;
    }
  }
  // This CTA's share of the tile for a cluster merge: (kBlockM, kHeadDim) outputs, kBlockM LSEs.
  float* share_o = merge_ml + kWarps * 16 * 2;
  float* share_lse = share_o + kBlockM * kHeadDim;
  static_assert(kWarps * 16 * (kHeadDim + 2) * 4 + kBlockM * (kHeadDim + 1) * 4 <= kStages * 2 * kKVBytes,
                "merge buffers must fit the K/V ring");
#if __CUDA_ARCH__ >= 900
  // The host launches the splits of a tile as one cluster of num_splits CTAs along x (rank = split).
  const bool cluster_merge = p.num_splits > 1 && cluster_ctas() == p.num_splits;
#else
  constexpr bool cluster_merge = false;
#endif
  __syncthreads();

  const float ln2 = 0.6931471805599453f;
  constexpr int kItems = kBlockM * kChunks;  // (row, 8-column chunk) pairs
  for (int item = int(threadIdx.x); item < kItems; item += kThreads) {
    const int row = item / kChunks;
    const int col = (item % kChunks) * 8;
    const int r = r0 + row;
    if (r >= rows || col >= p.head_dim) continue;
    float top = AF_NEG_INF;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) top = fmaxf(top, merge_ml[(w * 16 + row) * 2]);
    float weight[kWarps], total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float m = merge_ml[(w * 16 + row) * 2];
      weight[w] = m == AF_NEG_INF ? 0.f : exp2_approx(m - top);
      total += weight[w] * merge_ml[(w * 16 + row) * 2 + 1];
    }
    const float inverse = total > 0.f ? 1.f / total : 0.f;
    float acc[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[c] = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float* src = merge_o + (w * 16 + row) * kHeadDim + col;
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[c] += weight[w] * src[c];
    }
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[c] *= inverse;
    const float lse = total > 0.f ? (top + log2_approx(total)) * ln2 : AF_NEG_INF;
    const int i = packed_query_row(p, r), head = head_kv * group + r - i * group;
    if (cluster_merge) {
      float* dst = share_o + row * kHeadDim + col;
      *(float4*)dst = make_float4(acc[0], acc[1], acc[2], acc[3]);
      *(float4*)(dst + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
      if (col == 0) share_lse[row] = lse;
      continue;
    }
    if (p.num_splits > 1) {
      const long long partial_row = ((long long)(split * p.batch + batch) * p.heads_q + head) * p.seqlen_q + i;
      float* dst = p.partial_out + partial_row * kHeadDim + col;
      *(float4*)dst = make_float4(acc[0], acc[1], acc[2], acc[3]);
      *(float4*)(dst + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
      if (col == 0) p.partial_lse[partial_row] = lse;
      continue;
    }
    store_row_chunk(p, batch, query.row0 + i, head, col, acc, lse);
  }
#if __CUDA_ARCH__ >= 900
  if (cluster_merge) {
    // The CTAs of a cluster share r0 and rows, so all of them reach both barriers.
    cluster_sync();
    merge_cluster_shares(p, batch, query.row0, head_kv, group, r0, rows, shared_address(share_o));
    cluster_sync_relaxed();
    return;
  }
#endif
  if (p.num_splits == 1) return;

  // The last of the tile's num_splits CTAs to finish merges their shares (no combine kernel):
  // lse = log(sum_s exp(lse_s)), out = sum_s exp(lse_s - lse) * out_s.
  // The CTA barrier orders every thread's share before thread 0's fence, which (cumulative) makes them
  // visible device-wide before it counts the CTA; the last arrival's fence after its count orders the
  // other CTAs' shares before the barrier its threads read them after: cooperative groups' grid-barrier
  // pattern, one fence per CTA instead of one per warp.
  __shared__ af_u32 arrival;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    arrival = atomic_inc_wrap(p.split_counters + (long long)batch * gridDim.y + blockIdx.y, p.num_splits - 1);
    __threadfence();
  }
  __syncthreads();
  if (arrival != af_u32(p.num_splits - 1)) return;
  const long long split_stride = (long long)p.batch * p.heads_q * p.seqlen_q;
  for (int item = int(threadIdx.x); item < kItems; item += kThreads) {
    const int row = item / kChunks;
    const int col = (item % kChunks) * 8;
    const int r = r0 + row;
    if (r >= rows || col >= p.head_dim) continue;
    const int i = packed_query_row(p, r), head = head_kv * group + r - i * group;
    const long long row_index = ((long long)batch * p.heads_q + head) * p.seqlen_q + i;
    // One pass with a running maximum, 4 shares per step so their loads are in flight together.
    constexpr int kBatch = 4;
    float top = AF_NEG_INF, total = 0.f, acc[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[c] = 0.f;
    for (int s0 = 0; s0 < p.num_splits; s0 += kBatch) {
      float share_lse[kBatch], share[kBatch][8];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const long long partial_row = min(s0 + u, p.num_splits - 1) * split_stride + row_index;
        share_lse[u] = s0 + u < p.num_splits ? load_cg(p.partial_lse + partial_row) : AF_NEG_INF;
        load_cg_8(p.partial_out + partial_row * kHeadDim + col, share[u]);
      }
      float next = top;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) next = fmaxf(next, share_lse[u]);
      if (next == AF_NEG_INF) continue;                                       // every share so far is empty
      const float rescale = exp2_approx((top - next) * 1.4426950408889634f);  // 0 while top is -inf
      total *= rescale;
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[c] *= rescale;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const float weight = exp2_approx((share_lse[u] - next) * 1.4426950408889634f);  // 0 for empty shares
        total += weight;
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[c] += weight * share[u][c];
      }
      top = next;
    }
    const float inverse = total > 0.f ? 1.f / total : 0.f;
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[c] *= inverse;
    store_row_chunk(p, batch, query.row0 + i, head, col, acc,
                    total > 0.f ? top + log2_approx(total) * ln2 : AF_NEG_INF);
  }
}
