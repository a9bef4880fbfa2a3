"""Models as diagrams: nodes are operations, edges are the tensors between them.

A forward pass is a directed acyclic graph.  Each node is one operation (a
``Linear`` layer, a ``matmul``, a ``softmax``, a residual ``add``); each edge is
the tensor that one operation hands to the next, labelled with its shape.
Drawn in layers, a transformer block reads like a Feynman diagram: inputs come
in at the top, interact at the vertices, and the output leaves at the bottom
(the analogy is the one of Hou et al., "Feynman diagrams as computational
graphs", arXiv:2403.18840, who compile diagrams into tensor programs; here we
go the other way and draw the tensor program).

Three steps turn a module into such a diagram:

1. **Trace** (``torch.fx``).  The tracer calls ``forward`` with stand-ins
   (proxies) instead of tensors and records every operation applied to them.
   Plain ``torch.fx.symbolic_trace`` keeps shapes symbolic, so Python code that
   *looks* at a shape fails: ``if x.dim() != 3: raise ...``, ``B, T, C =
   x.shape`` followed by an ``if``, ``torch.finfo(x.dtype)``.  genlab validates
   its inputs everywhere, so ``symbolic_trace`` fails on
   ``genlab.attention.MultiHeadAttention`` ("symbolically traced variables
   cannot be used as inputs to control flow").  ``trace`` therefore uses a
   tracer whose proxies also carry the real value computed on the example
   inputs: shape, dtype and device queries return real values, Python's
   ``if``/``raise`` run as in eager mode, and the graph is specialised to the
   example shapes (the shapes we annotate anyway).  Control flow on tensor
   *values* (``if mask.any():``) still cannot be traced; for such models
   ``trace`` falls back to ``make_fx``, which records the ATen kernels that
   actually ran (more, lower-level nodes: ``view``, ``t``, ``addmm``, ...),
   including only the branch the example inputs took.
   Torch's own layers (``nn.Linear``, ``nn.LayerNorm``, ``nn.GELU``) stay
   single nodes ("leaf modules"); genlab's modules are traced through.
   Tracing happens in eval mode (no dropout); the module's mode is restored.

2. **Annotate** (an ``torch.fx.Interpreter``).  The traced graph is run once
   more on the example inputs, node by node, by a subclass of
   ``torch.fx.passes.shape_prop.ShapeProp`` that records each node's output
   shape and dtype and runs the node under ``torch.utils.flop_counter.
   FlopCounterMode``.  The counter knows formulas for matrix products
   (``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions and the fused
   attention kernels, and counts a matrix product (m, k) @ (k, n) as 2mkn
   (one multiply and one add per term).  Element-wise ops, softmax and layer
   norm count 0, and so does the *bias* of ``addmm``: the counted FLOPs are
   the matrix-product FLOPs.  Caveat: on the CPU, torch's fused
   ``scaled_dot_product_attention`` kernel has no formula and counts **zero**,
   so trace attention with the explicit-matmul path
   (``MultiHeadAttention(backend="scratch")``) to see QK^T and AV counted.

3. **Draw** (matplotlib only, no Graphviz).  Nodes are placed in layers by
   topological depth (longest path from an input), edges that skip layers are
   routed through the layers they cross, and a few barycentre sweeps reduce
   crossings.  Coordinates across the layers follow Brandes and Köpf: boxes
   line up with the boxes they are wired to, and an edge that skips layers (a
   residual connection) runs down a straight lane of its own beside them,
   joined to its ends by smooth curves in the gaps between layers, so it
   crosses no box.  Boxes carry the op label, the node's name and its FLOPs;
   edges carry tensor shapes, each label placed greedily along its own edge
   where it overlaps no other label and no box (measured with the figure's
   renderer), upright across a gap too narrow for it.

``compare`` and ``is_isomorphic`` ask whether two models have the same diagram:
the same multiset of ops, and a bijection between nodes that preserves op
labels and directed edges (graph isomorphism).  The check refines node colours
Weisfeiler-Leman style (a node's colour is its op plus the colours of its
inputs and users, iterated) and then backtracks over the few nodes colours
cannot tell apart.  Computational graphs are far from symmetric, so this is
instant for a few hundred nodes; for highly regular graphs (all nodes alike,
every node with the same degree) the backtracking is exponential in the worst
case and gives up after ``max_steps`` tries with an error.

Public names: ``trace``, ``OpGraph`` (with ``OpNode``, ``OpEdge``), ``draw``,
``compare`` / ``GraphComparison``, ``is_isomorphic``, ``find_isomorphism``,
``MATMUL_KERNELS``.
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path
import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "MATMUL_KERNELS",
    "OpNode",
    "OpEdge",
    "OpGraph",
    "trace",
    "draw",
    "GraphComparison",
    "compare",
    "find_isomorphism",
    "is_isomorphic",
]

# The ATen kernels whose FLOPs are matrix-product FLOPs (FlopCounterMode's names).
MATMUL_KERNELS = frozenset({"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._scaled_mm"})

INPUT, OUTPUT = "input", "output"  # op labels of the graph's boundary nodes

# Python operator names shown under their usual tensor names.
_OPERATOR_LABELS = {"truediv": "div", "floordiv": "floor_divide"}


# ----------------------------------------------------------------------------
# the graph


@dataclass(frozen=True)
class OpNode:
    """One operation of the diagram.

    ``op``: the label compared between graphs ("Linear", "matmul", "softmax",
    "input", "output"; the module's class name for a leaf module, the
    function's or method's name otherwise).  ``name``: unique within the graph
    ("attn_q_proj").  ``kind``: the fx opcode (placeholder, call_module,
    call_function, call_method, get_attr, output).  ``target``: what was called
    ("attn.q_proj", "operator.matmul", "softmax").  ``shape``: the output's
    shape, a tuple of ints for a tensor, a tuple of such tuples for a tuple of
    tensors (``split``), None for no tensor.  ``flops``: FLOPs counted for this
    node, ``flops_by_kernel`` the same split by ATen kernel ("aten.addmm").
    """

    name: str
    op: str
    kind: str = "call_function"
    target: str = ""
    shape: tuple | None = None
    dtype: torch.dtype | None = None
    flops: int = 0
    flops_by_kernel: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OpEdge:
    """A tensor flowing from node ``source`` to node ``target`` (indices into ``nodes``)."""

    source: int
    target: int
    shape: tuple | None = None


@dataclass
class OpGraph:
    """A diagram: ``nodes`` (traced graphs list them in execution order) and
    directed ``edges`` between them (indices into ``nodes``).

    ``method`` says how it was traced: "fx" (torch-level ops, shapes concrete),
    "aten" (make_fx fallback: the ATen kernels that ran) or "manual".
    """

    nodes: list[OpNode]
    edges: list[OpEdge]
    method: str = "manual"

    @classmethod
    def from_edges(cls, ops: list[str], edges: list[tuple[int, int]],
                   shapes: list[tuple | None] | None = None) -> "OpGraph":
        """A hand-drawn diagram: node i has op label ``ops[i]`` (and output ``shapes[i]``)."""
        shapes = list(shapes) if shapes is not None else [None] * len(ops)
        if len(shapes) != len(ops):
            raise ValueError(f"got {len(ops)} ops but {len(shapes)} shapes")
        nodes = [OpNode(name=f"n{i}", op=op, kind="manual", target=op, shape=shape)
                 for i, (op, shape) in enumerate(zip(ops, shapes))]
        for source, target in edges:
            if not (0 <= source < len(ops) and 0 <= target < len(ops)):
                raise ValueError(f"edge ({source}, {target}) names a node outside "
                                 f"0..{len(ops) - 1}")
        return cls(nodes, [OpEdge(s, t, shapes[s]) for s, t in edges], "manual")

    def __len__(self) -> int:
        return len(self.nodes)

    def total_flops(self) -> int:
        return sum(node.flops for node in self.nodes)

    def matmul_flops(self) -> int:
        """FLOPs of matrix products only (kernels in ``MATMUL_KERNELS``)."""
        return sum(count for node in self.nodes
                   for kernel, count in node.flops_by_kernel.items() if kernel in MATMUL_KERNELS)

    def flops_by_op(self) -> dict[str, int]:
        """Counted FLOPs summed per op label (labels with zero FLOPs left out)."""
        totals: Counter = Counter()
        for node in self.nodes:
            if node.flops:
                totals[node.op] += node.flops
        return dict(totals)

    def op_counts(self) -> Counter:
        """How many nodes carry each op label (the op-label multiset)."""
        return Counter(node.op for node in self.nodes)

    def predecessors(self) -> list[list[int]]:
        incoming: list[list[int]] = [[] for _ in self.nodes]
        for edge in self.edges:
            incoming[edge.target].append(edge.source)
        return incoming

    def successors(self) -> list[list[int]]:
        outgoing: list[list[int]] = [[] for _ in self.nodes]
        for edge in self.edges:
            outgoing[edge.source].append(edge.target)
        return outgoing

    def topological_order(self) -> list[int]:
        """Node indices with every node after all of its inputs (Kahn's algorithm)."""
        incoming, outgoing = self.predecessors(), self.successors()
        waiting = [len(sources) for sources in incoming]
        ready = [i for i, count in enumerate(waiting) if count == 0][::-1]
        order = []
        while ready:
            node = ready.pop()
            order.append(node)
            for user in outgoing[node]:
                waiting[user] -= 1
                if waiting[user] == 0:
                    ready.append(user)
        if len(order) != len(self.nodes):
            raise ValueError("the graph has a cycle; only acyclic graphs have layers")
        return order

    def depths(self) -> list[int]:
        """Longest-path depth of every node: sources 0, a node one below its deepest input."""
        incoming = self.predecessors()
        depth = [0] * len(self.nodes)
        for node in self.topological_order():
            depth[node] = max((depth[source] + 1 for source in incoming[node]), default=0)
        return depth

    def summary(self) -> str:
        """A table of the nodes: name, op, output shape, FLOPs."""
        rows = [("node", "op", "shape", "FLOPs")]
        rows += [(n.name, n.op, _format_shape(n.shape), f"{n.flops:,}") for n in self.nodes]
        widths = [max(len(row[col]) for row in rows) for col in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                 for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        lines.append(f"{len(self.nodes)} nodes, {len(self.edges)} edges, "
                     f"{self.total_flops():,} FLOPs ({self.matmul_flops():,} in matrix products)")
        return "\n".join(lines)


def _format_shape(shape) -> str:
    if shape is None:
        return "-"
    if all(isinstance(size, int) for size in shape):
        return "(" + ", ".join(str(size) for size in shape) + ")"
    return "[" + ", ".join(_format_shape(part) for part in shape) + "]"


# ----------------------------------------------------------------------------
# tracing with concrete shapes


class _Unknown:
    """The value of a node the tracer cannot evaluate (a fixed argument's guard)."""


_UNKNOWN = _Unknown()


class _ConcreteProxy(fx.Proxy):
    """An fx proxy that also carries the real value of its node on the example inputs.

    Queries about metadata (``shape``, ``ndim``, ``dtype``, ``device``,
    ``is_cuda``, ``size()``, ``dim()``, ``numel()``, ``is_floating_point()``,
    ``is_complex()``, ``len()``) return real values instead of recording graph
    nodes, so code like ``if x.dim() != 3: raise`` or
    ``torch.finfo(x.dtype)`` runs during tracing.  Everything else (arithmetic,
    methods, torch functions) is recorded as usual.
    """

    @property
    def value(self):
        return self.node.meta["example_value"]

    @property
    def shape(self) -> torch.Size:
        return self.value.shape

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    @property
    def device(self) -> torch.device:
        return self.value.device

    def size(self, dim: int | None = None):
        return self.value.size() if dim is None else self.value.size(dim)

    @property
    def is_cuda(self) -> bool:
        return self.value.is_cuda

    def dim(self) -> int:
        return self.value.dim()

    def numel(self) -> int:
        return self.value.numel()

    def is_floating_point(self) -> bool:
        return self.value.is_floating_point()

    def is_complex(self) -> bool:
        return self.value.is_complex()

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self):  # q, k, v = x.split(C, dim=-1): one getitem node per part
        return (self[i] for i in range(len(self.value)))


class _ConcreteTracer(fx.Tracer):
    """fx tracing where every recorded node is also computed on the example inputs."""

    def __init__(self, example_values: dict[str, object]):
        super().__init__()
        self.example_values = example_values  # placeholder name -> example input
        self._evaluating = False  # True while we run an op on real values

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    # While an op runs on real values, module calls and parameter lookups must
    # not be recorded (fx patches them for the whole duration of ``trace``).
    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,
                     proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        proxy.node.meta["example_value"] = self._evaluate(kind, target, args, kwargs)
        return proxy

    def _evaluate(self, kind, target, args, kwargs):
        if kind == "placeholder":
            return self.example_values.get(target, _UNKNOWN)
        if kind == "output":
            return None
        unknown = False

        def real(value):
            nonlocal unknown
            if isinstance(value, fx.Proxy):
                value = value.node.meta["example_value"]
                unknown = unknown or value is _UNKNOWN
            return value

        args, kwargs = map_aggregate(args, real), map_aggregate(kwargs, real)
        if unknown:
            return _UNKNOWN
        self._evaluating = True
        try:
            with torch.no_grad():
                if kind == "call_function":
                    return target(*args, **kwargs)
                if kind == "call_method":
                    return getattr(args[0], target)(*args[1:], **kwargs)
                if kind == "call_module":
                    return self.root.get_submodule(target)(*args, **kwargs)
                if kind == "get_attr":
                    return functools.reduce(getattr, target.split("."), self.root)
                raise ValueError(f"unexpected fx node kind {kind!r}")
        finally:
            self._evaluating = False


def _split_arguments(module: nn.Module, example_inputs: tuple, example_kwargs: dict):
    """Bind the example arguments to ``forward``'s signature.

    Returns ``(tensor_arguments, fixed_arguments)``: arguments that hold tensors
    become graph inputs (in signature order); every other parameter (flags like
    ``is_causal``, ``None`` masks, defaults) is fixed to its value for tracing.
    """
    signature = inspect.signature(module.forward)
    bound = signature.bind(*example_inputs, **example_kwargs)
    bound.apply_defaults()
    tensor_arguments, fixed_arguments = {}, {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"trace: {type(module).__name__}.forward takes *args/**kwargs; "
                            "wrap the module in one with named arguments")
        holds_tensor = False

        def note_tensor(leaf):
            nonlocal holds_tensor
            holds_tensor = holds_tensor or isinstance(leaf, torch.Tensor)

        map_aggregate(value, note_tensor)
        (tensor_arguments if holds_tensor else fixed_arguments)[name] = value
    return tensor_arguments, fixed_arguments


def _fx_graph_module(module: nn.Module, tensor_arguments: dict, fixed_arguments: dict):
    """Trace with ``_ConcreteTracer``; leave ``module`` as it was."""
    attributes_before = set(vars(module))
    try:
        graph = _ConcreteTracer(tensor_arguments).trace(module, concrete_args=fixed_arguments or None)
        graph_module = fx.GraphModule(module, graph)  # copies what the graph needs from module
    finally:
        for added in set(vars(module)) - attributes_before:  # tensor constants fx put on the root
            delattr(module, added)
    # fixed arguments leave behind unused placeholders and guards on their values
    for node in reversed(list(graph.nodes)):
        if node.users or node.op == "output":
            continue
        if node.op == "placeholder" and node.target not in tensor_arguments:
            graph.erase_node(node)
        elif node.op == "call_function" and node.meta.get("example_value") is _UNKNOWN:
            graph.erase_node(node)
    graph_module.recompile()
    return graph_module


def _aten_graph_module(module: nn.Module, tensor_arguments: dict, fixed_arguments: dict):
    """The make_fx fallback: record the ATen kernels that run on the example inputs."""
    from torch.fx.experimental.proxy_tensor import make_fx

    names = list(tensor_arguments)

    def call(*tensors):
        return module(**dict(zip(names, tensors)), **fixed_arguments)

    # control flow on tensor values runs eagerly: the branch the example takes is recorded
    graph_module = make_fx(call, _error_on_data_dependent_ops=False)(*tensor_arguments.values())
    graph_module.graph.eliminate_dead_code()  # unused outputs of multi-output kernels
    graph_module.recompile()
    return graph_module


class _AnnotatingInterpreter(ShapeProp):
    """ShapeProp (records ``tensor_meta``) that also counts each node's FLOPs."""

    def run_node(self, node: fx.Node):
        with FlopCounterMode(display=False) as counter:
            result = super().run_node(node)
        counts = counter.get_flop_counts().get("Global", {})
        node.meta["flops_by_kernel"] = {str(kernel): int(n) for kernel, n in counts.items() if n}
        return result


def _shape_of(meta):
    if isinstance(meta, TensorMetadata):
        return tuple(meta.shape)
    if isinstance(meta, (tuple, list)):
        parts = [_shape_of(part) for part in meta]
        parts = [part for part in parts if part is not None]
        return tuple(parts) if parts else None
    if isinstance(meta, dict):
        return _shape_of(list(meta.values()))
    return None


def _dtype_of(meta):
    if isinstance(meta, TensorMetadata):
        return meta.dtype
    if isinstance(meta, (tuple, list)):
        return next((d for d in map(_dtype_of, meta) if d is not None), None)
    return None


def _callable_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):  # aten.addmm.default -> addmm
        return target.overloadpacket.__name__
    name = getattr(target, "__name__", None) or str(target)
    return _OPERATOR_LABELS.get(name, name)


