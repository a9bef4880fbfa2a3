"""scGPT: masked generation of single-cell expression profiles.

A cell is a *set* of genes, each with an expression value.  scGPT (Cui et al.,
Nature Methods 2024) reads it like a sentence without word order: every token
is a gene, embedded as gene identity + expression value, with no positional
encoding (gene order means nothing).  The output of a ``<cls>`` token is the
cell embedding.

Pretraining is masked generation.  A cell's genes are split into *known* genes
(identity and value) and *unknown* genes (identity plus a learned "to be
generated" flag, no value), and the model predicts the unknown values.  One
boolean mask, ``genlab.masks.known_unknown_mask``, on the single sequence
``[<cls>, known genes; unknown genes]`` makes this work (True = may attend)::

    known   -> known      allowed    the known genes form an ordinary encoder
    known   -> unknown    blocked    known genes never see what is generated
    unknown -> known      allowed    each unknown gene reads the known genes ...
    unknown -> unknown    diagonal   ... and itself, never another unknown gene

So an unknown gene's prediction depends on the known genes and itself only:
it is the same whether it is generated alone or beside a thousand others.
``attention_backend="scratch"`` applies this mask as it stands; the default
``"torch"`` backend computes the same attention in one fused call over K+1
keys instead of T (``known_unknown_attention``: an unknown gene's key is seen
by that gene alone, so the unknown keys fold into one "self slot").
Upstream scGPT computes this with two streams and a flash-attn layer;
``TwoStreamScGPT`` rebuilds that structure from the same weights, and the
tests check that it equals the single-sequence model here.

Design decisions, each explained where it is implemented:

- binning: per cell, deterministic mid-rank quantile bins (``bin_expression``);
- value encoder: an MLP on the bin index as a number (``ValueEncoder``);
- layers: pre-LN, i.e. LayerNorm before attention and before the MLP, plus one
  final LayerNorm (``TransformerLayer``); upstream uses post-LN;
- heads: GEP predicts each unknown gene's value from its own output
  (``ExpressionHead``); GEPC/MVC predicts it from the cell embedding and the
  gene's embedding (``CellExpressionHead``); a confidence head predicts the
  log-variance of the GEP prediction, and *confidence = -predicted variance*
  (``ConfidenceHead``);
- pretraining (``pretraining_batch``, ``scgpt_losses``): the unknown fraction
  is drawn per batch from {0.25, 0.5, 0.75}; a second pass of the same cells
  puts the first pass's cell embedding in the <cls> slot and generates from it,
  which is what cell-prompt generation asks of the model;
- cell prompt: a cell embedding placed in the <cls> slot goes through a
  LayerNorm first, so that a cell type's *mean* embedding is on the scale of
  one cell's;
- generation (``generate_values``): one-shot (K = 1) or iterative in K steps,
  each step moving the most confident 1/K of the still-unknown genes, with
  their predicted values, into the known set.

Values are in *bin units* everywhere: 0 .. n_bins - 1, real numbers once
generated.  Every random choice takes a seed or a ``torch.Generator``.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.attention import (
    MultiHeadAttention,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)
from genlab.masks import combine_masks, known_unknown_mask, padding_mask

__all__ = [
    "PAD_TOKEN",
    "CLS_TOKEN",
    "UNKNOWN_FRACTIONS",
    "CELL_PROMPT_KNOWN_FRACTIONS",
    "EMBEDDING_KEY",
    "GeneVocab",
    "bin_expression",
    "select_highly_variable_genes",
    "CellTokens",
    "tokenize_adata",
    "GeneEncoder",
    "ValueEncoder",
    "FeedForward",
    "TransformerLayer",
    "self_slot_mask",
    "known_unknown_attention",
    "ExpressionHead",
    "ConfidenceHead",
    "CellExpressionHead",
    "ScGPTConfig",
    "ScGPTOutput",
    "ScGPT",
    "TwoStreamScGPT",
    "MaskedCells",
    "PretrainBatch",
    "split_known_unknown",
    "pretraining_batch",
    "pretraining_batches",
    "masked_mse",
    "gaussian_nll",
    "ScGPTLosses",
    "scgpt_losses",
    "scgpt_loss",
    "Generation",
    "most_confident",
    "generate_values",
]

PAD_TOKEN, CLS_TOKEN = "<pad>", "<cls>"
UNKNOWN_FRACTIONS = (0.25, 0.5, 0.75)  # pretraining: share of a cell's genes to generate
CELL_PROMPT_KNOWN_FRACTIONS = (0.0, 0.25, 0.5)  # cell-prompt pretraining: share kept known
EMBEDDING_KEY = "X_scgpt"  # where ``ScGPT.embed`` writes cell embeddings in ``adata.obsm``


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


# ----------------------------------------------------------------------------
# small modules


class GeneEncoder(nn.Module):
    """Token id -> embedding, then LayerNorm: (B, T) -> (B, T, C)."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int, eps: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embedding(gene_ids))  # (B, T, C)


class ValueEncoder(nn.Module):
    """Expression value in bins -> embedding, an MLP on the bin *as a number*: (B, T) -> (B, T, C).

    Why not one embedding row per bin: (1) bins are ordered (bin 20 and bin 21
    mean almost the same expression); an MLP of the number has that built in,
    a table would have to learn it row by row; (2) generated values are real
    numbers (the GEP head's means) and iterative generation feeds them back as
    known values: the MLP takes them as they are, a table would need them
    rounded.  The input is scaled to [0, 1] by ``value_scale = n_bins - 1``.
    Linear(1, C) -> ReLU -> Linear(C, C) -> LayerNorm, like upstream's
    ``ContinuousValueEncoder``.
    """

    def __init__(self, d_model: int, value_scale: float, eps: float):
        super().__init__()
        self.value_scale = value_scale
        self.fc_in = nn.Linear(1, d_model)
        self.fc_out = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = (values / self.value_scale).unsqueeze(-1)  # (B, T, 1)
        return self.norm(self.fc_out(F.relu(self.fc_in(x))))  # (B, T, C)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(C, d_ff) -> GELU -> Linear(d_ff, C)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))  # (B, T, C)


class TransformerLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(LN(x)), then x + MLP(LN(x)).

    Pre-LN (LayerNorm inside the residual branch, one final LayerNorm after the
    last layer) trains stably with a short warm-up, which matters for a
    minutes-long CPU run; upstream scGPT uses post-LN
    (``nn.TransformerEncoderLayer`` defaults).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float, backend: str):
        super().__init__()
        self.norm_attn = nn.LayerNorm(d_model, eps=eps)
        self.attn = MultiHeadAttention(d_model, n_heads, backend=backend)
        self.norm_ff = nn.LayerNorm(d_model, eps=eps)
        self.ff = FeedForward(d_model, d_ff)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, n_known: int | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C).  ``attn_mask``: (..., T, T), True = may attend; or, with
        ``n_known`` = K, the (..., T, K+1) mask of ``known_unknown_attention``."""
        h = self.norm_attn(x)
        if n_known is None:
            x = x + self.attn(h, attn_mask=attn_mask)  # (B, T, C)
        else:
            x = x + known_unknown_attention(self.attn, h, n_known, attn_mask)  # (B, T, C)
        return x + self.ff(self.norm_ff(x))  # (B, T, C)


def self_slot_mask(known_is_real: torch.Tensor, unknown_is_real: torch.Tensor) -> torch.Tensor:
    """The mask of ``known_unknown_attention``: bool (T, K+1), or (B, 1, T, K+1) with padding.

    K = 1 + P.  Rows are the queries [<cls>, known; unknown] (T = K + G), columns
    the keys [<cls>, known genes, self slot]: every query sees the real known
    keys; the self slot is open to real unknown genes only.  This is
    ``known_unknown_mask`` AND padding with the unknown keys' columns folded
    into the one self-slot column.
    """
    B, P = known_is_real.shape
    K, G = 1 + P, unknown_is_real.size(1)
    device = known_is_real.device
    if bool(known_is_real.all()) and bool(unknown_is_real.all()):  # no padding: one (T, K+1) for all cells
        mask = torch.ones(K + G, K + 1, dtype=torch.bool, device=device)
        mask[:K, K] = False
        return mask
    cls_is_real = torch.ones(B, 1, dtype=torch.bool, device=device)
    keys = torch.cat([cls_is_real, known_is_real], dim=1)[:, None, None, :].expand(B, 1, K + G, K)
    slot = torch.cat([torch.zeros(B, K, dtype=torch.bool, device=device), unknown_is_real], dim=1)
    return torch.cat([keys, slot[:, None, :, None]], dim=-1)  # (B, 1, T, K+1)


def _extended_width(head_dim: int, device: torch.device) -> int:
    """Channels of the self-slot attention: one more than a head's; on a GPU rounded up to a
    multiple of 8 (zeros) so that torch's fused kernels accept it."""
    return head_dim + 1 if device.type == "cpu" else 8 * (head_dim // 8 + 1)


def known_unknown_attention(attn: MultiHeadAttention, x: torch.Tensor, n_known: int,
                            allowed: torch.Tensor) -> torch.Tensor:
    """``attn(x, attn_mask=known_unknown_mask + padding)`` with K+1 keys instead of T.

    x (B, T, C) is [<cls>, known; unknown] with K = ``n_known`` tokens before the
    unknown genes; ``allowed`` is ``self_slot_mask``.  Under the known/unknown
    mask an unknown gene's key is seen by that gene alone, so the (T, T) scores
    hold only T * K + G useful entries.  Here the keys are the K known ones plus
    one *self slot*, and one fused attention call computes everything:

    - each query gets one extra channel holding its own score q_i . k_i; the
      self slot's key is 1 in that channel and 0 elsewhere (and the known keys
      are 0 there), so query i scores the slot exactly q_i . k_i / sqrt(Dh);
    - the slot's value is 1 in that extra channel and 0 elsewhere, so the
      output's extra channel is the softmax weight w_i of the slot, and the
      head output is out_i + w_i v_i.

    Same softmax, same keys, same values as the (T, T) mask: equal up to
    floating-point rounding (the tests check it against the mask and against
    ``TwoStreamScGPT``).  Every query sees <cls>, so no row is fully masked.
    """
    q, k, v = (split_heads(proj(x), attn.n_heads)  # (B, H, T, Dh) each
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    B, H, T, Dh = q.shape
    K = n_known
    width = _extended_width(Dh, q.device)
    own = (q * k).sum(dim=-1, keepdim=True)  # (B, H, T, 1) q_i . k_i
    q_ext = torch.cat([q, own, q.new_zeros(B, H, T, width - Dh - 1)], dim=-1)  # (B, H, T, width)
    slot = q.new_zeros(B, H, 1, width)
    slot[..., Dh] = 1.0  # the self slot's key and value
    k_ext = torch.cat([F.pad(k[:, :, :K], (0, width - Dh)), slot], dim=2)  # (B, H, K+1, width)
    v_ext = torch.cat([F.pad(v[:, :, :K], (0, width - Dh)), slot], dim=2)  # (B, H, K+1, width)
    dropout_p = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, attn_mask=allowed, dropout_p=dropout_p,
                                         scale=1.0 / math.sqrt(Dh))  # (B, H, T, width)
    heads = out[..., :Dh] + out[..., Dh:Dh + 1] * v  # (B, H, T, Dh): + w_i v_i
    return attn.o_proj(merge_heads(heads))  # (B, T, C)


class ExpressionHead(nn.Module):
    """GEP: an unknown gene's final output -> its predicted value in bins: (B, G, C) -> (B, G)."""

    def __init__(self, d_model: int, value_scale: float):
        super().__init__()
        self.value_scale = value_scale
        self.hidden = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.hidden(h))).squeeze(-1) * self.value_scale  # (B, G)


