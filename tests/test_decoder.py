"""genlab.decoder: GPT against transformers' GPT-2, the KV cache, generation, sampling filters.

``pytest -s tests/test_decoder.py`` prints the largest deviation from transformers.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.decoder import GPT, GPTConfig, GPTOutput, filter_logits, lm_loss

transformers = pytest.importorskip("transformers")

V, N_POS, C, L, H = 100, 64, 32, 2, 4
TINY = dict(vocab_size=V, n_positions=N_POS, n_embd=C, n_layer=L, n_head=H)
HF_ATOL = 1e-5
HF_ATTENTION = "eager"  # transformers' plain matmul attention ("sdpa" agrees as well)
BACKENDS = pytest.mark.parametrize("backend", ["torch", "scratch"])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_ids(B, T, seed=0):
    return torch.randint(0, V, (B, T), generator=gen(seed))


def record(name, ours, theirs):
    deviation = (ours - theirs).abs().max().item()
    print(f"\n[decoder vs transformers] {name}: max |diff| = {deviation:.2e}")
    return deviation


def right_padded_mask(lengths, T):
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()  # (B, T)


def left_padded_mask(lengths, T):
    return right_padded_mask(lengths, T).flip(-1)  # (B, T)


@pytest.fixture(scope="module")
def hf_model():
    """A tiny random GPT-2 with every parameter (biases, LayerNorms too) drawn from a seed."""
    config = transformers.GPT2Config(**TINY, bos_token_id=0, eos_token_id=1, pad_token_id=0,
                                     attn_implementation=HF_ATTENTION)
    with torch.random.fork_rng():  # HF's own init uses the global RNG; keep ours untouched
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).eval()
    g = gen(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_gain = name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
            p.copy_(1.0 + 0.1 * noise if is_norm_gain else 0.1 * noise)
    return model


@pytest.fixture(scope="module")
def model(hf_model):
    return GPT.from_hf(hf_model).eval()


def tiny(**overrides):
    return GPT(GPTConfig(**{**TINY, **overrides}), seed=0).eval()


# ----------------------------------------------------------------------------
# parity with transformers


def test_state_dict_keys_match_transformers(model, hf_model):
    assert list(model.state_dict()) == list(hf_model.state_dict())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.config.activation_function == "gelu_new"
    assert model.config.layer_norm_epsilon == 1e-5


def test_logits_match_transformers(model, hf_model):
    ids = random_ids(3, 40)
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(ids).logits
    assert ours.shape == (3, 40, V)
    assert record("logits", ours, theirs) < HF_ATOL


@BACKENDS
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_logits_match_transformers(model, hf_model, backend, side):
    lengths, T = [40, 25, 7], 40
    ids = random_ids(3, T, seed=1)
    mask = (right_padded_mask if side == "right" else left_padded_mask)(lengths, T)
    ours_model = model if backend == "torch" else tiny(attn_backend="scratch")
    ours_model.load_state_dict(model.state_dict())
    # transformers' plain forward counts positions 0..T-1; with left padding pass them as ours
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = ours_model(ids, attention_mask=mask)
        theirs = hf_model(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.isfinite(ours).all()
    assert record(f"{side}-padded logits ({backend})", ours[real], theirs[real]) < HF_ATOL


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_greedy_generation_matches_transformers(model, hf_model, use_cache):
    prompt = random_ids(2, 8, seed=2)
    theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                               max_new_tokens=32, pad_token_id=0, eos_token_id=None)
    ours = model.generate(prompt, max_new_tokens=32, use_cache=use_cache)
    assert ours.shape == (2, 40)
    assert torch.equal(ours, theirs)


def test_left_padded_greedy_generation_matches_transformers(model, hf_model):
    T = 10
    prompt, mask = random_ids(3, T, seed=3), left_padded_mask([10, 6, 3], T)
    prompt = prompt.masked_fill(mask == 0, 0)
    theirs = hf_model.generate(prompt, attention_mask=mask, do_sample=False,
                               max_new_tokens=20, pad_token_id=0, eos_token_id=None)
    for use_cache in (True, False):
        ours = model.generate(prompt, 20, use_cache=use_cache, attention_mask=mask)
        assert torch.equal(ours, theirs)


def test_from_hf_refuses_what_it_cannot_load(hf_model):
    class Truncated:  # a GPT-2 whose checkpoint lost a layer's MLP
        config = hf_model.config

        def state_dict(self):
            return {k: v for k, v in hf_model.state_dict().items() if "h.1.mlp" not in k}

        def parameters(self):
            return hf_model.parameters()

    with pytest.raises(ValueError, match=r"missing \['transformer.h.1.mlp.c_fc.bias'"):
        GPT.from_hf(Truncated())
    other = transformers.GPT2Config(**TINY, bos_token_id=0, eos_token_id=1,
                                    scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        GPT.from_hf(transformers.GPT2LMHeadModel(other))


# ----------------------------------------------------------------------------
# KV cache, causality, backends


@BACKENDS
def test_cache_gives_the_same_logits_step_by_step(model, backend):
    gpt = tiny(attn_backend=backend)
    gpt.load_state_dict(model.state_dict())
    ids = random_ids(2, 24, seed=4)
    with torch.no_grad():
        full = gpt(ids)  # (B, T, V)
        out = gpt(ids[:, :5], use_cache=True)  # the prompt pass
        steps = [out.logits]
        for t in range(5, 15):  # one token at a time
            out = gpt(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
        out = gpt(ids[:, 15:], past_key_values=out.past_key_values, use_cache=True)  # a chunk
        steps.append(out.logits)
    k, v = out.past_key_values[0]
    assert k.shape == v.shape == (2, H, 24, C // H)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_cache_with_padding_and_positions_continue(model):
    ids, mask = random_ids(3, 12, seed=5), left_padded_mask([12, 8, 3], 12)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        out = model(ids[:, :9], attention_mask=mask[:, :9], use_cache=True)
        last = model(ids[:, 9:], attention_mask=mask, past_key_values=out.past_key_values,
                     use_cache=True)
    real = mask[:, 9:].bool()
    torch.testing.assert_close(last.logits[real], full[:, 9:][real], atol=1e-5, rtol=0)


@BACKENDS
def test_future_tokens_do_not_change_past_logits(model, backend):
    gpt = tiny(attn_backend=backend)
    gpt.load_state_dict(model.state_dict())
    ids = random_ids(2, 20, seed=6)
    changed = ids.clone()
    changed[:, 12:] = random_ids(2, 8, seed=7)
    with torch.no_grad():
        a, b = gpt(ids), gpt(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], atol=1e-6, rtol=0)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3


def test_backends_agree(model):
    scratch = tiny(attn_backend="scratch")
    scratch.load_state_dict(model.state_dict())
    ids, mask = random_ids(3, 16, seed=8), left_padded_mask([16, 9, 2], 16)
    with torch.no_grad():
        torch.testing.assert_close(scratch(ids), model(ids), atol=1e-5, rtol=0)
        torch.testing.assert_close(scratch(ids, mask), model(ids, mask), atol=1e-5, rtol=0)
    assert torch.equal(scratch.generate(ids[:, :4], 20), model.generate(ids[:, :4], 20))


def test_generation_runs_in_eval_mode_and_restores_it():
    gpt = tiny(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5).train()
    prompt = random_ids(1, 4, seed=9)
    a, b = gpt.generate(prompt, 10), gpt.generate(prompt, 10)
    assert torch.equal(a, b) and gpt.training


# ----------------------------------------------------------------------------
# loss and gradients


def test_lm_loss_is_the_shifted_cross_entropy():
    logits = torch.randn(2, 6, V, generator=gen(10))
    targets = random_ids(2, 6, seed=11)
    targets[0, 3] = targets[1, 5] = -100
    terms = [-F.log_softmax(logits[b, t], -1)[targets[b, t + 1]]
             for b in range(2) for t in range(5) if targets[b, t + 1] != -100]
    torch.testing.assert_close(lm_loss(logits, targets), torch.stack(terms).mean())


def test_labels_give_the_loss(model):
    ids = random_ids(2, 10, seed=12)
    out = model(ids, labels=ids)
    assert isinstance(out, GPTOutput) and out.past_key_values is None
    torch.testing.assert_close(out.loss, lm_loss(out.logits, ids))
    assert isinstance(model(ids), torch.Tensor)


def test_uniform_model_has_loss_log_v():
    ids = random_ids(4, 32, seed=13)
    gpt = tiny()
    fresh = gpt(ids, labels=ids).loss.item()
    assert abs(fresh - math.log(V)) < 0.05  # small init: nearly uniform predictions
    with torch.no_grad():
        gpt.transformer.wte.weight.zero_()  # tied head: every logit is 0
    assert gpt(ids, labels=ids).loss.item() == pytest.approx(math.log(V), abs=1e-6)


@BACKENDS
def test_gradients_are_finite_with_padding(backend):
    gpt = tiny(attn_backend=backend, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1).train()
    ids, mask = random_ids(3, 16, seed=14), left_padded_mask([16, 5, 1], 16)
    labels = ids.masked_fill(mask == 0, -100)
    gpt(ids, attention_mask=mask, labels=labels).loss.backward()
    grads = [p.grad for p in gpt.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert gpt.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0


def test_init_is_seeded_and_scales_the_residual_projections():
    config = GPTConfig(n_embd=128, n_layer=8, n_head=4)
    a, b, c = GPT(config, seed=0), GPT(config, seed=0), GPT(config, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)
    block = a.transformer.h[0]
    assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert block.attn.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)


# ----------------------------------------------------------------------------
# sampling


def test_filter_logits_temperature_scales():
    logits = torch.randn(3, V, generator=gen(15))
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits / 0.5)
    assert torch.equal(filter_logits(logits), logits)


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.randn(4, V, generator=gen(16))
    kept = torch.isfinite(filter_logits(logits, top_k=5))
    assert (kept.sum(-1) == 5).all()
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(5).indices, True))
    assert (torch.isfinite(filter_logits(torch.zeros(2, V), top_k=3)).sum(-1) == 3).all()


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    cases = [(0.1, [1]), (0.5, [1]), (0.75, [1, 3]), (0.81, [1, 2, 3]), (1.0, [0, 1, 2, 3])]
    for top_p, expected in cases:
        kept = torch.isfinite(filter_logits(logits, top_p=top_p))[0].nonzero().flatten()
        assert kept.tolist() == expected, top_p
    # property on random rows: the kept set is the m most likely, m minimal with mass >= top_p
    logits = torch.randn(20, V, generator=gen(17)) * 3
    for top_p in (0.3, 0.9):
        kept = torch.isfinite(filter_logits(logits, top_p=top_p))
        sorted_probs = F.softmax(logits, -1).sort(-1, descending=True).values
        m = (sorted_probs.cumsum(-1) < top_p).sum(-1) + 1
        assert torch.equal(kept.sum(-1), m)
        smallest_kept = logits.masked_fill(~kept, float("inf")).min(-1).values
        largest_dropped = logits.masked_fill(kept, float("-inf")).max(-1).values
        assert (smallest_kept > largest_dropped).all()


def test_filters_compose():
    logits = torch.randn(5, V, generator=gen(18))
    both = filter_logits(logits, temperature=0.7, top_k=10, top_p=0.5)
    step = filter_logits(filter_logits(logits, temperature=0.7, top_k=10), top_p=0.5)
    assert torch.equal(both, step)
    assert (torch.isfinite(both).sum(-1) <= 10).all() and (torch.isfinite(both).sum(-1) >= 1).all()


def test_seeded_sampling_is_reproducible_and_ignores_global_rng(model):
    prompt = random_ids(2, 4, seed=19)
    state = torch.get_rng_state()

    def sample(seed, global_seed):
        torch.manual_seed(global_seed)
        return model.generate(prompt, 30, do_sample=True, temperature=1.5, top_k=50, top_p=0.95,
                              generator=gen(seed))

    try:
        a, b, c = sample(0, global_seed=1), sample(0, global_seed=2), sample(1, global_seed=1)
        before = torch.get_rng_state()
        model.generate(prompt, 10, do_sample=True)
        assert torch.equal(before, torch.get_rng_state())  # global RNG untouched
    finally:
        torch.set_rng_state(state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    greedy = model.generate(prompt, 10)
    top_1 = model.generate(prompt, 10, do_sample=True, top_k=1, generator=gen(3))
    assert torch.equal(top_1, greedy)


def test_eos_stops_generation(model):
    prompt = random_ids(2, 4, seed=20)
    greedy = model.generate(prompt, 20)
    eos = greedy[0, 6].item()  # a token row 0 emits early
    out = model.generate(prompt, 20, eos_token_id=eos)
    first = (out[0, 4:] == eos).nonzero()[0].item() + 4
    assert (out[0, first:] == eos).all()
    assert out.shape[1] <= 24


# ----------------------------------------------------------------------------
# errors


def test_too_long_sequences_raise(model):
    with pytest.raises(ValueError, match="n_positions=64"):
        model(random_ids(1, N_POS + 1))
    with pytest.raises(ValueError, match="n_positions=64"):
        model.generate(random_ids(1, 40), max_new_tokens=25)
    out = model(random_ids(1, 60), use_cache=True)
    with pytest.raises(ValueError, match="cache 60"):
        model(random_ids(1, 5), past_key_values=out.past_key_values)


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=30), "divisible by n_head"),
    (dict(n_layer=0), "n_layer must be a positive int"),
    (dict(activation_function="relu"), "activation_function"),
    (dict(attn_backend="flash"), "attn_backend"),
    (dict(attn_pdrop=1.0), "attn_pdrop"),
    (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon"),
])
def test_bad_config_raises(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **bad})


def test_bad_inputs_raise(model):
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(random_ids(2, 5), attention_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(torch.zeros(V), temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(random_ids(1, 3), 5, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(torch.zeros(V), top_k=0)
