#include "cuda/kvcache.h"

#include <algorithm>
#include <climits>
#include <string>

#include "common/error.h"
#include "cuda/compiler.h"
#include "cuda/cuda_backend.h"
#include "cuda/families.h"
#include "cuda/modules.h"
#include "kernels/attention_params.cuh"

namespace af::cuda {

af_status kvcache_append(const KvAppendCall& c) {
  AF_RETURN_IF_ERROR(available());
  const DriverState& d = driver();
  if (c.device < 0 || c.device >= int(d.devices.size()) || c.device >= kMaxDevices)
    return fail(AF_ERR_DEVICE, "kvcache append: device %d does not exist (%zu visible)", c.device, d.devices.size());
  const DeviceInfo& info = d.devices[c.device];
  if (info.major < 8)
    return fail(AF_ERR_UNSUPPORTED, "kvcache append: %s is compute capability %d.%d; the kernels need 8.0+",
                info.name.c_str(), info.major, info.minor);
  const std::string target = target_for_device(info.major, info.minor);
  if (target.empty())
    return fail(AF_ERR_BACKEND_UNAVAILABLE, "NVRTC %d.%d cannot target compute capability %d.%d", nvrtc().major,
                nvrtc().minor, info.major, info.minor);
  const int index = find_variant(kFamilyKvAppend, c.dtype, int(c.head_dim), false);
  if (index < 0) return fail(AF_ERR_INTERNAL, "kvcache append: no variant for this dtype");
  LoadedVariant loaded;
  AF_RETURN_IF_ERROR(load_variant(c.device, index, target.c_str(), &loaded));

  KvAppendParams p{};
  const bool paged = c.block_table != nullptr;
  p.k_cache = c.k_cache->data, p.v_cache = c.v_cache->data;
  p.kc_batch_stride = c.k_cache->strides[0], p.kc_row_stride = c.k_cache->strides[1];
  p.kc_head_stride = c.k_cache->strides[2];
  p.vc_batch_stride = c.v_cache->strides[0], p.vc_row_stride = c.v_cache->strides[1];
  p.vc_head_stride = c.v_cache->strides[2];
  if (c.k != nullptr) {
    p.k = c.k->data, p.v = c.v->data;
    p.k_batch_stride = c.k->strides[0], p.k_row_stride = c.k->strides[1], p.k_head_stride = c.k->strides[2];
    p.v_batch_stride = c.v->strides[0], p.v_row_stride = c.v->strides[1], p.v_head_stride = c.v->strides[2];
  }
  if (c.q != nullptr) {
    p.q = c.q->data, p.q_out = c.q_out->data;
    p.q_batch_stride = c.q->strides[0], p.q_row_stride = c.q->strides[1], p.q_head_stride = c.q->strides[2];
    p.qo_batch_stride = c.q_out->strides[0], p.qo_row_stride = c.q_out->strides[1];
    p.qo_head_stride = c.q_out->strides[2];
  }
  if (c.rotary_cos != nullptr) {
    p.rotary_cos = c.rotary_cos->data, p.rotary_sin = c.rotary_sin->data;
    p.cos_row_stride = c.rotary_cos->strides[0], p.sin_row_stride = c.rotary_sin->strides[0];
    p.rotary_dim = int(2 * c.rotary_cos->shape[1]);
    p.seqlen_ro = int(c.rotary_cos->shape[0]);
  }
  p.cache_seqlens = c.cache_seqlens;
  p.seqused_out = c.seqused_out;
  p.cache_batch_idx = c.cache_batch_idx;
  if (paged) {
    p.block_table = static_cast<const int*>(c.block_table->data);
    p.block_table_batch_stride = c.block_table->strides[0];
    p.max_blocks_per_seq = int(c.block_table->shape[1]);
    p.page_size = int(c.k_cache->shape[1]);
    p.num_pages = int(c.k_cache->shape[0]);
  } else {
    p.cache_batches = int(c.k_cache->shape[0]);
    p.cache_rows = int(c.k_cache->shape[1]);
  }
  p.batch = int(c.batch), p.seqlen_new = int(c.seqlen_new), p.heads_kv = int(c.heads_kv);
  p.seqlen_q = int(c.seqlen_q), p.heads_q = int(c.heads_q), p.head_dim = int(c.head_dim);
  p.interleaved = c.interleaved ? 1 : 0;
  p.q_per_row = c.q_per_row ? 1 : 0;

  const long long vectors =
      std::max<long long>((long long)p.batch * p.seqlen_new * p.heads_kv + (long long)p.batch * p.seqlen_q * p.heads_q,
                          p.seqused_out != nullptr ? 1 : 0);
  if (vectors == 0) return AF_OK;
  if ((vectors + 3) / 4 > INT_MAX)
    return fail(AF_ERR_UNSUPPORTED, "kvcache append: %lld rows exceed the grid", vectors);
  CUcontext context = nullptr;
  AF_RETURN_IF_ERROR(primary_context(c.device, &context));
  ContextGuard guard(context);
  void* args[] = {&p};
  const CUresult r = d.api->cuLaunchKernel(loaded.kernel, unsigned((vectors + 3) / 4), 1, 1, 128, 1, 1, 0,
                                           static_cast<CUstream>(c.stream), args, nullptr);
  if (r != CUDA_SUCCESS) return fail(AF_ERR_CUDA, "kvcache append: %s", driver_error("cuLaunchKernel", r).c_str());
  return AF_OK;
}

}  // namespace af::cuda
