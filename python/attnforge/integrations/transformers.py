"""Hugging Face transformers integration: attn_implementation="attnforge".

    from attnforge.integrations.transformers import register
    register()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="attnforge")

register() adds an attention function to transformers' AttentionInterface and FlashAttention-2's mask
function (a 2D padding mask or None, never a 4D mask) to its AttentionMaskInterface, both under
"attnforge". The attention function takes what transformers passes to every attention function:
query (B, H, Sq, D), key/value (B, Hk, Sk, D) (GQA heads not repeated, KV cache already appended)
and handles:
  - padded batches: the 2D mask is turned into cu_seqlens and the call runs varlen (no padding
    rows are computed; left and right padding, prefill and decode);
  - padding-free packed batches: cu_seq_lens_q/k + max_length_q/k kwargs (DataCollatorWithFlattening),
    or position_ids that restart at 0 inside one row;
  - sliding windows (sliding_window -> window (w - 1, w - 1), as transformers' flash path), softcap,
    dropout in training, scaling, causal or not (module.is_causal / is_causal kwarg);
  - a 4D mask (a custom mask given by the caller) runs through torch SDPA with that mask, logged once;
  - attention sinks (s_aux, one logit per head, as gpt-oss passes them): a sink adds exp(s_aux[h])
    to every row's softmax denominator, so the kernel's output is scaled by sigmoid(lse - s_aux[h])
    using the LSE the kernel returns. When autograd must reach the sinks (training), or with a 4D
    mask, the call runs as explicit torch math with the sink column instead (logged once).
Per-backbone choices in vision-language models are transformers' own dict form:
attn_implementation={"text_config": "attnforge", "vision_config": "sdpa"}.
"""
import torch
import torch.nn.functional as F

from .. import _explain, fallback
from ..flash_attn_interface import flash_attn_func, flash_attn_varlen_func

NAME = "attnforge"


def _cu_seqlens(lengths):
    """int32 (B + 1) prefix sums of lengths (B,)."""
    return F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))


def _packed_from_position_ids(position_ids, total):
    """(cu_seqlens, max_len) when one row packs several sequences (position_ids restart at 0), else None."""
    pos = position_ids.reshape(-1)
    if pos.shape[0] != total:
        return None
    starts = torch.nonzero(pos == 0).flatten()
    if starts.numel() < 2 or int(starts[0]) != 0:
        return None
    cu = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _apply_sinks(out, lse, sinks):
    """out (..., H, D) and natural-log lse (B, H, Sq) or varlen (H, total) -> out with the sink logits
    sinks (H,) in each softmax denominator: out * exp(lse) / (exp(lse) + exp(sink))."""
    factor = torch.sigmoid(lse - sinks.float().view(-1, 1))  # rows with no visible key: lse = -inf -> 0
    factor = factor.transpose(-1, -2) if lse.dim() == 2 else factor.transpose(1, 2)
    return (out.float() * factor.unsqueeze(-1)).to(out.dtype)


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


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                      softcap=None, is_causal=None, **kwargs):
    """transformers attention function -> (attn_output (B, Sq, H, D), None)."""
    if kwargs.get("output_attentions"):
        fallback.log_once("output_attentions", "attnforge: output_attentions=True is not supported (like "
                          "flash_attention_2); attention weights are returned as None")
    sinks = kwargs.get("s_aux")
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    batch, heads, seqlen_q, head_dim = query.shape
    seqlen_k = key.shape[2]
    dropout = dropout if getattr(module, "training", False) else 0.0
    window = (-1, -1) if not sliding_window else (sliding_window - 1, sliding_window - 1)
    four_d = attention_mask is not None and attention_mask.dim() == 4
    if sinks is not None and (four_d or dropout > 0 or (torch.is_grad_enabled() and (
            sinks.requires_grad or query.requires_grad or key.requires_grad or value.requires_grad))):
        fallback.log_once("sinks-math", "attnforge: attention sinks with autograd, dropout or a 4D mask run as "
                          "explicit torch math (the kernel's LSE carries no gradient)")
        if four_d:
            mask = attention_mask
        else:
            full = query.new_full((batch,), 0, dtype=torch.long)
            mask, _ = fallback._visibility(full + seqlen_q, full, full + seqlen_k, seqlen_q, seqlen_k, bool(is_causal),
                                           window[0], window[1])
            if attention_mask is not None:  # 2D padding mask (B, Sk): hide padded keys
                mask = mask & attention_mask.bool()[:, None, None, -seqlen_k:]
        return _attention_with_sinks(query, key, value, mask, scaling, sinks, softcap, dropout), None
    if four_d:
        fallback.log_once("4d-mask", "attnforge: a 4D attention mask was given (custom mask); running torch SDPA "
                          "with it")
        return _sdpa_with_mask(query, key, value, attention_mask, scaling, dropout), None

    options = dict(dropout_p=dropout, softmax_scale=scaling, causal=bool(is_causal), window_size=window,
                   softcap=float(softcap or 0.0))
    q = query.transpose(1, 2)  # (B, Sq, H, D)
    k = key.transpose(1, 2)    # (B, Sk, Hk, D)
    v = value.transpose(1, 2)

    if attention_mask is not None:  # 2D padding mask (B, Sk): unpad, run varlen, scatter back
        mask_k = attention_mask.bool()[:, -seqlen_k:]
        mask_q = mask_k[:, -seqlen_q:]
        index_q = torch.nonzero(mask_q.reshape(-1)).flatten()
        index_k = torch.nonzero(mask_k.reshape(-1)).flatten()
        lengths_q, lengths_k = mask_q.sum(-1, dtype=torch.int32), mask_k.sum(-1, dtype=torch.int32)
        out_rows = _flash(
            flash_attn_varlen_func, q.reshape(batch * seqlen_q, heads, head_dim)[index_q],
            k.reshape(batch * seqlen_k, k.shape[2], head_dim)[index_k],
            v.reshape(batch * seqlen_k, v.shape[2], v.shape[3])[index_k],
            _cu_seqlens(lengths_q), _cu_seqlens(lengths_k), int(lengths_q.max()), int(lengths_k.max()), sinks=sinks,
            **options)
        out = out_rows.new_zeros((batch * seqlen_q, heads, out_rows.shape[-1]))
        out[index_q] = out_rows
        return out.reshape(batch, seqlen_q, heads, -1), None

    packed = None
    if all(kwargs.get(name) is not None for name in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                                                      "max_length_k")):
        packed = (kwargs["cu_seq_lens_q"].to(torch.int32), kwargs["cu_seq_lens_k"].to(torch.int32),
                  int(kwargs["max_length_q"]), int(kwargs["max_length_k"]))
    elif kwargs.get("position_ids") is not None and batch == 1 and seqlen_q == seqlen_k and seqlen_q > 1:
        found = _packed_from_position_ids(kwargs["position_ids"], seqlen_q)
        if found is not None:
            packed = (found[0], found[0], found[1], found[1])
    if packed is not None:  # padding-free: (1, total, ...) holds several sequences back to back
        out = _flash(flash_attn_varlen_func, q.reshape(-1, heads, head_dim), k.reshape(-1, k.shape[2], head_dim),
                     v.reshape(-1, v.shape[2], v.shape[3]), *packed, sinks=sinks, **options)
        return out.reshape(batch, seqlen_q, heads, -1), None

    return _flash(flash_attn_func, q, k, v, sinks=sinks, **options), None


def register(name=NAME):
    """Registers attnforge under `name` in transformers' attention and attention-mask interfaces."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, attention_forward)
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:  # transformers < 4.53 builds masks itself; 4D masks then run through SDPA above
        return
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])


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
