"""`flash_attn` for FlashAttention-2's own tests, run against attnforge: re-exports attnforge only.

tests/fa2_suite/run.py stages this package next to FlashAttention's pure-Python test helpers
(bert_padding.py, layers/rotary.py, ops/triton/rotary.py, copied at run time, never committed).
"""
from attnforge.flash_attn_interface import (  # noqa: F401
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
