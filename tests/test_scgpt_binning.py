"""genlab.scgpt.bin_expression against upstream scGPT's binning, re-implemented here.

Upstream (bowang-lab/scGPT, ``scgpt/preprocess.py``), as described in words: per cell,
take the nonzero values; edges = their ``np.quantile`` at ``np.linspace(0, 1, n_bins - 1)``
(numpy's default linear interpolation, in the row's own dtype); a value that equals at most
one edge gets the number of edges <= it.  A value equal to several edges: upstream main
draws ``ceil(u * (right - left) + left)`` with u uniform in [0, 1), where ``left`` counts
the edges <= x and ``right`` the edges < x, i.e. a random bin in ``right + 1 .. left``;
upstream dev-temp takes ``left``.  All-zero rows stay zero.  The re-implementation below is
written from that description, not from genlab's code.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from genlab.scgpt import bin_expression

N_CELLS = 300  # random cells of each kind


def upstream_row(row: np.ndarray, n_bins: int, rng: np.random.Generator | None):
    """One cell by upstream's rule: (dev-temp bins, main's lowest, main's highest, main's draw).

    ``rng`` draws main's random tie-breaking (None: no draw, the fourth value is None)."""
    zeros = np.zeros(row.shape, dtype=np.int64)
    if not (row != 0).any():
        return zeros, zeros, zeros, (zeros if rng is not None else None)
    where = np.flatnonzero(row)
    x = row[where]
    edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
    at_most = np.digitize(x, edges)  # edges <= x
    below = np.digitize(x, edges, right=True)  # edges < x
    lowest = np.where(at_most > below, below + 1, at_most)  # main's range: lowest .. at_most
    out = [zeros.copy() for _ in range(3)]
    for array, bins in zip(out, (at_most, lowest, at_most)):
        array[where] = bins
    drawn = None
    if rng is not None:
        u = rng.random(x.size)
        drawn = zeros.copy()
        drawn[where] = np.ceil(u * (below - at_most) + at_most).astype(np.int64)
    return (*out, drawn)


def upstream(values: np.ndarray, n_bins: int, seed: int = 0):
    """Every row of a dense matrix: (dev-temp, main's lowest, main's highest, main's draw)."""
    rng = np.random.default_rng(seed)
    rows = [upstream_row(row, n_bins, rng) for row in values]
    return tuple(np.stack([r[i] for r in rows]) for i in range(4))


# ---------------------------------------------------------------------------- random cells


def continuous(rng, n_cells, n_genes):
    """Gamma values with 40% zeros: no ties."""
    x = rng.gamma(0.8, 1.5, size=(n_cells, n_genes))
    x[rng.random(x.shape) < 0.4] = 0.0
    return x


def log1p_poisson(rng, n_cells, n_genes):
    """log1p of Poisson counts with gene rates from a gamma: many ties (ones, twos)."""
    rates = rng.gamma(0.5, 2.0, size=n_genes) * rng.gamma(4.0, 0.25, size=(n_cells, 1))
    return np.log1p(rng.poisson(rates, size=(n_cells, n_genes)).astype(np.float64))


def log1p_negative_binomial(rng, n_cells, n_genes):
    """log1p of overdispersed (negative binomial) counts, normalised per cell."""
    means = rng.gamma(0.4, 3.0, size=n_genes)
    counts = rng.negative_binomial(2.0, 2.0 / (2.0 + means), size=(n_cells, n_genes)).astype(np.float64)
    total = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    return np.log1p(counts / total * 1e4)


def single_gene(rng, n_cells, n_genes):
    """One nonzero gene per cell."""
    x = np.zeros((n_cells, n_genes))
    x[np.arange(n_cells), rng.integers(n_genes, size=n_cells)] = rng.gamma(2.0, 1.0, size=n_cells)
    return x


KINDS = {"continuous": continuous, "log1p_poisson": log1p_poisson,
         "log1p_negative_binomial": log1p_negative_binomial, "single_gene": single_gene}


