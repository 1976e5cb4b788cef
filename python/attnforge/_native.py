"""Low-level ctypes binding to libattnforge.so (the C ABI in include/attnforge/attnforge.h).

Tensors cross zero-copy: a torch tensor, a numpy array or any object with
``__dlpack__`` is described by its data pointer, dtype, device, shape and
strides (in elements); nothing is copied or converted here.
"""

import ctypes
import glob
import json
import os
import struct
import sys
import threading

__all__ = [
    "AttnforgeError",
    "attention_forward",
    "attention_supported",
    "backend_available",
    "library",
    "library_path",
    "runtime_report",
    "set_num_threads",
    "get_num_threads",
    "version",
]

_MAX_RANK = 6

# af_dtype, af_device_type and af_backend values (pinned in the header).
DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_INT32, DTYPE_FLOAT64 = 0, 1, 2, 3, 4
DEVICE_CPU, DEVICE_CUDA = 1, 2
BACKENDS = {"auto": 0, "cpu": 1, "cuda": 2}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}

_STATUS_OK = 0
_STATUS_BUFFER_TOO_SMALL = 16


class AttnforgeError(RuntimeError):
    """A non-OK af_status, with the library's detailed message."""

    def __init__(self, status, message):
        self.status = int(status)
        self.status_name = _lib().af_status_string(self.status).decode()
        self.message = message
        super().__init__("%s: %s" % (self.status_name, message))


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

_PROGRESS_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_char_p)


def _candidate_paths():
    env = os.environ.get("ATTNFORGE_LIBRARY")
    if env:
        yield env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "_lib", "libattnforge.so")
    # Development: the newest build tree of the source checkout this file is in.
    repo = os.path.dirname(os.path.dirname(here))
    builds = glob.glob(os.path.join(repo, "build*", "libattnforge.so"))
    yield from sorted(builds, key=os.path.getmtime, reverse=True)


def _nvrtc_dirs():
    """Directories of the NVRTC that pip's nvidia wheels (torch's CUDA runtime) bring."""
    dirs = []
    for entry in sys.path:
        base = os.path.join(entry or ".", "nvidia")
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
    if status != _STATUS_OK:
        raise AttnforgeError(status, _lib().af_last_error_message().decode(errors="replace"))


def _text(fn):
    needed = ctypes.c_size_t(0)
    size = 4096
    while True:
        buffer = ctypes.create_string_buffer(size)
        status = fn(buffer, size, ctypes.byref(needed))
        if status == _STATUS_BUFFER_TOO_SMALL and needed.value > size:
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
    return status == _STATUS_OK, ("" if status == _STATUS_OK else lib.af_last_error_message().decode())


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
    callback = _PROGRESS_CALLBACK(lambda _user, done, total, item: progress(done, total, item.decode()) if progress else None)
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


