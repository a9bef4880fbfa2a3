"""genlab.quantum: RBS-gate orthogonal layers against a brute-force state-vector
simulation, the vector loader, compound matrices, orthogonal attention, and a
quick run of the qvit_digits experiment."""

import itertools
import math

import pytest
import torch

from genlab.experiments import qvit_digits
from genlab.quantum import (
    LAYOUTS,
    CompoundLayer,
    OrthogonalAttention,
    OrthogonalLayer,
    circuit_matrix,
    circuit_unitary,
    compound_matrix,
    hamming_weight_basis,
    hamming_weight_block,
    layout_gates,
    load_vector,
    loader_gates,
    vector_loader_angles,
)

F64 = torch.float64


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def sizes(layout, up_to):
    """Valid wire counts for ``layout``: powers of two for the butterfly."""
    if layout == "butterfly":
        return [n for n in (2, 4, 8, 16, 32) if n <= up_to]
    return list(range(2, up_to + 1))


LAYOUT_SIZES = [(layout, n) for layout in LAYOUTS for n in sizes(layout, 16)]
SMALL = [(layout, n) for layout in LAYOUTS for n in sizes(layout, 6)]  # brute force: 2^n <= 64


def layer(n, layout, seed=0):
    return OrthogonalLayer(n, layout, generator=generator(seed), dtype=F64)


# ----------------------------------------------------------------------------
# layouts


