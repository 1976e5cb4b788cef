"""Low-level ctypes binding to libattnforge.so (the C ABI in include/attnforge/attnforge.h).

Tensors cross zero-copy: a torch tensor, a numpy array or any object with
``__dlpack__`` is described by its data pointer, dtype, device, shape and
strides (in elements); nothing is copied or converted here.
"""

import ctypes
import enum
import glob
import json
import os
import struct
import sys
import threading
from typing import NamedTuple, Optional, Tuple

__all__ = [
    "AttentionOptions",
    "AttnforgeError",
    "CALLER_ERRORS",
    "Plan",
    "Status",
    "attention_forward",
    "attention_supported",
    "backend_available",
    "library",
    "library_path",
    "runtime_report",
    "set_num_threads",
    "get_num_threads",
    "validate",
    "version",
]

_MAX_RANK = 6

# af_dtype, af_device_type and af_backend values (pinned in the header).
DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_INT32, DTYPE_FLOAT64 = 0, 1, 2, 3, 4
DEVICE_CPU, DEVICE_CUDA = 1, 2
BACKENDS = {"auto": 0, "cpu": 1, "cuda": 2}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}


class Status(enum.IntEnum):
    """af_status, with the header's names and pinned values."""

    AF_OK = 0
    AF_ERR_INVALID_ARGUMENT = 1
    AF_ERR_NULL_POINTER = 2
    AF_ERR_SHAPE = 3
    AF_ERR_STRIDE = 4
    AF_ERR_DTYPE = 5
    AF_ERR_DEVICE = 6
    AF_ERR_SEQLENS = 7
    AF_ERR_OVERFLOW = 8
    AF_ERR_STRUCT_SIZE = 9
    AF_ERR_UNSUPPORTED = 10
    AF_ERR_BACKEND_UNAVAILABLE = 11
    AF_ERR_OUT_OF_MEMORY = 12
    AF_ERR_CUDA = 13
    AF_ERR_COMPILE = 14
    AF_ERR_IO = 15
    AF_ERR_BUFFER_TOO_SMALL = 16
    AF_ERR_INTERNAL = 17

    @classmethod
    def _missing_(cls, value):
        # A status a newer library appended (values are only ever appended): kept, named by its value.
        if not isinstance(value, int):
            return None
        member = int.__new__(cls, value)
        member._name_ = "AF_STATUS_%d" % value
        member._value_ = value
        return member


# Statuses that only argument validation returns and that always mean the caller's arguments are
# wrong: raised, as FlashAttention raises. AF_ERR_DTYPE and AF_ERR_DEVICE also name calls that
# another backend (torch) can run (float64, a device without a kernel), so they are decided by
# validate() below; every other status (unsupported, unavailable, CUDA, compile) falls back.
CALLER_ERRORS = frozenset({Status.AF_ERR_INVALID_ARGUMENT, Status.AF_ERR_NULL_POINTER, Status.AF_ERR_SHAPE,
                           Status.AF_ERR_STRIDE, Status.AF_ERR_SEQLENS, Status.AF_ERR_OVERFLOW,
                           Status.AF_ERR_STRUCT_SIZE})


class AttnforgeError(RuntimeError):
    """A non-OK af_status with its detailed message: ``status`` (a Status), ``message``.

    A RuntimeError, as FlashAttention's argument checks (TORCH_CHECK) raise RuntimeError.
    """

    def __init__(self, status, message):
        self.status = Status(status)
        self.status_name = self.status.name
        self.message = message
        super().__init__("%s: %s" % (self.status_name, message))


