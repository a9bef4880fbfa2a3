"""genlab.plots: every function returns a Figure with the expected axes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from genlab.attention import MultiHeadAttention, dependence_map  # noqa: E402
from genlab.masks import causal_mask, known_unknown_mask, padding_mask  # noqa: E402
from genlab.plots import (  # noqa: E402
    plot_attention,
    plot_dependence,
    plot_encoder_vs_decoder,
    plot_mask,
)


@pytest.fixture
def figure_closer():
    """Close every figure a test opened, even when it fails."""
    figures = []
    yield figures.append
    for fig in figures:
        plt.close(fig)


def check_figure(fig, n_axes, close):
    close(fig)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_axes


def test_plot_mask(figure_closer):
    fig = plot_mask(causal_mask(5), title="causal")
    check_figure(fig, 1, figure_closer)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "key (attended to)"
    assert ax.get_ylabel() == "query (attending)"
    assert ax.get_title() == "causal"
    assert len(ax.get_xticks()) == 5 and len(ax.get_yticks()) == 5
    image = ax.images[0].get_array()
    assert image[4, 0] == 1 and image[0, 4] == 0  # allowed = 1 = dark in "Greys"


def test_plot_mask_squeezes_padding_shape_and_takes_labels(figure_closer):
    mask = known_unknown_mask(2, 2)[None, None]  # (1, 1, 4, 4)
    labels = ["<cls>", "CD3E", "MS4A1", "LYZ"]
    fig = plot_mask(mask, labels=labels)
    check_figure(fig, 1, figure_closer)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == labels


def test_plot_mask_draws_into_given_axes_and_skips_ticks_for_long_sequences(figure_closer):
    fig, (left, right) = plt.subplots(1, 2)
    figure_closer(fig)
    assert plot_mask(causal_mask(40), ax=left) is fig
    assert len(left.get_xticks()) < 40
    assert plot_mask(padding_mask(torch.ones(1, 3))[0], ax=right) is fig
    check_figure(fig, 2, figure_closer)


def test_plot_mask_rejects_bad_input(figure_closer):
    with pytest.raises(ValueError, match="mask"):
        plot_mask(torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        plot_mask(causal_mask(3), labels=["a", "b"])
    plt.close("all")


def test_plot_attention_selects_batch_and_head(figure_closer):
    weights = torch.softmax(torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), -1)
    fig = plot_attention(weights, batch=1, head=2, title="head 2")
    check_figure(fig, 2, figure_closer)  # heatmap + colorbar
    shown = torch.as_tensor(fig.axes[0].images[0].get_array().data)
    torch.testing.assert_close(shown, weights[1, 2])
    check_figure(plot_attention(weights[0, 0].requires_grad_()), 2, figure_closer)


def test_plot_encoder_vs_decoder(figure_closer):
    state = torch.get_rng_state()
    fig = plot_encoder_vs_decoder(labels=list("abcdefgh"))
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    check_figure(fig, 6, figure_closer)  # 2x2 heatmaps + 2 colorbars
    titles = [ax.get_title() for ax in fig.axes]
    assert "encoder (BERT): every token sees every token" in titles
    assert "decoder (GPT): position i sees positions <= i" in titles
    causal_weights = fig.axes[3].images[0].get_array()
    assert (causal_weights[~causal_mask(8).numpy()] == 0).all()


def test_plot_encoder_vs_decoder_is_seeded_and_takes_input(figure_closer):
    first = plot_encoder_vs_decoder(seed=3)
    second = plot_encoder_vs_decoder(seed=3)
    for fig in (first, second):
        figure_closer(fig)
    weights = [fig.axes[2].images[0].get_array() for fig in (first, second)]
    assert (weights[0] == weights[1]).all()
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    check_figure(plot_encoder_vs_decoder(x=x, n_heads=2), 6, figure_closer)


def test_plot_dependence(figure_closer):
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 6, 8)
    dep = dependence_map(lambda inputs: attention(inputs, is_causal=True), x)
    fig = plot_dependence(dep, title="causal attention")
    check_figure(fig, 1, figure_closer)
    assert "output i depends on input j" in fig.axes[0].get_title()
    assert fig.axes[0].get_title().startswith("causal attention")


# ----------------------------------------------------------------------------
# legends attached to their axes, zero weights drawn apart


LONG_LABELS = ["[CLS]", "a", "[MASK]", "sat", "on", "the", "[PAD]"]


def _extents(fig):
    """Draw the figure; return its renderer."""
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _gap_below_axis(ax, renderer):
    """Pixels from the bottom of ax's tick labels and x label to the top of its legend."""
    return ax.xaxis.get_tightbbox(renderer).y0 - ax.get_legend().get_window_extent(renderer).y1


