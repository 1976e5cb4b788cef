// The C part of a decode-shaped call's host time, without Python: af_attention_run with a cached
// plan on q (1, 1, 32, 128) bf16 against 4096 cached keys of 8 KV heads, beside the floor of one
// cuLaunchKernel of an empty kernel. Each row: host wall time of 200 calls without waiting for the
// GPU, divided by 200; median of 15 loops. Prints "name<TAB>microseconds" lines.
// Build (GPU machine): nvcc -O2 -std=c++17 -I include host_time_c.cpp -L<lib dir> -lattnforge -lcuda
#include <cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "attnforge/attnforge.h"

namespace {

void check(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) {
    std::fprintf(stderr, "%s failed: %d\n", what, int(r));
    std::exit(2);
  }
}

void check(af_status s, const char* what) {
  if (s != AF_OK) {
    std::fprintf(stderr, "%s failed: %s: %s\n", what, af_status_string(s), af_last_error_message());
    std::exit(2);
  }
}

double host_us(CUstream stream, const std::function<void()>& call) {
  constexpr int kCalls = 200, kLoops = 15;
  for (int i = 0; i < 20; ++i) call();
  check(cuStreamSynchronize(stream), "cuStreamSynchronize");
  std::vector<double> samples;
  for (int loop = 0; loop < kLoops; ++loop) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls; ++i) call();
    const auto stop = std::chrono::steady_clock::now();
    samples.push_back(std::chrono::duration<double, std::micro>(stop - start).count() / kCalls);
    check(cuStreamSynchronize(stream), "cuStreamSynchronize");
  }
  std::sort(samples.begin(), samples.end());
  return samples[kLoops / 2];
}

af_tensor bf16_tensor(CUdeviceptr data, std::vector<int64_t> shape) {
  af_tensor t{};
  t.data = reinterpret_cast<void*>(data);
  t.dtype = AF_DTYPE_BFLOAT16;
  t.device_type = AF_DEVICE_CUDA;
  t.rank = int32_t(shape.size());
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.shape[d] = shape[size_t(d)];
    t.strides[d] = stride;
    stride *= shape[size_t(d)];
  }
  return t;
}

}  // namespace

int main() {
  check(cuInit(0), "cuInit");
  CUdevice device;
  CUcontext context;
  check(cuDeviceGet(&device, 0), "cuDeviceGet");
  check(cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain");
  check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
  CUstream stream;
  check(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");

  const char* ptx = ".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry empty() { ret; }\n";
  CUmodule module;
  CUfunction empty;
  check(cuModuleLoadData(&module, ptx), "cuModuleLoadData");
  check(cuModuleGetFunction(&empty, module, "empty"), "cuModuleGetFunction");

  const int64_t keys = 4096, heads = 32, heads_kv = 8, dim = 128;
  CUdeviceptr q, k, v, out, lse;
  check(cuMemAlloc(&q, size_t(heads * dim * 2)), "cuMemAlloc");
  check(cuMemAlloc(&k, size_t(keys * heads_kv * dim * 2)), "cuMemAlloc");
  check(cuMemAlloc(&v, size_t(keys * heads_kv * dim * 2)), "cuMemAlloc");
  check(cuMemAlloc(&out, size_t(heads * dim * 2)), "cuMemAlloc");
  check(cuMemAlloc(&lse, size_t(heads * 4)), "cuMemAlloc");
  check(cuMemsetD8(k, 0, size_t(keys * heads_kv * dim * 2)), "cuMemsetD8");
  check(cuMemsetD8(v, 0, size_t(keys * heads_kv * dim * 2)), "cuMemsetD8");
  check(cuMemsetD8(q, 0, size_t(heads * dim * 2)), "cuMemsetD8");
  af_tensor tq = bf16_tensor(q, {1, 1, heads, dim}), tk = bf16_tensor(k, {1, keys, heads_kv, dim});
  af_tensor tv = bf16_tensor(v, {1, keys, heads_kv, dim}), to = bf16_tensor(out, {1, 1, heads, dim});
  af_tensor tl = bf16_tensor(lse, {1, heads, 1});
  tl.dtype = AF_DTYPE_FLOAT32;

  auto args_for = [&](int32_t num_splits) {
    af_attention_args a{};
    a.struct_size = sizeof(a);
    a.q = &tq, a.k = &tk, a.v = &tv, a.out = &to, a.softmax_lse = &tl;
    a.causal = 1, a.window_left = -1, a.window_right = -1;
    a.backend = AF_BACKEND_CUDA;
    a.cuda_stream = stream;
    a.num_splits = num_splits;
    return a;
  };
  const af_attention_args planned = args_for(0), unsplit = args_for(1);
  af_attention_plan *plan = nullptr, *plan_1 = nullptr;
  check(af_attention_plan_create(&planned, &plan), "af_attention_plan_create");
  check(af_attention_plan_create(&unsplit, &plan_1), "af_attention_plan_create");
  size_t workspace_bytes = 0;
  check(af_attention_plan_workspace_size(plan, &workspace_bytes), "af_attention_plan_workspace_size");
  CUdeviceptr workspace = 0;
  if (workspace_bytes > 0) {
    check(cuMemAlloc(&workspace, workspace_bytes), "cuMemAlloc");
    check(cuMemsetD8(workspace, 0, workspace_bytes), "cuMemsetD8");
  }
  char text[256];
  check(af_attention_plan_describe(plan, text, sizeof(text), nullptr), "af_attention_plan_describe");

  std::printf("plan\t%s (workspace %zu bytes)\n", text, workspace_bytes);
  std::printf("cuLaunchKernel, empty kernel\t%.2f\n", host_us(stream, [&] {
                check(cuLaunchKernel(empty, 1, 1, 1, 32, 1, 1, 0, stream, nullptr, nullptr), "cuLaunchKernel");
              }));
  std::printf("af_attention_run, cached plan\t%.2f\n",
              host_us(stream, [&] { check(af_attention_run(plan, &planned, nullptr, 0), "af_attention_run"); }));
  std::printf("af_attention_run, cached plan, caller-owned workspace\t%.2f\n", host_us(stream, [&] {
                check(af_attention_run(plan, &planned, reinterpret_cast<void*>(workspace), workspace_bytes),
                      "af_attention_run");
              }));
  std::printf("af_attention_run, cached plan, num_splits=1\t%.2f\n",
              host_us(stream, [&] { check(af_attention_run(plan_1, &unsplit, nullptr, 0), "af_attention_run"); }));
  std::printf("af_attention_forward (plans every call)\t%.2f\n",
              host_us(stream, [&] { check(af_attention_forward(&planned), "af_attention_forward"); }));
  af_attention_plan_destroy(plan);
  af_attention_plan_destroy(plan_1);
  return 0;
}
