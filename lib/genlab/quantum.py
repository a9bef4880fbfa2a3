"""Quantum-style orthogonal layers and orthogonal attention, simulated exactly.

Cherrat et al., "Quantum Vision Transformers" (arXiv:2209.08167, Quantum 8,
1265, 2024) build attention from circuits of two-qubit **RBS gates**
(reconfigurable beam splitters).  This module simulates those circuits
classically and exactly, with ordinary tensors, and checks the simulation
against a brute-force state-vector simulation for a few qubits.

**Unary (amplitude) encoding.**  A vector x in R^n lives on n qubits
("wires") as sum_i x_i |e_i>, where |e_i> has a single 1 on wire i (Hamming
weight 1).  An RBS gate on wires (i, j) with angle theta leaves |00> and |11>
alone and rotates the pair (|10>, |01>) (a 1 on wire i, resp. on wire j):

    RBS(theta) |10> = cos(theta) |10> + sin(theta) |01>
    RBS(theta) |01> = -sin(theta) |10> + cos(theta) |01>

so on unary states it is the Givens rotation G(i, j, theta) of R^n: e_i ->
cos e_i + sin e_j, e_j -> -sin e_i + cos e_j.  A circuit of RBS gates keeps
the number of 1s fixed and acts on unary states as the product of its Givens
rotations, an orthogonal n x n matrix W = G_last ... G_first: an
**orthogonal layer** whose parameters are the gate angles.

**Layouts** (which wires each gate couples, time step by time step; gates in a
step touch disjoint wires and run in parallel, "depth" = number of steps):

- ``pyramid``: nearest-neighbour gates (i, i+1); gate (i, i+1) acts at times
  i, i+2, ..., 2n-4-i.  n(n-1)/2 parameters, depth 2n-3.  Any orthogonal
  matrix of determinant 1 is reachable.
- ``x``: two diagonals of nearest-neighbour gates forming an X.  Diagonal A
  runs gate (k, k+1) at time k, diagonal B runs gate (k, k+1) at time
  n-2-k.  Even n: the diagonals cross at one shared gate (k = n/2 - 1):
  2n-3 parameters, depth n-1.  **Odd n** (our rule): the diagonals would
  collide around the central wire m = (n-1)/2, so B's central gate (m, m+1)
  is merged into A's gate (m, m+1) at time m, and B's gates on the low wires
  (k < m) run one step later (time n-1-k): still 2n-3 parameters, depth n.
- ``butterfly``: n a power of two; log2(n) steps, step s couples wires
  (i, i + n/2^(s+1)) for every i whose bit n/2^(s+1) is 0 (strides n/2,
  n/4, ..., 1, as in the FFT).  (n/2) log2(n) parameters, depth log2(n).

**Higher Hamming weights and compound matrices.**  On states with k ones the
same circuit acts as the k-th compound matrix C_k(W), whose entries are the
k x k minors of W (rows and columns indexed by k-subsets in lexicographic
order; basis state "ones on wires a < b" <-> e_a ^ e_b).  This holds gate by
gate when no wire lies *between* the two wires of a gate, i.e. for the
nearest-neighbour pyramid and X layouts.  The butterfly couples distant
wires: a wedge product e_i ^ e_m turned into e_j ^ e_m with i < m < j must be
reordered to -(e_m ^ e_j), a sign the plain RBS gate does not produce.
**Sign convention for the butterfly:** its gates are taken as fermionic beam
splitters (FBS), RBS gates whose sine terms carry the sign (-1)^(number of 1s
on the wires strictly between i and j) (the Jordan-Wigner sign).  For
nearest-neighbour gates FBS = RBS; with FBS gates every layout's weight-k
block is exactly C_k(W).  With plain RBS gates the butterfly's weight-2 block
differs from C_2(W) in sign, and no choice of signs of the weight-2 basis
states repairs it (``tests/test_quantum.py`` checks both claims for n = 4).
The weight-1 block (W itself) is the same for RBS and FBS.  ``CompoundLayer``
is an orthogonal layer acting on the weight-2 (or weight-k) subspace: the
same angles, x @ C_k(W)^T on vectors of dimension C(n, k).

**Brute force.**  ``rbs_unitary`` builds one gate as a 2^n x 2^n matrix
(wire 0 is the most significant qubit), ``circuit_unitary`` multiplies a
circuit's gates in order, and ``hamming_weight_block`` cuts out the block of
basis states with k ones; the tests compare these blocks with W and C_k(W).

**Data loader.**  ``vector_loader_angles`` computes the n-1 angles of the
"diagonal" loader: start in |e_0> and apply RBS(theta_k) on wires (k, k+1)
for k = 0..n-2.  The amplitudes are hyperspherical coordinates,
x_k = cos(theta_k) prod_{l<k} sin(theta_l) and x_{n-1} = prod_l sin(theta_l),
so the circuit loads x/||x|| (the norm is kept classically).
``load_vector`` computes the loaded vector from the angles.

**Orthogonal attention** (the "quantum orthogonal transformer" idea): the
attention score of patch i for patch j is the overlap of x_i with x_j after
an orthogonal layer W, A_ij = x_i^T W x_j (on hardware: load x_j, apply W,
un-load x_i; we use the signed bilinear form, norms restored, not its square),
scaled by 1/sqrt(n) as in dot-product attention; rows go through a softmax
over j; values go through a second orthogonal layer V:

    output_i = sum_j softmax_j(x_i^T W x_j / sqrt(n)) (V x_j)

This is ``genlab.attention.scaled_dot_product_attention`` with queries x,
keys W x and values V x; it costs 2 x (parameters of one layout) instead of
the 4 n^2 + 4 n of classical attention's four projections.

Everything is differentiable, runs on any device and dtype (use float64 to
see orthogonality to 1e-10), and takes a ``torch.Generator`` for its
initial angles.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn

from genlab.attention import scaled_dot_product_attention

__all__ = [
    "LAYOUTS",
    "pyramid_gates",
    "x_gates",
    "butterfly_gates",
    "layout_gates",
    "circuit_matrix",
    "OrthogonalLayer",
    "vector_loader_angles",
    "load_vector",
    "loader_gates",
    "OrthogonalAttention",
    "hamming_weight_basis",
    "compound_matrix",
    "CompoundLayer",
    "rbs_unitary",
    "circuit_unitary",
    "hamming_weight_block",
]

LAYOUTS = ("pyramid", "x", "butterfly")

Gate = tuple[int, int]  # (i, j), i < j: the two wires of an RBS gate


# ----------------------------------------------------------------------------
# layouts: which wires each gate couples, per time step


def pyramid_gates(n: int) -> list[list[Gate]]:
    """Gate (i, i+1) at times i, i+2, ..., 2n-4-i: n(n-1)/2 gates in 2n-3 steps."""
    _check_wires(n)
    return [[(i, i + 1) for i in range(n - 1) if i <= t <= 2 * n - 4 - i and (t - i) % 2 == 0]
            for t in range(2 * n - 3)]


def x_gates(n: int) -> list[list[Gate]]:
    """Two crossing diagonals of nearest-neighbour gates: 2n-3 gates;
    depth n-1 for even n, n for odd n (rule in the module docstring)."""
    _check_wires(n)
    depth = n - 1 if n % 2 == 0 else n
    steps: list[set[Gate]] = [set() for _ in range(depth)]
    centre = (n - 1) // 2  # odd n: the central wire
    for k in range(n - 1):
        steps[k].add((k, k + 1))  # diagonal A
        if n % 2 == 0:
            steps[n - 2 - k].add((k, k + 1))  # diagonal B (the shared gate is added once)
        elif k > centre:
            steps[n - 2 - k].add((k, k + 1))
        elif k < centre:
            steps[n - 1 - k].add((k, k + 1))  # delayed one step past the crossing
        # odd n, k == centre: B's central gate is A's gate (centre, centre+1) at time centre
    return [sorted(step) for step in steps]


def butterfly_gates(n: int) -> list[list[Gate]]:
    """Strides n/2, n/4, ..., 1: (n/2) log2 n gates in log2 n steps (n a power of two)."""
    _check_wires(n)
    if n & (n - 1):
        raise ValueError(f"the butterfly layout needs n a power of two, got n={n}")
    steps = []
    stride = n // 2
    while stride >= 1:
        steps.append([(i, i + stride) for i in range(n) if not i & stride])
        stride //= 2
    return steps


_LAYOUT_BUILDERS = {"pyramid": pyramid_gates, "x": x_gates, "butterfly": butterfly_gates}


def layout_gates(n: int, layout: str) -> list[list[Gate]]:
    """The gates of ``layout`` on n wires, as a list of time steps."""
    if layout not in _LAYOUT_BUILDERS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return _LAYOUT_BUILDERS[layout](n)


def _check_wires(n: int) -> None:
    if n < 2:
        raise ValueError(f"an orthogonal layer needs at least 2 wires, got n={n}")


# ----------------------------------------------------------------------------
# applying a circuit, one time step at a time
#
# The gates of one time step touch disjoint wires, so the step rotates the
# pairs (x_i, x_j) of all its gates at once: one index_select gathers them,
# the Givens formula rotates them, one index_copy writes them back; a Python
# loop runs over the time steps, never over the gates.  Nothing of size n x n
# is stored: the layout is one index tensor of 2 * n_gates wires, and autograd
# keeps the pairs of every step before and after their rotation, a few numbers
# per gate and vector (..., 6 * n_gates) instead of a (depth, n, n) tensor.


def _circuit_wires(steps: list[list[Gate]], device=None) -> torch.Tensor:
    """The wires of every gate, (2 * n_gates,): step by step, the i of each of
    the step's gates, then the j of each, gates in circuit order."""
    wires = [wire for step in steps for wire in [i for i, _ in step] + [j for _, j in step]]
    return torch.tensor(wires, dtype=torch.long, device=device)


