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
   *before* clipping is recorded), one AdamW update;
4. every ``checkpoint_every`` updates (and after the last one), when
   ``checkpoint_path`` is given, a checkpoint (below).

The optimizer, ``cfg.optimizer``:

- ``"torch"`` (the default): ``torch.optim.AdamW`` and
  ``torch.nn.utils.clip_grad_norm_``.  The cached lecture models and every
  number published in the course were trained this way; the default stays so
  that they keep their cache keys and reproduce.
- ``"genlab"``: this module's ``AdamW`` and ``clip_grad_norm``, written from
  the update rules.  ``clip_grad_norm`` equals torch's bit for bit on the
  CPU; ``AdamW`` agrees with torch's to rounding, not bit for bit (it orders
  the arithmetic differently; ``tests/test_train.py`` bounds the gap).  Each
  choice is reproducible, but the two give slightly different models.

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

Resumable training (``train(..., checkpoint_path=..., checkpoint_every=...,
resume=...)``; arguments of ``train`` rather than ``TrainConfig`` fields, since
where a run saves its progress does not change what it computes).  A
checkpoint is one ``torch.save`` file (loaded with ``weights_only=True``)
holding the model's and the optimizer's state, the number of updates done,
the ``History`` so far, the ``TrainConfig``, the model's parameter names,
shapes and dtypes, and the random states the loop draws from: the batch
generator, torch's global CPU generator and, on CUDA, the device's generator
(the loop itself uses neither Python's ``random`` nor numpy's: a ``batches``
that does breaks the bit-for-bit promise).  It is written to a temporary file
in the same folder and renamed over the old one, so a run killed at any
moment leaves the last complete checkpoint readable.  ``resume=True`` loads
it into a freshly built model and continues from the saved step with the same
schedule (the warm-up is not restarted): the result is bit for bit the one
of an uninterrupted run on the same device.  A checkpoint written for another
model or another ``TrainConfig`` (any field but ``device``) is refused with an
error naming what differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = ["TrainConfig", "History", "lr_at", "parameter_groups", "AdamW", "clip_grad_norm",
           "global_grad_norm", "clip_gradients", "CheckpointMismatch", "read_checkpoint", "train"]

OPTIMIZERS = ("torch", "genlab")
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, used by both optimizers
CLIP_EPS = 1e-6  # clip_grad_norm's scale is max_norm / (norm + CLIP_EPS), as torch's


@dataclass
class TrainConfig:
    """Hyperparameters of ``train``.  ``grad_clip=None`` (or 0) disables clipping;
    ``eval_every=None`` (or 0) evaluates only after the last step;
    ``optimizer`` is ``"torch"`` (default) or ``"genlab"`` (module docstring).

    ``optimizer`` enters the checkpoint cache key of ``genlab.checkpoints``
    only when it is not the default, so the models cached before the field
    existed keep their keys."""

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
    # the metadata key is genlab.checkpoints.OMITTED_FROM_KEY_WHEN_DEFAULT
    optimizer: str = field(default="torch", metadata={"omitted_from_key_when_default": True})

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must lie in 0..steps={self.steps}, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be None, 0 (no clipping) or > 0, got {self.grad_clip}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check_adamw_hyperparameters(
            {"lr": self.lr, "betas": self.betas, "eps": ADAM_EPS, "weight_decay": self.weight_decay},
            "TrainConfig")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of step ``step`` (0-based).

    - warmup, ``step < W``: ``lr * (step + 1) / W``, reaching ``lr`` at step W-1;
    - decay, ``W <= step <= steps-1``: cosine from ``lr`` at step W down to
      ``min_lr_ratio * lr`` at the last step (and after it).

    Conventions: no step runs at lr 0 (the first warm-up step gets ``lr / W``;
    a zero-lr step would spend a batch on the moments alone); the peak is held
    for two steps, the last warm-up step W-1 and the first cosine step W (each
    up to one rounding); the last step, ``steps - 1``, sits exactly on the floor.  With ``W == steps``
    there is no decay and the last step runs at the peak.
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


