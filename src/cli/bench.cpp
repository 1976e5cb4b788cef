// attnforge bench: times the forward pass on one shape given on the command line.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "api/validate.h"
#include "attnforge/attnforge.h"
#include "cli/commands.h"
#include "common/thread_pool.h"

namespace af::cli {

namespace {

const char kBenchUsage[] =
    "usage: attnforge bench [options]\n\n"
    "Times af_attention_forward on random inputs of one shape (CPU backend) and prints\n"
    "the median time and TFLOP/s. FLOPs = 4 * D * (visible query-key pairs) * B * H, so\n"
    "causal and windowed masks count only the work they require.\n\n"
    "options:\n"
    "  --batch B          batch size (default 1)\n"
    "  --seqlen S         query and key length (default 1024)\n"
    "  --seqlen-q S       query length\n"
    "  --seqlen-k S       key length\n"
    "  --heads H          query heads (default 16)\n"
    "  --kv-heads HK      key/value heads, H % HK == 0 (default H)\n"
    "  --head-dim D       head dimension, 1..256 (default 128)\n"
    "  --dtype T          fp32 | fp16 | bf16 (default bf16)\n"
    "  --causal           bottom-right causal mask\n"
    "  --window L,R       sliding window (inclusive; -1 unbounded)\n"
    "  --softcap C        tanh soft-capping of the scores\n"
    "  --threads N        CPU threads, 1..1024 (default: all cores)\n"
    "  --iters N          timed iterations, 1..1000000 (default 10)\n"
    "  --warmup N         untimed iterations first, 0..1000000 (default 2)\n"
    "  --json             one JSON object on stdout instead of text\n\n"
    "exit codes: 0 ok, 1 the attention call failed, 2 usage error\n";

struct BenchOptions {
  int64_t batch = 1, seqlen_q = 1024, seqlen_k = 1024, heads = 16, kv_heads = 0, head_dim = 128;
  af_dtype dtype = AF_DTYPE_BFLOAT16;
  bool causal = false, json = false;
  int window_left = -1, window_right = -1;
  float softcap = 0;
  int threads = 0, iters = 10, warmup = 2;
};

// A decimal integer in [min, max], nothing else (no wrap-around, no space, no trailing text).
bool parse_int(const char* text, int64_t min, int64_t max, int64_t* value) {
  if (!((*text >= '0' && *text <= '9') || *text == '-')) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || v < min || v > max) return false;
  *value = v;
  return true;
}

// "L,R", each -1 (unbounded) or a window size that fits int32.
bool parse_window(const char* text, int* left, int* right) {
  const char* comma = std::strchr(text, ',');
  if (comma == nullptr) return false;
  const std::string first(text, comma);
  int64_t l = 0, r = 0;
  if (!parse_int(first.c_str(), -1, INT32_MAX, &l) || !parse_int(comma + 1, -1, INT32_MAX, &r)) return false;
  *left = int(l), *right = int(r);
  return true;
}

// Returns 0 when parsed, else the exit code to return (0 for --help, 2 for errors).
int parse_options(int argc, char** argv, BenchOptions* o, bool* done) {
  *done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (is_help(argv[i])) {
      std::fputs(kBenchUsage, stdout);
      *done = true;
      return 0;
    }
    if (flag == "--causal") {
      o->causal = true;
      continue;
    }
    if (flag == "--json") {
      o->json = true;
      continue;
    }
    static const char* const kValueFlags[] = {"--batch",    "--seqlen",   "--seqlen-q", "--seqlen-k", "--heads",
                                              "--kv-heads", "--head-dim", "--threads",  "--iters",    "--warmup",
                                              "--softcap",  "--window",   "--dtype"};
    if (std::none_of(std::begin(kValueFlags), std::end(kValueFlags), [&](const char* f) { return flag == f; })) {
      std::fprintf(stderr, "attnforge bench: unknown option '%s' (see --help)\n", flag.c_str());
      return 2;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "attnforge bench: %s needs a value (see --help)\n", flag.c_str());
      return 2;
    }
    const char* value = argv[++i];
    int64_t n = 0;
    bool ok = true;
    // Sizes up to 2^31 - 1 each (their product is checked below); counts up to 10^6.
    constexpr int64_t kMaxSize = INT32_MAX, kMaxCount = 1000000;
    if (flag == "--batch")
      ok = parse_int(value, 0, kMaxSize, &o->batch);
    else if (flag == "--seqlen") {
      ok = parse_int(value, 0, kMaxSize, &o->seqlen_q);
      o->seqlen_k = o->seqlen_q;
    } else if (flag == "--seqlen-q")
      ok = parse_int(value, 0, kMaxSize, &o->seqlen_q);
    else if (flag == "--seqlen-k")
      ok = parse_int(value, 0, kMaxSize, &o->seqlen_k);
    else if (flag == "--heads")
      ok = parse_int(value, 1, kMaxSize, &o->heads);
    else if (flag == "--kv-heads")
      ok = parse_int(value, 1, kMaxSize, &o->kv_heads);
    else if (flag == "--head-dim")
      ok = parse_int(value, 1, kMaxSize, &o->head_dim);
    else if (flag == "--threads") {
      ok = parse_int(value, 1, af::kMaxThreads, &n);
      o->threads = int(n);
    } else if (flag == "--iters") {
      ok = parse_int(value, 1, kMaxCount, &n);
      o->iters = int(n);
    } else if (flag == "--warmup") {
      ok = parse_int(value, 0, kMaxCount, &n);
      o->warmup = int(n);
    } else if (flag == "--softcap") {
      char* end = nullptr;
      o->softcap = std::strtof(value, &end);
      ok = end != value && *end == '\0' && std::isfinite(o->softcap);
    } else if (flag == "--window")
      ok = parse_window(value, &o->window_left, &o->window_right);
    else if (flag == "--dtype") {
      const std::string t = value;
      if (t == "fp32" || t == "float32")
        o->dtype = AF_DTYPE_FLOAT32;
      else if (t == "fp16" || t == "float16")
        o->dtype = AF_DTYPE_FLOAT16;
      else if (t == "bf16" || t == "bfloat16")
        o->dtype = AF_DTYPE_BFLOAT16;
      else
        ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "attnforge bench: bad value '%s' for %s (see --help)\n", value, flag.c_str());
      return 2;
    }
  }
  if (o->kv_heads == 0) o->kv_heads = o->heads;
  // The buffers: q, k, v and out, all in host memory.
  int64_t q_elements = 0, kv_elements = 0, elements = 0, bytes = 0;
  const bool overflow = __builtin_mul_overflow(o->batch * o->seqlen_q, o->heads * o->head_dim, &q_elements) ||
                        __builtin_mul_overflow(o->batch * o->seqlen_k, o->kv_heads * o->head_dim, &kv_elements) ||
                        __builtin_add_overflow(q_elements, kv_elements, &elements) ||
                        __builtin_mul_overflow(elements, int64_t(2 * 4), &bytes);
  if (overflow || bytes > (int64_t(1) << 40)) {
    std::fprintf(stderr, "attnforge bench: the shape needs more than 1 TiB of host memory (see --help)\n");
    return 2;
  }
  return 0;
}

