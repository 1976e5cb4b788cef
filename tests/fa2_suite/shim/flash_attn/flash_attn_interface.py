"""`flash_attn.flash_attn_interface` for FlashAttention-2's tests: attnforge's module, re-exported
(including _get_block_size_n, the S_dmask block width the tests decode with)."""
from attnforge.flash_attn_interface import *  # noqa: F401,F403
from attnforge.flash_attn_interface import _get_block_size_n  # noqa: F401
