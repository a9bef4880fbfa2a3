"""genlab.experiments.scgpt_simulated: its measures against naive re-computations, its scenarios,
and a quick end-to-end run (the full run's numbers are in the README, from the command)."""

import json

import numpy as np
import pytest
import torch

from genlab.experiments import scgpt_simulated as E
from genlab.scgpt import pretraining_batch
from genlab.scgpt.simulator import CellSimulator, continuous_cell_tokens
from genlab.scgpt import GeneVocab


def _naive_energy_distance(x, y):
    """One cell: x (S, U), y (R, U), by explicit loops over pairs."""
    def mean_distance(a, b, distinct):
        total, count = 0.0, 0
        for i in range(len(a)):
            for j in range(len(b)):
                if distinct and i == j:
                    continue
                total += np.sqrt(((a[i] - b[j]) ** 2).sum())
                count += 1
        return total / count

    return 2 * mean_distance(x, y, False) - mean_distance(x, x, True) - mean_distance(y, y, True)


def test_energy_distance_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3, 4)), rng.normal(1.0, 2.0, size=(7, 3, 4))
    got = E.energy_distance(x, y)
    expected = [_naive_energy_distance(x[:, n], y[:, n]) for n in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_energy_distance_is_zero_on_average_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    same = E.energy_distance(rng.normal(size=(8, 400, 3)), rng.normal(size=(8, 400, 3)))  # (400,) cells
    assert abs(same.mean()) < 3 * same.std(ddof=1) / np.sqrt(same.size)
    shifted = E.energy_distance(rng.normal(size=(8, 400, 3)), rng.normal(0.5, 1.0, size=(8, 400, 3)))
    assert shifted.mean() > 10 * shifted.std(ddof=1) / np.sqrt(shifted.size)


def test_energy_distance_needs_two_samples_a_side():
    with pytest.raises(ValueError, match="at least 2 samples"):
        E.energy_distance(np.zeros((1, 2, 3)), np.zeros((4, 2, 3)))


def test_correlation_error_against_numpy_per_cell():
    rng = np.random.default_rng(2)
    samples = rng.normal(size=(30, 4, 5)) @ rng.normal(size=(5, 5))  # (S, N, U), correlated genes
    A = rng.normal(size=(4, 5, 5))
    covariance = A @ A.transpose(0, 2, 1) + np.eye(5)  # (N, U, U)
    expected = []
    for n in range(4):
        r_sample = np.corrcoef(samples[:, n], rowvar=False)
        sd = np.sqrt(np.diag(covariance[n]))
        r_exact = covariance[n] / np.outer(sd, sd)
        expected.append(np.abs(r_sample - r_exact)[~np.eye(5, dtype=bool)].mean())
    np.testing.assert_allclose(E.correlation_error(samples, covariance), expected, rtol=1e-10)


def test_scenarios_choose_what_they_say():
    sim = CellSimulator(seed=0)
    markers = set(sim.program_genes.ravel().tolist())
    by_name = {s.name: s for s in E.SCENARIOS}
    shared = by_name["10 shared genes known"].choose_known(sim, np.random.default_rng(0))
    assert shared.size == 10 and not markers & set(shared.tolist())
    for name, n in (("5 random genes known", 5), ("35 random genes known", 35)):
        known = by_name[name].choose_known(sim, np.random.default_rng(0))
        assert known.size == n == np.unique(known).size and (np.diff(known) > 0).all()


def test_shared_scenario_refuses_a_simulator_without_enough_shared_genes():
    sim = CellSimulator(n_genes=24, seed=0)  # 20 marker genes, 4 shared
    with pytest.raises(ValueError, match="non-marker genes"):
        E._shared_genes(10)(sim, np.random.default_rng(0))


def test_standardizer_round_trip():
    sim = CellSimulator(seed=0)
    cells = sim.sample(50, seed=3)
    standardizer = E.Standardizer.fit(np.asarray(cells.X, dtype=np.float64))
    z = np.asarray(standardizer.to_model(cells).X, dtype=np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    genes = np.arange(sim.n_genes)
    np.testing.assert_allclose(standardizer.from_model(z, genes), cells.X, rtol=1e-5)


def test_mean_and_se():
    assert E.mean_and_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0 / np.sqrt(3)))
    mean, se = E.mean_and_se([4.0])
    assert mean == 4.0 and np.isnan(se)


def test_pretraining_batch_draws_from_the_given_unknown_fractions():
    sim = CellSimulator(seed=0)
    cells = sim.sample(6, seed=4)
    tokens = continuous_cell_tokens(cells, GeneVocab.from_adata(cells))
    batch = pretraining_batch(tokens, torch.arange(6), torch.Generator().manual_seed(0), cell_prompt=False,
                              unknown_fractions=(0.9,))
    assert batch.unknown_fraction == 0.9
    assert (batch.gep.unknown_is_real.sum(dim=1) == 45).all()  # round(0.9 * 50)
    for bad in ((), (0.0,), (1.0,), (0.5, 1.2)):
        with pytest.raises(ValueError, match="unknown_fractions"):
            pretraining_batch(tokens, torch.arange(6), cell_prompt=False, unknown_fractions=bad)


@pytest.fixture(scope="module")
def quick_results():
    return E.run(E.QUICK, seeds=[0, 1], with_pbmc=True, quick=True, progress=False)


def test_quick_run_reports_every_row_with_standard_errors(quick_results):
    steps = E.QUICK.generation_steps
    for name, scenario in quick_results["simulated"].items():
        point, sampled = scenario["point"], scenario["sampled"]
        assert set(point) == {"Bayes-optimal mean", *(f"scGPT K={K}" for K in steps)}
        assert point["Bayes-optimal mean"]["excess"] == (0.0, 0.0)
        assert set(sampled) == {"exact joint (noise floor)", "exact, genes independent",
                                *(f"scGPT K={K}, sampled" for K in steps)}
        for table in (point, sampled):
            for row in table.values():
                for mean, se in row.values():
                    assert np.isfinite(mean) and np.isfinite(se) and se >= 0
    pbmc = quick_results["pbmc"]["table"]
    assert {"training cells (real vs real)", "scGPT K=1, mean (not sampled)"} <= set(pbmc)
    assert len(quick_results["per_seed"]) == 2


def test_sampled_generation_is_reproducible_and_differs_from_the_mean():
    sim = CellSimulator(seed=0)
    trained = E.train_on_simulated(sim, E.QUICK, seed=0, progress=False)
    test = sim.sample(5, seed=5)
    known = np.arange(10)
    tokens = E.model_tokens(trained, test)
    mean = E._generate(trained, tokens, known, 1, None, seed=0)
    first, again = (E._generate(trained, tokens, known, 2, 3, seed=7) for _ in range(2))
    assert mean.shape == (5, 40) and first.shape == (3, 5, 40)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first[0], mean)
    np.testing.assert_allclose(E._generate(trained, tokens, known, 1, None, seed=0), mean)


def test_command_writes_results_and_figure(tmp_path, capsys):
    E.main(["--quick", "--seeds", "0", "--no-pbmc", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "scgpt_simulated_results.json").read_text())
    assert results["seeds"] == [0] and "pbmc" not in results
    assert (tmp_path / "scgpt_simulated.png").stat().st_size > 0
    assert "10 shared genes known" in capsys.readouterr().out
