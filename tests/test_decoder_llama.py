"""genlab.decoder's switches: a Llama-style GPT against transformers' LlamaForCausalLM,
rotary positions, grouped-query attention and its cache, what from_hf refuses.

``pytest -s tests/test_decoder_llama.py`` prints the largest deviation from transformers.
The models are tiny and random (no download).
"""

import pytest
import torch

from genlab.decoder import LLAMA_STYLE, GPT, GPTConfig, apply_rotary, rotary_cos_sin

transformers = pytest.importorskip("transformers")

V, N_POS, C, L, H = 97, 64, 32, 2, 4
D = C // H
HF_ATOL = 1e-5
HF_ATTENTION = "eager"  # transformers' plain matmul attention

# (name, LlamaConfig fields): multi-head, grouped-query (2 groups), multi-query;
# tied and untied heads; several rope_theta values
LLAMA_CASES = {
    "mha-untied": dict(num_key_value_heads=4, tie_word_embeddings=False, rope_theta=10000.0),
    "gqa2-tied": dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500.0),
    "mqa-untied": dict(num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1e6),
    "gqa2-untied-3layers": dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=50.0,
                                num_hidden_layers=3, intermediate_size=40, rms_norm_eps=1e-5),
}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_ids(B, T, seed=0):
    return torch.randint(0, V, (B, T), generator=gen(seed))


def left_padded_mask(lengths, T):
    return (torch.arange(T)[None] >= T - torch.tensor(lengths)[:, None]).long()  # (B, T)


def record(name, ours, theirs):
    deviation = (ours - theirs).abs().max().item()
    print(f"\n[decoder vs transformers Llama] {name}: max |diff| = {deviation:.2e}")
    return deviation


def llama_config(**overrides):
    fields = dict(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H,
                  intermediate_size=56, max_position_embeddings=N_POS, bos_token_id=0,
                  eos_token_id=1, pad_token_id=None, attn_implementation=HF_ATTENTION)
    return transformers.LlamaConfig(**{**fields, **overrides})


def random_llama(**overrides):
    """A tiny LlamaForCausalLM with every parameter drawn from a seed (norm gains near 1)."""
    with torch.random.fork_rng():  # HF's own init uses the global RNG; keep ours untouched
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(llama_config(**overrides)).eval()
    g = gen(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.15 * noise)
    return model


@pytest.fixture(scope="module", params=list(LLAMA_CASES))
def pair(request):
    """(case name, transformers Llama, genlab GPT loaded from it)."""
    hf = random_llama(**LLAMA_CASES[request.param])
    return request.param, hf, GPT.from_hf(hf).eval()


# ----------------------------------------------------------------------------
# parity with transformers


def test_config_takes_the_switches_and_hf_names(pair):
    name, hf, model = pair
    c = model.config
    assert (c.norm, c.position_embedding, c.mlp, c.bias) == ("rmsnorm", "rotary", "swiglu", False)
    assert c.num_key_value_heads == hf.config.num_key_value_heads
    assert c.intermediate_size == hf.config.intermediate_size
    assert c.rms_norm_eps == hf.config.rms_norm_eps
    assert c.rope_theta == LLAMA_CASES[name]["rope_theta"]
    assert c.tie_word_embeddings == hf.config.tie_word_embeddings
    assert (model.lm_head.weight is model.transformer.wte.weight) == c.tie_word_embeddings
    assert "wpe" not in model.transformer
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())
    n_ours = sum(p.numel() for p in model.parameters())
    assert n_ours == sum(p.numel() for p in hf.parameters())


def test_logits_match_transformers(pair):
    name, hf, model = pair
    ids = random_ids(3, 37, seed=2)  # an odd length
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == (3, 37, V)
    assert theirs.abs().max() > 1.0  # the logits are far from uniform: the check has teeth
    assert record(f"{name} logits", ours, theirs) <= HF_ATOL


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_greedy_generation_matches_transformers(pair, use_cache):
    name, hf, model = pair
    prompt = random_ids(2, 7, seed=3)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=33, pad_token_id=0, eos_token_id=None)
    ours = model.generate(prompt, max_new_tokens=33, use_cache=use_cache)
    assert ours.shape == (2, 40)
    assert len(set(ours[:, 7:].flatten().tolist())) > 3  # not one token repeated
    assert torch.equal(ours, theirs)
    print(f"\n[decoder vs transformers Llama] {name} greedy ({'cache' if use_cache else 'no cache'}):"
          f" 2 x 33 tokens identical")


def test_left_padded_logits_and_generation_match_transformers(pair):
    name, hf, model = pair
    T = 11
    ids, mask = random_ids(3, T, seed=4), left_padded_mask([11, 6, 2], T)
    ids = ids.masked_fill(mask == 0, 0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what genlab counts; transformers takes them
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.isfinite(ours).all()
    assert record(f"{name} left-padded logits", ours[real], theirs[real]) <= HF_ATOL
    generated = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=15,
                            pad_token_id=0, eos_token_id=None)
    for use_cache in (True, False):
        assert torch.equal(model.generate(ids, 15, use_cache=use_cache, attention_mask=mask),
                           generated)


