"""Hugging Face transformers integration: attn_implementation="attnforge" or "attnforge_flash".

    from attnforge.integrations.transformers import register
    register()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="attnforge")

register() adds attention_forward to transformers' AttentionInterface and padding_mask to its
AttentionMaskInterface under two names:
  - "attnforge": transformers treats it like sdpa/eager (a custom name);
  - "attnforge_flash": "flash" in the name makes transformers treat it as flash-class
    (transformers.utils.generic.is_flash_attention_requested): vision towers pass cu_seq_lens
    instead of calling once per image, generate() keeps the 2D mask with static caches. Where
    transformers preloads a flash-class implementation's functions at model init
    (modeling_flash_attention_utils._lazy_imports), that name resolves to
    attnforge.flash_attn_interface. docs/transformers-flash-class.md has the details.
Both give the same results; "attnforge_flash" avoids per-chunk calls in vision towers.

attention_forward takes what transformers passes to every attention function: query (B, H, Sq, D),
key/value (B, Hk, Sk, D) (GQA heads not repeated, KV cache already appended), and handles:
  - 2D masks (B, L), True/1 = key row usable (padding_mask's output, or a padding mask): key rows
    [leftpad_b, seqused_b) = [first usable, last usable + 1) of each batch row are attended, through
    flash_attn_with_kvcache(cache_leftpad=leftpad, cache_seqlens=seqused) (FlashAttention's
    semantics: the causal diagonal ends at key row seqused_b - 1). When L < Sk, rows >= L are
    unused (a static cache's unfilled rows); when L > Sk, the last Sk columns describe the keys.
    Bounds are computed with tensor ops (no host sync) once per mask tensor. Zeros between the
    first and last usable key (right-padded prompts in generate(), which transformers warns
    against) are attended, as no kernel form has a per-key mask;
  - padding-free packed batches: cu_seq_lens_q/k + max_length_q/k kwargs (DataCollatorWithFlattening,
    vision towers under "attnforge_flash"), or position_ids of one row that restart (a new sequence
    starts wherever position_ids[t] != position_ids[t - 1] + 1, transformers' find_packed_sequence_indices
    rule, so any start value works);
  - sliding windows (sliding_window -> window (w - 1, w - 1), as transformers' flash path), softcap,
    dropout in training, scaling, causal or not (is_causal kwarg, else module.is_causal);
  - a 4D mask (a custom mask given by the caller) runs through torch SDPA with that mask, logged once;
  - attention sinks (s_aux, one logit per head, as gpt-oss passes them): a sink adds exp(s_aux[h])
    to every row's softmax denominator, so the kernel's output is scaled by sigmoid(lse - s_aux[h])
    using the LSE the kernel returns. When autograd must reach the sinks (training), or with a 4D
    mask, the call runs as explicit torch math with the sink column instead (logged once).
With autograd or dropout (training) a padded batch is unpadded (nonzero, varlen, scatter back), as
transformers' flash path does; inference never synchronises with the host in a decode step.
Per-backbone choices in vision-language models are transformers' own dict form:
attn_implementation={"text_config": "attnforge", "vision_config": "sdpa"}.
"""
import weakref

import torch
import torch.nn.functional as F

from .. import _dispatch, _explain, fallback
from .._native import AttentionOptions
from ..flash_attn_interface import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

NAME = "attnforge"
FLASH_NAME = "attnforge_flash"

_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)
_NO_BOUNDS = AttentionOptions()

# Per-tensor results computed once and reused by every layer of a forward pass: id(tensor) ->
# (weakref, tensor._version, extra key, value). The version check catches in-place changes.
_memo = {}


def _memoized(tensor, key, compute):
    """compute() once per (tensor, key) while tensor is alive and unchanged; computed every time
    under torch.compile, where the graph makes it free and a Python dict would break the graph."""
    if _is_compiling():
        return compute()
    entry = _memo.get(id(tensor))
    if entry is not None and entry[0]() is tensor and entry[1] == tensor._version and entry[2] == key:
        return entry[3]
    value = compute()
    if len(_memo) >= 16:
        _memo.clear()
    _memo[id(tensor)] = (weakref.ref(tensor), tensor._version, key, value)
    return value