uint16_t to_half_bits(float f, af_dtype dtype) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (dtype == AF_DTYPE_BFLOAT16) return uint16_t((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
  // fp16 for values of moderate magnitude (|f| < 65504, normal range is enough for N(0,1) data).
  const uint32_t sign = (bits >> 16) & 0x8000;
  const int exponent = int((bits >> 23) & 0xFF) - 127 + 15;
  if (exponent <= 0) return uint16_t(sign);
  const uint32_t mantissa = bits & 0x7FFFFF;
  uint32_t h = sign | (uint32_t(exponent) << 10) | (mantissa >> 13);
  if ((mantissa & 0x1FFF) > 0x1000 || ((mantissa & 0x1FFF) == 0x1000 && (h & 1))) ++h;
  return uint16_t(h);
}

// Fills n elements of the given dtype with N(0,1)-like values (sum of uniforms).
void fill_random(void* data, int64_t n, af_dtype dtype, uint64_t seed) {
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; ++i) {
    float sum = 0;
    for (int r = 0; r < 4; ++r) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      sum += float(state >> 40) / float(1ull << 24);
    }
    const float x = (sum - 2.0f) * 1.7320508f;
    if (dtype == AF_DTYPE_FLOAT32)
      static_cast<float*>(data)[i] = x;
    else
      static_cast<uint16_t*>(data)[i] = to_half_bits(x, dtype);
  }
}

af_tensor dense_tensor(void* data, af_dtype dtype, std::vector<int64_t> shape) {
  af_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.device_type = AF_DEVICE_CPU;
  t.rank = int32_t(shape.size());
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.shape[d] = shape[d];
    t.strides[d] = stride;
    stride *= shape[d];
  }
  return t;
}

// Visible query-key pairs of one (batch, head), by the same mask rule the library uses.
double visible_pairs(const BenchOptions& o) {
  AttentionProblem p;
  p.window_left = o.window_left;
  p.window_right = o.causal ? 0 : o.window_right;
  double pairs = 0;
  for (int64_t i = 0; i < o.seqlen_q; ++i) {
    const KeyRange r = visible_keys(p, i, o.seqlen_q, o.seqlen_k);
    if (r.last >= r.first) pairs += double(r.last - r.first + 1);
  }
  return pairs;
}

}  // namespace

