// attnforge selftest: runs the CPU backend on fresh random inputs and checks the
// answer against a float64 reference computed here. With --library it loads a
// libattnforge.so with dlopen and checks that one instead of the built-in core,
// which is how an installed or copied library is proven to load and work.
#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "attnforge/attnforge.h"
#include "cli/commands.h"

namespace af::cli {

namespace {

using ForwardFn = af_status (*)(const af_attention_args*);
using MessageFn = const char* (*)(void);
using VersionFn = const char* (*)(void);

struct Case {
  const char* name;
  int64_t batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim;
  bool causal;
  int window_left, window_right;
};

// Awkward on purpose: lengths off the tile sizes, GQA, Sq != Sk, windows.
const Case kCases[] = {
    {"dense", 2, 37, 37, 4, 4, 64, false, -1, -1},
    {"causal gqa 4:1, Sq < Sk", 3, 19, 53, 8, 2, 32, true, -1, -1},
    {"window (8, 3), head_dim 80", 1, 45, 45, 2, 1, 80, false, 8, 3},
    {"causal, Sq > Sk (masked rows)", 1, 29, 11, 3, 3, 16, true, -1, -1},
};

std::vector<float> random_values(size_t n, uint64_t& state) {
  std::vector<float> values(n);
  for (float& x : values) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    x = float(int64_t(state >> 40) - (1ll << 23)) / float(1ll << 23);
  }
  return values;
}

af_tensor dense_tensor(float* data, int64_t b, int64_t s, int64_t h, int64_t d) {
  af_tensor t{};
  t.data = data;
  t.dtype = AF_DTYPE_FLOAT32;
  t.device_type = AF_DEVICE_CPU;
  t.rank = 4;
  const int64_t shape[4] = {b, s, h, d};
  const int64_t strides[4] = {s * h * d, h * d, d, 1};
  for (int i = 0; i < 4; ++i) t.shape[i] = shape[i], t.strides[i] = strides[i];
  return t;
}

// Naive float64 attention with FlashAttention's mask rules; returns max |out - ref|
// and whether every masked row came back as exactly 0 with lse -inf.
double check_case(const Case& c, ForwardFn forward, MessageFn message, uint64_t seed, std::string* error) {
  uint64_t state = seed;
  const int64_t q_n = c.batch * c.seqlen_q * c.heads * c.head_dim;
  const int64_t kv_n = c.batch * c.seqlen_k * c.kv_heads * c.head_dim;
  std::vector<float> q = random_values(q_n, state), k = random_values(kv_n, state), v = random_values(kv_n, state);
  std::vector<float> out(q_n, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(c.batch * c.heads * c.seqlen_q, std::numeric_limits<float>::quiet_NaN());

  af_tensor tq = dense_tensor(q.data(), c.batch, c.seqlen_q, c.heads, c.head_dim);
  af_tensor tk = dense_tensor(k.data(), c.batch, c.seqlen_k, c.kv_heads, c.head_dim);
  af_tensor tv = dense_tensor(v.data(), c.batch, c.seqlen_k, c.kv_heads, c.head_dim);
  af_tensor to = dense_tensor(out.data(), c.batch, c.seqlen_q, c.heads, c.head_dim);
  af_tensor tl{};
  tl.data = lse.data();
  tl.dtype = AF_DTYPE_FLOAT32;
  tl.device_type = AF_DEVICE_CPU;
  tl.rank = 3;
  tl.shape[0] = c.batch, tl.shape[1] = c.heads, tl.shape[2] = c.seqlen_q;
  tl.strides[0] = c.heads * c.seqlen_q, tl.strides[1] = c.seqlen_q, tl.strides[2] = 1;

  af_attention_args args{};
  args.struct_size = sizeof args;
  args.q = &tq, args.k = &tk, args.v = &tv, args.out = &to, args.softmax_lse = &tl;
  args.causal = c.causal;
  args.window_left = c.window_left, args.window_right = c.window_right;
  args.backend = AF_BACKEND_CPU;
  const af_status status = forward(&args);
  if (status != AF_OK) {
    *error = std::string("af_attention_forward failed: ") + message();
    return INFINITY;
  }

  const double scale = 1.0 / std::sqrt(double(c.head_dim));
  const int64_t group = c.heads / c.kv_heads;
  double worst = 0;
  std::vector<double> scores(c.seqlen_k);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seqlen_q; ++i) {
        const int64_t diagonal = i + c.seqlen_k - c.seqlen_q;
        const int64_t right = c.causal ? 0 : c.window_right;
        const float* qi = &q[((b * c.seqlen_q + i) * c.heads + h) * c.head_dim];
        double max_score = -INFINITY;
        for (int64_t j = 0; j < c.seqlen_k; ++j) {
          const bool visible =
              (c.window_left < 0 || j >= diagonal - c.window_left) && (right < 0 || j <= diagonal + right);
          if (!visible) {
            scores[j] = -INFINITY;
            continue;
          }
          const float* kj = &k[((b * c.seqlen_k + j) * c.kv_heads + h / group) * c.head_dim];
          double dot = 0;
          for (int64_t d = 0; d < c.head_dim; ++d) dot += double(qi[d]) * kj[d];
          scores[j] = dot * scale;
          if (scores[j] > max_score) max_score = scores[j];
        }
        double sum = 0;
        for (int64_t j = 0; j < c.seqlen_k; ++j) sum += max_score == -INFINITY ? 0 : std::exp(scores[j] - max_score);
        const float* oi = &out[((b * c.seqlen_q + i) * c.heads + h) * c.head_dim];
        const double got_lse = lse[(b * c.heads + h) * c.seqlen_q + i];
        if (sum == 0) {  // nothing visible: FlashAttention gives 0 and lse = -inf
          for (int64_t d = 0; d < c.head_dim; ++d)
            if (oi[d] != 0.0f) worst = INFINITY;
          if (!(std::isinf(got_lse) && got_lse < 0)) worst = INFINITY;
          continue;
        }
        worst = std::fmax(worst, std::fabs(got_lse - (max_score + std::log(sum))));
        for (int64_t d = 0; d < c.head_dim; ++d) {
          double ref = 0;
          for (int64_t j = 0; j < c.seqlen_k; ++j)
            if (scores[j] != -INFINITY)
              ref += std::exp(scores[j] - max_score) / sum *
                     v[((b * c.seqlen_k + j) * c.kv_heads + h / group) * c.head_dim + d];
          const double diff = std::fabs(double(oi[d]) - ref);
          worst = std::isnan(diff) ? INFINITY : std::fmax(worst, diff);
        }
      }
  return worst;
}

}  // namespace