def _op_label(node: fx.Node, graph_module: fx.GraphModule) -> str:
    if node.op == "placeholder":
        return INPUT
    if node.op == "output":
        return OUTPUT
    if node.op == "call_module":
        return type(graph_module.get_submodule(node.target)).__name__
    if node.op == "get_attr":
        value = functools.reduce(getattr, node.target.split("."), graph_module)
        return "parameter" if isinstance(value, nn.Parameter) else "constant"
    if node.op == "call_method":
        return node.target
    return _callable_name(node.target)


def _target_text(node: fx.Node) -> str:
    if node.op == "call_function" and not isinstance(node.target, torch._ops.OpOverload):
        module = getattr(node.target, "__module__", None) or ""
        module = {"_operator": "operator"}.get(module, module)
        return f"{module}.{_callable_name(node.target)}".lstrip(".")
    return str(node.target)


def _to_op_graph(graph_module: fx.GraphModule, method: str) -> OpGraph:
    fx_nodes = list(graph_module.graph.nodes)
    index = {node: i for i, node in enumerate(fx_nodes)}
    nodes, edges = [], []
    for node in fx_nodes:
        meta = node.meta.get("tensor_meta")
        flops_by_kernel = node.meta.get("flops_by_kernel", {})
        shape = _shape_of(meta)
        nodes.append(OpNode(
            name=node.name, op=_op_label(node, graph_module), kind=node.op,
            target=_target_text(node), shape=shape, dtype=_dtype_of(meta),
            flops=sum(flops_by_kernel.values()), flops_by_kernel=dict(flops_by_kernel),
        ))
        for source in node.all_input_nodes:
            source_shape = _shape_of(source.meta.get("tensor_meta"))
            edges.append(OpEdge(index[source], index[node], source_shape))
    return OpGraph(nodes, edges, method)


