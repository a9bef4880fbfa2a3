"""Properties of assignment 5 (graphs and quantum attention), and how its graphs are stored.

**Graphs as arrays.** A student describes an op graph as two arrays: ``op_labels`` (N,)
of strings and ``edges`` (E, 2) of node indices, edge (a, b) meaning "the output of node
a is an input of node b". The reference stores its labels as character codes instead
(``encode_labels``: an int64 (N, L) array, 0-padded), so that every reference file holds
numbers only; ``decode_labels`` reads them back.

**Properties** (``compare="property:<name>"``), judged on all of a check's outputs:

- ``graphs.isomorphic``: the student's graph is the reference's (a graph traced by
  ``genlab.graphs.trace``) up to renaming the nodes: a bijection that keeps op labels
  and directed edges. Node order is free. When it is not, the message says how they
  differ, from the coarsest difference to the finest: the op-label multiset, edges that
  point backwards, the number of edges of each kind (source op -> target op), the
  neighbourhood of a node, and only then "wired differently".
- ``quantum.orthogonal``: each returned matrix W is (n, n), float64, with
  max |W W^T - I| <= ``atol`` and det W = +1 (a product of rotations).

**Gradients.** ``angle_gradient(matrix_fn)`` wraps a function ``(angles, n) -> W`` into
one that returns the gradient, with respect to the angles, of a fixed scalar function of
W; the notebook grades the student's ``pyramid_matrix`` through it (gradients must reach
the angles: section 6 trains them), the spec builds the reference with it.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import torch

from genlab.properties import register

# ------------------------------------------------------------------ labels as numbers


def encode_labels(labels) -> np.ndarray:
    """Op labels -> int64 (N, L) array of their characters' code points, 0-padded."""
    labels = [str(label) for label in labels]
    width = max((len(label) for label in labels), default=0)
    codes = np.zeros((len(labels), max(width, 1)), dtype=np.int64)
    for row, label in enumerate(labels):
        codes[row, :len(label)] = [ord(ch) for ch in label]
    return codes


def decode_labels(codes: np.ndarray) -> list[str]:
    """The inverse of ``encode_labels``."""
    return ["".join(chr(int(c)) for c in row if c) for row in np.asarray(codes)]


# ------------------------------------------------------------------- graph isomorphism


def _plural(count: int, label: str) -> str:
    return f"{count} × '{label}'"


def _multiset_difference(mine: Counter, reference: Counter) -> str:
    missing = reference - mine
    extra = mine - reference
    parts = []
    if missing:
        parts.append("missing " + ", ".join(_plural(c, op) for op, c in sorted(missing.items())))
    if extra:
        parts.append("extra " + ", ".join(_plural(c, op) for op, c in sorted(extra.items())))
    return "; ".join(parts)


def _edge_kinds(labels: list[str], edges: list[tuple[int, int]]) -> Counter:
    return Counter((labels[a], labels[b]) for a, b in edges)


def _neighbourhoods(labels: list[str], edges: list[tuple[int, int]]) -> Counter:
    """Each node as (op, sorted ops of its inputs, sorted ops of its users)."""
    inputs: list[list[str]] = [[] for _ in labels]
    users: list[list[str]] = [[] for _ in labels]
    for a, b in edges:
        inputs[b].append(labels[a])
        users[a].append(labels[b])
    return Counter((labels[v], tuple(sorted(inputs[v])), tuple(sorted(users[v])))
                   for v in range(len(labels)))