def agreement(kind: str, n_bins: int, dtype=np.float64, sparse: bool = False, seed: int = 0) -> dict:
    """genlab against upstream on N_CELLS random cells of one kind; the counts behind the asserts."""
    rng = np.random.default_rng(seed)
    n_genes = int(rng.integers(20, 400))
    values = KINDS[kind](rng, N_CELLS, n_genes).astype(dtype)
    values[:, 0] = np.where((values > 0).any(axis=1), values[:, 0], 1.0)  # no silent cell here
    ours = bin_expression(sp.csr_matrix(values) if sparse else values, n_bins)
    dev_temp, lowest, highest, drawn = upstream(values, n_bins, seed)
    nonzero = values > 0
    deterministic = nonzero & (lowest == highest)
    return {
        "cells": N_CELLS, "nonzero": int(nonzero.sum()),
        "upstream_deterministic": int(deterministic.sum()),
        "equal_where_deterministic": int((ours == drawn)[deterministic].sum()),
        "inside_main_range": int(((ours >= lowest) & (ours <= highest))[nonzero].sum()),
        "equal_to_dev_temp": int((ours == dev_temp)[nonzero].sum()),
        "equal_to_a_main_draw": int((ours == drawn)[nonzero].sum()),
        "zeros_stay_zero": bool((ours[~nonzero] == 0).all()),
    }


CASES = [(kind, n_bins, np.float64, False) for kind in KINDS for n_bins in (51, 11)] + [
    ("log1p_poisson", 51, np.float32, False),   # upstream computes in the AnnData's float32
    ("continuous", 51, np.float32, False),
    ("log1p_poisson", 51, np.float64, True),    # sparse input
    ("log1p_negative_binomial", 51, np.float32, True),
    ("single_gene", 51, np.float64, True),
]


@pytest.mark.parametrize("kind, n_bins, dtype, sparse", CASES,
                         ids=[f"{k}-{b}-{np.dtype(d).name}{'-sparse' if s else ''}" for k, b, d, s in CASES])
def test_bins_equal_upstream(kind, n_bins, dtype, sparse):
    counts = agreement(kind, n_bins, dtype, sparse)
    print(kind, n_bins, np.dtype(dtype).name, "sparse" if sparse else "dense", counts)
    assert counts["zeros_stay_zero"]
    assert counts["equal_where_deterministic"] == counts["upstream_deterministic"], counts
    assert counts["inside_main_range"] == counts["nonzero"], counts
    assert counts["equal_to_dev_temp"] == counts["nonzero"], counts
    if kind == "continuous":  # no ties: no value equals two edges, upstream is deterministic
        assert counts["upstream_deterministic"] == counts["nonzero"], counts
    if kind in ("log1p_poisson", "single_gene"):  # ties: main's draw is really random here
        assert counts["equal_to_a_main_draw"] < counts["nonzero"], counts


# ------------------------------------------------------------------------- worked examples


def test_worked_example_without_ties():
    # 49 edges 1, 1 + 1/24, ..., 3: 1 reaches the first, 2 the first 25 (up to 1 + 24/24),
    # 3 all of them
    assert bin_expression(np.array([1.0, 2.0, 3.0]), n_bins=51).tolist() == [1, 25, 50]
    assert bin_expression(np.array([0.0, 3.0, 0.0, 1.0, 2.0]), n_bins=51).tolist() == [0, 50, 0, 1, 25]


def test_worked_example_with_ties():
    # nonzero values 1, 1, 1, 1, 3 (n = 5) with 11 bins: 10 edges at the positions 4k/9 of the
    # sorted values (k = 0 .. 9): 0, .44, .89, 1.33, 1.78, 2.22, 2.67 all fall among the four
    # 1s, so seven edges are 1; 3.11 -> 1 + 2 x .11 = 1.22; 3.56 -> 1 + 2 x .56 = 2.11; 4 -> 3.
    # 1 equals seven edges and is below none: upstream main draws from bins 1 .. 7, dev-temp
    # and genlab take 7; 3 reaches all ten edges: bin 10
    values = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 3.0])
    assert bin_expression(values, n_bins=11).tolist() == [0, 7, 7, 7, 7, 10]
    _, lowest, highest, _ = upstream(values[None, :], 11)
    assert lowest[0].tolist() == [0, 1, 1, 1, 1, 10] and highest[0].tolist() == [0, 7, 7, 7, 7, 10]


def test_one_nonzero_gene_gets_the_top_bin():
    # every edge equals the value: main draws from 1 .. n_bins - 1, genlab takes n_bins - 1
    assert bin_expression(np.array([0.0, 7.0, 0.0]), n_bins=51).tolist() == [0, 50, 0]
    assert bin_expression(np.array([[0.0, 0.2], [5.0, 0.0]]), n_bins=3).tolist() == [[0, 2], [2, 0]]


