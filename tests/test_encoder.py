"""genlab.encoder: BERT against transformers, both attention backends, MLM masking, NSP pairs.

``pytest -s tests/test_encoder.py`` prints the largest deviation from transformers.
"""

import dataclasses

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from genlab.encoder import (
    IGNORE_INDEX,
    BertConfig,
    BertForPreTraining,
    BertModel,
    BertPreTrainingOutput,
    make_nsp_pairs,
    mask_tokens,
)

transformers = pytest.importorskip("transformers")

PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4  # genlab.data's layout of special ids
SPECIALS = (PAD, CLS, SEP, MASK, UNK)
V, T_MAX = 100, 40
TINY = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=T_MAX, type_vocab_size=2)
HF_ATOL = 1e-5  # float32
BACKENDS = pytest.mark.parametrize("backend", ["torch", "scratch"])
DEVIATIONS = {}  # check name -> largest |genlab - transformers| seen


def gen(seed):
    return torch.Generator().manual_seed(seed)


def record(name, ours, theirs):
    deviation = (ours - theirs).abs().max().item()
    DEVIATIONS[name] = max(deviation, DEVIATIONS.get(name, 0.0))
    print(f"\n[encoder vs transformers] {name}: max |diff| = {deviation:.2e}")
    return deviation


@pytest.fixture(scope="module", autouse=True)
def report_largest_deviation():
    yield
    if DEVIATIONS:
        worst = max(DEVIATIONS, key=DEVIATIONS.get)
        print(f"\n[encoder vs transformers] largest deviation (float32): "
              f"{DEVIATIONS[worst]:.2e} in {worst}")


def hf_bert(kind="BertForPreTraining", attn_implementation="eager", seed=1, model_kwargs=None, **config):
    """A tiny random transformers BERT; every parameter (biases, LayerNorms too) drawn from a seed."""
    hf_config = transformers.BertConfig(**{**TINY, **config})
    hf_config._attn_implementation = attn_implementation
    with torch.random.fork_rng():  # HF's own init uses the global RNG; keep it untouched
        model = getattr(transformers, kind)(hf_config, **(model_kwargs or {})).eval()
    g = gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("LayerNorm.weight")
                    else 0.1 * noise if name.endswith("bias") else 0.2 * noise)
    return model