@pytest.mark.parametrize("n", range(2, 12))
def test_pyramid_and_x_counts(n):
    pyramid, x = layer(n, "pyramid"), layer(n, "x")
    assert (pyramid.n_parameters, pyramid.depth) == (n * (n - 1) // 2, 2 * n - 3)
    assert x.n_parameters == 2 * n - 3
    assert x.depth == (n - 1 if n % 2 == 0 else n)  # odd n: one extra step (module docstring)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_butterfly_counts(n):
    butterfly = layer(n, "butterfly")
    log_n = int(math.log2(n))
    assert (butterfly.n_parameters, butterfly.depth) == (n // 2 * log_n, log_n)


@pytest.mark.parametrize("layout, n", LAYOUT_SIZES)
def test_gates_of_a_step_touch_disjoint_wires(layout, n):
    for step in layout_gates(n, layout):
        wires = [wire for gate in step for wire in gate]
        assert len(wires) == len(set(wires)) and all(0 <= i < j < n for i, j in step)
        if layout != "butterfly":
            assert all(j == i + 1 for i, j in step)  # nearest neighbours


def test_x_layout_shapes():
    assert layout_gates(4, "x") == [[(0, 1), (2, 3)], [(1, 2)], [(0, 1), (2, 3)]]
    assert layout_gates(5, "x") == [[(0, 1), (3, 4)], [(1, 2)], [(2, 3)], [(1, 2), (3, 4)],
                                    [(0, 1)]]
    assert layout_gates(8, "butterfly")[0] == [(0, 4), (1, 5), (2, 6), (3, 7)]


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        OrthogonalLayer(6, "butterfly")
    with pytest.raises(ValueError, match="layout"):
        OrthogonalLayer(4, "ring")
    with pytest.raises(ValueError, match="at least 2"):
        OrthogonalLayer(1, "pyramid")


# ----------------------------------------------------------------------------
# the orthogonal layer


@pytest.mark.parametrize("layout, n", LAYOUT_SIZES)
def test_matrix_is_orthogonal_in_float64(layout, n):
    for seed in range(3):
        W = layer(n, layout, seed).matrix()
        identity = torch.eye(n, dtype=F64)
        torch.testing.assert_close(W @ W.T, identity, rtol=0, atol=1e-10)
        torch.testing.assert_close(W.T @ W, identity, rtol=0, atol=1e-10)
        assert torch.linalg.det(W).item() == pytest.approx(1.0, abs=1e-10)  # rotations only


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_is_x_times_W_transposed_and_keeps_norms(layout):
    orthogonal = layer(8, layout)
    x = torch.randn(5, 3, 8, generator=generator(1), dtype=F64)
    y = orthogonal(x)
    torch.testing.assert_close(y, x @ orthogonal.matrix().T, rtol=0, atol=1e-12)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=0, atol=1e-12)


def test_matrix_is_the_product_of_its_givens_rotations():
    orthogonal = layer(5, "pyramid", seed=2)
    expected = torch.eye(5, dtype=F64)
    for (i, j), theta in zip(orthogonal.gate_sequence, orthogonal.angles.detach()):
        givens = torch.eye(5, dtype=F64)
        givens[i, i] = givens[j, j] = torch.cos(theta)
        givens[j, i], givens[i, j] = torch.sin(theta), -torch.sin(theta)  # e_i -> cos e_i + sin e_j
        expected = givens @ expected
    torch.testing.assert_close(orthogonal.matrix(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(circuit_matrix(5, orthogonal.gates, orthogonal.angles.detach()),
                               expected, rtol=0, atol=1e-12)


def test_same_generator_seed_same_layer():
    a, b, c = layer(8, "x", seed=4), layer(8, "x", seed=4), layer(8, "x", seed=5)
    assert torch.equal(a.angles, b.angles) and not torch.equal(a.angles, c.angles)
    assert a.angles.abs().max() <= math.pi


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_angle_gets_a_gradient(layout):
    orthogonal = layer(8, layout, seed=3)
    x = torch.randn(16, 8, generator=generator(0), dtype=F64)
    target = torch.randn(16, 8, generator=generator(1), dtype=F64)
    (orthogonal(x) * target).sum().backward()
    assert torch.isfinite(orthogonal.angles.grad).all()
    assert (orthogonal.angles.grad.abs() > 1e-12).all()


# ----------------------------------------------------------------------------
# applying the gates step by step: no n x n tensors


VECTORS = [(layout, n) for layout in LAYOUTS for n in sizes(layout, 16) if n >= 4] + [("x", 9)]


@pytest.mark.parametrize("layout, n", VECTORS)
def test_forward_on_few_vectors_applies_the_gates_to_them(layout, n):
    """At most n vectors: the gates act on x itself; the result is still x @ W^T."""
    orthogonal = layer(n, layout, seed=n)
    x = torch.randn(2, n // 2, n, generator=generator(1), dtype=F64)  # n - 1 or n vectors
    torch.testing.assert_close(orthogonal(x), x @ orthogonal.matrix().T, rtol=0, atol=1e-12)
    torch.testing.assert_close(orthogonal(x[0, 0]), orthogonal.matrix() @ x[0, 0],
                               rtol=0, atol=1e-12)  # a single vector (n,)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_on_many_vectors_equals_forward_vector_by_vector(layout):
    """More than n vectors go through W (the gates applied to the n unit vectors): the
    same numbers, and the same gradients, as the gates applied to each vector."""
    n = 8
    x = torch.randn(5, 9, n, generator=generator(2), dtype=F64)  # 45 vectors > n
    target = torch.randn(5, 9, n, generator=generator(3), dtype=F64)
    at_once, one_by_one = layer(n, layout, seed=4), layer(n, layout, seed=4)
    y = at_once(x)
    y_rows = torch.stack([one_by_one(vector) for vector in x.reshape(-1, n)]).reshape(x.shape)
    torch.testing.assert_close(y, y_rows, rtol=0, atol=1e-12)
    (y * target).sum().backward()
    (y_rows * target).sum().backward()
    torch.testing.assert_close(at_once.angles.grad, one_by_one.angles.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout, n", [("pyramid", 4), ("pyramid", 5), ("x", 5), ("x", 6),
                                       ("butterfly", 4), ("butterfly", 8)])
def test_gradcheck_of_forward_and_matrix(layout, n):
    orthogonal = layer(n, layout, seed=n)
    angles = orthogonal.angles.detach().clone().requires_grad_()

    def forward(angles, x):
        return torch.func.functional_call(orthogonal, {"angles": angles}, (x,))

    few = torch.randn(2, n, generator=generator(5), dtype=F64, requires_grad=True)
    many = torch.randn(n + 1, n, generator=generator(6), dtype=F64)
    assert torch.autograd.gradcheck(forward, (angles, few))  # the gates act on x
    assert torch.autograd.gradcheck(lambda a: forward(a, many), (angles,))  # through W
    assert torch.autograd.gradcheck(lambda a: circuit_matrix(n, orthogonal.gates, a), (angles,))


def buffer_bytes(module):
    return sum(buffer.numel() * buffer.element_size() for buffer in module.buffers())


def test_wide_x_layer_is_small_and_applies_to_a_batch():
    """n = 1024, X layout: the old (depth, n, n) step matrices took 8.6 GB in float64;
    now the buffers are the gates' wires, and autograd keeps a few numbers per gate
    and vector, nothing of size n x n."""
    n, rows = 1024, 8
    orthogonal = layer(n, "x")
    assert buffer_bytes(orthogonal) < 1_000_000  # 2 x 2045 wires x 8 bytes = 32 KB
    x = torch.randn(rows, n, generator=generator(0), dtype=F64)
    saved = []  # the sizes of what autograd keeps for the backward pass

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = orthogonal(x)
    assert y.shape == (rows, n)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=0, atol=1e-10)
    assert max(saved) < n * n
    assert sum(saved) < 10 * rows * orthogonal.n_parameters  # about 6 per gate and vector
    (y * x).sum().backward()
    assert torch.isfinite(orthogonal.angles.grad).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_buffers_grow_with_the_gates_not_with_depth_times_n_squared(layout):
    orthogonal = layer(64, layout)
    assert buffer_bytes(orthogonal) == 2 * orthogonal.n_parameters * 8  # two wires per gate
    assert list(orthogonal.state_dict()) == ["angles"]  # checkpoints hold the angles only


def test_layer_follows_to_device_and_dtype():
    """No tensor is made on the CPU behind the module's back: on the meta device
    everything stays on the meta device; .to(dtype) keeps the wires integer."""
    orthogonal = OrthogonalLayer(8, "x", device="meta")
    assert all(t.device.type == "meta" for t in [*orthogonal.parameters(), *orthogonal.buffers()])
    for rows in (3, 30):  # the gates on x, and through W
        assert orthogonal(torch.randn(rows, 8, device="meta")).device.type == "meta"
    assert orthogonal.matrix().device.type == "meta"
    orthogonal = layer(8, "pyramid").to(torch.float32)
    assert all(buffer.dtype == torch.long for buffer in orthogonal.buffers())
    W = orthogonal.matrix()
    assert W.dtype == torch.float32
    torch.testing.assert_close(W @ W.T, torch.eye(8), rtol=0, atol=1e-5)


def test_circuit_matrix_takes_any_grouping_of_the_gates_into_steps():
    angles = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=F64)
    steps = [[(0, 2), (1, 3)], [(0, 1), (2, 3)]]  # a butterfly on 4 wires
    one_per_step = [[gate] for step in steps for gate in step]
    with_empty_steps = [[], [(0, 2)], [], [(1, 3)], [(0, 1), (2, 3)], []]
    W = circuit_matrix(4, steps, angles)
    torch.testing.assert_close(circuit_matrix(4, one_per_step, angles), W, rtol=0, atol=1e-15)
    torch.testing.assert_close(circuit_matrix(4, with_empty_steps, angles), W, rtol=0, atol=1e-15)
    butterfly = layer(4, "butterfly")
    assert butterfly.gates == steps
    with torch.no_grad():
        butterfly.angles.copy_(angles)
    torch.testing.assert_close(butterfly.matrix(), W, rtol=0, atol=0)


# ----------------------------------------------------------------------------
# brute force: 2^n state vectors


def brute_force(orthogonal: OrthogonalLayer, fermionic: bool) -> torch.Tensor:
    return circuit_unitary(orthogonal.n, orthogonal.gate_sequence, orthogonal.angles.detach(),
                           fermionic=fermionic)


@pytest.mark.parametrize("layout, n", SMALL)
def test_weight_one_block_is_the_layer(layout, n):
    orthogonal = layer(n, layout, seed=n)
    unitary = brute_force(orthogonal, fermionic=False)
    identity = torch.eye(2 ** n, dtype=F64)
    torch.testing.assert_close(unitary @ unitary.T, identity, rtol=0, atol=1e-10)
    block = hamming_weight_block(unitary, n, 1)
    torch.testing.assert_close(block, orthogonal.matrix().detach(), rtol=0, atol=1e-10)
    # the circuit conserves the number of ones: nothing leaks out of the weight-1 states
    weight_one = [1 << (n - 1 - wire) for wire in range(n)]
    others = [state for state in range(2 ** n) if state not in weight_one]
    assert unitary[others][:, weight_one].abs().max() < 1e-12


@pytest.mark.parametrize("layout, n", [(lo, n) for lo, n in SMALL if n >= 2])
def test_weight_two_block_is_the_compound_matrix(layout, n):
    """RBS gates for the nearest-neighbour layouts; FBS gates (the butterfly's convention)."""
    orthogonal = layer(n, layout, seed=10 + n)
    unitary = brute_force(orthogonal, fermionic=(layout == "butterfly"))
    compound = compound_matrix(orthogonal.matrix().detach(), 2)
    torch.testing.assert_close(hamming_weight_block(unitary, n, 2), compound, rtol=0, atol=1e-10)
    if layout != "butterfly":  # FBS = RBS when no wire lies between a gate's two wires
        torch.testing.assert_close(brute_force(orthogonal, fermionic=True), unitary, rtol=0, atol=0)


def test_weight_three_block_is_the_third_compound():
    orthogonal = layer(5, "pyramid", seed=7)
    unitary = brute_force(orthogonal, fermionic=False)
    torch.testing.assert_close(hamming_weight_block(unitary, 5, 3),
                               compound_matrix(orthogonal.matrix().detach(), 3), rtol=0, atol=1e-10)


def test_butterfly_with_plain_rbs_gates_is_not_the_compound_under_any_signs():
    """Why the butterfly needs the FBS convention: for n = 4 no change of sign of
    the six weight-2 basis states turns the RBS circuit's block into C_2(W)."""
    orthogonal = layer(4, "butterfly", seed=1)
    block = hamming_weight_block(brute_force(orthogonal, fermionic=False), 4, 2)
    compound = compound_matrix(orthogonal.matrix().detach(), 2)
    sign_changes = (torch.diag(torch.tensor(signs, dtype=F64))
                    for signs in itertools.product((1.0, -1.0), repeat=6))
    closest = min((D @ block @ D - compound).abs().max().item() for D in sign_changes)
    assert closest > 1e-3
    # the weight-1 block does not care: RBS and FBS agree there
    torch.testing.assert_close(
        hamming_weight_block(brute_force(orthogonal, fermionic=False), 4, 1),
        hamming_weight_block(brute_force(orthogonal, fermionic=True), 4, 1), rtol=0, atol=0)


# ----------------------------------------------------------------------------
# compound matrices and the weight-2 layer


def test_compound_matrix_properties():
    A = torch.randn(5, 5, generator=generator(0), dtype=F64)
    B = torch.randn(5, 5, generator=generator(1), dtype=F64)
    torch.testing.assert_close(compound_matrix(A, 1), A)
    torch.testing.assert_close(compound_matrix(A @ B, 2),
                               compound_matrix(A, 2) @ compound_matrix(B, 2))  # Cauchy-Binet
    torch.testing.assert_close(compound_matrix(A, 5), torch.linalg.det(A).reshape(1, 1))
    rows, cols = hamming_weight_basis(5, 2)[3], hamming_weight_basis(5, 2)[7]
    minor = A[rows[0], cols[0]] * A[rows[1], cols[1]] - A[rows[0], cols[1]] * A[rows[1], cols[0]]
    assert compound_matrix(A, 2)[3, 7].item() == pytest.approx(minor.item())
    assert hamming_weight_basis(4, 2) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compound_layer_is_orthogonal_and_trainable(layout):
    compound = CompoundLayer(8, layout, k=2, generator=generator(0), dtype=F64)
    assert compound.dim == 28 and compound.n_parameters == compound.orthogonal.n_parameters
    C = compound.matrix()
    torch.testing.assert_close(C @ C.T, torch.eye(28, dtype=F64), rtol=0, atol=1e-10)
    x = torch.randn(4, 28, generator=generator(1), dtype=F64)
    y = compound(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=0, atol=1e-10)
    (y * torch.randn(4, 28, generator=generator(2), dtype=F64)).sum().backward()
    assert (compound.orthogonal.angles.grad.abs() > 1e-12).all()


# ----------------------------------------------------------------------------
# the vector loader


def test_loader_round_trip():
    x = torch.randn(64, 7, generator=generator(0), dtype=F64)
    special = torch.tensor([[1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, -2], [0, 0, 3, 0, 0, 0, 0],
                            [0, -1, 0, 0, 0, 1, 0], [-1, -1, -1, -1, -1, -1, -1]], dtype=F64)
    x = torch.cat([x, special])
    angles = vector_loader_angles(x)
    assert angles.shape == (69, 6)
    unit = x / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(load_vector(angles), unit, rtol=0, atol=1e-12)
    torch.testing.assert_close(vector_loader_angles(unit), angles, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 6])
