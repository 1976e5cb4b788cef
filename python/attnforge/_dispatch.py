"""The one place that asks attnforge's kernel to run a call and decides whether a failure falls back.

torch-free, so the numpy path can use it without torch installed.
"""
from . import _native

# Statuses that mean the caller's arguments are wrong: raised, as FlashAttention raises. Every
# other failure (unsupported feature, dtype or device, backend missing, CUDA error) falls back.
CALLER_ERRORS = {
    1,  # AF_ERR_INVALID_ARGUMENT
    2,  # AF_ERR_NULL_POINTER
    3,  # AF_ERR_SHAPE
    4,  # AF_ERR_STRIDE
    7,  # AF_ERR_SEQLENS
    8,  # AF_ERR_OVERFLOW
    9,  # AF_ERR_STRUCT_SIZE
}


def native_forward(q, k, v, out, lse, **kwargs):
    """Runs attnforge's kernel; None on success, else the reason it could not run the call."""
    try:
        _native.attention_forward(q, k, v, out, softmax_lse=lse, **kwargs)
        return None
    except _native.AttnforgeError as e:
        if e.status in CALLER_ERRORS:
            raise
        return str(e)
    except ImportError as e:
        return "libattnforge is not loadable (%s)" % e
    except TypeError as e:  # a dtype or device the C ABI has no code for
        if not str(e).startswith("attnforge:"):
            raise
        return str(e)


def native_supported(q, k, v, out, lse, **kwargs):
    """(True, backend, "") when the selector takes the call, else (False, None, reason)."""
    try:
        return _native.attention_supported(q, k, v, out, softmax_lse=lse, **kwargs)
    except ImportError as e:
        return False, None, "libattnforge is not loadable (%s)" % e
    except TypeError as e:
        if not str(e).startswith("attnforge:"):
            raise
        return False, None, str(e)
