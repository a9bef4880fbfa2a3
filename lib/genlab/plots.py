"""Pictures of masks, attention weights and dependence maps.

All plots share one layout: rows are queries (the position attending), columns
are keys (the position attended to), so a mask, the attention weights it lets
through and the dependence map it causes can be compared cell by cell.

Every function draws into ``ax`` when given (so plots compose into grids) or
into a new figure, and returns the matplotlib ``Figure``.  Nothing calls
``plt.show()``: notebooks display returned figures; scripts save them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch
import torch

from genlab.attention import MultiHeadAttention
from genlab.masks import causal_mask

__all__ = ["plot_mask", "plot_attention", "plot_encoder_vs_decoder", "plot_dependence"]

MAX_TICKS = 32  # label every position up to this many
KEY_LABEL = "key (attended to)"
QUERY_LABEL = "query (attending)"


def _as_matrix(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Drop leading size-1 dims ((1, 1, T, T) -> (T, T)); move to CPU."""
    matrix = torch.as_tensor(tensor).detach().cpu()
    while matrix.dim() > 2 and matrix.size(0) == 1:
        matrix = matrix[0]
    if matrix.dim() != 2:
        raise ValueError(f"{what} must be a (T, T) matrix, got shape {tuple(tensor.shape)}")
    return matrix


def _new_axes(ax, size=(4.5, 4)):
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=size)


def _heatmap(ax, matrix, cmap, labels=None, xlabel=KEY_LABEL, ylabel=QUERY_LABEL,
             vmin=None, vmax=None, cell_grid=False):
    """Draw a (rows, cols) matrix; ticks at every position when small or labelled.

    ``cell_grid`` outlines the cells (for boolean maps, where a block of equal
    cells would otherwise hide how many positions it spans).
    """
    rows, cols = matrix.shape
    image = ax.imshow(matrix.float().numpy(), cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if labels is not None:
        labels = [str(label) for label in labels]
        if not len(labels) == rows == cols:  # one label per token, on both axes
            raise ValueError(
                f"labels: expected one label per token for a ({rows}, {cols}) matrix, "
                f"got {len(labels)} labels"
            )
        ax.set_xticks(range(cols), labels, rotation=90)
        ax.set_yticks(range(rows), labels)
    elif max(rows, cols) <= MAX_TICKS:
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
    if cell_grid and max(rows, cols) <= MAX_TICKS:
        ax.set_xticks([c - 0.5 for c in range(1, cols)], minor=True)
        ax.set_yticks([r - 0.5 for r in range(1, rows)], minor=True)
        ax.grid(which="minor", color="0.6", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
    return image


def plot_mask(mask, ax=None, title=None, labels=None):
    """Heatmap of a boolean mask (T, T) (or (1, 1, T, T)): allowed cells dark."""
    matrix = _as_matrix(mask, "mask")
    fig, ax = _new_axes(ax)
    _heatmap(ax, matrix.bool(), cmap="Greys", labels=labels, vmin=0, vmax=1, cell_grid=True)
    legend = [Patch(facecolor="black", label="may attend (True)"),
              Patch(facecolor="white", edgecolor="0.5", label="blocked (False)")]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
              fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    return fig


def plot_attention(weights, ax=None, title=None, labels=None, *, batch=0, head=0):
    """Heatmap of attention weights (Tq, Tk) with a colorbar.

    (B, H, Tq, Tk) weights are accepted too; ``batch`` and ``head`` pick one.
    """
    weights = torch.as_tensor(weights).detach()
    if weights.dim() == 4:
        weights = weights[batch, head]  # (B, H, Tq, Tk) -> (Tq, Tk)
    matrix = _as_matrix(weights, "weights (Tq, Tk) or (B, H, Tq, Tk)")
    fig, ax = _new_axes(ax, size=(5, 4))
    image = _heatmap(ax, matrix, cmap="viridis", labels=labels, vmin=0)
    fig.colorbar(image, ax=ax, label="attention weight")
    if title:
        ax.set_title(title)
    return fig


def plot_encoder_vs_decoder(x=None, d_model=16, n_heads=2, T=8, seed=0, labels=None):
    """2x2 figure: full vs causal mask (top) and the weights they give (bottom).

    The weights come from a randomly initialised ``MultiHeadAttention`` (head 0,
    first sequence) on ``x`` (B, T, C) or, when x is None, on random input.
    Seeded locally: the global RNG is left as it was.
    """
    if x is not None:
        x = x if x.dim() == 3 else x.unsqueeze(0)  # (B, T, C)
        T, d_model = x.shape[1], x.shape[2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attention = MultiHeadAttention(d_model, n_heads).eval()
        if x is None:
            x = torch.randn(1, T, d_model)  # (1, T, C)
    attention = attention.to(device=x.device, dtype=x.dtype)

    causal = causal_mask(T, device=x.device)  # (T, T)
    full = torch.ones_like(causal)  # (T, T)
    with torch.no_grad():
        _, full_weights = attention(x, need_weights=True)  # (B, H, T, T)
        _, causal_weights = attention(x, is_causal=True, need_weights=True)

    fig, axes = plt.subplots(2, 2, figsize=(11, 9.5))
    plot_mask(full, ax=axes[0, 0], labels=labels,
              title="encoder (BERT): every token sees every token")
    plot_mask(causal, ax=axes[0, 1], labels=labels,
              title="decoder (GPT): position i sees positions <= i")
    plot_attention(full_weights, ax=axes[1, 0], labels=labels,
                   title="attention weights, no mask (head 0)")
    plot_attention(causal_weights, ax=axes[1, 1], labels=labels,
                   title="attention weights, causal mask (head 0)")
    fig.tight_layout()
    return fig


def plot_dependence(dep, ax=None, title=None):
    """Heatmap of a ``dependence_map`` result: dark cell (i, j) = output i depends on input j."""
    matrix = _as_matrix(dep, "dependence map")
    fig, ax = _new_axes(ax)
    _heatmap(ax, matrix.bool(), cmap="Greys", vmin=0, vmax=1, cell_grid=True,
             xlabel="input token j (perturbed)", ylabel="output position i")
    heading = title or "dependence map"
    ax.set_title(f"{heading}\ndark: output i depends on input j")
    return fig
