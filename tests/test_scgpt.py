"""genlab.scgpt: vocabulary, tokens, the generative mask, losses, generation, experiment
(binning: test_scgpt_binning.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from genlab.masks import known_unknown_mask
from genlab.scgpt import layers as scgpt_layers  # where the self-slot attention lives
from genlab.scgpt import (
    CELL_PROMPT_KNOWN_FRACTIONS,
    EMBEDDING_KEY,
    UNKNOWN_FRACTIONS,
    GeneVocab,
    ScGPT,
    ScGPTConfig,
    TwoStreamScGPT,
    bin_expression,
    gaussian_nll,
    generate_values,
    known_unknown_attention,
    masked_mse,
    most_confident,
    pretraining_batch,
    pretraining_batches,
    scgpt_losses,
    select_highly_variable_genes,
    self_slot_mask,
    split_known_unknown,
    tokenize_adata,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = ["scratch", "torch"]
HEADS = ("cell_embedding", "value", "log_var", "cell_value")


# ----------------------------------------------------------------------------
# fixtures


def synthetic_adata(n_cells=40, n_genes=30, seed=0) -> anndata.AnnData:
    """log1p of Poisson counts with gene-specific rates; every cell expresses some gene."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.6, 2.0, size=n_genes)
    counts = rng.poisson(rates, size=(n_cells, n_genes)).astype(np.float64)
    counts[:, 0] += 1  # gene 0 is always on
    return anndata.AnnData(
        X=sp.csr_matrix(np.log1p(counts)),
        obs=pd.DataFrame({"kind": rng.choice(["a", "b"], n_cells)},
                         index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]),
    )


def tiny_config(vocab_size=40, backend="torch", **overrides) -> ScGPTConfig:
    settings = dict(vocab_size=vocab_size, d_model=16, n_heads=2, n_layers=2, d_ff=32,
                    attention_backend=backend, seed=3)
    settings.update(overrides)
    return ScGPTConfig(**settings)


def random_inputs(B=3, P=5, G=4, vocab_size=40, seed=0, padded=True):
    """known_genes, known_values, unknown_genes, known_is_real, unknown_is_real."""
    g = torch.Generator().manual_seed(seed)
    known_genes = torch.randint(2, vocab_size, (B, P), generator=g)
    known_values = torch.randint(0, 51, (B, P), generator=g).double()
    unknown_genes = torch.randint(2, vocab_size, (B, G), generator=g)
    known_is_real = torch.ones(B, P, dtype=torch.bool)
    unknown_is_real = torch.ones(B, G, dtype=torch.bool)
    if padded:
        known_is_real[0, P - 2:] = False
        unknown_is_real[1, G - 1:] = False
    return known_genes, known_values, unknown_genes, known_is_real, unknown_is_real


def float64_model(backend="torch", **overrides) -> ScGPT:
    return ScGPT(tiny_config(backend=backend, **overrides)).double().eval()


# (binning: tests/test_scgpt_binning.py, against upstream scGPT's rule)


# ----------------------------------------------------------------------------
# vocabulary and tokens


def test_vocab_layout_and_errors():
    vocab = GeneVocab(["CD3E", "MS4A1", "LYZ"])
    assert (vocab.pad_id, vocab.cls_id, len(vocab)) == (0, 1, 5)
    assert vocab.itos[:2] == ["<pad>", "<cls>"] and vocab.genes == ["CD3E", "MS4A1", "LYZ"]
    ids = vocab.encode(["LYZ", "CD3E"])
    assert ids.tolist() == [4, 2] and vocab.decode(ids) == ["LYZ", "CD3E"]
    assert "LYZ" in vocab and "GAPDH" not in vocab
    with pytest.raises(ValueError, match="missing from the vocabulary.*GAPDH"):
        vocab.encode(["LYZ", "GAPDH"])
    with pytest.raises(ValueError, match="unique"):
        GeneVocab(["A", "B", "A"])
    with pytest.raises(ValueError, match="special"):
        GeneVocab(["A", "<cls>"])
    adata = synthetic_adata()
    assert GeneVocab.from_adata(adata).genes == list(adata.var_names)


def test_tokenize_all_genes():
    adata = synthetic_adata()
    vocab = GeneVocab.from_adata(adata)
    tokens = tokenize_adata(adata, vocab, n_bins=51)
    assert tokens.gene_ids.shape == (40, 30) and tokens.is_real.all()
    assert torch.equal(tokens.gene_ids[0], torch.arange(2, 32))
    assert np.array_equal(tokens.values.numpy(), bin_expression(adata.X).astype(np.float32))
    assert tokens.obs_names == list(adata.obs_names) and tokens.genes == list(adata.var_names)