def trace(module: nn.Module, *example_inputs, method: str = "auto", **example_kwargs) -> OpGraph:
    """Trace ``module`` on example inputs into an annotated ``OpGraph``.

    ``example_inputs``/``example_kwargs`` are passed to ``forward`` as in a
    normal call; tensor arguments become the graph's inputs, other arguments
    (``is_causal=True``, ``attn_mask=None``) are fixed for the trace.
    ``method``: "fx" (torch-level ops, the default when it works), "aten"
    (``make_fx``: ATen kernels; for models with control flow on tensor values)
    or "auto" (fx, else aten).  Every node gets its output shape/dtype and its
    FLOPs on these inputs.  The trace is of eval mode; the module's mode is
    restored afterwards.
    """
    if method not in ("auto", "fx", "aten"):
        raise ValueError(f"method must be 'auto', 'fx' or 'aten', got {method!r}")
    tensor_arguments, fixed_arguments = _split_arguments(module, example_inputs, example_kwargs)
    if not tensor_arguments:
        raise ValueError("trace needs at least one tensor among the example inputs")
    was_training = module.training
    module.eval()
    try:
        graph_module, used, fx_error = None, method, None
        if method in ("auto", "fx"):
            try:
                graph_module = _fx_graph_module(module, tensor_arguments, fixed_arguments)
                used = "fx"
            except (fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError) as error:
                if method == "fx":
                    raise
                fx_error = error
        if graph_module is None:
            try:
                graph_module = _aten_graph_module(module, tensor_arguments, fixed_arguments)
                used = "aten"
            except Exception as aten_error:
                raise aten_error from fx_error  # show why both tracers failed
        with torch.no_grad():
            _AnnotatingInterpreter(graph_module).propagate(*tensor_arguments.values())
    finally:
        module.train(was_training)
    return _to_op_graph(graph_module, used)


