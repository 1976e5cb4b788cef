// Launches: the kernel arguments from a problem, the split-key workspace, and each family's grid.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "cuda/page_divisor.h"
#include "cuda/plan.h"
#include "cuda/tensor_map.h"
#include "kernels/attention_params.cuh"

namespace af::cuda {

namespace {

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

void fill_params(const AttentionProblem& p, FlashFwdParams* k) {
  *k = FlashFwdParams{};
  k->q = p.q;
  k->k = p.k;
  k->v = p.v;
  k->out = p.out;
  k->lse = p.lse;
  k->q_batch_stride = p.q_batch_stride, k->q_row_stride = p.q_row_stride, k->q_head_stride = p.q_head_stride;
  k->k_batch_stride = p.k_batch_stride, k->k_row_stride = p.k_row_stride, k->k_head_stride = p.k_head_stride;
  k->v_batch_stride = p.v_batch_stride, k->v_row_stride = p.v_row_stride, k->v_head_stride = p.v_head_stride;
  k->out_batch_stride = p.out_batch_stride, k->out_row_stride = p.out_row_stride;
  k->out_head_stride = p.out_head_stride;
  k->lse_batch_stride = p.lse_batch_stride, k->lse_head_stride = p.lse_head_stride;
  k->lse_row_stride = p.lse_row_stride;
  k->cu_seqlens_q = p.varlen ? p.cu_seqlens_q : nullptr;
  k->cu_seqlens_k = p.varlen ? p.cu_seqlens_k : nullptr;
  k->seqused_k = p.seqused_k;
  k->leftpad_k = p.leftpad_k;
  k->kv_batch_idx = p.kv_batch_idx;
  k->block_table = p.paged ? p.block_table : nullptr;
  k->block_table_batch_stride = p.block_table_batch_stride;
  k->max_blocks_per_seq = int(p.max_blocks_per_seq);
  k->page_size = int(p.page_size);
  const PageDivisor divisor = page_divisor(p.paged ? p.page_size : 1);
  k->page_magic = divisor.magic;
  k->page_magic_shift = divisor.shift;
  k->page_offsets_32 = p.paged && page_offsets_fit_32(p.k_batch_stride, p.k_row_stride) &&
                               page_offsets_fit_32(p.v_batch_stride, p.v_row_stride)
                           ? 1
                           : 0;
  k->num_pages = int(p.num_pages);
  k->kv_batches = int(p.kv_batches);
  k->alibi_slopes = p.alibi_slopes;
  k->alibi_batch_stride = p.alibi_batch_stride;
  k->alibi_head_stride = p.alibi_head_stride;
  k->batch = int(p.batch);
  k->heads_q = int(p.heads_q);
  k->heads_kv = int(p.heads_kv);
  k->head_dim = int(p.head_dim);
  k->seqlen_q = int(p.seqlen_q);
  k->seqlen_k = int(p.seqlen_k);
  k->total_q = int(p.total_q);
  k->total_k = int(p.total_k);
  k->window_left = int(window_left_in_effect(p));
  k->window_right = int(window_right_in_effect(p));
  constexpr float kLog2e = 1.4426950408889634f;
  if (p.softcap > 0) {
    k->softcap_in = p.softmax_scale / p.softcap;
    k->scale_log2 = p.softcap * kLog2e;
  } else {
    k->softcap_in = 0.f;
    k->scale_log2 = p.softmax_scale * kLog2e;
  }
}

// A launch's workspace (plan.workspace_bytes: partial results, then from plan.counters_offset the
// counters: decode's split counters, fwd_sm90's dynamic tile counter): the caller's, its counters
// zeroed on the stream first (their contents are unknown), else the stream's own (zeroed when
// allocated; every launch leaves its counters at zero, so graph replays need no memset node, and two
// streams have two). Both members stay 0 where the stream's own cannot be had (or would pass 256 MB).
af_status launch_workspace(const Plan& plan, int device, CUstream stream, void* workspace, StreamWorkspace* out) {
  const size_t counter_bytes = plan.workspace_bytes - plan.counters_offset;
  if (workspace != nullptr) {
    out->partials = reinterpret_cast<CUdeviceptr>(workspace);
    out->counters = out->partials + plan.counters_offset;
    const CUresult r =
        counter_bytes == 0 ? CUDA_SUCCESS : driver().api->cuMemsetD8Async(out->counters, 0, counter_bytes, stream);
    if (r != CUDA_SUCCESS) return fail(AF_ERR_CUDA, "%s", driver_error("cuMemsetD8Async", r).c_str());
    return AF_OK;
  }
  if (plan.workspace_bytes > (256u << 20) ||
      !stream_workspace(device, stream, plan.counters_offset, counter_bytes, out))
    *out = StreamWorkspace{};
  return AF_OK;
}

// $ATTNFORGE_PDL=0 turns decode's programmatic dependent launches off (read once per process).
bool pdl_enabled() {
  static const bool enabled = [] {
    const char* text = std::getenv("ATTNFORGE_PDL");
    return text == nullptr || std::strcmp(text, "0") != 0;
  }();
  return enabled;
}

// Programmatic dependent launches: sm_90+, and a driver of CUDA 12.3 or later, the first whose graphs
// carry programmatic edges (CUgraphEdgeData), since CUDA graphs and torch.compile capture our launches.
bool pdl_supported(int arch) {
  return arch >= 90 && driver().version >= 12030 && driver().api->cuLaunchKernelEx != nullptr;
}

// One launch of a decode kernel; cluster_x > 1: clusters of (cluster_x, 1, 1). On sm_90+, where the
// kernel holds an SM alone, a programmatic dependent launch: its CTAs are placed as the stream's
// previous kernel's CTAs leave and wait for it in griddepcontrol.wait before touching global memory
// (decode_fwd.cuh). Measured on the H200 (bench/results/pdl-h200-2026-12-01.md, two interleaved
// rounds): batch 1-8 x 1k keys at d128 0.2-0.8 us faster, the rest within noise; at d64 (two CTAs
// per SM) 128-CTA grids lost about 1 us, and fwd_sm90's sweep did not move.
CUresult launch_decode(const Plan& plan, const unsigned (&grid)[3], unsigned threads, unsigned smem, CUstream stream,
                       void** args, unsigned cluster_x = 1) {
  const DriverApi& a = *driver().api;
  CUlaunchAttribute attributes[2] = {};
  unsigned count = 0;
  if (cluster_x > 1) {
    attributes[count].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attributes[count++].value.cluster_dim = {cluster_x, 1, 1};
  }
  if (plan.loaded.wave_ctas == plan.loaded.sm_count && pdl_supported(plan.choice.arch) && pdl_enabled()) {
    attributes[count].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attributes[count++].value.programmatic_stream_serialization_allowed = 1;
  }
  if (count == 0 || a.cuLaunchKernelEx == nullptr)
    return a.cuLaunchKernel(plan.loaded.kernel, grid[0], grid[1], grid[2], threads, 1, 1, smem, stream, args, nullptr);
  const CUlaunchConfig config{grid[0], grid[1], grid[2], threads, 1, 1, smem, stream, attributes, count};
  return a.cuLaunchKernelEx(&config, plan.loaded.kernel, args, nullptr);
}

// fwd_sm90: the q, k and v tensor maps (encoded per call: the address is part of the map; a host
// call of about a microsecond each) and one launch of (query tiles, heads, batch), or in the
// persistent forms of at most one wave of CTAs that loop over those tiles. The dynamic forms' tile
// counter lives in launch_workspace; where none can be had, the kernel strides statically (a null
// counter).
af_status run_sm90(const Plan& plan, const Variant& v, const AttentionProblem& p, FlashFwdParams* k, CUstream stream,
                   void* workspace) {
  // A plan is checked against each call's shapes and flags, not against everything fwd_sm90 does
  // not take (kv_batch_idx, exact strides): refuse a call the family would get wrong.
  const std::string refusal = fwd_sm90_refusal(p, v.tile_for(plan.choice.arch).block_m());
  if (!refusal.empty())
    return fail(AF_ERR_INVALID_ARGUMENT, "cuda backend: this plan runs fwd_sm90, which cannot take the call: %s",
                refusal.c_str());
  const DriverApi& a = *driver().api;
  const TileConfig& tile = v.tile_for(plan.choice.arch);
  // out's map only for the TMA-store epilogue (the other variants take it zero-filled, unread).
  CUtensorMap maps[4] = {};
  const Sm90Tensors t = sm90_tensors(p);
  const TileTensor tensors[4] = {t.q, t.k, t.v, t.out};
  const char* names[4] = {"q", "k", "v", "out"};
  const unsigned box_rows[4] = {unsigned(tile.block_m()), unsigned(tile.block_n), unsigned(tile.block_n),
                                kSm90StoreBoxRows};
  for (int i = 0; i < (sm90_tma_store(v.schedule) ? 4 : 3); ++i)
    AF_RETURN_IF_ERROR(encode_tile_map(a, names[i], tensors[i], p.dtype, box_rows[i], &maps[i]));
  k->num_splits = 1;
  k->tile_pair_group = plan.pair_group;
  if (sm90_dynamic(v.schedule)) {
    StreamWorkspace w;
    AF_RETURN_IF_ERROR(launch_workspace(plan, p.device_index, stream, workspace, &w));
    k->tile_counter = reinterpret_cast<unsigned*>(w.counters);
  }
  void* args[] = {k, &maps[0], &maps[1], &maps[2], &maps[3]};
  const CUresult r =
      a.cuLaunchKernel(plan.loaded.kernel, plan.grid[0], plan.grid[1], plan.grid[2], unsigned(tile.threads()), 1, 1,
                       unsigned(v.smem_bytes(plan.choice.arch)), stream, args, nullptr);
  if (r != CUDA_SUCCESS) return fail(AF_ERR_CUDA, "%s: %s", v.name.c_str(), driver_error("cuLaunchKernel", r).c_str());
  return AF_OK;
}

// The decode kernel's divisors (FlashFwdParams::decode_group ...) for a grid of grid_y = Hk * m_tiles
// rows and k->num_splits splits.
void set_decode_divisors(FlashFwdParams* k, unsigned grid_y) {
  k->decode_group = k->heads_q / k->heads_kv;
  k->decode_m_tiles = int(grid_y) / k->heads_kv;
  const PageDivisor group = page_divisor(k->decode_group), m_tiles = page_divisor(k->decode_m_tiles),
                    splits = page_divisor(k->num_splits);
  k->group_magic = group.magic, k->group_shift = group.shift;
  k->m_tiles_magic = m_tiles.magic, k->m_tiles_shift = m_tiles.shift;
  k->splits_magic = splits.magic, k->splits_shift = splits.shift;
}

// decode with the key splits of each query tile as one thread-block cluster (plan.cluster, sm_90+):
// cluster dims (splits, 1, 1) over the grid's split axis, so a CTA's rank in its cluster is its
// split; the shares merge through distributed shared memory, so there is no workspace, counter or
// memset.
af_status run_decode_cluster(const Plan& plan, const Variant& v, FlashFwdParams* k, CUstream stream) {
  k->num_splits = plan.splits;
  set_decode_divisors(k, plan.grid[1]);
  const unsigned threads = unsigned(v.tile_for(plan.choice.arch).threads());
  const unsigned smem = unsigned(v.smem_bytes(plan.choice.arch));
  void* args[] = {k};
  const CUresult r = launch_decode(plan, plan.grid, threads, smem, stream, args, unsigned(plan.splits));
  if (r != CUDA_SUCCESS)
    return fail(AF_ERR_CUDA, "%s in clusters of %d CTAs: %s", v.name.c_str(), plan.splits,
                driver_error("cuLaunchKernelEx", r).c_str());
  return AF_OK;
}

}  // namespace

af_status run(const Plan& plan, const AttentionProblem& p, void* workspace, size_t workspace_bytes) {
  const Variant& v = variants()[plan.choice.variant];
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !aligned16(p.out))
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: q, k, v and out must be 16-byte aligned");
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return AF_OK;
  if (workspace != nullptr && workspace_bytes < plan.workspace_bytes)
    return fail(AF_ERR_INVALID_ARGUMENT, "workspace has %zu bytes; the plan needs %zu", workspace_bytes,
                plan.workspace_bytes);