int run_bench(int argc, char** argv) {
  BenchOptions o;
  bool done = false;
  if (const int code = parse_options(argc, argv, &o, &done); code != 0 || done) return code;
  if (o.threads > 0) af_set_num_threads(o.threads);

  const size_t element = o.dtype == AF_DTYPE_FLOAT32 ? 4 : 2;
  const int64_t q_elems = o.batch * o.seqlen_q * o.heads * o.head_dim;
  const int64_t kv_elems = o.batch * o.seqlen_k * o.kv_heads * o.head_dim;
  std::vector<unsigned char> q(q_elems * element), k(kv_elems * element), v(kv_elems * element), out(q_elems * element);
  fill_random(q.data(), q_elems, o.dtype, 1);
  fill_random(k.data(), kv_elems, o.dtype, 2);
  fill_random(v.data(), kv_elems, o.dtype, 3);

  af_tensor tq = dense_tensor(q.data(), o.dtype, {o.batch, o.seqlen_q, o.heads, o.head_dim});
  af_tensor tk = dense_tensor(k.data(), o.dtype, {o.batch, o.seqlen_k, o.kv_heads, o.head_dim});
  af_tensor tv = dense_tensor(v.data(), o.dtype, {o.batch, o.seqlen_k, o.kv_heads, o.head_dim});
  af_tensor to = dense_tensor(out.data(), o.dtype, {o.batch, o.seqlen_q, o.heads, o.head_dim});
  af_attention_args args{};
  args.struct_size = sizeof args;
  args.q = &tq, args.k = &tk, args.v = &tv, args.out = &to;
  args.causal = o.causal;
  args.window_left = o.window_left, args.window_right = o.window_right;
  args.softcap = o.softcap;
  args.backend = AF_BACKEND_CPU;

  const bool show_progress = !o.json && isatty(2);
  std::vector<double> seconds;
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    const auto start = std::chrono::steady_clock::now();
    const af_status status = af_attention_forward(&args);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (status != AF_OK) {
      std::fprintf(stderr, "attnforge bench: %s: %s\n", af_status_string(status), af_last_error_message());
      return 1;
    }
    if (it >= o.warmup) seconds.push_back(elapsed);
    if (show_progress)
      std::fprintf(stderr, "\r%s %d/%d  last %.3f ms   ", it < o.warmup ? "warm-up" : "timing ",
                   it < o.warmup ? it + 1 : it + 1 - o.warmup, it < o.warmup ? o.warmup : o.iters, elapsed * 1e3);
  }
  if (show_progress) std::fputc('\n', stderr);
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const double flops = 4.0 * double(o.head_dim) * visible_pairs(o) * double(o.batch) * double(o.heads);
  const double tflops = median > 0 ? flops / median / 1e12 : 0;
  const char* dtype_name = o.dtype == AF_DTYPE_FLOAT32 ? "fp32" : o.dtype == AF_DTYPE_FLOAT16 ? "fp16" : "bf16";
  if (o.json) {
    std::printf(
        "{\"backend\":\"cpu\",\"threads\":%d,\"batch\":%lld,\"seqlen_q\":%lld,\"seqlen_k\":%lld,\"heads\":%lld,"
        "\"kv_heads\":%lld,\"head_dim\":%lld,\"dtype\":\"%s\",\"causal\":%s,\"window\":[%d,%d],\"iters\":%d,"
        "\"median_ms\":%.6f,\"min_ms\":%.6f,\"flops\":%.6e,\"tflops\":%.6f}\n",
        af_get_num_threads(), (long long)o.batch, (long long)o.seqlen_q, (long long)o.seqlen_k, (long long)o.heads,
        (long long)o.kv_heads, (long long)o.head_dim, dtype_name, o.causal ? "true" : "false", o.window_left,
        o.window_right, o.iters, median * 1e3, seconds.front() * 1e3, flops, tflops);
  } else {
    std::printf(
        "cpu, %d threads, B=%lld Sq=%lld Sk=%lld H=%lld Hk=%lld D=%lld %s%s: median %.3f ms (min %.3f), "
        "%.4f TFLOP/s\n",
        af_get_num_threads(), (long long)o.batch, (long long)o.seqlen_q, (long long)o.seqlen_k, (long long)o.heads,
        (long long)o.kv_heads, (long long)o.head_dim, dtype_name, o.causal ? " causal" : "", median * 1e3,
        seconds.front() * 1e3, tflops);
  }
  return 0;
}

}  // namespace af::cli