class ConfidenceHead(nn.Module):
    """An unknown gene's final output -> log of the variance of its GEP prediction (bins^2).

    Trained with a Gaussian negative log-likelihood around the (detached) GEP
    mean (``gaussian_nll``), so it learns how far off the prediction tends to
    be for this gene in this context.  **Confidence = -predicted variance**
    (``ScGPTOutput.confidence``): the gene the model expects to miss by least
    is the most confident.  The raw output (log-variance of value / value_scale)
    is clamped to [-12, 4], i.e. standard deviations of e^-6 .. e^2 times
    ``value_scale`` (0.12 .. 370 bins for 51 bins), which keeps exp() finite.
    """

    def __init__(self, d_model: int, value_scale: float):
        super().__init__()
        self.log_scale_sq = 2.0 * math.log(value_scale)
        self.hidden = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raw = self.out(F.gelu(self.hidden(h))).squeeze(-1)  # (B, G), log-variance of value/scale
        return raw.clamp(-12.0, 4.0) + self.log_scale_sq  # (B, G), log-variance in bins^2


class CellExpressionHead(nn.Module):
    """GEPC/MVC: a gene's value from the cell embedding alone: (B, C), (B, G, C) -> (B, G).

    value = value_scale * < W_cell c , sigmoid(W_gene e_gene) >: the cell
    embedding c (the ``<cls>`` output) is projected once per cell, each gene's
    query is a projection of its gene embedding (no value, no context), and
    the prediction is their inner product.  The loss on it forces the cell
    embedding to carry the whole expression profile.
    """

    def __init__(self, d_model: int, value_scale: float):
        super().__init__()
        self.value_scale = value_scale
        self.cell_proj = nn.Linear(d_model, d_model)
        self.gene_query = nn.Linear(d_model, d_model)

    def forward(self, cell: torch.Tensor, gene_embeddings: torch.Tensor) -> torch.Tensor:
        query = torch.sigmoid(self.gene_query(gene_embeddings))  # (B, G, C)
        projected = self.cell_proj(cell)  # (B, C)
        return torch.einsum("bgc,bc->bg", query, projected) * self.value_scale  # (B, G)


# ----------------------------------------------------------------------------
# the model


@dataclass
class ScGPTConfig:
    """Hyperparameters of ``ScGPT``.  ``vocab_size`` = ``len(GeneVocab)`` (genes + 2)."""

    vocab_size: int
    n_bins: int = 51
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    layer_norm_eps: float = 1e-5
    pad_id: int = GeneVocab.pad_id
    cls_id: int = GeneVocab.cls_id
    attention_backend: str = "torch"  # "scratch" (genlab's own, the (T, T) mask) or "torch" (fused SDPA, self slot)
    seed: int = 0  # parameter initialisation

    def __post_init__(self):
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must count <pad>, <cls> and >= 1 gene, got {self.vocab_size}")
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def value_scale(self) -> float:
        """The largest bin, n_bins - 1: values are divided by it inside the model."""
        return float(self.n_bins - 1)


@dataclass
class ScGPTOutput:
    """What ``ScGPT.forward`` returns; G = number of unknown genes."""

    cell_embedding: torch.Tensor  # (B, C) the <cls> output
    value: torch.Tensor  # (B, G) GEP: predicted value of each unknown gene, bins
    log_var: torch.Tensor  # (B, G) log of the predicted variance of ``value``, bins^2
    cell_value: torch.Tensor  # (B, G) GEPC/MVC: the value predicted from cell_embedding alone
    hidden: torch.Tensor  # (B, 1+P+G, C) final outputs of [<cls>, known; unknown]

    @property
    def confidence(self) -> torch.Tensor:
        """(B, G) confidence of each GEP prediction: minus its predicted variance (bins^2)."""
        return -self.log_var.exp()