def test_tokenize_max_len_is_seeded_and_expressed_only_pads():
    adata = synthetic_adata()
    vocab = GeneVocab.from_adata(adata)
    a = tokenize_adata(adata, vocab, max_len=8, seed=5)
    b = tokenize_adata(adata, vocab, max_len=8, seed=5)
    c = tokenize_adata(adata, vocab, max_len=8, seed=6)
    assert a.gene_ids.shape == (40, 8) and a.is_real.all()
    assert torch.equal(a.gene_ids, b.gene_ids) and not torch.equal(a.gene_ids, c.gene_ids)
    for cell in range(40):  # each value is its gene's bin in the full profile
        columns = a.gene_ids[cell].numpy() - 2
        assert np.array_equal(a.values[cell].numpy(), a.binned[cell, columns])

    expressed = tokenize_adata(adata, vocab, include_zeros=False)
    n_expressed = (adata.X.toarray() > 0).sum(axis=1)
    assert expressed.is_real.sum(dim=1).tolist() == n_expressed.tolist()
    assert (expressed.values[expressed.is_real] > 0).all()
    assert (expressed.gene_ids[~expressed.is_real] == vocab.pad_id).all()


def test_tokenize_hvg_selection():
    adata = synthetic_adata()
    vocab = GeneVocab.from_adata(adata)
    genes = select_highly_variable_genes(adata, 10)
    assert len(genes) == 10 and genes == select_highly_variable_genes(adata, 10)
    assert genes == [g for g in adata.var_names if g in genes]  # kept in var order
    tokens = tokenize_adata(adata, vocab, hvg=10)
    assert tokens.genes == genes and tokens.gene_ids.shape[1] == 10
    assert tokenize_adata(adata, vocab, hvg=["G0", "G3"]).genes == ["G0", "G3"]


def test_tokenize_errors():
    adata = synthetic_adata()
    with pytest.raises(ValueError, match="missing from the vocabulary"):
        tokenize_adata(adata, GeneVocab(list(adata.var_names[:-1])))
    silent = anndata.AnnData(X=sp.csr_matrix(np.vstack([adata.X.toarray()[:3], np.zeros((1, 30))])),
                             var=adata.var.copy(), obs=pd.DataFrame(index=["c0", "c1", "c2", "empty"]))
    with pytest.raises(ValueError, match="no expressed gene.*'empty'"):
        tokenize_adata(silent, GeneVocab.from_adata(adata))
    negative = adata.copy()
    negative.X = -negative.X.toarray()
    with pytest.raises(ValueError, match="negative"):
        tokenize_adata(negative, GeneVocab.from_adata(adata))


# ----------------------------------------------------------------------------
# the generative mask


def test_model_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = ScGPT(tiny_config()), ScGPT(tiny_config())
    assert torch.equal(state, torch.random.get_rng_state())
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    other = ScGPT(tiny_config(seed=4))
    assert not torch.equal(a.generate_flag, other.generate_flag)


def test_value_scale_defaults_to_the_largest_bin_and_can_be_set():
    assert tiny_config().value_scale == 50.0 and tiny_config(n_bins=11).value_scale == 10.0
    continuous = ScGPT(tiny_config(n_bins=11, value_scale=4.0))
    assert continuous.config.value_scale == 4.0  # set explicitly: n_bins no longer decides it
    assert continuous.value_encoder.value_scale == 4.0 and continuous.expression_head.value_scale == 4.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="value_scale"):
            tiny_config(value_scale=bad)


