"""Assignment 4, "scGPT: masked generation for cells": what is graded, on which inputs, for how many points.

Students implement the four pieces of scGPT that BERT and GPT do not have: per-cell
quantile binning of expression values by upstream scGPT's rule, ties to the highest bin
(exact integers, against ``genlab.scgpt.bin_expression``), the known/unknown attention mask (exact, against
``genlab.masks.known_unknown_mask``), the GEP loss, a mean squared error over the genes
to generate only (against ``genlab.scgpt.masked_mse``), and one step of iterative
confidence-based generation (against ``genlab.scgpt.most_confident``, the choice that
``genlab.scgpt.generate_values`` makes at every step).  A markdown answer on how scGPT's
masking differs from BERT's is graded by hand in nbgrader's formgrader.

Each known bug below is a plausible student slip; a submission that reproduces one gets
the bug's message instead of a bare "differs at".  One binning slip has no named message:
upstream main's own random tie-breaking gives different bins at every run, so no stored
output can match it; it fails the checks with the first differing bin.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autograder.spec import Assignment, CaseSpec, check_maker
from genlab import scgpt

_HERE = "autograder.specs.a04_scgpt"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ references


def reference_bin_values(values, n_bins):
    """(cells, genes) int64: genlab's per-cell bins (upstream scGPT's rule, ties to the highest bin)."""
    return torch.from_numpy(scgpt.bin_expression(values.detach().cpu().numpy(), n_bins)).to(values.device)


def reference_gep_loss(predicted, target, is_unknown):
    """() : the mean squared error over the unknown genes (0 when there are none)."""
    return scgpt.masked_mse(predicted, target, is_unknown)


def reference_generation_step(predicted, confidence, values, pending, steps_left):
    """(values, pending) after moving the most confident pending genes into the known set."""
    move = scgpt.most_confident(confidence, pending, steps_left)  # (B, L)
    return torch.where(move, predicted, values), pending & ~move


# ------------------------------------------------------------------------- known bugs


def _cell_edges(row: np.ndarray, n_bins: int) -> np.ndarray:
    """The reference's edges: the quantiles of the cell's nonzero values at n_bins - 1 probabilities."""
    return np.quantile(row[row != 0], np.linspace(0, 1, n_bins - 1))


def _digitized(values, n_bins, edges_of=_cell_edges, right=False, shift=0, zeros_too=False,
               dtype=None) -> torch.Tensor:
    """Each cell's values ``np.digitize``d against ``edges_of(row, n_bins)``, with one slip
    configurable (all defaults: the reference): ``right=True`` counts the edges < x,
    ``shift`` is added to every nonzero value's bin, ``zeros_too`` digitizes the zeros as
    well, ``dtype`` casts the values first.  A cell without a nonzero value stays zero."""
    x = values.detach().cpu().numpy()
    x = x.astype(dtype) if dtype else x
    bins = np.zeros(x.shape, dtype=np.int64)
    for cell, row in enumerate(x):
        if not (row != 0).any():
            continue
        binned = np.ones(row.shape, dtype=bool) if zeros_too else row != 0  # (genes,)
        bins[cell, binned] = np.digitize(row[binned], edges_of(row, n_bins), right=right) + shift
    return torch.from_numpy(bins)


def bins_mid_rank(values, n_bins):
    """genlab's old rule: 1 + floor(q (n_bins - 1)), q the mid-rank quantile among the nonzero values."""
    x = values.detach().cpu().numpy()
    bins = np.zeros(x.shape, dtype=np.int64)
    for cell, row in enumerate(x):
        nonzero = row[row != 0]
        if nonzero.size:
            ordered = np.sort(nonzero)
            twice = np.searchsorted(ordered, nonzero, "left") + np.searchsorted(ordered, nonzero, "right")
            bins[cell, row != 0] = 1 + twice * (n_bins - 1) // (2 * nonzero.size)
    return torch.from_numpy(bins)


def bins_edges_below(values, n_bins):
    """np.digitize(..., right=True) / torch.searchsorted(..., right=False): the edges < x."""
    return _digitized(values, n_bins, right=True)


def bins_n_bins_edges(values, n_bins):
    """n_bins edges (np.linspace(0, 1, n_bins)) instead of n_bins - 1."""
    return _digitized(values, n_bins, edges_of=lambda row, n: np.quantile(row[row != 0], np.linspace(0, 1, n)))