class AttentionOptions(NamedTuple):
    """Everything of one attention call but q, k, v and the outputs: af_attention_args' fields, with
    FlashAttention's names, defaults and units. Built once per call by the public API and passed
    unchanged down to the native call (or the torch fallback).

    Index tensors are int32 (int64 is accepted by the public API and converted to int32 there):
    cu_seqlens_q/k (B + 1) varlen offsets; seqused_k, leftpad_k, kv_batch_idx (B); block_table
    (B, max_blocks). alibi_slopes float32 (H) or (B, H). max_seqlen_* in rows (varlen only).
    softmax_scale None means 1/sqrt(head_dim); softcap 0 disables it; window_size (left, right)
    in rows, inclusive, -1 unbounded; causal aligns bottom-right. dropout_p > 0 runs only in torch.
    num_splits (FlashAttention's): 0 lets the kernel choose how many parts the keys are split into,
    1 never splits, N forces N (CUDA only; ignored by the fallback). deterministic (FlashAttention's)
    makes the backward pass reproducible bit for bit; the forward is deterministic either way, so
    the kernel and plan keys ignore it.
    """

    cu_seqlens_q: Optional[object] = None
    cu_seqlens_k: Optional[object] = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    seqused_k: Optional[object] = None
    leftpad_k: Optional[object] = None
    block_table: Optional[object] = None
    kv_batch_idx: Optional[object] = None
    alibi_slopes: Optional[object] = None
    softmax_scale: Optional[float] = None
    softcap: float = 0.0
    causal: bool = False
    window_size: Tuple[int, int] = (-1, -1)
    dropout_p: float = 0.0
    num_splits: int = 0
    deterministic: bool = False


DEFAULT_OPTIONS = AttentionOptions()
# The index-tensor fields of AttentionOptions (int32 in the C ABI).
INDEX_FIELDS = ("cu_seqlens_q", "cu_seqlens_k", "seqused_k", "leftpad_k", "block_table", "kv_batch_idx")


class _Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("device_type", ctypes.c_int32),
        ("device_index", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("shape", ctypes.c_int64 * _MAX_RANK),
        ("strides", ctypes.c_int64 * _MAX_RANK),
    ]


# af_tensor packed in one call into a per-thread buffer (building ctypes objects costs ~4 us per
# tensor, a noticeable share of a decode step); the layout is checked against _Tensor at import.
_TENSOR_PACK = struct.Struct("=Qiiii%dq%dq" % (_MAX_RANK, _MAX_RANK))
assert ctypes.sizeof(ctypes.c_void_p) == 8 and _TENSOR_PACK.size == ctypes.sizeof(_Tensor)
assert _Tensor.shape.offset == 24 and _Tensor.strides.offset == 24 + 8 * _MAX_RANK
_ZEROS = (0,) * _MAX_RANK


class _AttentionArgs(ctypes.Structure):
    # Tensor fields are af_tensor pointers (addresses in the caller thread's descriptor buffer).
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("softmax_lse", ctypes.c_void_p),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("max_seqlen_q", ctypes.c_int64),
        ("max_seqlen_k", ctypes.c_int64),
        ("seqused_k", ctypes.c_void_p),
        ("leftpad_k", ctypes.c_void_p),
        ("block_table", ctypes.c_void_p),
        ("kv_batch_idx", ctypes.c_void_p),
        ("alibi_slopes", ctypes.c_void_p),
        ("softmax_scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("causal", ctypes.c_int32),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
        ("backend", ctypes.c_int32),
        ("cuda_stream", ctypes.c_void_p),
        ("num_splits", ctypes.c_int32),  # version 2
    ]


_ARGS_SIZE = ctypes.sizeof(_AttentionArgs)

# af_kvcache_append_args: struct_size, the tensor fields in the header's order, the flags, the stream.
_APPEND_TENSORS = ("k_cache", "v_cache", "k", "v", "cache_seqlens", "cache_batch_idx", "block_table", "rotary_cos",
                   "rotary_sin", "q", "q_out", "seqused_out")


class _AppendArgs(ctypes.Structure):
    _fields_ = ([("struct_size", ctypes.c_uint32)] + [(name, ctypes.c_void_p) for name in _APPEND_TENSORS] +
                [("rotary_interleaved", ctypes.c_int32), ("q_positions_per_row", ctypes.c_int32),
                 ("cuda_stream", ctypes.c_void_p)])

_PROGRESS_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_char_p)


def _candidate_paths():
    env = os.environ.get("ATTNFORGE_LIBRARY")
    if env:
        yield env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "_lib", "libattnforge.so")
    # Development: the source checkout's own build tree (README's `cmake -B build`). Other trees (a
    # sanitizer build, a device build) are used only through ATTNFORGE_LIBRARY: an ASan library picked
    # up by a plain Python process cannot even load.
    yield os.path.join(os.path.dirname(os.path.dirname(here)), "build", "libattnforge.so")


