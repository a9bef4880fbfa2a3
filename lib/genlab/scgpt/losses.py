"""scGPT's pretraining losses: masked MSE (GEP, GEPC/MVC, cell prompt) and Gaussian NLL.

Only unknown genes count.  ``scgpt_losses`` returns every term,
``scgpt_loss`` the total for ``genlab.train.train``.  Part of ``genlab.scgpt``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.scgpt.model import ScGPT
from genlab.scgpt.pretraining import MaskedCells, PretrainBatch

__all__ = [
    "masked_mse",
    "gaussian_nll",
    "ScGPTLosses",
    "scgpt_losses",
    "scgpt_loss",
]


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
    cell_prompt: torch.Tensor  # masked MSE of generation from the (detached) cell embedding in <cls>


def scgpt_losses(model: ScGPT, batch: PretrainBatch, confidence_weight: float = 0.1) -> ScGPTLosses:
    """All pretraining losses of a batch; only unknown positions count.

    GEP and GEPC are masked MSEs on values divided by ``value_scale`` (so
    they are fractions of the bin range squared).  The confidence NLL uses the
    detached GEP mean, so it trains the confidence head (and, weighted by
    ``confidence_weight``, the shared layers) without pulling the mean.
    The cell-prompt pass (if the batch has one) runs the model again on
    ``batch.cell_prompt`` (``pretraining_batch``: a split of its own, or the
    GEP split) with the GEP pass's cell embedding in the <cls> slot and adds
    its GEP MSE and NLL (the NLLs of the two passes averaged).  The embedding is **detached**, as
    in upstream's ``examples/pretrain.py``: the cell-prompt loss trains the
    model to generate *from* an embedding, through the second pass's weights,
    and does not push the first pass to make embeddings easier to generate
    from.  All terms have weight 1 except the NLL (``confidence_weight``).
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
        _, prompt_mse, prompt_nll = pass_losses(batch.cell_prompt, out.cell_embedding.detach())
        nll = (nll + prompt_nll) / 2
    total = gep + gepc + prompt_mse + confidence_weight * nll
    return ScGPTLosses(total, gep, gepc, nll, prompt_mse)


def scgpt_loss(model: ScGPT, batch: PretrainBatch) -> torch.Tensor:
    """``loss_fn(model, batch)`` for ``genlab.train.train``: the total pretraining loss."""
    return scgpt_losses(model, batch).total
