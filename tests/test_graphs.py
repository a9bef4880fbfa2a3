"""genlab.graphs: tracing, shapes, FLOPs, isomorphism and drawing of model diagrams."""

import dataclasses
import itertools
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path
from matplotlib.transforms import Bbox

from genlab import graphs
from genlab.attention import MultiHeadAttention
from genlab.decoder import Block, GPTConfig

MATRIX_PRODUCTS = {"Linear", "matmul"}


class PreLNBlock(nn.Module):
    """A minimal pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    Attention is genlab's explicit-matmul path (backend "scratch"), so that
    QK^T and AV are matrix products the FLOP counter sees.
    """

    def __init__(self, d_model: int, n_heads: int, activation=nn.GELU, backend: str = "scratch"):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, backend=backend)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), activation(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        x = x + self.attn(self.ln_attn(x))  # (B, T, d)
        return x + self.mlp(self.ln_mlp(x))  # (B, T, d)


def make_block(d_model=16, n_heads=2, seed=0, **kwargs) -> PreLNBlock:
    """A block whose weights come from ``seed`` (not from the global RNG)."""
    block = PreLNBlock(d_model, n_heads, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return block


def example_input(B=2, T=5, d=16, seed=0):
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def block_graph():
    return graphs.trace(make_block(), example_input())


def analytic_matmul_flops(B: int, T: int, d: int) -> int:
    """Matrix-product FLOPs of one pre-LN block on (B, T, d), counting 2mkn per (m,k)@(k,n).

    Per token, the Q, K and V projections are three (d, d) products: 3 * 2d^2
    = 6d^2; the output projection 2d^2; the MLP d -> 4d -> d 2*(4d^2) * 2 =
    16d^2: 24 B T d^2 in all.  Attention proper: the scores QK^T are, summed
    over heads, (T, d/H) @ (d/H, T) per head = 2 T^2 d per batch element, and
    the weighted values AV as many: 4 B T^2 d.  Bias additions, softmax,
    scaling, LayerNorm, GELU and the residual adds are not matrix products
    (and FlopCounterMode does not count them).
    """
    return 24 * B * T * d * d + 4 * B * T * T * d


# ----------------------------------------------------------------------------
# FLOPs


@pytest.mark.parametrize("B, T, d, H", [(1, 4, 8, 2), (2, 5, 16, 2), (3, 7, 32, 4)])
def test_matmul_flops_equal_the_analytic_count(B, T, d, H):
    graph = graphs.trace(make_block(d, H), example_input(B, T, d))
    expected = analytic_matmul_flops(B, T, d)
    # summed over the nodes that are matrix products (Linear layers and matmuls) ...
    product_flops = sum(node.flops for node in graph.nodes if node.op in MATRIX_PRODUCTS)
    assert product_flops == expected
    # ... which is also the sum over matrix-product kernels, and all the counter counts
    assert graph.matmul_flops() == expected
    assert graph.total_flops() == expected
    assert graph.flops_by_op() == {"Linear": 24 * B * T * d * d, "matmul": 4 * B * T * T * d}


def test_bias_softmax_and_norms_count_no_flops(block_graph):
    B, T, d = 2, 5, 16
    for node in block_graph.nodes:
        if node.op == "Linear":  # 2 * (B*T) * d_in * d_out: the bias add is not counted
            d_in_out = {(d, d), (d, 4 * d), (4 * d, d)}
            assert any(node.flops == 2 * B * T * a * b for a, b in d_in_out), node
            assert set(node.flops_by_kernel) == {"aten.addmm"}
        elif node.op == "matmul":
            assert node.flops == 2 * B * T * T * d
        else:  # softmax, div, LayerNorm, GELU, add, reshapes, inputs
            assert node.flops == 0, node


def test_fused_sdpa_counts_zero_flops_on_cpu():
    """The documented caveat: torch's fused attention kernel on the CPU has no FLOP formula."""
    B, T, d = 2, 5, 16
    graph = graphs.trace(make_block(d, backend="torch"), example_input(B, T, d))
    assert graph.matmul_flops() == 24 * B * T * d * d  # only the projections and the MLP
    assert "scaled_dot_product_attention" in graph.op_counts()


# ----------------------------------------------------------------------------
# tracing


def test_every_node_carries_its_output_shape(block_graph):
    B, T, d, H = 2, 5, 16, 2
    assert block_graph.method == "fx"
    assert 20 <= len(block_graph) <= 60
    for node in block_graph.nodes:
        assert node.shape is not None and node.dtype == torch.float32, node
    by_op = {node.op: node for node in block_graph.nodes}
    assert by_op["input"].shape == by_op["output"].shape == (B, T, d)
    assert by_op["softmax"].shape == (B, H, T, T)
    assert by_op["GELU"].shape == (B, T, 4 * d)
    for edge in block_graph.edges:
        assert edge.shape == block_graph.nodes[edge.source].shape


def test_op_labels_and_counts(block_graph):
    counts = block_graph.op_counts()
    assert counts["Linear"] == 6 and counts["LayerNorm"] == 2 and counts["matmul"] == 2
    assert counts["softmax"] == 1 and counts["GELU"] == 1 and counts["add"] == 2
    assert counts["input"] == counts["output"] == 1
    text = block_graph.summary()
    assert "softmax" in text and f"{block_graph.total_flops():,} FLOPs" in text


class ChecksItsInput(nn.Module):
    """Validates the input's shape like genlab's modules do; plain symbolic_trace fails on it."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        if x.dim() != 3:
            raise ValueError("expected (B, T, C)")
        B, T, C = x.shape
        scale = torch.finfo(x.dtype).eps + C ** -0.5
        return self.proj(x).reshape(B * T, C) * scale


def test_shape_checks_trace_with_concrete_shapes():
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(ChecksItsInput())
    graph = graphs.trace(ChecksItsInput(), torch.randn(2, 3, 4))
    assert graph.method == "fx"
    assert [node.op for node in graph.nodes] == ["input", "Linear", "reshape", "mul", "output"]
    assert graph.nodes[2].shape == (6, 4)


def test_fixed_arguments_and_module_left_unchanged():
    attention = MultiHeadAttention(16, 2, backend="scratch").train()
    attributes_before = set(vars(attention))
    causal = graphs.trace(attention, example_input(), is_causal=True)
    assert attention.training  # mode restored
    assert set(vars(attention)) == attributes_before  # no tensor constants left on the module
    assert [node.op for node in causal.nodes].count("input") == 1  # flags are not inputs
    assert causal.op_counts()["masked_fill"] >= 1
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    masked = graphs.trace(attention, example_input(), attn_mask=mask)
    assert [node.name for node in masked.nodes if node.op == "input"] == ["x", "attn_mask"]


class NanoGPTStyleAttention(nn.Module):
    """Idioms of GPT code: size() unpacking and asserts, one qkv projection split
    three ways, a causal-mask buffer sliced to T, a tied output matrix."""

    def __init__(self, vocab=50, block_size=8, d=16, n_heads=2):
        super().__init__()
        self.n_heads, self.block_size = n_heads, block_size
        self.wte = nn.Embedding(vocab, d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.register_buffer("bias", torch.ones(block_size, block_size).tril()[None, None])

    def forward(self, idx):
        B, T = idx.size()
        assert T <= self.block_size, "sequence too long"
        x = self.wte(idx)  # (B, T, C)
        C = x.size(-1)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))  # (B, H, T, C/H) each
        scores = (q @ k.transpose(-2, -1)) / (C // self.n_heads) ** 0.5
        scores = scores.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        return y @ self.wte.weight.T  # (B, T, vocab)


def test_gpt_style_code_traces_with_fx():
    B, T, d, vocab = 2, 6, 16, 50
    graph = graphs.trace(NanoGPTStyleAttention(vocab, 8, d), torch.randint(0, vocab, (B, T)))
    assert graph.method == "fx"
    counts = graph.op_counts()
    assert counts["split"] == 1 and counts["getitem"] == 3 and counts["matmul"] == 3
    assert graph.nodes[-1].shape == (B, T, vocab)
    assert graph.matmul_flops() == 2 * B * T * d * 3 * d + 4 * B * T * T * d + 2 * B * T * d * vocab


class BranchesOnValues(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on data: fx cannot record it
            return torch.relu(x) * 2
        return -x


def test_falls_back_to_aten_for_data_dependent_control_flow():
    x = torch.ones(3, 4)
    with pytest.raises(fx.proxy.TraceError):
        graphs.trace(BranchesOnValues(), x, method="fx")
    graph = graphs.trace(BranchesOnValues(), x)
    assert graph.method == "aten"
    assert graph.op_counts()["relu"] == 1 and graph.op_counts()["mul"] == 1
    assert all(node.shape == (3, 4) for node in graph.nodes)


# ----------------------------------------------------------------------------
# comparing diagrams


def test_same_architecture_different_weights_is_isomorphic(block_graph):
    other = graphs.trace(make_block(seed=1), example_input(seed=1))
    comparison = graphs.compare(block_graph, other)
    assert comparison.same_op_multiset and comparison.isomorphic
    assert comparison.flops[0] == comparison.flops[1] > 0
    assert comparison.edge_shape_differences == {}
    assert graphs.is_isomorphic(block_graph, other, match_shapes=True)


def test_a_different_op_is_not_isomorphic(block_graph):
    relu = graphs.trace(make_block(activation=nn.ReLU), example_input())
    comparison = graphs.compare(block_graph, relu)
    assert not comparison.same_op_multiset and not comparison.isomorphic
    assert comparison.op_count_differences == {"GELU": (1, 0), "ReLU": (0, 1)}
    assert ("Linear", "ReLU") in comparison.edge_shape_differences
    assert "isomorphic:       False" in str(comparison)


def test_wider_block_same_diagram_different_shapes(block_graph):
    wider = graphs.trace(make_block(d_model=32, n_heads=4), example_input(d=32))
    comparison = graphs.compare(block_graph, wider)
    assert comparison.isomorphic and comparison.same_op_multiset
    assert not graphs.is_isomorphic(block_graph, wider, match_shapes=True)
    scores_a, scores_b = comparison.edge_shape_differences[("div", "softmax")]
    assert (scores_a, scores_b) == (((2, 2, 5, 5),), ((2, 4, 5, 5),))
    assert comparison.flops == (analytic_matmul_flops(2, 5, 16), analytic_matmul_flops(2, 5, 32))


def _permuted(graph: graphs.OpGraph, seed: int) -> graphs.OpGraph:
    """The same diagram with its nodes listed in a random order."""
    order = torch.randperm(len(graph), generator=torch.Generator().manual_seed(seed)).tolist()
    new_index = {old: new for new, old in enumerate(order)}
    edges = [dataclasses.replace(e, source=new_index[e.source], target=new_index[e.target])
             for e in graph.edges]
    return graphs.OpGraph([graph.nodes[old] for old in order], edges, graph.method)


def test_node_order_does_not_matter(block_graph):
    shuffled = _permuted(block_graph, seed=3)
    mapping = graphs.find_isomorphism(block_graph, shuffled)
    assert mapping is not None
    assert sorted(mapping) == list(range(len(block_graph)))  # a bijection ...
    for i, j in enumerate(mapping):  # ... that keeps op labels ...
        assert block_graph.nodes[i].op == shuffled.nodes[j].op
    mapped_edges = Counter((mapping[e.source], mapping[e.target]) for e in block_graph.edges)
    assert mapped_edges == Counter((e.source, e.target) for e in shuffled.edges)  # ... and edges


def test_rewired_edges_are_not_isomorphic(block_graph):
    """Same ops, same number of edges, same degrees, but two tensors swapped destinations."""
    index = {node.name: i for i, node in enumerate(block_graph.nodes)}
    edges = list(block_graph.edges)
    into_gelu = next(k for k, e in enumerate(edges) if e.target == index["mlp_1"])
    into_query = next(k for k, e in enumerate(edges) if e.target == index["attn_q_proj"])
    edges[into_gelu] = dataclasses.replace(edges[into_gelu], target=index["attn_q_proj"])
    edges[into_query] = dataclasses.replace(edges[into_query], target=index["mlp_1"])
    rewired = graphs.OpGraph(block_graph.nodes, edges)
    assert rewired.op_counts() == block_graph.op_counts()
    assert not graphs.is_isomorphic(block_graph, rewired)
    assert not graphs.compare(block_graph, rewired).isomorphic


def test_backtracking_separates_what_colour_refinement_cannot():
    # every node: label "f", one input, one output -> refinement sees no difference
    six_cycle = graphs.OpGraph.from_edges(["f"] * 6, [(i, (i + 1) % 6) for i in range(6)])
    two_triangles = graphs.OpGraph.from_edges(
        ["f"] * 6, [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)])
    relabelled_cycle = graphs.OpGraph.from_edges(
        ["f"] * 6, [(0, 3), (3, 5), (5, 1), (1, 4), (4, 2), (2, 0)])
    assert not graphs.is_isomorphic(six_cycle, two_triangles)
    assert graphs.is_isomorphic(six_cycle, relabelled_cycle)
    # three identical parallel branches: many automorphisms, one mapping suffices
    branches = graphs.OpGraph.from_edges(
        ["in", "a", "a", "a", "b", "b", "b", "out"],
        [(0, 1), (0, 2), (0, 3), (1, 4), (2, 5), (3, 6), (4, 7), (5, 7), (6, 7)])
    assert graphs.is_isomorphic(branches, _permuted(branches, seed=0))


# ----------------------------------------------------------------------------
# drawing


def _boxes(fig):
    return [patch for ax in fig.axes for patch in ax.patches
            if isinstance(patch, FancyBboxPatch) and (patch.get_gid() or "").startswith("node:")]


def test_draw_has_one_box_per_node(block_graph):
    fig = graphs.draw(block_graph)
    try:
        boxes = _boxes(fig)
        assert len(boxes) == len(block_graph)
        assert {box.get_gid() for box in boxes} == {f"node:{n.name}" for n in block_graph.nodes}
        texts = {text.get_text() for text in fig.axes[0].texts}
        assert "(2, 2, 5, 5)" in texts  # an edge carries the attention scores' shape
        arrows = [patch for patch in fig.axes[0].patches if isinstance(patch, FancyArrowPatch)]
        assert len(arrows) == len(block_graph.edges)  # one path per edge, long or short
        width, height = fig.get_size_inches()
        tiny = graphs.OpGraph.from_edges(["input", "relu", "output"], [(0, 1), (1, 2)])
        small = graphs.draw(tiny)
        assert height > small.get_size_inches()[1]  # size follows the number of layers
        plt.close(small)
    finally:
        plt.close(fig)


def test_draw_into_given_axes_and_sideways(block_graph):
    fig, ax = plt.subplots()
    try:
        assert graphs.draw(block_graph, ax=ax, direction="right", show_flops=False) is fig
        assert len(_boxes(fig)) == len(block_graph)
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="direction"):
        graphs.draw(block_graph, direction="up")


@pytest.fixture(scope="module")
def gpt_block_graph():
    """The lecture's diagram: genlab's GPT block, causal, with two residual connections
    and the keys and values running from the attention down to the output."""
    block = Block(GPTConfig(n_embd=12, n_head=3, attn_backend="scratch"))
    return graphs.trace(block, example_input(d=12), is_causal=True)


# A hand-drawn diagram whose skip connections leave and join the same nodes, twice over.
SKIPS = graphs.OpGraph.from_edges(
    ["input", "f", "g", "h", "add", "k", "add", "output"],
    [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4), (4, 5), (5, 6), (4, 6), (0, 6), (6, 7),
     (1, 7), (1, 7)])


@pytest.fixture(params=[(which, direction) for which in ("gpt_block_graph", "block_graph", "skips")
                        for direction in ("down", "right")], ids="-".join)
def laid_out(request):
    """(graph, direction): the transformer blocks and SKIPS, drawn down and to the right."""
    which, direction = request.param
    return (SKIPS if which == "skips" else request.getfixturevalue(which)), direction


def _sampled(path: Path, per_piece: int = 32) -> np.ndarray:
    """Points along ``path``: each of its line and Bezier pieces at ``per_piece`` parameters."""
    return np.concatenate([piece(np.linspace(0, 1, per_piece)) for piece, _ in path.iter_bezier()])


def _turns(values) -> int:
    """How often a sequence of numbers turns from rising to falling or back."""
    steps = [b - a for a, b in zip(values, values[1:]) if abs(b - a) > 1e-9]
    return sum(a * b < 0 for a, b in zip(steps, steps[1:]))


def test_long_edges_run_down_straight_lanes(laid_out):
    graph, direction = laid_out
    _, routes, _, _ = graphs._layered_layout(graph)
    long_edges = [e for e, route in enumerate(routes) if len(route) > 2]
    assert len(long_edges) >= 4  # residual connections (and keys and values to the output)
    geometry = graphs._geometry(graph, direction)
    along, across = (1, 0) if direction == "down" else (0, 1)
    forward = -1 if direction == "down" else 1  # down the page, or to the right
    for e in long_edges:
        # one lane through every layer the edge crosses, beside the boxes there
        assert len({x for x, _ in routes[e][1:-1]}) == 1, f"edge {e} changes lanes: {routes[e]}"
        points = _sampled(geometry.paths[e])
        assert (np.diff(points[:, along]) * forward >= -1e-9).all(), f"edge {e} turns back"
        # out to the lane and back in at most: no zigzag
        assert _turns(points[:, across]) <= 1, f"edge {e} zigzags"


def test_edges_pass_no_box_but_their_own(laid_out):
    graph, direction = laid_out
    geometry = graphs._geometry(graph, direction)
    width, height = geometry.box
    pad = 0.02  # the boxes' drawn border (FancyBboxPatch pad)
    boxes = [Bbox.from_bounds(x - width / 2 - pad, y - height / 2 - pad, width + 2 * pad,
                              height + 2 * pad) for x, y in geometry.centres]
    for i, j in itertools.combinations(range(len(boxes)), 2):
        assert not boxes[i].overlaps(boxes[j]), (graph.nodes[i].name, graph.nodes[j].name)
    for edge, path in zip(graph.edges, geometry.paths):
        polyline = Path(_sampled(path))
        # from the source box's far side to the target box's near side
        assert boxes[edge.source].contains(*polyline.vertices[0])
        assert boxes[edge.target].contains(*polyline.vertices[-1])
        for k, box in enumerate(boxes):
            if k not in (edge.source, edge.target):
                assert not polyline.intersects_bbox(box, filled=False), \
                    f"{graph.nodes[edge.source].name} -> {graph.nodes[edge.target].name} " \
                    f"crosses {graph.nodes[k].name}"


# The same diagram with a shape on every tensor: parallel edges and edges that leave and
# join the same nodes carry labels that compete for the same room.
SKIPS_WITH_SHAPES = graphs.OpGraph.from_edges(
    [node.op for node in SKIPS.nodes],
    [(edge.source, edge.target) for edge in SKIPS.edges],
    shapes=[(2, 5, 16), (2, 5, 64), (2, 5, 64), (2, 5, 16), (2, 5, 16), (2, 4, 5, 5),
            (2, 5, 16), (2, 5, 16)])


@pytest.fixture(params=[(which, direction)
                        for which in ("gpt_block_graph", "block_graph", "skips_with_shapes")
                        for direction in ("down", "right")], ids="-".join)
def labelled(request):
    """(graph, direction): the lecture's block (gpt_block_graph is lecture 5's graph: B=2,
    T=5, d=12, H=3, causal), the pre-LN block and SKIPS with shapes, both ways."""
    which, direction = request.param
    if which == "skips_with_shapes":
        return SKIPS_WITH_SHAPES, direction
    return request.getfixturevalue(which), direction


def _drawn_extents(fig):
    """Edge labels {gid: text} and the display-space boxes of labels and node boxes, as
    the figure's renderer draws them (a label's box is its white background)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = {text.get_gid(): text for text in ax.texts
              if (text.get_gid() or "").startswith("edge:")}
    label_boxes = {gid: text.get_bbox_patch().get_window_extent(renderer)
                   for gid, text in labels.items()}
    node_boxes = {box.get_gid(): box.get_window_extent(renderer) for box in _boxes(fig)}
    return labels, label_boxes, node_boxes


