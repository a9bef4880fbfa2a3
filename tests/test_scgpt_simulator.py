"""genlab.scgpt.simulator: the closed-form conditionals against Monte Carlo and brute force.

Every Monte Carlo comparison states its tolerance as a number of standard
errors estimated from the same draws; the moments and densities the
simulator's conditionals are compared with are computed here from the model's
parameters (means, loadings, noise variances), not by the code under test.
"""

from __future__ import annotations

import doctest

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from genlab.scgpt import GeneVocab, ScGPT, ScGPTConfig, generate_values, pretraining_batch, scgpt_losses
from genlab.scgpt import simulator as simulator_module
from genlab.scgpt.simulator import CellSimulator, MixtureConditional, continuous_cell_tokens

Z_MAX = 4.5  # largest |z| accepted among the many statistics of one test (each N(0, 1) if correct)


def small_simulator(**overrides) -> CellSimulator:
    """3 types of unequal weight, 3 marker programs of 3 genes, 20 genes, rank 2."""
    settings = dict(n_types=3, n_genes=20, n_programs=3, genes_per_program=3, rank=2,
                    weights=(0.5, 0.3, 0.2), seed=7)
    settings.update(overrides)
    return CellSimulator(**settings)


def model_covariances(sim: CellSimulator) -> np.ndarray:
    """(K, G, G) W_k W_k^T + diag(psi), from the parameters."""
    return np.stack([w @ w.T + np.diag(sim.noise_var) for w in sim.loadings])


