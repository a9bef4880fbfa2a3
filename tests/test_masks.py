"""genlab.masks: exact values, dtype, device, and error messages."""

import pytest
import torch

from genlab.masks import (
    causal_mask,
    combine_masks,
    known_unknown_mask,
    padding_mask,
    sliding_window_mask,
    to_additive,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def bools(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_causal_mask_values():
    expected = bools([[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    assert torch.equal(causal_mask(3), expected)
    assert torch.equal(causal_mask(1), bools([[1]]))


@pytest.mark.parametrize("T", [1, 2, 5, 17])
def test_causal_mask_is_lower_triangular(T):
    mask = causal_mask(T)
    assert mask.dtype == torch.bool and mask.shape == (T, T)
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(mask, j <= i)


@pytest.mark.parametrize("T", [0, -3])
def test_causal_mask_rejects_bad_T(T):
    with pytest.raises(ValueError, match=f"T={T}"):
        causal_mask(T)


@pytest.mark.parametrize("device", DEVICES)
def test_masks_follow_device(device):
    assert causal_mask(4, device=device).device.type == device
    assert known_unknown_mask(2, 2, device=device).device.type == device
    assert sliding_window_mask(4, 2, device=device).device.type == device
    am = torch.ones(2, 3, device=device)
    assert padding_mask(am).device.type == device
    assert to_additive(causal_mask(3, device=device), torch.float32).device.type == device


@pytest.mark.parametrize(
    "attention_mask",
    [
        torch.tensor([[1, 1, 0], [1, 0, 0]]),
        torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        torch.tensor([[True, True, False], [True, False, False]]),
    ],
    ids=["int", "float", "bool"],
)
def test_padding_mask_from_int_float_bool(attention_mask):
    mask = padding_mask(attention_mask)
    assert mask.dtype == torch.bool
    assert mask.shape == (2, 1, 1, 3)
    assert torch.equal(mask[:, 0, 0], bools([[1, 1, 0], [1, 0, 0]]))


def test_padding_mask_broadcasts_over_heads_and_queries():
    mask = padding_mask(torch.tensor([[1, 1, 0]]))  # (1, 1, 1, 3)
    full = mask.expand(1, 4, 3, 3)  # (B, H, Tq, Tk)
    assert full[:, :, :, 2].logical_not().all() and full[:, :, :, :2].all()


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.ones(3), "shape"),
        (torch.ones(1, 2, 3), "shape"),
        (torch.tensor([[1, 2, 0]]), "0/1"),
        (torch.tensor([[1.0, 0.5]]), "0/1"),
        (torch.tensor([[1, -1]]), "0/1"),
    ],
)
def test_padding_mask_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        padding_mask(bad)


def test_known_unknown_mask_small_example():
    # P = 2 known, G = 3 unknown; row = query, column = key
    expected = bools(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 1, 0],
            [1, 1, 0, 0, 1],
        ]
    )
    assert torch.equal(known_unknown_mask(2, 3), expected)


@pytest.mark.parametrize("P, G", [(1, 0), (3, 0), (1, 1), (1, 4), (4, 1), (5, 7)])
def test_known_unknown_mask_blocks(P, G):
    mask = known_unknown_mask(P, G)
    assert mask.dtype == torch.bool and mask.shape == (P + G, P + G)
    assert mask[:P, :P].all()  # known -> known
    assert not mask[:P, P:].any()  # known -> unknown
    assert mask[P:, :P].all()  # unknown -> known
    assert torch.equal(mask[P:, P:], torch.eye(G, dtype=torch.bool))  # itself only
    assert mask.any(dim=-1).all()  # no query is left with nothing to see


@pytest.mark.parametrize("P, G, name", [(0, 2, "n_known=0"), (2, -1, "n_unknown=-1")])
def test_known_unknown_mask_rejects_bad_sizes(P, G, name):
    with pytest.raises(ValueError, match=name):
        known_unknown_mask(P, G)


def test_sliding_window_mask_values():
    expected = bools(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(sliding_window_mask(5, 3), expected)


@pytest.mark.parametrize("T, window", [(1, 1), (6, 1), (6, 2), (6, 6), (6, 10), (9, 4)])
def test_sliding_window_mask_property(T, window):
    mask = sliding_window_mask(T, window)
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(mask, (j <= i) & (j > i - window))
    if window >= T:
        assert torch.equal(mask, causal_mask(T))


def test_sliding_window_mask_rejects_bad_window():
    with pytest.raises(ValueError, match="window=0"):
        sliding_window_mask(4, 0)


def test_combine_masks_and_with_broadcasting():
    causal = causal_mask(3)  # (3, 3)
    padding = padding_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]))  # (2, 1, 1, 3)
    combined = combine_masks(causal, None, padding)
    assert combined.shape == (2, 1, 3, 3) and combined.dtype == torch.bool
    assert torch.equal(combined[1, 0], causal)
    assert torch.equal(combined[0, 0], causal & bools([1, 1, 0]))
    assert torch.equal(combine_masks(causal), causal)


def test_combine_masks_all_none():
    assert combine_masks() is None
    assert combine_masks(None, None) is None


def test_combine_masks_rejects_float():
    with pytest.raises(ValueError, match="boolean"):
        combine_masks(causal_mask(2), torch.zeros(2, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_to_additive(dtype):
    additive = to_additive(causal_mask(3), dtype)
    assert additive.dtype == dtype
    lowest = torch.finfo(dtype).min
    expected = torch.tensor(
        [[0, lowest, lowest], [0, 0, lowest], [0, 0, 0]], dtype=dtype
    )
    assert torch.equal(additive, expected)
    assert torch.isfinite(additive).all()


def test_to_additive_rejects_non_bool():
    with pytest.raises(ValueError, match="boolean"):
        to_additive(torch.ones(2, 2), torch.float32)
