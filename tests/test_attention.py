"""genlab.attention: values against torch's SDPA, properties, and the module."""

import pytest
import torch
import torch.nn.functional as F

from genlab.attention import (
    MultiHeadAttention,
    dependence_map,
    merge_heads,
    multi_head_self_attention,
    scaled_dot_product_attention,
    split_heads,
)
from genlab.masks import (
    causal_mask,
    combine_masks,
    known_unknown_mask,
    padding_mask,
    sliding_window_mask,
    to_additive,
)

ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
B, H, T, D = 2, 3, 5, 8


def randn(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


def qkv(dtype, Tq=T, Tk=T, seed=0):
    return (
        randn(B, H, Tq, D, dtype=dtype, seed=seed),
        randn(B, H, Tk, D, dtype=dtype, seed=seed + 1),
        randn(B, H, Tk, D + 2, dtype=dtype, seed=seed + 2),  # Dv != D on purpose
    )


def random_bool_mask(*shape, seed=0):
    """Random mask where every query keeps at least its last key (no empty row)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(*shape, generator=generator) > 0.4
    mask[..., -1] = True
    return mask


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual, expected, atol=ATOL[dtype], rtol=0)


# ----------------------------------------------------------------------------
# scaled_dot_product_attention against torch


@DTYPES
@pytest.mark.parametrize(
    "mask_shape",
    [None, (B, H, T, T), (B, 1, 1, T), (T, T), (1, T)],
    ids=["no-mask", "full-shape", "padding-like", "square", "row"],
)
def test_sdpa_matches_torch_with_bool_masks(dtype, mask_shape):
    q, k, v = qkv(dtype)
    mask = None if mask_shape is None else random_bool_mask(*mask_shape)
    output, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert output.shape == (B, H, T, D + 2) and weights.shape == (B, H, T, T)
    assert_close(output, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), dtype)
    assert_close(weights @ v, output, dtype)


@DTYPES
def test_sdpa_matches_torch_with_float_mask(dtype):
    q, k, v = qkv(dtype)
    additive = randn(B, 1, T, T, dtype=dtype, seed=7)  # arbitrary biases
    additive = additive + to_additive(random_bool_mask(B, 1, T, T, seed=8), dtype)
    additive[0, 0, 0, 0] = float("-inf")  # -inf works like a blocked key
    output, _ = scaled_dot_product_attention(q, k, v, attn_mask=additive)
    assert_close(output, F.scaled_dot_product_attention(q, k, v, attn_mask=additive), dtype)


@DTYPES
def test_additive_form_of_a_bool_mask_gives_the_same_result(dtype):
    q, k, v = qkv(dtype)
    mask = random_bool_mask(B, 1, T, T)
    mask[1, 0, 2] = False  # with a fully masked row
    bool_out, bool_weights = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    add_out, add_weights = scaled_dot_product_attention(q, k, v, attn_mask=to_additive(mask, dtype))
    assert torch.equal(bool_out, add_out) and torch.equal(bool_weights, add_weights)


@DTYPES
@pytest.mark.parametrize("Tq, Tk", [(5, 5), (3, 6), (6, 3), (1, 4)])
def test_sdpa_is_causal_matches_torch(dtype, Tq, Tk):
    q, k, v = qkv(dtype, Tq=Tq, Tk=Tk)
    output, weights = scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(output, F.scaled_dot_product_attention(q, k, v, is_causal=True), dtype)
    top_left = torch.ones(Tq, Tk, dtype=torch.bool).tril()
    assert (weights[..., ~top_left] == 0).all()


@DTYPES
def test_sdpa_causal_mask_equals_is_causal(dtype):
    q, k, v = qkv(dtype)
    by_mask = scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T))
    by_flag = scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(by_mask[0], by_flag[0]) and torch.equal(by_mask[1], by_flag[1])


def test_sdpa_broadcasts_leading_dims():
    q = randn(T, D)  # no batch at all
    k, v = randn(B, T, D, seed=1), randn(B, T, D, seed=2)
    output, weights = scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T))
    assert output.shape == (B, T, D) and weights.shape == (B, T, T)
    assert_close(output, F.scaled_dot_product_attention(q, k, v, is_causal=True), torch.float32)


# ----------------------------------------------------------------------------
# properties


@DTYPES
@pytest.mark.parametrize("kind", ["bool", "float-inf", "float-additive"])
def test_fully_masked_rows_give_zeros_not_nan(dtype, kind):
    q, k, v = qkv(dtype)
    mask = random_bool_mask(B, H, T, T)
    mask[0, 1, 2] = False  # one query sees nothing
    mask[1] = False  # a whole sequence sees nothing
    if kind == "float-inf":
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))
    elif kind == "float-additive":
        mask = to_additive(mask, dtype)
    output, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(output).all() and torch.isfinite(weights).all()
    assert (output[0, 1, 2] == 0).all() and (weights[0, 1, 2] == 0).all()
    assert (output[1] == 0).all() and (weights[1] == 0).all()
    expected_row_sums = torch.ones(H, T, dtype=dtype)  # the other rows are untouched
    expected_row_sums[1, 2] = 0
    assert_close(weights[0].sum(dim=-1), expected_row_sums, dtype)


@DTYPES
def test_weights_rows_sum_to_one_except_fully_masked(dtype):
    q, k, v = qkv(dtype)
    mask = random_bool_mask(B, H, T, T, seed=3)
    mask[0, 0, 4] = False
    _, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    row_sums = weights.sum(dim=-1)  # (B, H, T)
    has_key = mask.any(dim=-1)
    assert_close(row_sums[has_key], torch.ones_like(row_sums[has_key]), dtype)
    assert (row_sums[~has_key] == 0).all()
    assert (weights[~mask] == 0).all()  # blocked keys get exactly zero weight
    assert (weights >= 0).all()


def test_causal_weights_are_zero_above_the_diagonal():
    q, k, v = qkv(torch.float32)
    _, weights = scaled_dot_product_attention(q, k, v, is_causal=True)
    above = ~causal_mask(T)
    assert (weights[..., above] == 0).all()
    assert (weights[..., ~above] > 0).all()


@pytest.mark.parametrize("kind", ["bool", "float-inf"])
def test_gradients_are_finite_with_a_fully_masked_row(kind):
    q, k, v = (t.requires_grad_() for t in qkv(torch.float64))
    mask = random_bool_mask(1, 1, T, T)
    mask[..., 3, :] = False
    if kind == "float-inf":
        mask = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    output, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    (output.square().sum() + weights.square().sum()).backward()
    for tensor in (q, k, v):
        assert torch.isfinite(tensor.grad).all()
    assert (q.grad[..., 3, :] == 0).all()  # the masked query influences nothing


def test_gradients_match_torch():
    q, k, v = (t.requires_grad_() for t in qkv(torch.float64))
    mask = random_bool_mask(B, 1, 1, T)
    upstream = randn(B, H, T, D + 2, dtype=torch.float64, seed=9)
    ours = torch.autograd.grad(
        (scaled_dot_product_attention(q, k, v, attn_mask=mask)[0] * upstream).sum(), (q, k, v)
    )
    theirs = torch.autograd.grad(
        (F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * upstream).sum(), (q, k, v)
    )
    for a, b in zip(ours, theirs):
        assert_close(a, b, torch.float64)


# ----------------------------------------------------------------------------
# dropout


def test_dropout_with_seeded_generator_is_reproducible_and_leaves_global_rng():
    q, k, v = qkv(torch.float32)
    global_state = torch.get_rng_state()
    first = scaled_dot_product_attention(
        q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(1)
    )
    second = scaled_dot_product_attention(
        q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(1)
    )
    other = scaled_dot_product_attention(
        q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])
    output, weights = first
    assert_close(weights @ v, output, torch.float32)  # returned weights are the ones used
    plain = scaled_dot_product_attention(q, k, v)[1]
    kept = weights != 0
    assert 0 < kept.float().mean() < 1
    assert_close(weights[kept], plain[kept] * 2, torch.float32)  # rescaled by 1/(1-p)


def test_dropout_zero_is_identity():
    q, k, v = qkv(torch.float32)
    plain = scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T))
    zero = scaled_dot_product_attention(
        q, k, v, attn_mask=causal_mask(T), dropout_p=0.0, generator=torch.Generator()
    )
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])


def test_module_dropout_only_in_training():
    torch.manual_seed(0)
    module = MultiHeadAttention(16, 2, dropout=0.5).eval()
    x = randn(2, T, 16)
    assert torch.equal(module(x), module(x))
    module.train()
    torch.manual_seed(1)
    assert not torch.equal(module(x), module.eval()(x))


# ----------------------------------------------------------------------------
# errors


def test_attn_mask_and_is_causal_together_is_an_error():
    q, k, v = qkv(torch.float32)
    with pytest.raises(ValueError, match="not both"):
        scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T), is_causal=True)
    module = MultiHeadAttention(16, 2)
    x = randn(2, T, 16)
    for backend in ("scratch", "torch"):
        with pytest.raises(ValueError, match="not both"):
            module(x, attn_mask=causal_mask(T), is_causal=True, backend=backend)


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 4, 8), (2, 4, 6), (2, 4, 8)), r"same last dimension.*\(2, 4, 8\).*\(2, 4, 6\)"),
        (((2, 4, 8), (2, 5, 8), (2, 4, 8)), r"number of keys.*\(2, 5, 8\).*\(2, 4, 8\)"),
        (((2, 4, 8), (3, 4, 8), (3, 4, 8)), r"broadcast.*\(2, 4, 8\).*\(3, 4, 8\)"),
        (((8,), (4, 8), (4, 8)), "at least 2 dimensions"),
    ],
)
def test_mismatched_shapes_are_reported(shapes, message):
    q, k, v = (torch.zeros(shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        scaled_dot_product_attention(q, k, v)


def test_bad_masks_and_dropout_are_reported():
    q, k, v = qkv(torch.float32)
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(2, 3, 5, 5\)"):
        scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(4))
    with pytest.raises(ValueError, match="float64"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(T, T, dtype=torch.float64))
    with pytest.raises(ValueError, match="int64"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(T, T, dtype=torch.long))
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout_p"):
            scaled_dot_product_attention(q, k, v, dropout_p=p)


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="backend"):
        MultiHeadAttention(8, 2, backend="flash")
    with pytest.raises(ValueError, match="backend"):
        MultiHeadAttention(8, 2)(randn(1, 3, 8), backend="flash")


# ----------------------------------------------------------------------------
# heads


def test_split_and_merge_heads():
    x = randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    assert torch.equal(heads[:, 1], x[..., 4:8])  # head h owns channels h*Dh..(h+1)*Dh-1
    assert torch.equal(merge_heads(heads), x)
    assert merge_heads(randn(2, 3, 5, 4)).shape == (2, 5, 12)
    with pytest.raises(ValueError, match="C=12.*n_heads=5"):
        split_heads(x, 5)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        split_heads(heads, 3)
    with pytest.raises(ValueError, match=r"\(B, H, T, Dh\)"):
        merge_heads(x)


# ----------------------------------------------------------------------------
# MultiHeadAttention


def make_module(dtype, bias=True, seed=0):
    torch.manual_seed(seed)
    return MultiHeadAttention(16, 4, bias=bias).to(dtype).eval()


def module_masks():
    padding = padding_mask(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))  # (B, 1, 1, T)
    with_empty_row = random_bool_mask(T, T)
    with_empty_row[2] = False
    return {
        "none": {},
        "padding": {"attn_mask": padding},
        "causal-mask": {"attn_mask": causal_mask(T)},
        "is-causal": {"is_causal": True},
        "causal+padding": {"attn_mask": combine_masks(causal_mask(T), padding)},
        "empty-row": {"attn_mask": with_empty_row},
        "all-padding": {"attn_mask": padding_mask(torch.tensor([[0] * T, [1] * T]))},
        "float-empty-row": {"attn_mask": to_additive(with_empty_row, torch.float32)},
    }


@DTYPES
@pytest.mark.parametrize("case", list(module_masks()))
def test_module_backends_agree(dtype, case):
    module = make_module(dtype)
    kwargs = module_masks()[case]
    if "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        kwargs = {"attn_mask": kwargs["attn_mask"].to(dtype)}
    x = randn(B, T, 16, dtype=dtype)
    scratch = module(x, **kwargs, backend="scratch")
    fused = module(x, **kwargs, backend="torch")
    assert scratch.shape == (B, T, 16)
    assert torch.isfinite(fused).all()
    assert_close(fused, scratch, dtype)


def test_module_fully_masked_rows_are_zero_before_the_output_projection():
    module = make_module(torch.float64, bias=False)
    x = randn(B, T, 16, dtype=torch.float64)
    mask = padding_mask(torch.tensor([[0] * T, [1] * T]))
    for backend in ("scratch", "torch"):
        assert (module(x, attn_mask=mask, backend=backend)[0] == 0).all()


def test_module_torch_backend_gradients_are_finite_with_empty_rows():
    module = make_module(torch.float32)
    module.backend = "torch"
    x = randn(B, T, 16).requires_grad_()
    mask = padding_mask(torch.tensor([[0] * T, [1, 1, 1, 0, 0]]))
    module(x, attn_mask=mask).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize("backend", ["scratch", "torch"])
def test_module_need_weights(backend):
    module = make_module(torch.float32)
    module.backend = backend
    x = randn(B, T, 16)
    output, weights = module(x, is_causal=True, need_weights=True)
    assert output.shape == (B, T, 16) and weights.shape == (B, 4, T, T)
    assert (weights[..., ~causal_mask(T)] == 0).all()
    assert_close(output, module(x, is_causal=True), torch.float32)


@DTYPES
@pytest.mark.parametrize("case", ["none", "padding", "is-causal", "empty-row"])
def test_functional_form_equals_module(dtype, case):
    module = make_module(dtype, bias=False)
    x = randn(B, T, 16, dtype=dtype)
    kwargs = module_masks()[case]
    expected = module(x, **kwargs)
    actual = multi_head_self_attention(
        x,
        module.q_proj.weight.T,
        module.k_proj.weight.T,
        module.v_proj.weight.T,
        module.o_proj.weight.T,
        n_heads=4,
        **kwargs,
    )
    assert_close(actual, expected, dtype)


def test_functional_form_rejects_wrong_weight_shapes():
    x = randn(1, 3, 8)
    square = torch.eye(8)
    with pytest.raises(ValueError, match=r"W_k must be \(8, 8\).*\(8, 4\)"):
        multi_head_self_attention(x, square, torch.zeros(8, 4), square, square, n_heads=2)


# ----------------------------------------------------------------------------
# dependence_map: the causality experiment


@pytest.mark.parametrize(
    "mask",
    [None, causal_mask(6), sliding_window_mask(6, 2), known_unknown_mask(2, 4)],
    ids=["full", "causal", "sliding-window", "known-unknown"],
)
def test_dependence_map_recovers_the_mask(mask):
    module = make_module(torch.float64)
    x = randn(2, 6, 16, dtype=torch.float64)
    dep = dependence_map(lambda inputs: module(inputs, attn_mask=mask), x)
    assert dep.dtype == torch.bool and dep.shape == (6, 6)
    expected = torch.ones(6, 6, dtype=torch.bool) if mask is None else mask
    assert torch.equal(dep, expected)


def test_dependence_map_causal_is_lower_triangular_and_leaves_no_graph():
    module = make_module(torch.float32)
    x = randn(1, 7, 16).requires_grad_()
    dep = dependence_map(lambda inputs: module(inputs, is_causal=True), x)
    assert torch.equal(dep, causal_mask(7))
    assert x.grad is None


def test_dependence_map_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        dependence_map(lambda inputs: inputs, torch.zeros(4, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_and_backends_agree_there():
    module = make_module(torch.float32).cuda()
    x = randn(B, T, 16).cuda()
    mask = padding_mask(torch.tensor([[0] * T, [1, 1, 1, 0, 0]], device="cuda"))
    scratch = module(x, attn_mask=mask, backend="scratch")
    fused = module(x, attn_mask=mask, backend="torch")
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, scratch, atol=1e-5, rtol=1e-5)  # TF32/fused kernels
    _, weights = module(x, is_causal=True, need_weights=True)
    assert (weights[..., ~causal_mask(T, device="cuda")] == 0).all()
    for backend in ("scratch", "torch"):  # a mask built on the CPU is moved to x's device
        torch.testing.assert_close(module(x, attn_mask=causal_mask(T), backend=backend),
                                   module(x, is_causal=True), atol=1e-5, rtol=1e-5)
    q, k, v = (t.cuda() for t in qkv(torch.float32))
    generator = torch.Generator(device="cuda").manual_seed(0)
    output, _ = scaled_dot_product_attention(q, k, v, dropout_p=0.1, generator=generator)
    assert output.device.type == "cuda"