def test_loader_circuit_loads_the_vector(n):
    """Start in |e_0> (a 1 on wire 0), run the loader's RBS gates: amplitudes = x / ||x||."""
    x = torch.randn(n, generator=generator(n), dtype=F64)
    gates = [gate for step in loader_gates(n) for gate in step]
    unitary = circuit_unitary(n, gates, vector_loader_angles(x))
    e_0 = 1 << (n - 1)
    amplitudes = unitary[:, e_0]  # (2^n,)
    unary = [1 << (n - 1 - wire) for wire in range(n)]
    torch.testing.assert_close(amplitudes[unary], x / x.norm(), rtol=0, atol=1e-12)
    assert amplitudes[unary].norm().item() == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------
# orthogonal attention


@pytest.mark.parametrize("layout", LAYOUTS)
def test_orthogonal_attention_formula_and_rows(layout):
    n, T = 8, 6
    attention = OrthogonalAttention(n, layout, generator=generator(0), dtype=F64)
    x = torch.randn(2, T, n, generator=generator(1), dtype=F64)
    output, weights = attention(x, need_weights=True)
    W, V = attention.score_layer.matrix(), attention.value_layer.matrix()
    scores = torch.einsum("bid,de,bje->bij", x, W, x) / math.sqrt(n)  # x_i^T W x_j / sqrt(n)
    expected_weights = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(output, expected_weights @ (x @ V.T), rtol=0, atol=1e-12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, T, dtype=F64), rtol=0, atol=1e-12)
    assert attention.n_parameters == 2 * attention.score_layer.n_parameters
    assert attention.n_parameters == sum(p.numel() for p in attention.parameters())


