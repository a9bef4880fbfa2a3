"""Ragged batches: padding flags, and left-packing the selected genes of each cell.

Cells have different numbers of genes, and a split into known and unknown genes
gives each cell its own counts: rows are packed to the left and padded, with
an ``is_real`` flag (False at padding) beside them.  Part of ``genlab.scgpt``.
"""

from __future__ import annotations

import torch

__all__: list[str] = []  # private helpers of the other modules


def _all_real(is_real: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
    """``is_real`` as a bool tensor; None means no padding."""
    if is_real is None:
        return torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    if is_real.shape != ids.shape:
        raise ValueError(f"is_real {tuple(is_real.shape)} must match the gene ids {tuple(ids.shape)}")
    return is_real.to(device=ids.device, dtype=torch.bool)


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
