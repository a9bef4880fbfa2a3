"""Generation: one-shot or iterative in K steps, by confidence; the mean or a sample.

``generate_values`` predicts every unknown gene at each step and moves the most
confident 1/K of them (``most_confident``), with their predicted values (the
mean, or a draw from the predicted Gaussian), into the known set.  Part of
``genlab.scgpt``; ``ScGPT.generate_from_gene_prompt`` and
``generate_from_cell_prompt`` call it on AnnData.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anndata
import numpy as np
import pandas as pd
import torch

from genlab.scgpt.packing import _all_real, _pack, _unpack

if TYPE_CHECKING:  # only an annotation here; genlab.scgpt.model imports this module
    from genlab.scgpt.model import ScGPT

__all__ = [
    "Generation",
    "most_confident",
    "generate_values",
]


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
                    cell_prompt: torch.Tensor | None = None, sample: bool = False,
                    generator: torch.Generator | None = None,
                    generative_mask: bool = True) -> Generation:
    """Generate the unknown genes' values, in one shot (K = ``steps`` = 1) or iteratively.

    gene_ids, values, is_unknown, is_real: (B, L); the values of unknown genes
    are ignored.  Each of the K steps:

    1. packs each cell into [<cls>, known genes; still-unknown genes] and runs
       the model once (``known_unknown_mask``: the predictions of the
       still-unknown genes do not depend on each other);
    2. takes the ``ceil(r / (K - step))`` most confident of the cell's r
       still-unknown genes (confidence = -predicted variance; ties go to the
       earlier position) and moves them, with their generated values, into the
       known set.

    So each step moves about 1/K of the genes and the last step moves all
    that are left; genes moved early become context for the rest.  K = 1 is
    one forward pass.  ``cell_prompt`` (B, C) goes into the <cls> slot.

    A generated value is the predicted mean (``sample=False``), or with
    ``sample=True`` a draw ``mean + exp(log_var / 2) * N(0, 1)`` from the
    Gaussian that the GEP and confidence heads predict, the normal noise
    drawn from ``generator`` (one (B, L) draw per step; same generator state,
    same values).  The drawn values are what later steps see as known, so
    with K = 1 every gene is drawn independently of the others, and with K > 1
    a gene drawn early conditions the genes drawn after it.  Draws are not
    clipped to the bin range.  Which genes move is decided by the confidence,
    never by the draw.  ``sample=False`` draws nothing from ``generator``.

    ``generative_mask=False`` runs the model as a plain encoder (see
    ``ScGPT.forward``): the still-unknown genes then see each other.
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
                    gene_ids.gather(1, unknown_index), known_real, unknown_real, cell_prompt,
                    generative_mask=generative_mask)
        predicted = _unpack(out.value, unknown_index, unknown_real, L)  # (B, L) means
        step_confidence = _unpack(out.confidence, unknown_index, unknown_real, L)  # (B, L)
        if sample:
            log_var = _unpack(out.log_var, unknown_index, unknown_real, L)  # (B, L)
            predicted = predicted + (log_var / 2).exp() * _standard_normal(values, generator)

        move = most_confident(step_confidence, pending, steps_left=steps - step)  # (B, L)
        values = torch.where(move, predicted, values)
        confidence = torch.where(move, step_confidence, confidence)
        moved_at = moved_at.masked_fill(move, step)
        pending &= ~move
    return Generation(values, confidence, moved_at)


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, 1) noise shaped and typed like ``like``, drawn on the generator's device, moved to ``like``'s."""
    device = like.device if generator is None else generator.device
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device)
    return noise.to(like.device)


def _generation_adata(generation: Generation, generated: np.ndarray, obs: pd.DataFrame,
                      var: pd.DataFrame) -> anndata.AnnData:
    return anndata.AnnData(
        X=generation.values.numpy().astype(np.float32), obs=obs, var=var,
        layers={"generated": np.asarray(generated, dtype=bool),
                "confidence": generation.confidence.numpy().astype(np.float32),
                "step": generation.step.numpy()},
    )
