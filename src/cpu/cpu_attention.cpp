// CPU backend driver: resolves every sequence's rows (varlen, paging, left
// padding, kv_batch_idx) into plain offsets; then, wave after wave of
// (sequence, kv head) units, packs their keys and values to fp32 tiles (in
// parallel over key tiles) and runs the tile kernel over (query head of the
// group, query tile) work items (in parallel). Extra memory: the offsets and
// one wave's packed keys and values, O(total keys + max keys * D + 4 MiB),
// plus per-thread tiles.
#include "cpu/cpu_attention.h"

#include <algorithm>
#include <atomic>
#include <new>
#include <vector>

#include "common/error.h"
#include "common/thread_pool.h"
#include "cpu/cpu_kernel.h"

namespace af::cpu {

namespace {

struct Kernels {
  PackFunction pack;
  TileFunction run;
};

Kernels kernels(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16: return {avx512_bf16::pack_tile, avx512_bf16::run_tile};
    case Isa::kAvx512: return {avx512::pack_tile, avx512::run_tile};
    case Isa::kAvx2: return {avx2::pack_tile, avx2::run_tile};
    case Isa::kBaseline: break;
  }
  return {baseline::pack_tile, baseline::run_tile};
}

int64_t element_bytes(af_dtype dtype) { return dtype == AF_DTYPE_FLOAT32 ? 4 : 2; }

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kBaseline: break;
  }
  return "baseline";
}

bool isa_supported(Isa isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512Bf16: return isa_supported(Isa::kAvx512) && __builtin_cpu_supports("avx512bf16");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kBaseline: return true;
  }
  return false;
#else
  return isa == Isa::kBaseline;
#endif
}

Isa best_isa() {
  static const Isa best = isa_supported(Isa::kAvx512Bf16) ? Isa::kAvx512Bf16
                          : isa_supported(Isa::kAvx512)   ? Isa::kAvx512
                          : isa_supported(Isa::kAvx2)     ? Isa::kAvx2
                                                          : Isa::kBaseline;
  return best;
}

af_status supports(const AttentionProblem& p) {
  if (p.device_type != AF_DEVICE_CPU) return fail(AF_ERR_DEVICE, "the CPU backend needs tensors in host memory");
  return AF_OK;
}

af_status attention_forward(const AttentionProblem& p) { return attention_forward(p, best_isa()); }

