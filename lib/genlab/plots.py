"""Pictures of masks, attention weights and dependence maps.

All plots share one layout: rows are queries (the position attending), columns
are keys (the position attended to), so a mask, the attention weights it lets
through and the dependence map it causes can be compared cell by cell.

Every function draws into ``ax`` when given (so plots compose into grids) or
into a new figure, and returns the matplotlib ``Figure``.  Nothing calls
``plt.show()``: notebooks display returned figures; scripts save them.

A legend sits just below its axes' tick labels and axis label, however long
the token labels are (``_legend_below``); it stays ``ax.get_legend()``, so a
caller can still move it with ``set_bbox_to_anchor`` or ``remove()`` it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch, PathPatch
from matplotlib.path import Path
from matplotlib.transforms import ScaledTranslation
import torch

from genlab.attention import MultiHeadAttention
from genlab.masks import causal_mask

__all__ = ["plot_mask", "plot_attention", "plot_encoder_vs_decoder", "plot_dependence"]

MAX_TICKS = 32  # label every position up to this many
KEY_LABEL = "key (attended to)"
QUERY_LABEL = "query (attending)"
LEGEND_GAP_POINTS = 4  # between the x-axis label and a legend below it
# attention weights: a sequential colormap for the weights, and zero weights (blocked
# cells) drawn apart from it, white with grey hatching, so that a weight of exactly 0
# never looks like a small one
WEIGHTS_CMAP = "viridis"
ZERO_STYLE = dict(facecolor="white", edgecolor="0.55", hatch="////", linewidth=0)


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


def _renderer(fig):
    """The figure's renderer, to measure text before the figure is drawn."""
    get = getattr(fig.canvas, "get_renderer", None)
    return get() if get is not None else fig._get_renderer()


def _legend_below(ax, handles):
    """A legend centred under ``ax``, just below its tick labels and x-axis label.

    How far below is measured now, in points (rotated token labels hang lower
    than numbers), so the legend stays attached however the axes are resized
    later (``tight_layout``, ``subplots_adjust``).
    """
    fig = ax.figure
    renderer = _renderer(fig)
    axis = ax.xaxis.get_tightbbox(renderer)  # tick labels and x label; None when hidden
    below = ax.get_window_extent(renderer).y0 - axis.y0 if axis is not None else 0.0
    drop = max(below, 0) / fig.dpi + LEGEND_GAP_POINTS / 72  # inches
    anchor = ax.transAxes + ScaledTranslation(0, -drop, fig.dpi_scale_trans)
    return ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0),
                     bbox_transform=anchor, ncol=2, fontsize="small", frameon=False,
                     borderaxespad=0, handlelength=1.5)


def _cells_path(cells: torch.Tensor) -> Path:
    """One compound path of the unit squares of ``cells`` (True), in image coordinates."""
    vertices, codes = [], []
    for r, c in cells.nonzero().tolist():
        vertices += [(c - 0.5, r - 0.5), (c + 0.5, r - 0.5), (c + 0.5, r + 0.5),
                     (c - 0.5, r + 0.5), (c - 0.5, r - 0.5)]
        codes += [Path.MOVETO] + [Path.LINETO] * 3 + [Path.CLOSEPOLY]
    return Path(vertices, codes)


def plot_mask(mask, ax=None, title=None, labels=None):
    """Heatmap of a boolean mask (T, T) (or (1, 1, T, T)): allowed cells dark.

    The legend (``ax.get_legend()``) sits just below the axis labels.
    """
    matrix = _as_matrix(mask, "mask")
    fig, ax = _new_axes(ax)
    _heatmap(ax, matrix.bool(), cmap="Greys", labels=labels, vmin=0, vmax=1, cell_grid=True)
    legend = [Patch(facecolor="black", label="may attend (True)"),
              Patch(facecolor="white", edgecolor="0.5", label="blocked (False)")]
    _legend_below(ax, legend)
    if title:
        ax.set_title(title)
    return fig


def plot_attention(weights, ax=None, title=None, labels=None, *, batch=0, head=0, mask=None):
    """Heatmap of attention weights (Tq, Tk) with a colorbar.

    (B, H, Tq, Tk) weights are accepted too; ``batch`` and ``head`` pick one.

    Blocked cells are drawn apart from the colormap, white with grey hatching
    (``ZERO_STYLE``), and named in a legend below the axes: the cells where
    ``mask`` (True = may attend, any shape that broadcasts to the weights) is
    False, or without a mask every cell whose weight is exactly 0.  A small
    weight keeps its colour, so "exactly 0" and "almost 0" never look alike.
    The image keeps every weight (``ax.images[0].get_array()``); the hatching
    is a patch drawn over it.
    """
    weights = torch.as_tensor(weights).detach()
    if weights.dim() == 4:
        weights = weights[batch, head]  # (B, H, Tq, Tk) -> (Tq, Tk)
    matrix = _as_matrix(weights, "weights (Tq, Tk) or (B, H, Tq, Tk)")
    if mask is None:
        blocked = matrix == 0
    else:
        mask = torch.as_tensor(mask).detach().cpu().bool()
        if mask.dim() == 4:  # (B or 1, H or 1, Tq or 1, Tk): the same batch and head
            mask = mask[min(batch, mask.size(0) - 1), min(head, mask.size(1) - 1)]
        while mask.dim() > 2 and mask.size(0) == 1:
            mask = mask[0]
        try:
            blocked = ~torch.broadcast_to(mask, matrix.shape)
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the "
                             f"weights' {tuple(matrix.shape)}") from None
    fig, ax = _new_axes(ax, size=(5, 4))
    image = _heatmap(ax, matrix, cmap=WEIGHTS_CMAP, labels=labels, vmin=0)
    fig.colorbar(image, ax=ax, label="attention weight")
    if blocked.any():
        ax.add_patch(PathPatch(_cells_path(blocked), **ZERO_STYLE))
        name = "weight exactly 0" if mask is None else "blocked: weight exactly 0"
        _legend_below(ax, [Patch(**{**ZERO_STYLE, "linewidth": 0.5}, label=name)])
    if title:
        ax.set_title(title)
    return fig


def plot_encoder_vs_decoder(x=None, d_model=16, n_heads=2, T=8, seed=0, labels=None):
    """2x2 figure: full vs causal mask (top) and the weights they give (bottom).

    Blocked cells of the weights are hatched: their weight is exactly 0.

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
    plot_attention(full_weights, ax=axes[1, 0], labels=labels, mask=full,
                   title="attention weights, no mask (head 0)")
    plot_attention(causal_weights, ax=axes[1, 1], labels=labels, mask=causal,
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