def _all_real(is_real: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
    """``is_real`` as a bool tensor; None means no padding."""
    if is_real is None:
        return torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    if is_real.shape != ids.shape:
        raise ValueError(f"is_real {tuple(is_real.shape)} must match the gene ids {tuple(ids.shape)}")
    return is_real.to(device=ids.device, dtype=torch.bool)


class ScGPT(nn.Module):
    """scGPT for masked generation; see the module docstring.

    ``forward`` takes a batch already split into known genes (ids and values)
    and unknown genes (ids only) and returns ``ScGPTOutput``.  With a
    ``vocab`` the AnnData-level methods work too: ``embed``,
    ``generate_from_gene_prompt``, ``generate_from_cell_prompt``.
    """

    def __init__(self, config: ScGPTConfig, vocab: GeneVocab | None = None):
        super().__init__()
        if vocab is not None and len(vocab) != config.vocab_size:
            raise ValueError(f"len(vocab)={len(vocab)} differs from config.vocab_size={config.vocab_size}")
        self.config = config
        self.vocab = vocab
        C, eps, scale = config.d_model, config.layer_norm_eps, config.value_scale
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(config.seed)
            self.gene_encoder = GeneEncoder(config.vocab_size, C, config.pad_id, eps)
            self.value_encoder = ValueEncoder(C, scale, eps)
            self.generate_flag = nn.Parameter(torch.randn(C))  # "to be generated", in place of a value
            self.cell_prompt_norm = nn.LayerNorm(C, eps=eps)
            self.layers = nn.ModuleList(
                TransformerLayer(C, config.n_heads, config.d_ff, eps, config.attention_backend)
                for _ in range(config.n_layers)
            )
            self.final_norm = nn.LayerNorm(C, eps=eps)
            self.expression_head = ExpressionHead(C, scale)
            self.confidence_head = ConfidenceHead(C, scale)
            self.cell_expression_head = CellExpressionHead(C, scale)

    # -- the pieces both the single-sequence model and the two-stream reference use

    def embed_tokens(self, known_genes, known_values, unknown_genes, cell_prompt=None):
        """Input embeddings: <cls> (B, 1, C), known (B, P, C), unknown (B, G, C).

        known = gene embedding + value embedding; unknown = gene embedding +
        the learned ``generate_flag``; <cls> = the ``<cls>`` embedding, or
        ``cell_prompt`` (B, C) (a cell embedding) after a LayerNorm when given:
        a cell embedding is a final-LayerNorm output, and the norm puts an
        average of several (e.g. a cell type's mean) back on that scale.
        """
        B = known_genes.size(0)
        if known_values.shape != known_genes.shape:
            raise ValueError(f"known_values {tuple(known_values.shape)} must match "
                             f"known_genes {tuple(known_genes.shape)}")
        if unknown_genes.size(0) != B:
            raise ValueError(f"known and unknown genes need the same batch size, "
                             f"got {B} and {unknown_genes.size(0)}")
        dtype = self.generate_flag.dtype
        if cell_prompt is None:
            cls_ids = torch.full((B, 1), self.config.cls_id, dtype=torch.long, device=known_genes.device)
            cls = self.gene_encoder(cls_ids)  # (B, 1, C)
        else:
            if cell_prompt.shape != (B, self.config.d_model):
                raise ValueError(f"cell_prompt must be (B, d_model) = ({B}, {self.config.d_model}), "
                                 f"got {tuple(cell_prompt.shape)}")
            cls = self.cell_prompt_norm(cell_prompt.to(dtype)).unsqueeze(1)  # (B, 1, C)
        known = self.gene_encoder(known_genes) + self.value_encoder(known_values.to(dtype))  # (B, P, C)
        unknown = self.gene_encoder(unknown_genes) + self.generate_flag  # (B, G, C)
        return cls, known, unknown

    def heads(self, cell: torch.Tensor, unknown_hidden: torch.Tensor,
              unknown_genes: torch.Tensor, hidden: torch.Tensor) -> ScGPTOutput:
        """Apply the three heads to the final (normed) outputs."""
        return ScGPTOutput(
            cell_embedding=cell,  # (B, C)
            value=self.expression_head(unknown_hidden),  # (B, G)
            log_var=self.confidence_head(unknown_hidden),  # (B, G)
            cell_value=self.cell_expression_head(cell, self.gene_encoder(unknown_genes)),  # (B, G)
            hidden=hidden,
        )

    def attention_mask(self, known_is_real: torch.Tensor, unknown_is_real: torch.Tensor) -> torch.Tensor:
        """Bool (B, 1, T, T), T = 1+P+G, True = may attend.

        ``known_unknown_mask(1 + P, G)`` (``<cls>`` counts as known) AND a
        padding mask that hides padded keys from every query.  Every query may
        still see ``<cls>``, so no row is fully masked.
        """
        B, P = known_is_real.shape
        G = unknown_is_real.size(1)
        structure = known_unknown_mask(1 + P, G, device=known_is_real.device)  # (T, T)
        cls_is_real = torch.ones(B, 1, dtype=torch.bool, device=known_is_real.device)
        is_real = torch.cat([cls_is_real, known_is_real, unknown_is_real], dim=1)  # (B, T)
        return combine_masks(structure, padding_mask(is_real))  # (B, 1, T, T)

    # -- forward

    def forward(self, known_genes: torch.Tensor, known_values: torch.Tensor,
                unknown_genes: torch.Tensor, known_is_real: torch.Tensor | None = None,
                unknown_is_real: torch.Tensor | None = None,
                cell_prompt: torch.Tensor | None = None) -> ScGPTOutput:
        """One attention call per layer on the single sequence [<cls>, known; unknown].

        known_genes (B, P) ids, known_values (B, P) bins, unknown_genes (B, G)
        ids; ``*_is_real`` (B, P) / (B, G) bool, False at padding (None: no
        padding); ``cell_prompt`` (B, C) replaces the <cls> input.  P or G may
        be 0.
        """
        known_is_real = _all_real(known_is_real, known_genes)
        unknown_is_real = _all_real(unknown_is_real, unknown_genes)
        cls, known, unknown = self.embed_tokens(known_genes, known_values, unknown_genes, cell_prompt)
        P = known.size(1)
        x = torch.cat([cls, known, unknown], dim=1)  # (B, 1+P+G, C)
        if self.config.attention_backend == "scratch":  # the mask itself, written out
            mask, n_known = self.attention_mask(known_is_real, unknown_is_real), None  # (B, 1, T, T)
        else:  # the same attention with 1+P+1 keys, fused (``known_unknown_attention``)
            mask, n_known = self_slot_mask(known_is_real, unknown_is_real), 1 + P  # (..., T, 2+P)
        for layer in self.layers:
            x = layer(x, mask, n_known)  # (B, T, C)
        x = self.final_norm(x)
        return self.heads(x[:, 0], x[:, 1 + P:], unknown_genes, hidden=x)

    # -- AnnData in, AnnData out

    def _require_vocab(self) -> GeneVocab:
        if self.vocab is None:
            raise ValueError("this ScGPT has no vocab; build it as ScGPT(config, vocab) to use AnnData")
        return self.vocab

    def _device(self) -> torch.device:
        return self.generate_flag.device

    @torch.no_grad()
    def embed(self, adata: anndata.AnnData, batch_size: int = 64,
              key: str = EMBEDDING_KEY) -> np.ndarray:
        """Cell embeddings (<cls> outputs, all genes of ``adata`` known) -> ``adata.obsm[key]``.

        Every gene of ``adata`` must be in the vocabulary; values are binned
        per cell as in training.  Returns the (cells, d_model) array.
        """
        tokens = tokenize_adata(adata, self._require_vocab(), self.config.n_bins)
        device = self._device()
        embeddings = []
        for start in range(0, len(tokens), batch_size):
            rows = slice(start, start + batch_size)
            genes = tokens.gene_ids[rows].to(device)
            no_unknown = genes[:, :0]  # (B, 0)
            out = self(genes, tokens.values[rows].to(device), no_unknown,
                       known_is_real=tokens.is_real[rows].to(device))
            embeddings.append(out.cell_embedding.float().cpu())
        result = torch.cat(embeddings).numpy()  # (N, C)
        adata.obsm[key] = result
        return result

    def _unknown_matrix(self, adata: anndata.AnnData, unknown) -> np.ndarray:
        """Bool (cells, genes) from a bool matrix or from gene names."""
        if isinstance(unknown, torch.Tensor):
            unknown = unknown.cpu().numpy()
        array = np.asarray(unknown)
        if array.dtype == bool:
            if array.shape != adata.shape:
                raise ValueError(f"unknown must be bool (cells, genes) = {adata.shape}, got {array.shape}")
            return array
        names = [str(gene) for gene in array.ravel()]
        absent = [gene for gene in names if gene not in adata.var_names]
        if absent:
            raise ValueError(f"unknown genes not in adata.var_names: {absent[:5]}")
        column = np.isin(adata.var_names.astype(str), names)
        return np.broadcast_to(column, adata.shape).copy()

    @torch.no_grad()
    def generate_from_gene_prompt(self, adata: anndata.AnnData, unknown, steps: int = 1,
                                  batch_size: int = 64) -> anndata.AnnData:
        """Gene prompt: generate the ``unknown`` genes of each cell from its other (known) genes.

        ``unknown``: bool (cells, genes) array, True = generate; or a list of
        gene names generated in every cell.  Known genes keep their bins;
        binning uses each cell's full ``adata`` row as in training (to impute
        genes whose values you do not have, set them to 0).  ``steps`` = K of
        iterative generation (1 = one shot).  Returns an AnnData with ``adata``'s
        obs and var: X = bins (known genes) and generated values, layers
        ``generated`` (bool), ``confidence`` (NaN for known genes) and
        ``step`` (the step that generated the gene, -1 for known genes).
        """
        unknown = self._unknown_matrix(adata, unknown)
        tokens = tokenize_adata(adata, self._require_vocab(), self.config.n_bins)
        generation = self._generate_in_batches(tokens.gene_ids, tokens.values,
                                               torch.from_numpy(unknown), steps, None, batch_size)
        return _generation_adata(generation, unknown, adata.obs.copy(), adata.var.copy())

    @torch.no_grad()
    def generate_from_cell_prompt(self, cell_embeddings, genes: Sequence[str] | None = None,
                                  steps: int = 1, obs: pd.DataFrame | None = None,
                                  batch_size: int = 64) -> anndata.AnnData:
        """Cell prompt: a whole profile from each cell embedding placed in the <cls> slot.

        ``cell_embeddings`` (n, d_model), e.g. the mean ``X_scgpt`` of one cell
        type; ``genes`` to generate (default: every gene of the vocabulary);
        ``steps`` = K.  Returns an AnnData (n, genes) with layers as in
        ``generate_from_gene_prompt``.
        """
        vocab = self._require_vocab()
        genes = vocab.genes if genes is None else [str(gene) for gene in genes]
        prompts = torch.as_tensor(np.asarray(cell_embeddings), dtype=torch.float32)
        if prompts.dim() != 2 or prompts.size(1) != self.config.d_model:
            raise ValueError(f"cell_embeddings must be (n, {self.config.d_model}), "
                             f"got {tuple(prompts.shape)}")
        n = prompts.size(0)
        gene_ids = torch.from_numpy(vocab.encode(genes)).expand(n, -1)  # (n, G)
        unknown = torch.ones(n, len(genes), dtype=torch.bool)
        generation = self._generate_in_batches(gene_ids, torch.zeros(n, len(genes)), unknown,
                                               steps, prompts, batch_size)
        if obs is None:
            obs = pd.DataFrame(index=[f"generated_{i}" for i in range(n)])
        return _generation_adata(generation, unknown.numpy(), obs, pd.DataFrame(index=genes))

    def _generate_in_batches(self, gene_ids, values, is_unknown, steps, cell_prompts, batch_size):
        device = self._device()
        parts = []
        for start in range(0, gene_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            prompt = None if cell_prompts is None else cell_prompts[rows].to(device)
            part = generate_values(self, gene_ids[rows].to(device), values[rows].to(device),
                                   is_unknown[rows].to(device), steps=steps, cell_prompt=prompt)
            parts.append(part)
        return Generation(*(torch.cat([getattr(p, f.name).cpu() for p in parts])
                            for f in fields(Generation)))


# ----------------------------------------------------------------------------
# the two-stream reference


class TwoStreamScGPT(nn.Module):
    """Reference: the same model (same weights) computed the way upstream scGPT structures it.

    Upstream's generative layer (``flash_layers.py``, dev-temp branch) keeps two
    streams instead of one masked sequence:

    - stream 1, known tokens ([<cls>, known]): ordinary self-attention among
      themselves (padding keys hidden);
    - stream 2, unknown tokens: each unknown query attends to [the known keys;
      its own key] and nothing else.

    Per query this is exactly what ``known_unknown_mask`` allows, so the
    outputs equal ``ScGPT.forward``'s up to floating-point rounding.  It scores
    (1+P)^2 + G (1+P) pairs instead of the mask's (1+P+G)^2 (the ``"torch"``
    backend's self slot scores (1+P+G)(2+P)): the peer of the single-sequence
    model in ``bench/scgpt_step.py``.  Written from scratch on top of the
    wrapped model's parameters; it owns none.
    """

    def __init__(self, model: ScGPT):
        super().__init__()
        self.model = model

    def forward(self, known_genes, known_values, unknown_genes, known_is_real=None,
                unknown_is_real=None, cell_prompt=None) -> ScGPTOutput:
        model = self.model
        known_is_real = _all_real(known_is_real, known_genes)
        unknown_is_real = _all_real(unknown_is_real, unknown_genes)
        cls, known, unknown = model.embed_tokens(known_genes, known_values, unknown_genes, cell_prompt)
        cls_is_real = torch.ones(known_is_real.size(0), 1, dtype=torch.bool, device=known_is_real.device)
        known_keys_real = torch.cat([cls_is_real, known_is_real], dim=1)  # (B, 1+P)
        known_stream = torch.cat([cls, known], dim=1)  # (B, 1+P, C)
        unknown_stream = unknown  # (B, G, C)
        for layer in model.layers:
            known_stream, unknown_stream = _two_stream_layer(
                layer, known_stream, unknown_stream, known_keys_real, unknown_is_real)
        known_stream = model.final_norm(known_stream)
        unknown_stream = model.final_norm(unknown_stream)
        hidden = torch.cat([known_stream, unknown_stream], dim=1)  # (B, 1+P+G, C)
        return model.heads(known_stream[:, 0], unknown_stream, unknown_genes, hidden=hidden)


def _two_stream_layer(layer: TransformerLayer, known: torch.Tensor, unknown: torch.Tensor,
                      known_is_real: torch.Tensor, unknown_is_real: torch.Tensor):
    """One pre-LN layer on the two streams: known (B, P, C), unknown (B, G, C)."""
    attn = layer.attn
    H = attn.n_heads
    known_in, unknown_in = layer.norm_attn(known), layer.norm_attn(unknown)
    q_known, k_known, v_known = (split_heads(proj(known_in), H)  # (B, H, P, Dh) each
                                 for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q_unknown, k_unknown, v_unknown = (split_heads(proj(unknown_in), H)  # (B, H, G, Dh) each
                                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))

    # stream 1: known queries over known keys
    known_heads, _ = scaled_dot_product_attention(
        q_known, k_known, v_known, attn_mask=padding_mask(known_is_real))  # (B, H, P, Dh)

    # stream 2: each unknown query over [known keys; its own key]
    root_d = math.sqrt(q_unknown.size(-1))
    to_known = q_unknown @ k_known.transpose(-2, -1) / root_d  # (B, H, G, P)
    to_self = (q_unknown * k_unknown).sum(-1, keepdim=True) / root_d  # (B, H, G, 1)
    scores = torch.cat([to_known, to_self], dim=-1)  # (B, H, G, P+1)
    B, G, P = unknown.size(0), unknown.size(1), known.size(1)
    allowed = torch.cat([known_is_real[:, None, None, :].expand(B, 1, G, P),
                         unknown_is_real[:, None, :, None]], dim=-1)  # (B, 1, G, P+1)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (B, H, G, P+1); <cls> is always allowed
    unknown_heads = weights[..., :P] @ v_known + weights[..., P:] * v_unknown  # (B, H, G, Dh)

    known = known + attn.o_proj(merge_heads(known_heads))  # (B, P, C)
    unknown = unknown + attn.o_proj(merge_heads(unknown_heads))  # (B, G, C)
    known = known + layer.ff(layer.norm_ff(known))
    unknown = unknown + layer.ff(layer.norm_ff(unknown))
    return known, unknown


# ----------------------------------------------------------------------------
# pretraining batches and losses


@dataclass
class MaskedCells:
    """Cells split into known genes (with values) and unknown genes (values are targets).

    known_* (B, P), unknown_* (B, G); ``*_is_real`` False at padding.
    """

    known_genes: torch.Tensor
    known_values: torch.Tensor
    known_is_real: torch.Tensor
    unknown_genes: torch.Tensor
    unknown_values: torch.Tensor  # targets; never shown to the model
    unknown_is_real: torch.Tensor

    def to(self, device) -> MaskedCells:
        return MaskedCells(*(getattr(self, f.name).to(device) for f in fields(self)))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of ``ScGPT.forward`` (everything but the targets)."""
        return dict(known_genes=self.known_genes, known_values=self.known_values,
                    unknown_genes=self.unknown_genes, known_is_real=self.known_is_real,
                    unknown_is_real=self.unknown_is_real)


def _pack(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pack the selected positions of each row: select (B, L) bool -> index (B, M), is_real (B, M).

    ``index`` lists each row's selected positions in their original order,
    then filler positions; M is the largest count in the batch.
    """
    counts = select.sum(dim=1)  # (B,)
    M = int(counts.max()) if select.numel() else 0
    index = torch.argsort((~select).long(), dim=1, stable=True)[:, :M]  # (B, M)
    is_real = torch.arange(M, device=select.device)[None, :] < counts[:, None]  # (B, M)
    return index, is_real


def _unpack(packed: torch.Tensor, index: torch.Tensor, is_real: torch.Tensor, L: int) -> torch.Tensor:
    """Inverse of gathering with ``_pack``'s index: (B, M) -> (B, L), zeros where nothing lands."""
    B = packed.size(0)
    target = torch.where(is_real, index, torch.full_like(index, L))  # fillers go to a spare column
    out = torch.zeros(B, L + 1, dtype=packed.dtype, device=packed.device)
    return out.scatter(1, target, packed)[:, :L]


def _masked_cells(gene_ids, values, known, unknown) -> MaskedCells:
    """Gather (B, L) tokens into [known] and [unknown] blocks; padding gets <pad> and 0."""
    parts = []
    for select in (known, unknown):
        index, is_real = _pack(select)
        parts += [gene_ids.gather(1, index).masked_fill(~is_real, GeneVocab.pad_id),
                  values.gather(1, index).masked_fill(~is_real, 0.0), is_real]
    return MaskedCells(*parts)


def split_known_unknown(gene_ids: torch.Tensor, values: torch.Tensor, is_real: torch.Tensor,
                        unknown_fraction: float, generator: torch.Generator | None = None) -> MaskedCells:
    """Make ``round(unknown_fraction * n)`` of each cell's n real genes unknown, chosen at random.

    gene_ids, values, is_real: (B, L).  The choice is uniform per cell and
    draws from ``generator``.  Fraction 0 leaves no unknown gene, 1 no known
    gene (the cell-prompt case).
    """
    if not 0.0 <= unknown_fraction <= 1.0:
        raise ValueError(f"unknown_fraction must be in [0, 1], got {unknown_fraction}")
    is_real = is_real.bool()
    n_unknown = torch.round(is_real.sum(dim=1) * unknown_fraction).long()  # (B,)
    device = generator.device if generator is not None else gene_ids.device
    keys = torch.rand(gene_ids.shape, generator=generator, device=device).to(gene_ids.device)
    keys = keys.masked_fill(~is_real, 2.0)  # padding sorts after every real gene
    rank = keys.argsort(dim=1).argsort(dim=1)  # (B, L) random rank of each position
    unknown = is_real & (rank < n_unknown[:, None])
    return _masked_cells(gene_ids, values.float(), is_real & ~unknown, unknown)


@dataclass
class PretrainBatch:
    """One pretraining batch: a GEP split, and optionally a cell-prompt split of the same cells."""

    gep: MaskedCells
    cell_prompt: MaskedCells | None
    unknown_fraction: float

    def to(self, device) -> PretrainBatch:
        prompt = None if self.cell_prompt is None else self.cell_prompt.to(device)
        return PretrainBatch(self.gep.to(device), prompt, self.unknown_fraction)


def _draw(choices: Sequence[float], generator: torch.Generator | None) -> float:
    return choices[int(torch.randint(len(choices), (1,), generator=generator))]


def pretraining_batch(tokens: CellTokens, cells, generator: torch.Generator | None = None,
                      cell_prompt: bool = True) -> PretrainBatch:
    """A pretraining batch of the given cells (index tensor), all random choices from ``generator``.

    The unknown fraction is drawn per batch from ``UNKNOWN_FRACTIONS``
    {0.25, 0.5, 0.75}.  With ``cell_prompt``, a second split of the same cells
    keeps a fraction drawn from ``CELL_PROMPT_KNOWN_FRACTIONS`` {0, 0.25, 0.5}
    known: ``scgpt_losses`` puts the cell embedding from the GEP pass in the
    <cls> slot and trains generation from it (what cell-prompt generation does,
    with 0 known genes at its first step and more at later steps).
    """
    cells = torch.as_tensor(cells, dtype=torch.long)
    gene_ids, values, is_real = tokens.gene_ids[cells], tokens.values[cells], tokens.is_real[cells]
    fraction = _draw(UNKNOWN_FRACTIONS, generator)
    gep = split_known_unknown(gene_ids, values, is_real, fraction, generator)
    prompt = None
    if cell_prompt:
        known_fraction = _draw(CELL_PROMPT_KNOWN_FRACTIONS, generator)
        prompt = split_known_unknown(gene_ids, values, is_real, 1.0 - known_fraction, generator)
    return PretrainBatch(gep, prompt, fraction)


def pretraining_batches(tokens: CellTokens, batch_size: int,
                        cell_prompt: bool = True) -> Callable[[int, torch.Generator], PretrainBatch]:
    """``batches(step, generator) -> PretrainBatch`` for ``genlab.train.train``.

    Each batch is ``batch_size`` distinct cells drawn from ``generator``.
    """
    if not 1 <= batch_size <= len(tokens):
        raise ValueError(f"batch_size must be in 1..{len(tokens)} (the number of cells), got {batch_size}")

    def batches(step: int, generator: torch.Generator | None = None) -> PretrainBatch:
        cells = torch.randperm(len(tokens), generator=generator)[:batch_size]
        return pretraining_batch(tokens, cells, generator, cell_prompt)

    return batches


def _masked_mean(x: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
    total = torch.where(is_real, x, torch.zeros_like(x)).sum()
    return total / is_real.sum().clamp(min=1)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the positions where ``is_real`` is True (0 if there are none)."""
    return _masked_mean((prediction - target) ** 2, is_real)


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor,
                 is_real: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood 0.5 (log_var + (target - mean)^2 / var), masked mean.

    The constant 0.5 log(2 pi) is left out.
    """
    nll = 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))
    return _masked_mean(nll, is_real)


@dataclass
class ScGPTLosses:
    """The pretraining losses; ``total`` is what is minimised."""

    total: torch.Tensor
    gep: torch.Tensor  # masked MSE of the GEP head on unknown genes (values / value_scale)
    gepc: torch.Tensor  # the same for the GEPC/MVC head
    confidence: torch.Tensor  # Gaussian NLL of the confidence head (bins)
    cell_prompt: torch.Tensor  # masked MSE of generation from the cell embedding in <cls>


def scgpt_losses(model: ScGPT, batch: PretrainBatch, confidence_weight: float = 0.1) -> ScGPTLosses:
    """All pretraining losses of a batch; only unknown positions count.

    GEP and GEPC are masked MSEs on values divided by ``value_scale`` (so
    they are fractions of the bin range squared).  The confidence NLL uses the
    detached GEP mean, so it trains the confidence head (and, weighted by
    ``confidence_weight``, the shared layers) without pulling the mean.
    The cell-prompt pass (if the batch has one) runs the model again with the
    GEP pass's cell embedding in the <cls> slot and adds its GEP MSE and NLL.
    """
    batch = batch.to(model.generate_flag.device)
    scale = model.config.value_scale

    def pass_losses(cells: MaskedCells, cell_prompt=None):
        out = model(**cells.model_inputs(), cell_prompt=cell_prompt)
        target, real = cells.unknown_values, cells.unknown_is_real
        mse = masked_mse(out.value / scale, target / scale, real)
        nll = gaussian_nll(out.value.detach(), out.log_var, target, real)
        return out, mse, nll

    out, gep, nll = pass_losses(batch.gep)
    gepc = masked_mse(out.cell_value / scale, batch.gep.unknown_values / scale,
                      batch.gep.unknown_is_real)
    prompt_mse = torch.zeros((), device=gep.device)
    if batch.cell_prompt is not None:
        _, prompt_mse, prompt_nll = pass_losses(batch.cell_prompt, out.cell_embedding)
        nll = (nll + prompt_nll) / 2
    total = gep + gepc + prompt_mse + confidence_weight * nll
    return ScGPTLosses(total, gep, gepc, nll, prompt_mse)


def scgpt_loss(model: ScGPT, batch: PretrainBatch) -> torch.Tensor:
    """``loss_fn(model, batch)`` for ``genlab.train.train``: the total pretraining loss."""
    return scgpt_losses(model, batch).total


# ----------------------------------------------------------------------------
# generation


@dataclass
class Generation:
    """The result of ``generate_values``, all (B, L) like its input."""

    values: torch.Tensor  # known genes: their input values; unknown genes: generated values (bins)
    confidence: torch.Tensor  # the confidence of each generated value when it was moved; NaN for known
    step: torch.Tensor  # long: the step (0..K-1) that moved each unknown gene; -1 for known / padding


def most_confident(confidence: torch.Tensor, pending: torch.Tensor, steps_left: int) -> torch.Tensor:
    """Which still-unknown genes one generation step moves into the known set: bool (B, L).

    confidence, pending: (B, L); only positions where ``pending`` is True
    compete.  With r pending genes in a cell and ``steps_left`` steps to go
    (this one included), the ``ceil(r / steps_left)`` most confident move, so
    the last step (``steps_left=1``) moves all that are left.  Ties go to the
    earlier position (a stable sort), so the choice is deterministic.
    """
    if steps_left < 1:
        raise ValueError(f"steps_left must be >= 1, got {steps_left}")
    pending = pending.to(torch.bool)
    remaining = pending.sum(dim=1)  # (B,)
    n_move = (remaining + steps_left - 1) // steps_left  # (B,) ceil(r / steps left)
    ranked = confidence.masked_fill(~pending, float("-inf"))  # (B, L)
    rank = ranked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (B, L)
    return pending & (rank < n_move[:, None])


@torch.no_grad()
def generate_values(model: ScGPT, gene_ids: torch.Tensor, values: torch.Tensor,
                    is_unknown: torch.Tensor, steps: int = 1, is_real: torch.Tensor | None = None,
                    cell_prompt: torch.Tensor | None = None) -> Generation:
    """Generate the unknown genes' values, in one shot (K = ``steps`` = 1) or iteratively.

    gene_ids, values, is_unknown, is_real: (B, L); the values of unknown genes
    are ignored.  Each of the K steps:

    1. packs each cell into [<cls>, known genes; still-unknown genes] and runs
       the model once (``known_unknown_mask``: the predictions of the
       still-unknown genes do not depend on each other);
    2. takes the ``ceil(r / (K - step))`` most confident of the cell's r
       still-unknown genes (confidence = -predicted variance; ties go to the
       earlier position) and moves them, with their predicted values, into the
       known set.

    So each step moves about 1/K of the genes and the last step moves all
    that are left; genes moved early become context for the rest.  K = 1 is
    one forward pass.  ``cell_prompt`` (B, C) goes into the <cls> slot.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    is_real = _all_real(is_real, gene_ids)
    is_unknown = is_unknown.to(device=gene_ids.device, dtype=torch.bool) & is_real
    values = values.to(model.generate_flag.dtype).masked_fill(is_unknown, 0.0)  # (B, L)
    confidence = torch.full(values.shape, float("nan"), dtype=values.dtype, device=values.device)
    moved_at = torch.full(gene_ids.shape, -1, dtype=torch.long, device=gene_ids.device)
    pending = is_unknown.clone()  # (B, L) still to generate
    L = gene_ids.size(1)
    for step in range(steps):
        if not pending.any():
            break
        known_index, known_real = _pack(is_real & ~pending)  # (B, P)
        unknown_index, unknown_real = _pack(pending)  # (B, G)
        out = model(gene_ids.gather(1, known_index), values.gather(1, known_index),
                    gene_ids.gather(1, unknown_index), known_real, unknown_real, cell_prompt)
        predicted = _unpack(out.value, unknown_index, unknown_real, L)  # (B, L)
        step_confidence = _unpack(out.confidence, unknown_index, unknown_real, L)  # (B, L)

        move = most_confident(step_confidence, pending, steps_left=steps - step)  # (B, L)
        values = torch.where(move, predicted, values)
        confidence = torch.where(move, step_confidence, confidence)
        moved_at = moved_at.masked_fill(move, step)
        pending &= ~move
    return Generation(values, confidence, moved_at)


def _generation_adata(generation: Generation, generated: np.ndarray, obs: pd.DataFrame,
                      var: pd.DataFrame) -> anndata.AnnData:
    return anndata.AnnData(
        X=generation.values.numpy().astype(np.float32), obs=obs, var=var,
        layers={"generated": np.asarray(generated, dtype=bool),
                "confidence": generation.confidence.numpy().astype(np.float32),
                "step": generation.step.numpy()},
    )