def _key_bounds(mask):
    """mask (B, L) bool -> (leftpad, seqused) int32 (B,): first usable key row and last usable + 1
    (leftpad = seqused when a row has none)."""
    length = mask.shape[1]
    rows = torch.arange(length, device=mask.device)
    leftpad = torch.where(mask, rows, length).amin(dim=1)
    seqused = torch.maximum(torch.where(mask, rows + 1, 0).amax(dim=1), leftpad)
    return leftpad.to(torch.int32), seqused.to(torch.int32)


def _mask_bounds(attention_mask, seqlen_k):
    """A 2D mask's (leftpad, seqused) (_key_bounds of its last seqlen_k columns) and the AttentionOptions
    holding them, computed once per mask tensor for every layer of a forward pass."""
    leftpad, seqused = _key_bounds(_mask_for_keys(attention_mask, seqlen_k))
    return leftpad, seqused, AttentionOptions(leftpad_k=leftpad, seqused_k=seqused)


def _packed_starts(position_ids):
    """(Sq,) bool: where a new sequence starts in one packed row (position_ids[t] != position_ids[t-1] + 1)."""
    pos = position_ids.reshape(-1)
    return torch.cat([torch.ones_like(pos[:1], dtype=torch.bool), pos[1:] != pos[:-1] + 1])


def _packed_exact(position_ids):
    """(cu_seqlens int32, max_seqlen) of a packed row, or None when it holds one sequence. One host
    sync; memoized per position_ids tensor, so once per forward pass."""
    starts = torch.nonzero(_packed_starts(position_ids)).flatten()
    if starts.numel() < 2:
        return None
    total = position_ids.numel()
    cu = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _packed_static(position_ids):
    """(cu_seqlens int32 (Sq + 1,), Sq) with static shapes for torch.compile: sequence s starts at the
    s-th start; the remaining entries are empty sequences at the end."""
    total = position_ids.numel()
    rows = torch.arange(total, device=position_ids.device)
    starts = torch.sort(torch.where(_packed_starts(position_ids), rows, total)).values
    return torch.cat([starts, starts.new_full((1,), total)]).to(torch.int32), total


def padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                 **kwargs):
    """transformers mask function (AttentionMaskInterface, called once per forward pass) -> None or a
    (batch_size, kv_length) bool mask: True where key row j (absolute position kv_offset + j) holds a
    token the batch row may attend.

    attention_mask (B, L) covers positions [0, L) (L = q_offset + q_length, or kv_length when it is
    this function's own output passed back, as generate() does with masks it prepares), so the keys
    are its last kv_length columns, or its L columns followed by unfilled rows when L < kv_length.
    None when every key row holds a token (no 2D mask and no unfilled cache rows). For causal masks
    (transformers passes allow_is_bidirectional_skip only for bidirectional ones, encoders and
    cross-attention, whose keys are all filled) rows at or past q_offset + q_length are unfilled (a
    static cache's tail; q_offset is a tensor there, so the mask is built with tensor ops and no
    host sync), and every row from a batch row's first token on is kept: a right-padded prompt's
    trailing pads are then visible only to pad queries, and the kernel's bottom-right causal
    diagonal stays on the last query's own key.
    mask_function is not read: attnforge expresses causal, windows and packing itself."""
    causal = "allow_is_bidirectional_skip" not in kwargs
    tensor_offset = isinstance(q_offset, torch.Tensor)
    filled = not causal or (not tensor_offset and q_offset + q_length >= kv_offset + kv_length)
    if attention_mask is None and filled:
        return None
    keep = None
    if not filled:
        device = attention_mask.device if attention_mask is not None else q_offset.device if tensor_offset else \
            kwargs.get("device", "cpu")
        absolute = torch.arange(kv_length, device=device) + kv_offset
        keep = (absolute < q_offset + q_length)[None, :].expand(batch_size, -1)
    if attention_mask is not None:
        tokens = attention_mask.bool()
        if causal:
            tokens = tokens.cumsum(dim=1) > 0
        if tokens.shape[1] >= kv_length:  # positions up to the last query: the keys are its last kv_length
            tokens = tokens[:, tokens.shape[1] - kv_length:]
        else:  # a static cache's unfilled rows follow
            tokens = torch.cat([tokens, tokens.new_zeros((tokens.shape[0], kv_length - tokens.shape[1]))], dim=1)
        keep = tokens if keep is None else keep & tokens
    return keep


