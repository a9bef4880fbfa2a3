"""Bonus assignment 5, "Graphs and quantum attention": what is graded, on which inputs, for how many points.

Part A, models as graphs: the student counts the matrix-product FLOPs of a pre-LN
transformer block (exact integers, against the count ``genlab.graphs.trace`` measures
with ``FlopCounterMode``) and draws the block's op graph by hand (graded by isomorphism,
op labels included, with the graph ``genlab.graphs.trace`` records).

Part B, orthogonal layers: the gates of the pyramid circuit (exact), its parameter count
and depth (exact), the orthogonal matrix of its RBS gates (against genlab's
``OrthogonalLayer``, and orthogonal to 1e-10 in float64, a property), the orthogonality
error of a matrix, and orthogonal attention (against ``OrthogonalAttention``).

``TinyBlock`` below is the block of the notebook's read-only cell ``tiny_block``; the two
must stay identical (the solution sample, graded in ``tests/test_assignments.py``,
scores full marks only if they are).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from autograder.spec import TORCH_ATTENTION_CALLS, Assignment, CaseSpec, check_maker
from genlab import graphs, quantum
from genlab.properties.graphs_quantum import angle_gradient, encode_labels

_HERE = "autograder.specs.a05_graphs_quantum"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------- the notebook's block


class TinyBlock(nn.Module):
    """A pre-LN transformer block with one attention head, written op by op."""

    def __init__(self, d):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * d, d)
        self.scale = 1 / math.sqrt(d)  # a Python number, not a tensor

    def forward(self, x):  # x (B, T, d)
        h = self.ln_1(x)
        q, k, v = self.q(h), self.k(h), self.v(h)  # (B, T, d) each
        scores = q @ k.transpose(-2, -1) * self.scale  # (B, T, T)
        attn = scores.softmax(dim=-1) @ v  # (B, T, d)
        x = x + self.o(attn)  # the residual stream
        return x + self.proj(self.act(self.fc(self.ln_2(x))))  # (B, T, d)


GRAPH_WIDTH = 8  # d of the blocks whose graph is traced (the graph does not depend on it)

# ------------------------------------------------------------------------ references


def reference_block_flops(B, T, d):
    """The matrix-product FLOPs of one TinyBlock on (B, T, d), as FlopCounterMode counts them
    in a trace (on the meta device when the block is large: the count needs shapes only)."""
    device = "meta" if B * T * d * max(d, T) > 10**8 else torch.get_default_device()
    with torch.device(device):
        block = TinyBlock(d)
        graph = graphs.trace(block, torch.zeros(B, T, d))
    return graph.matmul_flops()


def _graph_arrays(graph: graphs.OpGraph):
    edges = torch.tensor([(e.source, e.target) for e in graph.edges], dtype=torch.long).reshape(-1, 2)
    return torch.from_numpy(encode_labels([node.op for node in graph.nodes])), edges


def reference_block_graph(n_blocks):
    """The op graph of n_blocks TinyBlocks in a row, traced: (labels as character codes, edges)."""
    stack = nn.Sequential(*[TinyBlock(GRAPH_WIDTH) for _ in range(n_blocks)])
    return _graph_arrays(graphs.trace(stack, torch.zeros(1, 4, GRAPH_WIDTH)))


def _rows(steps) -> torch.Tensor:
    return torch.tensor([(t, i, j) for t, step in enumerate(steps) for i, j in step],
                        dtype=torch.long).reshape(-1, 3)


def reference_pyramid_gates(n):
    """(n(n-1)/2, 3): (time step, i, j) of every gate, in circuit order."""
    return _rows(quantum.pyramid_gates(n))


def reference_pyramid_size(n):
    layer = quantum.OrthogonalLayer(n, "pyramid", device="cpu")
    return layer.n_parameters, layer.depth


def _pyramid_layer(angles: torch.Tensor, n: int) -> quantum.OrthogonalLayer:
    layer = quantum.OrthogonalLayer(n, "pyramid", dtype=angles.dtype, device=angles.device)
    layer.angles.data.copy_(angles)
    return layer


def reference_pyramid_matrix(angles, n):
    return _pyramid_layer(angles, n).matrix()


# d/d angles of sum(W * M) for a fixed M: graded through the same wrapper the notebook's test
# cell puts around the student's pyramid_matrix (gradients must reach the angles)
# (through circuit_matrix: OrthogonalLayer copies the angles into its parameter, which cuts the graph)
def _pyramid_matrix_differentiable(angles, n):
    return quantum.circuit_matrix(n, quantum.pyramid_gates(n), angles)


reference_pyramid_matrix_gradient = angle_gradient(_pyramid_matrix_differentiable)


def reference_orthogonality_error(W):
    eye = torch.eye(W.shape[-2], dtype=W.dtype, device=W.device)
    return (W @ W.mT - eye).abs().max()


def reference_orthogonal_attention(x, score_angles, value_angles):
    n = x.shape[-1]
    attention = quantum.OrthogonalAttention(n, "pyramid", dtype=x.dtype, device=x.device)
    attention.score_layer.angles.data.copy_(score_angles)
    attention.value_layer.angles.data.copy_(value_angles)
    return attention(x)


# ------------------------------------------------------------------------- known bugs


def flops_without_attention(B, T, d):
    return 24 * B * T * d * d


def flops_multiply_adds(B, T, d):
    return 12 * B * T * d * d + 2 * B * T * T * d


def flops_narrow_mlp(B, T, d):
    return 12 * B * T * d * d + 4 * B * T * T * d


def flops_without_output_projection(B, T, d):
    return 22 * B * T * d * d + 4 * B * T * T * d


FLOPS_BUGS = {
    "no_attention_term": (f"{_HERE}.flops_without_attention",
                          "your count has no attention term: the scores q k^T and the weighted sum "
                          "softmax(...) v are matrix products too, 2·B·T²·d FLOPs each"),
    "multiply_adds": (f"{_HERE}.flops_multiply_adds",
                      "you counted one FLOP per multiply-add; a FLOP count counts the multiply and the "
                      "add: an (m, k) @ (k, n) product costs 2·m·k·n FLOPs"),
    "narrow_mlp": (f"{_HERE}.flops_narrow_mlp",
                   "your MLP term is too small: the MLP widens d -> 4d and projects back 4d -> d, "
                   "2·(B·T)·d·4d FLOPs each way"),
    "no_output_projection": (f"{_HERE}.flops_without_output_projection",
                             "your count misses the output projection W_o: the attention's output goes "
                             "through a d -> d Linear (self.o) before the residual add, 2·(B·T)·d·d FLOPs"),
}


def pyramid_gates_mirrored(n):
    """Wire i <-> n-1-i: the short side of the pyramid at the top."""
    return _rows([sorted((n - 2 - i, n - 1 - i) for i, _ in step) for step in quantum.pyramid_gates(n)])


def pyramid_gates_by_wire(n):
    rows = reference_pyramid_gates(n)
    return rows[sorted(range(len(rows)), key=lambda g: (rows[g, 1].item(), rows[g, 0].item()))]


GATES_BUGS = {
    "mirrored": (f"{_HERE}.pyramid_gates_mirrored",
                 "your pyramid is upside down (wire i <-> n-1-i): gate (0, 1) acts first and most often "
                 "(at times 0, 2, ..., 2n-4), gate (n-2, n-1) only once, at time n-2"),
    "by_wire": (f"{_HERE}.pyramid_gates_by_wire",
                "the right gates in the wrong order: list them time step by time step (then by wire i), "
                "the order in which the circuit applies them and in which the angles are numbered"),
}


def _circuit(angles: torch.Tensor, n: int, reverse: bool = False, flip_sign: bool = False) -> torch.Tensor:
    gates = [gate for step in quantum.pyramid_gates(n) for gate in step]
    if reverse:
        gates, angles = gates[::-1], angles.flip(0)
    return quantum.circuit_matrix(n, [[gate] for gate in gates], -angles if flip_sign else angles)


def pyramid_matrix_reversed(angles, n):
    return _circuit(angles, n, reverse=True)


def pyramid_matrix_sign_flipped(angles, n):
    return _circuit(angles, n, flip_sign=True)


MATRIX_BUGS = {
    "reversed_order": (f"{_HERE}.pyramid_matrix_reversed",
                       "you multiplied the gates in reverse order: the first gate acts first, so it is the "
                       "RIGHTMOST factor, W = G_last ··· G_2 G_1 (multiply each new gate on the left)"),
    "sign_flipped": (f"{_HERE}.pyramid_matrix_sign_flipped",
                     "sign convention flipped: an RBS gate sends e_i to cos·e_i + sin·e_j, so G[j, i] = +sin "
                     "and G[i, j] = -sin (you built the transpose of each gate, i.e. angle -theta)"),
}


pyramid_matrix_reversed_gradient = angle_gradient(pyramid_matrix_reversed)
pyramid_matrix_sign_flipped_gradient = angle_gradient(pyramid_matrix_sign_flipped)
GRADIENT_BUGS = {
    "reversed_order": (f"{_HERE}.pyramid_matrix_reversed_gradient", MATRIX_BUGS["reversed_order"][1]),
    "sign_flipped": (f"{_HERE}.pyramid_matrix_sign_flipped_gradient", MATRIX_BUGS["sign_flipped"][1]),
}


def orthogonality_error_WtW(W):
    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    return (W.mT @ W - eye).abs().max()


def orthogonality_error_no_identity(W):
    return (W @ W.mT).abs().max()


def orthogonality_error_frobenius(W):
    eye = torch.eye(W.shape[-2], dtype=W.dtype, device=W.device)
    return torch.linalg.matrix_norm(W @ W.mT - eye)


ERROR_BUGS = {
    "WtW": (f"{_HERE}.orthogonality_error_WtW",
            "you measured W^T W - I; for W of shape (m, n) the rows are orthonormal when W W^T = I "
            "(an m x m identity)"),
    "no_identity": (f"{_HERE}.orthogonality_error_no_identity",
                    "you forgot to subtract the identity: the error is max |W W^T - I|"),
    "frobenius": (f"{_HERE}.orthogonality_error_frobenius",
                  "you returned the Frobenius norm of W W^T - I; this function returns its largest "
                  "entry in absolute value, max |W W^T - I|"),
}


def _attention_variant(x, score_angles, value_angles, scale=True, transpose=False, rotate_values=True,
                       pyramid=reference_pyramid_matrix):
    n = x.shape[-1]
    W = pyramid(score_angles, n)
    V = pyramid(value_angles, n)
    scores = x @ (W.mT if transpose else W) @ x.mT / (math.sqrt(n) if scale else 1.0)
    return scores.softmax(dim=-1) @ (x @ V.mT if rotate_values else x)


def attention_without_scale(x, score_angles, value_angles):
    return _attention_variant(x, score_angles, value_angles, scale=False)


def attention_transposed(x, score_angles, value_angles):
    return _attention_variant(x, score_angles, value_angles, transpose=True)


def attention_values_not_rotated(x, score_angles, value_angles):
    return _attention_variant(x, score_angles, value_angles, rotate_values=False)


def attention_reversed_pyramid(x, score_angles, value_angles):
    return _attention_variant(x, score_angles, value_angles, pyramid=pyramid_matrix_reversed)


def attention_sign_flipped_pyramid(x, score_angles, value_angles):
    return _attention_variant(x, score_angles, value_angles, pyramid=pyramid_matrix_sign_flipped)


ATTENTION_BUGS = {
    "no_scale": (f"{_HERE}.attention_without_scale",
                 "your output equals orthogonal attention WITHOUT the 1/sqrt(n) scaling of the scores"),
    "transposed": (f"{_HERE}.attention_transposed",
                   "your scores are x_i · (W^T x_j); the key of token j is W x_j, so the score is "
                   "x_i · (W x_j), i.e. scores = x W x^T / sqrt(n)"),
    "values_not_rotated": (f"{_HERE}.attention_values_not_rotated",
                           "the values must go through the second orthogonal layer: value_j = V x_j "
                           "(x @ V^T), V = pyramid_matrix(value_angles, n)"),
    "reversed_pyramid": (f"{_HERE}.attention_reversed_pyramid",
                         "your attention is right but W and V are not: their gates are multiplied in "
                         "reverse order (fix pyramid_matrix first)"),
    "sign_flipped_pyramid": (f"{_HERE}.attention_sign_flipped_pyramid",
                             "your attention is right but W and V are not: their gates have the sign "
                             "convention flipped (fix pyramid_matrix first)"),
}

# ------------------------------------------------------------------------------ cases


def flops_case(B: int, T: int, d: int) -> CaseSpec:
    return CaseSpec(make=lambda: {"B": B, "T": T, "d": d}, meta={"B": B, "T": T, "d": d})


def graph_case(n_blocks: int) -> CaseSpec:
    return CaseSpec(make=lambda: {"n_blocks": n_blocks}, meta={"n_blocks": n_blocks})


def wires_case(n: int) -> CaseSpec:
    return CaseSpec(make=lambda: {"n": n}, meta={"n": n})


def _angles(g: torch.Generator, n: int, dtype: str) -> torch.Tensor:
    return (torch.rand(n * (n - 1) // 2, generator=g, dtype=torch.float64) * 2 - 1).mul(math.pi).to(
        getattr(torch, dtype))


def matrix_case(seed: int, n: int, dtype: str = "float32") -> CaseSpec:
    return CaseSpec(make=lambda: {"angles": _angles(_gen(seed), n, dtype), "n": n},
                    meta={"n": n, "dtype": dtype, "seed": seed})


def error_case(seed: int, kind: str, m: int, n: int, dtype: str = "float32") -> CaseSpec:
    """kind: pyramid (an orthogonal n x n from angles, rounding error only) | random
    (Gaussian / sqrt(n), far from orthogonal) | rows (m < n orthonormal rows) | nudged
    (orthogonal with one entry moved by 1e-3)."""

    def make():
        g, dt = _gen(seed), getattr(torch, dtype)
        if kind in ("pyramid", "nudged"):
            W = reference_pyramid_matrix(_angles(g, n, "float64"), n).detach()
            if kind == "nudged":
                W[1, 2] += 1e-3
        elif kind == "random":
            W = torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(n)
        else:
            Q, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))  # (n, m)
            W = Q.mT.contiguous()  # (m, n), orthonormal rows
        return {"W": W.to(dt)}

    return CaseSpec(make=make, meta={"kind": kind, "shape": [m, n], "dtype": dtype, "seed": seed})


def attention_case(seed: int, B: int, T: int, n: int, dtype: str = "float32") -> CaseSpec:
    def make():
        g = _gen(seed)
        x = torch.randn(B, T, n, generator=g, dtype=torch.float64).to(getattr(torch, dtype))
        return {"x": x, "score_angles": _angles(g, n, dtype), "value_angles": _angles(g, n, dtype)}

    return CaseSpec(make=make, meta={"B": B, "T": T, "n": n, "dtype": dtype, "seed": seed})


# ------------------------------------------------------------------------------ checks

PYRAMID_CALLS = ("genlab.quantum.pyramid_gates", "genlab.quantum.layout_gates",
                 "genlab.quantum.OrthogonalLayer")
# everything in genlab.quantum that builds circuits or their matrices (the text: "off limits")
MATRIX_CALLS = PYRAMID_CALLS + ("genlab.quantum.x_gates", "genlab.quantum.butterfly_gates",
                                "genlab.quantum.circuit_matrix", "genlab.quantum.circuit_unitary",
                                "genlab.quantum.rbs_unitary", "genlab.quantum.hamming_weight_block",
                                "genlab.quantum.compound_matrix", "genlab.quantum.CompoundLayer",
                                "genlab.quantum.OrthogonalAttention", "genlab.quantum._apply_circuit",
                                "genlab.quantum._circuit_wires")
ATTENTION_CALLS = MATRIX_CALLS + ("genlab.attention.scaled_dot_product_attention",
                                  *TORCH_ATTENTION_CALLS)
TRACING_CALLS = ("genlab.graphs.trace", "torch.utils.flop_counter.FlopCounterMode")

# What every check of one function shares: its test cell, reference, comparison, bans.
PER_FUNCTION = {
    "block_flops": dict(cell="test_block_flops", reference=f"{_HERE}.reference_block_flops",
                        dtype="int64", compare="exact", outputs=("flops",), forbidden=TRACING_CALLS,
                        bugs=FLOPS_BUGS),
    "block_graph": dict(cell="test_block_graph", reference=f"{_HERE}.reference_block_graph",
                        dtype="int64", compare="property:graphs.isomorphic",
                        outputs=("op_labels", "edges"), forbidden=("genlab.graphs.trace",)),
    "pyramid_gates": dict(cell="test_pyramid", reference=f"{_HERE}.reference_pyramid_gates",
                          dtype="int64", compare="exact", outputs=("gates",), forbidden=PYRAMID_CALLS,
                          bugs=GATES_BUGS),
    "pyramid_size": dict(cell="test_pyramid", reference=f"{_HERE}.reference_pyramid_size",
                         dtype="int64", compare="exact", outputs=("n_parameters", "depth"),
                         forbidden=PYRAMID_CALLS),
    "pyramid_matrix": dict(cell="test_pyramid_matrix", reference=f"{_HERE}.reference_pyramid_matrix",
                           outputs=("W",), forbidden=MATRIX_CALLS, bugs=MATRIX_BUGS),
    # pyramid_matrix through angle_gradient (the wrapper is defined in the locked test cell)
    "pyramid_matrix_gradient": dict(cell="test_pyramid_matrix",
                                    reference=f"{_HERE}.reference_pyramid_matrix_gradient",
                                    dtype="float64", outputs=("grad",), forbidden=MATRIX_CALLS,
                                    bugs=GRADIENT_BUGS),
    "orthogonality_error": dict(cell="test_orthogonality_error",
                                reference=f"{_HERE}.reference_orthogonality_error",
                                outputs=("error",), bugs=ERROR_BUGS),
    "orthogonal_attention": dict(cell="test_orthogonal_attention",
                                 reference=f"{_HERE}.reference_orthogonal_attention",
                                 outputs=("output",), forbidden=ATTENTION_CALLS, bugs=ATTENTION_BUGS),
}


check = check_maker(PER_FUNCTION)


SPEC = Assignment(
    name="05_graphs_quantum",
    notebook="graphs_quantum.ipynb",
    # the tracer that checks the drawn graph, and the circuit tools of the demos
    notebook_uses=("genlab.graphs.trace", "genlab.quantum.OrthogonalLayer", "genlab.quantum.circuit_unitary",
                   "genlab.quantum.hamming_weight_block", "genlab.quantum.compound_matrix"),
    checks=[
        # --- part A: models as graphs
        # No case has d = 2T (a count without W_o equals one without attention) or d = T (it
        # equals one with a single attention product): the named bugs differ on every case.
        check("block_flops", "block_flops", True, [flops_case(1, 4, 6), flops_case(2, 5, 16)],
              "matrix-product FLOPs of one block, small shapes (exact integers)"),
        check("block_flops.hidden", "block_flops", False,
              [flops_case(3, 7, 32), flops_case(1, 1, 1), flops_case(8, 1024, 768),
               flops_case(1, 2048, 12288)],
              "other shapes, B = T = d = 1, GPT-2 small and GPT-3 widths (exact integers)", points=2),
        check("block_graph", "block_graph", True, [graph_case(1)],
              "the op graph of one block, isomorphic (op labels included) to the traced graph",
              points=2),
        check("block_graph.hidden", "block_graph", False, [graph_case(2), graph_case(4)],
              "two and four blocks in a row, isomorphic to the traced graph", points=2),
        # --- part B: the pyramid circuit
        check("pyramid_gates", "pyramid_gates", True, [wires_case(4), wires_case(5)],
              "(time step, i, j) of every gate, n = 4 and 5"),
        check("pyramid_gates.hidden", "pyramid_gates", False,
              [wires_case(2), wires_case(3), wires_case(8)], "n = 2, 3 and 8"),
        check("pyramid_size", "pyramid_size", True, [wires_case(4)],
              "number of parameters and depth, n = 4"),
        check("pyramid_size.hidden", "pyramid_size", False,
              [wires_case(2), wires_case(7), wires_case(64)], "n = 2, 7 and 64"),
        check("pyramid_matrix", "pyramid_matrix", True, [matrix_case(0, 4), matrix_case(1, 5)],
              "the matrix of the pyramid's RBS gates, n = 4 and 5 (float32)"),
        check("pyramid_matrix.gradient", "pyramid_matrix_gradient", True,
              [matrix_case(7, 4, "float64"), matrix_case(8, 6, "float64")],
              "gradients flow to the angles: d/d angles of sum(W * M) for a fixed M, n = 4 and 6 "
              "(float64)"),
        check("pyramid_matrix.hidden", "pyramid_matrix", False,
              [matrix_case(2, 2, "float64"), matrix_case(3, 8, "float64"), matrix_case(4, 7, "float64")],
              "float64: n = 2 (one gate), 7 and 8", dtype="float64", points=2),
        check("pyramid_matrix.orthogonal", "pyramid_matrix", True,
              [matrix_case(5, 6, "float64"), matrix_case(6, 16, "float64")],
              "W W^T = I to 1e-10 and det W = +1 in float64, n = 6 and 16", dtype="float64",
              compare="property:quantum.orthogonal", params={"atol": 1e-10}, bugs={}),
        check("orthogonality_error", "orthogonality_error", True,
              [error_case(0, "pyramid", 6, 6), error_case(1, "random", 4, 4)],
              "max |W W^T - I| of a rotation (rounding only) and of a random matrix"),
        check("orthogonality_error.hidden", "orthogonality_error", False,
              [error_case(2, "rows", 3, 5, "float64"), error_case(3, "nudged", 5, 5, "float64")],
              "a (3, 5) matrix with orthonormal rows; a rotation with one entry nudged (float64)",
              dtype="float64"),
        check("orthogonal_attention", "orthogonal_attention", True,
              [attention_case(0, B=1, T=4, n=4), attention_case(1, B=2, T=3, n=5)],
              "orthogonal attention with pyramid layers, float32", points=2),
        check("orthogonal_attention.hidden", "orthogonal_attention", False,
              [attention_case(2, B=2, T=6, n=8, dtype="float64"), attention_case(3, B=1, T=1, n=2, dtype="float64")],
              "float64 with n = 8; a single token with n = 2", dtype="float64", points=2),
    ],
    samples={
        # solved: the solution cells (by grade_id) that carry the solution; the rest stay blank.
        # lost: the checks it must fail ("all" for every one); it scores all other points.
        "solution": {"solved": "all", "lost": []},
        "blank": {"solved": [], "lost": "all"},
        "partial": {"solved": ["block_flops", "block_graph", "pyramid_gates"],
                    "lost": ["pyramid_size", "pyramid_size.hidden", "pyramid_matrix",
                             "pyramid_matrix.gradient", "pyramid_matrix.hidden",
                             "pyramid_matrix.orthogonal", "orthogonality_error",
                             "orthogonality_error.hidden", "orthogonal_attention",
                             "orthogonal_attention.hidden"]},
        # the classic FLOP-count slip: only the projections and the MLP
        "no_attention_flops": {"solved": "all", "lost": ["block_flops", "block_flops.hidden"],
                               "edit": {"block_flops": ["projections + mlp + attention", "projections + mlp"]}},
        # the residual connection around attention forgotten in the hand-drawn graph
        "no_residual": {"solved": "all", "lost": ["block_graph", "block_graph.hidden"],
                        "edit": {"block_graph": ['x = node("add", x, node("Linear", attn))',
                                                 'x = node("add", node("Linear", attn))']}},
        # gates multiplied in reverse order: still orthogonal, but not the circuit's matrix;
        # orthogonal attention, built on it, fails too
        "reversed_gates": {"solved": "all",
                           "lost": ["pyramid_matrix", "pyramid_matrix.gradient", "pyramid_matrix.hidden",
                                    "orthogonal_attention", "orthogonal_attention.hidden"],
                           "edit": {"pyramid_matrix": ["W = G @ W", "W = W @ G"]}},
    },
)
