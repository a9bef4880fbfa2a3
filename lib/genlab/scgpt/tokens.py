"""scGPT's input: gene vocabulary, per-cell binning of expression values, cells as tokens.

``GeneVocab`` maps gene names to token ids; ``bin_expression`` turns a cell's
expression values into per-cell quantile bins (deterministic mid-rank bins);
``tokenize_adata`` turns an AnnData into ``CellTokens``, the model's input.
Part of ``genlab.scgpt`` (the package docstring explains the model).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Sequence

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

__all__ = [
    "PAD_TOKEN",
    "CLS_TOKEN",
    "GeneVocab",
    "bin_expression",
    "select_highly_variable_genes",
    "CellTokens",
    "tokenize_adata",
]

PAD_TOKEN, CLS_TOKEN = "<pad>", "<cls>"


# ----------------------------------------------------------------------------
# gene vocabulary


class GeneVocab:
    """Gene name <-> token id: ``<pad>`` = 0, ``<cls>`` = 1, then the genes in order.

    ``GeneVocab.from_adata(adata)`` takes the genes from ``adata.var_names``.
    """

    pad_id = 0
    cls_id = 1

    def __init__(self, genes: Sequence[str]):
        genes = [str(gene) for gene in genes]
        if not genes:
            raise ValueError("GeneVocab needs at least one gene")
        clashes = sorted(set(genes) & {PAD_TOKEN, CLS_TOKEN})
        if clashes:
            raise ValueError(f"gene names may not repeat the special tokens: {clashes}")
        duplicates = sorted(g for g, n in collections.Counter(genes).items() if n > 1)
        if duplicates:
            raise ValueError(f"gene names must be unique; duplicates: {duplicates[:5]}")
        self.itos = [PAD_TOKEN, CLS_TOKEN, *genes]
        self.stoi = {token: i for i, token in enumerate(self.itos)}

    @classmethod
    def from_adata(cls, adata: anndata.AnnData) -> GeneVocab:
        return cls(adata.var_names)

    @property
    def genes(self) -> list[str]:
        return self.itos[2:]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, gene) -> bool:
        return gene in self.stoi

    def encode(self, genes: Sequence[str]) -> np.ndarray:
        """Gene names -> int64 ids; a clear error lists genes that are not in the vocabulary."""
        genes = [str(gene) for gene in genes]
        missing = [gene for gene in genes if gene not in self.stoi]
        if missing:
            raise ValueError(
                f"{len(missing)} gene(s) missing from the vocabulary ({len(self) - 2} genes), "
                f"e.g. {missing[:5]}; build the vocabulary from these genes or drop them"
            )
        return np.array([self.stoi[gene] for gene in genes], dtype=np.int64)

    def decode(self, ids) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def __repr__(self) -> str:
        return f"GeneVocab({len(self) - 2} genes + {PAD_TOKEN}, {CLS_TOKEN})"


# ----------------------------------------------------------------------------
# per-cell binning


def _checked_expression(values) -> np.ndarray | sp.csr_matrix:
    """(cells, genes) float matrix (dense or CSR); clear errors for NaN, inf, negatives."""
    if sp.issparse(values):
        matrix = sp.csr_matrix(values, dtype=np.float64)
        stored = matrix.data
    else:
        matrix = np.asarray(values)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2:
            raise ValueError(f"expression values must be (cells, genes), got shape {matrix.shape}")
        if not (np.issubdtype(matrix.dtype, np.number) or matrix.dtype == bool):
            raise ValueError(f"expression values must be numbers, got dtype {matrix.dtype}")
        matrix = matrix.astype(np.float64)
        stored = matrix
    for bad, what in ((np.isnan(stored), "NaN"), (np.isinf(stored), "infinite values"),
                      (stored < 0, "negative values")):
        if bad.any():
            cell, gene = _first_position(matrix, bad)
            raise ValueError(
                f"expression values contain {what} (first at cell {cell}, gene {gene}); "
                "expected non-negative (e.g. log1p-normalised) expression"
            )
    return matrix


def _first_position(matrix, bad: np.ndarray) -> tuple[int, int]:
    """(cell, gene) of the first True of ``bad`` (over a dense matrix or a CSR's data)."""
    if sp.issparse(matrix):
        first = int(np.flatnonzero(bad)[0])
        cell = int(np.searchsorted(matrix.indptr, first, side="right") - 1)
        return cell, int(matrix.indices[first])
    cell, gene = np.argwhere(bad)[0]
    return int(cell), int(gene)


def _nonzero_in_cell(matrix, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """(gene columns, values) of the cell's nonzero entries."""
    if sp.issparse(matrix):
        start, end = matrix.indptr[cell], matrix.indptr[cell + 1]
        columns, values = matrix.indices[start:end], matrix.data[start:end]
    else:
        row = matrix[cell]
        columns = np.flatnonzero(row)
        values = row[columns]
    keep = values != 0  # a sparse matrix may store explicit zeros
    return columns[keep], values[keep]


def _mid_rank_bins(nonzero: np.ndarray, n_bins: int) -> np.ndarray:
    """Bins 1 .. n_bins-1 of one cell's nonzero values (see ``bin_expression``)."""
    n = nonzero.size
    ordered = np.sort(nonzero)
    below = np.searchsorted(ordered, nonzero, side="left")  # values strictly smaller
    up_to = np.searchsorted(ordered, nonzero, side="right")  # values smaller or equal
    # mid-rank quantile q = (below + up_to) / (2n), in (0, 1);
    # bin = 1 + floor(q * (n_bins - 1)), computed in integers (no rounding error)
    return 1 + (below + up_to) * (n_bins - 1) // (2 * n)


def bin_expression(values, n_bins: int = 51) -> np.ndarray:
    """Per-cell quantile bins of expression values: int64 array of the input's shape.

    ``values``: (cells, genes) dense array or scipy sparse matrix, or one cell
    as a 1-D array; non-negative, finite.  Each cell is binned on its own:

    - a zero stays in bin 0;
    - a nonzero value x gets its *mid-rank quantile* among the cell's n nonzero
      values, ``q = (#{v < x} + #{v <= x}) / (2 n)`` (strictly between 0 and
      1), and the bin ``1 + floor(q * (n_bins - 1))``, in 1 .. n_bins-1.

    Tie rule: the bin is a function of the value (and of the cell), so equal
    values always share a bin, larger values never get a smaller bin, and the
    result is deterministic.  A group of tied values lands in the middle of the
    quantile range it spans, where upstream scGPT's random tie-breaking would
    scatter it (upstream issues #157, #319).  With n distinct nonzero values
    the bins are as even as they can be: n = n_bins - 1 gives bins 1 .. n_bins-1
    once each; a single nonzero value gets the middle bin.

    A cell with no nonzero value cannot be binned and raises, as do NaN,
    infinite and negative values.
    """
    if int(n_bins) != n_bins or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2 (bin 0 holds the zeros), got {n_bins}")
    one_cell = not sp.issparse(values) and np.ndim(values) == 1
    matrix = _checked_expression(values)
    n_cells, n_genes = matrix.shape
    bins = np.zeros((n_cells, n_genes), dtype=np.int64)
    for cell in range(n_cells):
        columns, nonzero = _nonzero_in_cell(matrix, cell)
        if nonzero.size == 0:
            raise ValueError(
                f"cell {cell} has no expressed gene (all {n_genes} values are 0), "
                "so it has no quantiles to bin by; drop it or choose other genes"
            )
        bins[cell, columns] = _mid_rank_bins(nonzero, int(n_bins))
    return bins[0] if one_cell else bins


# ----------------------------------------------------------------------------
# gene selection and tokens


def select_highly_variable_genes(adata: anndata.AnnData, n_top: int) -> list[str]:
    """The ``n_top`` most variable genes of ``adata.X``, in ``adata.var_names`` order.

    Ranked by scanpy's Seurat-flavour normalised dispersion, which expects
    log-normalised values; ties are broken by gene order, so the answer has
    exactly ``min(n_top, n_genes)`` genes and involves no randomness.
    """
    import scanpy as sc  # slow to import; only needed here

    if n_top < 1:
        raise ValueError(f"n_top must be >= 1, got {n_top}")
    matrix = _checked_expression(adata.X)
    if n_top >= adata.n_vars:
        return [str(gene) for gene in adata.var_names]
    torch_threads = torch.get_num_threads()
    table = sc.pp.highly_variable_genes(
        anndata.AnnData(X=matrix, var=pd.DataFrame(index=adata.var_names.astype(str))),
        flavor="seurat", inplace=False,
    )
    torch.set_num_threads(torch_threads)  # numba's OpenMP layer (sparse input) resets it
    dispersion = np.nan_to_num(table["dispersions_norm"].to_numpy(), nan=-np.inf)
    top = np.sort(np.argsort(-dispersion, kind="stable")[:n_top])
    return [str(adata.var_names[i]) for i in top]


@dataclass
class CellTokens:
    """Cells as token sequences (the model's input), on the CPU.

    ``gene_ids`` (N, L) long vocabulary ids (``<pad>`` at padding), ``values``
    (N, L) float bins (0 at padding), ``is_real`` (N, L) bool (False at
    padding).  ``binned`` (N, n_genes) holds every selected gene's bin before
    any ``max_len`` sampling; its columns are ``genes``, its rows ``obs_names``.
    ``<cls>`` is not stored; the model prepends it.
    """

    gene_ids: torch.Tensor  # (N, L)
    values: torch.Tensor  # (N, L)
    is_real: torch.Tensor  # (N, L)
    binned: np.ndarray  # (N, n_genes)
    genes: list[str]
    obs_names: list[str]
    n_bins: int

    def __len__(self) -> int:
        return self.gene_ids.size(0)

    def subset(self, cells) -> CellTokens:
        """The tokens of some cells (an index array or a boolean mask)."""
        index = np.arange(len(self))[np.asarray(cells)]
        rows = torch.as_tensor(index, dtype=torch.long)
        return CellTokens(self.gene_ids[rows], self.values[rows], self.is_real[rows],
                          self.binned[index], list(self.genes),
                          [self.obs_names[i] for i in index], self.n_bins)


def _selected_genes(adata: anndata.AnnData, hvg) -> list[str]:
    if hvg is None:
        return [str(gene) for gene in adata.var_names]
    if isinstance(hvg, (int, np.integer)) and not isinstance(hvg, bool):
        return select_highly_variable_genes(adata, int(hvg))
    genes = [str(gene) for gene in hvg]
    absent = [gene for gene in genes if gene not in adata.var_names]
    if absent:
        raise ValueError(f"{len(absent)} requested gene(s) are not in adata.var_names: {absent[:5]}")
    return genes


def tokenize_adata(adata: anndata.AnnData, vocab: GeneVocab, n_bins: int = 51,
                   max_len: int | None = None, hvg=None, seed: int = 0,
                   include_zeros: bool = True) -> CellTokens:
    """AnnData -> ``CellTokens``: select genes, bin per cell, pick at most ``max_len`` per cell.

    - ``adata.X`` holds non-negative expression (e.g. log1p-normalised; for
      ``pbmc68k_reduced`` build an AnnData from ``.raw``).
    - ``hvg``: None keeps all genes; an int keeps that many highly variable
      genes (``select_highly_variable_genes``); a list of names keeps those.
      Every kept gene must be in ``vocab``.
    - Values are binned per cell over the kept genes (``bin_expression``).
    - ``include_zeros``: True keeps unexpressed genes as tokens with bin 0 (the
      model also learns which genes are off); False keeps expressed genes only
      (variable lengths, padded).
    - ``max_len``: a cell with more candidate genes keeps ``max_len`` of them,
      drawn uniformly without replacement from ``np.random.default_rng(seed)``
      (kept in gene order); None keeps all.

    Raises for negative/NaN values, for cells with no expressed kept gene and
    for genes missing from the vocabulary.
    """
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1 or None, got {max_len}")
    genes = _selected_genes(adata, hvg)
    column_ids = vocab.encode(genes)  # raises for genes missing from the vocabulary
    matrix = _checked_expression(adata[:, genes].X)
    n_expressed = np.asarray((matrix > 0).sum(axis=1)).ravel()
    empty = np.flatnonzero(n_expressed == 0)
    if empty.size:
        names = [str(adata.obs_names[i]) for i in empty[:5]]
        raise ValueError(
            f"{empty.size} cell(s) have no expressed gene among the {len(genes)} selected "
            f"genes, e.g. {names}; drop them (e.g. sc.pp.filter_cells) or select other genes"
        )
    binned = bin_expression(matrix, n_bins)  # (N, n_genes)

    rng = np.random.default_rng(seed)
    columns_per_cell = []
    for cell in range(binned.shape[0]):
        columns = np.arange(len(genes)) if include_zeros else np.flatnonzero(binned[cell])
        if max_len is not None and columns.size > max_len:
            columns = np.sort(rng.choice(columns, size=max_len, replace=False))
        columns_per_cell.append(columns)

    N, L = binned.shape[0], max(columns.size for columns in columns_per_cell)
    gene_ids = torch.full((N, L), vocab.pad_id, dtype=torch.long)
    values = torch.zeros(N, L)
    is_real = torch.zeros(N, L, dtype=torch.bool)
    for cell, columns in enumerate(columns_per_cell):
        n = columns.size
        gene_ids[cell, :n] = torch.from_numpy(column_ids[columns])
        values[cell, :n] = torch.from_numpy(binned[cell, columns].astype(np.float32))
        is_real[cell, :n] = True
    return CellTokens(gene_ids, values, is_real, binned, genes,
                      [str(name) for name in adata.obs_names], int(n_bins))