# ----------------------------------------------------------------------------
# isomorphism


def _node_keys(graph: OpGraph, match_shapes: bool) -> list:
    return [(node.op, node.shape) if match_shapes else node.op for node in graph.nodes]


def _refine_colours(graphs: tuple[OpGraph, OpGraph], keys: tuple[list, list]):
    """Joint colour refinement (1-dimensional Weisfeiler-Leman) of two graphs.

    Colours start as the node keys (op labels); each round a node's new colour
    is its old one plus the sorted colours of its inputs and of its users.
    Colour ids are shared between the two graphs, so equal colours mean "not
    told apart by this refinement".  Stops when no class splits any more.
    """
    neighbours = [(g.predecessors(), g.successors()) for g in graphs]
    palette: dict = {}
    colours = [[palette.setdefault(key, len(palette)) for key in graph_keys] for graph_keys in keys]
    n_classes = len(palette)
    for _ in range(max(len(g.nodes) for g in graphs)):
        signatures = [
            [(colour[v], tuple(sorted(colour[u] for u in preds[v])),
              tuple(sorted(colour[w] for w in succs[v]))) for v in range(len(colour))]
            for colour, (preds, succs) in zip(colours, neighbours)
        ]
        palette = {}
        for signature in sorted(set(signatures[0]) | set(signatures[1])):
            palette[signature] = len(palette)
        colours = [[palette[s] for s in graph_signatures] for graph_signatures in signatures]
        if Counter(colours[0]) != Counter(colours[1]) or len(palette) == n_classes:
            break
        n_classes = len(palette)
    return colours


def _search_order(colour: list[int], preds, succs) -> list[int]:
    """Nodes in the order the search maps them: start at the rarest colour, then
    always the node with most already-ordered neighbours (so each new node is
    pinned by edges to mapped ones)."""
    class_size = Counter(colour)
    n = len(colour)
    placed = [False] * n
    links = [0] * n  # edges to already-ordered nodes
    order = []
    for _ in range(n):
        best = max((v for v in range(n) if not placed[v]),
                   key=lambda v: (links[v], -class_size[colour[v]], -v))
        placed[best] = True
        order.append(best)
        for neighbour in preds[best] + succs[best]:
            links[neighbour] += 1
    return order


def find_isomorphism(g1: OpGraph, g2: OpGraph, match_shapes: bool = False,
                     max_steps: int = 1_000_000) -> list[int] | None:
    """A node bijection ``mapping[i] = j`` (node i of g1 -> node j of g2) that
    preserves op labels (and output shapes with ``match_shapes``) and directed
    edges with their multiplicity; None if there is none.

    Raises RuntimeError when the backtracking exceeds ``max_steps`` candidate
    tries (only for very symmetric graphs; see the module docstring).
    """
    n = len(g1.nodes)
    if n != len(g2.nodes) or len(g1.edges) != len(g2.edges):
        return None
    keys = (_node_keys(g1, match_shapes), _node_keys(g2, match_shapes))
    if Counter(keys[0]) != Counter(keys[1]):
        return None
    colour1, colour2 = _refine_colours((g1, g2), keys)
    if Counter(colour1) != Counter(colour2):
        return None
    if n == 0:
        return []

    edges1 = Counter((e.source, e.target) for e in g1.edges)
    edges2 = Counter((e.source, e.target) for e in g2.edges)
    preds1, succs1 = g1.predecessors(), g1.successors()
    preds2, succs2 = g2.predecessors(), g2.successors()
    by_colour = defaultdict(list)
    for v, colour in enumerate(colour2):
        by_colour[colour].append(v)
    order = _search_order(colour1, preds1, succs1)
    mapping, inverse = [-1] * n, [-1] * n

    def consistent(u: int, v: int) -> bool:
        """Edges between u and mapped nodes match edges between v and their images."""
        mapped_neighbours_u = 0
        for p in set(preds1[u]):
            if mapping[p] >= 0:
                mapped_neighbours_u += 1
                if edges1[(p, u)] != edges2[(mapping[p], v)]:
                    return False
        for s in set(succs1[u]):
            if mapping[s] >= 0:
                mapped_neighbours_u += 1
                if edges1[(u, s)] != edges2[(v, mapping[s])]:
                    return False
        mapped_neighbours_v = (sum(inverse[p] >= 0 for p in set(preds2[v]))
                               + sum(inverse[s] >= 0 for s in set(succs2[v])))
        return mapped_neighbours_u == mapped_neighbours_v  # v has no extra mapped neighbours

    def candidates(u: int):
        return (v for v in by_colour[colour1[u]] if inverse[v] < 0)

    steps = 0
    stack = [candidates(order[0])]  # stack[k]: remaining candidates for order[k]
    while stack:
        u = order[len(stack) - 1]
        if mapping[u] >= 0:  # undo the previous choice for u
            inverse[mapping[u]], mapping[u] = -1, -1
        for v in stack[-1]:
            steps += 1
            if steps > max_steps:
                raise RuntimeError(f"isomorphism search gave up after {max_steps} steps: "
                                   "the graphs are too symmetric for this simple checker")
            if consistent(u, v):
                mapping[u], inverse[v] = v, u
                break
        if mapping[u] < 0:
            stack.pop()  # no candidate left: backtrack
            continue
        if len(stack) == n:
            return mapping
        stack.append(candidates(order[len(stack)]))
    return None