int run_selftest(int argc, char** argv) {
  const char* library = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (is_help(argv[i])) {
      std::puts(
          "usage: attnforge selftest [--library PATH]\n\n"
          "Runs attention on the CPU backend on fresh random fp32 inputs (dense, causal with GQA\n"
          "and Sq < Sk, a sliding window, fully masked rows) and checks outputs and LSE against\n"
          "a float64 reference. --library checks that libattnforge.so (loaded with dlopen)\n"
          "instead of the core built into this command.\n"
          "exit codes: 0 all correct, 1 a check failed or the library did not load, 2 usage error");
      return 0;
    }
    if (!std::strcmp(argv[i], "--library") && i + 1 < argc) {
      library = argv[++i];
    } else {
      std::fprintf(stderr, "attnforge selftest: unknown option '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  ForwardFn forward = af_attention_forward;
  MessageFn message = af_last_error_message;
  VersionFn version = af_version_string;
  if (library != nullptr) {
    void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      std::fprintf(stderr, "attnforge selftest: cannot load %s: %s\n", library, dlerror());
      return 1;
    }
    forward = reinterpret_cast<ForwardFn>(dlsym(handle, "af_attention_forward"));
    message = reinterpret_cast<MessageFn>(dlsym(handle, "af_last_error_message"));
    version = reinterpret_cast<VersionFn>(dlsym(handle, "af_version_string"));
    if (forward == nullptr || message == nullptr || version == nullptr) {
      std::fprintf(stderr, "attnforge selftest: %s lacks the af_* entry points\n", library);
      return 1;
    }
  }
  std::printf("selftest of attnforge %s (%s)\n", version(), library != nullptr ? library : "built-in core");
  const uint64_t seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) | 1;
  // fp32 inputs, fp32 accumulation: a naive fp32 implementation lands near 1e-6 here.
  const double tolerance = 1e-4;
  int failures = 0;
  for (const Case& c : kCases) {
    std::string error;
    const double err = check_case(c, forward, message, seed, &error);
    const bool ok = err <= tolerance;
    failures += !ok;
    std::printf("  %-34s max error %.2e  %s%s\n", c.name, err, ok ? "ok" : "FAILED",
                error.empty() ? "" : (" " + error).c_str());
  }
  std::printf("seed %llu: %d passed, %d failed\n", (unsigned long long)seed, int(std::size(kCases)) - failures,
              failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace af::cli