def test_attention_mask_is_known_unknown_mask_plus_padding():
    model = float64_model()
    known_real = torch.tensor([[True, True, False]])
    unknown_real = torch.tensor([[True, False]])
    mask = model.attention_mask(known_real, unknown_real)  # (1, 1, 6, 6)
    expected = known_unknown_mask(4, 2).clone()
    expected[:, 3] = False  # padded known key
    expected[:, 5] = False  # padded unknown key
    assert mask.shape == (1, 1, 6, 6) and torch.equal(mask[0, 0], expected)
    no_padding = model.attention_mask(torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
    assert torch.equal(no_padding[0, 0], known_unknown_mask(4, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_outputs_ignore_everything_about_unknown_genes(backend):
    model = float64_model(backend)
    kg, kv, ug, kr, ur = random_inputs()
    P = kg.size(1)
    base = model(kg, kv, ug, kr, ur)
    other_ids = torch.randint(2, 40, ug.shape, generator=torch.Generator().manual_seed(9))
    changed_ids = model(kg, kv, other_ids, kr, ur)
    fewer = model(kg, kv, ug[:, :1], kr, ur[:, :1])
    none = model(kg, kv, ug[:, :0], kr, ur[:, :0])
    more = model(kg, kv, torch.cat([ug, ug.flip(1)], dim=1), kr, torch.cat([ur, ur], dim=1))
    for other in (changed_ids, fewer, none, more):
        torch.testing.assert_close(other.hidden[:, :1 + P], base.hidden[:, :1 + P], rtol=0, atol=1e-12)
        torch.testing.assert_close(other.cell_embedding, base.cell_embedding, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_output_ignores_other_unknown_genes(backend):
    model = float64_model(backend)
    kg, kv, ug, kr, ur = random_inputs(padded=False)
    base = model(kg, kv, ug, kr, ur)
    alone = model(kg, kv, ug[:, 2:3], kr, ur[:, 2:3])  # gene 2 generated by itself
    others = ug.clone()
    others[:, [0, 1, 3]] = torch.tensor([5, 6, 7])
    changed = model(kg, kv, others, kr, ur)
    crowd = model(kg, kv, torch.cat([ug, torch.arange(10, 30).expand(3, -1)], dim=1))
    flipped = model(kg, kv, ug.flip(1), kr, ur)
    for field in ("value", "log_var", "cell_value"):
        reference = getattr(base, field)[:, 2]
        torch.testing.assert_close(getattr(alone, field)[:, 0], reference, rtol=0, atol=1e-10)
        torch.testing.assert_close(getattr(changed, field)[:, 2], reference, rtol=0, atol=1e-10)
        torch.testing.assert_close(getattr(crowd, field)[:, 2], reference, rtol=0, atol=1e-10)
        torch.testing.assert_close(getattr(flipped, field)[:, 1], reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_encoder_lets_every_token_see_every_real_token(backend):
    """``generative_mask=False`` (upstream's cell-prompt inference): padding is the only mask."""
    model = float64_model(backend)
    kg, kv, ug, kr, ur = random_inputs()
    mask = model.attention_mask(kr, ur, generative_mask=False)
    assert mask.shape == (3, 1, 1, 1 + 5 + 4)
    assert torch.equal(mask[:, 0, 0], torch.cat([torch.ones(3, 1, dtype=torch.bool), kr, ur], dim=1))
    other_ids = ug.clone()
    other_ids[:, 0] = torch.where(ug[:, 0] == 5, 6, 5)  # another gene as unknown gene 0
    for generative in (True, False):
        base = model(kg, kv, ug, kr, ur, generative_mask=generative)
        changed = model(kg, kv, other_ids, kr, ur, generative_mask=generative)
        others_moved = (changed.value[:, 1:] - base.value[:, 1:])[ur[:, 1:]].abs()
        cell_moved = (changed.cell_embedding - base.cell_embedding).abs().amax(dim=1)
        if generative:  # the other unknown genes and <cls> never see unknown gene 0
            assert others_moved.max() < 1e-12 and cell_moved.max() < 1e-12
        else:  # plain encoder: all of them do
            assert others_moved.min() > 1e-8 and cell_moved.min() > 1e-8
    # padding stays invisible to the plain encoder
    kg2, kv2, ug2 = kg.clone(), kv.clone(), ug.clone()
    kg2[~kr], kv2[~kr], ug2[~ur] = 7, 49.0, 8
    padded = model(kg2, kv2, ug2, kr, ur, generative_mask=False)
    torch.testing.assert_close(padded.value[ur], base.value[ur], rtol=0, atol=1e-12)
    torch.testing.assert_close(padded.cell_embedding, base.cell_embedding, rtol=0, atol=1e-12)


def test_plain_encoder_is_the_same_on_both_backends():
    kg, kv, ug, kr, ur = random_inputs(seed=2)
    scratch = float64_model("scratch")(kg, kv, ug, kr, ur, generative_mask=False)
    fused = float64_model("torch")(kg, kv, ug, kr, ur, generative_mask=False)
    for field in HEADS:
        torch.testing.assert_close(getattr(fused, field), getattr(scratch, field), rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_is_invisible_and_finite(backend):
    model = float64_model(backend)
    kg, kv, ug, kr, ur = random_inputs()
    base = model(kg, kv, ug, kr, ur)
    kg2, kv2, ug2 = kg.clone(), kv.clone(), ug.clone()
    kg2[~kr], kv2[~kr], ug2[~ur] = 7, 49.0, 8  # change what sits in padded slots
    other = model(kg2, kv2, ug2, kr, ur)
    assert all(torch.isfinite(getattr(other, f)).all() for f in HEADS + ("hidden",))
    torch.testing.assert_close(other.cell_embedding, base.cell_embedding, rtol=0, atol=1e-12)
    torch.testing.assert_close(other.value[ur], base.value[ur], rtol=0, atol=1e-12)
    # a batch row without padding gives the same answer alone as in the padded batch
    alone = model(kg[2:], kv[2:], ug[2:])
    torch.testing.assert_close(alone.value, base.value[2:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["padded", "no_known_genes", "no_unknown_genes", "cell_prompt"])
def test_single_sequence_equals_two_stream_float64(backend, case):
    model = float64_model(backend)
    kg, kv, ug, kr, ur = random_inputs(seed=4)
    kwargs = {}
    if case == "no_known_genes":
        kg, kv, kr = kg[:, :0], kv[:, :0], kr[:, :0]
    if case == "no_unknown_genes":
        ug, ur = ug[:, :0], ur[:, :0]
    if case == "cell_prompt":
        kwargs["cell_prompt"] = torch.randn(3, 16, generator=torch.Generator().manual_seed(1)).double()
    single = model(kg, kv, ug, kr, ur, **kwargs)
    two = TwoStreamScGPT(model)(kg, kv, ug, kr, ur, **kwargs)
    for field in HEADS + ("hidden",):
        torch.testing.assert_close(getattr(two, field), getattr(single, field), rtol=0, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_single_sequence_equals_two_stream_float32(device):
    model = ScGPT(tiny_config()).to(device)
    kg, kv, ug, kr, ur = (t.to(device) for t in random_inputs(B=4, P=12, G=9, seed=5))
    single = model(kg, kv.float(), ug, kr, ur)
    two = TwoStreamScGPT(model)(kg, kv.float(), ug, kr, ur)
    torch.testing.assert_close(two.hidden, single.hidden, rtol=0, atol=1e-5)
    torch.testing.assert_close(two.cell_embedding, single.cell_embedding, rtol=0, atol=1e-5)
    # the heads scale to bins (x 50): compare relative to that scale
    for field in ("value", "cell_value"):
        torch.testing.assert_close(getattr(two, field) / 50, getattr(single, field) / 50, rtol=0, atol=1e-5)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("P, G", [(5, 4), (0, 3), (4, 0)])
@pytest.mark.parametrize("aligned", [False, True])
def test_self_slot_attention_equals_the_mask(monkeypatch, padded, P, G, aligned):
    """known_unknown_attention (the "torch" backend's K+1 keys) = attention under the (T, T) mask,
    outputs and gradients; ``aligned`` pads the channels to a multiple of 8 as on a GPU."""
    if aligned:
        monkeypatch.setattr(scgpt_layers, "_extended_width", lambda d, device: 8 * (d // 8 + 1))
    model = float64_model()
    layer = model.layers[0]
    _, _, _, kr, ur = random_inputs(P=P, G=G, padded=padded)
    x = torch.randn(3, 1 + P + G, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outputs = []
    for fused in (False, True):
        h = x.clone().requires_grad_()
        if fused:
            out = known_unknown_attention(layer.attn, h, 1 + P, self_slot_mask(kr, ur))
        else:
            out = layer.attn(h, attn_mask=model.attention_mask(kr, ur), backend="scratch")
        out.square().sum().backward()
        outputs.append((out, h.grad))
    (mask_out, mask_grad), (slot_out, slot_grad) = outputs
    torch.testing.assert_close(slot_out, mask_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(slot_grad, mask_grad, rtol=0, atol=1e-12)
    assert self_slot_mask(kr, ur).shape == ((3, 1, 1 + P + G, 2 + P) if padded else (1 + P + G, 2 + P))


def test_two_stream_owns_no_parameters():
    model = ScGPT(tiny_config())
    reference = TwoStreamScGPT(model)
    assert {id(p) for p in reference.parameters()} == {id(p) for p in model.parameters()}


# ----------------------------------------------------------------------------
# pretraining batches and losses


def tokens_of(adata=None):
    adata = synthetic_adata() if adata is None else adata
    return tokenize_adata(adata, GeneVocab.from_adata(adata))


def test_split_known_unknown_counts_and_union():
    tokens = tokenize_adata(synthetic_adata(), GeneVocab.from_adata(synthetic_adata()), include_zeros=False)
    n_real = tokens.is_real.sum(dim=1)
    for fraction in (0.0, 0.25, 0.5, 1.0):
        split = split_known_unknown(tokens.gene_ids, tokens.values, tokens.is_real, fraction,
                                    torch.Generator().manual_seed(0))
        assert torch.equal(split.unknown_is_real.sum(dim=1), torch.round(n_real * fraction).long())
        assert torch.equal(split.known_is_real.sum(dim=1) + split.unknown_is_real.sum(dim=1), n_real)
        for cell in (0, 11):
            known = split.known_genes[cell][split.known_is_real[cell]].tolist()
            unknown = split.unknown_genes[cell][split.unknown_is_real[cell]].tolist()
            real = tokens.gene_ids[cell][tokens.is_real[cell]].tolist()
            assert sorted(known + unknown) == sorted(real)
            value_of = dict(zip(real, tokens.values[cell][tokens.is_real[cell]].tolist()))
            targets = split.unknown_values[cell][split.unknown_is_real[cell]].tolist()
            assert targets == [value_of[gene] for gene in unknown]


def test_pretraining_batches_are_seeded_and_draw_every_fraction():
    tokens = tokens_of()
    batches = pretraining_batches(tokens, batch_size=8)
    a = batches(0, torch.Generator().manual_seed(1))
    b = batches(0, torch.Generator().manual_seed(1))
    assert torch.equal(a.gep.unknown_genes, b.gep.unknown_genes)
    generator = torch.Generator().manual_seed(2)
    drawn = [batches(step, generator) for step in range(40)]
    assert {batch.unknown_fraction for batch in drawn} == set(UNKNOWN_FRACTIONS)
    n_unknown = {int(batch.gep.unknown_is_real.sum()) for batch in drawn}
    assert n_unknown == {8 * round(30 * f) for f in UNKNOWN_FRACTIONS}


def test_cell_prompt_pass_has_its_own_split_or_upstreams_same_split():
    tokens = tokens_of()

    def batch(**options):
        return pretraining_batch(tokens, torch.arange(8), torch.Generator().manual_seed(4), **options)

    own, same, without = batch(), batch(cell_prompt_split="same"), batch(cell_prompt=False)
    assert same.cell_prompt is same.gep and without.cell_prompt is None  # "same": upstream's choice
    for other in (same, without):  # the GEP split does not depend on the cell-prompt pass
        assert torch.equal(other.gep.unknown_genes, own.gep.unknown_genes)
        assert torch.equal(other.gep.known_genes, own.gep.known_genes)
    # "own" (default): a second split of the same cells keeps 0, 25% or 50% of the genes known
    assert torch.equal(own.cell_prompt.known_is_real.sum(1) + own.cell_prompt.unknown_is_real.sum(1),
                       tokens.is_real[:8].sum(1))
    generator = torch.Generator().manual_seed(2)
    drawn = [pretraining_batches(tokens, 8)(step, generator) for step in range(40)]
    n_known = {int(b.cell_prompt.known_is_real.sum()) for b in drawn}
    assert n_known == {8 * (30 - round(30 * (1 - f))) for f in CELL_PROMPT_KNOWN_FRACTIONS}
    with pytest.raises(ValueError, match="cell_prompt_split"):
        batch(cell_prompt_split="other")
    with pytest.raises(ValueError, match="cell_prompt_split"):
        pretraining_batches(tokens, 8, cell_prompt_split="other")


def test_masked_losses_count_only_unknown_positions():
    # three genes of a cell; gene 1 is known, genes 0 and 2 are unknown
    prediction, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.5, 0.0, 3.0])
    is_unknown = torch.tensor([True, False, True])
    assert masked_mse(prediction, target, is_unknown) == pytest.approx(0.125)
    known_target_changed = target.clone().index_fill(0, torch.tensor([1]), 99.0)
    assert masked_mse(prediction, known_target_changed, is_unknown) == masked_mse(prediction, target, is_unknown)
    log_var = torch.tensor([0.0, float("inf"), math.log(4.0)])  # inf at the known gene: ignored
    assert gaussian_nll(prediction, log_var, target, is_unknown) == pytest.approx(
        0.5 * ((0 + 0.25) + (math.log(4.0) + 0)) / 2)
    assert gaussian_nll(prediction, log_var, known_target_changed, is_unknown) == \
        gaussian_nll(prediction, log_var, target, is_unknown)
    assert masked_mse(prediction, target, torch.zeros(3, dtype=torch.bool)) == 0


def test_gep_loss_counts_only_unknown_genes():
    tokens = tokens_of()
    model = ScGPT(tiny_config(vocab_size=32)).double()
    batch = pretraining_batch(tokens, torch.arange(6), torch.Generator().manual_seed(0), cell_prompt=False)
    batch.gep.known_values = batch.gep.known_values.double()
    base = scgpt_losses(model, batch)
    # a known gene's "target" is its input value; only unknown targets enter the GEP loss
    out = model(**batch.gep.model_inputs())
    selected = batch.gep.unknown_is_real
    manual = (((out.value - batch.gep.unknown_values) / 50) ** 2)[selected].mean()
    torch.testing.assert_close(base.gep, manual)
    # a target at a position that is not an unknown gene (here: padding) does not count
    batch.gep.unknown_is_real[0, -1] = False
    masked = scgpt_losses(model, batch)
    before = model(**batch.gep.model_inputs())
    batch.gep.unknown_values[0, -1] += 17.0
    assert scgpt_losses(model, batch).gep == masked.gep
    # targets are never model inputs: changing them leaves every output alone
    batch.gep.unknown_values += 3.0
    after = model(**batch.gep.model_inputs())
    torch.testing.assert_close(after.value, before.value, rtol=0, atol=0)


def test_losses_are_finite_and_backpropagate():
    model = ScGPT(tiny_config(vocab_size=32))
    batch = pretraining_batches(tokens_of(), 8)(0, torch.Generator().manual_seed(0))
    losses = scgpt_losses(model, batch)
    for name in ("total", "gep", "gepc", "confidence", "cell_prompt"):
        assert torch.isfinite(getattr(losses, name)), name
    assert losses.cell_prompt > 0
    losses.total.backward()
    assert model.generate_flag.grad is not None and torch.isfinite(model.generate_flag.grad).all()


@pytest.mark.parametrize("split", ["own", "same"])
def test_cell_prompt_loss_sends_no_gradient_into_the_prompting_embedding(split):
    """Upstream (examples/pretrain.py) feeds the GEP pass's cell embedding back *detached*: the
    cell-prompt loss trains generation from an embedding, not the pass that made it."""
    model = ScGPT(tiny_config(vocab_size=32)).double()
    batch = pretraining_batch(tokens_of(), torch.arange(8), torch.Generator().manual_seed(0),
                              cell_prompt_split=split)
    embeddings = []  # the cell embedding of each forward pass, in call order
    model.register_forward_hook(lambda module, args, out: embeddings.append(out.cell_embedding))
    losses = scgpt_losses(model, batch)
    gep_embedding, prompted = embeddings  # the GEP pass, then the cell-prompt pass
    gep_embedding.retain_grad()
    losses.cell_prompt.backward(retain_graph=True)
    assert gep_embedding.grad is None  # nothing reached it
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())
    losses.gepc.backward()  # the control: a loss that does depend on it
    assert gep_embedding.grad is not None and gep_embedding.grad.abs().max() > 0
    # the cell-prompt pass: the batch's cell-prompt split with the (detached) embedding in <cls>
    with torch.no_grad():
        out = model(**batch.cell_prompt.model_inputs(), cell_prompt=gep_embedding.detach())
    prompt = batch.cell_prompt
    expected = masked_mse(out.value / 50, prompt.unknown_values / 50, prompt.unknown_is_real)
    torch.testing.assert_close(losses.cell_prompt.detach(), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------
# generation


def generation_inputs(B=3, L=12, n_unknown=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    gene_ids = torch.stack([torch.randperm(38, generator=g)[:L] + 2 for _ in range(B)])
    values = torch.randint(0, 51, (B, L), generator=g).float()
    is_unknown = torch.zeros(B, L, dtype=torch.bool)
    is_unknown[:, L - n_unknown:] = True
    return gene_ids, values, is_unknown


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_generation_shapes_and_schedule(steps):
    model = ScGPT(tiny_config())
    gene_ids, values, is_unknown = generation_inputs()
    result = generate_values(model, gene_ids, values, is_unknown, steps=steps)
    assert result.values.shape == result.confidence.shape == result.step.shape == (3, 12)
    torch.testing.assert_close(result.values[~is_unknown], values[~is_unknown], rtol=0, atol=0)
    assert (result.step[~is_unknown] == -1).all() and torch.isnan(result.confidence[~is_unknown]).all()
    assert torch.isfinite(result.values).all() and torch.isfinite(result.confidence[is_unknown]).all()
    # each step moves ceil(remaining / steps left) genes of every cell
    remaining, expected = 7, []
    for step in range(steps):
        n = -(-remaining // (steps - step)) if remaining else 0
        expected.append(n)
        remaining -= n
    for cell in range(3):
        counts = [int((result.step[cell] == s).sum()) for s in range(steps)]
        assert counts == expected


def test_moved_genes_become_known_with_their_predicted_values():
    model = float64_model()
    gene_ids, values, is_unknown = generation_inputs()
    values = values.double()
    one_shot = generate_values(model, gene_ids, values, is_unknown, steps=1)
    two = generate_values(model, gene_ids, values, is_unknown, steps=2)
    first = two.step == 0
    # step 0 of K=2 is the one-shot forward pass: same values, and it moved the most confident genes
    torch.testing.assert_close(two.values[first], one_shot.values[first], rtol=0, atol=1e-12)
    for cell in range(3):
        moved = one_shot.confidence[cell][first[cell]]
        stayed = one_shot.confidence[cell][is_unknown[cell] & ~first[cell]]
        assert moved.min() >= stayed.max()
    # step 1 sees the step-0 genes as known, with their generated values
    as_known = torch.where(first, two.values, values)
    rerun = generate_values(model, gene_ids, as_known, is_unknown & ~first, steps=1)
    second = two.step == 1
    torch.testing.assert_close(two.values[second], rerun.values[second], rtol=0, atol=1e-12)
    assert not torch.allclose(two.values[second], one_shot.values[second])  # the context mattered


def test_most_confident_moves_ceil_share_of_pending_and_breaks_ties_by_position():
    confidence = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.9, 0.3],
                               [2.0, -1.0, 0.0, 0.0, 0.0, 5.0]])
    pending = torch.tensor([[True, True, True, True, False, True],
                            [False, True, True, True, True, False]])
    # row 0: 5 pending, 2 steps left -> 3 move: 0.9 (pos 1), 0.9 (pos 2), then 0.5 (pos 0);
    # the known gene at position 4 never moves, however confident
    # row 1: 4 pending -> 2 move: the tied 0.0s at positions 2 and 3 (earlier first), not 4
    expected = torch.tensor([[True, True, True, False, False, False],
                             [False, False, True, True, False, False]])
    assert torch.equal(most_confident(confidence, pending, steps_left=2), expected)
    assert torch.equal(most_confident(confidence, pending, steps_left=1), pending)
    assert torch.equal(most_confident(confidence, pending, steps_left=9).sum(dim=1), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="steps_left"):
        most_confident(confidence, pending, steps_left=0)


def test_generation_with_padding_and_cell_prompt():
    model = ScGPT(tiny_config())
    gene_ids, values, is_unknown = generation_inputs()
    is_real = torch.ones_like(is_unknown)
    is_real[0, -2:] = False
    prompt = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    result = generate_values(model, gene_ids, values, torch.ones_like(is_unknown), steps=3,
                             is_real=is_real, cell_prompt=prompt)
    assert (result.step[~is_real] == -1).all() and (result.step[is_real] >= 0).all()
    with pytest.raises(ValueError, match="steps"):
        generate_values(model, gene_ids, values, is_unknown, steps=0)


def test_sampling_is_seeded_and_leaves_the_mean_path_alone():
    model = ScGPT(tiny_config())
    gene_ids, values, is_unknown = generation_inputs()
    mean = generate_values(model, gene_ids, values, is_unknown, steps=3)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    not_sampled = generate_values(model, gene_ids, values, is_unknown, steps=3, generator=generator)
    assert torch.equal(generator.get_state(), state)  # sample=False draws nothing
    for field in ("values", "confidence", "step"):
        torch.testing.assert_close(getattr(not_sampled, field), getattr(mean, field), rtol=0, atol=0,
                                   equal_nan=True)

    def sampled(seed):
        return generate_values(model, gene_ids, values, is_unknown, steps=3, sample=True,
                               generator=torch.Generator().manual_seed(seed))

    a, b, c = sampled(1), sampled(1), sampled(2)
    assert torch.equal(a.values, b.values) and torch.equal(a.step, b.step)
    assert (a.values[is_unknown] != c.values[is_unknown]).all()
    assert (a.values[is_unknown] != mean.values[is_unknown]).all()
    assert torch.equal(a.values[~is_unknown], values[~is_unknown])  # known genes keep their values
    assert torch.equal(a.step == 0, mean.step == 0)  # the first step chooses by confidence, not by draw


def test_one_shot_samples_follow_the_predicted_gaussians_independently():
    model = float64_model()
    gene_ids, values, is_unknown = generation_inputs(B=1)
    known, unknown = ~is_unknown[0], is_unknown[0]
    n = 4000  # the same cell n times
    copies = [t.expand(n, -1).clone() for t in (gene_ids, values.double(), is_unknown)]
    draws = generate_values(model, *copies, steps=1, sample=True,
                            generator=torch.Generator().manual_seed(0)).values[:, unknown]  # (n, 7)
    out = model(gene_ids[:, known], values[:, known].double(), gene_ids[:, unknown])
    mean, var = out.value[0], out.log_var[0].exp()  # the heads' Gaussian of each unknown gene
    assert ((draws.mean(dim=0) - mean) / (var / n).sqrt()).abs().max() < 4.5
    assert ((draws.var(dim=0) / var - 1).abs() / math.sqrt(2 / (n - 1))).max() < 4.5
    correlation = np.corrcoef(draws.T.numpy())
    assert np.abs(correlation[~np.eye(7, dtype=bool)]).max() < 4.5 / math.sqrt(n)  # K = 1: independent


def test_sampled_values_are_what_later_steps_see():
    model = float64_model()
    gene_ids, values, is_unknown = generation_inputs()
    values = values.double()
    two = generate_values(model, gene_ids, values, is_unknown, steps=2, sample=True,
                          generator=torch.Generator().manual_seed(5))
    first, second = two.step == 0, two.step == 1
    # step 1 ran with the step-0 genes known at their drawn values: the same forward pass
    # from those values gives exactly the confidences (and so variances) step 1 recorded
    rerun = generate_values(model, gene_ids, torch.where(first, two.values, values), is_unknown & ~first)
    torch.testing.assert_close(two.confidence[second], rerun.confidence[second], rtol=0, atol=1e-12)
    # fed the means instead (the mean path), step 1 would have seen another context
    mean_two = generate_values(model, gene_ids, values, is_unknown, steps=2)
    assert torch.equal(mean_two.step == 0, first)
    assert not torch.allclose(mean_two.confidence[second], two.confidence[second])


def test_cell_prompt_inference_with_the_training_mask_or_upstreams_plain_encoder():
    adata = synthetic_adata()
    model, vocab = trained_free_model(adata)
    prompts = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    gene_ids = torch.from_numpy(vocab.encode(vocab.genes)).expand(2, -1)
    everything = torch.ones(2, 30, dtype=torch.bool)
    by_mask = {generative: generate_values(model, gene_ids, torch.zeros(2, 30), everything, steps=2,
                                           cell_prompt=prompts, generative_mask=generative).values.numpy()
               for generative in (True, False)}
    assert not np.allclose(by_mask[True], by_mask[False], atol=1e-3)  # the mask matters
    default = model.generate_from_cell_prompt(prompts.numpy(), steps=2).X
    np.testing.assert_allclose(default, by_mask[True], rtol=0, atol=1e-6)  # the training mask
    plain = model.generate_from_cell_prompt(prompts.numpy(), steps=2, generative_mask=False).X
    np.testing.assert_allclose(plain, by_mask[False], rtol=0, atol=1e-6)
    draws = [model.generate_from_cell_prompt(prompts.numpy(), sample=True,
                                             generator=torch.Generator().manual_seed(seed)).X
             for seed in (3, 3, 4)]
    assert np.array_equal(draws[0], draws[1]) and not np.allclose(draws[0], draws[2])


def trained_free_model(adata):
    vocab = GeneVocab.from_adata(adata)
    return ScGPT(tiny_config(vocab_size=len(vocab)), vocab), vocab


def test_embed_writes_obsm():
    adata = synthetic_adata()
    model, _ = trained_free_model(adata)
    embeddings = model.embed(adata, batch_size=16)
    assert adata.obsm[EMBEDDING_KEY].shape == (40, 16)
    assert np.array_equal(adata.obsm[EMBEDDING_KEY], embeddings) and np.isfinite(embeddings).all()
    # a cell's embedding does not depend on its batch
    assert np.allclose(model.embed(adata[5:9].copy()), embeddings[5:9], atol=1e-5)


@pytest.mark.parametrize("steps", [1, 3])
def test_gene_prompt_generation_returns_anndata(steps):
    adata = synthetic_adata(n_cells=20)
    model, _ = trained_free_model(adata)
    rng = np.random.default_rng(0)
    unknown = rng.random(adata.shape) < 0.5
    generated = model.generate_from_gene_prompt(adata, unknown, steps=steps, batch_size=16)
    assert isinstance(generated, anndata.AnnData) and generated.shape == adata.shape
    assert generated.obs.equals(adata.obs) and list(generated.var_names) == list(adata.var_names)
    bins = bin_expression(adata.X)
    assert np.array_equal(generated.X[~unknown], bins[~unknown].astype(np.float32))
    assert np.array_equal(generated.layers["generated"], unknown)
    assert set(np.unique(generated.layers["step"][unknown])) <= set(range(steps))
    assert np.isfinite(generated.X).all()
    draws = [model.generate_from_gene_prompt(adata, unknown, steps=steps, sample=True,
                                             generator=torch.Generator().manual_seed(seed)).X
             for seed in (0, 0, 1)]
    assert np.array_equal(draws[0], draws[1]) and np.array_equal(draws[0][~unknown], generated.X[~unknown])
    assert not np.allclose(draws[0][unknown], draws[2][unknown])
    by_name = model.generate_from_gene_prompt(adata, ["G3", "G4"])
    assert by_name.layers["generated"].sum() == 2 * 20
    with pytest.raises(ValueError, match="unknown must be bool"):
        model.generate_from_gene_prompt(adata, unknown[:5])


def test_cell_prompt_generation_returns_anndata():
    adata = synthetic_adata()
    model, vocab = trained_free_model(adata)
    embeddings = model.embed(adata)
    prompts = np.stack([embeddings[adata.obs["kind"] == kind].mean(axis=0) for kind in ("a", "b")])
    generated = model.generate_from_cell_prompt(prompts, steps=3, obs=pd.DataFrame(index=["a", "b"]))
    assert generated.shape == (2, 30) and list(generated.obs_names) == ["a", "b"]
    assert list(generated.var_names) == vocab.genes and generated.layers["generated"].all()
    assert np.isfinite(generated.X).all()
    subset = model.generate_from_cell_prompt(prompts, genes=["G1", "G2"])
    assert subset.shape == (2, 2)
    with pytest.raises(ValueError, match="cell_embeddings"):
        model.generate_from_cell_prompt(np.zeros((2, 5)))


def test_anndata_methods_need_a_vocab():
    with pytest.raises(ValueError, match="no vocab"):
        ScGPT(tiny_config()).embed(synthetic_adata())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    adata = synthetic_adata()
    model, _ = trained_free_model(adata)
    cpu = model.embed(adata)
    cuda = model.to("cuda").embed(adata)
    assert np.allclose(cpu, cuda, atol=1e-4)
    tokens = tokens_of(adata)
    batch = pretraining_batch(tokens, torch.arange(8), torch.Generator().manual_seed(0))
    assert torch.isfinite(scgpt_losses(model, batch).total)


# ----------------------------------------------------------------------------
# the experiment


def test_experiment_quick_smoke(tmp_path, repo):
    env = dict(os.environ, GENLAB_QUICK="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "genlab.experiments.scgpt_pbmc", "--out", str(tmp_path),
                           "--no-progress"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "scgpt_results.json").read_text())
    assert results["quick"] and (tmp_path / "scgpt_umap.png").stat().st_size > 0
    methods = set(results["gene_prompt_imputation_pearson"])
    assert methods >= {"scGPT K=1", "scGPT K=2", "gene mean (training cells)"}
    assert "| scGPT K=1 |" in proc.stdout and "own type is max" in proc.stdout
    assert set(results["cell_prompt_generation"]) >= {"scGPT K=1", "scGPT K=1, plain encoder (upstream's inference)"}
