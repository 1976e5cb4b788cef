"""End to end through Hugging Face transformers: small random-weight Qwen3 and Llama models built from configs,
attn_implementation="attnforge" against "eager": same logits within tolerance and the same greedy tokens, for a
single sequence, a left-padded batch and a padding-free packed batch; plus sliding windows, per-backbone
choices in a vision-language model, and best_attn_implementation()."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed for this interpreter "
                                                         "(Debian's python3 has none); end-to-end tests need it")
from attnforge.integrations import transformers as af_transformers  # noqa: E402

af_transformers.register()

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def make_config(family, **extra):
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=16, **TINY, **extra)
    return transformers.LlamaConfig(**TINY, **extra)


def model_pair(config):
    """(eager, attnforge) models with identical random weights, each on its own copy of the config
    (transformers records the attention implementation on the config object it is given)."""
    torch.manual_seed(1234)
    eager = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="attnforge").eval()
    ours.load_state_dict(eager.state_dict())
    assert ours.config._attn_implementation == "attnforge" and eager.config._attn_implementation == "eager"
    return eager, ours


def assert_logits_close(ours, eager):
    scale = max(1.0, eager.abs().max().item())
    err = (ours - eager).abs().max().item()
    assert err <= 2e-5 * scale, "logits differ by %.3g (scale %.3g)" % (err, scale)


def greedy(model, input_ids, attention_mask=None, steps=6):
    with torch.no_grad():
        return model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=steps, do_sample=False,
                              pad_token_id=0)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_single_sequence(family):
    eager, ours = model_pair(make_config(family))
    ids = torch.randint(1, 97, (1, 19))
    with torch.no_grad():
        assert_logits_close(ours(ids).logits, eager(ids).logits)
    assert torch.equal(greedy(ours, ids), greedy(eager, ids))


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_left_padded_batch(family):
    eager, ours = model_pair(make_config(family))
    lengths = [15, 9, 12]
    ids = torch.zeros(3, 15, dtype=torch.long)
    mask = torch.zeros(3, 15, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 15 - n:] = torch.randint(1, 97, (n,))
        mask[row, 15 - n:] = 1
    with torch.no_grad():
        ours_logits = ours(ids, attention_mask=mask).logits
        eager_logits = eager(ids, attention_mask=mask).logits
    valid = mask.bool()
    assert_logits_close(ours_logits[valid], eager_logits[valid])
    assert torch.equal(greedy(ours, ids, mask), greedy(eager, ids, mask))


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_packed_batch_matches_separate_sequences(family):
    eager, ours = model_pair(make_config(family))
    lengths = [7, 11, 4]
    sequences = [torch.randint(1, 97, (1, n)) for n in lengths]
    packed = torch.cat(sequences, dim=1)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.tensor([0, 7, 18, 22], dtype=torch.int32)
    with torch.no_grad():
        separate = torch.cat([eager(s).logits for s in sequences], dim=1)
        by_positions = ours(packed, position_ids=position_ids).logits
        by_kwargs = ours(packed, position_ids=position_ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=11,
                         max_length_k=11).logits
    assert_logits_close(by_positions, separate)
    assert_logits_close(by_kwargs, separate)
    # Greedy continuation of the last packed sequence equals generating it alone.
    assert torch.equal(greedy(ours, sequences[2]), greedy(eager, sequences[2]))


def test_from_pretrained_with_attn_implementation(tmp_path):
    eager, _ = model_pair(make_config("qwen3"))
    eager.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="attnforge").eval()
    assert loaded.config._attn_implementation == "attnforge"
    ids = torch.randint(1, 97, (2, 13))
    with torch.no_grad():
        assert_logits_close(loaded(ids).logits, eager(ids).logits)


def test_sliding_window_layers():
    config = make_config("qwen3", use_sliding_window=True, sliding_window=5, max_window_layers=0,
                         layer_types=["sliding_attention", "full_attention"])
    eager, ours = model_pair(config)
    ids = torch.randint(1, 97, (2, 17))
    with torch.no_grad():
        assert_logits_close(ours(ids).logits, eager(ids).logits)
    assert torch.equal(greedy(ours, ids[:1]), greedy(eager, ids[:1]))


def test_vision_language_per_backbone_choice():
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.LlavaConfig(vision_config=vision, text_config=make_config("llama"), image_token_index=96,
                                      vision_feature_layer=-1)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration._from_config(
        copy.deepcopy(config), attn_implementation={"text_config": "attnforge", "vision_config": "sdpa"}).eval()
    assert model.config.text_config._attn_implementation == "attnforge"
    assert model.config.vision_config._attn_implementation == "sdpa"
    reference = transformers.LlavaForConditionalGeneration._from_config(
        copy.deepcopy(config), attn_implementation={"text_config": "eager", "vision_config": "sdpa"}).eval()
    reference.load_state_dict(model.state_dict())
    assert model.config.text_config._attn_implementation == "attnforge"
    image_tokens = (28 // 14) ** 2
    ids = torch.cat([torch.full((1, image_tokens), 96), torch.randint(1, 90, (1, 6))], dim=1)
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert_logits_close(model(input_ids=ids, pixel_values=pixels).logits,
                            reference(input_ids=ids, pixel_values=pixels).logits)


def test_best_attn_implementation_on_cpu():
    choice, reason = af_transformers.best_attn_implementation(make_config("qwen3"), "cpu")
    assert choice == "attnforge", reason
    assert "cpu" in reason and "error" in reason


def _sink_reference(query, key, value, sinks, keep, scaling):
    """float64 attention with one sink logit per head; keep (B or 1, 1, Sq, Sk) bool -> (B, Sq, H, D)."""
    groups = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(groups, dim=1)
    v = value.double().repeat_interleave(groups, dim=1)
    scores = (query.double() @ k.transpose(-1, -2) * scaling).masked_fill(~keep, float("-inf"))
    sink = sinks.double().view(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return (probs @ v).transpose(1, 2)


@pytest.mark.parametrize("padded", [False, True])
def test_attention_sinks_match_float64(padded):
    """s_aux (gpt-oss sinks): the kernel path (inference) and the differentiable math path (training)
    both match a float64 reference, with and without a left-padding mask."""
    torch.manual_seed(7)
    batch, heads, heads_kv, seqlen, dim = 2, 4, 2, 9, 16
    query = torch.randn(batch, heads, seqlen, dim)
    key, value = torch.randn(batch, heads_kv, seqlen, dim), torch.randn(batch, heads_kv, seqlen, dim)
    sinks = torch.randn(heads) * 2
    keep = torch.ones(seqlen, seqlen, dtype=torch.bool).tril()[None, None]
    mask = None
    if padded:
        mask = torch.ones(batch, seqlen, dtype=torch.long)
        mask[1, :4] = 0
        keep = keep & mask.bool()[:, None, None, :]
    expected = _sink_reference(query, key, value, sinks, keep, dim ** -0.5)
    module = torch.nn.Module()
    module.is_causal = True
    rows = (mask.bool() if padded else torch.ones(batch, seqlen, dtype=torch.bool))  # padded query rows: unused
    with torch.no_grad():
        out, _ = af_transformers.attention_forward(module, query, key, value, mask, scaling=dim ** -0.5, s_aux=sinks)
    assert torch.allclose(out[rows].double(), expected[rows], atol=1e-5)
    sinks_param = sinks.clone().requires_grad_(True)
    out, _ = af_transformers.attention_forward(module, query, key, value, mask, scaling=dim ** -0.5, s_aux=sinks_param)
    assert torch.allclose(out[rows].double(), expected[rows], atol=1e-5)
    out[rows].sum().backward()
    assert sinks_param.grad is not None and torch.isfinite(sinks_param.grad).all()


@pytest.mark.skipif(not hasattr(transformers, "GptOssConfig"), reason="this transformers has no gpt-oss")
def test_gpt_oss_with_sinks_matches_eager():
    config = transformers.GptOssConfig(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                       num_experts_per_tok=2, sliding_window=6, max_position_embeddings=256,
                                       layer_types=["sliding_attention", "full_attention"])
    eager, ours = model_pair(config)
    with torch.no_grad():
        for layer in eager.model.layers:  # sinks start at zero or random: make them matter
            layer.self_attn.sinks.normal_(0, 2)
    ours.load_state_dict(eager.state_dict())
    ids = torch.randint(1, 97, (2, 17))
    with torch.no_grad():
        assert_logits_close(ours(ids).logits, eager(ids).logits)
    assert torch.equal(greedy(ours, ids[:1]), greedy(eager, ids[:1]))
