"""Assignment 4, "scGPT: masked generation for cells": what is graded, on which inputs, for how many points.

Students implement the four pieces of scGPT that BERT and GPT do not have: per-cell
quantile binning of expression values (exact integers, against
``genlab.scgpt.bin_expression``), the known/unknown attention mask (exact, against
``genlab.masks.known_unknown_mask``), the GEP loss, a mean squared error over the genes
to generate only (against ``genlab.scgpt.masked_mse``), and one step of iterative
confidence-based generation (against ``genlab.scgpt.most_confident``, the choice that
``genlab.scgpt.generate_values`` makes at every step).  A markdown answer on how scGPT's
masking differs from BERT's is graded by hand in nbgrader's formgrader.

Each known bug below is a plausible student slip; a submission that reproduces one gets
the bug's message instead of a bare "differs at".
"""

from __future__ import annotations

import numpy as np
import torch

from autograder.spec import Assignment, CaseSpec, check_maker
from genlab import scgpt

_HERE = "autograder.specs.a04_scgpt"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ references


def reference_bin_values(values, n_bins):
    """(cells, genes) int64: genlab's per-cell mid-rank bins."""
    return torch.from_numpy(scgpt.bin_expression(values.detach().cpu().numpy(), n_bins)).to(values.device)


def reference_gep_loss(predicted, target, is_unknown):
    """() : the mean squared error over the unknown genes (0 when there are none)."""
    return scgpt.masked_mse(predicted, target, is_unknown)


def reference_generation_step(predicted, confidence, values, pending, steps_left):
    """(values, pending) after moving the most confident pending genes into the known set."""
    move = scgpt.most_confident(confidence, pending, steps_left)  # (B, L)
    return torch.where(move, predicted, values), pending & ~move


# ------------------------------------------------------------------------- known bugs


def _bins(values, n_bins: int, twice_rank, shift: int = 1) -> torch.Tensor:
    """``shift + floor(q (n_bins - 1))`` for each cell's nonzero values, with
    ``(2 q n, n) = twice_rank(row, nonzero)``; bins above n_bins - 1 are clipped."""
    x = values.detach().cpu().numpy().astype(np.float64)
    bins = np.zeros(x.shape, dtype=np.int64)
    for cell, row in enumerate(x):
        nonzero = row > 0
        twice, n = twice_rank(row, nonzero)  # (nonzero,) ints in 0 .. 2n
        bins[cell, nonzero] = shift + twice * (n_bins - 1) // (2 * n)
    return torch.from_numpy(np.minimum(bins, n_bins - 1))


def _mid_rank(sorted_pool, x):
    """#{v < x} + #{v <= x} over ``sorted_pool``: twice the mid-rank."""
    return np.searchsorted(sorted_pool, x, side="left") + np.searchsorted(sorted_pool, x, side="right")


def _cell_mid_rank(row, nonzero):
    return _mid_rank(np.sort(row[nonzero]), row[nonzero]), nonzero.sum()


def bins_ordinal_rank(values, n_bins):
    """Ties broken by position: each value's place in a (stable) sort instead of its mid-rank."""
    return _bins(values, n_bins, lambda row, nonzero: (
        2 * np.argsort(np.argsort(row[nonzero], kind="stable"), kind="stable") + 1, nonzero.sum()))


def bins_zeros_in_quantiles(values, n_bins):
    """Quantiles among all of the cell's genes, the zeros included."""
    return _bins(values, n_bins, lambda row, nonzero: (_mid_rank(np.sort(row), row[nonzero]), row.size))


def bins_without_shift(values, n_bins):
    """floor(q (n_bins - 1)) without the 1 +: small nonzero values fall into bin 0."""
    return _bins(values, n_bins, _cell_mid_rank, shift=0)


def bins_whole_matrix(values, n_bins):
    """Quantiles of every nonzero value of the matrix, not of the cell's own."""
    x = values.detach().cpu().numpy().astype(np.float64)
    pool = np.sort(x[x > 0])
    bins = np.zeros(x.shape, dtype=np.int64)
    nonzero = x > 0
    bins[nonzero] = 1 + _mid_rank(pool, x[nonzero]) * (n_bins - 1) // (2 * pool.size)
    return torch.from_numpy(bins)