def is_isomorphic(g1: OpGraph, g2: OpGraph, match_shapes: bool = False) -> bool:
    """Same diagram: a bijection of nodes preserving op labels and directed edges."""
    return find_isomorphism(g1, g2, match_shapes=match_shapes) is not None


@dataclass
class GraphComparison:
    """What ``compare(a, b)`` found.

    ``same_op_multiset``: both graphs hold each op label equally often;
    ``op_count_differences``: label -> (count in a, count in b) where they
    differ.  ``isomorphic``: same diagram up to renaming nodes (op labels and
    directed edges preserved; shapes ignored).  ``flops``: total counted FLOPs
    (a, b).  ``edge_shape_differences``: for each kind of edge (source op,
    target op) whose tensor shapes differ, the sorted shapes in a and in b
    (an edge kind present in one graph only shows ``()`` for the other).
    """

    same_op_multiset: bool
    op_count_differences: dict[str, tuple[int, int]]
    isomorphic: bool
    flops: tuple[int, int]
    edge_shape_differences: dict[tuple[str, str], tuple[tuple, tuple]]

    def __str__(self) -> str:
        lines = [f"same op multiset: {self.same_op_multiset}",
                 f"isomorphic:       {self.isomorphic}",
                 f"FLOPs:            {self.flops[0]:,} vs {self.flops[1]:,}"]
        for op, (a, b) in sorted(self.op_count_differences.items()):
            lines.append(f"  op {op!r}: {a} vs {b}")
        for (source, target), (a, b) in sorted(self.edge_shape_differences.items()):
            shapes_a = ", ".join(map(_format_shape, a)) or "none"
            shapes_b = ", ".join(map(_format_shape, b)) or "none"
            lines.append(f"  edge {source} -> {target}: {shapes_a} vs {shapes_b}")
        return "\n".join(lines)


def _edge_shapes_by_kind(graph: OpGraph) -> dict[tuple[str, str], list]:
    shapes = defaultdict(list)
    for edge in graph.edges:
        shapes[(graph.nodes[edge.source].op, graph.nodes[edge.target].op)].append(edge.shape)
    return shapes


def compare(a: OpGraph, b: OpGraph) -> GraphComparison:
    """Compare two diagrams: op multisets, isomorphism, FLOPs and edge shapes."""
    counts_a, counts_b = a.op_counts(), b.op_counts()
    every_op = sorted(set(counts_a) | set(counts_b))
    op_differences = {op: (counts_a[op], counts_b[op]) for op in every_op
                      if counts_a[op] != counts_b[op]}
    shapes_a, shapes_b = _edge_shapes_by_kind(a), _edge_shapes_by_kind(b)
    shape_differences = {}
    for kind in sorted(set(shapes_a) | set(shapes_b)):
        sorted_a = tuple(sorted(shapes_a.get(kind, []), key=repr))
        sorted_b = tuple(sorted(shapes_b.get(kind, []), key=repr))
        if sorted_a != sorted_b:
            shape_differences[kind] = (sorted_a, sorted_b)
    return GraphComparison(
        same_op_multiset=not op_differences,
        op_count_differences=op_differences,
        isomorphic=is_isomorphic(a, b),
        flops=(a.total_flops(), b.total_flops()),
        edge_shape_differences=shape_differences,
    )


# ----------------------------------------------------------------------------
# drawing

_BOX_WIDTH, _BOX_HEIGHT = 0.84, 0.56  # in layout units: one lane wide, one layer tall
_LAYER_STRETCH = 1.6  # drawn sideways, a layer is this long: room for boxes as wide as their text
# Half the room an item takes across its layer, in lanes: neighbouring boxes sit one lane
# apart, a long edge passes 0.65 from a box's centre (clear of its half-width, 0.42), and
# two long edges run 0.3 apart.
_HALF_SPAN = {"node": 0.5, "via": 0.15}
_INCHES_PER_LANE, _INCHES_PER_LAYER = 1.65, 0.85
_MARGIN_INCHES = 0.6  # room for the title and legend
_BOX_PAD = 0.02  # a box's drawn border around its width and height (FancyBboxPatch pad)
_LABEL_FONTSIZES = (6.0, 5.0)  # an edge label's size, then a smaller one where crowded
_LABEL_PAD = 0.1  # an edge label's white background around its text, in font sizes
_COLOURS = {
    "boundary": "#d9d9d9",   # inputs and outputs
    "matmul": "#f4a582",     # nodes with counted (matrix-product) FLOPs
    "module": "#92c5de",     # other leaf modules (LayerNorm, GELU, ...)
    "other": "#f7f7f7",      # element-wise ops, reshapes, ...
}
_LEGEND = {"boundary": "input / output", "matmul": "matrix product (FLOPs counted)",
           "module": "other torch.nn layer", "other": "element-wise / reshape"}


def _category(node: OpNode) -> str:
    if node.op in (INPUT, OUTPUT):
        return "boundary"
    if node.flops:
        return "matmul"
    if node.kind == "call_module":
        return "module"
    return "other"