def test_orthogonal_attention_masks_and_gradients():
    attention = OrthogonalAttention(8, "x", generator=generator(2), dtype=F64)
    x = torch.randn(3, 5, 8, generator=generator(3), dtype=F64)
    output, weights = attention(x, is_causal=True, need_weights=True)
    assert (weights.triu(diagonal=1) == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5, dtype=F64), rtol=0, atol=1e-12)
    (output * torch.randn(3, 5, 8, generator=generator(4), dtype=F64)).sum().backward()
    for name, parameter in attention.named_parameters():
        assert (parameter.grad.abs() > 1e-12).all(), name


# ----------------------------------------------------------------------------
# the experiment


def test_patchify_cuts_row_by_row():
    image = torch.arange(64.0).reshape(1, 8, 8)
    patches = qvit_digits.patchify(image, 2)
    assert patches.shape == (1, 16, 4)
    assert patches[0, 0].tolist() == [0, 1, 8, 9] and patches[0, 1].tolist() == [2, 3, 10, 11]
    assert patches[0, 4].tolist() == [16, 17, 24, 25]


def test_experiment_quick_mode(capsys):
    results = qvit_digits.main(["--quick"])
    table = capsys.readouterr().out
    assert "quick mode" in table
    assert [r.model for r in results] == list(qvit_digits.MODELS)
    n = qvit_digits.QUICK.n_embd
    params = {r.model: r.attention_parameters for r in results}
    assert params == {"classical": 4 * n * n + 4 * n,  # W_q, W_k, W_v, W_o and biases
                      "orthogonal-pyramid": n * (n - 1),  # two layers of n(n-1)/2 angles
                      "orthogonal-x": 2 * (2 * n - 3),
                      "orthogonal-butterfly": n * int(math.log2(n)),  # two of (n/2) log2 n
                      "no-attention": 0}
    for r in results:
        assert r.model in table and 0.0 <= r.accuracy_mean <= 1.0
        assert len(r.accuracies) == len(qvit_digits.QUICK.seeds)


def test_experiment_quick_from_environment(capsys, monkeypatch):
    monkeypatch.setenv(qvit_digits.QUICK_ENV, "1")
    first = qvit_digits.main(["--models", "orthogonal-x"])
    second = qvit_digits.main(["--models", "orthogonal-x"])
    assert "quick mode" in capsys.readouterr().out
    assert first[0].accuracies == second[0].accuracies  # seeded: the same run twice
