// The extern "C" surface: every entry point clears the thread's error, catches
// everything, and answers with a status; af_last_error_message() is "" after a
// success (a message recorded along the way, e.g. a cache write that failed
// while the call still succeeded, is not left behind as if the call had failed).
//
// Enum parameters (af_status, af_backend) are read as their int32 value: a C
// caller may pass any int, and loading an out-of-range value as a C++ enum is
// undefined behaviour.
#include <cstdint>
#include <cstring>
#include <memory>
#include <exception>
#include <new>
#include <string>

#include "api/validate.h"
#include "api/select.h"
#include "common/error.h"
#include "common/json.h"
#include "common/thread_pool.h"
#include "cpu/cpu_attention.h"
#include "cuda/cuda_backend.h"
#include "cuda/kernel_cache.h"
#include "cuda/plan.h"

namespace {

template <typename Body>
af_status guarded(Body&& body) {
  af::clear_error();
  try {
    const af_status status = body();
    if (status == AF_OK) af::clear_error();
    return status;
  } catch (const std::bad_alloc&) {
    return af::fail(AF_ERR_OUT_OF_MEMORY, "out of host memory");
  } catch (const std::exception& e) {
    return af::fail(AF_ERR_INTERNAL, "internal error: %s", e.what());
  } catch (...) {
    return af::fail(AF_ERR_INTERNAL, "internal error: unknown exception");
  }
}

af_status copy_text(const std::string& text, char* buffer, size_t capacity, size_t* needed) {
  if (needed != nullptr) *needed = text.size() + 1;
  if (buffer == nullptr || capacity == 0) {
    if (capacity == 0 && needed != nullptr) return af::fail(AF_ERR_BUFFER_TOO_SMALL, "need %zu bytes", text.size() + 1);
    return af::fail(AF_ERR_NULL_POINTER, "buffer is NULL with capacity %zu", capacity);
  }
  const size_t n = text.size() < capacity ? text.size() : capacity - 1;
  std::memcpy(buffer, text.data(), n);
  buffer[n] = '\0';
  if (n < text.size()) return af::fail(AF_ERR_BUFFER_TOO_SMALL, "need %zu bytes, got %zu", text.size() + 1, capacity);
  return AF_OK;
}

template <typename Enum>
int32_t enum_value(const Enum& e) {
  static_assert(sizeof(Enum) == sizeof(int32_t), "C enums are int-sized on the supported ABIs");
  int32_t value;
  std::memcpy(&value, &e, sizeof value);
  return value;
}

#define AF_STRINGIFY2(x) #x
#define AF_STRINGIFY(x) AF_STRINGIFY2(x)

}  // namespace

// What a plan decided, and the call shape it decided it for.
struct af_attention_plan {
  af_backend requested = AF_BACKEND_AUTO;
  af_backend backend = AF_BACKEND_CPU;
  af::AttentionProblem shapes;  // from the plan's args (data pointers not kept)
  af::cuda::Plan cuda;
};

