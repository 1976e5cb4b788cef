// Arguments of the forward attention kernel, shared verbatim by the host (C++)
// and the kernel source (NVRTC): only built-in types, fixed layout, no headers.
//
// Addressing (all strides in elements, pointers to element 0):
//   q row i of sequence b, head h:   q + b*q_batch_stride + (q_row0(b) + i)*q_row_stride + h*q_head_stride
//   k/v row j of sequence b, head hk: k + b*k_batch_stride + (k_row0(b) + j)*k_row_stride + hk*k_head_stride
//   q_row0(b) = cu_seqlens_q[b] (varlen) or 0; k_row0(b) = cu_seqlens_k[b] or 0, plus leftpad_k[b].
// Every index read from device arrays is clamped against total_q / total_k / seqlen_k in the
// kernel, so inconsistent values can never address memory outside the tensors.
#ifndef AF_FLASH_FWD_PARAMS_CUH
#define AF_FLASH_FWD_PARAMS_CUH

struct FlashFwdParams {
  const void* q;        // 16-bit (B, Sq, H, D) or (total_q, H, D)
  const void* k;        // 16-bit (B, Sk, Hk, D) or (total_k, Hk, D)
  const void* v;        // like k
  void* out;            // like q
  float* lse;           // optional fp32 natural-log LSE: (B, H, Sq) or (H, total_q); null when absent

  long long q_batch_stride, q_row_stride, q_head_stride;
  long long k_batch_stride, k_row_stride, k_head_stride;
  long long v_batch_stride, v_row_stride, v_head_stride;
  long long out_batch_stride, out_row_stride, out_head_stride;
  long long lse_batch_stride, lse_head_stride, lse_row_stride;

  const int* cu_seqlens_q;   // (B + 1) or null
  const int* cu_seqlens_k;   // (B + 1) or null
  const int* seqused_k;      // (B) or null: end of the used keys
  const int* leftpad_k;      // (B) or null: first used key row

  const float* alibi_slopes; // (H) or (B, H) or null
  long long alibi_batch_stride, alibi_head_stride;

  int batch;      // B
  int heads_q;    // H
  int heads_kv;   // Hk, divides H
  int head_dim;   // D actually present (<= the compiled head dim; the rest is zero-filled)
  int seqlen_q;   // padded Sq, or max_seqlen_q for varlen (sizes the grid)
  int seqlen_k;   // padded Sk, or max_seqlen_k for varlen
  int total_q;    // rows of q: B*Sq padded, total_q varlen
  int total_k;    // rows of k: B*Sk padded, total_k varlen
  int window_left;   // -1 unbounded
  int window_right;  // -1 unbounded; causal sets 0

  float scale_log2;  // softmax_scale * log2(e); with softcap: softcap * log2(e)
  float softcap_in;  // softmax_scale / softcap; 0 when softcap is off

  // Split keys (flash-decoding), when too few query tiles fill the GPU: num_splits CTAs share a
  // query tile, each over a contiguous share of its key blocks, and write fp32 partial results
  // that af_flash_combine merges into out and lse. Partial row r of (batch b, head h, split s):
  //   index ((s * batch + b) * heads_q + h) * seqlen_q + r; partial_out holds AF_HEAD_DIM floats per row.
  int num_splits;       // 1: no split (partial_* unused)
  float* partial_out;   // (num_splits, B, H, seqlen_q, AF_HEAD_DIM) normalised partial outputs
  float* partial_lse;   // (num_splits, B, H, seqlen_q) natural-log LSE of each share, -inf when empty
};

#endif
