"""generate() with attnforge against eager in every cache mode transformers offers (issue 12 item 1), the
flash-class name's inputs (item 2) and a decode step without host syncs or graph breaks (item 3).

Tiny random models built from configs (no downloads). Each model is built from its own copy of the config:
transformers stores the attention implementation on the config object, so a shared config would make the
"eager" model run attnforge too. Logits are checked against the same model in float64 (teacher-forced over
the sequence eager generated): attnforge's error may be at most twice eager's float32 error plus a few
float32 ulps of the logits' scale; greedy tokens must equal eager's."""
import copy
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed for this interpreter "
                                                         "(Debian's python3 has none); end-to-end tests need it")
from attnforge import ops  # noqa: E402
from attnforge.integrations import transformers as af_transformers  # noqa: E402

af_transformers.register()

VOCAB = 97
# initializer_range 0.3: with transformers' default 0.02 attention barely moves the logits and a wrong
# mask can still pass (the static-cache bug of issue 12 changed them by up to 8.5 at this scale).
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3)


def make_config(family):
    if family == "llama":
        return transformers.LlamaConfig(**TINY)
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=16, **TINY)
    if family == "mistral":  # every layer sliding
        return transformers.MistralConfig(sliding_window=5, **TINY)
    if family == "gemma2":  # sliding and full layers alternate, logit softcaps
        return transformers.Gemma2Config(head_dim=16, sliding_window=5, attn_logit_softcapping=30.0,
                                         final_logit_softcapping=20.0, query_pre_attn_scalar=16, **TINY)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(head_dim=16, sliding_window=5, query_pre_attn_scalar=16,
                                             layer_types=["sliding_attention", "full_attention"], **TINY)
    if family == "gpt_oss":  # attention sinks, sliding and full layers
        return transformers.GptOssConfig(head_dim=16, sliding_window=5, num_local_experts=4, num_experts_per_tok=2,
                                         layer_types=["sliding_attention", "full_attention"],
                                         **dict(TINY, intermediate_size=64))
    raise ValueError(family)


def models(config, implementation="attnforge"):
    """(eager, ours, float64 eager) with identical random weights, each on its own config copy."""
    torch.manual_seed(1234)
    eager = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    if hasattr(eager.model.layers[0].self_attn, "sinks"):
        with torch.no_grad():  # sinks start at zero: make them matter
            for layer in eager.model.layers:
                layer.self_attn.sinks.normal_(0, 2)
    ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=implementation)
    ours.load_state_dict(eager.state_dict())
    reference = copy.deepcopy(eager).double()
    if hasattr(reference, "set_experts_implementation"):  # grouped_mm has no float64
        reference.set_experts_implementation("eager")
    assert ours.config._attn_implementation == implementation and eager.config._attn_implementation == "eager"
    return eager, ours.eval(), reference


def assert_within_budget(ours, eager, reference, where):
    """ours/eager float32 logits, reference float64: |ours - ref| <= 2 |eager - ref| + 8 ulp(scale)."""
    scale = max(1.0, reference.abs().max().item())
    error = (ours.double() - reference).abs().max().item()
    budget = 2 * (eager.double() - reference).abs().max().item() + 8 * torch.finfo(torch.float32).eps * scale
    assert error <= budget, "%s: logits differ from float64 by %.3g (budget %.3g)" % (where, error, budget)


def batch(lengths, width=None, side="left"):
    """(input_ids, attention_mask) of random prompts with these lengths, padded on `side` with token 0."""
    width = width or max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = torch.randint(1, VOCAB, (n,))
        mask[row, cols] = 1
    return ids, mask


def reference_logits(reference, sequences, mask, prompt_length):
    """float64 logits for each generated position, teacher-forced over eager's sequences, each row alone
    without its padding (eager in float64 gives NaN rows under a padding mask: its softmax runs in float32,
    where float64's mask value is -inf)."""
    rows = []
    with torch.no_grad():
        for row in range(sequences.shape[0]):
            pads = int((mask[row] == 0).sum())
            logits = reference(sequences[row:row + 1, pads:]).logits[0]
            rows.append(logits[prompt_length - 1 - pads:-1])
    return torch.stack(rows)


def generate(model, ids, mask, **options):
    options = dict(dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_logits=True,
                        return_dict_in_generate=True), **options)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, **options)
    return out.sequences, torch.stack(out.logits, dim=1)