def test_all_zero_cell_gives_zeros_and_a_warning():
    values = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 3.0]])
    for matrix in (values, sp.csr_matrix(values)):
        with pytest.warns(UserWarning, match=r"1 of 3 cell\(s\) have no nonzero value \(e.g. cell 1\)"):
            bins = bin_expression(matrix, n_bins=5)
        assert bins.tolist() == [[1, 4, 0], [0, 0, 0], [0, 4, 4]]
    with pytest.warns(UserWarning, match="no nonzero value"):
        assert bin_expression(np.zeros(4)).tolist() == [0, 0, 0, 0]


def test_sparse_explicit_zeros_are_zeros():
    matrix = sp.csr_matrix((np.array([0.0, 2.0, 1.0]), np.array([0, 1, 2]), np.array([0, 3])),
                           shape=(1, 4))
    assert bin_expression(matrix, n_bins=3).tolist() == [[0, 2, 1, 0]]


# ------------------------------------------------------------------------------ properties


def test_zeros_range_monotone_and_ties_share_a_bin():
    rng = np.random.default_rng(0)
    values = log1p_poisson(rng, 50, 80)
    values[:, 0] += 1.0
    bins = bin_expression(values, n_bins=51)
    assert bins.dtype == np.int64 and bins.shape == values.shape
    assert (bins[values == 0] == 0).all()
    assert ((bins[values > 0] >= 1) & (bins[values > 0] <= 50)).all()
    assert (bins.max(axis=1) == 50).all(), "a cell's maximum is always in the top bin"
    for v, b in zip(values, bins):
        order = np.argsort(v, kind="stable")
        assert (np.diff(b[order]) >= 0).all(), "bins must not decrease as values grow"
        for value in np.unique(v):
            assert len(set(b[v == value])) == 1, "equal values must share a bin"


def test_each_cell_on_its_own_whatever_the_layout():
    values = log1p_negative_binomial(np.random.default_rng(1), 40, 60)
    bins = bin_expression(values)
    assert np.array_equal(bins, bin_expression(values.copy()))  # deterministic
    assert np.array_equal(bins, bin_expression(sp.csr_matrix(values)))
    assert np.array_equal(bins, bin_expression(sp.csc_matrix(values)))
    for cell in (0, 7, 39):
        assert np.array_equal(bin_expression(values[cell]), bins[cell])
    scaled = values.copy()
    scaled[3] *= 4.0  # a power of two scales every quantile exactly
    assert np.array_equal(bin_expression(scaled), bins)
    permutation = np.random.default_rng(2).permutation(values.shape[1])
    assert np.array_equal(bin_expression(values[:, permutation]), bins[:, permutation])


def test_integer_input_is_binned_like_floats():
    counts = np.random.default_rng(3).poisson(2.0, size=(10, 30))
    counts[:, 0] += 1
    assert np.array_equal(bin_expression(counts), bin_expression(counts.astype(np.float64)))


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad, message", [
    (np.array([[1.0, -0.5, 2.0]]), "negative"),
    (np.array([[1.0, np.nan, 2.0]]), "NaN"),
    (np.array([[1.0, np.inf, 2.0]]), "infinite"),
])
def test_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        bin_expression(bad)
    with pytest.raises(ValueError, match=message):
        bin_expression(sp.csr_matrix(bad))


def test_rejects_non_numbers_and_bad_shapes():
    with pytest.raises(ValueError, match="must be numbers"):
        bin_expression(np.array([["1.0", "2.0"]]))
    with pytest.raises(ValueError, match="must be numbers"):
        bin_expression(np.array([[1.0, None]], dtype=object))
    with pytest.raises(ValueError, match=r"\(cells, genes\)"):
        bin_expression(np.ones((2, 3, 4)))


def test_error_names_the_position():
    values = np.ones((3, 4))
    values[2, 1] = -1.0
    with pytest.raises(ValueError, match="cell 2, gene 1"):
        bin_expression(sp.csr_matrix(values))
    with pytest.raises(ValueError, match="cell 2, gene 1"):
        bin_expression(values)


@pytest.mark.parametrize("n_bins", [2, 1, 0, -5, 2.5, 51.0, True, "51", None])
def test_rejects_n_bins_below_three_or_not_an_integer(n_bins):
    with pytest.raises(ValueError, match="n_bins must be an integer >= 3"):
        bin_expression(np.array([1.0, 2.0, 3.0]), n_bins=n_bins)


def test_smallest_n_bins():
    # 3 bins: two edges, the cell's minimum and maximum; everything below the maximum is bin 1
    assert bin_expression(np.array([0.0, 1.0, 2.0, 3.0]), n_bins=3).tolist() == [0, 1, 1, 2]
    assert bin_expression(np.array([3, 1, 2]), n_bins=np.int64(3)).tolist() == [2, 1, 1]