def _apply_sinks(out, lse, sinks):
    """out (..., H, D) and natural-log lse (B, H, Sq) or varlen (H, total) -> out with the sink logits
    sinks (H,) in each softmax denominator: out * exp(lse) / (exp(lse) + exp(sink))."""
    factor = torch.sigmoid(lse - sinks.float().view(-1, 1))  # rows with no visible key: lse = -inf -> 0
    factor = factor.transpose(-1, -2) if lse.dim() == 2 else factor.transpose(1, 2)
    return (out.float() * factor.unsqueeze(-1)).to(out.dtype)


def _visible(seqlen_q, seqlen_k, leftpad, seqused, causal, window):
    """(B, 1, Sq, Sk) bool, FlashAttention's visibility: key rows [leftpad, seqused) of each batch row,
    the causal diagonal ending at key row seqused - 1, window (left, right) inclusive around it."""
    i = torch.arange(seqlen_q, device=leftpad.device)[None, :, None]
    j = torch.arange(seqlen_k, device=leftpad.device)[None, None, :]
    diagonal = i + (seqused.long() - seqlen_q)[:, None, None]
    visible = (j >= leftpad.long()[:, None, None]) & (j < seqused.long()[:, None, None])
    if causal:
        visible = visible & (j <= diagonal)
    if window[0] >= 0:
        visible = visible & (j >= diagonal - window[0])
    if window[1] >= 0 and not causal:
        visible = visible & (j <= diagonal + window[1])
    return visible[:, None]


def _attention_with_sinks(query, key, value, mask, scaling, sinks, softcap, dropout):
    """Explicit (differentiable) attention with one sink logit per head, in float32: query (B, H, Sq, D),
    key/value (B, Hk, Sk, D), mask broadcastable to (B, H, Sq, Sk), bool (True = keep) or additive
    -> (B, Sq, H, D)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1).float()
    value = value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), key.transpose(-1, -2)) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    sink_column = sinks.float().view(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
    probs = torch.softmax(torch.cat([scores, sink_column], dim=-1), dim=-1)[..., :-1]
    probs = F.dropout(probs, p=dropout) if dropout > 0 else probs
    return torch.matmul(probs.to(value.dtype), value).transpose(1, 2).contiguous()


def _flash(function, *args, sinks=None, **options):
    """function (flash_attn_func or flash_attn_varlen_func) -> out, with sinks applied when given."""
    if sinks is None:
        return function(*args, **options)
    out, lse, _ = function(*args, return_attn_probs=True, **options)
    return _apply_sinks(out, lse, sinks)


def _sdpa_with_mask(query, key, value, mask, scaling, dropout):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous()


def _mask_for_keys(attention_mask, seqlen_k):
    """A 2D mask as bool (B, L) with L <= Sk: its last Sk columns when it is wider than the keys."""
    mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask.bool()
    return mask[:, -seqlen_k:] if mask.shape[1] > seqlen_k else mask


def _unpadded(q, k, v, mask, sinks, options):
    """Training path for a padded batch (autograd, dropout): unpad with nonzero, varlen, scatter back,
    as transformers' flash path does. q (B, Sq, H, D), k/v (B, Sk, Hk, D), mask (B, L) bool."""
    batch, seqlen_q, heads, head_dim = q.shape
    length = mask.shape[1]
    k, v = k[:, :length], v[:, :length]
    mask_q = mask[:, -seqlen_q:]
    index_q = torch.nonzero(mask_q.reshape(-1)).flatten()
    index_k = torch.nonzero(mask.reshape(-1)).flatten()
    lengths_q, lengths_k = mask_q.sum(-1, dtype=torch.int32), mask.sum(-1, dtype=torch.int32)
    cu_q = F.pad(torch.cumsum(lengths_q, dim=0, dtype=torch.int32), (1, 0))
    cu_k = F.pad(torch.cumsum(lengths_k, dim=0, dtype=torch.int32), (1, 0))
    out_rows = _flash(flash_attn_varlen_func, q.reshape(batch * seqlen_q, heads, head_dim)[index_q],
                      k.reshape(batch * length, k.shape[2], head_dim)[index_k],
                      v.reshape(batch * length, v.shape[2], v.shape[3])[index_k],
                      cu_q, cu_k, int(lengths_q.max()), int(lengths_k.max()), sinks=sinks, **options)
    out = out_rows.new_zeros((batch * seqlen_q, heads, out_rows.shape[-1]))
    out[index_q] = out_rows
    return out.reshape(batch, seqlen_q, heads, -1)