def check_generate(eager, ours, reference, ids, mask, **options):
    expected, eager_logits = generate(eager, ids, mask, **options)
    sequences, logits = generate(ours, ids, mask, **options)
    assert torch.equal(sequences, expected), "greedy tokens differ from eager:\n%s\n%s" % (sequences, expected)
    assert_within_budget(logits, eager_logits, reference_logits(reference, expected, mask, ids.shape[1]),
                         "generate(%s)" % options)


# transformers 5.24 renamed forward's past_key_values to cache (the old name goes in 5.40; 5.17 has only it).
CACHE = "cache" if "cache" in inspect.signature(transformers.LlamaModel.forward).parameters else "past_key_values"
FAMILIES = ["llama", "qwen3", "mistral", "gemma2", "gemma3", "gpt_oss"]


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_single_prompt(family, cache):
    """Issue 12's first case: one 6-token prompt; with a static cache the keys are the full static length
    and transformers passes no mask for attnforge."""
    eager, ours, reference = models(make_config(family))
    ids, mask = batch([6])
    check_generate(eager, ours, reference, ids, mask, cache_implementation=cache, max_new_tokens=8)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_left_padded_batch(family, cache):
    """Issue 12's second case: left-padded prompts of 6 and 3 tokens (and a third of 9, past the window of 5)."""
    eager, ours, reference = models(make_config(family))
    ids, mask = batch([6, 3, 9])
    check_generate(eager, ours, reference, ids, mask, cache_implementation=cache, max_new_tokens=6)


@pytest.mark.parametrize("implementation", ["attnforge", "attnforge_flash"])
def test_generate_static_cache_both_names(implementation):
    """The flash-class name gets transformers' flash inputs (the 2D mask kept with a static cache)."""
    eager, ours, reference = models(make_config("qwen3"), implementation)
    ids, mask = batch([6, 3])
    check_generate(eager, ours, reference, ids, mask, cache_implementation="static")
    ids, mask = batch([6])
    check_generate(eager, ours, reference, ids, mask, cache_implementation="static")


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_oss"])
def test_generate_static_cache_compiled_fullgraph(family):
    """Static cache + torch.compile of the decode step, fullgraph=True (a graph break would raise), left-padded."""
    eager, ours, reference = models(make_config(family))
    ids, mask = batch([6, 3])
    config = transformers.CompileConfig(backend="aot_eager", fullgraph=True)
    config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    check_generate(eager, ours, reference, ids, mask, cache_implementation="static", compile_config=config)
    assert getattr(ours, "_compiled_call", None) is not None, "generate() did not compile the decode step"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was traced"


@pytest.mark.parametrize("cache", ["offloaded", "offloaded_static"])
def test_generate_offloaded_cache(cache):
    """Offloaded caches (layers moved to the CPU between uses, with CUDA streams): on a GPU only."""
    if not torch.cuda.is_available():
        pytest.skip("transformers offloads caches from a CUDA device; there is none here")
    if cache == "offloaded_static":
        pytest.skip("on the H200 (torch 2.11, transformers 5.17) this test segfaulted in the eager model's "
                    "generate(), before any attnforge call: in torch dynamo's store_user_object_weakrefs, resuming "
                    "in transformers' offloaded cache update (cache_utils.py, its stream handling under the compile "
                    "transformers applies to static caches); see bench/e2e/NOTES.md")
    eager, ours, reference = (model.cuda() for model in models(make_config("gemma2")))
    ids, mask = (x.cuda() for x in batch([6, 3]))
    check_generate(eager, ours, reference, ids, mask, cache_implementation=cache)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_beam_search(family, cache):
    eager, ours, _ = models(make_config(family))
    ids, mask = batch([7, 4])
    options = dict(num_beams=3, max_new_tokens=5, do_sample=False, pad_token_id=0, cache_implementation=cache)
    with torch.no_grad():
        assert torch.equal(ours.generate(ids, attention_mask=mask, **options),
                           eager.generate(ids, attention_mask=mask, **options))


