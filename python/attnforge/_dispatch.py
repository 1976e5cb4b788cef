"""The one path of every forward call, for torch tensors and numpy arrays alike: attnforge's kernel;
when it cannot take the call, the library's validator checks the call (so the fallback refuses what
the kernel refuses) and torch runs it, the reason logged once.

torch-free at import, so numpy-only installs use it; torch is imported only to fall back.
"""
import collections
import sys
import threading
from typing import Optional, Tuple

from . import _native
from ._native import INDEX_FIELDS, AttentionOptions, AttnforgeError, CALLER_ERRORS, Status

__all__ = ["AttentionOptions", "PlanCache", "S_DMASK_BLOCK_N", "empty_like_contiguous", "forward", "func_key",
           "has_plan", "int32_indices", "lse_shape", "native_forward", "outputs", "plan_key", "planned_forward",
           "plans", "remember", "tensor_signature"]

_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# Key-block width of the S_dmask encoding (return_attn_probs with dropout; flash_attn_interface's
# _get_block_size_n reports it); it divides 128, the multiple FlashAttention rounds S_dmask's sides to.
S_DMASK_BLOCK_N = 128


def lse_shape(q, varlen: bool) -> Tuple[int, ...]:
    """softmax_lse's shape (FlashAttention's): (B, H, Sq) for q (B, Sq, H, D); (H, total_q) for varlen
    q (total_q, H, D). The one place it is computed."""
    return (q.shape[-2], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def _is_numpy(x) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def _int64_as_int32(name: str, x):
    """x (int64, torch or numpy) as int32; host values outside int32 raise AF_ERR_INVALID_ARGUMENT.
    Device tensors are converted unread (reading them would synchronise)."""
    if _is_numpy(x):
        if x.size and (int(x.min()) < _INT32_MIN or int(x.max()) > _INT32_MAX):
            raise AttnforgeError(Status.AF_ERR_INVALID_ARGUMENT, "%s holds values outside int32" % name)
        return x.astype("int32")
    import torch

    if x.device.type == "cpu" and x.numel() and (int(x.min()) < _INT32_MIN or int(x.max()) > _INT32_MAX):
        raise AttnforgeError(Status.AF_ERR_INVALID_ARGUMENT, "%s holds values outside int32" % name)
    return x.to(torch.int32)


def _is_int64(x) -> bool:
    return str(x.dtype) in ("torch.int64", "int64")


def int32_indices(options: AttentionOptions) -> AttentionOptions:
    """options with int64 index tensors (what torch.cumsum and numpy's default integers give) as int32,
    the C ABI's index type, so that the kernel takes them. FlashAttention accepts int32 only."""
    changed = None
    for name in INDEX_FIELDS:
        x = getattr(options, name)
        if x is not None and _is_int64(x):
            changed = changed or {}
            changed[name] = _int64_as_int32(name, x)
    return options._replace(**changed) if changed else options


class PlanCache:
    """The last `capacity` af_attention_plans, keyed by call signature (plan_key), least recently used
    first out. A plan holds the kernel choice (family, tile, splits, module) for one signature, so a
    call that hits skips the selector; af_attention_run still validates the call and refuses one whose
    shapes differ from its plan's (never a wrong answer if a key missed a field)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._plans = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def put(self, key, plan) -> None:
        with self._lock:
            self._plans[key] = plan
            if len(self._plans) > self.capacity:
                self._plans.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


plans = PlanCache()


def plan_key(q, k, v, has_lse: bool, o: AttentionOptions):
    """What an af_attention_plan depends on, for torch CUDA tensors: shapes (varlen: the batch from
    cu_seqlens_q), strides, dtypes and devices of q, k and v, 16-byte alignment of the data, which optional tensors are
    given, the masking flags and scalars, num_splits (af_attention_run compares the same fields; the
    cached PreparedCall keeps the scalars and the index tensors' shapes and strides). out is not
    part of it: attnforge allocates it (contiguous in q's shape, aligned by torch's allocator)."""
    aligned = (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15 == 0
    return (q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), q.dtype, k.dtype, v.dtype, q.device,
            k.device, v.device, aligned, has_lse, o.max_seqlen_q, o.max_seqlen_k, bool(o.causal), o.window_size,
            o.softcap, o.softmax_scale, o.num_splits,
            _layout(o.cu_seqlens_q), _layout(o.cu_seqlens_k), _layout(o.seqused_k), _layout(o.leftpad_k),
            _layout(o.kv_batch_idx), _layout(o.alibi_slopes), _layout(o.block_table))


def _layout(x):
    """An optional tensor's part of a plan key: what its descriptor holds besides the data pointer."""
    return None if x is None else (x.shape, x.stride(), x.dtype, x.device)


def tensor_signature(q, k, v):
    """What a cached plan fixes of q, k and v when they are torch CUDA tensors (not subclasses, so not
    torch.compile's fake tensors), not traced, with unit last strides, so that a call runs them as they
    are: shapes, strides, dtypes, devices and 16-byte alignment. None otherwise (the call takes the
    full path; callers also rule out autograd). The tensors part of the shortcut keys."""
    torch = sys.modules["torch"]
    if not (type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor and q.is_cuda):
        return None
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if compiling is not None and compiling():  # traced: data pointers do not exist (the custom op runs it)
        return None
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        return None
    aligned = (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15 == 0
    return (q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), q.dtype, k.dtype, v.dtype, q.device,
            k.device, v.device, aligned)


def func_key(q, k, v, softmax_scale, causal, window_size, softcap):
    """The plan-cache key of a flash_attn_func call without dropout, ALiBi or LSE, built from its own
    arguments (no AttentionOptions, no plan_key): tensor_signature and the scalars; None where
    tensor_signature is."""
    tensors = tensor_signature(q, k, v)
    return None if tensors is None else ("flash_attn_func", tensors, softmax_scale, causal, tuple(window_size),
                                         softcap)


def planned_forward(key, q, k, v, out=None, options: AttentionOptions = _native.DEFAULT_OPTIONS):
    """out of a call whose signature `key` (func_key, or a caller's key filed with remember) has a cached
    plan, run through it with these tensors' data (out: a fresh contiguous tensor like q when None); None
    when no plan is cached under key or the kernel declined at run time (the full path then runs the call
    and falls back as it does). Raises AttnforgeError for invalid arguments, as af_attention_run does."""
    call = plans.get(key)
    if call is None:
        return None
    if out is None:
        out = empty_like_contiguous(q)
    try:
        call.run(q, k, v, out, None, options)
    except AttnforgeError as e:
        if e.status in CALLER_ERRORS:
            raise
        return None
    except _native._DeviceMemory:
        return None
    return out


def remember(key, q, k, v, options: AttentionOptions) -> None:
    """After a call without LSE ran through the full path: files the plan it made (if the kernel ran q, k
    and v as given, with these options) under `key` too, so that the next call with that signature takes
    planned_forward. A key only ever names a plan made for the same shapes, strides, dtypes and scalars."""
    call = plans.get(plan_key(q, k, v, False, options))
    if call is not None:
        plans.put(key, call)


def empty_like_contiguous(x):
    """A fresh contiguous torch tensor of x's shape, dtype and device (empty_like when x is contiguous:
    it skips parsing a shape, ~1 us less per call than torch.empty)."""
    return sys.modules["torch"].empty_like(x) if x.is_contiguous() else x.new_empty(x.shape)


def has_plan(q, k, v, has_lse: bool, options: AttentionOptions) -> bool:
    """Whether a plan exists for this call's signature on a GPU. Making it validated the call as far as
    a GPU call is validated (shapes, strides, dtypes, scalars: index arrays in device memory are never
    read), so a call with the same signature needs no second validation."""
    if not (getattr(q, "is_cuda", False) and _native._is_torch_tensor(q)):
        return False
    return plans.get(plan_key(q, k, v, has_lse, options)) is not None


def _run_planned(q, k, v, out, lse, options) -> None:
    key = plan_key(q, k, v, lse is not None, options)
    call = plans.get(key)
    if call is None:
        call = _native.Plan(q, k, v, out, lse, options).prepare(q, k, v, out, lse, options)
        plans.put(key, call)
    call.run(q, k, v, out, lse, options)


def native_forward(q, k, v, out, lse, options: AttentionOptions) -> Optional[str]:
    """Runs attnforge's kernel: None when it ran, else why it could not (the call may still be invalid:
    forward() validates before falling back). Raises AttnforgeError for statuses that only invalid
    arguments produce. CUDA tensors run through a cached plan; host calls through
    af_attention_forward (the CPU backend has nothing to plan)."""
    try:
        if getattr(q, "is_cuda", False) and _native._is_torch_tensor(q):
            _run_planned(q, k, v, out, lse, options)
        else:
            _native.attention_forward(q, k, v, out, lse, options)
        return None
    except AttnforgeError as e:
        if e.status in CALLER_ERRORS:
            raise
        return str(e)
    except _native._DeviceMemory as e:
        return str(e)
    except ImportError as e:
        return "libattnforge is not loadable (%s)" % e


def outputs(q, varlen: bool, need_lse: bool):
    """Fresh out (like q) and softmax_lse (float32, lse_shape; None without need_lse)."""
    if _is_numpy(q):
        import numpy as np

        return np.empty(q.shape, dtype=q.dtype), (np.empty(lse_shape(q, varlen), dtype=np.float32)
                                                  if need_lse else None)
    torch = sys.modules["torch"]
    return empty_like_contiguous(q), (torch.empty(lse_shape(q, varlen), dtype=torch.float32, device=q.device)
                                      if need_lse else None)


def _needs_padding(q, k, v, options: AttentionOptions) -> bool:
    """Whether a GPU call can reach the kernel only through FlashAttention-2's padding: fp16/bf16 CUDA
    tensors whose head dim or batch/row/head strides are not multiples of 8 elements, or whose data is
    not 16-byte aligned (the kernels move 16-byte vectors). A paged pool (num_blocks, page_size, Hk, D) is
    padded whole, as FlashAttention-2's mha_fwd_kvcache pads its caches; appends have already been written
    to the caller's cache by then, so nothing is copied back."""
    if not (hasattr(q, "is_cuda") and q.is_cuda):
        return False
    if str(q.dtype) not in ("torch.float16", "torch.bfloat16"):
        return False
    for x in (q, k, v):
        if x.data_ptr() % 16 or any(stride % 8 for stride in x.stride()[:-1]):
            return True
    return q.shape[-1] % 8 != 0


def _padded_forward(q, k, v, options: AttentionOptions, need_lse: bool):
    """FlashAttention-2's treatment of head dims that are not multiples of 8 (flash_api.cpp pads them):
    q, k and v are copied with the head dim zero-padded to the next multiple of 8 (fresh, aligned
    tensors), the kernel runs with the original softmax scale, and out is the padded output's view of
    the first head_dim columns. Zero columns change no dot product and produce zero outputs."""
    import math

    head_dim = q.shape[-1]
    padded = head_dim + (-head_dim) % 8

    def copy(x):
        y = x.new_zeros(tuple(x.shape[:-1]) + (padded,))
        y[..., :head_dim] = x
        return y
    q, k, v = copy(q), copy(k), copy(v)
    if options.softmax_scale is None:
        options = options._replace(softmax_scale=1.0 / math.sqrt(head_dim))
    out, lse = forward(q, k, v, options, need_lse)
    return out[..., :head_dim], lse


def forward(q, k, v, options: AttentionOptions, need_lse: bool = True, return_s_dmask: bool = False):
    """FlashAttention's forward for torch tensors or numpy arrays (answered in kind).

    q (B, Sq, H, D), k/v (B, Sk, Hk, D); varlen (options.cu_seqlens_q given) q (total_q, H, D),
    k/v (total_k, Hk, D) or paged (num_blocks, page_size, Hk, D). Returns (out like q, softmax_lse
    float32 lse_shape(q, varlen), natural log; None when not need_lse), and with return_s_dmask a third
    element: S_dmask (fallback.attention's; None when the kernel ran). The kernel runs when it takes
    the call; otherwise (dtype or device without a kernel, backend unavailable, library missing,
    dropout_p > 0) the call is validated by the library as the kernel would validate it and run by
    torch (fallback.attention). Raises AttnforgeError (a RuntimeError) naming the argument for invalid
    calls on either path.
    """
    options = int32_indices(options)
    out, lse = outputs(q, options.cu_seqlens_q is not None, need_lse)
    if options.dropout_p > 0:
        reason = "dropout_p > 0 needs torch's RNG; attnforge's kernels have none"
    else:
        reason = native_forward(q, k, v, out, lse, options)
        if reason is None:
            return (out, lse, None) if return_s_dmask else (out, lse)
        # Checked only once the kernel declined: the hot path pays nothing for it.
        if _needs_padding(q, k, v, options):
            out, lse = _padded_forward(q, k, v, options, need_lse)
            return (out, lse, None) if return_s_dmask else (out, lse)
    return _fallback(q, k, v, out, options, need_lse, reason, return_s_dmask)


def _fallback(q, k, v, out, options, need_lse, reason, return_s_dmask):
    try:
        _native.validate(q, k, v, out, options)
    except ImportError:
        pass  # without the library there is no validator: torch's own checks only
    try:
        import torch
    except ImportError:
        raise RuntimeError("attnforge: the kernel cannot run this call (%s) and torch, the fallback, is not "
                           "installed" % reason) from None
    from . import fallback

    numpy_call = _is_numpy(q)
    if numpy_call:
        q, k, v = torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v)
        options = options._replace(**{name: torch.from_numpy(getattr(options, name))
                                      for name in INDEX_FIELDS + ("alibi_slopes",)
                                      if getattr(options, name) is not None})
    result = fallback.attention(q, k, v, options, need_lse=need_lse, return_s_dmask=return_s_dmask)
    path = result[2]
    fallback.log_once(("forward", path, reason), "attnforge kernel not used (%s); ran torch %s instead" %
                      (reason, path))
    if numpy_call:
        result = tuple(x.numpy() if x is not None else None for x in result[:2] + result[3:])
    else:
        result = result[:2] + result[3:]
    return result