def mixture_moments(sim: CellSimulator, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and covariance of the mixture on ``genes``: law of total expectation / covariance."""
    means, covs = sim.means[:, genes], model_covariances(sim)[:, genes][:, :, genes]
    mean = sim.weights @ means
    second = np.einsum("k,kij->ij", sim.weights, covs + means[:, :, None] * means[:, None, :])
    return mean, second - np.outer(mean, mean)


def moment_z_scores(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of the sample mean (D,) and of every sample covariance entry (D, D) against exact values.

    Standard errors from the draws: sqrt(cov_ii / N) for means, std of the
    centred products / sqrt(N) for covariances (centred at the exact mean).
    """
    N = samples.shape[0]
    mean_z = (samples.mean(axis=0) - mean) / np.sqrt(np.diag(cov) / N)
    centred = samples - mean
    products = centred[:, :, None] * centred[:, None, :]  # (N, D, D)
    cov_z = (products.mean(axis=0) - cov) / (products.std(axis=0) / np.sqrt(N))
    return mean_z, cov_z


# ----------------------------------------------------------------------------
# (a) posterior type probabilities


def calibration_z_scores(probs: np.ndarray, types: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Per type and per bin of predicted probability: (observed - predicted) / standard error.

    If the probabilities are calibrated, sum over a bin of (1[type = k] - p_k)
    has mean 0 and variance sum p_k (1 - p_k); bins with < 50 cells are skipped.
    """
    scores = []
    for k in range(probs.shape[1]):
        p, hit = probs[:, k], (types == k).astype(np.float64)
        which = np.minimum((p * n_bins).astype(int), n_bins - 1)
        for b in range(n_bins):
            inside = which == b
            if inside.sum() >= 50:
                scores.append((hit[inside] - p[inside]).sum() / np.sqrt((p[inside] * (1 - p[inside])).sum()))
    return np.array(scores)


def test_posterior_type_probabilities_average_to_weights_and_are_calibrated():
    sim = small_simulator()
    adata = sim.sample(20000, seed=1)
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    known = [0, 10, 11]  # one marker of program 0, two shared genes: partly informative
    probs = sim.conditional(known, adata.X[:, known]).type_probs  # (N, K)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert 0.2 < (probs.max(axis=1) < 0.9).mean() < 0.9, "the known genes should leave many cells ambiguous"

    # E[p(k | x_K)] = pi_k exactly
    mean_z = (probs.mean(axis=0) - sim.weights) / (probs.std(axis=0) / np.sqrt(len(probs)))
    assert np.abs(mean_z).max() < Z_MAX, mean_z

    calibration = calibration_z_scores(probs, types)
    assert calibration.size >= 15
    assert np.abs(calibration).max() < Z_MAX, calibration

    # the same statistic rejects over-confident probabilities (it can fail)
    sharpened = probs ** 2 / (probs ** 2).sum(axis=1, keepdims=True)
    assert np.abs(calibration_z_scores(sharpened, types)).max() > 2 * Z_MAX


# ----------------------------------------------------------------------------
# (b) the conditional's law


def test_replacing_unknown_genes_by_conditional_samples_keeps_the_joint_law():
    sim = small_simulator()
    known = np.array([0, 9, 10, 11, 12])  # a marker of program 0; shared genes
    unknown = np.array([1, 3, 4, 6, 13, 14, 15])  # markers of all three programs; shared genes
    genes = np.concatenate([known, unknown])
    mean, cov = mixture_moments(sim, genes)

    X = sim.sample(20000, seed=2).X
    conditional = sim.conditional(known, X[:, known], unknown)
    resampled = np.concatenate([X[:, known], conditional.sample(seed=3)], axis=1)  # (N, 12)
    original = X[:, genes]

    for draws in (original, resampled):  # the simulator itself, then the conditional
        mean_z, cov_z = moment_z_scores(draws, mean, cov)
        assert np.abs(mean_z).max() < Z_MAX, mean_z
        assert np.abs(cov_z).max() < Z_MAX, cov_z

    # per-gene independent draws keep each gene's law but not the covariance among unknown genes
    independent = np.concatenate([X[:, known], conditional.sample_independent(seed=3)], axis=1)
    mean_z, cov_z = moment_z_scores(independent, mean, cov)
    assert np.abs(mean_z).max() < Z_MAX
    assert np.abs(np.diag(cov_z)).max() < Z_MAX  # the marginal variances are right
    assert np.abs(cov_z[len(known):, len(known):]).max() > 4 * Z_MAX  # the joint is not


def test_conditional_covariance_and_types_of_joint_samples_match_monte_carlo():
    sim = small_simulator()
    known, unknown = [2, 5, 10], [0, 4, 8, 11, 12]
    x_known = sim.sample(3, seed=4).X[:, known]
    conditional = sim.conditional(known, x_known, unknown)
    draws, types = conditional.sample(40000, seed=5, return_types=True)  # (S, 3, U), (S, 3)
    for cell in range(3):
        mean_z, cov_z = moment_z_scores(draws[:, cell], conditional.mean()[cell],
                                        conditional.covariance()[cell])
        assert np.abs(mean_z).max() < Z_MAX and np.abs(cov_z).max() < Z_MAX
        frequency = np.bincount(types[:, cell], minlength=3) / len(types)
        p = conditional.type_probs[cell]
        assert np.all(np.abs(frequency - p) <= Z_MAX * np.sqrt(p * (1 - p) / len(types)) + 1e-12)


# ----------------------------------------------------------------------------
# (c) Bayes' rule on a grid


def test_log_prob_equals_bayes_rule_on_a_grid():
    # 2 types, 2 genes: gene 0 marks type 0, gene 1 marks type 1; gene 0 known, gene 1 unknown
    sim = CellSimulator(n_types=2, n_genes=2, n_programs=2, genes_per_program=1, rank=1,
                        weights=(0.6, 0.4), marker_effect=1.5, loading_scale=0.7, seed=3)
    joints = [scipy.stats.multivariate_normal(mean, cov)
              for mean, cov in zip(sim.means, model_covariances(sim))]
    grid = np.linspace(sim.means[:, 1].min() - 12.0, sim.means[:, 1].max() + 12.0, 20001)  # x_unknown
    for x_known in np.linspace(sim.means[:, 0].min() - 1.0, sim.means[:, 0].max() + 1.0, 7):
        points = np.stack([np.full_like(grid, x_known), grid], axis=1)
        per_type = np.stack([w * joint.pdf(points) for w, joint in zip(sim.weights, joints)])  # (2, grid)
        evidence = np.trapezoid(per_type.sum(axis=0), grid)  # p(x_known)
        density = per_type.sum(axis=0) / evidence  # p(x_unknown | x_known), Bayes' rule

        conditional = sim.conditional([0], [[x_known]], [1])
        closed_form = np.exp(conditional.log_prob(grid[:, None, None]))[:, 0]  # (grid,)
        assert np.allclose(closed_form, density, rtol=1e-8, atol=1e-12)
        assert np.allclose(conditional.type_probs[0], np.trapezoid(per_type, grid, axis=1) / evidence,
                           rtol=1e-8)
        assert np.isclose(conditional.mean()[0, 0], np.trapezoid(grid * density, grid), rtol=1e-10)


# ----------------------------------------------------------------------------
# (d) the conditional mean is MSE-optimal


def test_conditional_mean_beats_other_predictors_on_held_out_cells():
    sim = small_simulator()
    known, unknown = np.array([0, 10, 11]), np.array([1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 14, 15])
    train, test = sim.sample(5000, seed=6).X, sim.sample(5000, seed=7).X
    conditional = sim.conditional(known, test[:, known], unknown)
    truth = test[:, unknown]

    def design(X):  # intercept and known genes
        return np.column_stack([np.ones(len(X)), X[:, known]])

    coefficients, *_ = np.linalg.lstsq(design(train), train[:, unknown], rcond=None)
    most_likely = conditional.type_probs.argmax(axis=1)
    predictors = {
        "best linear (least squares on training cells)": design(test) @ coefficients,
        "mean of the most likely type": conditional.means[np.arange(len(test)), most_likely],
        "marginal mean (ignores the known genes)": np.broadcast_to(sim.weights @ sim.means[:, unknown],
                                                                   truth.shape),
    }
    optimal_error = ((conditional.mean() - truth) ** 2).sum(axis=1)  # (N,)
    for name, prediction in predictors.items():
        excess = ((prediction - truth) ** 2).sum(axis=1) - optimal_error  # paired per cell
        z = excess.mean() / (excess.std() / np.sqrt(len(excess)))
        assert z > 3.0, f"{name}: excess squared error {excess.mean():.4f}, z = {z:.1f}"

    # and its error is the expected conditional variance (the Bayes risk)
    bayes_risk = np.trace(conditional.covariance(), axis1=1, axis2=2)  # (N,)
    gap = optimal_error - bayes_risk
    assert abs(gap.mean()) < Z_MAX * gap.std() / np.sqrt(len(gap))


# ----------------------------------------------------------------------------
# (e) chimeras: why the joint matters


def test_independent_per_gene_sampling_makes_chimeras_on_ambiguous_cells():
    sim = CellSimulator(seed=0)  # the defaults: 4 types, a 5-gene marker program each
    known = sim.gene_names[20:30]  # shared genes only: the type stays ambiguous
    unknown = sim.gene_names[:20]  # the four marker programs
    adata = sim.sample(400, seed=8)
    conditional = sim.conditional(known, adata, unknown)
    top_two = np.sort(conditional.type_probs, axis=1)[:, -2:]  # (N, 2)
    ambiguous = np.flatnonzero((top_two[:, 0] > 0.3) & (top_two[:, 1] < 0.7))
    assert ambiguous.size >= 20

    conditional = conditional.subset(ambiguous)
    exact = conditional.sample(500, seed=9)  # (S, n, 20)
    independent = conditional.sample_independent(500, seed=9)
    first, second = np.argsort(conditional.type_probs, axis=1)[:, [-1, -2]].T  # (n,) each
    programs = np.arange(20).reshape(4, 5)

    def program_correlation(draws, cell):  # across draws, of the two likeliest types' program scores
        a, b = (draws[:, cell, programs[t]].mean(axis=1) for t in (first[cell], second[cell]))
        return np.corrcoef(a, b)[0, 1]

    exact_r = np.array([program_correlation(exact, c) for c in range(ambiguous.size)])
    independent_r = np.array([program_correlation(independent, c) for c in range(ambiguous.size)])
    covariance = conditional.covariance()  # closed form of the same correlation
    closed_r = np.array([
        _score_correlation(covariance[c], programs[first[c]], programs[second[c]])
        for c in range(ambiguous.size)])
    # 500 draws: a correlation's standard error is about (1 - r^2) / sqrt(S) <= 1 / sqrt(497) for
    # Gaussian data (Fisher); these are mixtures, so 4.5 of those (0.2) is a loose tolerance
    assert np.abs(exact_r - closed_r).max() < Z_MAX / np.sqrt(497)
    # the exact joint: one type's program up means the other's is down; independent genes lose that
    assert closed_r.max() < -0.2 and closed_r.mean() < -0.5
    assert np.abs(independent_r.mean()) < 0.05 and np.abs(independent_r).max() < Z_MAX / np.sqrt(497)

    chimeric_exact = conditional.chimeric(exact).mean()
    chimeric_independent = conditional.chimeric(independent).mean()
    probs = conditional.type_probs
    implausible = (probs * (probs < 1e-3)).sum(axis=1).mean()  # mass of types below min_prob
    bound = 0.01 + implausible  # 1 - level, plus draws from implausible types
    assert chimeric_exact < bound + Z_MAX * np.sqrt(bound * (1 - bound) / exact[..., 0].size)
    assert chimeric_independent > 0.5


def _score_correlation(covariance: np.ndarray, genes_a: np.ndarray, genes_b: np.ndarray) -> float:
    """Correlation of the mean of genes_a with the mean of genes_b under ``covariance``."""
    a, b = np.zeros(len(covariance)), np.zeros(len(covariance))
    a[genes_a], b[genes_b] = 1.0 / len(genes_a), 1.0 / len(genes_b)
    return float(a @ covariance @ b / np.sqrt((a @ covariance @ a) * (b @ covariance @ b)))


# ----------------------------------------------------------------------------
# reproducibility, layout, conveniences


def test_module_docstring_example_runs():
    failed, attempted = doctest.testmod(simulator_module)
    assert attempted >= 8 and failed == 0


def test_seeds_reproduce_parameters_and_draws():
    sim, again, other = CellSimulator(seed=0), CellSimulator(seed=0), CellSimulator(seed=1)
    assert np.array_equal(sim.covariances, again.covariances) and np.array_equal(sim.means, again.means)
    assert not np.allclose(sim.covariances, other.covariances)
    assert np.array_equal(sim.sample(30, seed=5).X, again.sample(30, seed=5).X)
    assert np.array_equal(sim.sample(30, seed=5).X, sim.sample(30, seed=np.random.default_rng(5)).X)
    assert not np.allclose(sim.sample(30, seed=5).X, sim.sample(30, seed=6).X)
    conditional = sim.conditional(sim.gene_names[:10], sim.sample(4, seed=1).X[:, :10])
    for method in (conditional.sample, conditional.sample_independent):
        assert np.array_equal(method(3, seed=2), method(3, seed=2))
        assert not np.allclose(method(3, seed=2), method(3, seed=3))
    assert "n_types=4" in repr(sim) and "seed=0" in repr(sim)
    assert repr(conditional) == "MixtureConditional(4 cells, 10 known -> 40 unknown genes, 4 types)"


def test_sample_is_an_anndata_like_scanpy_data(tmp_path):
    sim = small_simulator()
    adata = sim.sample(3000, seed=3)
    adata.write_h5ad(tmp_path / "cells.h5ad")  # storable as scanpy data is
    assert np.array_equal(anndata.read_h5ad(tmp_path / "cells.h5ad").X, adata.X)
    assert isinstance(adata, anndata.AnnData) and adata.shape == (3000, 20)
    assert adata.X.dtype == np.float64 and np.isfinite(adata.X).all()
    assert list(adata.var_names) == sim.gene_names and adata.obs_names[0] == "cell_0"
    assert isinstance(adata.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert list(adata.obs["cell_type"].cat.categories) == sim.type_names
    assert list(adata.var["program"][:4]) == ["program_0"] * 3 + ["program_1"]
    assert (adata.var["program"][9:] == "").all()
    assert adata.obsm["factors"].shape == (3000, 2)
    assert np.array_equal(adata.uns["simulator"]["means"], sim.means)
    # residual noise, once type means and factors are removed, has variance psi
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    noise = adata.X - sim.means[types] - np.einsum("ngr,nr->ng", sim.loadings[types], adata.obsm["factors"])
    z = (noise.var(axis=0) - sim.noise_var) / (sim.noise_var * np.sqrt(2.0 / len(noise)))
    assert np.abs(z).max() < Z_MAX


def test_default_values_are_positive_friendly():
    sim = CellSimulator()
    sd = np.sqrt(np.diagonal(model_covariances(sim), axis1=1, axis2=2))
    assert (sim.means / sd).min() > 4.7  # the docstring's bound for the defaults
    assert sim.negative_value_probability() < 1.1e-6
    assert np.allclose(sd ** 2, 0.5 ** 2 + sim.noise_var)  # same gene variance in every type


def test_empty_known_set_is_the_prior_and_cells_can_be_conditioned_one_by_one():
    sim = small_simulator()
    prior = sim.conditional([], np.zeros((2, 0)), [0, 5])
    assert np.allclose(prior.type_probs, sim.weights)
    assert np.allclose(prior.means[0], sim.means[:, [0, 5]])
    assert np.allclose(prior.covariances, model_covariances(sim)[:, [0, 5]][:, :, [0, 5]])

    X = sim.sample(5, seed=1).X
    together = sim.conditional(["gene_03", "gene_10"], X[:, [3, 10]])
    assert together.unknown_genes == [g for g in sim.gene_names if g not in ("gene_03", "gene_10")]
    for cell in range(5):
        alone = sim.conditional([3, 10], X[cell, [3, 10]])  # one cell as a 1-D array
        assert np.allclose(alone.type_log_probs[0], together.type_log_probs[cell])
        assert np.allclose(alone.mean()[0], together.mean()[cell])
    assert together.log_prob(together.sample(7, seed=0)).shape == (7, 5)


def test_continuous_tokens_feed_pretraining_and_generation():
    sim = small_simulator()
    adata = sim.sample(16, seed=0)
    vocab = GeneVocab(sim.gene_names)
    tokens = continuous_cell_tokens(adata, vocab)
    assert tokens.values.shape == (16, 20) and tokens.is_real.all()
    assert torch.allclose(tokens.values.double(), torch.from_numpy(adata.X), atol=1e-5)
    assert tokens.n_bins - 1 >= adata.X.max()

    config = ScGPTConfig(vocab_size=len(vocab), n_bins=tokens.n_bins, d_model=16, n_heads=2,
                         n_layers=1, d_ff=32)
    model = ScGPT(config, vocab)
    batch = pretraining_batch(tokens, torch.arange(8), torch.Generator().manual_seed(0))
    assert torch.isfinite(scgpt_losses(model, batch).total)
    unknown = torch.zeros(16, 20, dtype=torch.bool)
    unknown[:, :9] = True  # generate the marker programs
    generation = generate_values(model, tokens.gene_ids, tokens.values, unknown, steps=2)
    assert torch.equal(generation.values[:, 9:], tokens.values[:, 9:])  # known values as given


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("settings, message", [
    (dict(n_programs=11, genes_per_program=5), "need 55 genes"),
    (dict(weights=(0.5, 0.5)), "weights must be 4 positive"),
    (dict(weights=(0.5, 0.5, 0.5, -0.5)), "weights must be 4 positive"),
    (dict(type_specific_loadings=1.5), "type_specific_loadings"),
    (dict(rank=-1), "rank must be an integer"),
    (dict(noise_var_range=(0.0, 0.1)), "noise_var_range"),
    (dict(type_programs=np.ones((4, 3), dtype=bool)), "type_programs must be bool"),
])
def test_bad_simulator_settings_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        CellSimulator(**settings)


def test_bad_conditioning_input_raises_clearly():
    sim = small_simulator()
    X = sim.sample(4, seed=0).X
    with pytest.raises(ValueError, match="not in the simulator"):
        sim.conditional(["gene_00", "CD3E"], X[:, :2])
    with pytest.raises(ValueError, match="overlap"):
        sim.conditional([0, 1], X[:, :2], [1, 2])
    with pytest.raises(ValueError, match="repeat a gene"):
        sim.conditional([0, 0], X[:, :2])
    with pytest.raises(ValueError, match="indices must be in 0..19"):
        sim.conditional([0, 20], X[:, :2])
    with pytest.raises(ValueError, match="single string"):
        sim.conditional("gene_00", X[:, :1])
    with pytest.raises(ValueError, match="all gene names"):
        sim.conditional(["gene_00", 1], X[:, :2])
    with pytest.raises(ValueError, match=r"must be \(cells, 2 known genes\)"):
        sim.conditional([0, 1], X[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        sim.conditional([0, 1], np.where(np.eye(4, 2) > 0, np.nan, X[:, :2]))
    with pytest.raises(ValueError, match="no unknown gene"):
        sim.conditional(list(range(20)), X)
    with pytest.raises(TypeError, match="seed must be"):
        sim.sample(3, seed=1.5)
    with pytest.raises(ValueError, match="n_cells"):
        sim.sample(0, seed=1)

    conditional = sim.conditional([0, 1], X[:, :2], [2, 3, 4])
    assert isinstance(conditional, MixtureConditional)
    with pytest.raises(ValueError, match=r"x_unknown must be \(cells, unknown genes\) = \(4, 3\)"):
        conditional.log_prob(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        conditional.log_prob(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="n_samples"):
        conditional.sample(0, seed=1)
    with pytest.raises(ValueError, match="level"):
        conditional.chimeric(np.zeros((4, 3)), level=1.0)