def test_flash_class_preload_resolves_to_attnforge():
    """transformers preloads a flash-class implementation's functions at model init; for "attnforge_flash"
    that is attnforge's FlashAttention-2 API, other names still reach transformers' own loader, and
    registering again does not wrap twice."""
    from transformers import modeling_flash_attention_utils as fa_utils

    from attnforge import flash_attn_interface

    af_transformers.register()
    loaded = fa_utils._lazy_imports("attnforge_flash")
    assert loaded[:3] == (flash_attn_interface.flash_attn_func, flash_attn_interface.flash_attn_varlen_func,
                          flash_attn_interface.flash_attn_with_kvcache)
    wrapper = fa_utils._lazy_imports
    af_transformers.register()
    assert fa_utils._lazy_imports is wrapper
    with pytest.raises(Exception, match="kernels-community|flash|kernel"):
        fa_utils._lazy_imports("unregistered_flash_name")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_right_padded_forward(family):
    """A right-padded batch in one forward pass (scoring, training): real positions match eager."""
    eager, ours, reference = models(make_config(family))
    lengths = [9, 4, 7]
    ids, mask = batch(lengths, side="right")
    with torch.no_grad():
        logits = [model(ids, attention_mask=mask).logits for model in (ours, eager)]
        wanted = torch.cat([reference(ids[row:row + 1, :n]).logits[0] for row, n in enumerate(lengths)])
    real = mask.bool()
    assert_within_budget(logits[0][real], logits[1][real], wanted, "right-padded forward")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_training_step(side):
    """With autograd (training) a padded batch takes the unpadding path: real positions' logits and the
    gradient of a query projection match eager within the float64 budget."""
    eager, ours, reference = models(make_config("qwen3"))
    lengths = [9, 4, 7]
    ids, mask = batch(lengths, side=side)
    real = mask.bool()
    weights = torch.randn(int(real.sum()), VOCAB)
    grads, logits = [], []
    for model in (ours, eager):
        model.train()
        model.zero_grad()
        out = model(ids, attention_mask=mask).logits[real]
        (out * weights).sum().backward()
        logits.append(out.detach())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    reference.train()
    rows, start = [], 0
    for row, n in enumerate(lengths):
        cols = slice(ids.shape[1] - n, None) if side == "left" else slice(0, n)
        out = reference(ids[row:row + 1, cols]).logits[0]
        (out * weights[start:start + n].double()).sum().backward()
        rows.append(out.detach())
        start += n
    assert_within_budget(logits[0], logits[1], torch.cat(rows), "training logits")
    wanted = reference.model.layers[0].self_attn.q_proj.weight.grad
    assert_within_budget(grads[0], grads[1], wanted, "query projection gradient")


@pytest.mark.parametrize("start", [0, 2])
def test_packed_position_ids_restart_at_any_value(start):
    """One packed row whose position_ids restart at `start` (DataCollatorWithFlattening(position_ids_start=2))
    equals the sequences run one by one."""
    eager, ours, reference = models(make_config("llama"))
    lengths = [7, 11, 4]
    sequences = [torch.randint(1, VOCAB, (1, n)) for n in lengths]
    packed = torch.cat(sequences, dim=1)
    position_ids = torch.cat([torch.arange(start, start + n) for n in lengths])[None]
    with torch.no_grad():
        separate = [torch.cat([model(s, position_ids=torch.arange(start, start + s.shape[1])[None]).logits
                               for s in sequences], dim=1) for model in (eager, reference)]
        ours_logits = ours(packed, position_ids=position_ids).logits
    assert_within_budget(ours_logits, separate[0], separate[1], "packed, start %d" % start)


def roberta_models(implementation="attnforge"):
    config = transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64, initializer_range=0.3)
    torch.manual_seed(99)
    eager = transformers.RobertaModel._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    ours = transformers.RobertaModel._from_config(copy.deepcopy(config), attn_implementation=implementation).eval()
    ours.load_state_dict(eager.state_dict())
    return eager, ours, copy.deepcopy(eager).double()


@pytest.mark.parametrize("side", ["left", "right"])
def test_encoder_padded_batch(side):
    """A RoBERTa-like encoder (not causal) with a padded batch: real tokens match eager."""
    eager, ours, reference = roberta_models()
    ids, mask = batch([9, 4, 7], side=side)
    ids = ids.masked_fill(mask == 0, 1)  # RoBERTa's pad id
    with torch.no_grad():
        states = [model(ids, attention_mask=mask).last_hidden_state for model in (ours, eager)]
        wanted = torch.cat([reference(ids[row:row + 1][mask[row:row + 1].bool()][None]).last_hidden_state[0]
                            for row in range(ids.shape[0])])
    real = mask.bool()
    assert_within_budget(states[0][real], states[1][real], wanted, "encoder, %s padding" % side)


@pytest.mark.parametrize("implementation", ["attnforge", "attnforge_flash"])
def test_encoder_packed_positions_start_at_two(implementation):
    """RoBERTa's positions start at padding_idx + 1 = 2: a packed row restarting at 2 equals separate runs."""
    eager, ours, reference = roberta_models(implementation)
    lengths = [6, 9, 3]
    sequences = [torch.randint(3, VOCAB, (1, n)) for n in lengths]
    packed = torch.cat(sequences, dim=1)
    position_ids = torch.cat([torch.arange(2, 2 + n) for n in lengths])[None]
    with torch.no_grad():
        separate = [torch.cat([model(s).last_hidden_state for s in sequences], dim=1) for model in (eager, reference)]
        ours_states = ours(packed, position_ids=position_ids).last_hidden_state
    assert_within_budget(ours_states, separate[0], separate[1], "packed encoder")