def _ops(ops: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{op}'" for op in ops) + ")" if ops else "nothing"


def _has_cycle(n: int, edges: list[tuple[int, int]]) -> bool:
    users: list[list[int]] = [[] for _ in range(n)]
    waiting = [0] * n
    for a, b in edges:
        users[a].append(b)
        waiting[b] += 1
    ready = [v for v in range(n) if waiting[v] == 0]
    seen = 0
    while ready:
        v = ready.pop()
        seen += 1
        for w in users[v]:
            waiting[w] -= 1
            if waiting[w] == 0:
                ready.append(w)
    return seen != n


def _as_graph(outputs: list[np.ndarray]) -> tuple[list[str], list[tuple[int, int]]] | str:
    """The student's (op_labels, edges) as Python lists, or what is wrong with them."""
    if len(outputs) != 2:
        return f"returned {len(outputs)} value(s), expected 2 (op_labels, edges)"
    labels, edges = outputs
    if labels.ndim != 1:
        return f"`op_labels` has shape {tuple(labels.shape)}, expected (N,): one label per node"
    if labels.dtype.kind not in "US":
        return (f"`op_labels` has dtype {labels.dtype}, expected strings: "
                "np.array(['input', 'LayerNorm', ...])")
    if edges.size == 0 and labels.size > 1:
        return "`edges` is empty: every op takes its inputs along edges (a, b)"
    if edges.ndim != 2 or edges.shape[1] != 2:
        return f"`edges` has shape {tuple(edges.shape)}, expected (E, 2): one row (a, b) per edge"
    if edges.dtype.kind not in "iu":
        return f"`edges` has dtype {edges.dtype}, expected integer node indices (torch.long)"
    n = len(labels)
    for k, (a, b) in enumerate(edges.tolist()):
        if not (0 <= a < n and 0 <= b < n):
            return (f"edge {k} ({a}, {b}) names a node outside 0..{n - 1} "
                    f"(your graph has {n} nodes)")
        if a == b:
            return f"edge {k} ({a}, {b}) is a loop: an op does not consume its own output"
    return [str(label) for label in labels.astype(str)], [(int(a), int(b)) for a, b in edges.tolist()]


def graph_problem(mine: tuple[list[str], list[tuple[int, int]]],
                  reference: tuple[list[str], list[tuple[int, int]]]) -> str | None:
    """None when the two labelled graphs are isomorphic; otherwise how they differ."""
    from genlab.graphs import OpGraph, find_isomorphism

    labels, edges = mine
    ref_labels, ref_edges = reference
    ops, ref_ops = Counter(labels), Counter(ref_labels)
    if ops != ref_ops:
        if len(labels) != len(ref_labels):
            return (f"your graph has {len(labels)} nodes, the traced one {len(ref_labels)}: "
                    f"{_multiset_difference(ops, ref_ops)}")
        return f"your op labels differ from the traced graph's: {_multiset_difference(ops, ref_ops)}"
    if _has_cycle(len(labels), edges):
        return "your graph has a cycle: a forward pass is acyclic (every edge goes from an op to a later one)"
    kinds, ref_kinds = _edge_kinds(labels, edges), _edge_kinds(ref_labels, ref_edges)
    reversed_kinds = _edge_kinds(labels, [(b, a) for a, b in edges])
    if kinds != ref_kinds and reversed_kinds == ref_kinds:
        return ("your edges point backwards: an edge (a, b) means the output of node a is an input "
                "of node b (from 'input' towards 'output')")
    if len(edges) != len(ref_edges) or kinds != ref_kinds:
        first = sorted(set(kinds) | set(ref_kinds), key=lambda k: (kinds[k] == ref_kinds[k], k))[0]
        return (f"your graph has {len(edges)} edges, the traced one {len(ref_edges)}; edges "
                f"'{first[0]}' -> '{first[1]}': you have {kinds[first]}, the traced graph "
                f"{ref_kinds[first]}")
    near, ref_near = _neighbourhoods(labels, edges), _neighbourhoods(ref_labels, ref_edges)
    if near != ref_near:
        op, inputs, users = sorted((ref_near - near).elements())[0]
        return (f"the same ops and the same kinds of edges, but wired differently: the traced graph "
                f"has a '{op}' node whose inputs are {_ops(inputs)} and whose users are "
                f"{_ops(users)}; yours has no such node")
    graph = OpGraph.from_edges(labels, edges)
    ref_graph = OpGraph.from_edges(ref_labels, ref_edges)
    try:
        isomorphic = find_isomorphism(graph, ref_graph) is not None
    except RuntimeError:
        return "your graph is too symmetric for the isomorphism check; it cannot be the traced block"
    if not isomorphic:
        return ("the same ops, the same kinds of edges and the same neighbourhoods, but wired "
                "differently: no renaming of your nodes gives the traced graph")
    return None


@register("graphs.isomorphic")
def isomorphic(outputs_per_case, cases, params) -> str | None:
    """The student's (op_labels, edges) is the reference graph up to renaming the nodes."""
    for i, (outputs, case) in enumerate(zip(outputs_per_case, cases)):
        where = f"case {i + 1} of {len(cases)} ({case.describe()})"
        mine = _as_graph(outputs)
        if isinstance(mine, str):
            return f"{where}: {mine}"
        codes, ref_edges = case.expected
        reference = (decode_labels(codes), [(int(a), int(b)) for a, b in ref_edges.tolist()])
        problem = graph_problem(mine, reference)
        if problem:
            return f"{where}: {problem}"
    return None


# --------------------------------------------------------------------------- orthogonality


@register("quantum.orthogonal")
def orthogonal(outputs_per_case, cases, params) -> str | None:
    """Each output is an (n, n) float64 rotation: max |W W^T - I| <= atol, det W = +1."""
    atol = float(params.get("atol", 1e-10))
    for i, (outputs, case) in enumerate(zip(outputs_per_case, cases)):
        where = f"case {i + 1} of {len(cases)} ({case.describe()})"
        n = int(case.inputs["n"])
        if len(outputs) != 1:
            return f"{where}: returned {len(outputs)} values, expected 1 (the matrix W)"
        W = outputs[0]
        if W.shape != (n, n):
            return f"{where}: `W` has shape {tuple(W.shape)}, expected ({n}, {n})"
        if W.dtype != np.float64:
            return (f"{where}: `W` has dtype {W.dtype}, expected float64: the angles are float64, "
                    "build W in their dtype")
        if not np.isfinite(W).all():
            return f"{where}: `W` contains NaN or inf"
        error = np.abs(W @ W.T - np.eye(n))
        worst = np.unravel_index(np.argmax(error), error.shape)
        if error[worst] > atol:
            return (f"{where}: W W^T differs from the identity by {error[worst]:.3g} at "
                    f"[{worst[0]}, {worst[1]}] (allowed {atol:g}): a product of rotations is "
                    "orthogonal, so some factor is not a rotation; each gate must put cos(theta) on "
                    "both diagonal entries (i, i), (j, j) and -sin(theta), +sin(theta) at (i, j), (j, i)")
        det = float(np.linalg.det(W))
        if det < 0:
            return (f"{where}: det W = {det:.3g}: W is orthogonal but a reflection; a product of "
                    "rotations has determinant +1 (did a gate get cos on one diagonal entry and "
                    "-cos on the other?)")
    return None


# ---------------------------------------------------------------------------- gradients


class NoGradientError(RuntimeError):
    pass


def angle_gradient(matrix_fn: Callable) -> Callable:
    """``(angles, n) -> d f(W) / d angles`` for ``W = matrix_fn(angles, n)`` and the fixed
    scalar function f(W) = sum(W * M), M = linspace(-1, 1, n*n) as an (n, n) matrix.
    Gradients are computed even when called under ``torch.no_grad()`` (as checks call)."""

    def gradient(angles: torch.Tensor, n: int) -> torch.Tensor:
        with torch.enable_grad():
            leaf = angles.detach().clone().requires_grad_(True)
            W = matrix_fn(leaf, n)
            if not isinstance(W, torch.Tensor) or not W.requires_grad:
                raise NoGradientError(
                    "no gradient reaches the angles: build W from torch operations on `angles` "
                    "(torch.cos, torch.sin, indexing, @), not from numbers taken out of it "
                    "(.tolist(), .item(), float(), math.cos)")
            M = torch.linspace(-1, 1, n * n, dtype=W.dtype, device=W.device).reshape(n, n)
            (grad,) = torch.autograd.grad((W * M).sum(), leaf, allow_unused=True)
        return torch.zeros_like(leaf) if grad is None else grad

    gradient.__name__ = gradient.__qualname__ = f"{getattr(matrix_fn, '__name__', 'matrix')}_gradient"
    return gradient
