// Kernel arguments, shared verbatim by the host (C++) and the kernel sources (NVRTC): only
// built-in types, fixed layout, no headers. FlashAttention-2's flash.h pattern: a base struct
// with what every attention kernel reads, and one struct per kernel job that extends it.
//
// Addressing (all strides in elements, pointers to element 0):
//   q row i of sequence b, head h:   q + b*q_batch_stride + (q_row0(b) + i)*q_row_stride + h*q_head_stride
//   k/v row j of sequence b, head hk: k + kvb(b)*k_batch_stride + (k_row0(b) + j)*k_row_stride + hk*k_head_stride
//   q_row0(b) = cu_seqlens_q[b] (varlen) or 0; k_row0(b) = cu_seqlens_k[b] or 0, plus leftpad_k[b];
//   kvb(b) = kv_batch_idx[b] or b. Paged k/v: row r of sequence b is row r % page_size of page
//   block_table[b * block_table_batch_stride + r / page_size], and k_batch_stride is the page stride.
// Every index read from device arrays is clamped against total_q / total_k / seqlen_k / num_pages
// in the kernels, so inconsistent values can never address memory outside the tensors.
#ifndef AF_ATTENTION_PARAMS_CUH
#define AF_ATTENTION_PARAMS_CUH

struct AttentionParams {
  const void* q;  // 16-bit (B, Sq, H, D) or (total_q, H, D)
  const void* k;  // 16-bit (B, Sk, Hk, D), (total_k, Hk, D) or paged (num_pages, page_size, Hk, D)
  const void* v;  // like k
  void* out;      // like q
  float* lse;     // optional fp32 natural-log LSE: (B, H, Sq) or (H, total_q); null when absent

  long long q_batch_stride, q_row_stride, q_head_stride;
  long long k_batch_stride, k_row_stride, k_head_stride;
  long long v_batch_stride, v_row_stride, v_head_stride;
  long long out_batch_stride, out_row_stride, out_head_stride;
  long long lse_batch_stride, lse_head_stride, lse_row_stride;

  const int* cu_seqlens_q;  // (B + 1) or null
  const int* cu_seqlens_k;  // (B + 1) or null (paged: lengths only, keys start at row 0)
  const int* seqused_k;     // (B) or null: end of the used keys
  const int* leftpad_k;     // (B) or null: first used key row
  const int* kv_batch_idx;  // (B) or null: k/v batch of sequence b (padded k/v only)
  const int* block_table;   // (B, max_blocks) or null: paged k/v
  long long block_table_batch_stride;
  int max_blocks_per_seq;   // columns of block_table (paged)
  int page_size;            // rows per page (paged)
  unsigned int page_magic;  // paged: r / page_size == __umulhi(2 r, page_magic) >> page_magic_shift
  int page_magic_shift;     // for 0 <= r < 2^31, without a division (src/cuda/page_divisor.h)
  int page_offsets_32;      // paged: 1 when 2 * page stride and the row stride fit 32 bits unsigned
                            // (page_offsets_fit_32, src/cuda/page_divisor.h): the decode loader
                            // then addresses rows with 32x32 -> 64-bit multiply-adds
  int num_pages;            // pages in k/v (paged)
  int kv_batches;           // first dimension of padded k/v (kv_batch_idx clamps into it)

  const float* alibi_slopes;  // (H) or (B, H) or null
  long long alibi_batch_stride, alibi_head_stride;

  int batch;         // B
  int heads_q;       // H
  int heads_kv;      // Hk, divides H
  int head_dim;      // D actually present (<= the compiled head dim; the rest is zero-filled)
  int seqlen_q;      // padded Sq, or max_seqlen_q for varlen (sizes the grid)
  int seqlen_k;      // padded Sk, max_seqlen_k for varlen, max_blocks * page_size when paged
  int total_q;       // rows of q: B*Sq padded, total_q varlen
  int total_k;       // rows of k: B*Sk padded, total_k varlen, num_pages * page_size paged
  int window_left;   // -1 unbounded
  int window_right;  // -1 unbounded; causal sets 0

  float scale_log2;  // softmax_scale * log2(e); with softcap: softcap * log2(e)
  float softcap_in;  // softmax_scale / softcap; 0 when softcap is off
};