def test_edge_labels_do_not_overlap(labelled):
    graph, direction = labelled
    fig = graphs.draw(graph, direction=direction)
    try:
        labels, label_boxes, node_boxes = _drawn_extents(fig)
        assert set(labels) == {f"edge:{e}" for e, edge in enumerate(graph.edges)
                               if edge.shape is not None}  # one label per tensor
        for (a, box_a), (b, box_b) in itertools.combinations(label_boxes.items(), 2):
            assert not box_a.overlaps(box_b), \
                f"{direction}: labels {labels[a].get_text()!r} ({a}) and " \
                f"{labels[b].get_text()!r} ({b}) overlap"
        for gid, box in label_boxes.items():
            for node, node_box in node_boxes.items():
                assert not box.overlaps(node_box), f"{direction}: {gid} lies on {node}"
            assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
    finally:
        plt.close(fig)


def test_each_label_sits_on_its_own_edge(gpt_block_graph):
    fig = graphs.draw(gpt_block_graph)
    try:
        geometry = graphs._geometry(gpt_block_graph, "down")
        labels, label_boxes, _ = _drawn_extents(fig)
        to_display = fig.axes[0].transData
        for gid, box in label_boxes.items():
            path = geometry.paths[int(gid.split(":")[1])]
            points = to_display.transform(_sampled(path, per_piece=64))
            inside = ((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1)
                      & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1))
            assert inside.any(), f"{labels[gid].get_text()!r} ({gid}) is off its edge"
    finally:
        plt.close(fig)


def test_split_edges_show_equal_parts_once(gpt_block_graph):
    fig = graphs.draw(gpt_block_graph)
    try:
        texts = [text.get_text() for text in fig.axes[0].texts]
        assert texts.count("3 × (2, 5, 12)") == 3  # split -> getitem: a tuple of 3 equal parts
        assert "[(2, 5, 12), (2, 5, 12), (2, 5, 12)]" not in texts
    finally:
        plt.close(fig)
    assert graphs._edge_label(((2, 3), (4, 5))) == "[(2, 3), (4, 5)]"  # unequal: listed
    assert graphs._edge_label((2, 3)) == "(2, 3)"