def _layered_layout(graph: OpGraph, sweeps: int = 4):
    """Sugiyama-style layout: layers by depth (parameter-only work just above
    its first user), long edges split into one-layer hops through
    virtual points, barycentre sweeps to reduce crossings, then coordinates
    across the layers that keep each long edge on a straight lane
    (``_coordinates``).

    Returns ``(positions, routes, n_layers, width)``: ``positions[node] =
    (x, layer)`` with ``x`` in lanes (one box plus a gap); ``routes[edge
    index]`` = the (x, layer) points an edge passes through, from its source
    to its target; ``width``: lanes from the leftmost to the rightmost point,
    plus one.
    """
    depth = graph.depths()
    order, incoming, outgoing = graph.topological_order(), graph.predecessors(), graph.successors()
    # Work on parameters alone (a parameter, its transpose) does not depend on the
    # inputs: place it just above its first user instead of in the top layer.
    from_inputs = [node.kind == "placeholder" for node in graph.nodes]
    for i in order:
        from_inputs[i] = from_inputs[i] or any(from_inputs[source] for source in incoming[i])
    if any(from_inputs):
        for i in reversed(order):
            if not from_inputs[i] and outgoing[i]:
                depth[i] = min(depth[user] for user in outgoing[i]) - 1
    n_layers = max(depth, default=0) + 1
    layers: list[list] = [[] for _ in range(n_layers)]  # items: ("node", i) or ("via", edge, layer)
    for i in range(len(graph.nodes)):
        layers[depth[i]].append(("node", i))
    chains = []  # per edge: the items it passes through
    for e, edge in enumerate(graph.edges):
        chain = [("node", edge.source)]
        for layer in range(depth[edge.source] + 1, depth[edge.target]):
            via = ("via", e, layer)
            layers[layer].append(via)
            chain.append(via)
        chains.append(chain + [("node", edge.target)])
    up, down = defaultdict(list), defaultdict(list)  # neighbours in the layer above / below
    for chain in chains:
        for upper, lower in zip(chain, chain[1:]):
            down[upper].append(lower)
            up[lower].append(upper)

    def reorder(layer_items, neighbours, position):
        def barycentre(item):
            linked = [position[other] for other in neighbours[item]]
            return sum(linked) / len(linked) if linked else position[item]
        return sorted(layer_items, key=barycentre)

    for _ in range(sweeps):
        for direction in (range(1, n_layers), range(n_layers - 2, -1, -1)):
            for layer in direction:
                position = {item: k for items in layers for k, item in enumerate(items)}
                layers[layer] = reorder(layers[layer], up if direction.step > 0 else down, position)

    x = _coordinates(layers, up, down)
    width = max(x.values(), default=0.0) - min(x.values(), default=0.0) + 1
    coordinate = {item: (x[item], layer) for layer, items in enumerate(layers) for item in items}
    positions = [coordinate[("node", i)] for i in range(len(graph.nodes))]
    routes = [[coordinate[item] for item in chain] for chain in chains]
    return positions, routes, n_layers, width


def _coordinates(layers: list[list], up: dict, down: dict) -> dict:
    """Positions across the layers (Brandes and Köpf, "Fast and simple
    horizontal coordinate assignment", Graph Drawing 2001).

    Each item is aligned with a median neighbour of its kind (box or virtual
    point) in the layer above into a vertical *block* that shares one
    coordinate (``_align``), blocks are packed
    as tightly as the order within the layers allows (``_pack``), and the
    result is balanced over the four ways of doing this (aligning with the
    layer above or below, packing to the left or to the right): an item gets
    the mean of its two middle coordinates.  Neighbouring items keep
    ``_HALF_SPAN`` apart.

    A link that crosses a long edge's *inner* link (between two of its virtual
    points) is never aligned, and two long edges never cross between their
    virtual points (the barycentre sweeps sort a virtual point by its one
    neighbour, so they keep the order of the layer before), so the virtual
    points of a long edge form one block in all four layouts: one straight
    lane, in their balance too.
    """
    position = {item: k for items in layers for k, item in enumerate(items)}
    if not position:
        return {}
    blocked = set()  # links crossing an inner link of a long edge
    for items in layers:
        links = [(upper, lower) for lower in items for upper in up[lower]]
        inner = [(u, v) for u, v in links if u[0] == v[0] == "via"]
        for u, v in links:
            crossed = ((position[u] - position[a]) * (position[v] - position[b]) < 0
                       for a, b in inner)
            if (u, v) not in inner and any(crossed):
                blocked.add(frozenset((u, v)))
    layouts = []  # (layout, the side it is packed to)
    for layer_order, neighbours in ((layers, up), (layers[::-1], down)):
        left = _pack(layer_order, _align(layer_order, neighbours, blocked))
        mirrored = [items[::-1] for items in layer_order]
        right = _pack(mirrored, _align(mirrored, neighbours, blocked))  # left in the mirror image
        layouts += [(left, min), ({item: -value for item, value in right.items()}, max)]
    # line each layout up with the narrowest one on the side it is packed to, then balance
    narrowest = min((x for x, _ in layouts), key=lambda x: max(x.values()) - min(x.values()))
    shifted = [(x, side(narrowest.values()) - side(x.values())) for x, side in layouts]
    return {item: sum(sorted(x[item] + shift for x, shift in shifted)[1:3]) / 2
            for item in position}