def _packed_arguments(kwargs, batch, seqlen_q, seqlen_k):
    """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) of a padding-free packed batch, or None."""
    names = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    if all(kwargs.get(name) is not None for name in names):
        max_q, max_k = kwargs["max_length_q"], kwargs["max_length_k"]
        return (kwargs["cu_seq_lens_q"].to(torch.int32), kwargs["cu_seq_lens_k"].to(torch.int32),
                max_q if isinstance(max_q, int) else int(max_q), max_k if isinstance(max_k, int) else int(max_k))
    position_ids = kwargs.get("position_ids")
    if position_ids is None or batch != 1 or seqlen_q != seqlen_k or seqlen_q < 2 or \
            position_ids.dim() != 2 or position_ids.numel() != seqlen_q:
        return None
    if _is_compiling():
        cu, longest = _packed_static(position_ids)
    else:
        found = _memoized(position_ids, "packed", lambda: _packed_exact(position_ids))
        if found is None:
            return None
        cu, longest = found
    return cu, cu, longest, longest


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                      softcap=None, is_causal=None, **kwargs):
    """transformers attention function -> (attn_output (B, Sq, H, D), None)."""
    if kwargs.get("output_attentions"):
        fallback.log_once("output_attentions", "attnforge: output_attentions=True is not supported (like "
                          "flash_attention_2); attention weights are returned as None")
    sinks = kwargs.get("s_aux")
    is_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    batch, heads, seqlen_q, head_dim = query.shape
    seqlen_k = key.shape[2]
    dropout = dropout if getattr(module, "training", False) else 0.0
    window = (-1, -1) if not sliding_window else (sliding_window - 1, sliding_window - 1)
    four_d = attention_mask is not None and attention_mask.dim() == 4
    two_d = attention_mask is not None and not four_d
    autograd = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad or (
        sinks is not None and sinks.requires_grad))
    if sinks is not None and (four_d or dropout > 0 or autograd):
        fallback.log_once("sinks-math", "attnforge: attention sinks with autograd, dropout or a 4D mask run as "
                          "explicit torch math (the kernel's LSE carries no gradient)")
        if four_d:
            visible = attention_mask
        else:
            if two_d:
                leftpad, seqused = _key_bounds(_mask_for_keys(attention_mask, seqlen_k))
            else:
                leftpad = torch.zeros(batch, dtype=torch.int32, device=query.device)
                seqused = torch.full_like(leftpad, seqlen_k)
            visible = _visible(seqlen_q, seqlen_k, leftpad, seqused, is_causal, window)
        return _attention_with_sinks(query, key, value, visible, scaling, sinks, softcap, dropout), None
    if four_d:
        fallback.log_once("4d-mask", "attnforge: a 4D attention mask was given (custom mask); running torch SDPA "
                          "with it")
        return _sdpa_with_mask(query, key, value, attention_mask, scaling, dropout), None

    softcap = float(softcap or 0.0)
    options = dict(softmax_scale=scaling, causal=is_causal, window_size=window, softcap=softcap)
    bounds = None
    if two_d and not (autograd or dropout > 0):
        bounds = _memoized(attention_mask, ("bounds", seqlen_k), lambda: _mask_bounds(attention_mask, seqlen_k))
    packed = None if two_d else _packed_arguments(kwargs, batch, seqlen_q, seqlen_k)
    shortcut = None
    if sinks is None and packed is None and (bounds is not None or not (two_d or dropout > 0 or autograd)):
        shortcut = _shortcut_key(query, key, value, bounds, options)
        if shortcut is not None:
            out = _planned(shortcut, query, key, value, bounds)
            if out is not None:
                return out, None
    q = query.transpose(1, 2)  # (B, Sq, H, D)
    k = key.transpose(1, 2)    # (B, Sk, Hk, D)
    v = value.transpose(1, 2)

    if two_d:
        if bounds is None:  # autograd or dropout
            return _unpadded(q, k, v, _mask_for_keys(attention_mask, seqlen_k), sinks,
                             dict(options, dropout_p=dropout)), None
        leftpad, seqused, _ = bounds
        out = flash_attn_with_kvcache(q, k, v, cache_seqlens=seqused, cache_leftpad=leftpad,
                                      return_softmax_lse=sinks is not None, **options)
        if shortcut is not None:
            _dispatch.remember(shortcut, q, k, v, _bounds_options(bounds, options))
        return (out if sinks is None else _apply_sinks(out[0], out[1], sinks)), None

    if packed is not None:  # padding-free: (1, total, ...) holds several sequences back to back
        out = _flash(flash_attn_varlen_func, q.reshape(-1, heads, head_dim), k.reshape(-1, k.shape[2], head_dim),
                     v.reshape(-1, v.shape[2], v.shape[3]), *packed, sinks=sinks, dropout_p=dropout, **options)
        return out.reshape(batch, seqlen_q, heads, -1), None

    out = _flash(flash_attn_func, q, k, v, sinks=sinks, dropout_p=dropout, **options)
    if shortcut is not None:
        _dispatch.remember(shortcut, q, k, v, _bounds_options(None, options))
    return out, None