af_status attention_forward(const AttentionProblem& p, Isa isa) {
  if (!isa_supported(isa)) return fail(AF_ERR_UNSUPPORTED, "this CPU cannot run the %s kernel", isa_name(isa));
  AF_RETURN_IF_ERROR(supports(p));
  const Kernels kernel = kernels(isa);
  const int64_t bytes = element_bytes(p.dtype);
  const int64_t group = p.heads_q / p.heads_kv;

  KernelConfig config;
  config.dtype = p.dtype;
  config.head_dim = int32_t(p.head_dim);
  config.padded_dim = int32_t((p.head_dim + 15) / 16 * 16);
  config.softmax_scale = p.softmax_scale;
  config.softcap = p.softcap;
  config.window_left = p.window_left;
  config.window_right = p.window_right;
  const int64_t tile_floats = packed_tile_floats(config.padded_dim);
  const int64_t scratch_floats = tile_scratch_floats(config.padded_dim);

  try {
    // Key row offsets of every sequence: O(total keys), shared by all heads.
    std::vector<SequenceExtent> extents(size_t(p.batch));
    std::vector<int64_t> first_key(size_t(p.batch) + 1, 0);
    int64_t max_key_tiles = 0;
    for (int64_t b = 0; b < p.batch; ++b) {
      extents[b] = sequence_extent(p, b);
      first_key[b + 1] = first_key[b] + extents[b].k_len;
      max_key_tiles = std::max(max_key_tiles, (extents[b].k_len + kTileK - 1) / kTileK);
    }
    std::vector<int64_t> k_offsets(size_t(first_key[p.batch])), v_offsets(size_t(first_key[p.batch]));
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t j = 0; j < extents[b].k_len; ++j) {
        k_offsets[first_key[b] + j] = kv_row_offset(p, b, extents[b], j, p.k_batch_stride, p.k_row_stride);
        v_offsets[first_key[b] + j] = kv_row_offset(p, b, extents[b], j, p.v_batch_stride, p.v_row_stride);
      }
    }

    // Units of (sequence, kv head) with queries are processed in waves: pack
    // every unit of the wave (parallel over key tiles), then run every query
    // tile of every query head of the wave (parallel). A wave holds units
    // while their packed keys fit kWaveFloats (at least one unit), so that
    // short sequences and decoding (one query row) still give every thread
    // work, while the packed buffer stays O(max keys * D).
    constexpr int64_t kWaveFloats = int64_t(1) << 20;  // 4 MiB
    struct Unit {
      int64_t batch, kv_head;
      int64_t first_tile;  // of the wave's packed key tiles
      int64_t first_item;  // of the wave's work items
    };
    int64_t all_tiles = 0;  // of every unit with queries: a wave never needs more
    for (int64_t b = 0; b < p.batch; ++b)
      if (extents[b].q_len > 0) all_tiles += p.heads_kv * ((extents[b].k_len + kTileK - 1) / kTileK);
    const int64_t wave_tiles = std::max(max_key_tiles, std::min(all_tiles, kWaveFloats / tile_floats));
    std::vector<float> packed_storage(size_t(wave_tiles * tile_floats + 16));
    float* packed =
        reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(packed_storage.data()) + 63) & ~uintptr_t(63));
    std::vector<Unit> wave;
    std::vector<int64_t> tile_unit;  // (wave tiles): the unit each packed tile belongs to
    std::atomic<bool> out_of_memory{false};

    auto key_source = [&](const Unit& u) {
      KeyValueSource kv;
      kv.k = static_cast<const char*>(p.k) + bytes * u.kv_head * p.k_head_stride;
      kv.v = static_cast<const char*>(p.v) + bytes * u.kv_head * p.v_head_stride;
      kv.k_offsets = k_offsets.data() + first_key[u.batch];
      kv.v_offsets = v_offsets.data() + first_key[u.batch];
      kv.k_len = extents[u.batch].k_len;
      return kv;
    };
    auto run_wave = [&](int64_t tiles, int64_t items) {
      parallel_for(tiles, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const Unit& u = wave[tile_unit[t]];
          kernel.pack(config, key_source(u), t - u.first_tile, packed + t * tile_floats);
        }
      });
      parallel_for(items, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch_storage;
        try {
          scratch_storage.resize(size_t(scratch_floats + 16));
        } catch (const std::bad_alloc&) {
          out_of_memory = true;  // exceptions must not leave a pool worker
          return;
        }
        float* scratch =
            reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch_storage.data()) + 63) & ~uintptr_t(63));
        size_t unit = 0;
        for (int64_t n = begin; n < end; ++n) {
          while (unit + 1 < wave.size() && wave[unit + 1].first_item <= n) ++unit;
          const Unit& u = wave[unit];
          const SequenceExtent& e = extents[u.batch];
          const int64_t b = u.batch;
          const int64_t query_tiles = (e.q_len + kTileQ - 1) / kTileQ;
          const int64_t h = u.kv_head * group + (n - u.first_item) / query_tiles;
          // Last query tile first: under a causal mask it sees the most keys,
          // and starting with the longest items balances the threads' ends.
          const int64_t row_begin = (query_tiles - 1 - (n - u.first_item) % query_tiles) * kTileQ;
          SequenceHead s;
          s.q = static_cast<const char*>(p.q) +
                bytes * (b * p.q_batch_stride + e.q_row0 * p.q_row_stride + h * p.q_head_stride);
          s.q_row_stride = p.q_row_stride;
          s.out = static_cast<char*>(p.out) +
                  bytes * (b * p.out_batch_stride + e.q_row0 * p.out_row_stride + h * p.out_head_stride);
          s.out_row_stride = p.out_row_stride;
          s.lse = p.lse == nullptr
                      ? nullptr
                      : p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + e.q_row0 * p.lse_row_stride;
          s.lse_row_stride = p.lse_row_stride;
          s.packed_kv = packed + u.first_tile * tile_floats;
          s.q_len = e.q_len;
          s.k_len = e.k_len;
          s.alibi_slope =
              p.alibi_slopes == nullptr ? 0.0f : p.alibi_slopes[b * p.alibi_batch_stride + h * p.alibi_head_stride];
          kernel.run(config, s, row_begin, std::min(row_begin + kTileQ, e.q_len), scratch);
        }
      });
      if (out_of_memory) throw std::bad_alloc();
      wave.clear();
      tile_unit.clear();
    };

    int64_t tiles = 0, items = 0;
    for (int64_t b = 0; b < p.batch; ++b) {
      const SequenceExtent& e = extents[b];
      if (e.q_len == 0) continue;
      const int64_t key_tiles = (e.k_len + kTileK - 1) / kTileK;
      const int64_t query_items = group * ((e.q_len + kTileQ - 1) / kTileQ);
      for (int64_t hk = 0; hk < p.heads_kv; ++hk) {
        if (tiles + key_tiles > wave_tiles) {
          run_wave(tiles, items);
          tiles = items = 0;
        }
        wave.push_back({b, hk, tiles, items});
        tile_unit.insert(tile_unit.end(), size_t(key_tiles), int64_t(wave.size() - 1));
        tiles += key_tiles;
        items += query_items;
      }
    }
    if (!wave.empty()) run_wave(tiles, items);
  } catch (const std::bad_alloc&) {
    return fail(AF_ERR_OUT_OF_MEMORY,
                "the CPU backend could not allocate its key offsets, packed keys or tile scratch");
  }
  return AF_OK;
}

}  // namespace af::cpu
