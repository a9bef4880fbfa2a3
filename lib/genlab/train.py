"""One small training loop for every model of the course.

::

    from genlab.train import TrainConfig, train

    cfg = TrainConfig(steps=200, lr=3e-3, warmup_steps=20, eval_every=50, seed=0)
    history = train(model, batches, loss_fn, cfg, eval_fn=None)
    history.plot(reference=hmm.next_token_loss(held_out), reference_label="Bayes-optimal")

The caller supplies three functions:

- ``batches(step, generator) -> batch``: any object; tensors inside tuples,
  lists and dicts are moved to ``cfg.device``, and so is any object with a
  ``.to(device)`` method.  ``generator`` is a CPU
  ``torch.Generator`` seeded from ``cfg.seed``: draw every random choice
  from it (``genlab.data.lm_batches`` does).
- ``loss_fn(model, batch) -> scalar loss tensor``.
- ``eval_fn(model) -> dict[str, float]`` (optional): called after every
  ``eval_every`` steps and after the last one, under ``model.eval()`` and
  ``torch.no_grad()``; the model is put back in training mode afterwards.

What happens at each step ``s = 0 .. steps-1``:

1. the learning rate is set to ``lr_at(s, cfg)``: linear warmup over the
   first ``warmup_steps`` steps, then a cosine decay to
   ``min_lr_ratio * lr`` at the last step;
2. loss on ``batches(s, generator)``; a non-finite loss stops training with
   an error naming the step;
3. backward, gradient clipping by global norm (``grad_clip``; the norm
   *before* clipping is recorded), one AdamW update.

Weight decay (``parameter_groups``) applies only to weight matrices: every
parameter with at least 2 dimensions, except embedding tables (parameters of
``nn.Embedding`` modules, including output layers tied to them).  Biases,
LayerNorm weights and embeddings are not decayed: pulling them towards 0 has
no regularising meaning (a LayerNorm gain of 0 switches a feature off; rare
tokens' embeddings would shrink just for being rare).

Reproducibility: the same ``cfg.seed`` gives the same batches and, because
the loop runs with torch's global generator forked and seeded from
``cfg.seed``, the same dropout masks; the caller's global RNG state is
restored afterwards.  Model initialisation is the caller's business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = ["TrainConfig", "History", "lr_at", "parameter_groups", "clip_gradients", "train"]


@dataclass
class TrainConfig:
    """Hyperparameters of ``train``.  ``grad_clip=None`` (or 0) disables clipping;
    ``eval_every=None`` (or 0) evaluates only after the last step."""

    steps: int = 1000
    lr: float = 3e-3
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    eval_every: int | None = None
    seed: int = 0
    device: str = "cpu"
    betas: tuple[float, float] = (0.9, 0.95)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must lie in 0..steps={self.steps}, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of step ``step`` (0-based).

    - warmup, ``step < W``: ``lr * (step + 1) / W``, reaching ``lr`` at step W-1;
    - decay, ``W <= step <= steps-1``: cosine from ``lr`` at step W down to
      ``min_lr_ratio * lr`` at the last step (and after it).
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)  # 0 -> 1
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: ``[{decayed weight matrices}, {everything else, no decay}]``.

    Decayed: trainable parameters with ``ndim >= 2`` that are not the table of
    an ``nn.Embedding`` (a tied output layer shares that table and is not
    decayed either).  Each parameter appears once, even when shared.
    """
    embedding_tables = {id(module.weight) for module in model.modules()
                        if isinstance(module, nn.Embedding)}
    decayed, not_decayed = [], []
    for parameter in model.parameters():  # shared parameters are yielded once
        if not parameter.requires_grad:
            continue
        is_matrix = parameter.ndim >= 2 and id(parameter) not in embedding_tables
        (decayed if is_matrix else not_decayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


def clip_gradients(parameters, max_norm: float | None) -> float:
    """Scale gradients so that their global L2 norm is at most ``max_norm``
    (no clipping when None or 0); returns the norm before clipping."""
    parameters = [p for p in parameters if p.grad is not None]
    if not parameters:
        return 0.0
    limit = max_norm if max_norm else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(parameters, limit))


def _to_device(batch, device: torch.device):
    """Move tensors inside (nested) tuples, lists and dicts, and objects with a
    ``.to(device)`` method (a dataclass batch may define one), to ``device``."""
    if isinstance(batch, torch.Tensor) or callable(getattr(batch, "to", None)):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(value, device) for value in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device):
    """Run with torch's global generator seeded (dropout draws from it: the CPU
    one, and on CUDA the device's one) and give the caller's RNG state back afterwards."""
    if device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    else:
        cuda_devices = []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(cuda_devices[0]):
                torch.cuda.manual_seed(seed)
        yield