def _align(layers: list[list], neighbours: dict, blocked: set) -> dict:
    """Brandes-Köpf vertical alignment, from the first layer on and left to
    right within each: an item joins the block of its median neighbour in the
    layer before (of two medians the left one first) unless that link is
    ``blocked`` or would cross a link made before.  Returns each item's block,
    named by the block's first item."""
    block = {item: item for items in layers for item in items}
    position = {item: k for items in layers for k, item in enumerate(items)}
    for items in layers[1:]:
        last = -1  # position of the rightmost neighbour aligned with so far
        for item in items:
            # boxes line up with boxes and a long edge's points with each other,
            # so a long edge runs beside the boxes at its ends
            linked = sorted((other for other in neighbours[item] if other[0] == item[0]),
                            key=position.__getitem__)
            for median in linked[(len(linked) - 1) // 2: len(linked) // 2 + 1]:
                if frozenset((median, item)) not in blocked and position[median] > last:
                    block[item], last = block[median], position[median]
                    break
    return block


def _pack(layers: list[list], block: dict) -> dict:
    """Block coordinates as far left as the order allows: the longest path to
    each block over "left neighbour, at least this far" constraints.  Returns
    each item's coordinate (its block's)."""
    least = defaultdict(dict)  # least[left block][right block] = their least distance
    for items in layers:
        for left, right in zip(items, items[1:]):
            gaps = least[block[left]]
            gaps[block[right]] = max(gaps.get(block[right], 0.0),
                                     _HALF_SPAN[left[0]] + _HALF_SPAN[right[0]])
    waiting = Counter(right for gaps in least.values() for right in gaps)
    x = dict.fromkeys(block.values(), 0.0)
    ready = [b for b in x if not waiting[b]]
    while ready:
        left = ready.pop()
        for right, gap in least[left].items():
            x[right] = max(x[right], x[left] + gap)
            waiting[right] -= 1
            if not waiting[right]:
                ready.append(right)
    return {item: x[block[item]] for item in block}


class _Geometry(NamedTuple):
    """A diagram in axes coordinates: one box centre per node (``centres``),
    the ``box`` size (width, height), one ``paths[edge index]`` per edge from
    its source box's edge to its target box's edge, and the layout's extent
    (``n_layers``, ``width`` in lanes)."""

    centres: list[tuple[float, float]]
    box: tuple[float, float]
    paths: list[Path]
    n_layers: int
    width: float


def _geometry(graph: OpGraph, direction: str) -> _Geometry:
    """Lay ``graph`` out and route its edges for ``direction`` ("down" or "right")."""
    if direction not in ("down", "right"):
        raise ValueError(f"direction must be 'down' or 'right', got {direction!r}")
    positions, routes, n_layers, width = _layered_layout(graph)
    if direction == "down":
        box, reach = (_BOX_WIDTH, _BOX_HEIGHT), _BOX_HEIGHT / 2

        def to_xy(x: float, layer: float):
            return x, -layer
    else:  # a layer is _LAYER_STRETCH units long, room for boxes as wide as their text
        box, reach = (_BOX_WIDTH * _LAYER_STRETCH, _BOX_HEIGHT), _BOX_WIDTH / 2

        def to_xy(x: float, layer: float):
            return layer * _LAYER_STRETCH, -x
    paths = [_edge_path(route, to_xy, reach) for route in routes]
    return _Geometry([to_xy(*position) for position in positions], box, paths, n_layers, width)


def _edge_path(route: list[tuple[float, float]], to_xy, reach: float) -> Path:
    """One smooth path along ``route`` (its (x, layer) points, one per layer).

    It leaves the source box on its far side, crosses each gap between two
    layers as an S-shaped cubic Bézier curve (parallel to the layer axis at
    both ends, so it stays inside the gap and joins the next piece smoothly),
    runs straight through each layer it passes (``reach`` layers either side
    of the layer's middle, as far as the boxes reach) and ends on the near
    side of the target box.
    """
    vertices, codes = [to_xy(route[0][0], route[0][1] + reach)], [Path.MOVETO]
    for k, ((x0, layer0), (x1, layer1)) in enumerate(zip(route, route[1:])):
        middle = (layer0 + layer1) / 2
        vertices += [to_xy(x0, middle), to_xy(x1, middle), to_xy(x1, layer1 - reach)]
        codes += [Path.CURVE4] * 3
        if k < len(route) - 2:  # a virtual point: straight on through its layer
            vertices.append(to_xy(x1, layer1 + reach))
            codes.append(Path.LINETO)
    return Path(vertices, codes)


def draw(graph: OpGraph, ax=None, direction: str = "down", show_flops: bool = True,
         title: str | None = None):
    """Draw ``graph`` as a layered diagram; returns the matplotlib Figure.

    ``direction``: "down" (inputs at the top) or "right" (inputs at the left).
    Without ``ax`` the figure size follows the number of layers and the width
    of the layout, so each box keeps a readable size.  Boxes show the op
    label, the node name and (``show_flops``) its FLOPs; edges show tensor
    shapes (a tuple of equal shapes as "3 × (2, 5, 12)"), each label placed
    along its own edge where it overlaps no other label (``_place_labels``).
    Each box is a ``FancyBboxPatch`` with ``gid = "node:<name>"``, each edge
    label a ``Text`` with ``gid = "edge:<index>"``.

    Labels are placed for the axes as they are when ``draw`` returns: resizing
    the axes afterwards (``tight_layout`` on a grid of them) changes how much
    room a label takes, in the diagram's coordinates.
    """
    geometry = _geometry(graph, direction)
    if ax is None:
        across = geometry.width * _INCHES_PER_LANE + 0.5
        along = geometry.n_layers * _INCHES_PER_LAYER + 2 * _MARGIN_INCHES
        if direction == "down":
            fig, ax = plt.subplots(figsize=(across, along))
            fig.subplots_adjust(left=0.01, right=0.99, bottom=_MARGIN_INCHES / along,
                                top=1 - _MARGIN_INCHES / along)
        else:
            fig, ax = plt.subplots(figsize=(along * _LAYER_STRETCH,
                                            across * 0.7 + 2 * _MARGIN_INCHES))
    else:
        fig = ax.figure
    box_w, box_h = geometry.box

    every_point = [tuple(vertex) for path in geometry.paths for vertex in path.vertices]
    every_point += geometry.centres or [(0.0, 0.0)]
    xs, ys = zip(*every_point)
    ax.set_xlim(min(xs) - box_w, max(xs) + box_w)
    ax.set_ylim(min(ys) - box_h * 1.5, max(ys) + box_h * 1.5)
    ax.set_aspect("auto")
    ax.axis("off")

    for path in geometry.paths:
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=10,
                                     color="#555555", linewidth=0.8, zorder=1))
    _place_labels(ax, graph, geometry)

    for node, (x, y) in zip(graph.nodes, geometry.centres):
        box = FancyBboxPatch((x - box_w / 2, y - box_h / 2), box_w, box_h,
                             boxstyle=f"round,pad={_BOX_PAD},rounding_size=0.08",
                             facecolor=_COLOURS[_category(node)], edgecolor="#333333",
                             linewidth=0.8, zorder=3)
        box.set_gid(f"node:{node.name}")
        ax.add_patch(box)
        details = node.name if node.name != node.op else ""
        if show_flops and node.flops:
            details = f"{details}\n{_format_count(node.flops)} FLOPs".strip()
        ax.text(x, y + (0.1 if details else 0), node.op, fontsize=8.5, fontweight="bold",
                ha="center", va="center", zorder=4)
        if details:
            ax.text(x, y - 0.1, details, fontsize=6, ha="center", va="center",
                    color="#333333", zorder=4, linespacing=1.1)

    handles = [Patch(facecolor=_COLOURS[c], edgecolor="#333333", label=_LEGEND[c])
               for c in _COLOURS if any(_category(node) == c for node in graph.nodes)]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=6,
              frameon=False, borderaxespad=0.1)
    ax.set_title(title if title is not None else
                 f"{len(graph.nodes)} ops, {len(graph.edges)} tensors, "
                 f"{_format_count(graph.total_flops())} FLOPs", fontsize=9, loc="right")
    return fig