def test_untied_gpt2_loads_too():
    config = transformers.GPT2Config(vocab_size=V, n_positions=N_POS, n_embd=C, n_layer=L,
                                     n_head=H, tie_word_embeddings=False,
                                     attn_implementation=HF_ATTENTION)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        hf.lm_head.weight.normal_(0.0, 0.5, generator=gen(5))
    model = GPT.from_hf(hf).eval()
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight is not model.transformer.wte.weight
    ids = random_ids(2, 13, seed=6)
    with torch.no_grad():
        assert record("untied GPT-2 logits", model(ids), hf(ids).logits) <= HF_ATOL


# ----------------------------------------------------------------------------
# rotary positions, the cache, grouped-query attention


def test_rotary_scores_depend_only_on_the_relative_position():
    q, k = torch.randn(2, 1, 1, D, generator=gen(7)).unbind(0)  # (1, 1, D) each

    def score(m, n):  # q turned to position m against k turned to position n
        cos, sin = rotary_cos_sin(torch.tensor([[m, n]]), D, theta=10000.0)  # (1, 1, 2, D)
        q_m = apply_rotary(q[None], cos[..., :1, :], sin[..., :1, :])
        k_n = apply_rotary(k[None], cos[..., 1:, :], sin[..., 1:, :])
        return (q_m * k_n).sum().item()

    for m, n in [(5, 2), (2, 5), (0, 0), (9, 9), (31, 17)]:
        for shift in (1, 7, 40):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert abs(score(5, 2) - score(2, 5)) > 1e-3  # but it does depend on m - n
    cos, sin = rotary_cos_sin(torch.arange(50)[None], D, theta=10000.0)
    x = torch.randn(1, 3, 50, D, generator=gen(8))
    turned = apply_rotary(x, cos, sin)
    torch.testing.assert_close(turned.norm(dim=-1), x.norm(dim=-1))  # turns keep lengths
    torch.testing.assert_close(turned[:, :, 0], x[:, :, 0])  # position 0 is not turned


def llama_style(**overrides):
    fields = dict(vocab_size=V, n_positions=N_POS, n_embd=C, n_layer=L, n_head=H, n_inner=48,
                  n_kv_heads=2, **LLAMA_STYLE)
    return GPT(GPTConfig(**{**fields, **overrides}), seed=0).eval()