@dataclass
class History:
    """What happened during ``train``.

    ``train_loss[i]``, ``lr[i]`` and ``grad_norm[i]`` belong to step
    ``steps[i]`` (0-based): the loss of that step's batch, measured before
    its update.  ``evals`` holds ``(n, metrics)`` pairs, where ``n`` is the
    number of updates done when ``eval_fn`` ran (``eval_every``, ``2 *
    eval_every``, ..., ``steps``).  Both x axes therefore count the updates
    the measured model has received.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain lists and dicts, ready for ``json.dump``."""
        record = dataclasses.asdict(self)
        record["evals"] = [{"step": step, "metrics": dict(metrics)} for step, metrics in self.evals]
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "History":
        evals = [(entry["step"], dict(entry["metrics"])) for entry in record["evals"]]
        return cls(record["steps"], record["train_loss"], record["lr"], record["grad_norm"], evals)

    def eval_metric(self, name: str) -> tuple[list[int], list[float]]:
        """Steps and values of one evaluation metric."""
        pairs = [(step, metrics[name]) for step, metrics in self.evals if name in metrics]
        return [step for step, _ in pairs], [value for _, value in pairs]

    def plot(self, ax=None, reference: float | None = None,
             reference_label: str = "reference", smooth: int | None = None):
        """Training loss (raw, and a running mean over ``smooth`` steps) and
        evaluation metrics against the step; returns the matplotlib Figure.

        Metrics whose name contains ``"loss"`` share the loss axis; others
        (accuracies, ...) go on a second y axis on the right.  ``reference``
        draws a horizontal line, e.g. the Bayes-optimal loss.
        """
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
        else:
            fig = ax.figure
        ax.plot(self.steps, self.train_loss, color="C0", alpha=0.35, linewidth=1, label="train loss")
        window = smooth or max(1, len(self.steps) // 25)
        if 1 < window < len(self.steps):
            running_mean = np.convolve(self.train_loss, np.ones(window) / window, mode="valid")
            ax.plot(self.steps[window - 1:], running_mean, color="C0",
                    label=f"train loss (mean of {window})")
        metric_names = sorted({name for _, metrics in self.evals for name in metrics})
        other_ax = None
        for color_index, name in enumerate(metric_names, start=1):
            target = ax
            if "loss" not in name:
                other_ax = other_ax or ax.twinx()
                target = other_ax
            target.plot(*self.eval_metric(name), marker="o", color=f"C{color_index}", label=f"eval {name}")
        if reference is not None:
            ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=reference_label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        handles, labels = ax.get_legend_handles_labels()
        if other_ax is not None:
            other_ax.set_ylabel("metric")
            more_handles, more_labels = other_ax.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax.legend(handles, labels, loc="upper right", fontsize="small")
        return fig


def _evaluate(model: nn.Module, eval_fn) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            metrics = eval_fn(model)
    finally:
        model.train()
    return {name: float(value) for name, value in metrics.items()}


def train(model: nn.Module, batches, loss_fn, cfg: TrainConfig, eval_fn=None,
          progress: bool = True) -> History:
    """Train ``model`` in place (moved to ``cfg.device``) for ``cfg.steps`` AdamW
    steps; returns the ``History``.  See the module docstring for the contract
    of ``batches``, ``loss_fn`` and ``eval_fn``."""
    device = torch.device(cfg.device)
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    generator = torch.Generator().manual_seed(cfg.seed)  # batches draw from this one
    history = History()
    bar = tqdm(range(cfg.steps), disable=not progress, desc="train", dynamic_ncols=True)
    with bar, _seeded_global_rng(cfg.seed, device):
        for step in bar:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr

            batch = _to_device(batches(step, generator), device)
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                                 f"of shape {tuple(getattr(loss, 'shape', ()))} at step {step}")
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"non-finite training loss ({loss_value}) at step {step}: lower the lr, "
                    "check the inputs and the loss function")

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
            if not math.isfinite(grad_norm):
                raise FloatingPointError(f"non-finite gradient norm ({grad_norm}) at step {step}")
            optimizer.step()

            history.steps.append(step)
            history.train_loss.append(loss_value)
            history.lr.append(lr)
            history.grad_norm.append(grad_norm)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)

            updates_done = step + 1
            is_last = updates_done == cfg.steps
            if eval_fn is not None and (is_last or (cfg.eval_every and updates_done % cfg.eval_every == 0)):
                metrics = _evaluate(model, eval_fn)
                history.evals.append((updates_done, metrics))
                if progress:
                    bar.write(f"step {updates_done}: "
                              + ", ".join(f"{name}={value:.4f}" for name, value in metrics.items()))
    return history