def _shortcut_key(query, key, value, bounds, options):
    """Plan-cache key of an inference call in transformers' layout (query (B, H, Sq, D), key/value
    (B, Hk, Sk, D), _mask_bounds of a 2D mask or None): the kernel then runs on query/key/value's own memory,
    without transposed views, an options record or plan_key. None where _dispatch.tensor_signature is
    (off CUDA, under tracing, tensor subclasses, unit-stride violations: those take the full path)."""
    tensors = _dispatch.tensor_signature(query, key, value)
    if tensors is None:
        return None
    return ("transformers", tensors, None if bounds is None else (bounds[0].device, bounds[0].shape),
            options["softmax_scale"], options["causal"], options["window_size"], options["softcap"])


def _bounds_options(bounds, options):
    """The AttentionOptions the full path's kernel call ran with: flash_attn_func's, or with a 2D mask
    flash_attn_with_kvcache's (leftpad_k and seqused_k from the mask's bounds)."""
    leftpad, seqused = bounds[:2] if bounds is not None else (None, None)
    return AttentionOptions(leftpad_k=leftpad, seqused_k=seqused, softmax_scale=options["softmax_scale"],
                            softcap=options["softcap"], causal=options["causal"],
                            window_size=options["window_size"])


def _planned(shortcut, query, key, value, bounds):
    """out (B, Sq, H, D) through the plan filed under shortcut, or None (no plan yet, or the kernel
    declined at run time). With one query row, out is a transposed (B, H, 1, D) buffer: the same
    memory as a contiguous (B, 1, H, D), one allocation cheaper than building that shape."""
    batch, heads, seqlen_q, head_dim = query.shape
    out = torch.empty_like(query).transpose(1, 2) if seqlen_q == 1 else \
        query.new_empty((batch, seqlen_q, heads, head_dim))
    options = _NO_BOUNDS if bounds is None else bounds[2]
    return _dispatch.planned_forward(shortcut, query, key, value, out, options)