def _nvrtc_dirs():
    """Absolute directories of the NVRTC that pip's nvidia wheels (torch's CUDA runtime) bring.

    Only absolute sys.path entries count: the empty entry (the working directory of `python -c` or
    an interactive session) and relative ones would make whatever library sits in the working
    directory the NVRTC that compiles and runs kernels.
    """
    dirs = []
    for entry in sys.path:
        if not entry or not os.path.isabs(entry):
            continue
        base = os.path.join(entry, "nvidia")
        if not os.path.isdir(base):
            continue
        for sub in ("cu13/lib", "cuda_nvrtc/lib", "cu12/lib"):
            d = os.path.join(base, sub)
            if glob.glob(os.path.join(d, "libnvrtc.so*")):
                dirs.append(d)
    return dirs


_library = None
_library_path = None


def _declare(lib):
    c = ctypes
    lib.af_version_string.restype = c.c_char_p
    lib.af_version_number.restype = c.c_int
    lib.af_abi_version.restype = c.c_int
    lib.af_build_info.restype = c.c_char_p
    lib.af_status_string.restype = c.c_char_p
    lib.af_status_string.argtypes = [c.c_int]
    lib.af_last_error_message.restype = c.c_char_p
    lib.af_attention_forward.restype = c.c_int
    lib.af_attention_forward.argtypes = [c.POINTER(_AttentionArgs)]
    lib.af_attention_supported.restype = c.c_int
    lib.af_attention_supported.argtypes = [c.POINTER(_AttentionArgs), c.POINTER(c.c_int)]
    lib.af_backend_available.restype = c.c_int
    lib.af_backend_available.argtypes = [c.c_int]
    for name in ("af_runtime_report", "af_cache_dir", "af_cache_list"):
        fn = getattr(lib, name)
        fn.restype = c.c_int
        fn.argtypes = [c.c_char_p, c.c_size_t, c.POINTER(c.c_size_t)]
    lib.af_set_num_threads.restype = c.c_int
    lib.af_set_num_threads.argtypes = [c.c_int32]
    lib.af_get_num_threads.restype = c.c_int32
    lib.af_set_nvrtc_search_path.restype = c.c_int
    lib.af_set_nvrtc_search_path.argtypes = [c.c_char_p]
    lib.af_warmup.restype = c.c_int
    lib.af_warmup.argtypes = [c.POINTER(c.c_char_p), c.c_int32, _PROGRESS_CALLBACK, c.c_void_p]
    lib.af_cache_clear.restype = c.c_int
    if not hasattr(lib, "af_attention_plan_create"):  # a library from before plan/run: forward only
        return
    lib.af_attention_plan_create.restype = c.c_int
    lib.af_attention_plan_create.argtypes = [c.POINTER(_AttentionArgs), c.POINTER(c.c_void_p)]
    lib.af_attention_plan_workspace_size.restype = c.c_int
    lib.af_attention_plan_workspace_size.argtypes = [c.c_void_p, c.POINTER(c.c_size_t)]
    lib.af_attention_plan_describe.restype = c.c_int
    lib.af_attention_plan_describe.argtypes = [c.c_void_p, c.c_char_p, c.c_size_t, c.POINTER(c.c_size_t)]
    lib.af_attention_run.restype = c.c_int
    lib.af_attention_run.argtypes = [c.c_void_p, c.POINTER(_AttentionArgs), c.c_void_p, c.c_size_t]
    lib.af_attention_plan_destroy.restype = None
    lib.af_attention_plan_destroy.argtypes = [c.c_void_p]
    if hasattr(lib, "af_kvcache_append"):  # absent from libraries older than the kvcache family
        lib.af_kvcache_append.restype = c.c_int
        lib.af_kvcache_append.argtypes = [c.POINTER(_AppendArgs)]