// Forward attention (the fwd_sm80 and decode families) and its combine step.
//
// Split keys (flash-decoding), when too few query tiles fill the GPU: num_splits CTAs share a
// query tile, each over a contiguous share of its key blocks, and write fp32 partial results
// that are merged into out and lse: by af_flash_combine after fwd_sm80, and by the last of a tile's
// CTAs to finish in the decode family (split_counters counts arrivals), or, on sm_90+ when a decode
// launch's thread-block cluster is its num_splits CTAs, through distributed shared memory (then
// partial_* and split_counters are unused; src/kernels/decode/decode_fwd.cuh). Partial row of (batch b,
// head h, split s, query row r): index ((s * batch + b) * heads_q + h) * seqlen_q + r; partial_out
// holds AF_HEAD_DIM floats per row.
struct FlashFwdParams : AttentionParams {
  int num_splits;      // 1: no split (partial_* unused)
  float* partial_out;  // (num_splits, B, H, seqlen_q, AF_HEAD_DIM) normalised partial outputs
  float* partial_lse;  // (num_splits, B, H, seqlen_q) natural-log LSE of each share, -inf when empty
  // decode: (B, gridDim.y) CTAs of each query tile that have written their share. Zero before a
  // run; the last arrival wraps it back to zero (atom.inc), so a run leaves it ready for the next.
  unsigned int* split_counters;
  // fwd_sm90's persistent form: (batch, head) pairs per group of its tile order (the pairs whose K
  // and V are meant to stay in the L2 together; src/cuda/plan.cpp), at least 1.
  int tile_pair_group;
  // fwd_sm90's dynamic form: the tile counter (in the workspace), 0 before a launch. CTA i starts
  // with tile i; each next tile is gridDim.x + atom.inc(counter, tiles - 1) until one is past the
  // last, so a launch fetches exactly `tiles` times (one per tile after the first wave, one past
  // the end per CTA), which takes the counter through 0 .. tiles - 1 and wraps it back to 0 for
  // the next launch (no memset node in a graph). Null: static striding (tile + gridDim.x).
  unsigned int* tile_counter;
  // decode: the quotients its prologue and epilogue take, without a division instruction (page_magic's
  // scheme: x / d == __umulhi(2 x, magic) >> shift for 0 <= x < 2^31): by G = heads_q / heads_kv (packed
  // row -> query row), by m_tiles = gridDim.y / heads_kv (blockIdx.y -> KV head) and by num_splits (key
  // blocks -> a split's share). Set at launch (set_decode_divisors in src/cuda/launch.cpp).
  int decode_group, decode_m_tiles;
  unsigned int group_magic, m_tiles_magic, splits_magic;
  int group_shift, m_tiles_shift, splits_shift;
  // decode: CTAs per wave (SMs x CTAs per SM) where each CTA prefetches into L2 the query rows and first key blocks
  // of the CTA one wave after it in linear grid order, the one that takes its place; 0: no prefetch. Set from
  // Plan::successor (src/cuda/plan.cpp), only for grids whose keys start at row 0 of an unpadded, unpaged cache.
  int decode_successor;
};

// flash_attn_with_kvcache's steps before the attention (the kvcache family): new k/v rows rotated
// (k only) and written into the cache at rows cache_seqlens[b] + t, q rotated into q_out. One warp
// per (row, head) vector. Rows whose destination or rotary position lies outside the cache or the
// cos/sin table are not written; q positions are clamped into the table.
struct KvAppendParams {
  void* k_cache;           // 16-bit (B_cache, S_cache, Hk, D) or paged (num_pages, page_size, Hk, D); written
  void* v_cache;           // like k_cache
  const void* k;           // 16-bit (B, S_new, Hk, D) new rows, or null (q only)
  const void* v;           // like k
  const void* q;           // 16-bit (B, Sq, H, D) or null
  void* q_out;             // like q: q rotated
  const void* rotary_cos;  // (seqlen_ro, rotary_dim / 2), 16-bit like k, or null: no rotation
  const void* rotary_sin;

  long long kc_batch_stride, kc_row_stride, kc_head_stride;  // paged: batch stride = page stride
  long long vc_batch_stride, vc_row_stride, vc_head_stride;
  long long k_batch_stride, k_row_stride, k_head_stride;
  long long v_batch_stride, v_row_stride, v_head_stride;
  long long q_batch_stride, q_row_stride, q_head_stride;
  long long qo_batch_stride, qo_row_stride, qo_head_stride;
  long long cos_row_stride, sin_row_stride;

  const int* cache_seqlens;    // (B): rows already in the cache
  int* seqused_out;            // (B) or null: cache_seqlens[b] + S_new
  const int* cache_batch_idx;  // (B) or null: cache batch of sequence b (padded caches)
  const int* block_table;      // (B, max_blocks) or null: paged caches
  long long block_table_batch_stride;
  int max_blocks_per_seq;
  int page_size;
  int num_pages;
  int cache_batches;  // padded: B_cache
  int cache_rows;     // padded: S_cache

  int batch;        // B
  int seqlen_new;   // S_new (0 without k/v)
  int heads_kv;     // Hk
  int seqlen_q;     // Sq (0 without q)
  int heads_q;      // H
  int head_dim;     // D
  int rotary_dim;   // even, <= D; 0 without rotation
  int seqlen_ro;    // rows of cos/sin
  int interleaved;  // 1: pairs (2i, 2i + 1); 0: GPT-NeoX halves (i, i + rotary_dim / 2)
  int q_per_row;    // 1: query row t at cache_seqlens[b] + t (causal or local); 0: all at cache_seqlens[b]
};

#endif