def _check_adamw_hyperparameters(group: dict, where: str) -> None:
    """Raise a ValueError naming ``where`` for an lr, betas, eps or weight decay AdamW cannot use."""
    lr, betas, eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not (isinstance(lr, (int, float)) and 0.0 <= lr < math.inf):
        raise ValueError(f"{where}: lr must be a finite number >= 0, got {lr!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"{where}: betas must be two numbers in [0, 1), got {betas!r}")
    if not (isinstance(eps, (int, float)) and 0.0 < eps < math.inf):
        raise ValueError(f"{where}: eps must be a finite number > 0, got {eps!r}")
    if not (isinstance(weight_decay, (int, float)) and 0.0 <= weight_decay < math.inf):
        raise ValueError(f"{where}: weight_decay must be a finite number >= 0, got {weight_decay!r}")


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), from the update rule.

    For each parameter ``p`` with gradient ``g``, at its ``t``-th update (t = 1, 2, ...)::

        p <- p * (1 - lr * weight_decay)                  # decoupled decay, scaled by lr
        m <- beta1 * m + (1 - beta1) * g                  # first moment
        v <- beta2 * v + (1 - beta2) * g * g              # second moment
        p <- p - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

    as ``torch.optim.AdamW`` does it (the decay uses the lr of the step, eps is
    added outside the square root, ``m`` and ``v`` start at zero).  Param groups
    may override every hyperparameter; change ``group["lr"]`` between steps to
    follow a schedule.  ``state_dict()`` / ``load_state_dict()`` are
    ``torch.optim.Optimizer``'s, with per-parameter state ``step`` (an int),
    ``exp_avg`` (m) and ``exp_avg_sq`` (v), the names torch uses.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = ADAM_EPS, weight_decay: float = 1e-2):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        _check_adamw_hyperparameters(defaults, "AdamW")
        defaults["betas"] = tuple(betas)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _check_adamw_hyperparameters(self.param_groups[-1], f"AdamW param group {len(self.param_groups) - 1}")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            _check_adamw_hyperparameters(group, f"AdamW param group {index}")  # lr may change per step
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for parameter in group["params"]:
                grad = parameter.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("genlab AdamW does not support sparse gradients")
                state = self.state[parameter]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1  # int(): also reads torch's tensor step
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]

                parameter.mul_(1.0 - lr * weight_decay)
                m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denominator = (v / (1.0 - beta2 ** t)).sqrt_().add_(eps)  # sqrt(v_hat) + eps
                parameter.addcdiv_(m, denominator, value=-lr / (1.0 - beta1 ** t))  # lr * m_hat / ...
        return loss


