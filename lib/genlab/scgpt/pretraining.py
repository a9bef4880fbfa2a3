"""Pretraining batches: cells split at random into known and unknown genes.

``split_known_unknown`` makes a fraction of each cell's genes unknown (their
values become targets); ``pretraining_batch`` draws that fraction per batch
from ``UNKNOWN_FRACTIONS`` and chooses the genes of the cell-prompt pass (a
split of its own, or upstream's: the same split); ``pretraining_batches``
feeds ``genlab.train.train``.  Part of ``genlab.scgpt``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from genlab.scgpt.packing import _pack
from genlab.scgpt.tokens import CellTokens, GeneVocab

__all__ = [
    "UNKNOWN_FRACTIONS",
    "CELL_PROMPT_KNOWN_FRACTIONS",
    "CELL_PROMPT_SPLITS",
    "MaskedCells",
    "PretrainBatch",
    "split_known_unknown",
    "pretraining_batch",
    "pretraining_batches",
]

UNKNOWN_FRACTIONS = (0.25, 0.5, 0.75)  # pretraining: share of a cell's genes to generate
CELL_PROMPT_KNOWN_FRACTIONS = (0.0, 0.25, 0.5)  # cell-prompt pass with its own split: share kept known
CELL_PROMPT_SPLITS = ("own", "same")  # the cell-prompt pass's genes: a split of its own, or the GEP split


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
    """One pretraining batch: a GEP split, and the split of the same cells for the cell-prompt pass.

    ``cell_prompt`` None: no cell-prompt pass.  It may be ``gep`` itself (upstream's choice).
    """

    gep: MaskedCells
    cell_prompt: MaskedCells | None
    unknown_fraction: float

    def to(self, device) -> PretrainBatch:
        prompt = None if self.cell_prompt is None else self.cell_prompt.to(device)
        return PretrainBatch(self.gep.to(device), prompt, self.unknown_fraction)


def _draw(choices: Sequence[float], generator: torch.Generator | None) -> float:
    return choices[int(torch.randint(len(choices), (1,), generator=generator))]


def _check_unknown_fractions(unknown_fractions: Sequence[float]) -> None:
    if len(unknown_fractions) == 0 or not all(0.0 < f < 1.0 for f in unknown_fractions):
        raise ValueError(f"unknown_fractions must be fractions strictly between 0 and 1, got {unknown_fractions!r}")


def _check_cell_prompt_split(cell_prompt_split: str) -> None:
    if cell_prompt_split not in CELL_PROMPT_SPLITS:
        raise ValueError(f"cell_prompt_split must be one of {CELL_PROMPT_SPLITS}, got {cell_prompt_split!r}")


def pretraining_batch(tokens: CellTokens, cells, generator: torch.Generator | None = None,
                      cell_prompt: bool = True, cell_prompt_split: str = "own",
                      unknown_fractions: Sequence[float] = UNKNOWN_FRACTIONS) -> PretrainBatch:
    """A pretraining batch of the given cells (index tensor), all random choices from ``generator``.

    The unknown fraction is drawn per batch from ``unknown_fractions``
    (upstream's ``UNKNOWN_FRACTIONS`` {0.25, 0.5, 0.75} by default; the
    simulator experiment widens it to the known-gene counts it evaluates).  With ``cell_prompt``, ``scgpt_losses`` runs the cells
    again with the GEP pass's cell embedding (detached) in the <cls> slot, on
    the genes ``cell_prompt_split`` chooses:

    - ``"own"``: a second split of the same cells that keeps a fraction drawn
      from ``CELL_PROMPT_KNOWN_FRACTIONS`` {0, 0.25, 0.5} known, so the model
      also learns to generate from the embedding alone, as cell-prompt
      generation asks of it (0 known genes at its first step);
    - ``"same"``: the GEP split itself (``batch.cell_prompt is batch.gep``), as
      upstream's ``examples/pretrain.py`` does.  Its known genes (25-75% of the
      cell) predict the rest without the embedding, and on pbmc68k_reduced a
      model trained this way generates almost nothing type-specific from a
      prompt alone (``scgpt_pbmc --cell-prompt-split same``).

    The GEP split is the same either way (drawn first).
    """
    _check_cell_prompt_split(cell_prompt_split)
    _check_unknown_fractions(unknown_fractions)
    cells = torch.as_tensor(cells, dtype=torch.long)
    gene_ids, values, is_real = tokens.gene_ids[cells], tokens.values[cells], tokens.is_real[cells]
    fraction = _draw(unknown_fractions, generator)
    gep = split_known_unknown(gene_ids, values, is_real, fraction, generator)
    prompt = None
    if cell_prompt and cell_prompt_split == "same":
        prompt = gep
    elif cell_prompt:
        known_fraction = _draw(CELL_PROMPT_KNOWN_FRACTIONS, generator)
        prompt = split_known_unknown(gene_ids, values, is_real, 1.0 - known_fraction, generator)
    return PretrainBatch(gep, prompt, fraction)


def pretraining_batches(tokens: CellTokens, batch_size: int, cell_prompt: bool = True,
                        cell_prompt_split: str = "own", unknown_fractions: Sequence[float] = UNKNOWN_FRACTIONS,
                        ) -> Callable[[int, torch.Generator], PretrainBatch]:
    """``batches(step, generator) -> PretrainBatch`` for ``genlab.train.train``.

    Each batch is ``batch_size`` distinct cells drawn from ``generator``;
    ``cell_prompt``, ``cell_prompt_split``, ``unknown_fractions``: as in ``pretraining_batch``.
    """
    if not 1 <= batch_size <= len(tokens):
        raise ValueError(f"batch_size must be in 1..{len(tokens)} (the number of cells), got {batch_size}")
    _check_cell_prompt_split(cell_prompt_split)
    _check_unknown_fractions(unknown_fractions)
    unknown_fractions = tuple(unknown_fractions)

    def batches(step: int, generator: torch.Generator | None = None) -> PretrainBatch:
        cells = torch.randperm(len(tokens), generator=generator)[:batch_size]
        return pretraining_batch(tokens, cells, generator, cell_prompt, cell_prompt_split, unknown_fractions)

    return batches