def _lib():
    global _library, _library_path
    if _library is not None:
        return _library
    tried = []
    for path in _candidate_paths():
        if not os.path.isfile(path):
            tried.append("%s (absent)" % path)
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append("%s (%s)" % (path, e))
            continue
        _declare(lib)
        nvrtc = _nvrtc_dirs()
        if nvrtc:
            lib.af_set_nvrtc_search_path(":".join(nvrtc).encode())
        _library, _library_path = lib, path
        return lib
    raise ImportError("attnforge: cannot load libattnforge.so; tried: " + "; ".join(tried))


library = _lib


def library_path():
    _lib()
    return _library_path


def version():
    return _lib().af_version_string().decode()


def _check(status):
    if status != Status.AF_OK:
        raise AttnforgeError(status, _lib().af_last_error_message().decode(errors="replace"))


def _text(fn):
    needed = ctypes.c_size_t(0)
    size = 4096
    while True:
        buffer = ctypes.create_string_buffer(size)
        status = fn(buffer, size, ctypes.byref(needed))
        if status == Status.AF_ERR_BUFFER_TOO_SMALL and needed.value > size:
            size = needed.value
            continue
        _check(status)
        return buffer.value.decode(errors="replace")


def runtime_report():
    """The library's JSON report (version, build, backends and their probing steps) as a dict."""
    return json.loads(_text(_lib().af_runtime_report))


def backend_available(backend):
    """(True, "") if the backend can run here, else (False, reason)."""
    lib = _lib()
    status = lib.af_backend_available(BACKENDS[backend])
    return status == Status.AF_OK, ("" if status == Status.AF_OK else lib.af_last_error_message().decode())


def set_num_threads(n):
    _check(_lib().af_set_num_threads(int(n)))


def get_num_threads():
    return int(_lib().af_get_num_threads())


def cache_dir():
    return _text(_lib().af_cache_dir)


def cache_list():
    return json.loads(_text(_lib().af_cache_list))


def cache_clear():
    _check(_lib().af_cache_clear())


def warmup(archs=None, progress=None):
    """Compile the common kernel variants for archs (e.g. ["sm_80", "sm_90a"]; None: this machine's GPUs)."""
    archs = list(archs or [])
    array = (ctypes.c_char_p * max(len(archs), 1))(*[a.encode() for a in archs])
    callback = _PROGRESS_CALLBACK(
        lambda _user, done, total, item: progress(done, total, item.decode()) if progress else None)
    _check(_lib().af_warmup(array, len(archs), callback, None))


# ---- tensor descriptors ------------------------------------------------------

_TORCH_DTYPES = None


def _torch_dtype_codes(torch):
    global _TORCH_DTYPES
    if _TORCH_DTYPES is None:
        _TORCH_DTYPES = {
            torch.float32: DTYPE_FLOAT32,
            torch.float16: DTYPE_FLOAT16,
            torch.bfloat16: DTYPE_BFLOAT16,
            torch.int32: DTYPE_INT32,
            torch.float64: DTYPE_FLOAT64,
        }
    return _TORCH_DTYPES


_NUMPY_DTYPES = {"float32": DTYPE_FLOAT32, "float16": DTYPE_FLOAT16, "bfloat16": DTYPE_BFLOAT16,
                 "int32": DTYPE_INT32, "float64": DTYPE_FLOAT64}


def _is_torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _contiguous_strides(shape):
    strides, step = [], 1
    for size in reversed(tuple(shape)):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


class _DeviceMemory(Exception):
    """A tensor on a device the C ABI has no code for (not cpu or cuda): the kernel cannot take the call."""