def _with_grad(parameters) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def global_grad_norm(parameters) -> torch.Tensor:
    """L2 norm of all gradients taken as one vector (parameters without a gradient
    are skipped): a 0-dim tensor on the first gradient's device, in the widest
    dtype among the gradients; 0.0 when no parameter has a gradient."""
    grads = [p.grad.detach() for p in _with_grad(parameters)]
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(grad, 2) for grad in grads]  # ||g|| = ||(||g_1||, ..., ||g_n||)||
    dtype = functools.reduce(torch.promote_types, (norm.dtype for norm in norms))
    return torch.linalg.vector_norm(torch.stack([norm.to(grads[0].device, dtype) for norm in norms]), 2)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Scale all gradients by one factor so that their global L2 norm is at most
    ``max_norm``; returns the norm before clipping (a 0-dim tensor).

    The factor is ``min(1, max_norm / (norm + 1e-6))``, as in
    ``torch.nn.utils.clip_grad_norm_``: a norm at or just below ``max_norm``
    is scaled by a hair less than 1.  A non-finite norm is returned, not
    raised: the caller decides (``train`` stops with an error)."""
    if not (isinstance(max_norm, (int, float)) and 0.0 < max_norm < math.inf):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
    parameters = _with_grad(parameters)
    norm = global_grad_norm(parameters)
    scale = torch.clamp(max_norm / (norm + CLIP_EPS), max=1.0)
    for parameter in parameters:
        parameter.grad.detach().mul_(scale.to(parameter.grad.device))
    return norm


def clip_gradients(parameters, max_norm: float | None, implementation: str = "torch") -> float:
    """Clip gradients by their global norm as ``train`` does: with torch's
    ``clip_grad_norm_`` or with ``clip_grad_norm`` (``implementation``
    ``"torch"`` or ``"genlab"``); no clipping when ``max_norm`` is None or 0.
    Returns the norm before clipping as a float."""
    if implementation not in OPTIMIZERS:
        raise ValueError(f"implementation must be one of {OPTIMIZERS}, got {implementation!r}")
    parameters = _with_grad(parameters)
    if not parameters:
        return 0.0
    if implementation == "genlab":
        return float(clip_grad_norm(parameters, max_norm) if max_norm else global_grad_norm(parameters))
    limit = max_norm if max_norm else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(parameters, limit))


def _new_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    optimizer_class = AdamW if cfg.optimizer == "genlab" else torch.optim.AdamW
    return optimizer_class(groups, lr=cfg.lr, betas=cfg.betas, eps=ADAM_EPS, weight_decay=cfg.weight_decay)


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


CHECKPOINT_FORMAT = "genlab.train checkpoint, version 1"
NOT_CHECKED_ON_RESUME = frozenset({"device"})  # a run may resume elsewhere (then not bit for bit)


class CheckpointMismatch(ValueError):
    """The checkpoint was written by another model or another ``TrainConfig``."""


def _config_record(cfg: TrainConfig) -> dict:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(cfg).items()}


def _model_signature(model: nn.Module) -> dict[str, list]:
    return {name: [list(tensor.shape), str(tensor.dtype)] for name, tensor in model.state_dict().items()}


def _rng_states(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    states = {"batches": generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device):
    generator.set_state(states["batches"])
    torch.set_rng_state(states["torch_cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _save_checkpoint(path: Path, *, updates_done: int, cfg: TrainConfig, model: nn.Module,
                     optimizer: torch.optim.Optimizer, history: History, generator: torch.Generator,
                     device: torch.device) -> None:
    """Write the checkpoint atomically: a temporary file in the same folder, renamed over ``path``."""
    from genlab.checkpoints import _write_atomically  # here: genlab.checkpoints imports this module

    record = {
        "format": CHECKPOINT_FORMAT,
        "step": updates_done,  # the next step to run
        "config": _config_record(cfg),
        "model_signature": _model_signature(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history.to_dict(),
        "rng": _rng_states(generator, device),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, lambda temporary: torch.save(record, temporary))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The contents of a checkpoint written by ``train`` (tensors on the CPU):
    ``step`` (updates done), ``config``, ``model_signature``, ``model``,
    ``optimizer``, ``history`` (``History.to_dict()``) and ``rng``."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path} is not a genlab.train checkpoint ({CHECKPOINT_FORMAT!r}); found {found!r}")
    return record


def _mismatches(record: dict, cfg: TrainConfig, model: nn.Module) -> list[str]:
    """What differs between the run that wrote ``record`` and this one, in words."""
    differences = []
    saved_config, config = record["config"], _config_record(cfg)
    for name in sorted((saved_config.keys() | config.keys()) - NOT_CHECKED_ON_RESUME):
        if saved_config.get(name) != config.get(name):
            differences.append(f"TrainConfig.{name} is {saved_config.get(name)!r} in the checkpoint, "
                               f"{config.get(name)!r} now")
    saved_model, signature = record["model_signature"], _model_signature(model)
    for name in sorted(saved_model.keys() | signature.keys()):
        if name not in signature:
            differences.append(f"model entry {name!r} is in the checkpoint, not in this model")
        elif name not in saved_model:
            differences.append(f"model entry {name!r} is in this model, not in the checkpoint")
        elif saved_model[name] != signature[name]:
            (shape, dtype), (saved_shape, saved_dtype) = signature[name], saved_model[name]
            differences.append(f"model entry {name!r} is {tuple(saved_shape)} {saved_dtype} in the "
                               f"checkpoint, {tuple(shape)} {dtype} in this model")
    return differences


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
            generator: torch.Generator, device: torch.device) -> tuple[int, History]:
    """Load the checkpoint into model, optimizer and RNGs; returns (updates done, History so far)."""
    if not path.exists():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}; "
                                "pass resume=False to train from step 0")
    record = read_checkpoint(path)
    differences = _mismatches(record, cfg, model)
    if differences:
        raise CheckpointMismatch(f"checkpoint {path} was written by a different run:\n  "
                                 + "\n  ".join(differences))
    model.load_state_dict(record["model"])  # copies onto the model's device
    optimizer.load_state_dict(record["optimizer"])  # moves the moments next to their parameters
    _set_rng_states(record["rng"], generator, device)
    return record["step"], History.from_dict(record["history"])


def _update(model: nn.Module, batch, loss_fn, optimizer: torch.optim.Optimizer, grad_clip: float | None,
            clip_implementation: str, step: int) -> tuple[float, float]:
    """Loss, backward, clipping, one optimizer step; returns (loss, gradient norm before clipping)."""
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
    grad_norm = clip_gradients(model.parameters(), grad_clip, implementation=clip_implementation)
    if not math.isfinite(grad_norm):
        raise FloatingPointError(f"non-finite gradient norm ({grad_norm}) at step {step}")
    optimizer.step()
    return loss_value, grad_norm


def _is_due(updates_done: int, every: int | None, is_last: bool) -> bool:
    """Evaluations and checkpoints happen every ``every`` updates (None or 0: never) and after the last."""
    return is_last or bool(every and updates_done % every == 0)


def train(model: nn.Module, batches, loss_fn, cfg: TrainConfig, eval_fn=None,
          progress: bool = True, checkpoint_path: str | os.PathLike | None = None,
          checkpoint_every: int | None = None, resume: bool = False) -> History:
    """Train ``model`` in place (moved to ``cfg.device``) for ``cfg.steps`` AdamW
    steps; returns the ``History``.  See the module docstring for the contract
    of ``batches``, ``loss_fn`` and ``eval_fn``.

    ``checkpoint_path``: where to keep a checkpoint, rewritten every
    ``checkpoint_every`` updates (None: only after the last step) and after
    the last one.  ``resume=True``: continue from that checkpoint (it must
    exist, and come from the same model and TrainConfig); the returned History
    then covers all steps, those before the checkpoint included.  Without
    ``resume`` an existing checkpoint is overwritten by the new run's first one.
    """
    if checkpoint_path is None and (checkpoint_every is not None or resume):
        raise ValueError("checkpoint_every and resume need a checkpoint_path")
    if checkpoint_every is not None and not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every must be None or an int >= 1, got {checkpoint_every!r}")
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    device = torch.device(cfg.device)
    model.to(device)
    model.train()
    optimizer = _new_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)  # batches draw from this one
    history, start = History(), 0
    with _seeded_global_rng(cfg.seed, device):
        if resume:
            start, history = _resume(path, model, optimizer, cfg, generator, device)
        with tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
                  desc="train", dynamic_ncols=True) as bar:
            for step in bar:
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                loss_value, grad_norm = _update(model, _to_device(batches(step, generator), device),
                                                loss_fn, optimizer, cfg.grad_clip, cfg.optimizer, step)

                history.steps.append(step)
                history.train_loss.append(loss_value)
                history.lr.append(lr)
                history.grad_norm.append(grad_norm)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)

                updates_done = step + 1
                is_last = updates_done == cfg.steps
                if eval_fn is not None and _is_due(updates_done, cfg.eval_every, is_last):
                    metrics = _evaluate(model, eval_fn)
                    history.evals.append((updates_done, metrics))
                    if progress:
                        bar.write(f"step {updates_done}: "
                                  + ", ".join(f"{name}={value:.4f}" for name, value in metrics.items()))
                if path is not None and _is_due(updates_done, checkpoint_every, is_last):
                    _save_checkpoint(path, updates_done=updates_done, cfg=cfg, model=model,
                                     optimizer=optimizer, history=history, generator=generator, device=device)
    return history
