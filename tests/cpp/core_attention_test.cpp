// The CPU backend against a float64 reference, on fresh random inputs each run.
//
// Each case describes sequences logically (per sequence: its queries and its
// used keys); the harness lays them out physically (padded, varlen or paged,
// with kv_batch_idx, seqused_k, leftpad_k and padded strides), fills every
// byte that must not be read with NaN, runs af_attention_forward and checks:
//   - error(ours) <= 2 * error(naive same-precision implementation) + floor
//     (one output ulp; 3 * for fp32 outputs), both against the float64
//     reference rounded to the output dtype;
//   - the same for softmax_lse (naive in fp32);
//   - rows that see no key give exactly 0 and lse = -inf; no NaN anywhere;
//   - nothing outside out's and lse's elements was written.
// The "naive same-precision" implementation follows FlashAttention's own
// tests: fp32 math for fp32; for fp16/bf16, scores and probabilities are
// rounded to the dtype before the next product (what torch does in 16 bits).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "api/validate.h"
#include "attnforge/attnforge.h"
#include "common/thread_pool.h"
#include "cpu/cpu_attention.h"

namespace {

// ---- dtype handling, written independently of the library ----

double round_to(af_dtype dtype, double x) {
  if (dtype == AF_DTYPE_FLOAT32) return double(float(x));
  if (dtype == AF_DTYPE_FLOAT16) return double(float(_Float16(float(x))));
  // bfloat16: round the float's upper 16 bits to nearest even.
  const float f = float(x);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

int element_size(af_dtype dtype) { return dtype == AF_DTYPE_FLOAT32 ? 4 : 2; }

// A byte buffer holding elements of one dtype; fresh buffers are all NaN.
struct Buffer {
  af_dtype dtype;
  std::vector<unsigned char> bytes;
  Buffer(af_dtype t, int64_t elements) : dtype(t), bytes(size_t(elements * element_size(t))) {
    for (int64_t i = 0; i < elements; ++i) set(i, std::numeric_limits<double>::quiet_NaN());
  }
  void set(int64_t i, double x) {
    if (dtype == AF_DTYPE_FLOAT32) {
      const float f = float(x);
      std::memcpy(&bytes[size_t(i) * 4], &f, 4);
    } else if (dtype == AF_DTYPE_FLOAT16) {
      const _Float16 h = _Float16(float(x));
      std::memcpy(&bytes[size_t(i) * 2], &h, 2);
    } else {
      const float f = float(round_to(dtype, x));
      uint32_t u;
      std::memcpy(&u, &f, 4);
      if (std::isnan(x)) u = 0x7fc00000u;
      const uint16_t h = uint16_t(u >> 16);
      std::memcpy(&bytes[size_t(i) * 2], &h, 2);
    }
  }
  double get(int64_t i) const {
    if (dtype == AF_DTYPE_FLOAT32) {
      float f;
      std::memcpy(&f, &bytes[size_t(i) * 4], 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, &bytes[size_t(i) * 2], 2);
    if (dtype == AF_DTYPE_FLOAT16) {
      _Float16 x;
      std::memcpy(&x, &h, 2);
      return double(float(x));
    }
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  void* data() { return bytes.data(); }
};

af_tensor make_tensor(void* data, af_dtype dtype, std::vector<int64_t> shape, std::vector<int64_t> strides) {
  af_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.device_type = AF_DEVICE_CPU;
  t.rank = int32_t(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) t.shape[i] = shape[i], t.strides[i] = strides[i];
  return t;
}

// Strides of a row-major tensor whose dims are each padded by `pad` elements
// (pad = 0: contiguous); returns the element count to allocate.
int64_t padded_strides(const std::vector<int64_t>& shape, int64_t pad, std::vector<int64_t>* strides) {
  strides->assign(shape.size(), 1);
  int64_t extent = 1;
  for (int64_t i = int64_t(shape.size()) - 1; i >= 0; --i) {
    (*strides)[i] = extent;
    extent = (i == int64_t(shape.size()) - 1 ? shape[i] : shape[i] * (*strides)[i]) + (i == 0 ? 0 : pad * (i + 1));
  }
  return extent;
}

// ---- a case ----

enum class Layout { kPadded, kVarlen, kPaged, kPagedVarlen };

struct Case {
  std::string name;
  af_dtype dtype = AF_DTYPE_FLOAT32;
  Layout layout = Layout::kPadded;
  int64_t heads = 4, heads_kv = 4, head_dim = 64;
  std::vector<int64_t> q_lens;  // per sequence (padded: all equal)
  std::vector<int64_t> k_lens;  // keys available per sequence (padded: all equal; paged: <= capacity)
  bool causal = false;
  int32_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  float softmax_scale = 0.0f;
  int alibi_rank = 0;         // 0 none, 1 (H), 2 (B, H)
  bool seqused = false;       // use fewer keys than available
  bool leftpad = false;       // start the used keys after some left padding
  bool kv_batch_idx = false;  // padded only: read k/v from a permuted, larger cache batch
  int64_t stride_pad = 0;     // extra elements in every stride (non-contiguous views)
  int64_t page_size = 0;      // paged layouts
  bool lse = true;
};

struct Error {
  double ours = 0, naive = 0;
};

// Runs one case on fresh random data with the given kernel; failures name the case and seed.
void run_case(const Case& c, af::cpu::Isa isa, std::mt19937_64& rng, uint64_t seed) {
  SCOPED_TRACE("case " + c.name + ", kernel " + af::cpu::isa_name(isa) + ", seed " + std::to_string(seed));
  const int64_t B = int64_t(c.q_lens.size());
  const int64_t H = c.heads, Hk = c.heads_kv, D = c.head_dim;
  const af_dtype dt = c.dtype;
  const bool varlen = c.layout == Layout::kVarlen || c.layout == Layout::kPagedVarlen;
  const bool paged = c.layout == Layout::kPaged || c.layout == Layout::kPagedVarlen;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);

  // Used key range [begin, end) within each sequence's available keys.
  std::vector<int64_t> key_begin(B, 0), key_end(B);
  for (int64_t b = 0; b < B; ++b) {
    key_end[b] = c.k_lens[b];
    if (c.seqused) key_end[b] = int64_t(uniform(rng) * double(c.k_lens[b] + 1));
    if (c.leftpad) key_begin[b] = int64_t(uniform(rng) * double(key_end[b] + 1));
  }
  const int64_t max_q = *std::max_element(c.q_lens.begin(), c.q_lens.end());
  const int64_t max_k = *std::max_element(c.k_lens.begin(), c.k_lens.end());
  std::vector<int32_t> cu_q(B + 1, 0), cu_k(B + 1, 0);
  for (int64_t b = 0; b < B; ++b)
    cu_q[b + 1] = cu_q[b] + int32_t(c.q_lens[b]), cu_k[b + 1] = cu_k[b] + int32_t(c.k_lens[b]);

  // q / out: padded (B, Sq, H, D) or varlen (total_q, H, D).
  std::vector<int64_t> q_shape = varlen ? std::vector<int64_t>{cu_q[B], H, D} : std::vector<int64_t>{B, max_q, H, D};
  std::vector<int64_t> q_strides, out_strides;
  Buffer q(dt, padded_strides(q_shape, c.stride_pad, &q_strides));
  Buffer out(dt, padded_strides(q_shape, c.stride_pad, &out_strides));
  auto q_index = [&](int64_t b, int64_t i, int64_t h, int64_t d, const std::vector<int64_t>& st) {
    return varlen ? (cu_q[b] + i) * st[0] + h * st[1] + d : b * st[0] + i * st[1] + h * st[2] + d;
  };

  // k / v: padded (Bk, Sk, Hk, D), varlen (total_k, Hk, D) or paged (pages, page_size, Hk, D).
  const int64_t kv_batches = c.kv_batch_idx ? B + 3 : B;
  std::vector<int32_t> kv_idx(B);
  for (int64_t b = 0; b < B; ++b) kv_idx[b] = int32_t(c.kv_batch_idx ? (b * 5 + 2) % kv_batches : b);
  int64_t max_blocks = 0, num_pages = 0;
  std::vector<int32_t> block_table;
  if (paged) {
    max_blocks = (max_k + c.page_size - 1) / c.page_size + 1;  // one spare column, left at -1
    num_pages = B * max_blocks + 2;
    std::vector<int32_t> pages(num_pages);
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    block_table.assign(B * max_blocks, -1);
    int64_t next = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < (c.k_lens[b] + c.page_size - 1) / c.page_size; ++n)
        block_table[b * max_blocks + n] = pages[next++];
  }
  std::vector<int64_t> kv_shape = paged    ? std::vector<int64_t>{num_pages, c.page_size, Hk, D}
                                  : varlen ? std::vector<int64_t>{cu_k[B], Hk, D}
                                           : std::vector<int64_t>{kv_batches, max_k, Hk, D};
  std::vector<int64_t> k_strides, v_strides;
  Buffer k(dt, padded_strides(kv_shape, c.stride_pad, &k_strides));
  Buffer v(dt, padded_strides(kv_shape, c.stride_pad + 1, &v_strides));
  // Element index of available key row r of sequence b (before leftpad/seqused).
  auto kv_index = [&](int64_t b, int64_t r, int64_t hk, int64_t d, const std::vector<int64_t>& st) {
    if (paged)
      return int64_t(block_table[b * max_blocks + r / c.page_size]) * st[0] + (r % c.page_size) * st[1] + hk * st[2] +
             d;
    if (varlen) return (cu_k[b] + r) * st[0] + hk * st[1] + d;
    return int64_t(kv_idx[b]) * st[0] + r * st[1] + hk * st[2] + d;
  };

  // Random values, rounded to the dtype, only where the kernel may read.
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < c.q_lens[b]; ++i)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) q.set(q_index(b, i, h, d, q_strides), normal(rng));
    for (int64_t r = key_begin[b]; r < key_end[b]; ++r)
      for (int64_t hk = 0; hk < Hk; ++hk)
        for (int64_t d = 0; d < D; ++d) {
          k.set(kv_index(b, r, hk, d, k_strides), normal(rng));
          v.set(kv_index(b, r, hk, d, v_strides), normal(rng));
        }
  }
  std::vector<float> alibi(c.alibi_rank == 2 ? B * H : H);
  for (float& s : alibi) s = float(uniform(rng) * 0.5);

  // lse: padded (B, H, Sq), varlen (H, total_q); one spare element per row of padding.
  std::vector<int64_t> lse_shape = varlen ? std::vector<int64_t>{H, cu_q[B]} : std::vector<int64_t>{B, H, max_q};
  std::vector<int64_t> lse_strides;
  std::vector<float> lse(size_t(padded_strides(lse_shape, c.stride_pad, &lse_strides)), std::nanf(""));
  auto lse_index = [&](int64_t b, int64_t h, int64_t i) {
    return varlen ? h * lse_strides[0] + (cu_q[b] + i) * lse_strides[1]
                  : b * lse_strides[0] + h * lse_strides[1] + i * lse_strides[2];
  };

  // ---- the call ----
  af_tensor tq = make_tensor(q.data(), dt, q_shape, q_strides);
  af_tensor tout = make_tensor(out.data(), dt, q_shape, out_strides);
  af_tensor tk = make_tensor(k.data(), dt, kv_shape, k_strides);
  af_tensor tv = make_tensor(v.data(), dt, kv_shape, v_strides);
  af_tensor tlse = make_tensor(lse.data(), AF_DTYPE_FLOAT32, lse_shape, lse_strides);
  af_tensor tcu_q = make_tensor(cu_q.data(), AF_DTYPE_INT32, {B + 1}, {1});
  af_tensor tcu_k = make_tensor(cu_k.data(), AF_DTYPE_INT32, {B + 1}, {1});
  std::vector<int32_t> seqused(key_end.begin(), key_end.end()), leftpad(key_begin.begin(), key_begin.end());
  af_tensor tseqused = make_tensor(seqused.data(), AF_DTYPE_INT32, {B}, {1});
  af_tensor tleftpad = make_tensor(leftpad.data(), AF_DTYPE_INT32, {B}, {1});
  af_tensor tkv_idx = make_tensor(kv_idx.data(), AF_DTYPE_INT32, {B}, {1});
  af_tensor ttable = make_tensor(block_table.data(), AF_DTYPE_INT32, {B, max_blocks}, {max_blocks, 1});
  af_tensor talibi = c.alibi_rank == 2 ? make_tensor(alibi.data(), AF_DTYPE_FLOAT32, {B, H}, {H, 1})
                                       : make_tensor(alibi.data(), AF_DTYPE_FLOAT32, {H}, {1});

  af_attention_args args{};
  args.struct_size = sizeof args;
  args.q = &tq, args.k = &tk, args.v = &tv, args.out = &tout;
  args.softmax_lse = c.lse ? &tlse : nullptr;
  if (varlen) {
    args.cu_seqlens_q = &tcu_q;
    args.cu_seqlens_k = &tcu_k;
    args.max_seqlen_q = max_q;
    args.max_seqlen_k = max_k;
  }
  if (c.seqused) args.seqused_k = &tseqused;
  if (c.leftpad) args.leftpad_k = &tleftpad;
  if (c.kv_batch_idx) args.kv_batch_idx = &tkv_idx;
  if (paged) args.block_table = &ttable;
  if (c.alibi_rank != 0) args.alibi_slopes = &talibi;
  args.softmax_scale = c.softmax_scale;
  args.softcap = c.softcap;
  args.causal = c.causal;
  args.window_left = c.window_left;
  args.window_right = c.window_right;
  args.backend = AF_BACKEND_CPU;
  if (isa == af::cpu::best_isa()) {
    ASSERT_EQ(af_attention_forward(&args), AF_OK) << af_last_error_message();
  } else {
    af::AttentionProblem problem;
    ASSERT_EQ(af::validate_attention_args(&args, &problem), AF_OK) << af_last_error_message();
    ASSERT_EQ(af::cpu::attention_forward(problem, isa), AF_OK) << af_last_error_message();
  }

  // ---- reference, naive same-precision implementation, comparison ----
  const double scale = c.softmax_scale > 0 ? c.softmax_scale : 1.0 / std::sqrt(double(D));
  const int64_t wr = c.causal ? 0 : c.window_right;
  Error out_err, lse_err;
  double largest_output = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t q_len = c.q_lens[b], k_len = key_end[b] - key_begin[b];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hk = h / (H / Hk);
      const double slope = c.alibi_rank == 0 ? 0.0 : alibi[c.alibi_rank == 2 ? b * H + h : h];
      for (int64_t i = 0; i < q_len; ++i) {
        const int64_t diagonal = i + k_len - q_len;
        int64_t first = 0, last = k_len - 1;
        if (c.window_left >= 0) first = std::max(first, diagonal - c.window_left);
        if (wr >= 0) last = std::min(last, diagonal + wr);
        std::vector<double> s64;  // scores of the visible keys in float64
        std::vector<float> s32;   // and in the naive precision
        for (int64_t j = first; j <= last; ++j) {
          double dot = 0;
          float dot32 = 0;
          for (int64_t d = 0; d < D; ++d) {
            const double qd = q.get(q_index(b, i, h, d, q_strides));
            const double kd = k.get(kv_index(b, key_begin[b] + j, hk, d, k_strides));
            dot += qd * kd;
            dot32 += float(qd) * float(kd);
          }
          double s = dot * scale;
          float t = dt == AF_DTYPE_FLOAT32 ? dot32 * float(scale) : float(round_to(dt, double(dot32 * float(scale))));
          if (c.softcap > 0) {
            s = c.softcap * std::tanh(s / c.softcap);
            t = c.softcap * std::tanh(t / c.softcap);
          }
          s -= slope * std::fabs(double(diagonal - j));
          t -= float(slope) * std::fabs(float(diagonal - j));
          s64.push_back(s);
          s32.push_back(t);
        }
        const bool empty = s64.empty();
        double max64 = -INFINITY;
        float max32 = -INFINITY;
        for (size_t n = 0; n < s64.size(); ++n) max64 = std::max(max64, s64[n]), max32 = std::max(max32, s32[n]);
        double sum64 = 0;
        float sum32 = 0;
        std::vector<float> p32(s32.size());
        for (size_t n = 0; n < s64.size(); ++n) {
          sum64 += std::exp(s64[n] - max64);
          sum32 += std::exp(s32[n] - max32);
        }
        for (size_t n = 0; n < s32.size(); ++n) {
          p32[n] = std::exp(s32[n] - max32) / sum32;
          if (dt != AF_DTYPE_FLOAT32) p32[n] = float(round_to(dt, p32[n]));
        }
        for (int64_t d = 0; d < D; ++d) {
          double o64 = 0;
          float o32 = 0;
          for (int64_t j = first; j <= last; ++j) {
            const double vd = v.get(kv_index(b, key_begin[b] + j, hk, d, v_strides));
            o64 += std::exp(s64[j - first] - max64) / sum64 * vd;
            o32 += p32[j - first] * float(vd);
          }
          const double ours = out.get(q_index(b, i, h, d, out_strides));
          if (empty) {
            ASSERT_EQ(ours, 0.0) << "row with no visible keys: b " << b << " h " << h << " i " << i;
            continue;
          }
          ASSERT_FALSE(std::isnan(ours)) << "NaN at b " << b << " h " << h << " i " << i << " d " << d;
          const double expected = round_to(dt, o64);
          largest_output = std::max(largest_output, std::fabs(expected));
          out_err.ours = std::max(out_err.ours, std::fabs(ours - expected));
          out_err.naive = std::max(out_err.naive, std::fabs(round_to(dt, o32) - expected));
        }
        if (c.lse) {
          const double ours = lse[size_t(lse_index(b, h, i))];
          if (empty) {
            ASSERT_TRUE(std::isinf(ours) && ours < 0) << "lse of an empty row is " << ours;
          } else {
            ASSERT_FALSE(std::isnan(ours));
            const double expected = max64 + std::log(sum64);
            lse_err.ours = std::max(lse_err.ours, std::fabs(ours - expected));
            lse_err.naive = std::max(lse_err.naive, std::fabs(double(max32 + std::log(sum32)) - expected));
          }
        }
      }
    }
  }
  // Floor: one unit in the last place of the output dtype at the largest
  // output (errors of 16-bit outputs come in whole ulps, and the naive result
  // may round onto the exact one by luck), and at least 1e-6.
  const int mantissa_bits = dt == AF_DTYPE_FLOAT32 ? 23 : dt == AF_DTYPE_FLOAT16 ? 10 : 7;
  const double out_floor =
      std::max(1e-6, largest_output > 0 ? std::ldexp(1.0, std::ilogb(largest_output) - mantissa_bits) : 0.0);
  // fp32: both results carry rounding errors of one size from different summation orders (blocked, vectorised dot
  // products and online rescales against sequential sums), so the naive error is a sample of that size, not a
  // bound: 3x it (2x failed 1 in a few hundred cases: alibi_bh_scale_fp32 at 2.2x under ASan). 16-bit outputs:
  // their rounding, common to both, dominates.
  const double naive_factor = dt == AF_DTYPE_FLOAT32 ? 3.0 : 2.0;
  EXPECT_LE(out_err.ours, naive_factor * out_err.naive + out_floor) << "naive error " << out_err.naive;
  EXPECT_LE(lse_err.ours, 2 * lse_err.naive + 1e-5) << "naive lse error " << lse_err.naive;

  // Nothing written outside the tensors' elements: padding stays NaN.
  std::vector<bool> element(out.bytes.size() / element_size(dt), false);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < (varlen ? c.q_lens[b] : max_q); ++i)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) element[size_t(q_index(b, i, h, d, out_strides))] = true;
  for (size_t n = 0; n < element.size(); ++n)
    if (!element[n]) {
      ASSERT_TRUE(std::isnan(out.get(int64_t(n)))) << "out written at padding element " << n;
    }
}