def _edge_label(shape) -> str:
    """The text on an edge: its tensor's shape, a tuple of equal shapes as "3 × (2, 5, 12)"."""
    if (shape is not None and len(shape) > 1 and not all(isinstance(s, int) for s in shape)
            and all(part == shape[0] for part in shape)):
        return f"{len(shape)} × {_format_shape(shape[0])}"
    return _format_shape(shape)


def _renderer(fig):
    """The figure's renderer, to measure text before the figure is drawn."""
    get = getattr(fig.canvas, "get_renderer", None)
    return get() if get is not None else fig._get_renderer()


def _overlap(rect, others: np.ndarray) -> np.ndarray:
    """Areas of overlap of ``rect`` (x0, y0, x1, y1) with each row of ``others`` (n, 4)."""
    if not len(others):
        return np.zeros(0)
    width = np.minimum(rect[2], others[:, 2]) - np.maximum(rect[0], others[:, 0])
    height = np.minimum(rect[3], others[:, 3]) - np.maximum(rect[1], others[:, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def _label_candidates(path: Path, per_piece: int = 9):
    """Points along ``path`` where its label may sit, each with a preference (lower is
    better): the middle of the first piece (the gap below the source) first, then on
    along the edge, piece by piece."""
    points, preference = [], []
    t = np.linspace(0.1, 0.9, per_piece)
    for k, (piece, _) in enumerate(path.iter_bezier()):
        points.append(piece(t))
        preference.append(k + np.abs(t - 0.5))
    return np.concatenate(points), np.concatenate(preference)


def _place_labels(ax, graph: OpGraph, geometry: _Geometry) -> list:
    """Put each edge's shape label on its own edge, greedily, where it overlaps nothing.

    Edges with the fewest places to go (short edges) are labelled first.  Each
    label tries points along its edge's path (``_label_candidates``) and takes
    the one of least cost: overlapping a label placed before costs most, then
    overlapping a box or leaving the axes, then covering another edge (a label's
    white background hides the line under it), then the distance from the
    preferred spot in the gap below the source.  A label may also stand
    upright, at a small cost: drawn to the right, the gaps between layers are
    narrower than a label is long.  A label that cannot avoid every other
    label at the usual font size tries a smaller one.  Text sizes are measured
    with the figure's renderer in the axes' current scale.  Returns the labels
    (``Text``, ``gid = "edge:<index>"``).
    """
    fig = ax.figure
    renderer = _renderer(fig)
    origin, unit = ax.transData.transform([(0.0, 0.0), (1.0, 1.0)])
    scale = np.abs(unit - origin)  # pixels per data unit, along x and y
    gap = 1.0 * fig.dpi / 72 / scale  # a point of air around a label, in data units
    box_w, box_h = geometry.box
    boxes = np.array([(x - box_w / 2 - _BOX_PAD, y - box_h / 2 - _BOX_PAD,
                       x + box_w / 2 + _BOX_PAD, y + box_h / 2 + _BOX_PAD)
                      for x, y in geometry.centres]).reshape(-1, 4)
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    limits_area = (x_high - x_low) * (y_high - y_low)
    sampled = [np.concatenate([piece(np.linspace(0, 1, 24)) for piece, _ in path.iter_bezier()])
               for path in geometry.paths]  # points along every edge, and whose they are
    line_points = np.concatenate(sampled) if sampled else np.zeros((0, 2))
    line_owner = np.repeat(np.arange(len(sampled)), [len(points) for points in sampled])

    def size_of(text: str, fontsize: float) -> np.ndarray:
        probe = ax.text(0, 0, text, fontsize=fontsize)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        pad = 2 * _LABEL_PAD * fontsize * fig.dpi / 72  # the background's pad, both sides
        return np.array([extent.width + pad, extent.height + pad]) / scale

    def cost(e: int, rect, preference: float) -> tuple[float, bool]:
        area = (rect[2] - rect[0]) * (rect[3] - rect[1])
        spaced = (rect[0] - gap[0], rect[1] - gap[1], rect[2] + gap[0], rect[3] + gap[1])
        on_labels = _overlap(spaced, placed_rects).sum() / area
        # near another label: which label belongs to which line is then hard to tell
        height = rect[3] - rect[1]
        around = (rect[0] - height, rect[1] - height, rect[2] + height, rect[3] + height)
        near_labels = _overlap(around, placed_rects).sum() / area
        on_boxes = _overlap(spaced, boxes).sum() / area
        inside = _overlap(rect, np.array([(x_low, y_low, x_high, y_high)]))[0]
        outside = 1 - inside / area if limits_area else 0.0
        covered = ((line_points[:, 0] > rect[0]) & (line_points[:, 0] < rect[2])
                   & (line_points[:, 1] > rect[1]) & (line_points[:, 1] < rect[3]))
        crossed = len(set(line_owner[covered].tolist()) - {e})  # other edges under the label
        return (1000 * on_labels + 100 * (on_boxes + outside) + crossed + near_labels
                + 0.1 * preference), on_labels > 0

    labelled = [e for e, edge in enumerate(graph.edges) if edge.shape is not None]
    candidates = {e: _label_candidates(geometry.paths[e]) for e in labelled}
    labelled.sort(key=lambda e: (len(candidates[e][0]), e))
    placed_rects = np.zeros((0, 4))
    texts = []
    for e in labelled:
        text = _edge_label(graph.edges[e].shape)
        points, preferences = candidates[e]
        for fontsize in _LABEL_FONTSIZES:
            size = size_of(text, fontsize)
            scored = []
            # level, or upright: across a gap too narrow for the text (drawn to the right)
            for rotated, half in ((False, size / 2), (True, size[::-1] / 2)):
                scored += [(cost(e, (x - half[0], y - half[1], x + half[0], y + half[1]),
                                 p + 30 * rotated), rotated, k)
                           for k, ((x, y), p) in enumerate(zip(points, preferences))]
            (_, crowded), rotated, best = min(scored)
            if not crowded:
                break
        x, y = points[best]
        half = (size[::-1] if rotated else size) / 2
        placed_rects = np.vstack([placed_rects,
                                  (x - half[0], y - half[1], x + half[0], y + half[1])])
        label = ax.text(x, y, text, fontsize=fontsize, ha="center", va="center",
                        rotation=90 if rotated else 0, color="#333333", zorder=2,
                        bbox=dict(boxstyle=f"round,pad={_LABEL_PAD}", facecolor="white",
                                  edgecolor="none"))
        label.set_gid(f"edge:{e}")
        texts.append(label)
    return texts


def _format_count(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)