def _apply_circuit(x: torch.Tensor, wires: torch.Tensor, step_sizes: list[int],
                   angles: torch.Tensor) -> torch.Tensor:
    """G_last ... G_first applied to every vector of x (..., n): (..., n).

    ``wires`` as from ``_circuit_wires``; ``step_sizes``: gates per time step;
    ``angles`` (n_gates,) in circuit order.
    """
    # G e_i = cos e_i + sin e_j and G e_j = -sin e_i + cos e_j, so a gate maps
    # (x_i, x_j) to cos (x_i, x_j) + (-sin, sin) (x_j, x_i)
    sin = torch.sin(angles)  # (n_gates,)
    cos = torch.cos(angles).split(step_sizes)  # per step: (g,)
    signed_sin = torch.stack([-sin, sin]).split(step_sizes, dim=-1)  # per step: (2, g)
    step_wires = wires.split([2 * size for size in step_sizes])  # per step: (2g,)
    for c, s, wires_now in zip(cos, signed_sin, step_wires):
        pairs = x.index_select(-1, wires_now).unflatten(-1, (2, c.numel()))  # (..., 2, g)
        rotated = c * pairs + s * pairs.flip(-2)  # (..., 2, g): new x_i's, new x_j's
        x = x.index_copy(-1, wires_now, rotated.flatten(-2))  # (..., n)
    return x


