#include "api/select.h"

#include "common/error.h"
#include "cpu/cpu_attention.h"

namespace af {

af_status select_backend(const AttentionProblem& p, af_backend requested, Selection* selected) {
  const bool on_gpu = p.device_type == AF_DEVICE_CUDA;
  switch (requested) {
    case AF_BACKEND_CPU:
      if (on_gpu) return fail(AF_ERR_DEVICE, "backend 'cpu' was requested but the tensors are in CUDA memory");
      AF_RETURN_IF_ERROR(cpu::supports(p));
      selected->backend = AF_BACKEND_CPU;
      return AF_OK;
    case AF_BACKEND_CUDA:
      if (!on_gpu) return fail(AF_ERR_DEVICE, "backend 'cuda' was requested but the tensors are in host memory");
      AF_RETURN_IF_ERROR(cuda::choose(p, &selected->cuda));
      selected->backend = AF_BACKEND_CUDA;
      return AF_OK;
    case AF_BACKEND_AUTO:
      // Data stays where it is: GPU tensors run on the GPU or not here at all
      // (the Python layer then falls back to torch), host tensors on the CPU.
      return select_backend(p, on_gpu ? AF_BACKEND_CUDA : AF_BACKEND_CPU, selected);
  }
  return fail(AF_ERR_INVALID_ARGUMENT, "backend %d is not an af_backend value (0 auto, 1 cpu, 2 cuda)", int(requested));
}

}  // namespace af