uint64_t fresh_seed() { return uint64_t(std::chrono::high_resolution_clock::now().time_since_epoch().count()); }

// A padded case with every sequence of the same length.
Case padded(std::string name, af_dtype dt, int64_t B, int64_t Sq, int64_t Sk, int64_t H, int64_t Hk, int64_t D) {
  Case c;
  c.name = std::move(name);
  c.dtype = dt;
  c.q_lens.assign(B, Sq);
  c.k_lens.assign(B, Sk);
  c.heads = H, c.heads_kv = Hk, c.head_dim = D;
  return c;
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const af_dtype dtypes[] = {AF_DTYPE_FLOAT32, AF_DTYPE_FLOAT16, AF_DTYPE_BFLOAT16};
  const char* dtype_names[] = {"fp32", "fp16", "bf16"};
  for (int t = 0; t < 3; ++t) {
    const af_dtype dt = dtypes[t];
    const std::string n = std::string("_") + dtype_names[t];
    cases.push_back(padded("plain" + n, dt, 2, 77, 77, 4, 4, 64));
    Case causal = padded("causal_sq_lt_sk" + n, dt, 3, 37, 150, 4, 2, 32);
    causal.causal = true;
    cases.push_back(causal);
    Case masked = padded("causal_sq_gt_sk_masked_rows" + n, dt, 2, 90, 41, 2, 1, 40);
    masked.causal = true;
    cases.push_back(masked);
    Case batch17 = padded("batch17_gqa4" + n, dt, 17, 19, 23, 8, 2, 16);
    cases.push_back(batch17);
    Case window = padded("window" + n, dt, 2, 130, 140, 4, 1, 72);
    window.window_left = 20, window.window_right = 5;
    cases.push_back(window);
    // Row i sees keys [i - 32, i - 30]: rows 0..29 see nothing.
    Case nokeys = padded("window_excludes_all_keys" + n, dt, 1, 40, 10, 2, 2, 24);
    nokeys.window_left = 2, nokeys.window_right = 0;
    cases.push_back(nokeys);
    Case softcap = padded("softcap_alibi_h" + n, dt, 2, 65, 129, 4, 4, 64);
    softcap.softcap = 5.0f, softcap.alibi_rank = 1, softcap.causal = true;
    cases.push_back(softcap);
    Case alibi = padded("alibi_bh_scale" + n, dt, 3, 33, 33, 2, 1, 128);
    alibi.alibi_rank = 2, alibi.softmax_scale = 0.3f;
    cases.push_back(alibi);
    Case strided = padded("strided_views_gqa8" + n, dt, 2, 45, 71, 8, 1, 48);
    strided.stride_pad = 3;
    cases.push_back(strided);
    Case kvcache = padded("kvcache_seqused_leftpad_batchidx" + n, dt, 5, 3, 90, 4, 2, 64);
    kvcache.seqused = kvcache.leftpad = kvcache.kv_batch_idx = true;
    kvcache.causal = true;
    cases.push_back(kvcache);
    Case varlen;
    varlen.name = "varlen_empty_sequences" + n;
    varlen.dtype = dt;
    varlen.layout = Layout::kVarlen;
    varlen.q_lens = {5, 0, 67, 1, 0, 130};
    varlen.k_lens = {9, 4, 0, 70, 0, 129};
    varlen.heads = 6, varlen.heads_kv = 3, varlen.head_dim = 80;
    varlen.causal = true;
    varlen.stride_pad = 2;
    cases.push_back(varlen);
    Case paged = varlen;
    paged.name = "paged_varlen_page7" + n;
    paged.layout = Layout::kPagedVarlen;
    paged.page_size = 7;
    paged.stride_pad = 0;
    cases.push_back(paged);
    Case paged_padded = padded("paged_page3_seqused_leftpad" + n, dt, 3, 11, 50, 4, 4, 32);
    paged_padded.layout = Layout::kPaged;
    paged_padded.page_size = 3;
    paged_padded.seqused = paged_padded.leftpad = true;
    paged_padded.window_left = 9;
    cases.push_back(paged_padded);
    // Each (sequence, kv head) packs to more than the driver's 4 MiB wave: one unit per wave.
    Case long_keys = padded("long_keys_several_waves" + n, dt, 2, 3, 4200, 4, 2, 128);
    long_keys.causal = true;
    cases.push_back(long_keys);
    Case odd = padded("odd_head_dim_no_lse" + n, dt, 1, 3, 200, 2, 2, 5);
    odd.lse = false;
    cases.push_back(odd);
  }
  return cases;
}

