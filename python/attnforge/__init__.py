"""attnforge: FlashAttention-2 compatible attention from one portable shared library.

    from attnforge import flash_attn_func   # instead of: from flash_attn import flash_attn_func

The package is pure Python over libattnforge.so (ctypes): one wheel serves every CPython >= 3.9
and every torch (or none: numpy arrays work too). See attnforge.explain() for which path a call
takes and why, and attnforge.integrations.transformers for attn_implementation="attnforge".
"""
from ._version import __version__
from ._native import AttentionOptions, AttnforgeError, Status, library_path, runtime_report
from ._explain import explain
from .flash_attn_interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)

__all__ = [
    "AttentionOptions",
    "AttnforgeError",
    "Status",
    "__version__",
    "explain",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "library_path",
    "runtime_report",
]
