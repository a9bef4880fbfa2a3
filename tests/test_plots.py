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