def _provide_flash_functions(names):
    """Makes transformers' preload of a flash-class implementation's functions
    (modeling_flash_attention_utils._lazy_imports, called at model init for any name containing
    "flash") return attnforge's FlashAttention-2 API for `names` instead of looking for a Hub kernel
    of that name, which would fail. Other names go to transformers' own function."""
    try:
        from transformers import modeling_flash_attention_utils as fa_utils
    except ImportError:
        return
    original = getattr(fa_utils, "_lazy_imports", None)
    if original is None:
        return
    served = getattr(original, "attnforge_names", None)
    if served is not None:
        served.update(names)
        return

    def _lazy_imports(implementation, *args, **kwargs):
        if implementation in _lazy_imports.attnforge_names:
            return (flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, fa_utils._pad_input,
                    fa_utils._unpad_input)
        return original(implementation, *args, **kwargs)

    _lazy_imports.attnforge_names = set(names)
    fa_utils._lazy_imports = _lazy_imports


def register(name=NAME, flash_name=FLASH_NAME):
    """Registers attention_forward and padding_mask under `name` and under `flash_name` (which must
    contain "flash" for transformers to treat it as flash-class; None skips it) in transformers'
    attention and attention-mask interfaces."""
    from transformers import AttentionInterface

    names = [each for each in (name, flash_name) if each]
    for each in names:
        AttentionInterface.register(each, attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:  # transformers < 4.53 builds 4D masks itself; they run through SDPA above
        return
    for each in names:
        AttentionMaskInterface.register(each, padding_mask)
    if flash_name:
        _provide_flash_functions([flash_name])


def _attention_shape(config):
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None) or 8
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or getattr(text, "hidden_size", 64 * heads) // heads
    dtype = getattr(text, "torch_dtype", None) or getattr(text, "dtype", None)
    return heads, kv_heads, head_dim, dtype


def best_attn_implementation(model_or_config, device="cpu"):
    """("attnforge" | "sdpa" | "eager", reason): runs one small causal attention shaped like the model's on
    `device` through attnforge and checks it against torch's math before recommending it."""
    config = getattr(model_or_config, "config", model_or_config)
    heads, kv_heads, head_dim, dtype = _attention_shape(config)
    if isinstance(model_or_config, torch.nn.Module):
        dtype = next(model_or_config.parameters()).dtype
    if not isinstance(dtype, torch.dtype):
        dtype = getattr(torch, str(dtype), torch.float32) if dtype else torch.float32
    device = torch.device(device)
    torch_choice = "sdpa" if fallback.HAS_SDPA else "eager"
    try:
        generator = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, 67, h, head_dim, generator=generator).to(device=device, dtype=dtype)
                   for h in (heads, kv_heads, kv_heads))
        verdict = _explain.explain(q, k, v, causal=True)
        if not verdict["path"].startswith("attnforge"):
            return torch_choice, "attnforge's kernel would not run this model's attention on %s: %s" % (
                device, verdict["reason"])
        out = flash_attn_func(q, k, v, causal=True)
        expected, _, _ = fallback.attention(q.double(), k.double(), v.double(), causal=True, need_lse=False)
        error = (out.double() - expected).abs().max().item()
        naive, _, _ = fallback.attention(q, k, v, causal=True, need_lse=False)
        budget = 2 * (naive.double() - expected).abs().max().item() + 4 * torch.finfo(dtype).eps
        if not error <= budget:
            return torch_choice, "attnforge ran on %s but its error %.3g exceeds the budget %.3g" % (
                device, error, budget)
        return "attnforge", "attnforge's %s kernel runs heads=%d/%d head_dim=%d %s (max error %.3g, budget %.3g)" % (
            verdict["path"].split("-", 1)[1], heads, kv_heads, head_dim, str(dtype).replace("torch.", ""), error,
            budget)
    except Exception as e:  # any failure on the device means: do not pick attnforge, say why
        return torch_choice, "attnforge failed on %s: %s: %s" % (device, type(e).__name__, e)