@pytest.mark.parametrize("backend", ["torch", "scratch"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cache_continues_the_rotary_positions(backend, n_kv_heads):
    model = llama_style(n_kv_heads=n_kv_heads, attn_backend=backend)
    ids = random_ids(2, 21, seed=9)
    with torch.no_grad():
        full = model(ids)  # (B, T, V)
        out = model(ids[:, :6], use_cache=True)
        steps = [out.logits]
        for t in range(6, 13):  # one token at a time: positions 6, 7, ... from the offset
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
        out = model(ids[:, 13:], past_key_values=out.past_key_values, use_cache=True)  # a chunk
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    # the cache holds the keys after rotation: the full pass's own keys, turned
    x = model.transformer.h[0].ln_1(model.transformer.wte(ids))
    _, (k, _) = model.transformer.h[0].attn(x, is_causal=True, rotary=rotary_cos_sin(
        torch.arange(21)[None], D, model.config.rope_theta))
    torch.testing.assert_close(out.past_key_values[0][0], k, atol=1e-6, rtol=0)


def test_gqa_cache_holds_only_the_kv_heads():
    ids = random_ids(3, 20, seed=10)
    sizes = {}
    for n_kv_heads in (4, 2, 1):
        with torch.no_grad():
            cache = llama_style(n_kv_heads=n_kv_heads)(ids, use_cache=True).past_key_values
        assert len(cache) == L
        for k, v in cache:
            assert k.shape == v.shape == (3, n_kv_heads, 20, D)
        sizes[n_kv_heads] = sum(t.numel() for layer in cache for t in layer)
    assert sizes[4] == 2 * sizes[2] == 4 * sizes[1] == 2 * L * 3 * 20 * C  # n_head / n_kv_heads


@pytest.mark.parametrize("style", ["gpt2", "llama-gqa"])
def test_cache_tensors_own_their_memory_after_the_prompt(style):
    """After the prompt pass k and v used to be views of the fused q, k, v output
    (1.5x the cache's bytes for GPT-2); now each is a tensor of its own."""
    model = (GPT(GPTConfig(vocab_size=V, n_positions=N_POS, n_embd=C, n_layer=L, n_head=H)).eval()
             if style == "gpt2" else llama_style())
    with torch.no_grad():
        cache = model(random_ids(2, 9, seed=11), use_cache=True).past_key_values
    tensors = [t for layer in cache for t in layer]
    assert all(t.is_contiguous() for t in tensors)
    storage = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    assert len(storage) == len(tensors)
    assert sum(storage.values()) == sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_backends_agree_with_gqa_and_padding(n_kv_heads):
    """torch's kernel (enable_gqa without a mask, kv heads copied with one) against the
    from-scratch matmuls (kv heads copied), with and without left padding."""
    fused, scratch = (llama_style(n_kv_heads=n_kv_heads, attn_backend=backend)
                      for backend in ("torch", "scratch"))
    ids = random_ids(3, 16, seed=12)
    for mask in (None, left_padded_mask([16, 9, 2], 16)):
        with torch.no_grad():
            torch.testing.assert_close(scratch(ids, mask), fused(ids, mask), atol=1e-5, rtol=0)
        assert torch.equal(scratch.generate(ids, 20, attention_mask=mask),
                           fused.generate(ids, 20, attention_mask=mask))


def test_gradients_are_finite_with_padding():
    model = llama_style(resid_pdrop=0.1, attn_pdrop=0.1).train()
    ids, mask = random_ids(3, 16, seed=13), left_padded_mask([16, 5, 1], 16)
    labels = ids.masked_fill(mask == 0, -100)
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["lm_head.weight"].abs().sum() > 0 and grads["transformer.wte.weight"].abs().sum() > 0


def test_switches_build_the_named_modules():
    model = llama_style()
    block = model.transformer.h[0]
    assert isinstance(block.ln_1, torch.nn.RMSNorm) and isinstance(model.transformer.ln_f,
                                                                     torch.nn.RMSNorm)
    assert block.attn.c_attn.weight.shape == (C + 2 * 2 * D, C)  # q | k | v, 2 kv heads
    assert block.mlp.c_fc.weight.shape == (2 * 48, C)  # gate | up
    assert block.mlp.c_proj.weight.shape == (C, 48)
    layernorm_no_bias = GPT(GPTConfig(vocab_size=V, n_embd=C, n_head=H, bias=False))
    assert layernorm_no_bias.transformer.ln_f.bias is None
    assert not any(n.endswith("bias") for n, _ in layernorm_no_bias.named_parameters())


# ----------------------------------------------------------------------------
# what from_hf refuses, bad configs


@pytest.mark.parametrize("field, value", [
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    ("attention_bias", True),
    ("mlp_bias", True),
    ("hidden_act", "gelu"),
    ("head_dim", 16),
])
def test_from_hf_refuses_llama_configs_it_cannot_represent(field, value):
    with torch.random.fork_rng():
        hf = transformers.LlamaForCausalLM(llama_config(**{field: value}))
    with pytest.raises(ValueError, match=f"LlamaConfig.{field}="):
        GPT.from_hf(hf)


def test_from_hf_needs_the_head_of_an_untied_llama():
    with torch.random.fork_rng():
        tied = transformers.LlamaModel(llama_config(tie_word_embeddings=True))
        untied = transformers.LlamaModel(llama_config(tie_word_embeddings=False))
    model = GPT.from_hf(tied)  # a bare LlamaModel: the tied head is its embeddings
    assert torch.equal(model.lm_head.weight, tied.embed_tokens.weight)
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        GPT.from_hf(untied)


def test_from_hf_refuses_other_model_types():
    config = transformers.BertConfig(vocab_size=V, hidden_size=C, num_hidden_layers=1,
                                     num_attention_heads=H, intermediate_size=64)
    with pytest.raises(ValueError, match="model types \\['gpt2', 'llama'\\], got 'bert'"):
        GPT.from_hf(transformers.BertModel(config))


@pytest.mark.parametrize("bad, message", [
    (dict(n_kv_heads=3), "n_kv_heads=3 must divide n_head=4"),
    (dict(n_kv_heads=0), "n_kv_heads must be None or a positive int"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(position_embedding="alibi"), "position_embedding must be one of"),
    (dict(mlp="geglu"), "mlp must be one of"),
    (dict(rope_theta=0.0), "rope_theta must be > 0"),
    (dict(n_embd=36, n_head=12), "head dimension n_embd // n_head = 3 must be even"),
    (dict(bias=1), "bias must be a bool"),
])
def test_bad_switches_raise(bad, message):
    fields = dict(vocab_size=V, n_positions=N_POS, n_embd=C, n_layer=L, n_head=H, **LLAMA_STYLE)
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**fields, **bad})


# ----------------------------------------------------------------------------
# the benchmark's own code runs (bench/llama_step.py, at a toy size; timings are not checked)


def test_llama_benchmark_runs_at_toy_size():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "llama_step.py"
    command = [sys.executable, str(script), "--dim", "32", "--layers", "1", "--heads", "4",
               "--kv-heads", "2", "--vocab", "50", "--batch", "2", "--seq", "12", "--prompt", "4",
               "--new", "6", "--repeats", "1", "--threads", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # it exits 1 on a loss or token mismatch
    assert "identical tokens: True" in proc.stdout
    assert proc.stdout.count("target ") == 2