extern "C" {

AF_API int af_version_number(void) { return AF_VERSION_NUMBER; }
AF_API const char* af_version_string(void) { return AF_VERSION_STRING; }
AF_API int af_abi_version(void) { return AF_ABI_VERSION; }

AF_API const char* af_build_info(void) {
  return "gcc " __VERSION__ ", " AF_BUILD_TYPE ", C++" AF_STRINGIFY(__cplusplus) ", static libstdc++";
}

AF_API const char* af_status_string(af_status status_enum) {
  switch (enum_value(status_enum)) {
    case AF_OK: return "AF_OK";
    case AF_ERR_INVALID_ARGUMENT: return "AF_ERR_INVALID_ARGUMENT";
    case AF_ERR_NULL_POINTER: return "AF_ERR_NULL_POINTER";
    case AF_ERR_SHAPE: return "AF_ERR_SHAPE";
    case AF_ERR_STRIDE: return "AF_ERR_STRIDE";
    case AF_ERR_DTYPE: return "AF_ERR_DTYPE";
    case AF_ERR_DEVICE: return "AF_ERR_DEVICE";
    case AF_ERR_SEQLENS: return "AF_ERR_SEQLENS";
    case AF_ERR_OVERFLOW: return "AF_ERR_OVERFLOW";
    case AF_ERR_STRUCT_SIZE: return "AF_ERR_STRUCT_SIZE";
    case AF_ERR_UNSUPPORTED: return "AF_ERR_UNSUPPORTED";
    case AF_ERR_BACKEND_UNAVAILABLE: return "AF_ERR_BACKEND_UNAVAILABLE";
    case AF_ERR_OUT_OF_MEMORY: return "AF_ERR_OUT_OF_MEMORY";
    case AF_ERR_CUDA: return "AF_ERR_CUDA";
    case AF_ERR_COMPILE: return "AF_ERR_COMPILE";
    case AF_ERR_IO: return "AF_ERR_IO";
    case AF_ERR_BUFFER_TOO_SMALL: return "AF_ERR_BUFFER_TOO_SMALL";
    case AF_ERR_INTERNAL: return "AF_ERR_INTERNAL";
  }
  return "AF_ERR_UNKNOWN_STATUS";
}

AF_API const char* af_last_error_message(void) { return af::last_error(); }

AF_API af_status af_attention_supported(const af_attention_args* args, af_backend* selected) {
  return guarded([&] {
    af::AttentionProblem problem;
    AF_RETURN_IF_ERROR(af::validate_attention_args(args, &problem));
    af::Selection selection;
    AF_RETURN_IF_ERROR(af::select_backend(problem, af_backend(args->backend), &selection));
    if (selected != nullptr) *selected = selection.backend;
    return AF_OK;
  });
}

AF_API af_status af_attention_forward(const af_attention_args* args) {
  return guarded([&] {
    af::AttentionProblem problem;
    AF_RETURN_IF_ERROR(af::validate_attention_args(args, &problem));
    af::Selection selection;
    AF_RETURN_IF_ERROR(af::select_backend(problem, af_backend(args->backend), &selection));
    // No query row: out and softmax_lse have no element to write. Returning here keeps the
    // cost independent of the batch size (a (2^40, 0, H, D) call used to walk every sequence).
    if (problem.total_q == 0) return AF_OK;
    if (selection.backend == AF_BACKEND_CPU) return af::cpu::attention_forward(problem);
    af::cuda::Plan plan;
    AF_RETURN_IF_ERROR(af::cuda::make_plan(problem, selection.cuda, &plan));
    return af::cuda::run(plan, problem, nullptr, 0);
  });
}

AF_API af_status af_attention_plan_create(const af_attention_args* args, af_attention_plan** plan) {
  return guarded([&] {
    if (plan == nullptr) return af::fail(AF_ERR_NULL_POINTER, "plan is NULL");
    *plan = nullptr;
    auto made = std::make_unique<af_attention_plan>();
    AF_RETURN_IF_ERROR(af::validate_attention_args(args, &made->shapes, af::ValidateMode::kShapes));
    af::Selection selection;
    made->requested = af_backend(args->backend);
    AF_RETURN_IF_ERROR(af::select_backend(made->shapes, made->requested, &selection));
    made->backend = selection.backend;
    if (selection.backend == AF_BACKEND_CUDA)
      AF_RETURN_IF_ERROR(af::cuda::make_plan(made->shapes, selection.cuda, &made->cuda));
    *plan = made.release();
    return AF_OK;
  });
}

AF_API af_status af_attention_plan_workspace_size(const af_attention_plan* plan, size_t* bytes) {
  return guarded([&] {
    if (plan == nullptr) return af::fail(AF_ERR_NULL_POINTER, "plan is NULL");
    if (bytes == nullptr) return af::fail(AF_ERR_NULL_POINTER, "bytes is NULL");
    *bytes = plan->backend == AF_BACKEND_CUDA ? plan->cuda.workspace_bytes : 0;
    return AF_OK;
  });
}

AF_API af_status af_attention_plan_describe(const af_attention_plan* plan, char* buffer, size_t capacity,
                                            size_t* needed) {
  return guarded([&] {
    if (plan == nullptr) return af::fail(AF_ERR_NULL_POINTER, "plan is NULL");
    const std::string text = plan->backend == AF_BACKEND_CUDA ? "cuda " + af::cuda::describe(plan->cuda) : "cpu";
    return copy_text(text, buffer, capacity, needed);
  });
}

AF_API af_status af_attention_run(const af_attention_plan* plan, const af_attention_args* args, void* workspace,
                                  size_t workspace_bytes) {
  return guarded([&] {
    if (plan == nullptr) return af::fail(AF_ERR_NULL_POINTER, "plan is NULL");
    af::AttentionProblem problem;
    AF_RETURN_IF_ERROR(af::validate_attention_args(args, &problem));
    if (af_backend(args->backend) != plan->requested)
      return af::fail(AF_ERR_INVALID_ARGUMENT, "args->backend is %d but the plan was made for %d", int(args->backend),
                      int(plan->requested));
    AF_RETURN_IF_ERROR(af::check_same_shapes(plan->shapes, problem));
    if (problem.total_q == 0) return AF_OK;
    if (plan->backend == AF_BACKEND_CPU) return af::cpu::attention_forward(problem);
    return af::cuda::run(plan->cuda, problem, workspace, workspace_bytes);
  });
}

AF_API void af_attention_plan_destroy(af_attention_plan* plan) { delete plan; }

AF_API af_status af_backend_available(af_backend backend_enum) {
  return guarded([&] {
    const int32_t backend = enum_value(backend_enum);
    switch (backend) {
      case AF_BACKEND_CPU: return AF_OK;
      case AF_BACKEND_CUDA: return af::cuda::available();
      case AF_BACKEND_AUTO: return AF_OK;
    }
    return af::fail(AF_ERR_INVALID_ARGUMENT, "backend %d is not an af_backend value (0 auto, 1 cpu, 2 cuda)",
                    int(backend));
  });
}

AF_API af_status af_runtime_report(char* buffer, size_t capacity, size_t* needed) {
  return guarded([&] {
    std::string json = "{\"version\":" + af::json_quote(AF_VERSION_STRING) +
                       ",\"abi_version\":" + std::to_string(AF_ABI_VERSION) +
                       ",\"build\":" + af::json_quote(af_build_info()) +
                       ",\"backends\":{\"cpu\":{\"available\":true,\"threads\":" + std::to_string(af::num_threads()) +
                       "},\"cuda\":" + af::cuda::report_json() + "}";
    const std::string refusal = af::cuda::cache_refusal();
    json += ",\"kernel_cache\":{\"directory\":" + af::json_quote(af::cuda::cache_directory()) +
            ",\"usable\":" + (refusal.empty() ? "true" : "false") +
            (refusal.empty() ? std::string() : ",\"reason\":" + af::json_quote(refusal)) + "}}";
    return copy_text(json, buffer, capacity, needed);
  });
}

AF_API af_status af_set_num_threads(int32_t n) {
  return guarded([&] {
    if (n > af::kMaxThreads)
      return af::fail(AF_ERR_INVALID_ARGUMENT, "n = %d is more than the %d threads the CPU backend runs", int(n),
                      af::kMaxThreads);
    af::set_num_threads(n);
    return AF_OK;
  });
}

AF_API int32_t af_get_num_threads(void) { return af::num_threads(); }

AF_API af_status af_set_nvrtc_search_path(const char* directories) {
  return guarded([&] {
    if (directories == nullptr) return af::fail(AF_ERR_NULL_POINTER, "directories is NULL");
    af::cuda::set_nvrtc_search_path(directories);
    return AF_OK;
  });
}

AF_API af_status af_warmup(const char* const* archs, int32_t n_archs, af_progress_callback progress, void* user_data) {
  return guarded([&] {
    if (n_archs < 0) return af::fail(AF_ERR_INVALID_ARGUMENT, "n_archs is %d", n_archs);
    if (n_archs > 0 && archs == nullptr) return af::fail(AF_ERR_NULL_POINTER, "archs is NULL with n_archs %d", n_archs);
    // Warmup exists to fill the cache: a cache that cannot hold the kernels is a failure.
    AF_RETURN_IF_ERROR(af::cuda::cache_check_writable());
    const uint64_t failures_before = af::cuda::cache_store_failures(nullptr);
    AF_RETURN_IF_ERROR(af::cuda::warmup(archs, n_archs, progress, user_data));
    std::string last;
    const uint64_t failed = af::cuda::cache_store_failures(&last) - failures_before;
    if (failed > 0)
      return af::fail(AF_ERR_IO, "warmup compiled the kernels but could not store %llu of them: %s",
                      (unsigned long long)failed, last.c_str());
    return AF_OK;
  });
}

AF_API af_status af_cache_dir(char* buffer, size_t capacity, size_t* needed) {
  return guarded([&] { return copy_text(af::cuda::cache_directory(), buffer, capacity, needed); });
}

AF_API af_status af_cache_list(char* buffer, size_t capacity, size_t* needed) {
  return guarded([&] {
    std::string json;
    AF_RETURN_IF_ERROR(af::cuda::cache_list(&json));
    return copy_text(json, buffer, capacity, needed);
  });
}

AF_API af_status af_cache_clear(void) {
  return guarded([&] { return af::cuda::cache_remove_all(); });
}

}  // extern "C"