def _tensor_fields(name, x, foreign_as_device=False):
    """(data pointer, af_dtype, device type, device index, shape, strides in elements) of x, the argument
    `name`: a torch tensor, a numpy array or a __dlpack__ object, zero-copy.

    Raises AttnforgeError (AF_ERR_DTYPE, AF_ERR_STRIDE) for what no backend takes; _DeviceMemory for a
    device other than cpu and cuda, unless foreign_as_device, which describes it as CUDA-type memory
    (for validate(): the validator reads no index array there, which is also true of the fallback).
    A tensor with no elements is described with contiguous strides: it addresses no memory, and
    numpy reports zero strides for empty arrays.
    """
    if _is_torch_tensor(x):
        code = _torch_dtype_codes(sys.modules["torch"]).get(x.dtype)
        if code is None:
            raise AttnforgeError(Status.AF_ERR_DTYPE, "%s has dtype %s, which attnforge does not take" %
                                 (name, x.dtype))
        if x.is_cuda:
            device_type, device_index = DEVICE_CUDA, x.get_device()
        elif x.is_cpu:
            device_type, device_index = DEVICE_CPU, 0
        elif foreign_as_device:
            device_type, device_index = DEVICE_CUDA, max(x.get_device(), 0)
        else:
            raise _DeviceMemory("attnforge: %s is on device %s; the library runs cpu and cuda tensors" %
                                (name, x.device))
        shape, strides = x.shape, x.stride()
        if strides and strides[-1] != 1 and 0 in shape:
            strides = _contiguous_strides(shape)
        return x.data_ptr(), code, device_type, device_index, shape, strides
    np = sys.modules.get("numpy")
    if np is None or not isinstance(x, np.ndarray):
        if hasattr(x, "__dlpack__"):
            import numpy as np

            x = np.from_dlpack(x)
        else:
            raise TypeError("attnforge: %s must be a torch tensor, a numpy array or a __dlpack__ object, got %r" %
                            (name, type(x)))
    dtype = x.dtype
    code = _NUMPY_DTYPES.get(dtype.name)
    if code is None:
        raise AttnforgeError(Status.AF_ERR_DTYPE, "%s has dtype %s, which attnforge does not take" % (name, dtype))
    if not dtype.isnative:
        raise AttnforgeError(Status.AF_ERR_DTYPE, "%s is a %s array in non-native byte order (%r); convert it "
                             "with .astype(x.dtype.newbyteorder('='))" % (name, dtype.name, dtype.str))
    if x.size == 0:
        strides = _contiguous_strides(x.shape)
    else:
        if any(s % x.itemsize for s in x.strides):
            raise AttnforgeError(Status.AF_ERR_STRIDE, "%s has strides %s bytes, not multiples of its item size %d" %
                                 (name, x.strides, x.itemsize))
        strides = tuple(s // x.itemsize for s in x.strides)
    return x.__array_interface__["data"][0], code, DEVICE_CPU, 0, x.shape, strides


class _Descriptors(threading.local):
    """One af_tensor slot per tensor field of af_attention_args, then of af_kvcache_append_args, per thread."""

    def __init__(self):
        self.buffer = ctypes.create_string_buffer(_TENSOR_PACK.size * (len(_TENSOR_ARGS) + len(_APPEND_TENSORS)))
        self.address = ctypes.addressof(self.buffer)


_TENSOR_ARGS = ("q", "k", "v", "out", "softmax_lse", "cu_seqlens_q", "cu_seqlens_k", "seqused_k", "leftpad_k",
                "block_table", "kv_batch_idx", "alibi_slopes")
_descriptors = _Descriptors()


def _pack(slot, fields, name=None):
    """Writes one af_tensor (from _tensor_fields) into this thread's slot; returns its address."""
    pointer, dtype, device_type, device_index, shape, strides = fields
    rank = len(shape)
    if rank > _MAX_RANK:
        raise AttnforgeError(Status.AF_ERR_SHAPE, "%s has rank %d; at most %d" % (name or _TENSOR_ARGS[slot], rank,
                                                                                  _MAX_RANK))
    pad = _ZEROS[rank:]
    offset = slot * _TENSOR_PACK.size
    _TENSOR_PACK.pack_into(_descriptors.buffer, offset, pointer, dtype, device_type, device_index, rank,
                           *shape, *pad, *strides, *pad)
    return _descriptors.address + offset


def _stream_of(tensor, stream):
    if stream is not None:
        return int(stream)
    if _is_torch_tensor(tensor) and tensor.is_cuda:
        torch = sys.modules["torch"]
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # an int, without a Stream object
        if raw is not None:
            return raw(tensor.get_device())
        return torch.cuda.current_stream(tensor.device).cuda_stream
    return 0


def _set_scalars(args, options, backend):
    args.max_seqlen_q = int(options.max_seqlen_q or 0)
    args.max_seqlen_k = int(options.max_seqlen_k or 0)
    args.softmax_scale = 0.0 if options.softmax_scale is None else float(options.softmax_scale)
    args.softcap = float(options.softcap or 0.0)
    args.causal = 1 if options.causal else 0
    args.window_left, args.window_right = int(options.window_size[0]), int(options.window_size[1])
    args.num_splits = int(options.num_splits or 0)
    if backend not in BACKENDS:
        raise ValueError("attnforge: backend must be one of %s, got %r" % (sorted(BACKENDS), backend))
    args.backend = BACKENDS[backend]


def _build_args(q, k, v, out, softmax_lse=None, options=DEFAULT_OPTIONS, backend="auto", stream=None, **fields):
    """af_attention_args for one call; fields (AttentionOptions names) override options."""
    if fields:
        options = options._replace(**fields)
    args = _AttentionArgs()
    args.struct_size = _ARGS_SIZE
    for slot, value in enumerate(_option_tensors(q, k, v, out, softmax_lse, options)):
        if value is not None:
            setattr(args, _TENSOR_ARGS[slot], _pack(slot, _tensor_fields(_TENSOR_ARGS[slot], value)))
    _set_scalars(args, options, backend)
    args.cuda_stream = _stream_of(q, stream)
    return args


def attention_forward(q, k, v, out, softmax_lse=None, options=DEFAULT_OPTIONS, backend="auto", stream=None,
                      **fields):
    """af_attention_forward: writes out (and softmax_lse when given). Raises AttnforgeError with the
    library's status and message; _DeviceMemory for a tensor on a device the library has no code for."""
    args = _build_args(q, k, v, out, softmax_lse, options, backend, stream, **fields)
    _check(_lib().af_attention_forward(ctypes.byref(args)))


def has_kvcache_append():
    """Whether the loaded library has af_kvcache_append (the GPU rotary + cache append)."""
    return hasattr(_lib(), "af_kvcache_append")


def kvcache_append(k_cache, v_cache, cache_seqlens, k=None, v=None, cache_batch_idx=None, block_table=None,
                   rotary_cos=None, rotary_sin=None, q=None, q_out=None, seqused_out=None, rotary_interleaved=True,
                   q_positions_per_row=True, stream=None):
    """af_kvcache_append: flash_attn_with_kvcache's rotary embedding and in-place append in one GPU kernel.

    k_cache/v_cache (B_cache, S_cache, Hk, D) or paged (num_pages, page_size, Hk, D), fp16/bf16, written;
    k/v (B, S_new, Hk, D) rotated (k) and written at rows cache_seqlens[b] + t (int32 (B,));
    cache_batch_idx int32 (B,) or block_table int32 (B, max_blocks); rotary_cos/sin (seqlen_ro, rotary_dim / 2)
    in the cache's dtype; q (B, Sq, H, D) rotated into q_out at cache_seqlens[b] + t (q_positions_per_row)
    or cache_seqlens[b]; seqused_out int32 (B,) receives cache_seqlens + S_new. Semantics: FlashAttention-2's
    flash_attn_with_kvcache. Raises AttnforgeError (AF_ERR_UNSUPPORTED for host tensors)."""
    args = _AppendArgs()
    args.struct_size = ctypes.sizeof(_AppendArgs)
    values = (k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos, rotary_sin, q, q_out,
              seqused_out)
    for index, (name, value) in enumerate(zip(_APPEND_TENSORS, values)):
        if value is not None:
            setattr(args, name, _pack(len(_TENSOR_ARGS) + index, _tensor_fields(name, value), name))
    args.rotary_interleaved = 1 if rotary_interleaved else 0
    args.q_positions_per_row = 1 if q_positions_per_row else 0
    args.cuda_stream = _stream_of(k_cache, stream)
    _check(_lib().af_kvcache_append(ctypes.byref(args)))


class Plan:
    """af_attention_plan_create for one call's shapes, dtypes, devices and flags (data pointers are not
    read); run() launches calls like it without choosing the kernel again. Takes attention_forward's
    arguments; raises AttnforgeError as it does."""

    def __init__(self, q, k, v, out, softmax_lse=None, options=DEFAULT_OPTIONS, backend="auto", **fields):
        self._lib = _lib()
        handle = ctypes.c_void_p()
        args = _build_args(q, k, v, out, softmax_lse, options, backend, **fields)
        _check(self._lib.af_attention_plan_create(ctypes.byref(args), ctypes.byref(handle)))
        self._handle = handle

    def describe(self):
        """The kernel the plan runs ("cuda decode bf16 d128 sm_90a 16x64 splits=8", "cpu"); a decode plan
        whose key splits merge inside a thread-block cluster (sm_90+) ends in " cluster"."""
        return _text(lambda buffer, size, needed: self._lib.af_attention_plan_describe(self._handle, buffer, size,
                                                                                         needed))

    def workspace_size(self):
        """Bytes of device memory a caller-owned workspace needs (0: none)."""
        size = ctypes.c_size_t(0)
        _check(self._lib.af_attention_plan_workspace_size(self._handle, ctypes.byref(size)))
        return size.value

    def run(self, q, k, v, out, softmax_lse=None, options=DEFAULT_OPTIONS, backend="auto", stream=None,
            workspace=None, **fields):
        """af_attention_run: a call with the plan's shapes (else AF_ERR_INVALID_ARGUMENT naming the field).
        workspace is a device tensor of at least workspace_size() bytes (its contents need not be
        initialised), or None for attnforge's workspace of the stream."""
        args = _build_args(q, k, v, out, softmax_lse, options, backend, stream, **fields)
        pointer, size = (workspace.data_ptr(), workspace.numel() * workspace.element_size()) if workspace is not None \
            else (None, 0)
        _check(self._lib.af_attention_run(self._handle, ctypes.byref(args), pointer, size))

    def prepare(self, q, k, v, out, softmax_lse=None, options=DEFAULT_OPTIONS, backend="auto"):
        """A PreparedCall: this plan's af_attention_args built once from a call like these arguments, so
        that a call of the same signature (shapes, strides, dtypes, scalars) only rewrites data pointers."""
        return PreparedCall(self, q, k, v, out, softmax_lse, options, backend)

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            self._lib.af_attention_plan_destroy(handle)


_POINTER = struct.Struct("=Q")


class PreparedCall:
    """af_attention_run for calls that differ from the one it was built from only in their data pointers
    and stream (what the Python plan cache's key guarantees). Its own descriptor buffer and argument
    struct are built once; run() rewrites the data pointer of each tensor (q, k, v, out, softmax_lse and
    the options' index and ALiBi tensors) and the stream, then calls the library, which validates the
    call as af_attention_run always does. One call at a time (a lock)."""

    def __init__(self, plan, q, k, v, out, softmax_lse, options, backend):
        self._plan = plan
        self._run = plan._lib.af_attention_run
        self._handle = plan._handle
        self._buffer = ctypes.create_string_buffer(_TENSOR_PACK.size * len(_TENSOR_ARGS))
        base = ctypes.addressof(self._buffer)
        self._args = _AttentionArgs()
        self._args.struct_size = _ARGS_SIZE
        self._slots = []
        for slot, value in enumerate(_option_tensors(q, k, v, out, softmax_lse, options)):
            if value is not None:
                pointer, dtype, device_type, device_index, shape, strides = _tensor_fields(_TENSOR_ARGS[slot], value)
                pad = _ZEROS[len(shape):]
                _TENSOR_PACK.pack_into(self._buffer, slot * _TENSOR_PACK.size, pointer, dtype, device_type,
                                       device_index, len(shape), *shape, *pad, *strides, *pad)
                setattr(self._args, _TENSOR_ARGS[slot], base + slot * _TENSOR_PACK.size)
                self._slots.append(slot)
        _set_scalars(self._args, options, backend)
        self._args_ref = ctypes.byref(self._args)
        self._lock = threading.Lock()

    def run(self, q, k, v, out, softmax_lse=None, options=DEFAULT_OPTIONS, stream=None):
        values = _option_tensors(q, k, v, out, softmax_lse, options)
        with self._lock:
            for slot in self._slots:
                _POINTER.pack_into(self._buffer, slot * _TENSOR_PACK.size, values[slot].data_ptr())
            self._args.cuda_stream = _stream_of(q, stream)
            _check(self._run(self._handle, self._args_ref, None, 0))


def _option_tensors(q, k, v, out, softmax_lse, o):
    """The tensors of one call in _TENSOR_ARGS order."""
    return (q, k, v, out, softmax_lse, o.cu_seqlens_q, o.cu_seqlens_k, o.seqused_k, o.leftpad_k, o.block_table,
            o.kv_batch_idx, o.alibi_slopes)


def attention_supported(q, k, v, out, softmax_lse=None, options=DEFAULT_OPTIONS, backend="auto"):
    """af_attention_supported: (Status, backend name or None, message). AF_OK with the backend that
    af_attention_forward would run; otherwise the status forward would return and why."""
    args = _build_args(q, k, v, out, softmax_lse, options, backend)
    return _ask_supported(args)


def _ask_supported(args):
    selected = ctypes.c_int(0)
    lib = _lib()
    status = Status(lib.af_attention_supported(ctypes.byref(args), ctypes.byref(selected)))
    if status == Status.AF_OK:
        return status, BACKEND_NAMES.get(selected.value, "auto"), ""
    return status, None, lib.af_last_error_message().decode(errors="replace")


def validate(q, k, v, out, options=DEFAULT_OPTIONS):
    """Checks a call with the library's own validator (exactly what af_attention_forward checks) when
    the kernel will not run it, so that the torch fallback refuses what the kernel refuses. Raises
    AttnforgeError naming the argument; returns None when the call is valid.

    The call is described as the kernel would see it, except what only decides which backend runs:
    float64 q/k/v/out (torch runs them) are described as float32 and tensors on devices other than
    cpu and cuda as device memory. out is the output attnforge allocated (no lse: its shape is
    attnforge's own). Index
    arrays in host memory are checked element by element (offsets, lengths, pages); in device memory
    they are not read, by the kernel or by this check (reading them would synchronise), as in
    FlashAttention. Needs the library (ImportError otherwise).
    """
    described = [_tensor_fields(name, x, foreign_as_device=True)
                 for name, x in (("q", q), ("k", k), ("v", v), ("out", out))]
    dtypes = [d[1] for d in described]
    if dtypes[1] != dtypes[0] or dtypes[2] != dtypes[0]:
        other = "k" if dtypes[1] != dtypes[0] else "v"
        raise AttnforgeError(Status.AF_ERR_DTYPE, "%s is %s but q is %s (q, k and v must share one dtype)" % (
            other, (k if other == "k" else v).dtype, q.dtype))
    if dtypes[0] == DTYPE_FLOAT64:
        described = [(d[0], DTYPE_FLOAT32) + tuple(d[2:]) for d in described]
    args = _AttentionArgs()
    args.struct_size = _ARGS_SIZE
    device = described[0][2:4]
    tensors = list(zip(("q", "k", "v", "out"), described))
    for slot in range(5, len(_TENSOR_ARGS)):
        name = _TENSOR_ARGS[slot]
        value = getattr(options, name)
        if value is not None:
            tensors.append((name, _tensor_fields(name, value, foreign_as_device=True)))
    for name, fields in tensors:
        if tuple(fields[2:4]) != tuple(device):
            raise AttnforgeError(Status.AF_ERR_DEVICE, "%s is on device (%d, %d) but q is on device (%d, %d)" % (
                (name,) + tuple(fields[2:4]) + tuple(device)))
        setattr(args, name, _pack(_TENSOR_ARGS.index(name), fields))
    _set_scalars(args, options, "auto")
    status, _, message = _ask_supported(args)
    # Past validation the selector may still decline (AF_ERR_UNSUPPORTED, AF_ERR_DEVICE for a device it
    # cannot use, AF_ERR_BACKEND_UNAVAILABLE): the call is valid, only not for this backend.
    if status in CALLER_ERRORS or status == Status.AF_ERR_DTYPE:
        raise AttnforgeError(status, message)