  FlashFwdParams k;
  fill_params(p, &k);
  const DriverApi& a = *driver().api;
  const CUstream stream = static_cast<CUstream>(p.cuda_stream);
  CUcontext context = nullptr;
  AF_RETURN_IF_ERROR(primary_context(p.device_index, &context));
  ContextGuard guard(context);
  if (v.family == kFamilyFwdSm90) return run_sm90(plan, v, p, &k, stream, workspace);
  if (v.family == kFamilyDecode && plan.cluster) return run_decode_cluster(plan, v, &k, stream);

  // Where no workspace can be had the unsplit launch computes the same result.
  int splits = plan.splits;
  StreamWorkspace w;
  if (splits > 1) {
    AF_RETURN_IF_ERROR(launch_workspace(plan, p.device_index, stream, workspace, &w));
    if (w.partials == 0) splits = 1;
  }
  k.num_splits = splits;
  if (splits > 1) {
    k.partial_out = reinterpret_cast<float*>(w.partials);
    k.partial_lse = k.partial_out + size_t(splits) * size_t(k.batch) * k.heads_q * k.seqlen_q * v.head_dim;
    k.split_counters = reinterpret_cast<unsigned*>(w.counters);
  }
  unsigned grid[3] = {plan.grid[0], plan.grid[1], plan.grid[2]};
  if (splits != plan.splits) {  // the split dimension: decode x, fwd_sm80 z (groups * splits)
    if (v.family == kFamilyDecode)
      grid[0] = 1;
    else
      grid[2] = plan.grid[2] / unsigned(plan.splits);
  }
  if (v.family == kFamilyDecode) {
    set_decode_divisors(&k, grid[1]);
    // A plan is reused for calls that differ from its own in whether leftpad_k is given (check_same_shapes does not
    // compare it); their keys do not start at row 0, so nothing is prefetched (decode_successor's rule).
    k.decode_successor = splits == 1 && p.leftpad_k == nullptr ? plan.successor : 0;
  }
  const TileConfig& tile = v.tile_for(plan.choice.arch);
  void* args[] = {&k};
  const unsigned threads = unsigned(tile.threads()), smem = unsigned(v.smem_bytes(plan.choice.arch));
  CUresult r = v.family == kFamilyDecode ? launch_decode(plan, grid, threads, smem, stream, args)
                                         : a.cuLaunchKernel(plan.loaded.kernel, grid[0], grid[1], grid[2], threads, 1,
                                                            1, smem, stream, args, nullptr);
  if (r == CUDA_SUCCESS && splits > 1 && v.family != kFamilyDecode) {
    // fwd_sm80's shares are merged by af_flash_combine: rows in groups of 4 (one warp each) over
    // (batch * heads, row groups). Where pdl_supported, a programmatic dependent launch: it is scheduled
    // while the kernel runs and waits for it in griddepcontrol.wait, which hides the launch latency.
    const unsigned grid_x = unsigned(k.batch * k.heads_q), grid_y = unsigned((k.seqlen_q + 3) / 4);
    if (pdl_supported(plan.choice.arch)) {
      CUlaunchAttribute attribute{};
      attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
      attribute.value.programmatic_stream_serialization_allowed = 1;
      const CUlaunchConfig config{grid_x, grid_y, 1, 128, 1, 1, 0, stream, &attribute, 1};
      r = a.cuLaunchKernelEx(&config, plan.loaded.combine, args, nullptr);
    } else {
      r = a.cuLaunchKernel(plan.loaded.combine, grid_x, grid_y, 1, 128, 1, 1, 0, stream, args, nullptr);
    }
  }
  if (r != CUDA_SUCCESS) return fail(AF_ERR_CUDA, "%s: %s", v.name.c_str(), driver_error("cuLaunchKernel", r).c_str());
  return AF_OK;
}

}  // namespace af::cuda