void run_all_cases(af::cpu::Isa isa) {
  if (!af::cpu::isa_supported(isa)) GTEST_SKIP() << "this CPU cannot run the " << af::cpu::isa_name(isa) << " kernel";
  const uint64_t seed = fresh_seed();
  std::mt19937_64 rng(seed);
  for (const Case& c : all_cases()) {
    run_case(c, isa, rng, seed);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace

TEST(CoreCpuAttention, MatchesFloat64ReferenceAvx512Bf16) { run_all_cases(af::cpu::Isa::kAvx512Bf16); }
TEST(CoreCpuAttention, MatchesFloat64ReferenceAvx512) { run_all_cases(af::cpu::Isa::kAvx512); }
TEST(CoreCpuAttention, MatchesFloat64ReferenceAvx2) { run_all_cases(af::cpu::Isa::kAvx2); }
TEST(CoreCpuAttention, MatchesFloat64ReferenceBaseline) { run_all_cases(af::cpu::Isa::kBaseline); }

// The same call gives the same bits with 1 thread and with several (each
// work item is computed by one thread in a fixed order).
TEST(CoreCpuAttention, ThreadCountDoesNotChangeResults) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const int64_t B = 2, S = 300, H = 4, D = 64;
  std::vector<float> q(B * S * H * D), k(q.size()), v(q.size()), out1(q.size()), out4(q.size());
  for (float* buffer : {q.data(), k.data(), v.data()})
    for (size_t n = 0; n < q.size(); ++n) buffer[n] = normal(rng);
  const std::vector<int64_t> shape{B, S, H, D}, strides{S * H * D, H * D, D, 1};
  af_tensor tq = make_tensor(q.data(), AF_DTYPE_FLOAT32, shape, strides);
  af_tensor tk = make_tensor(k.data(), AF_DTYPE_FLOAT32, shape, strides);
  af_tensor tv = make_tensor(v.data(), AF_DTYPE_FLOAT32, shape, strides);
  af_tensor to1 = make_tensor(out1.data(), AF_DTYPE_FLOAT32, shape, strides);
  af_tensor to4 = make_tensor(out4.data(), AF_DTYPE_FLOAT32, shape, strides);
  af_attention_args args{};
  args.struct_size = sizeof args;
  args.q = &tq, args.k = &tk, args.v = &tv, args.causal = 1;
  const int32_t threads = af_get_num_threads();
  af_set_num_threads(1);
  args.out = &to1;
  ASSERT_EQ(af_attention_forward(&args), AF_OK) << af_last_error_message();
  af_set_num_threads(4);
  args.out = &to4;
  ASSERT_EQ(af_attention_forward(&args), AF_OK) << af_last_error_message();
  af_set_num_threads(threads);
  EXPECT_EQ(std::memcmp(out1.data(), out4.data(), out1.size() * sizeof(float)), 0);
}

// q, k and v as slices of one packed (B, S, 3, H, D) buffer, as
// flash_attn_qkvpacked_func passes them, give bit for bit what contiguous
// copies give: the arithmetic must not depend on the strides.
TEST(CoreCpuAttention, PackedQkvViewsMatchContiguousCopies) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const int64_t B = 3, S = 131, H = 4, D = 40;
  for (af_dtype dt : {AF_DTYPE_FLOAT32, AF_DTYPE_BFLOAT16}) {
    Buffer packed(dt, B * S * 3 * H * D), q(dt, B * S * H * D), k(dt, B * S * H * D), v(dt, B * S * H * D);
    Buffer out_packed(dt, B * S * H * D), out_copies(dt, B * S * H * D);
    for (int64_t n = 0; n < B * S * 3 * H * D; ++n) packed.set(n, normal(rng));
    Buffer* copies[] = {&q, &k, &v};
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t t = 0; t < 3; ++t)
          for (int64_t hd = 0; hd < H * D; ++hd)
            copies[t]->set((b * S + s) * H * D + hd, packed.get(((b * S + s) * 3 + t) * H * D + hd));
    const std::vector<int64_t> shape{B, S, H, D}, contiguous{S * H * D, H * D, D, 1},
        in_packed{S * 3 * H * D, 3 * H * D, D, 1};
    auto slice = [&](int64_t t) {
      return make_tensor(packed.bytes.data() + t * H * D * element_size(dt), dt, shape, in_packed);
    };
    af_tensor pq = slice(0), pk = slice(1), pv = slice(2), po = make_tensor(out_packed.data(), dt, shape, contiguous);
    af_tensor cq = make_tensor(q.data(), dt, shape, contiguous), ck = make_tensor(k.data(), dt, shape, contiguous);
    af_tensor cv = make_tensor(v.data(), dt, shape, contiguous),
              co = make_tensor(out_copies.data(), dt, shape, contiguous);
    af_attention_args args{};
    args.struct_size = sizeof args;
    args.causal = 1;
    args.q = &pq, args.k = &pk, args.v = &pv, args.out = &po;
    ASSERT_EQ(af_attention_forward(&args), AF_OK) << af_last_error_message();
    args.q = &cq, args.k = &ck, args.v = &cv, args.out = &co;
    ASSERT_EQ(af_attention_forward(&args), AF_OK) << af_last_error_message();
    EXPECT_EQ(out_packed.bytes, out_copies.bytes) << "dtype " << int(dt);
  }
}