def padded_batch(lengths=(12, 9, 5, 1), T=12, seed=0):
    """Rows of different lengths, right-padded with PAD; token type 1 on each row's second half."""
    lengths = torch.tensor(lengths)
    positions = torch.arange(T)[None]  # (1, T)
    attention_mask = (positions < lengths[:, None]).long()  # (B, T)
    input_ids = torch.randint(5, V, (len(lengths), T), generator=gen(seed))
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    input_ids[:, 0] = CLS
    token_type_ids = ((positions >= (lengths[:, None] + 1) // 2) & (attention_mask == 1)).long()
    return input_ids, token_type_ids, attention_mask


@pytest.fixture(scope="module")
def hf_pretraining():
    return hf_bert()


def tiny(cls=BertModel, seed=0, **overrides):
    return cls(BertConfig(**{**TINY, "hidden_dropout_prob": 0.0,
                             "attention_probs_dropout_prob": 0.0, **overrides}), seed=seed).eval()


# ----------------------------------------------------------------------------
# parity with transformers


def test_state_dict_keys_match_transformers(hf_pretraining):
    ours = BertForPreTraining(BertConfig(**TINY)).state_dict()
    assert list(ours) == list(hf_pretraining.state_dict())
    base = BertModel(BertConfig(**TINY)).state_dict()
    assert list(base) == list(hf_pretraining.bert.state_dict())
    for name, tensor in hf_pretraining.state_dict().items():
        assert ours[name].shape == tensor.shape, name


@BACKENDS
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_bert_model_matches_transformers(backend, attn_implementation):
    hf = hf_bert("BertModel", attn_implementation=attn_implementation)
    model = BertModel.from_hf(hf, attn_backend=backend)
    assert not model.training and model.config.attn_backend == backend
    input_ids, token_type_ids, attention_mask = padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        hidden, pooled = model(input_ids, token_type_ids, attention_mask)
    assert hidden.shape == (4, 12, 32) and pooled.shape == (4, 32)
    # every position is compared, padded ones included (they attend to the real tokens)
    name = f"BertModel {backend} vs HF {attn_implementation}"
    assert record(f"{name}: last_hidden_state", hidden, expected.last_hidden_state) < HF_ATOL
    assert record(f"{name}: pooled_output", pooled, expected.pooler_output) < HF_ATOL


@BACKENDS
def test_defaults_and_tanh_gelu_match_transformers(backend):
    hf = hf_bert("BertModel", hidden_act="gelu_new")
    model = BertModel.from_hf(hf, attn_backend=backend)
    assert model.config.hidden_act == "gelu_new"
    input_ids = torch.randint(0, V, (3, T_MAX), generator=gen(2))  # full length, no mask, no types
    with torch.no_grad():
        expected = hf(input_ids=input_ids)
        hidden, pooled = model(input_ids)
    assert record(f"gelu_new {backend}: last_hidden_state", hidden, expected.last_hidden_state) < HF_ATOL
    assert record(f"gelu_new {backend}: pooled_output", pooled, expected.pooler_output) < HF_ATOL


@BACKENDS
def test_pretraining_heads_and_loss_match_transformers(backend, hf_pretraining):
    model = BertForPreTraining.from_hf(hf_pretraining, attn_backend=backend)
    input_ids, token_type_ids, attention_mask = padded_batch()
    masked_ids, labels = mask_tokens(input_ids, V, MASK, SPECIALS, mlm_probability=0.3, generator=gen(3))
    assert (labels != IGNORE_INDEX).any()
    next_sentence_label = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        expected = hf_pretraining(input_ids=masked_ids, token_type_ids=token_type_ids,
                                  attention_mask=attention_mask, labels=labels,
                                  next_sentence_label=next_sentence_label)
        out = model(masked_ids, token_type_ids, attention_mask, labels=labels,
                    next_sentence_label=next_sentence_label)
    assert isinstance(out, BertPreTrainingOutput)
    assert out.prediction_logits.shape == (4, 12, V) and out.seq_relationship_logits.shape == (4, 2)
    name = f"BertForPreTraining {backend}"
    assert record(f"{name}: prediction_logits", out.prediction_logits, expected.prediction_logits) < HF_ATOL
    assert record(f"{name}: seq_relationship_logits", out.seq_relationship_logits,
                  expected.seq_relationship_logits) < HF_ATOL
    assert record(f"{name}: loss", out.loss, expected.loss) < HF_ATOL
    torch.testing.assert_close(out.loss, out.mlm_loss + out.nsp_loss)


def test_losses_are_optional_and_separate(hf_pretraining):
    model = BertForPreTraining.from_hf(hf_pretraining)
    input_ids, token_type_ids, attention_mask = padded_batch()
    with torch.no_grad():
        plain = model(input_ids, token_type_ids, attention_mask)
        nsp_only = model(input_ids, token_type_ids, attention_mask, next_sentence_label=torch.zeros(4).long())
        no_target = model(input_ids, token_type_ids, attention_mask,
                          labels=torch.full_like(input_ids, IGNORE_INDEX))
    assert plain.loss is None and plain.mlm_loss is None and plain.nsp_loss is None
    assert nsp_only.mlm_loss is None and torch.equal(nsp_only.loss, nsp_only.nsp_loss)
    assert no_target.mlm_loss == 0  # nothing selected: 0, not NaN


def test_from_hf_takes_the_base_of_a_model_with_heads(hf_pretraining):
    body = BertModel.from_hf(hf_pretraining)
    full = BertForPreTraining.from_hf(hf_pretraining)
    for name, tensor in full.bert.state_dict().items():
        assert torch.equal(body.state_dict()[name], tensor), name


def test_from_hf_lists_mismatched_keys():
    hf = hf_bert("BertModel", model_kwargs=dict(add_pooling_layer=False))
    with pytest.raises(ValueError, match=r"missing in transformers: pooler\.dense\.bias"):
        BertModel.from_hf(hf)
    hf = hf_bert("BertModel", intermediate_size=48)
    with pytest.raises(ValueError, match=r"shape of encoder\.layer\.0\.intermediate\.dense\.weight"):
        BertModel.from_hf(hf, intermediate_size=64)  # a config override that contradicts the weights


def test_from_hf_refuses_what_genlab_cannot_represent(hf_pretraining):
    with pytest.raises(ValueError, match="is_decoder"):
        BertModel.from_hf(hf_bert("BertModel", is_decoder=True))
    untied = hf_bert()
    word_embeddings = untied.bert.embeddings.word_embeddings.weight
    untied.cls.predictions.decoder.weight = torch.nn.Parameter(word_embeddings.detach() + 1.0)
    with pytest.raises(ValueError, match="not tied"):
        BertForPreTraining.from_hf(untied)


def test_from_hf_follows_dtype_and_mode():
    hf = hf_bert("BertModel").double().train()
    model = BertModel.from_hf(hf)
    assert model.training and next(model.parameters()).dtype == torch.float64
    input_ids, token_type_ids, attention_mask = padded_batch()
    with torch.no_grad():
        expected = hf.eval()(input_ids=input_ids, token_type_ids=token_type_ids,
                             attention_mask=attention_mask).last_hidden_state
        hidden, _ = model.eval()(input_ids, token_type_ids, attention_mask)
    assert record("BertModel float64: last_hidden_state", hidden, expected) < 1e-12


# ----------------------------------------------------------------------------
# backends, masks, properties


@pytest.mark.parametrize("cls", [BertModel, BertForPreTraining])
def test_backends_agree(cls):
    scratch, fused = tiny(cls, attn_backend="scratch"), tiny(cls, attn_backend="torch")
    input_ids, token_type_ids, attention_mask = padded_batch(lengths=(12, 7, 0))  # one row all padding
    with torch.no_grad():
        a, b = scratch(input_ids, token_type_ids, attention_mask), fused(input_ids, token_type_ids, attention_mask)
    pairs = (zip(a, b) if cls is BertModel else
             [(a.prediction_logits, b.prediction_logits), (a.seq_relationship_logits, b.seq_relationship_logits)])
    for x, y in pairs:
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


@BACKENDS
def test_fully_padded_rows_are_finite_with_finite_gradients(backend):
    model = tiny(BertForPreTraining, attn_backend=backend).train()
    input_ids, token_type_ids, attention_mask = padded_batch(lengths=(12, 0))
    masked_ids, labels = mask_tokens(input_ids, V, MASK, SPECIALS, generator=gen(0))
    out = model(masked_ids, token_type_ids, attention_mask, labels=labels,
                next_sentence_label=torch.tensor([0, 1]))
    assert torch.isfinite(out.prediction_logits).all() and torch.isfinite(out.seq_relationship_logits).all()
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


@BACKENDS
def test_padding_does_not_change_the_real_positions(backend):
    model = tiny(attn_backend=backend)
    input_ids, token_type_ids, attention_mask = padded_batch(lengths=(12, 5))
    with torch.no_grad():
        hidden, pooled = model(input_ids, token_type_ids, attention_mask)
        alone_hidden, alone_pooled = model(input_ids[1:, :5], token_type_ids[1:, :5])
        other_padding = input_ids.clone()
        other_padding[1, 5:] = 42  # the ids under the padding do not matter
        hidden_2, _ = model(other_padding, token_type_ids, attention_mask)
    torch.testing.assert_close(hidden[1, :5], alone_hidden[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[1], alone_pooled[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden_2[:, :5], hidden[:, :5], atol=1e-6, rtol=0)


def test_attention_is_bidirectional():
    model = tiny()
    input_ids = torch.randint(5, V, (1, 8), generator=gen(4))
    changed_last = input_ids.clone()
    changed_last[0, -1] = (changed_last[0, -1] + 1) % V
    with torch.no_grad():
        first, _ = model(input_ids)
        second, _ = model(changed_last)
    assert (first[0, 0] - second[0, 0]).abs().max() > 1e-4  # position 0 sees the last token


def test_decoder_is_tied_to_word_embeddings(hf_pretraining):
    for model in (tiny(BertForPreTraining), BertForPreTraining.from_hf(hf_pretraining),
                  tiny(BertForPreTraining).to(torch.float64)):
        decoder = model.cls.predictions.decoder
        embeddings = model.bert.embeddings.word_embeddings.weight
        assert decoder.weight is embeddings and decoder.weight.data_ptr() == embeddings.data_ptr()
        assert decoder.bias is model.cls.predictions.bias
    model = tiny(BertForPreTraining).train()
    input_ids, token_type_ids, attention_mask = padded_batch()
    out = model(input_ids, token_type_ids, attention_mask, labels=input_ids.masked_fill(input_ids == PAD, -100))
    out.loss.backward()
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[7, 0] += 1.0
    assert model.cls.predictions.decoder.weight[7, 0] == model.bert.embeddings.word_embeddings.weight[7, 0]
    n_shared = sum(p.numel() for p in model.parameters())  # parameters() lists a tied tensor once
    n_listed = sum(t.numel() for t in model.state_dict().values())
    assert n_listed - n_shared == V * 32 + V  # decoder.weight and decoder.bias are aliases


def test_seeded_initialisation():
    assert all(torch.equal(a, b) for a, b in zip(tiny(seed=3).state_dict().values(),
                                                 tiny(seed=3).state_dict().values()))
    assert not torch.equal(tiny(seed=3).pooler.dense.weight, tiny(seed=4).pooler.dense.weight)
    body, full = tiny(seed=5), tiny(BertForPreTraining, seed=5)
    for name, tensor in body.state_dict().items():
        assert torch.equal(full.bert.state_dict()[name], tensor), name
    assert (body.embeddings.word_embeddings.weight[PAD] == 0).all()
    assert (full.cls.predictions.bias == 0).all()


def test_dropout_is_seeded_by_the_generator():
    model = tiny(BertForPreTraining, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    input_ids, token_type_ids, attention_mask = padded_batch()
    run = lambda seed: model(input_ids, token_type_ids, attention_mask,  # noqa: E731
                             generator=gen(seed)).prediction_logits
    with torch.no_grad():
        assert torch.equal(run(0), run(0))
        assert not torch.equal(run(0), run(1))
        model.eval()
        assert torch.equal(run(0), run(1))  # no dropout in eval mode


def test_torch_backend_drops_a_mask_without_padding_and_keeps_one_with_padding():
    """The fused path skips an all-ones attention_mask (faster kernel): same result as the
    scratch backend, which always applies the mask; with padding both mask."""
    for lengths in ((6, 6), (6, 3)):
        input_ids, token_type_ids, attention_mask = padded_batch(lengths=lengths, T=6)
        fused, scratch = tiny(attn_backend="torch"), tiny(attn_backend="scratch")
        with torch.no_grad():
            got = fused(input_ids, token_type_ids, attention_mask)[0]
            want = scratch(input_ids, token_type_ids, attention_mask)[0]
        real = attention_mask.bool()
        torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_scratch_backend_traces_to_explicit_matmuls():
    """make_fx sees bmm + softmax for "scratch", one fused kernel for "torch" (FLOP counting)."""
    input_ids, _, attention_mask = padded_batch(lengths=(6, 3), T=6)
    allowed = attention_mask.bool()  # a bool mask skips padding_mask's value check (not traceable)
    ops = {}
    for backend in ("scratch", "torch"):
        model = tiny(attn_backend=backend)
        graph = make_fx(lambda ids, mask: model(ids, None, mask))(input_ids, allowed).graph  # noqa: B023
        ops[backend] = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    assert not any("scaled_dot_product" in op for op in ops["scratch"])
    assert any("bmm" in op for op in ops["scratch"]) and any("softmax" in op for op in ops["scratch"])
    assert any("scaled_dot_product" in op for op in ops["torch"])


# ----------------------------------------------------------------------------
# configuration and input errors


@pytest.mark.parametrize("bad, message", [
    (dict(hidden_size=30), "not divisible"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(vocab_size=2.5), "vocab_size"),
    (dict(hidden_act="swish"), "hidden_act"),
    (dict(attn_backend="flash"), "attn_backend"),
    (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
    (dict(attention_probs_dropout_prob=-0.1), "attention_probs_dropout_prob"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(pad_token_id=V), "pad_token_id"),
])
def test_bad_config_raises(bad, message):
    with pytest.raises(ValueError, match=message):
        BertConfig(**{**TINY, **bad})


def test_config_defaults_and_from_hf():
    config = BertConfig()
    assert config.layer_norm_eps == 1e-12 and config.hidden_act == "gelu"
    assert config.initializer_range == 0.02 and config.pad_token_id == 0 and config.attn_backend == "torch"
    hf_config = transformers.BertConfig(**TINY)
    assert BertConfig.from_hf(hf_config) == BertConfig(**TINY)
    assert BertConfig.from_hf(hf_config, attn_backend="scratch").attn_backend == "scratch"
    with pytest.raises(ValueError, match="attn_backend"):
        dataclasses.replace(config, attn_backend="nope")


def test_bad_inputs_raise():
    model = tiny()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, T_MAX + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(5, dtype=torch.long))


# ----------------------------------------------------------------------------
# mask_tokens


@pytest.fixture(scope="module")
def corpus():
    """256 sequences of 128 tokens: [CLS] ... [SEP] ... [SEP] [PAD]..., ordinary ids 5..V-1."""
    g = gen(11)
    input_ids = torch.randint(5, V, (256, 128), generator=g)
    lengths = torch.randint(20, 129, (256,), generator=g)
    input_ids[torch.arange(128)[None] >= lengths[:, None]] = PAD
    input_ids[:, 0] = CLS
    input_ids[torch.arange(256), lengths - 1] = SEP
    input_ids[:, 10] = SEP
    input_ids[::7, 5] = UNK
    return input_ids


def test_mask_tokens_rates(corpus):
    original = corpus.clone()
    masked, labels = mask_tokens(corpus, V, MASK, SPECIALS, generator=gen(0))
    assert torch.equal(corpus, original)  # input untouched
    assert masked.shape == labels.shape == corpus.shape and masked.dtype == corpus.dtype

    special = torch.isin(corpus, torch.tensor(SPECIALS))
    selected = labels != IGNORE_INDEX
    assert not (selected & special).any()  # specials are never selected
    assert torch.equal(labels[selected], corpus[selected])  # label = original token
    assert torch.equal(masked[~selected], corpus[~selected])  # unselected positions untouched

    rate = selected.sum() / (~special).sum()
    n = int(selected.sum())
    became_mask = (masked[selected] == MASK).sum() / n
    became_random = ((masked[selected] != MASK) & (masked[selected] != corpus[selected])).sum() / n
    unchanged = (masked[selected] == corpus[selected]).sum() / n
    print(f"\n[mask_tokens] {n} selected: rate {rate:.4f}, "
          f"mask/random/unchanged {became_mask:.3f}/{became_random:.3f}/{unchanged:.3f}")
    assert abs(rate - 0.15) < 0.01  # about 19k ordinary tokens: std 0.0026
    assert abs(became_mask - 0.8) < 0.03  # about 2.8k selected: std 0.0076 (0.0057 for 10%)
    assert abs(became_random - 0.1) < 0.02
    assert abs(unchanged - 0.1) < 0.02
    replacements = masked[selected & (masked != MASK) & (masked != corpus)]
    assert not torch.isin(replacements, torch.tensor(SPECIALS)).any()  # random ids are ordinary
    assert ((replacements >= 0) & (replacements < V)).all()


def test_mask_tokens_is_seeded(corpus):
    first = mask_tokens(corpus, V, MASK, SPECIALS, generator=gen(5))
    again = mask_tokens(corpus, V, MASK, SPECIALS, generator=gen(5))
    other = mask_tokens(corpus, V, MASK, SPECIALS, generator=gen(6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_mask_tokens_extremes_and_errors(corpus):
    special = torch.isin(corpus, torch.tensor(SPECIALS))
    masked, labels = mask_tokens(corpus, V, MASK, SPECIALS, mlm_probability=0.0, generator=gen(0))
    assert torch.equal(masked, corpus) and (labels == IGNORE_INDEX).all()
    _, labels = mask_tokens(corpus, V, MASK, SPECIALS, mlm_probability=1.0, generator=gen(0))
    assert torch.equal(labels != IGNORE_INDEX, ~special)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(corpus, V, MASK, SPECIALS, mlm_probability=1.5)
    with pytest.raises(ValueError, match="outside"):
        mask_tokens(corpus, V, V, SPECIALS)


# ----------------------------------------------------------------------------
# NSP pairs


def sentence(d, i, length):
    return [5 + 10 * d + i] * length  # the token says which document and sentence it came from


DOCUMENTS = [[sentence(d, i, 1 + (3 * d + 2 * i) % 6) for i in range(3 + d % 4)] for d in range(6)]


@pytest.fixture(scope="module")
def nsp_batch():
    return make_nsp_pairs(DOCUMENTS, num_pairs=2000, max_len=16, cls_token_id=CLS,
                          sep_token_id=SEP, pad_token_id=PAD, generator=gen(0))


def test_nsp_layout(nsp_batch):
    input_ids, token_type_ids = nsp_batch["input_ids"], nsp_batch["token_type_ids"]
    attention_mask, label = nsp_batch["attention_mask"], nsp_batch["next_sentence_label"]
    assert input_ids.shape == token_type_ids.shape == attention_mask.shape == (2000, 16)
    assert label.shape == (2000,) and all(t.dtype == torch.long for t in nsp_batch.values())
    assert (input_ids[:, 0] == CLS).all()
    for row in range(2000):
        ids = input_ids[row].tolist()
        seps = [t for t, token in enumerate(ids) if token == SEP]
        assert len(seps) == 2 and seps[0] >= 2 and seps[1] >= seps[0] + 2  # A and B non-empty
        first_sep, last_sep = seps
        assert ids[last_sep + 1:] == [PAD] * (15 - last_sep)
        assert attention_mask[row].tolist() == [1] * (last_sep + 1) + [0] * (15 - last_sep)
        assert token_type_ids[row].tolist() == ([0] * (first_sep + 1) + [1] * (last_sep - first_sep)
                                                + [0] * (15 - last_sep))
        a, b = ids[1], ids[first_sep + 1]  # (doc, sentence) codes of A and B
        doc_a, doc_b = (a - 5) // 10, (b - 5) // 10
        if label[row] == 0:
            assert doc_b == doc_a and b == a + 1  # B is the sentence after A
        else:
            assert doc_b != doc_a  # B comes from another document


def test_nsp_label_balance_and_seed(nsp_batch):
    is_not_next = nsp_batch["next_sentence_label"].float().mean()
    print(f"\n[make_nsp_pairs] NotNext fraction {is_not_next:.3f} of 2000")
    assert abs(is_not_next - 0.5) < 0.05  # std 0.011
    again = make_nsp_pairs(DOCUMENTS, 2000, 16, CLS, SEP, PAD, generator=gen(0))
    other = make_nsp_pairs(DOCUMENTS, 2000, 16, CLS, SEP, PAD, generator=gen(1))
    assert all(torch.equal(nsp_batch[k], again[k]) for k in nsp_batch)
    assert not torch.equal(nsp_batch["input_ids"], other["input_ids"])


def test_nsp_truncates_to_max_len():
    long_documents = [[[10 + d] * 30, [20 + d] * 4] for d in range(3)]
    batch = make_nsp_pairs(long_documents, 50, 12, CLS, SEP, PAD, generator=gen(2))
    assert (batch["attention_mask"].sum(dim=1) == 12).all()  # 30 + 4 tokens never fit in 12
    assert ((batch["input_ids"] == SEP).sum(dim=1) == 2).all() and (batch["input_ids"][:, -1] == SEP).all()
    with pytest.raises(ValueError, match="max_len"):
        make_nsp_pairs(long_documents, 1, 4, CLS, SEP)
    with pytest.raises(ValueError, match="at least 2"):
        make_nsp_pairs([[[7], [8]]], 1, 8, CLS, SEP)


def test_pretraining_step_on_nsp_pairs(nsp_batch):
    """The data functions feed the model: one optimiser step lowers the loss on that batch."""
    batch = {k: v[:32] for k, v in nsp_batch.items()}
    masked_ids, labels = mask_tokens(batch["input_ids"], V, MASK, SPECIALS, generator=gen(1))
    model = tiny(BertForPreTraining).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(2):
        out = model(masked_ids, batch["token_type_ids"], batch["attention_mask"], labels=labels,
                    next_sentence_label=batch["next_sentence_label"])
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0]


# ----------------------------------------------------------------------------
# CUDA (runs where a GPU is present)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@BACKENDS
def test_cuda_matches_cpu(backend, hf_pretraining):
    cpu = BertForPreTraining.from_hf(hf_pretraining, attn_backend=backend)
    cuda = BertForPreTraining.from_hf(hf_pretraining, attn_backend=backend).cuda()
    assert cuda.cls.predictions.decoder.weight is cuda.bert.embeddings.word_embeddings.weight
    input_ids, token_type_ids, attention_mask = padded_batch(lengths=(12, 9, 5, 0))
    masked_ids, labels = mask_tokens(input_ids, V, MASK, SPECIALS, generator=gen(3))
    masked_cuda, labels_cuda = mask_tokens(input_ids.cuda(), V, MASK, SPECIALS, generator=gen(3))
    assert torch.equal(masked_cuda.cpu(), masked_ids) and torch.equal(labels_cuda.cpu(), labels)
    with torch.no_grad():
        expected = cpu(masked_ids, token_type_ids, attention_mask, labels=labels)
        out = cuda(masked_cuda, token_type_ids.cuda(), attention_mask.cuda(), labels=labels_cuda)
    print(f"\n[encoder cuda vs cpu] {backend}: max |diff| = "
          f"{(out.prediction_logits.cpu() - expected.prediction_logits).abs().max().item():.2e}")
    torch.testing.assert_close(out.prediction_logits.cpu(), expected.prediction_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.loss.cpu(), expected.loss, atol=1e-4, rtol=0)
    cuda.train()
    generator = torch.Generator(device="cuda")
    run = lambda seed: cuda(masked_cuda, generator=generator.manual_seed(seed)).prediction_logits  # noqa: E731
    with torch.no_grad():
        assert torch.equal(run(0), run(0)) and torch.isfinite(run(0)).all()