def vision_tower(implementation):
    from transformers.models.qwen2_5_vl import configuration_qwen2_5_vl, modeling_qwen2_5_vl

    config = configuration_qwen2_5_vl.Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                                 out_hidden_size=32, patch_size=4, spatial_merge_size=2,
                                                 temporal_patch_size=1, window_size=16, fullatt_block_indexes=[1],
                                                 in_channels=3)
    torch.manual_seed(5)
    model = modeling_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel._from_config(
        config, attn_implementation=implementation)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model.eval()


def test_vision_tower_flash_class_gets_cu_seqlens(monkeypatch):
    """Qwen2.5-VL's vision tower: under "attnforge_flash" each layer makes one call with cu_seq_lens (not one
    per window/image); both names match eager (float64 budget)."""
    grid = torch.tensor([[1, 8, 8], [1, 4, 12], [1, 8, 4]])
    patches = torch.randn(int(grid.prod(-1).sum()), 3 * 4 * 4)
    eager = vision_tower("eager")
    reference = copy.deepcopy(eager).double()
    calls = []
    forward = af_transformers.attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q") is not None)
        return forward(module, query, key, value, attention_mask, **kwargs)

    with torch.no_grad():
        expected = eager(patches, grid_thw=grid)
        expected = getattr(expected, "pooler_output", None) if not torch.is_tensor(expected) else expected
        wanted = reference(patches.double(), grid_thw=grid)
        wanted = wanted if torch.is_tensor(wanted) else wanted.pooler_output
        for implementation in ("attnforge", "attnforge_flash"):
            transformers.AttentionInterface.register(implementation, spy)
            try:
                model = vision_tower(implementation)
                model.load_state_dict(eager.state_dict())
                calls.clear()
                out = model(patches, grid_thw=grid)
            finally:
                transformers.AttentionInterface.register(implementation, forward)
            out = out if torch.is_tensor(out) else out.pooler_output
            assert_within_budget(out, expected, wanted, implementation)
            if implementation == "attnforge_flash":
                assert calls == [True, True], calls
            else:
                assert len(calls) > 2 and not any(calls), calls


def prefilled(family, cache_kind, lengths):
    """(model, cache, step inputs) after a prefill of left-padded prompts: the next decode step's
    input_ids (B, 1), 2D attention mask and position_ids."""
    _, model, _ = models(make_config(family))
    ids, mask = batch(lengths)
    if cache_kind == "static":
        cache = transformers.StaticCache(config=model.config, max_cache_len=ids.shape[1] + 5)
    else:
        cache = transformers.DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, attention_mask=mask, **{CACHE: cache})
    full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    step = dict(input_ids=torch.randint(1, VOCAB, (mask.shape[0], 1)), attention_mask=full_mask,
                position_ids=full_mask.sum(-1, keepdim=True) - 1)
    return model, cache, step


@pytest.mark.skipif(not ops.HAS_CUSTOM_OP, reason="torch < 2.4 has no torch.library.custom_op (no compile path)")
@pytest.mark.parametrize("cache_kind,lengths", [("static", [7, 4]), ("static", [7, 7]), ("dynamic", [7, 7])],
                         ids=["static-padded", "static-unpadded", "dynamic-unpadded"])
def test_decode_step_layer_compiles_fullgraph(cache_kind, lengths):
    """One decoder layer's decode step compiles with fullgraph=True (any graph break raises) and matches the
    layer run eagerly. The layer gets what the model gives it: padding_mask's output (a static cache's
    unfilled rows, padding) or no mask (dynamic cache, no padding: the flash_attn_func path)."""
    model, cache, step = prefilled("llama", cache_kind, lengths)
    layer = model.model.layers[0]
    hidden = model.model.embed_tokens(step["input_ids"])
    position_embeddings = model.model.rotary_emb(hidden, step["position_ids"])
    kv_length, kv_offset = cache.get_mask_sizes(1, 0)
    query_offset = cache.get_query_offset(0)
    layer_mask = af_transformers.padding_mask(2, 1, kv_length, query_offset, kv_offset,
                                              attention_mask=step["attention_mask"].bool() if lengths[0] != lengths[1]
                                              else None)
    assert (layer_mask is None) == (cache_kind == "dynamic")
    twin = copy.deepcopy(cache)  # the step appends to its cache: each run gets the same contents

    def decode(hidden, layer_mask, position_ids, cache):
        out = layer(hidden, attention_mask=layer_mask, position_ids=position_ids, **{CACHE: cache},
                    position_embeddings=position_embeddings)
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        expected = decode(hidden, layer_mask, step["position_ids"], cache)
        torch._dynamo.reset()
        compiled = torch.compile(decode, fullgraph=True, backend="aot_eager")
        got = compiled(hidden, layer_mask, step["position_ids"], twin)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_oss"])