def _row_edges(row: np.ndarray, n_bins: int) -> np.ndarray:
    return np.quantile(row, np.linspace(0, 1, n_bins - 1))  # zeros included


def bins_zeros_in_quantiles(values, n_bins):
    """Edges from all of the cell's values, the zeros included; the zeros themselves kept in bin 0."""
    return _digitized(values, n_bins, edges_of=_row_edges)


def bins_zeros_binned(values, n_bins):
    """The whole row digitized against its own quantiles: the zeros in the edges, and binned too."""
    return _digitized(values, n_bins, edges_of=_row_edges, zeros_too=True)


def bins_whole_matrix(values, n_bins):
    """Edges from every nonzero value of the matrix, not from the cell's own."""
    x = values.detach().cpu().numpy()
    edges = np.quantile(x[x != 0], np.linspace(0, 1, n_bins - 1))
    return _digitized(values, n_bins, edges_of=lambda row, n: edges)


def bins_from_zero(values, n_bins):
    """The number of edges <= x, minus 1: nonzero values in bins 0 .. n_bins - 2."""
    return _digitized(values, n_bins, shift=-1)


def bins_ties_middle(values, n_bins):
    """A value equal to several edges in the middle of upstream main's random range, not its top."""
    at_most, below = _digitized(values, n_bins), _digitized(values, n_bins, right=True)
    return torch.where(at_most > below, (below + 1 + at_most) // 2, at_most)


def bins_float32(values, n_bins):
    """The values cast to float32 first: values that only float64 tells apart become ties."""
    return _digitized(values, n_bins, dtype=np.float32)


_RULE = ("bin = the number of the cell's edges that are <= x, edges = np.quantile(the cell's "
         "nonzero values, np.linspace(0, 1, n_bins - 1))")
BIN_BUGS = {
    "mid_rank": (f"{_HERE}.bins_mid_rank",
                 "these are mid-rank bins, 1 + floor(q (n_bins - 1)) (genlab's old rule); scGPT's "
                 f"{_RULE}, so a cell's minimum is bin 1 and its maximum bin n_bins - 1"),
    "edges_below": (f"{_HERE}.bins_edges_below",
                    "you counted the edges BELOW x (np.digitize(..., right=True), or torch.searchsorted "
                    "with right=False): a value equal to an edge must count it, so the cell's minimum is "
                    f"bin 1, not 0, and tied values take the highest bin. {_RULE}"),
    "n_bins_edges": (f"{_HERE}.bins_n_bins_edges",
                     "you made n_bins edges; make n_bins - 1, at np.linspace(0, 1, n_bins - 1): with "
                     "n_bins edges the cell's maximum lands in bin n_bins, outside 0 .. n_bins - 1"),
    "zeros_in_quantiles": (f"{_HERE}.bins_zeros_in_quantiles",
                           "the zeros took part in the quantiles: the edges are quantiles of the cell's "
                           "NONZERO values only (zeros stay in bin 0 and shape no edge)"),
    "zeros_binned": (f"{_HERE}.bins_zeros_binned",
                     "you binned the whole row, zeros included: zeros stay in bin 0, and the edges are "
                     "quantiles of the cell's NONZERO values only"),
    "whole_matrix": (f"{_HERE}.bins_whole_matrix",
                     "you binned by the quantiles of the whole matrix; scGPT bins each cell by its OWN "
                     "nonzero values, one row at a time, so that sequencing depth does not matter"),
    "from_zero": (f"{_HERE}.bins_from_zero",
                  "nonzero values go to bins 1 .. n_bins - 1 (bin 0 is for zeros only): the bin is the "
                  "number of edges <= x, and the cell's minimum already reaches the first edge; you "
                  "subtracted 1 (or dropped the first edge)"),
    "ties_middle": (f"{_HERE}.bins_ties_middle",
                    "a value equal to several edges (tied values, a single expressed gene) got a bin in "
                    "the middle of its range; the rule gives it the HIGHEST, the number of edges <= x "
                    "(np.digitize(x, edges), torch.searchsorted(edges, x, right=True))"),
    "float32": (f"{_HERE}.bins_float32",
                "values that differ only in float64 got the same bin: compute in the input's dtype "
                "(here float64), not float32"),
}


def _mask(n_known, n_unknown, known_rows=(True, False), unknown_block="eye"):
    """A (P+G, P+G) mask: known rows see (known, unknown) keys as given by ``known_rows``;
    unknown rows see all known keys and, among unknown keys, ``unknown_block``."""
    P, G = n_known, n_unknown
    mask = torch.zeros(P + G, P + G, dtype=torch.bool)
    mask[:P, :P], mask[:P, P:] = known_rows
    mask[P:, :P] = True
    mask[P:, P:] = {"eye": torch.eye(G, dtype=torch.bool), "all": torch.ones(G, G, dtype=torch.bool),
                    "none": torch.zeros(G, G, dtype=torch.bool)}[unknown_block]
    return mask


def mask_inverted(n_known, n_unknown):
    return ~_mask(n_known, n_unknown)


def mask_unknown_see_each_other(n_known, n_unknown):
    return _mask(n_known, n_unknown, unknown_block="all")


def mask_unknown_see_no_self(n_known, n_unknown):
    return _mask(n_known, n_unknown, unknown_block="none")


def mask_known_peek(n_known, n_unknown):
    return _mask(n_known, n_unknown, known_rows=(True, True))


def mask_transposed(n_known, n_unknown):
    return _mask(n_known, n_unknown).T


def mask_causal(n_known, n_unknown):
    return torch.ones(n_known + n_unknown, n_known + n_unknown, dtype=torch.bool).tril()


MASK_BUGS = {
    "inverted": (f"{_HERE}.mask_inverted",
                 "mask polarity inverted: True must mean 'may attend' (False = blocked)"),
    "unknown_see_each_other": (f"{_HERE}.mask_unknown_see_each_other",
                               "unknown genes may attend to each other: then the value generated for one "
                               "gene depends on which other genes are generated with it. An unknown gene "
                               "sees the known genes and ITSELF only (an identity block)"),
    "unknown_see_no_self": (f"{_HERE}.mask_unknown_see_no_self",
                            "an unknown gene must attend to itself: its own token carries WHICH gene is "
                            "asked for (the diagonal of the unknown block is True)"),
    "known_peek": (f"{_HERE}.mask_known_peek",
                   "known genes may attend to unknown genes: then the known genes' outputs (and the cell "
                   "embedding) change with what is being generated. Known rows see known keys only"),
    "transposed": (f"{_HERE}.mask_transposed",
                   "your mask is transposed: rows are queries (the gene looking), columns keys (the gene "
                   "looked at). Known genes (rows 0..n_known-1) see only known genes; unknown genes see "
                   "the known genes and themselves"),
    "causal": (f"{_HERE}.mask_causal",
               "this is GPT's causal mask: genes have no order. Known genes see all known genes; each "
               "unknown gene sees all known genes and itself"),
}


def _masked(errors, is_unknown):
    return torch.where(is_unknown, errors, torch.zeros_like(errors))


def gep_loss_all_positions(predicted, target, is_unknown):
    return ((predicted - target) ** 2).mean()


def gep_loss_known_positions(predicted, target, is_unknown):
    return scgpt.masked_mse(predicted, target, ~is_unknown)


def gep_loss_per_cell(predicted, target, is_unknown):
    per_cell = _masked((predicted - target) ** 2, is_unknown).sum(dim=1) / is_unknown.sum(dim=1).clamp(min=1)
    return per_cell.mean()


def gep_loss_multiplied_by_mask(predicted, target, is_unknown):
    return ((predicted - target) ** 2 * is_unknown).sum() / is_unknown.sum().clamp(min=1)


def gep_loss_sum(predicted, target, is_unknown):
    return _masked((predicted - target) ** 2, is_unknown).sum()


GEP_BUGS = {
    "all_positions": (f"{_HERE}.gep_loss_all_positions",
                      "you averaged over ALL genes; the GEP loss counts only the genes to generate "
                      "(is_unknown True): the known genes were given to the model, predicting them is free"),
    "known_positions": (f"{_HERE}.gep_loss_known_positions",
                        "you averaged over the KNOWN genes; the loss is over the unknown ones (is_unknown True)"),
    "per_cell": (f"{_HERE}.gep_loss_per_cell",
                 "you averaged each cell first and then the cells; the GEP loss is one mean over all unknown "
                 "genes of the batch (cells with more unknown genes weigh more)"),
    "multiplied_by_mask": (f"{_HERE}.gep_loss_multiplied_by_mask",
                           "a NaN prediction at a known position leaked into your loss: NaN x 0 is NaN. "
                           "Select the unknown positions (torch.where, masked_fill or boolean indexing) "
                           "instead of multiplying by the mask"),
    "sum": (f"{_HERE}.gep_loss_sum",
            "you returned the sum of squared errors; the GEP loss is their MEAN over the unknown genes"),
}


def _step(predicted, confidence, values, pending, steps_left, n_move=None, descending=True,
          only_pending=True, rank_known=False):
    """One generation step with a configurable slip (all defaults: the reference)."""
    remaining = pending.sum(dim=1)  # (B,)
    n = n_move(remaining, steps_left) if n_move else (remaining + steps_left - 1) // steps_left
    ranked = confidence if descending else -confidence
    if only_pending and not rank_known:
        ranked = ranked.masked_fill(~pending, float("-inf"))
    rank = ranked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (B, L)
    move = rank < n[:, None]
    if only_pending:
        move &= pending
    return torch.where(move, predicted, values), pending & ~move


def step_topk(predicted, confidence, values, pending, steps_left):
    """torch.topk over the pending genes: among tied confidences it may pick a later gene."""
    n_move = (pending.sum(dim=1) + steps_left - 1) // steps_left  # (B,)
    ranked = confidence.masked_fill(~pending, float("-inf"))  # (B, L)
    move = torch.zeros_like(pending)
    for cell in range(pending.size(0)):
        move[cell, ranked[cell].topk(int(n_move[cell])).indices] = True
    move &= pending
    return torch.where(move, predicted, values), pending & ~move


def step_floor(predicted, confidence, values, pending, steps_left):
    return _step(predicted, confidence, values, pending, steps_left, n_move=lambda r, k: r // k)


def step_least_confident(predicted, confidence, values, pending, steps_left):
    return _step(predicted, confidence, values, pending, steps_left, descending=False)


def step_moves_all(predicted, confidence, values, pending, steps_left):
    return _step(predicted, confidence, values, pending, steps_left, n_move=lambda r, k: r)


def step_ignores_pending(predicted, confidence, values, pending, steps_left):
    return _step(predicted, confidence, values, pending, steps_left, only_pending=False)


def step_nan_ranked_first(predicted, confidence, values, pending, steps_left):
    """Only pending genes move, but the ranking also holds the known genes' NaN confidences."""
    return _step(predicted, confidence, values, pending, steps_left, rank_known=True)


STEP_BUGS = {
    "topk": (f"{_HERE}.step_topk",
             "among genes with EQUAL confidence you did not move the earlier ones first: torch.topk does "
             "not promise which tied entry it returns. Rank with argsort(dim=1, descending=True, stable=True)"),
    "floor": (f"{_HERE}.step_floor",
              "you moved floor(r / steps_left) genes; move ceil(r / steps_left), so that every step moves "
              "at least one gene while any is left and the last step (steps_left = 1) moves all of them"),
    "least_confident": (f"{_HERE}.step_least_confident",
                        "you moved the LEAST confident genes; move the most confident first (they become "
                        "context for the harder ones)"),
    "moves_all": (f"{_HERE}.step_moves_all",
                  "you moved every pending gene at once: that is one-shot generation. One step of K moves "
                  "ceil(r / steps_left) genes"),
    "ignores_pending": (f"{_HERE}.step_ignores_pending",
                        "you ranked known genes too (their confidence is NaN, which sorts above every number): "
                        "only pending genes compete; give the others -inf before ranking, and never change a "
                        "known gene's value"),
    "nan_ranked_first": (f"{_HERE}.step_nan_ranked_first",
                         "the known genes' confidences are NaN, and NaN sorts above every number: they took "
                         "the first places of your ranking, so too few pending genes moved. Give every gene "
                         "that is not pending -inf before ranking"),
}

# ------------------------------------------------------------------------------ cases


def _without_edges_on_values(x: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Zero each cell's last nonzero values until no quantile edge can fall exactly on a value
    by arithmetic alone, for n_bins - 1 edges and for n_bins (the n_bins_edges bug).

    Edge k of a cell with n nonzero values sits at position k (n - 1) / (n_bins - 2) of its
    sorted values.  Where that is a whole number and the neighbouring values differ, the
    edge equals a value only in exact arithmetic, and the last bit of the interpolation
    (numpy's and torch's differ) decides the value's bin.  With gcd(n - 1, n_bins - 2) = 1
    no interior position is whole, so numpy or torch, float32 or float64, every correct
    implementation gets the same bins (tests/test_diagnoses.py checks this on every case)."""
    for row in x:
        on = row.nonzero().flatten()  # (n,) the cell's nonzero genes
        n = on.numel()
        while n > 1 and (math.gcd(n - 1, n_bins - 2) > 1 or math.gcd(n - 1, n_bins - 1) > 1):
            n -= 1
            row[on[n]] = 0.0
    return x


def expression_case(seed: int, cells: int, genes: int, kind: str, n_bins: int = 51,
                    dtype: str = "float32") -> CaseSpec:
    """kind: rounded (log-like values with one decimal: many ties) | counts (Poisson counts:
    ties everywhere, as in raw data) | distinct (all values different) | single (one nonzero
    gene per cell) | near_ties (values 1e-9 apart: distinct in float64, equal in float32) |
    silent (rounded, but the first and the last cell have no nonzero value)."""

    def make():
        g = _gen(seed)
        if kind == "counts":
            rates = torch.rand(cells, genes, generator=g, dtype=torch.float64) ** 3 * 6
            x = torch.poisson(rates, generator=g)
        elif kind == "distinct":
            x = torch.stack([torch.randperm(genes, generator=g) for _ in range(cells)]).double() * 0.37 + 0.5
            x[torch.rand(cells, genes, generator=g) < 0.3] = 0.0
        elif kind == "near_ties":
            x = torch.randint(1, 4, (cells, genes), generator=g).double()
            x += torch.randint(0, 2, (cells, genes), generator=g).double() * 1e-9
            x[torch.rand(cells, genes, generator=g) < 0.3] = 0.0
        elif kind == "single":
            x = torch.zeros(cells, genes, dtype=torch.float64)
            x[torch.arange(cells), torch.randint(genes, (cells,), generator=g)] = \
                torch.rand(cells, generator=g, dtype=torch.float64) * 3 + 0.1
        else:
            x = (torch.rand(cells, genes, generator=g, dtype=torch.float64) * 4).round(decimals=1)
            x[torch.rand(cells, genes, generator=g) < 0.4] = 0.0
        x[:, 0] = torch.where(x.sum(dim=1) > 0, x[:, 0], torch.ones(cells, dtype=x.dtype))  # no silent cell
        if kind == "silent":
            x[[0, -1]] = 0.0
        return {"values": _without_edges_on_values(x, n_bins).to(getattr(torch, dtype)), "n_bins": n_bins}

    behaviour = {"single": "one expressed gene per cell", "near_ties": "values 1e-9 apart",
                 "silent": "a cell with no expressed gene"}.get(kind, "")
    return CaseSpec(make=make, meta={"kind": kind, "shape": [cells, genes], "n_bins": n_bins,
                                     "dtype": dtype, "seed": seed}, kind=behaviour)


def mask_case(n_known: int, n_unknown: int) -> CaseSpec:
    return CaseSpec(make=lambda: {"n_known": n_known, "n_unknown": n_unknown},
                    meta={"n_known": n_known, "n_unknown": n_unknown},
                    kind="nothing to generate" if n_unknown == 0 else "")


def loss_case(seed: int, B: int, L: int, kind: str = "random", dtype: str = "float32") -> CaseSpec:
    """kind: random | uneven (cells with 1 and with L-1 unknown genes) | none (no unknown gene) |
    nan_known (the predictions at known positions are NaN, as a model may leave them)."""

    def make():
        g = _gen(seed)
        target = torch.randint(0, 51, (B, L), generator=g).double()
        predicted = target + torch.randn(B, L, generator=g, dtype=torch.float64) * 5
        if kind == "uneven":
            is_unknown = torch.zeros(B, L, dtype=torch.bool)
            is_unknown[0, 0] = True
            is_unknown[1:, 1:] = True
        elif kind == "none":
            is_unknown = torch.zeros(B, L, dtype=torch.bool)
        else:
            is_unknown = torch.rand(B, L, generator=g) < 0.5
            is_unknown[:, 0] = True
        if kind == "nan_known":
            predicted = predicted.masked_fill(~is_unknown, float("nan"))
        dt = getattr(torch, dtype)
        return {"predicted": predicted.to(dt), "target": target.to(dt), "is_unknown": is_unknown}

    behaviour = {"none": "no unknown gene", "nan_known": "NaN predictions at known positions"}.get(kind, "")
    return CaseSpec(make=make, meta={"kind": kind, "B": B, "L": L, "dtype": dtype, "seed": seed},
                    kind=behaviour)


def step_case(seed: int, B: int, L: int, steps_left: int, kind: str = "random",
              dtype: str = "float32") -> CaseSpec:
    """kind: random | ties (confidences on a coarse grid) | done (one cell has nothing pending)."""

    def make():
        g = _gen(seed)
        pending = torch.rand(B, L, generator=g) < 0.6
        pending[:, 0] = True
        if kind == "done":
            pending[-1] = False
        confidence = torch.randn(B, L, generator=g, dtype=torch.float64)
        if kind == "ties":
            confidence = (confidence * 2).round() / 2
        confidence = confidence.masked_fill(~pending, float("nan"))  # no prediction for known genes
        values = torch.randint(0, 51, (B, L), generator=g).double().masked_fill(pending, 0.0)
        predicted = torch.rand(B, L, generator=g, dtype=torch.float64) * 50
        dt = getattr(torch, dtype)
        return {"predicted": predicted.to(dt), "confidence": confidence.to(dt), "values": values.to(dt),
                "pending": pending, "steps_left": steps_left}

    behaviour = {"ties": "tied confidences", "done": "a cell with nothing pending"}.get(kind, "")
    if steps_left > L:
        behaviour = "more steps left than pending genes"
    return CaseSpec(make=make, meta={"kind": kind, "B": B, "L": L, "steps_left": steps_left,
                                     "dtype": dtype, "seed": seed}, kind=behaviour)


# ------------------------------------------------------------------------------ checks

BIN_CALLS = ("genlab.scgpt.bin_expression", "genlab.scgpt._edge_count_bins", "genlab.scgpt.tokenize_adata")
MASK_CALLS = ("genlab.masks.known_unknown_mask",)
LOSS_CALLS = ("genlab.scgpt.masked_mse", "genlab.scgpt._masked_mean", "genlab.scgpt.gaussian_nll",
              "genlab.scgpt.scgpt_losses")
STEP_CALLS = ("genlab.scgpt.most_confident", "genlab.scgpt.generate_values")

# What every check of one function shares: its test cell, reference, comparison, bans.
PER_FUNCTION = {
    "bin_values": dict(cell="test_bin_values", reference=f"{_HERE}.reference_bin_values", dtype="int64",
                       compare="exact", outputs=("bins",), forbidden=BIN_CALLS, bugs=BIN_BUGS),
    "scgpt_mask": dict(cell="test_scgpt_mask", reference="genlab.masks.known_unknown_mask", dtype="bool",
                       compare="exact", outputs=("mask",), forbidden=MASK_CALLS, bugs=MASK_BUGS),
    "gep_loss": dict(cell="test_gep_loss", reference=f"{_HERE}.reference_gep_loss", outputs=("loss",),
                     forbidden=LOSS_CALLS, bugs=GEP_BUGS),
    "generation_step": dict(cell="test_generation_step", reference=f"{_HERE}.reference_generation_step",
                            outputs=("values", "pending"), forbidden=STEP_CALLS, bugs=STEP_BUGS),
}


check = check_maker(PER_FUNCTION)


SPEC = Assignment(
    name="04_scgpt",
    notebook="scgpt.ipynb",
    # genlab's loss and generation, compared with the student's in the notebook
    notebook_uses=("genlab.scgpt.scgpt_losses", "genlab.scgpt.generate_values"),
    checks=[
        check("bin_values", "bin_values", True,
              [expression_case(0, 6, 20, "rounded"), expression_case(1, 4, 12, "rounded", n_bins=5),
               expression_case(10, 5, 30, "counts", n_bins=11), expression_case(8, 3, 8, "single"),
               expression_case(9, 3, 12, "near_ties", dtype="float64"),
               expression_case(11, 4, 12, "silent", n_bins=9)],
              "per-cell quantile bins, values with ties, n_bins = 51, 5 and 11; one expressed gene "
              "per cell; float64 values 1e-9 apart; cells with no expressed gene, n_bins = 9 (exact)", points=2),
        check("bin_values.hidden", "bin_values", False,
              [expression_case(2, 32, 1200, "counts"), expression_case(3, 3, 40, "distinct", n_bins=11),
               expression_case(4, 5, 30, "single"), expression_case(5, 5, 16, "silent", n_bins=3),
               expression_case(6, 8, 40, "counts", dtype="float64"),
               expression_case(7, 4, 24, "near_ties", dtype="float64")],
              "Poisson counts with 1,200 genes; all values different; one expressed gene per cell; "
              "cells with no expressed gene, n_bins = 3; float64, with values 1e-9 apart that only "
              "float64 tells apart (exact)",
              points=2),
        check("scgpt_mask", "scgpt_mask", True, [mask_case(3, 2), mask_case(4, 4), mask_case(2, 0)],
              "the known/unknown mask, 3 + 2 and 4 + 4 genes; nothing to generate", points=2),
        check("scgpt_mask.hidden", "scgpt_mask", False,
              [mask_case(1, 0), mask_case(1, 6), mask_case(40, 100)],
              "nothing to generate; a single known gene; 40 + 100 genes"),
        check("gep_loss", "gep_loss", True,
              [loss_case(0, 3, 8), loss_case(1, 2, 16), loss_case(8, 2, 6, "none"), loss_case(9, 2, 8, "nan_known")],
              "masked MSE over the unknown genes, float32; no unknown gene (the loss is 0); NaN "
              "predictions at known positions", points=2),
        check("gep_loss.hidden", "gep_loss", False,
              [loss_case(2, 3, 9, "uneven"), loss_case(3, 2, 5, "none"), loss_case(7, 3, 12, "nan_known"),
               loss_case(4, 4, 32, dtype="float64")],
              "cells with 1 and 8 unknown genes; no unknown gene at all (the loss is 0); NaN predictions at "
              "known positions; float64", points=2),
        check("generation_step", "generation_step", True,
              [step_case(0, 2, 10, steps_left=2), step_case(1, 3, 12, steps_left=3),
               step_case(2, 2, 8, steps_left=1), step_case(7, 2, 12, steps_left=2, kind="ties"),
               step_case(8, 2, 8, steps_left=2, kind="done"), step_case(9, 2, 5, steps_left=7)],
              "one step with 2 and 3 steps left; the last step moves every pending gene; tied "
              "confidences (the earlier gene first); a cell with nothing pending; more steps left "
              "than pending genes", points=2),
        check("generation_step.hidden", "generation_step", False,
              [step_case(3, 3, 20, steps_left=4, kind="ties"), step_case(4, 3, 9, steps_left=2, kind="done"),
               step_case(5, 2, 6, steps_left=8), step_case(6, 4, 64, steps_left=3, dtype="float64")],
              "tied confidences (the earlier gene first); a cell with nothing pending; more steps left "
              "than pending genes; float64", points=2),
    ],
    samples={
        "solution": {"solved": "all", "lost": []},
        "blank": {"solved": [], "lost": "all"},
        "partial": {"solved": ["bin_values", "scgpt_mask"],
                    "lost": ["gep_loss", "gep_loss.hidden", "generation_step", "generation_step.hidden"]},
        # BERT's habit: the genes to predict see each other
        "bert_mask": {"solved": "all", "lost": ["scgpt_mask", "scgpt_mask.hidden"],
                      "edit": {"scgpt_mask": ["torch.eye(n_unknown, dtype=torch.bool)",
                                              "torch.ones(n_unknown, n_unknown, dtype=torch.bool)"]}},
        # np.digitize(..., right=True)'s habit: the edges below x, so a cell's minimum lands in bin 0
        "edges_below_bins": {"solved": "all", "lost": ["bin_values", "bin_values.hidden"],
                             "edit": {"bin_values": ["torch.searchsorted(edges, x, right=True)",
                                                     "torch.searchsorted(edges, x, right=False)"]}},
        # floor instead of ceiling: too few genes move, and none when fewer are left than steps
        "floor_steps": {"solved": "all", "lost": ["generation_step", "generation_step.hidden"],
                        "edit": {"generation_step": ["(remaining + steps_left - 1) // steps_left",
                                                     "remaining // steps_left"]}},
    },
)
