// af_kvcache_append: every field checked on the host before the kernel writes anything.
#include <exception>
#include <initializer_list>
#include <new>

#include "api/validate.h"
#include "common/error.h"
#include "cuda/kvcache.h"

namespace af {

namespace {

af_status same_shape(const char* name, const af_tensor& t, const char* other_name, const af_tensor& other) {
  for (int i = 0; i < t.rank; ++i)
    if (t.shape[i] != other.shape[i])
      return fail(AF_ERR_SHAPE, "%s must have the shape of %s (dimension %d is %lld, not %lld)", name, other_name, i,
                  (long long)t.shape[i], (long long)other.shape[i]);
  return AF_OK;
}

af_status same_place(const char* name, const af_tensor& t, const af_tensor& cache) {
  if (t.device_type != cache.device_type || t.device_index != cache.device_index)
    return fail(AF_ERR_DEVICE, "%s is on another device than k_cache", name);
  return AF_OK;
}

af_status validate_append(const af_kvcache_append_args* a, cuda::KvAppendCall* call) {
  if (a == nullptr) return fail(AF_ERR_NULL_POINTER, "args is NULL");
  if (a->struct_size < sizeof(af_kvcache_append_args))
    return fail(AF_ERR_STRUCT_SIZE, "args->struct_size is %u, smaller than %zu", unsigned(a->struct_size),
                sizeof(af_kvcache_append_args));
  AF_RETURN_IF_ERROR(validate_tensor("k_cache", a->k_cache, 4));
  AF_RETURN_IF_ERROR(validate_tensor("v_cache", a->v_cache, 4));
  const af_tensor& kc = *a->k_cache;
  AF_RETURN_IF_ERROR(same_shape("v_cache", *a->v_cache, "k_cache", kc));
  if (kc.dtype != AF_DTYPE_BFLOAT16 && kc.dtype != AF_DTYPE_FLOAT16)
    return fail(AF_ERR_DTYPE, "k_cache must be float16 or bfloat16 for the GPU append");
  if (kc.device_type != AF_DEVICE_CUDA)
    return fail(AF_ERR_UNSUPPORTED, "kvcache append runs on CUDA tensors only (k_cache is in host memory)");
  if (kc.shape[3] < 1 || kc.shape[3] > 256)
    return fail(AF_ERR_SHAPE, "k_cache head_dim must be in 1..256, got %lld", (long long)kc.shape[3]);
  AF_RETURN_IF_ERROR(same_place("v_cache", *a->v_cache, kc));
  if (a->v_cache->dtype != kc.dtype) return fail(AF_ERR_DTYPE, "v_cache must have the dtype of k_cache");
  AF_RETURN_IF_ERROR(validate_tensor("cache_seqlens", a->cache_seqlens, 1));
  AF_RETURN_IF_ERROR(same_place("cache_seqlens", *a->cache_seqlens, kc));
  if (a->cache_seqlens->dtype != AF_DTYPE_INT32) return fail(AF_ERR_DTYPE, "cache_seqlens must be int32");
  const int64_t batch = a->cache_seqlens->shape[0];
  call->batch = batch;
  call->heads_kv = kc.shape[2];
  call->head_dim = kc.shape[3];
  if ((a->k == nullptr) != (a->v == nullptr)) return fail(AF_ERR_NULL_POINTER, "k and v must be given together");
  if (a->k != nullptr) {
    AF_RETURN_IF_ERROR(validate_tensor("k", a->k, 4));
    AF_RETURN_IF_ERROR(validate_tensor("v", a->v, 4));
    AF_RETURN_IF_ERROR(same_shape("v", *a->v, "k", *a->k));
    const int64_t want[4] = {batch, a->k->shape[1], kc.shape[2], kc.shape[3]};
    for (int i = 0; i < 4; ++i)
      if (a->k->shape[i] != want[i])
        return fail(AF_ERR_SHAPE, "k must have shape (B = %lld, S_new, Hk = %lld, D = %lld), dimension %d is %lld",
                    (long long)batch, (long long)kc.shape[2], (long long)kc.shape[3], i, (long long)a->k->shape[i]);
    for (const af_tensor* t : {a->k, a->v}) {
      AF_RETURN_IF_ERROR(same_place(t == a->k ? "k" : "v", *t, kc));
      if (t->dtype != kc.dtype) return fail(AF_ERR_DTYPE, "%s must have the dtype of k_cache", t == a->k ? "k" : "v");
    }
    call->seqlen_new = a->k->shape[1];
  }
  if (a->block_table != nullptr) {
    AF_RETURN_IF_ERROR(validate_tensor("block_table", a->block_table, 2));
    AF_RETURN_IF_ERROR(same_place("block_table", *a->block_table, kc));
    if (a->block_table->dtype != AF_DTYPE_INT32) return fail(AF_ERR_DTYPE, "block_table must be int32");
    if (a->block_table->shape[0] != batch)
      return fail(AF_ERR_SHAPE, "block_table must have B = %lld rows, got %lld", (long long)batch,
                  (long long)a->block_table->shape[0]);
    if (kc.shape[1] < 1) return fail(AF_ERR_SHAPE, "paged k_cache must have page_size >= 1, got 0");
    if (a->cache_batch_idx != nullptr)
      return fail(AF_ERR_INVALID_ARGUMENT, "cache_batch_idx works only with padded, non-paged caches");
    call->block_table = a->block_table;
  }
  if (a->cache_batch_idx != nullptr) {
    AF_RETURN_IF_ERROR(validate_tensor("cache_batch_idx", a->cache_batch_idx, 1));
    AF_RETURN_IF_ERROR(same_place("cache_batch_idx", *a->cache_batch_idx, kc));
    if (a->cache_batch_idx->dtype != AF_DTYPE_INT32) return fail(AF_ERR_DTYPE, "cache_batch_idx must be int32");
    if (a->cache_batch_idx->shape[0] != batch)
      return fail(AF_ERR_SHAPE, "cache_batch_idx must have B = %lld entries", (long long)batch);
    call->cache_batch_idx = static_cast<const int32_t*>(a->cache_batch_idx->data);
  } else if (a->block_table == nullptr && kc.shape[0] != batch) {
    return fail(AF_ERR_SHAPE, "k_cache has batch %lld but cache_seqlens has %lld entries", (long long)kc.shape[0],
                (long long)batch);
  }
  if ((a->rotary_cos == nullptr) != (a->rotary_sin == nullptr))
    return fail(AF_ERR_NULL_POINTER, "rotary_cos and rotary_sin must be given together");
  if (a->rotary_cos != nullptr) {
    AF_RETURN_IF_ERROR(validate_tensor("rotary_cos", a->rotary_cos, 2));
    AF_RETURN_IF_ERROR(validate_tensor("rotary_sin", a->rotary_sin, 2));
    AF_RETURN_IF_ERROR(same_shape("rotary_sin", *a->rotary_sin, "rotary_cos", *a->rotary_cos));
    for (const af_tensor* t : {a->rotary_cos, a->rotary_sin}) {
      AF_RETURN_IF_ERROR(same_place(t == a->rotary_cos ? "rotary_cos" : "rotary_sin", *t, kc));
      if (t->dtype != kc.dtype)
        return fail(AF_ERR_DTYPE, "%s must have the dtype of k_cache",
                    t == a->rotary_cos ? "rotary_cos" : "rotary_sin");
    }
    const int64_t rotary_dim = 2 * a->rotary_cos->shape[1];
    if (rotary_dim < 2 || rotary_dim > kc.shape[3])
      return fail(AF_ERR_SHAPE,
                  "rotary_cos must have shape (seqlen_ro, rotary_dim / 2) with 0 < rotary_dim <= %lld, got %lld",
                  (long long)kc.shape[3], (long long)rotary_dim);
    if (a->rotary_cos->shape[0] < 1) return fail(AF_ERR_SHAPE, "rotary_cos has no rows");
    call->rotary_cos = a->rotary_cos;
    call->rotary_sin = a->rotary_sin;
  }
  if (a->q != nullptr) {
    if (a->rotary_cos == nullptr) return fail(AF_ERR_INVALID_ARGUMENT, "q is given to rotate but rotary_cos is not");
    AF_RETURN_IF_ERROR(validate_tensor("q", a->q, 4));
    AF_RETURN_IF_ERROR(validate_tensor("q_out", a->q_out, 4));
    AF_RETURN_IF_ERROR(same_shape("q_out", *a->q_out, "q", *a->q));
    if (a->q->shape[0] != batch || a->q->shape[3] != kc.shape[3])
      return fail(AF_ERR_SHAPE, "q must have shape (B = %lld, Sq, H, D = %lld)", (long long)batch,
                  (long long)kc.shape[3]);
    for (const af_tensor* t : {a->q, a->q_out}) {
      AF_RETURN_IF_ERROR(same_place(t == a->q ? "q" : "q_out", *t, kc));
      if (t->dtype != kc.dtype)
        return fail(AF_ERR_DTYPE, "%s must have the dtype of k_cache", t == a->q ? "q" : "q_out");
    }
    call->q = a->q;
    call->q_out = a->q_out;
    call->seqlen_q = a->q->shape[1];
    call->heads_q = a->q->shape[2];
  }
  if (a->seqused_out != nullptr) {
    AF_RETURN_IF_ERROR(validate_tensor("seqused_out", a->seqused_out, 1));
    AF_RETURN_IF_ERROR(same_place("seqused_out", *a->seqused_out, kc));
    if (a->seqused_out->dtype != AF_DTYPE_INT32) return fail(AF_ERR_DTYPE, "seqused_out must be int32");
    if (a->seqused_out->shape[0] != batch)
      return fail(AF_ERR_SHAPE, "seqused_out must have B = %lld entries", (long long)batch);
    call->seqused_out = static_cast<int32_t*>(a->seqused_out->data);
  }
  call->dtype = af_dtype(kc.dtype);
  call->device = kc.device_index;
  call->stream = a->cuda_stream;
  call->k_cache = a->k_cache;
  call->v_cache = a->v_cache;
  call->k = a->k;
  call->v = a->v;
  call->cache_seqlens = static_cast<const int32_t*>(a->cache_seqlens->data);
  call->interleaved = a->rotary_interleaved != 0;
  call->q_per_row = a->q_positions_per_row != 0;
  return AF_OK;
}

}  // namespace

}  // namespace af

extern "C" AF_API af_status af_kvcache_append(const af_kvcache_append_args* args) {
  af::clear_error();
  try {
    af::cuda::KvAppendCall call;
    AF_RETURN_IF_ERROR(af::validate_append(args, &call));
    return af::cuda::kvcache_append(call);
  } catch (const std::bad_alloc&) {
    return af::fail(AF_ERR_OUT_OF_MEMORY, "out of host memory");
  } catch (...) {
    return af::fail(AF_ERR_INTERNAL, "internal error in af_kvcache_append");
  }
}
