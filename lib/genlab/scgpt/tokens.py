"""scGPT's input: gene vocabulary, per-cell binning of expression values, cells as tokens.

``GeneVocab`` maps gene names to token ids; ``bin_expression`` turns a cell's
expression values into per-cell quantile bins (upstream scGPT's rule, ties to
the highest bin);
``tokenize_adata`` turns an AnnData into ``CellTokens``, the model's input.
Part of ``genlab.scgpt`` (the package docstring explains the model).
"""

from __future__ import annotations

import collections
import warnings
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


def _working_dtype(values) -> np.dtype:
    """The float type the quantiles are computed in: the input's own float type (upstream
    computes in whatever the AnnData holds, usually float32), else float64."""
    dtype = values.dtype if sp.issparse(values) else np.asarray(values).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _edge_count_bins(nonzero: np.ndarray, n_bins: int) -> np.ndarray:
    """(n,) bins 1 .. n_bins-1 of one cell's (n,) nonzero values: how many of the cell's
    ``n_bins - 1`` quantile edges each value reaches (see ``bin_expression``)."""
    edges = np.quantile(nonzero, np.linspace(0.0, 1.0, n_bins - 1))  # (n_bins - 1,) non-decreasing
    return np.searchsorted(edges, nonzero, side="right")  # = np.digitize(nonzero, edges)


def bin_expression(values, n_bins: int = 51) -> np.ndarray:
    """Per-cell quantile bins of expression values, by upstream scGPT's rule: int64, the input's shape.

    ``values``: (cells, genes) dense array or scipy sparse matrix, or one cell
    as a 1-D array; non-negative and finite.  ``n_bins >= 3``.  Each cell is
    binned on its own, as upstream scGPT's ``binning`` does it
    (``scgpt/preprocess.py``):

    - a zero stays in bin 0;
    - the cell's n nonzero values give ``n_bins - 1`` *edges*, their quantiles
      at the evenly spaced probabilities ``np.linspace(0, 1, n_bins - 1)``
      (``np.quantile``, numpy's default linear interpolation, in the input's
      float type): the first edge is the cell's minimum, the last its maximum;
    - a nonzero value x gets the number of edges that are <= x
      (``np.digitize(x, edges)``), between 1 and n_bins - 1: the cell's maximum
      is always in bin n_bins - 1, its minimum in bin 1 when no other value
      equals it.

    Example, [1, 2, 3] with 51 bins: 49 edges 1, 1 + 1/24, 1 + 2/24, ..., 3;
    1 reaches the first edge only, 2 the first 25 (up to 1 + 24/24), 3 all
    49: bins 1, 25, 50.

    Ties.  A value equal to several edges (a value shared by several genes, or
    the only value of a cell) could be given any bin from one more than the
    number of edges < x up to the number of edges <= x.  Upstream main draws
    one of these at random for every value (``_digitize(..., side="both")``),
    so the same cell is binned differently from run to run (its issues #157,
    #319); upstream dev-temp takes the highest.  genlab takes the highest too:
    it is deterministic, lies inside main's range, equals dev-temp's bins
    exactly and is plain ``np.digitize``: equal values share a bin, a larger
    value never gets a smaller bin, and the cell's maximum is always bin
    n_bins - 1.  Its cost: a large group of tied values sits at the top of its
    range, where main would spread it over the whole range (with counts, the
    many genes seen once share one bin well above 1).  Where x equals at most
    one edge, main has no choice either, so genlab equals upstream main there.

    Special cells: a cell with one nonzero gene has n_bins - 1 equal edges, and
    the gene gets bin n_bins - 1 (main: a random bin in 1 .. n_bins - 1).  A
    cell with no nonzero value (after highly variable gene selection such
    cells happen) gets a row of zeros and a warning, as upstream main does.

    Raises ValueError for ``n_bins < 3`` (with 2 bins there is one edge, the
    minimum, and nothing to rank), and for non-numeric, NaN, infinite or
    negative values.  Speed: one ``np.quantile`` and one ``np.searchsorted``
    per cell.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 3:
        raise ValueError(
            f"n_bins must be an integer >= 3 (bin 0 holds the zeros, and n_bins - 1 >= 2 "
            f"quantile edges rank the rest), got {n_bins!r}"
        )
    one_cell = not sp.issparse(values) and np.ndim(values) == 1
    matrix = _checked_expression(values)
    dtype = _working_dtype(values)
    n_cells, n_genes = matrix.shape
    bins = np.zeros((n_cells, n_genes), dtype=np.int64)
    silent = []
    for cell in range(n_cells):
        columns, nonzero = _nonzero_in_cell(matrix, cell)
        if nonzero.size == 0:
            silent.append(cell)
            continue
        bins[cell, columns] = _edge_count_bins(nonzero.astype(dtype), int(n_bins))
    if silent:
        warnings.warn(
            f"{len(silent)} of {n_cells} cell(s) have no nonzero value (e.g. cell {silent[0]}); "
            "their bins are all 0. Drop them (e.g. sc.pp.filter_cells) if that is not intended",
            stacklevel=2,
        )
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
