"""When does iterative generation matter?  scGPT on simulated cells with exact conditionals.

    python -m genlab.experiments.scgpt_simulated [--out figures] [--quick] [--seeds 0 1 2]
                                                 [--no-pbmc]

Point predictions cannot show it: E[x_U | x_K], the conditional mean of the
unknown genes given the known ones, is the prediction with the least mean
squared error, and it is computed in one shot; feeding a model its own
predictions adds no information.  Sampling can: a coherent sample of the
unknown genes commits to one cell type for all of them, and drawing each
gene on its own cannot (module docstring of ``genlab.scgpt.simulator``).
This experiment measures both on cells whose true conditional is known.

For each seed (``--seeds``; every number below is a mean over seeds with its
standard error, sd / sqrt(number of seeds)):

1. The world: ``CellSimulator(seed=0)`` (4 cell types, 50 genes, the first 20
   genes are the four marker programs), the same for every seed.
2. Training: a pool of simulated cells (seeded), values standardised per gene
   (the training pool's mean and sd) so that the model works in units of order
   one; a ``ScGPT`` with ``value_scale=1`` is pretrained on them with the GEP,
   GEPC and confidence losses (no cell-prompt pass), the unknown fraction
   drawn per batch from ``Settings.unknown_fractions`` (upstream's 0.25, 0.5,
   0.75 and 0.9, so that prompts of few genes are in the training range).
3. Gene-prompt scenarios on held-out cells, each with one set of known genes
   for all cells: ``SCENARIOS`` (few random genes, ten shared non-marker genes
   that leave the type ambiguous, many random genes).  The exact conditional
   ``CellSimulator.conditional`` gives the Bayes-optimal mean and exact samples.
4. (a) Point error: the mean squared error, over cells and unknown genes, of
   the model's mean prediction in K = 1, 2, 4, 8 steps, and its *excess*, the
   mean squared distance to the Bayes-optimal mean (0 for a perfect model);
   beside them the Bayes-optimal error itself.
   (b) Sampled generation: ``n_samples`` draws per cell, one-shot
   (``generate_values(steps=1, sample=True)``: every gene from its own
   predicted Gaussian) and K-step (most confident first, sampled values fed
   back).  Against ``n_reference_samples`` exact draws of the same cell's
   conditional, per cell: the energy distance (an unbiased estimate: 0 in
   expectation for exact samples), the mean absolute error of the
   correlation matrix among the generated genes (against the exact
   conditional's, from ``MixtureConditional.covariance``), and the fraction
   of chimeric samples (``MixtureConditional.chimeric``: samples that no
   plausible type explains; chimeras are such samples, and so is a sample
   pushed far from every type by the model's error in the mean, which the
   point error measures: where K leaves that error as it is, a fall of the
   fraction with K is the joint becoming coherent).  Two reference
   rows: exact joint samples (the noise floor of each measure at this many
   samples) and exact *independent* per-gene samples (``sample_independent``,
   the best any one-shot sampler with independent genes can do).
5. pbmc68k_reduced (``--no-pbmc`` skips it): the model of
   ``genlab.experiments.scgpt_pbmc`` (trained the same way as there), one
   seeded half of the genes hidden in every held-out cell (the same genes in
   every cell), sampled one-shot against K-step.  No ground truth exists, and
   each held-out cell is a single draw from its own conditional, so only the
   population can be compared: the energy distance between the generated
   cells and the held-out cells (over the hidden genes), and the error of the
   gene-gene correlation matrix across cells.  Beside them, the same
   distances from the training cells to the held-out cells (real cells
   against real cells: what sampling noise alone gives).

Writes ``scgpt_simulated_results.json`` and ``scgpt_simulated.png`` to
``--out`` and prints markdown tables.  Lecture 8
(``course/08_scgpt_sampling.ipynb``) runs one seed on a lecture's budget
(``LECTURE``) with ``train_on_simulated`` and ``evaluate_scenario``.
``--quick`` or ``GENLAB_QUICK=1`` shrinks everything to seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import anndata
import numpy as np
import torch

from genlab.checkpoints import load_or_train
from genlab.quick import QUICK_ENV, is_quick
from genlab.scgpt import (CellTokens, GeneVocab, ScGPT, ScGPTConfig, generate_values, pretraining_batches,
                          scgpt_loss)
from genlab.scgpt.simulator import CellSimulator, MixtureConditional, continuous_cell_tokens
from genlab.train import History, TrainConfig, train


@dataclass(frozen=True)
class Settings:
    n_train_cells: int  # the training pool (fresh cells of the simulator)
    steps: int  # training: AdamW steps, batch size, peak learning rate, warm-up
    batch_size: int
    lr: float
    warmup_steps: int
    d_model: int  # the model
    n_layers: int
    n_heads: int
    d_ff: int
    n_eval_cells: int  # held-out cells per scenario
    n_samples: int  # sampled generations per cell
    n_reference_samples: int  # exact draws per cell the samples are compared with
    generation_steps: tuple[int, ...] = (1, 2, 4, 8)
    unknown_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    simulator_seed: int = 0


FULL = Settings(n_train_cells=20000, steps=8000, batch_size=64, lr=2e-3, warmup_steps=200,
                d_model=64, n_layers=2, n_heads=4, d_ff=128, n_eval_cells=200, n_samples=32,
                n_reference_samples=64)
# Lecture 8's budget (a lecture runs in at most 3 minutes on a 2-core laptop): a quarter of
# the training, half the cells and samples; its numbers are its own, the README's are FULL's
LECTURE = Settings(n_train_cells=20000, steps=2000, batch_size=64, lr=3e-3, warmup_steps=100,
                   d_model=64, n_layers=2, n_heads=4, d_ff=128, n_eval_cells=100, n_samples=16,
                   n_reference_samples=32)
QUICK = Settings(n_train_cells=400, steps=10, batch_size=16, lr=2e-3, warmup_steps=2,
                 d_model=16, n_layers=1, n_heads=2, d_ff=32, n_eval_cells=12, n_samples=4,
                 n_reference_samples=6, generation_steps=(1, 2))


def settings_for(quick: bool) -> Settings:
    return QUICK if quick else FULL


# ----------------------------------------------------------------------------
# scenarios: which genes are known


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    choose_known: Callable[[CellSimulator, np.random.Generator], np.ndarray]  # -> sorted gene indices


def _random_genes(n: int):
    def choose(sim: CellSimulator, rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.choice(sim.n_genes, size=n, replace=False))
    return choose


def _shared_genes(n: int):
    """The first ``n`` genes outside every marker program: they carry little evidence of the type."""
    def choose(sim: CellSimulator, rng: np.random.Generator) -> np.ndarray:
        shared = np.setdiff1d(np.arange(sim.n_genes), sim.program_genes.ravel())
        if shared.size < n:
            raise ValueError(f"the simulator has {shared.size} non-marker genes, fewer than {n}")
        return shared[:n]
    return choose


SCENARIOS = (
    Scenario("5 random genes known", "5 of 50 genes known, chosen at random (per seed)", _random_genes(5)),
    Scenario("10 shared genes known", "10 non-marker genes known: the type stays ambiguous", _shared_genes(10)),
    Scenario("35 random genes known", "35 of 50 genes known, chosen at random (per seed)", _random_genes(35)),
)


# ----------------------------------------------------------------------------
# the model in standardised units


@dataclass
class Standardizer:
    """Per-gene standardisation fitted on the training pool: the model sees (x - mean) / sd."""

    mean: np.ndarray  # (G,)
    sd: np.ndarray  # (G,)

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        return cls(values.mean(axis=0), values.std(axis=0))

    def to_model(self, adata: anndata.AnnData) -> anndata.AnnData:
        return anndata.AnnData(X=((adata.X - self.mean) / self.sd).astype(np.float32), obs=adata.obs,
                               var=adata.var)

    def from_model(self, values: np.ndarray, genes: np.ndarray) -> np.ndarray:
        """Model units of the given gene columns back to log-expression."""
        return values * self.sd[genes] + self.mean[genes]


@dataclass
class TrainedModel:
    model: ScGPT
    vocab: GeneVocab
    standardizer: Standardizer
    history: History
    seconds: float


def train_config(settings: Settings, seed: int) -> TrainConfig:
    return TrainConfig(steps=settings.steps, lr=settings.lr, warmup_steps=settings.warmup_steps,
                       min_lr_ratio=0.1, weight_decay=0.01, grad_clip=1.0, seed=seed)


CHECKPOINT_NAME = "scgpt-simulated"  # cached models of the command and of lecture 8 (keyed by their settings)


def train_on_simulated(sim: CellSimulator, settings: Settings, seed: int, progress: bool = True,
                       retrain: bool = False) -> TrainedModel:
    """A ScGPT pretrained on ``settings.n_train_cells`` simulated cells (seeded by ``seed``).

    Through ``genlab.checkpoints.load_or_train``: a model trained before with the same
    simulator, settings and seed is loaded from the cache (``retrain=True`` trains anew).
    ``seconds`` is the training time, or the loading time of a cached model.
    """
    pool = sim.sample(settings.n_train_cells, seed=np.random.default_rng([seed, 1]))
    standardizer = Standardizer.fit(np.asarray(pool.X, dtype=np.float64))
    vocab = GeneVocab.from_adata(pool)
    tokens = continuous_cell_tokens(standardizer.to_model(pool), vocab)
    config = ScGPTConfig(vocab_size=len(vocab), d_model=settings.d_model, n_heads=settings.n_heads,
                         n_layers=settings.n_layers, d_ff=settings.d_ff, value_scale=1.0, seed=seed)
    batches = pretraining_batches(tokens, settings.batch_size, cell_prompt=False,
                                  unknown_fractions=settings.unknown_fractions)
    started = time.perf_counter()
    model, history = load_or_train(
        CHECKPOINT_NAME, build_model=lambda: ScGPT(config, vocab),
        train_fn=lambda model: train(model, batches, scgpt_loss, train_config(settings, seed),
                                     progress=progress),
        settings={"experiment": asdict(settings), "seed": seed, "simulator": repr(sim)},
        retrain=retrain, verbose=progress)
    return TrainedModel(model.eval(), vocab, standardizer, history, time.perf_counter() - started)


# ----------------------------------------------------------------------------
# measures


def energy_distance(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per cell, the unbiased energy distance between two sets of samples: (S, N, U), (R, N, U) -> (N,).

    2 E|X - Y| - E|X - X'| - E|Y - Y'| with Euclidean distances, the
    within-set means over distinct pairs only, so that two sets of draws from
    the same distribution give 0 in expectation.  Needs S, R >= 2.
    """
    if generated.shape[0] < 2 or reference.shape[0] < 2:
        raise ValueError("the energy distance needs at least 2 samples on each side")
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(generated, 1, 0)))  # (N, S, U)
    y = torch.from_numpy(np.ascontiguousarray(np.moveaxis(reference, 1, 0)))  # (N, R, U)

    def within(a: torch.Tensor) -> torch.Tensor:
        n = a.shape[1]
        return torch.cdist(a, a).sum(dim=(1, 2)) / (n * (n - 1))  # the diagonal is 0

    between = torch.cdist(x, y).mean(dim=(1, 2))
    return (2 * between - within(x) - within(y)).numpy()