BIN_BUGS = {
    "ordinal_rank": (f"{_HERE}.bins_ordinal_rank",
                     "equal values got different bins: ties must share a bin. Use the mid-rank "
                     "quantile q = (#{v < x} + #{v <= x}) / (2n), not the value's position in a sort"),
    "zeros_in_quantiles": (f"{_HERE}.bins_zeros_in_quantiles",
                           "the zeros took part in the quantiles: each cell's quantiles are over its "
                           "NONZERO values only (n = the number of nonzero genes; zeros stay in bin 0)"),
    "no_shift": (f"{_HERE}.bins_without_shift",
                 "nonzero values must go to bins 1 .. n_bins-1 (bin 0 is reserved for zeros): "
                 "bin = 1 + floor(q (n_bins - 1)); you left out the 1 +"),
    "whole_matrix": (f"{_HERE}.bins_whole_matrix",
                     "you binned by the quantiles of the whole matrix; scGPT bins each cell by its OWN "
                     "quantiles, one row at a time, so that sequencing depth does not matter"),
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


def expression_case(seed: int, cells: int, genes: int, kind: str, n_bins: int = 51,
                    dtype: str = "float32") -> CaseSpec:
    """kind: rounded (log-like values with one decimal: many ties) | counts (Poisson counts:
    ties everywhere, as in raw data) | distinct (no zeros, all values different) | single (one
    nonzero gene per cell) | near_ties (values 1e-9 apart: distinct in float64, equal in float32)."""

    def make():
        g = _gen(seed)
        if kind == "counts":
            rates = torch.rand(cells, genes, generator=g, dtype=torch.float64) ** 3 * 6
            x = torch.poisson(rates, generator=g)
        elif kind == "distinct":
            x = torch.stack([torch.randperm(genes, generator=g) for _ in range(cells)]).double() * 0.37 + 0.5
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
        return {"values": x.to(getattr(torch, dtype)), "n_bins": n_bins}

    behaviour = {"single": "one expressed gene per cell", "near_ties": "values 1e-9 apart"}.get(kind, "")
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

BIN_CALLS = ("genlab.scgpt.bin_expression", "genlab.scgpt._mid_rank_bins", "genlab.scgpt.tokenize_adata")
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
               expression_case(8, 3, 8, "single"), expression_case(9, 3, 12, "near_ties", dtype="float64")],
              "per-cell mid-rank bins, values with ties, n_bins = 51 and 5; one expressed gene per "
              "cell; float64 values 1e-9 apart (exact)", points=2),
        check("bin_values.hidden", "bin_values", False,
              [expression_case(2, 32, 1200, "counts"), expression_case(3, 3, 10, "distinct", n_bins=11),
               expression_case(4, 5, 30, "single"), expression_case(5, 4, 16, "rounded", n_bins=2),
               expression_case(6, 8, 40, "counts", dtype="float64"),
               expression_case(7, 4, 24, "near_ties", dtype="float64")],
              "Poisson counts with 1,200 genes; n = n_bins - 1 distinct values; one expressed gene per "
              "cell; n_bins = 2; float64, with values 1e-9 apart that only float64 tells apart (exact)",
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
        # ties broken by position (an argsort rank)
        "ordinal_bins": {"solved": "all", "lost": ["bin_values", "bin_values.hidden"],
                         "edit": {"bin_values": [
                             "below = torch.searchsorted(ordered, x, right=False)  # (n,) how many are < x\n"
                             "        up_to = torch.searchsorted(ordered, x, right=True)  # (n,) how many are <= x",
                             "below = x.argsort(stable=True).argsort()  # (n,) its place in a sort\n"
                             "        up_to = below + 1"]}},
        # floor instead of ceiling: too few genes move, and none when fewer are left than steps
        "floor_steps": {"solved": "all", "lost": ["generation_step", "generation_step.hidden"],
                        "edit": {"generation_step": ["(remaining + steps_left - 1) // steps_left",
                                                     "remaining // steps_left"]}},
    },
)