def test_padded_decode_step_has_no_host_sync(family, cache_kind, monkeypatch):
    """A whole padded decode step (mask creation, every layer) calls no .item()/int()/bool()/nonzero/tolist
    on a tensor: each is made to raise while the step runs. (Syncs inside C++ ops, such as boolean
    indexing, are not seen here; the decode path uses none.)"""
    model, cache, step = prefilled(family, cache_kind, [7, 4])

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in a decode step")

    calls = []
    forward = af_transformers.attention_forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, "attnforge", counted)
    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__int__", "__index__", "__float__", "__bool__", "nonzero"):
            patch.setattr(torch.Tensor, name, forbidden)
        patch.setattr(torch, "nonzero", forbidden)
        with torch.no_grad():
            logits = model(**step, **{CACHE: cache}).logits
    assert len(calls) == model.config.num_hidden_layers
    assert torch.isfinite(logits).all()


@pytest.mark.skipif(not ops.HAS_CUSTOM_OP, reason="torch < 2.4 has no torch.library.custom_op (no compile path)")
def test_packed_position_ids_compile_fullgraph():
    """Under torch.compile the packed split uses static shapes (no nonzero): fullgraph traces, and the
    result equals the eager call's (which splits with one host sync)."""
    torch.manual_seed(11)
    lengths = [5, 8, 3]
    query, key, value = torch.randn(1, 4, 16, 16), torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16)
    position_ids = torch.cat([torch.arange(2, 2 + n) for n in lengths])[None]
    module = torch.nn.Module()
    module.is_causal = True

    def attend(query, key, value, position_ids):
        return af_transformers.attention_forward(module, query, key, value, None, position_ids=position_ids)[0]

    with torch.no_grad():
        expected = attend(query, key, value, position_ids)
        torch._dynamo.reset()
        got = torch.compile(attend, fullgraph=True, backend="aot_eager")(query, key, value, position_ids)
        separate = torch.cat([attend(q, k, v, p) for q, k, v, p in zip(
            query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2),
            position_ids.split(lengths, dim=1))], dim=1)
    assert torch.allclose(expected, separate, atol=1e-6)
    assert torch.allclose(got, expected, atol=1e-6)


def test_encoder_decoder_generate_with_padded_sources():
    """BART: encoder self-attention and cross-attention (bidirectional, source padding, keys longer than
    the decoder's queries) and the decoder's causal self-attention with its cache; tokens and per-step
    logits match eager (float64 budget, each source alone without padding)."""
    config = transformers.BartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                     decoder_ffn_dim=128, max_position_embeddings=64, init_std=0.3, pad_token_id=1,
                                     bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
    torch.manual_seed(21)
    eager = transformers.BartForConditionalGeneration._from_config(copy.deepcopy(config),
                                                                   attn_implementation="eager").eval()
    ours = transformers.BartForConditionalGeneration._from_config(copy.deepcopy(config),
                                                                  attn_implementation="attnforge").eval()
    ours.load_state_dict(eager.state_dict())
    reference = copy.deepcopy(eager).double()
    lengths = [11, 5]
    ids, mask = batch(lengths, side="right")
    ids = (ids + 3).clamp(max=VOCAB - 1).masked_fill(mask == 0, 1)
    options = dict(max_new_tokens=5, do_sample=False, num_beams=1, output_logits=True, return_dict_in_generate=True,
                   min_length=0, no_repeat_ngram_size=0)
    with torch.no_grad():
        expected = eager.generate(ids, attention_mask=mask, **options)
        got = ours.generate(ids, attention_mask=mask, **options)
        assert torch.equal(got.sequences, expected.sequences)
        wanted = torch.cat([reference(input_ids=ids[row:row + 1, :n], decoder_input_ids=expected.sequences[row:row + 1])
                            .logits[:, :-1] for row, n in enumerate(lengths)])
    assert_within_budget(torch.stack(got.logits, dim=1), torch.stack(expected.logits, dim=1), wanted,
                         "encoder-decoder generate")