def _tensor_fields(x):
    """(data pointer, af_dtype, device type, device index, shape, strides in elements) of x: a torch
    tensor, a numpy array or a __dlpack__ object, zero-copy."""
    if _is_torch_tensor(x):
        code = _torch_dtype_codes(sys.modules["torch"]).get(x.dtype)
        if code is None:
            raise TypeError("attnforge: unsupported tensor dtype %s" % x.dtype)
        if x.is_cuda:
            device_type, device_index = DEVICE_CUDA, x.get_device()
        elif x.is_cpu:
            device_type, device_index = DEVICE_CPU, 0
        else:
            raise TypeError("attnforge: tensors on device %s are not supported" % x.device)
        return x.data_ptr(), code, device_type, device_index, x.shape, x.stride()
    np = sys.modules.get("numpy")
    if np is None or not isinstance(x, np.ndarray):
        if hasattr(x, "__dlpack__"):
            import numpy as np

            x = np.from_dlpack(x)
        else:
            raise TypeError("attnforge: expected a torch tensor, a numpy array or a __dlpack__ object, got %r" % type(x))
    name = x.dtype.name
    if name not in _NUMPY_DTYPES:
        raise TypeError("attnforge: unsupported array dtype %s" % name)
    if any(s % x.itemsize for s in x.strides):
        raise ValueError("attnforge: array strides %s are not multiples of the item size" % (x.strides,))
    return (x.__array_interface__["data"][0], _NUMPY_DTYPES[name], DEVICE_CPU, 0, x.shape,
            tuple(s // x.itemsize for s in x.strides))


class _Descriptors(threading.local):
    """One af_tensor slot per tensor field of af_attention_args, per thread."""

    def __init__(self):
        self.buffer = ctypes.create_string_buffer(_TENSOR_PACK.size * len(_TENSOR_ARGS))
        self.address = ctypes.addressof(self.buffer)


_TENSOR_ARGS = ("q", "k", "v", "out", "softmax_lse", "cu_seqlens_q", "cu_seqlens_k", "seqused_k", "leftpad_k",
                "block_table", "kv_batch_idx", "alibi_slopes")
_descriptors = _Descriptors()


def _pack_tensor(slot, x):
    """Writes x's af_tensor into this thread's slot; returns its address."""
    pointer, dtype, device_type, device_index, shape, strides = _tensor_fields(x)
    rank = len(shape)
    if rank > _MAX_RANK:
        raise ValueError("attnforge: rank %d exceeds %d" % (rank, _MAX_RANK))
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


def _build_args(q, k, v, out, softmax_lse=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0,
                max_seqlen_k=0, seqused_k=None, leftpad_k=None, block_table=None, kv_batch_idx=None,
                alibi_slopes=None, softmax_scale=None, softcap=0.0, causal=False, window_size=(-1, -1),
                backend="auto", stream=None, num_splits=0):
    args = _AttentionArgs()
    args.struct_size = _ARGS_SIZE
    values = (q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, block_table, kv_batch_idx,
              alibi_slopes)
    for slot, value in enumerate(values):
        if value is not None:
            setattr(args, _TENSOR_ARGS[slot], _pack_tensor(slot, value))
    args.max_seqlen_q = int(max_seqlen_q or 0)
    args.max_seqlen_k = int(max_seqlen_k or 0)
    args.softmax_scale = 0.0 if softmax_scale is None else float(softmax_scale)
    args.softcap = float(softcap or 0.0)
    args.causal = 1 if causal else 0
    args.window_left, args.window_right = int(window_size[0]), int(window_size[1])
    if backend not in BACKENDS:
        raise ValueError("attnforge: backend must be one of %s, got %r" % (sorted(BACKENDS), backend))
    args.backend = BACKENDS[backend]
    args.cuda_stream = _stream_of(q, stream)
    args.num_splits = int(num_splits or 0)
    return args


def attention_forward(q, k, v, out, **kwargs):
    """Run af_attention_forward; writes out (and softmax_lse if given). Raises AttnforgeError."""
    args = _build_args(q, k, v, out, **kwargs)
    _check(_lib().af_attention_forward(ctypes.byref(args)))


class Plan:
    """af_attention_plan_create for one call shape; run() launches calls of that shape without choosing
    the kernel again. Takes attention_forward's arguments; raises AttnforgeError as it does."""

    def __init__(self, q, k, v, out, **kwargs):
        self._lib = _lib()
        handle = ctypes.c_void_p()
        _check(self._lib.af_attention_plan_create(ctypes.byref(_build_args(q, k, v, out, **kwargs)),
                                                  ctypes.byref(handle)))
        self._handle = handle

    def describe(self):
        """The kernel the plan runs ("cuda decode bf16 d128 sm_90a 16x64 splits=8", "cpu")."""
        return _text(lambda buffer, size, needed: self._lib.af_attention_plan_describe(self._handle, buffer, size,
                                                                                         needed))

    def workspace_size(self):
        """Bytes of device memory a caller-owned workspace needs (0: none)."""
        size = ctypes.c_size_t(0)
        _check(self._lib.af_attention_plan_workspace_size(self._handle, ctypes.byref(size)))
        return size.value

    def run(self, q, k, v, out, workspace=None, **kwargs):
        """af_attention_run: workspace is a device tensor of at least workspace_size() bytes, or None for
        attnforge's pool."""
        args = _build_args(q, k, v, out, **kwargs)
        pointer, size = (workspace.data_ptr(), workspace.numel() * workspace.element_size()) if workspace is not None \
            else (None, 0)
        _check(self._lib.af_attention_run(self._handle, ctypes.byref(args), pointer, size))

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            self._lib.af_attention_plan_destroy(handle)


def attention_supported(q, k, v, out, **kwargs):
    """(True, backend_name, "") if af_attention_forward would run the call, else (False, None, reason)."""
    args = _build_args(q, k, v, out, **kwargs)
    selected = ctypes.c_int(0)
    lib = _lib()
    status = lib.af_attention_supported(ctypes.byref(args), ctypes.byref(selected))
    if status == _STATUS_OK:
        return True, BACKEND_NAMES.get(selected.value, "auto"), ""
    return False, None, "%s: %s" % (lib.af_status_string(status).decode(), lib.af_last_error_message().decode())