def circuit_matrix(n: int, steps: list[list[Gate]], angles: torch.Tensor) -> torch.Tensor:
    """The orthogonal matrix (n, n) of RBS gates ``steps`` with ``angles`` (n_gates,)
    in circuit order: W = G_last ... G_first, W e_i = the circuit applied to |e_i>."""
    n_gates = sum(len(step) for step in steps)
    if angles.shape != (n_gates,):
        raise ValueError(f"expected {n_gates} angles, got shape {tuple(angles.shape)}")
    return _circuit_matrix(n, _circuit_wires(steps, device=angles.device),
                           [len(step) for step in steps], angles)


def _circuit_matrix(n: int, wires: torch.Tensor, step_sizes: list[int],
                    angles: torch.Tensor) -> torch.Tensor:
    """W (n, n): the circuit applied to the n unit vectors (``_apply_circuit``'s arguments)."""
    identity = torch.eye(n, dtype=angles.dtype, device=angles.device)
    rows = _apply_circuit(identity, wires, step_sizes, angles)  # row i: W e_i
    return rows.T  # (n, n)


class OrthogonalLayer(nn.Module):
    """An orthogonal n x n matrix W made of RBS gates in one of ``LAYOUTS``.

    ``matrix()`` -> W (n, n); ``forward(x)`` = x @ W^T for x (..., n), i.e.
    W applied to every vector.  ``gates``: the (i, j) pairs per time step;
    ``n_parameters`` (one angle per gate), ``depth`` (time steps).  Initial
    angles are uniform in [-pi, pi), drawn from ``generator``.
    """

    def __init__(self, n: int, layout: str = "butterfly", generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.n = n
        self.layout = layout
        self.gates = layout_gates(n, layout)  # list of steps, each a list of (i, j)
        n_gates = sum(len(step) for step in self.gates)
        initial = (torch.rand(n_gates, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
        dtype = dtype or torch.get_default_dtype()
        self.angles = nn.Parameter(initial.to(device=device, dtype=dtype))
        self._step_sizes = [len(step) for step in self.gates]
        self.register_buffer("_wires", _circuit_wires(self.gates, device=device), persistent=False)

    @property
    def n_parameters(self) -> int:
        return self.angles.numel()

    @property
    def depth(self) -> int:
        return len(self.gates)

    @property
    def gate_sequence(self) -> list[Gate]:
        """All gates in circuit order; gate g has angle ``angles[g]``."""
        return [gate for step in self.gates for gate in step]

    def matrix(self) -> torch.Tensor:
        """W (n, n): column i is the circuit's output on the unary state |e_i>."""
        return _circuit_matrix(self.n, self._wires, self._step_sizes, self.angles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T for x (..., n).

        At most n vectors: the gates act on x itself and W is never formed
        (autograd keeps a few numbers per gate and vector).  More than n
        vectors: the gates act on the n unit vectors instead (``matrix()``)
        and W multiplies x, which moves fewer numbers through the gates.
        """
        if x.numel() > self.n * self.n:  # more vectors than wires
            return x @ self.matrix().T  # (..., n)
        return _apply_circuit(x, self._wires, self._step_sizes, self.angles)  # (..., n)

    def extra_repr(self) -> str:
        return (f"n={self.n}, layout={self.layout!r}, parameters={self.n_parameters}, "
                f"depth={self.depth}")


# ----------------------------------------------------------------------------
# the unary vector loader


def loader_gates(n: int) -> list[list[Gate]]:
    """The diagonal loader: RBS on (k, k+1) at step k, k = 0..n-2 (start in |e_0>)."""
    _check_wires(n)
    return [[(k, k + 1)] for k in range(n - 1)]


def vector_loader_angles(x: torch.Tensor) -> torch.Tensor:
    """Angles (..., n-1) of the diagonal loader that loads x / ||x||, x (..., n).

    theta_k = atan2(||x_{k+1:}||, x_k) in [0, pi] for k < n-2, so sin >= 0
    passes the remaining norm on and cos carries x_k's sign; the last angle
    theta_{n-2} = atan2(x_{n-1}, x_{n-2}) in (-pi, pi] also fixes the sign of
    the last entry.  A zero vector gets all-zero angles (it loads e_0).
    """
    if x.size(-1) < 2:
        raise ValueError(f"the loader needs vectors of at least 2 entries, "
                         f"got shape {tuple(x.shape)}")
    # tail_norms[..., k] = ||x_{k:}||, for k = 1..n-1
    tail_norms = x.flip(-1).square().cumsum(-1).sqrt().flip(-1)[..., 1:]  # (..., n-1)
    angles = torch.atan2(tail_norms[..., :-1], x[..., :-2])  # (..., n-2)
    last = torch.atan2(x[..., -1:], x[..., -2:-1])  # (..., 1)
    return torch.cat([angles, last], dim=-1)  # (..., n-1)


def load_vector(angles: torch.Tensor) -> torch.Tensor:
    """The unit vector (..., n) that the diagonal loader with ``angles`` (..., n-1) loads."""
    cos, sin = torch.cos(angles), torch.sin(angles)  # (..., n-1)
    sines_so_far = torch.cumprod(sin, dim=-1)  # (..., n-1): prod_{l<=k} sin(theta_l)
    carried = torch.cat([torch.ones_like(sin[..., :1]), sines_so_far], dim=-1)  # (..., n)
    kept = torch.cat([cos, torch.ones_like(cos[..., :1])], dim=-1)  # (..., n)
    return carried * kept  # x_k = cos(theta_k) * prod_{l<k} sin(theta_l)


# ----------------------------------------------------------------------------
# orthogonal attention


class OrthogonalAttention(nn.Module):
    """output_i = sum_j softmax_j(x_i^T W x_j / sqrt(n)) (V x_j), W and V orthogonal layers.

    x (B, T, n) -> (B, T, n), or ``(output, weights (B, T, T))`` with
    ``need_weights``.  Masks as in ``genlab.attention`` (bool, True = may
    attend).  ``n_parameters`` = parameters of W plus those of V.
    """

    def __init__(self, n: int, layout: str = "butterfly", generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.score_layer = OrthogonalLayer(n, layout, generator, dtype, device)  # W
        self.value_layer = OrthogonalLayer(n, layout, generator, dtype, device)  # V

    @property
    def n_parameters(self) -> int:
        return self.score_layer.n_parameters + self.value_layer.n_parameters

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, need_weights: bool = False):
        keys = self.score_layer(x)  # (B, T, n): row j is W x_j, so x_i . (W x_j) = A_ij
        values = self.value_layer(x)  # (B, T, n): row j is V x_j
        output, weights = scaled_dot_product_attention(
            x, keys, values, attn_mask=attn_mask, is_causal=is_causal
        )  # (B, T, n), (B, T, T)
        return (output, weights) if need_weights else output


# ----------------------------------------------------------------------------
# compound matrices: the Hamming-weight-k subspace


def hamming_weight_basis(n: int, k: int) -> list[tuple[int, ...]]:
    """The k-subsets of n wires in lexicographic order: the basis of weight-k states."""
    return list(itertools.combinations(range(n), k))


def compound_matrix(W: torch.Tensor, k: int = 2) -> torch.Tensor:
    """The k-th compound matrix of W (..., n, n): (..., C(n,k), C(n,k)).

    Entry (I, J) is det W[I, J], the minor on rows I and columns J (k-subsets
    in ``hamming_weight_basis`` order).  C_k(AB) = C_k(A) C_k(B) (Cauchy-Binet),
    so the compound of an orthogonal matrix is orthogonal.
    """
    n = W.size(-1)
    if W.size(-2) != n or not 1 <= k <= n:
        raise ValueError(f"compound_matrix needs a square (..., n, n) matrix and 1 <= k <= n; "
                         f"got shape {tuple(W.shape)} and k={k}")
    subsets = torch.tensor(hamming_weight_basis(n, k), device=W.device)  # (P, k)
    rows = subsets[:, None, :, None]  # (P, 1, k, 1)
    cols = subsets[None, :, None, :]  # (1, P, 1, k)
    minors = W[..., rows, cols]  # (..., P, P, k, k)
    return torch.linalg.det(minors)  # (..., P, P)


class CompoundLayer(nn.Module):
    """An orthogonal layer acting on the Hamming-weight-k subspace: x @ C_k(W)^T.

    x (..., C(n,k)) holds amplitudes of the weight-k basis states (k-subsets of
    n wires, lexicographic).  The same ``n_parameters`` angles as the
    ``OrthogonalLayer`` now act on a C(n,k)-dimensional space.
    """

    def __init__(self, n: int, layout: str = "pyramid", k: int = 2,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device=None):
        super().__init__()
        self.k = k
        self.orthogonal = OrthogonalLayer(n, layout, generator, dtype, device)

    @property
    def n_parameters(self) -> int:
        return self.orthogonal.n_parameters

    @property
    def dim(self) -> int:
        return math.comb(self.orthogonal.n, self.k)

    def matrix(self) -> torch.Tensor:
        return compound_matrix(self.orthogonal.matrix(), self.k)  # (C(n,k), C(n,k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix().T  # (..., C(n,k))


# ----------------------------------------------------------------------------
# brute force: the full 2^n state vector, on the CPU (n <= ~10)


def _basis_index(wires, n_wires: int) -> int:
    """Index of the computational basis state with 1s on ``wires``; wire 0 is the
    most significant bit (|q_0 q_1 ... q_{n-1}>)."""
    return sum(1 << (n_wires - 1 - wire) for wire in wires)


def rbs_unitary(n_wires: int, i: int, j: int, theta: float | torch.Tensor,
                fermionic: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 2^n x 2^n matrix of RBS(theta) on wires i < j (identity elsewhere).

    ``fermionic=True`` gives the FBS gate: the sine terms of a basis state get
    the sign (-1)^(number of 1s on wires strictly between i and j).
    """
    if not 0 <= i < j < n_wires:
        raise ValueError(f"need 0 <= i < j < n_wires, got i={i}, j={j}, n_wires={n_wires}")
    cos, sin = math.cos(float(theta)), math.sin(float(theta))
    dim = 1 << n_wires
    unitary = torch.eye(dim, dtype=dtype)
    bit_i, bit_j = 1 << (n_wires - 1 - i), 1 << (n_wires - 1 - j)
    between = sum(1 << (n_wires - 1 - m) for m in range(i + 1, j))
    for state in range(dim):
        if state & bit_i and not state & bit_j:  # |..1_i..0_j..>
            partner = state ^ bit_i ^ bit_j  # |..0_i..1_j..>
            sign = -1.0 if fermionic and bin(state & between).count("1") % 2 else 1.0
            unitary[state, state] = cos
            unitary[partner, state] = sign * sin  # |1_i 0_j> -> cos |1_i 0_j> + sin |0_i 1_j>
            unitary[state, partner] = -sign * sin  # |0_i 1_j> -> -sin |1_i 0_j> + cos |0_i 1_j>
            unitary[partner, partner] = cos
    return unitary


def circuit_unitary(n_wires: int, gates: list[Gate], angles, fermionic: bool = False,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """U = U_last ... U_first for RBS (or FBS) gates in circuit order: (2^n, 2^n)."""
    if len(gates) != len(angles):
        raise ValueError(f"got {len(gates)} gates but {len(angles)} angles")
    unitary = torch.eye(1 << n_wires, dtype=dtype)
    for (i, j), theta in zip(gates, angles):
        unitary = rbs_unitary(n_wires, i, j, theta, fermionic, dtype) @ unitary
    return unitary


def hamming_weight_block(unitary: torch.Tensor, n_wires: int, k: int) -> torch.Tensor:
    """The block of ``unitary`` on basis states with k ones: (C(n,k), C(n,k)),
    ordered like ``hamming_weight_basis`` (for k = 1: wire 0, 1, ..., n-1)."""
    index = torch.tensor([_basis_index(subset, n_wires)
                          for subset in hamming_weight_basis(n_wires, k)])  # (C(n,k),)
    return unitary[index][:, index]
