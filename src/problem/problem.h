// The validated, normalised form of one attention call, shared by every backend.
//
// api/validate.h turns the public af_attention_args into this struct after every
// check has passed; backends never see the public struct, and this header sits
// below them (cpu/ and cuda/ include it, never api/). Padded,
// varlen and paged calls all map onto one addressing scheme:
//
//   query row i of sequence b, head h, dim d is at
//     q + b * q_batch_stride + (q_row0(b) + i) * q_row_stride + h * q_head_stride + d
//   key row j of sequence b (after left padding and paging are resolved) is at
//     k + kv_row_offset(b, j) + hk * k_head_stride + d          (likewise v)
//
// All strides are in elements. For varlen calls the batch strides are 0 and the
// row offsets come from cu_seqlens.
#pragma once

#include <cstdint>

#include "attnforge/attnforge.h"

namespace af {

struct AttentionProblem {
  af_dtype dtype = AF_DTYPE_FLOAT32;  // of q, k, v and out
  af_device_type device_type = AF_DEVICE_CPU;
  int32_t device_index = 0;

  int64_t batch = 0;     // B
  int64_t heads_q = 0;   // H
  int64_t heads_kv = 0;  // Hk, H % Hk == 0; q head h reads kv head h / (H / Hk)
  int64_t head_dim = 0;  // D, 1..256
  int64_t seqlen_q = 0;  // padded: Sq; varlen: max_seqlen_q
  int64_t seqlen_k = 0;  // padded: Sk (paged: max_blocks * page_size); varlen: max_seqlen_k

  bool varlen = false;  // cu_seqlens_q / cu_seqlens_k given
  bool paged = false;   // block_table given

  const void* q = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  const void* k = nullptr;  // paged: batch stride is the page stride
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  const void* v = nullptr;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  void* out = nullptr;
  int64_t out_batch_stride = 0, out_row_stride = 0, out_head_stride = 0;

  // Optional natural-log LSE, float32. Padded: (B, H, Sq); varlen: (H, total_q),
  // expressed with lse_batch_stride = 0 and rows offset by cu_seqlens_q.
  float* lse = nullptr;
  int64_t lse_batch_stride = 0, lse_head_stride = 0, lse_row_stride = 0;

  // Index arrays, int32, on the tensors' device; null when absent.
  const int32_t* cu_seqlens_q = nullptr;  // (B + 1)
  const int32_t* cu_seqlens_k = nullptr;  // (B + 1)
  const int32_t* seqused_k = nullptr;     // (B): end of the used keys (before leftpad_k is removed)
  const int32_t* leftpad_k = nullptr;     // (B): first used key row
  const int32_t* kv_batch_idx = nullptr;  // (B): k/v batch to read for sequence b (padded only)
  const int32_t* block_table = nullptr;   // (B, max_blocks_per_seq)
  int64_t block_table_batch_stride = 0;
  int64_t max_blocks_per_seq = 0;
  int64_t page_size = 0;  // rows per page
  int64_t num_pages = 0;

  int64_t total_q = 0;  // rows of q (varlen) or B * Sq
  int64_t total_k = 0;  // rows of k (varlen), B * Sk (padded) or num_pages * page_size (paged)

  // Optional ALiBi slopes, float32: (H) has batch stride 0, (B, H) has batch stride H-ish.
  const float* alibi_slopes = nullptr;
  int64_t alibi_batch_stride = 0, alibi_head_stride = 0;

  float softmax_scale = 1.0f;  // resolved: never 0
  float softcap = 0.0f;        // 0: off
  bool causal = false;
  int64_t window_left = -1;   // -1: unbounded
  int64_t window_right = -1;  // -1: unbounded; causal sets 0

  int32_t num_splits = 0;  // FlashAttention's num_splits: 0 heuristic, 1 none, > 1 forced (CUDA)
  int64_t kv_batches = 0;  // padded k/v: their first dimension (kv_batch_idx indexes it)

  void* cuda_stream = nullptr;
};

// Where one sequence's rows live, resolved from the index arrays (host-readable
// arrays only: the CPU backend and host-side checks use this).
struct SequenceExtent {
  int64_t q_row0 = 0;  // first query row (varlen: cu_seqlens_q[b]; padded: 0)
  int64_t q_len = 0;
  int64_t k_row0 = 0;    // first key row before paging (varlen: cu_seqlens_k[b]) plus leftpad
  int64_t k_len = 0;     // keys attended, after seqused_k and leftpad_k
  int64_t kv_batch = 0;  // k/v batch index (padded), kv_batch_idx[b] or b
};

inline SequenceExtent sequence_extent(const AttentionProblem& p, int64_t b) {
  SequenceExtent e;
  if (p.varlen) {
    e.q_row0 = p.cu_seqlens_q[b];
    e.q_len = int64_t(p.cu_seqlens_q[b + 1]) - p.cu_seqlens_q[b];
    if (p.cu_seqlens_k != nullptr) {
      // Paged keys start at row 0 of the sequence's block table; cu_seqlens_k only gives lengths.
      e.k_row0 = p.paged ? 0 : p.cu_seqlens_k[b];
      e.k_len = int64_t(p.cu_seqlens_k[b + 1]) - p.cu_seqlens_k[b];
    } else {
      e.k_len = p.seqlen_k;  // paged varlen keys without cu_seqlens_k: seqused_k decides
    }
  } else {
    e.q_len = p.seqlen_q;
    e.k_len = p.seqlen_k;
    e.kv_batch = p.kv_batch_idx != nullptr ? p.kv_batch_idx[b] : b;
  }
  if (p.seqused_k != nullptr) e.k_len = p.seqused_k[b];
  if (p.leftpad_k != nullptr) {
    e.k_row0 += p.leftpad_k[b];
    e.k_len -= p.leftpad_k[b];
  }
  return e;
}

// Element offset of key/value row j (0-based within the used keys) of a sequence.
inline int64_t kv_row_offset(const AttentionProblem& p, int64_t b, const SequenceExtent& e, int64_t j,
                             int64_t batch_stride, int64_t row_stride) {
  const int64_t row = e.k_row0 + j;
  if (p.paged) {
    const int64_t page = p.block_table[b * p.block_table_batch_stride + row / p.page_size];
    return page * batch_stride + (row % p.page_size) * row_stride;
  }
  return e.kv_batch * batch_stride + row * row_stride;
}

// FlashAttention's mask for query row i of a sequence with q_len queries and
// k_len keys: key j is visible iff
//   j >= i + k_len - q_len - window_left   (when window_left >= 0)
//   j <= i + k_len - q_len + window_right  (when window_right >= 0; causal: right = 0)
// The inclusive visible range [first, last] may be empty (first > last).
struct KeyRange {
  int64_t first;
  int64_t last;
};

inline KeyRange visible_keys(const AttentionProblem& p, int64_t i, int64_t q_len, int64_t k_len) {
  const int64_t diagonal = i + k_len - q_len;
  int64_t first = 0, last = k_len - 1;
  if (p.window_left >= 0 && diagonal - p.window_left > first) first = diagonal - p.window_left;
  if (p.window_right >= 0 && diagonal + p.window_right < last) last = diagonal + p.window_right;
  return {first, last};
}

}  // namespace af