def correlation_error(samples: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Per cell, the mean |r_sample - r_exact| over the pairs of distinct genes: (S, N, U), (N, U, U) -> (N,)."""
    centred = samples - samples.mean(axis=0)  # (S, N, U)
    sample_cov = np.einsum("snu,snv->nuv", centred, centred) / (samples.shape[0] - 1)

    def correlation(cov: np.ndarray) -> np.ndarray:
        sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))  # (N, U)
        return cov / (sd[:, :, None] * sd[:, None, :])

    U = covariance.shape[-1]
    off_diagonal = ~np.eye(U, dtype=bool)
    difference = np.abs(correlation(sample_cov) - correlation(covariance))[:, off_diagonal]
    return difference.mean(axis=1)


def joint_measures(samples: np.ndarray, cond: MixtureConditional, reference: np.ndarray) -> dict[str, float]:
    """Energy distance, correlation error and chimera fraction of ``samples`` (S, N, U), means over cells."""
    return {"energy_distance": float(energy_distance(samples, reference).mean()),
            "correlation_error": float(correlation_error(samples, cond.covariance()).mean()),
            "chimera_fraction": float(cond.chimeric(samples).mean())}


# ----------------------------------------------------------------------------
# one scenario, one seed


def model_tokens(trained: TrainedModel, cells: anndata.AnnData) -> CellTokens:
    """Simulated cells as the trained model reads them: standardised, continuous tokens."""
    return continuous_cell_tokens(trained.standardizer.to_model(cells), trained.vocab)


def _generate(trained: TrainedModel, tokens: CellTokens, known: np.ndarray, steps: int,
              n_samples: int | None, seed: int) -> np.ndarray:
    """The unknown genes of ``tokens`` (``model_tokens``) generated in ``steps`` steps: the
    mean (n_samples None), (N, U), or ``n_samples`` sampled generations per cell, (S, N, U);
    log-expression units."""
    N, G = tokens.values.shape
    unknown_genes = np.setdiff1d(np.arange(G), known)
    is_unknown = torch.zeros(N, G, dtype=torch.bool)
    is_unknown[:, torch.from_numpy(unknown_genes)] = True
    S = 1 if n_samples is None else n_samples
    generation = generate_values(
        trained.model, tokens.gene_ids.repeat(S, 1), tokens.values.repeat(S, 1), is_unknown.repeat(S, 1),
        steps=steps, sample=n_samples is not None, generator=torch.Generator().manual_seed(seed))
    values = generation.values.numpy().reshape(S, N, G)[:, :, unknown_genes].astype(np.float64)
    values = trained.standardizer.from_model(values, unknown_genes)
    return values[0] if n_samples is None else values


def evaluate_scenario(trained: TrainedModel, sim: CellSimulator, scenario: Scenario, settings: Settings,
                      seed: int) -> dict:
    """Point errors and joint measures of one scenario on fresh held-out cells (module docstring, 3-4)."""
    rng = np.random.default_rng([seed, 2])
    known = scenario.choose_known(sim, rng)
    unknown = np.setdiff1d(np.arange(sim.n_genes), known)
    test = sim.sample(settings.n_eval_cells, seed=rng)
    X = np.asarray(test.X, dtype=np.float64)
    names = np.asarray(sim.gene_names)
    cond = sim.conditional(list(names[known]), X[:, known], list(names[unknown]))
    optimum, truth = cond.mean(), X[:, unknown]
    tokens = model_tokens(trained, test)  # (N, G), read by every generation below

    point = {"Bayes-optimal mean": {"mse": float(((optimum - truth) ** 2).mean()), "excess": 0.0}}
    for K in settings.generation_steps:
        predicted = _generate(trained, tokens, known, K, None, seed)
        point[f"scGPT K={K}"] = {"mse": float(((predicted - truth) ** 2).mean()),
                                 "excess": float(((predicted - optimum) ** 2).mean())}

    S, R = settings.n_samples, settings.n_reference_samples
    reference = cond.sample(R, seed=np.random.default_rng([seed, 3]))
    exact = cond.sample(S, seed=np.random.default_rng([seed, 4]))
    independent = cond.sample_independent(S, seed=np.random.default_rng([seed, 5]))
    sampled = {"exact joint (noise floor)": joint_measures(exact, cond, reference),
               "exact, genes independent": joint_measures(independent, cond, reference)}
    for K in settings.generation_steps:
        draws = _generate(trained, tokens, known, K, S, seed + 1000 * K)
        sampled[f"scGPT K={K}, sampled"] = joint_measures(draws, cond, reference)
    ambiguity = float((cond.type_probs.max(axis=1) < 0.9).mean())  # cells whose type is uncertain
    return {"known_genes": [str(g) for g in names[known]], "n_unknown": int(unknown.size),
            "ambiguous_cell_fraction": ambiguity, "point": point, "sampled": sampled}


def run_seed(settings: Settings, seed: int, progress: bool = True, retrain: bool = False) -> dict:
    """Train on simulated cells with ``seed`` (or load the cached model) and evaluate every scenario."""
    sim = CellSimulator(seed=settings.simulator_seed)
    trained = train_on_simulated(sim, settings, seed, progress=progress, retrain=retrain)
    results = {s.name: evaluate_scenario(trained, sim, s, settings, seed) for s in SCENARIOS}
    return {"seed": seed, "train_seconds": trained.seconds,
            "final_train_loss": float(np.mean(trained.history.train_loss[-50:])), "scenarios": results}


# ----------------------------------------------------------------------------
# pbmc68k_reduced: populations only


def pbmc_sampled(seed: int, quick: bool, progress: bool = True) -> dict:
    """Sampled one-shot vs K-step generation on pbmc68k_reduced's held-out cells (module docstring, 5)."""
    from genlab.experiments import scgpt_pbmc as P

    pbmc_settings = P.QUICK if quick else P.FULL
    prepared = P.prepare(pbmc_settings, seed)
    model, _, seconds = P.train_model(prepared, pbmc_settings, seed, progress=progress)
    tokens, test, train_cells = prepared.tokens, prepared.test_cells, prepared.train_cells
    rng = np.random.default_rng([seed, 7])
    G = len(prepared.genes)
    hidden = np.sort(rng.choice(G, size=G // 2, replace=False))
    truth = prepared.binned[test][:, hidden]  # (N, H)
    is_unknown = torch.zeros(len(test), G, dtype=torch.bool)
    is_unknown[:, torch.from_numpy(hidden)] = True
    rows = {"training cells (real vs real)": population_measures(prepared.binned[train_cells][:, hidden], truth)}
    for K in pbmc_settings.generation_steps:
        generation = generate_values(model, tokens.gene_ids[test], tokens.values[test], is_unknown,
                                     steps=K, is_real=tokens.is_real[test], sample=True,
                                     generator=torch.Generator().manual_seed(seed + 1000 * K))
        rows[f"scGPT K={K}, sampled"] = population_measures(generation.values.numpy()[:, hidden], truth)
    mean = generate_values(model, tokens.gene_ids[test], tokens.values[test], is_unknown, steps=1,
                           is_real=tokens.is_real[test])
    rows["scGPT K=1, mean (not sampled)"] = population_measures(mean.values.numpy()[:, hidden], truth)
    return {"seed": seed, "train_seconds": seconds, "n_test_cells": int(len(test)),
            "n_hidden_genes": int(hidden.size), "rows": rows}


def population_measures(cells: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Two populations of profiles, (N1, H) against (N2, H): energy distance between the sets,
    and the mean |error| of the gene-gene correlation matrix across cells (constant genes skipped)."""
    distance = energy_distance(cells.astype(np.float64)[:, None, :], truth.astype(np.float64)[:, None, :])
    varies = (cells.std(axis=0) > 0) & (truth.std(axis=0) > 0)
    r_cells = np.corrcoef(cells[:, varies], rowvar=False)
    r_truth = np.corrcoef(truth[:, varies], rowvar=False)
    off_diagonal = ~np.eye(int(varies.sum()), dtype=bool)
    return {"energy_distance": float(distance[0]),
            "correlation_error": float(np.abs(r_cells - r_truth)[off_diagonal].mean())}


# ----------------------------------------------------------------------------
# over seeds: mean and standard error


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sd with ddof=1 / sqrt(n); NaN for one value)."""
    array = np.asarray(values, dtype=np.float64)
    se = array.std(ddof=1) / np.sqrt(array.size) if array.size > 1 else float("nan")
    return float(array.mean()), float(se)


def aggregate(per_seed: list[dict], path: Callable[[dict], dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """{row: {measure: (mean, se)}} over seeds of the nested table ``path(seed result)``."""
    tables = [path(result) for result in per_seed]
    return {row: {measure: mean_and_se([t[row][measure] for t in tables]) for measure in tables[0][row]}
            for row in tables[0]}


def _cell(mean: float, se: float) -> str:
    return f"{mean:.3f}" if not np.isfinite(se) else f"{mean:.3f} ± {se:.3f}"


def markdown_table(table: dict[str, dict[str, tuple[float, float]]], measures: dict[str, str]) -> str:
    lines = ["| | " + " | ".join(measures.values()) + " |", "|---|" + "---|" * len(measures)]
    for row, values in table.items():
        lines.append(f"| {row} | " + " | ".join(_cell(*values[m]) for m in measures) + " |")
    return "\n".join(lines)


POINT_MEASURES = {"mse": "MSE vs truth", "excess": "MSE vs Bayes-optimal mean"}
JOINT_MEASURES = {"energy_distance": "energy distance", "correlation_error": "correlation-matrix error",
                  "chimera_fraction": "chimeric samples"}
POPULATION_MEASURES = {"energy_distance": "energy distance to held-out cells",
                       "correlation_error": "gene-gene correlation error"}


PLOTTED = (  # (table, measure, y label, reference rows drawn as lines)
    ("point", "excess", "mean's MSE vs Bayes-optimal mean", ()),
    ("sampled", "chimera_fraction", "chimeric samples", ("exact, genes independent", "exact joint (noise floor)")),
    ("sampled", "correlation_error", "correlation-matrix error", ("exact, genes independent",
                                                                  "exact joint (noise floor)")),
)


def plot(simulated: dict, out: Path | None = None):
    """Per scenario (columns), against K: the mean's distance to the optimum, and the chimera
    fraction and correlation error of sampled generation, with the exact samplers as lines."""
    import matplotlib.pyplot as plt

    scenarios = list(simulated)
    fig, axes = plt.subplots(len(PLOTTED), len(scenarios), figsize=(4.6 * len(scenarios), 3.2 * len(PLOTTED)),
                             squeeze=False)
    for column, name in enumerate(scenarios):
        for ax, (table_name, measure, label, references) in zip(axes[:, column], PLOTTED):
            table = simulated[name][table_name]
            rows = [row for row in table if row.startswith("scGPT")]
            steps = [int(row.split("K=")[1].split(",")[0]) for row in rows]
            means = [table[row][measure][0] for row in rows]
            errors = [np.nan_to_num(table[row][measure][1]) for row in rows]
            ax.errorbar(steps, means, yerr=errors, marker="o", capsize=3, label="scGPT, K steps")
            for row, style in zip(references, ("--", ":")):
                ax.axhline(table[row][measure][0], color="gray", linestyle=style, label=row)
            ax.set_xscale("log", base=2)
            ax.set_xticks(steps, [str(K) for K in steps])
            ax.minorticks_off()
            ax.set_ylim(bottom=0, top=1.05 if measure == "chimera_fraction" else None)
            ax.set(xlabel="K (generation steps)", ylabel=label)
        axes[0, column].set_title(name)
    axes[1, -1].legend(fontsize="small", loc="best")
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def summarise(per_seed: list[dict]) -> dict:
    """``run_seed`` results of one or more seeds -> {scenario: {"point", "sampled": {row: {measure:
    (mean, se)}}, "ambiguous_cell_fraction": (mean, se)}}, what ``plot`` and ``print_tables`` read."""
    return {name: {"point": aggregate(per_seed, lambda r: r["scenarios"][name]["point"]),
                   "sampled": aggregate(per_seed, lambda r: r["scenarios"][name]["sampled"]),
                   "ambiguous_cell_fraction": mean_and_se(
                       [r["scenarios"][name]["ambiguous_cell_fraction"] for r in per_seed])}
            for name in per_seed[0]["scenarios"]}


def run(settings: Settings, seeds: list[int], with_pbmc: bool, quick: bool, progress: bool = True,
        retrain: bool = False) -> dict:
    per_seed = [run_seed(settings, seed, progress, retrain) for seed in seeds]
    results = {"settings": asdict(settings), "seeds": seeds, "per_seed": per_seed,
               "simulated": summarise(per_seed)}
    if with_pbmc:
        pbmc = [pbmc_sampled(seed, quick, progress) for seed in seeds]
        results["pbmc"] = {"per_seed": pbmc, "table": aggregate(pbmc, lambda r: r["rows"])}
    return results


def simulated_markdown(simulated: dict) -> str:
    """``summarise``'s tables as markdown, scenario by scenario."""
    parts = []
    for name, scenario in simulated.items():
        ambiguous = scenario["ambiguous_cell_fraction"][0]
        parts += [f"### {name} (cells whose most probable type has p < 0.9: {ambiguous:.0%})",
                  "(a) point prediction: the generated mean", markdown_table(scenario["point"], POINT_MEASURES),
                  "(b) sampled generation against the exact conditional",
                  markdown_table(scenario["sampled"], JOINT_MEASURES)]
    return "\n\n".join(parts)


def print_tables(results: dict) -> None:
    print(f"\nmeans over {len(results['seeds'])} seed(s) ± standard error; values in log-expression units\n")
    print(simulated_markdown(results["simulated"]))
    if "pbmc" in results:
        print("\n### pbmc68k_reduced, sampled generation of half the genes (bin units; populations only)\n")
        print(markdown_table(results["pbmc"]["table"], POPULATION_MEASURES))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--quick", action="store_true", help=f"seconds-long run (also: {QUICK_ENV}=1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-pbmc", action="store_true", help="skip the pbmc68k_reduced comparison")
    parser.add_argument("--retrain", action="store_true",
                        help="train even where genlab.checkpoints has a cached model of these settings")
    args = parser.parse_args(argv)
    quick = args.quick or is_quick()
    started = time.perf_counter()
    results = run(settings_for(quick), args.seeds, not args.no_pbmc, quick, retrain=args.retrain or quick)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scgpt_simulated_results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results["simulated"], args.out / "scgpt_simulated.png")
    print_tables(results)
    print(f"\n{results['seconds']:.0f} s in all; wrote {args.out / 'scgpt_simulated_results.json'} "
          f"and {args.out / 'scgpt_simulated.png'}")


if __name__ == "__main__":
    main()
