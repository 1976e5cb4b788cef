// The kvcache family's launch: flash_attn_with_kvcache's rotary embedding and cache append.
#pragma once

#include <cstdint>

#include "attnforge/attnforge.h"

namespace af::cuda {

// A validated af_kvcache_append call (api/kvcache.cpp checks every field first).
struct KvAppendCall {
  af_dtype dtype = AF_DTYPE_BFLOAT16;
  int device = 0;
  void* stream = nullptr;
  const af_tensor* k_cache = nullptr;  // rank 4 each; strides in elements
  const af_tensor* v_cache = nullptr;
  const af_tensor* k = nullptr;  // or null
  const af_tensor* v = nullptr;
  const af_tensor* q = nullptr;  // or null
  const af_tensor* q_out = nullptr;
  const af_tensor* rotary_cos = nullptr;  // or null
  const af_tensor* rotary_sin = nullptr;
  const int32_t* cache_seqlens = nullptr;
  int32_t* seqused_out = nullptr;  // or null
  const int32_t* cache_batch_idx = nullptr;
  const af_tensor* block_table = nullptr;  // or null
  int64_t batch = 0, heads_kv = 0, head_dim = 0, seqlen_new = 0, seqlen_q = 0, heads_q = 0;
  bool interleaved = true;
  bool q_per_row = true;
};

af_status kvcache_append(const KvAppendCall& call);

}  // namespace af::cuda