@pytest.mark.parametrize("labels", [None, LONG_LABELS], ids=["numbers", "rotated tokens"])
def test_mask_legend_sits_just_below_the_axis_labels(figure_closer, labels):
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    figure_closer(fig)
    plot_mask(causal_mask(7), ax=axes[0], labels=labels, title="causal")
    plot_mask(torch.ones(7, 7, dtype=torch.bool), ax=axes[1], labels=labels, title="full")
    fig.tight_layout()
    for size in ((10, 5), (7, 4)):  # resized and laid out again: still attached
        fig.set_size_inches(*size)
        fig.tight_layout()
        renderer = _extents(fig)
        for ax in axes:
            gap = _gap_below_axis(ax, renderer)
            assert 0 <= gap <= 12 * fig.dpi / 72, f"legend {gap:.1f} px below the x label"
            legend = ax.get_legend().get_window_extent(renderer)
            assert ax.bbox.x0 <= (legend.x0 + legend.x1) / 2 <= ax.bbox.x1  # centred under it
            assert fig.bbox.contains(legend.x0, legend.y0)  # and inside the figure


def test_mask_legend_can_still_be_moved_and_removed(figure_closer):
    """Lecture 4 moves the legend with set_bbox_to_anchor and removes another one."""
    fig, (left, right) = plt.subplots(1, 2)
    figure_closer(fig)
    plot_mask(causal_mask(4), ax=left, labels=list("abcd"))
    plot_mask(causal_mask(4), ax=right)
    left.get_legend().set_bbox_to_anchor((0.5, -0.36))
    anchor = left.get_legend().get_bbox_to_anchor()
    expected = left.transAxes.transform((0.5, -0.36))
    assert anchor.x0 == pytest.approx(expected[0]) and anchor.y0 == pytest.approx(expected[1])
    right.get_legend().remove()
    assert right.get_legend() is None
    _extents(fig)


def _hatched_cells(ax, shape):
    """Boolean (rows, cols): the cells whose centre lies inside a hatched patch."""
    hatched = [patch for patch in ax.patches if patch.get_hatch()]
    cells = torch.zeros(shape, dtype=torch.bool)
    for r in range(shape[0]):
        for c in range(shape[1]):
            cells[r, c] = any(patch.get_path().contains_point((c, r)) for patch in hatched)
    return cells


def test_plot_attention_draws_exact_zeros_apart_from_small_weights(figure_closer):
    weights = torch.tensor([[1.0, 0.0, 0.0],
                            [1e-6, 1 - 1e-6, 0.0],  # a tiny weight is not a zero
                            [0.2, 0.3, 0.5]])
    fig = plot_attention(weights, title="causal")
    check_figure(fig, 2, figure_closer)  # heatmap + colorbar, as before
    ax = fig.axes[0]
    assert torch.equal(_hatched_cells(ax, (3, 3)), weights == 0)
    assert torch.equal(torch.as_tensor(ax.images[0].get_array()), weights)  # every weight kept
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["weight exactly 0"]
    assert 0 <= _gap_below_axis(ax, _extents(fig)) <= 12 * fig.dpi / 72  # legend attached


def test_plot_attention_takes_a_mask_and_hatches_nothing_without_zeros(figure_closer):
    generator = torch.Generator().manual_seed(0)
    dense = torch.softmax(torch.randn(2, 1, 5, 5, generator=generator), -1)
    fig = plot_attention(dense)
    check_figure(fig, 2, figure_closer)
    assert not _hatched_cells(fig.axes[0], (5, 5)).any() and fig.axes[0].get_legend() is None

    pad = padding_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))  # (B, 1, 1, T)
    weights = torch.softmax(torch.randn(2, 1, 5, 5, generator=generator)
                            .masked_fill(~pad, float("-inf")), -1)
    fig = plot_attention(weights, batch=1, mask=pad)
    check_figure(fig, 2, figure_closer)
    assert torch.equal(_hatched_cells(fig.axes[0], (5, 5)), ~pad[1, 0].expand(5, 5))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == \
        ["blocked: weight exactly 0"]
    with pytest.raises(ValueError, match="broadcast"):
        plot_attention(weights[0, 0], mask=torch.ones(4, 4, dtype=torch.bool))
    plt.close("all")


def test_encoder_vs_decoder_legends_stay_clear_of_the_panels_below(figure_closer):
    fig = plot_encoder_vs_decoder(labels=["the", "cat", "sat", "on", "the", "mat", "."], T=7)
    figure_closer(fig)
    renderer = _extents(fig)
    top, bottom = fig.axes[:2], fig.axes[2:4]
    hatched = _hatched_cells(fig.axes[3], (7, 7))
    assert torch.equal(hatched, ~causal_mask(7)) and not _hatched_cells(fig.axes[2], (7, 7)).any()
    for upper, lower in zip(top, bottom):
        legend = upper.get_legend().get_window_extent(renderer)
        assert 0 <= _gap_below_axis(upper, renderer) <= 12 * fig.dpi / 72
        assert not legend.overlaps(lower.title.get_window_extent(renderer))
        assert not legend.overlaps(lower.get_window_extent(renderer))
