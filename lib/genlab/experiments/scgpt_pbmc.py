"""scGPT on ``pbmc68k_reduced``: imputation, cell-prompt generation, cell embeddings.

    python -m genlab.experiments.scgpt_pbmc [--out figures] [--quick] [--seed 0]
                                            [--cell-prompt-split own|same]

What it does (``--quick`` or ``GENLAB_QUICK=1`` shrinks everything to seconds):

1. Data: scanpy's bundled ``pbmc68k_reduced`` (700 cells); ``.raw.X`` holds
   log1p-normalised values.  A seeded split, stratified by ``bulk_labels``,
   holds out 20% of the cells (test); 10% of the rest is a validation split
   (for the training curve and for choosing k of the kNN baseline); the model
   trains on the remaining cells.  The most variable genes of the training
   cells are selected; values are binned per cell (51 bins), and all numbers
   below are in bin units.
2. A small ``ScGPT`` is pretrained on the CPU (GEP + GEPC + confidence +
   cell-prompt losses) with ``genlab.train.train``.  The cell-prompt pass
   uses a split of its own (``--cell-prompt-split own``, the default) or, as
   upstream does, the GEP split (``same``); see ``pretraining_batch``.
3. (a) Gene prompt: in every held-out cell a seeded random half of the genes
   is hidden and generated in K = 1, 2, 4, 8 steps; Pearson r per cell over
   the hidden genes, beside two baselines: each gene's training mean, and the
   mean of the k nearest training cells measured on the cell's known genes.
   (b) Cell prompt: the mean embedding of each cell type's training cells goes
   into the <cls> slot and a whole profile is generated in K steps; it is
   correlated with the mean held-out profile of every type.  Beside it, K = 1
   the way upstream's code does it, with a plain encoder (the generated genes
   see each other), and the reference row: the training cells' own mean
   profile of the type (what a perfect decoder of the type's average could
   reach).
   (c) Cell embeddings of all cells: a UMAP coloured by ``bulk_labels``, and
   the accuracy of a 10-NN classifier from training to held-out cells on the
   embedding (beside the same on 32 PCA components of the binned values).

Writes ``scgpt_results.json`` and ``scgpt_umap.png`` to ``--out`` and prints
markdown tables.  The numbers are whatever the run measured; nothing is tuned
on the held-out cells.  To compare settings, run ``prepare``, ``train_model``
and ``evaluate(model, prepared, prepared.fit_cells, prepared.val_cells, ...)``:
the same evaluation on the validation cells.

The pieces are public for the lecture (``course/04_scgpt_single_cells.ipynb``),
which trains through ``genlab.checkpoints.load_or_train`` and draws each step:
``build_model`` + ``fit`` (= ``train_model``), and ``impute``,
``cell_prompt_generation`` and ``embedding_accuracy`` (= ``evaluate``, which
summarises their per-cell and per-type results), ``umap_coordinates``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import torch

from genlab.scgpt import (
    CELL_PROMPT_SPLITS,
    EMBEDDING_KEY,
    CellTokens,
    GeneVocab,
    PretrainBatch,
    ScGPT,
    ScGPTConfig,
    pretraining_batches,
    scgpt_loss,
    scgpt_losses,
    select_highly_variable_genes,
    split_known_unknown,
    tokenize_adata,
)
from genlab.quick import QUICK_ENV, is_quick
from genlab.train import History, TrainConfig, train

LABEL_KEY = "bulk_labels"
PLAIN_ENCODER_ROW = "scGPT K=1, plain encoder (upstream's inference)"  # cell prompt, generative_mask=False


@dataclass
class Settings:
    n_genes: int  # highly variable genes, selected on the training cells
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    eval_every: int
    generation_steps: tuple[int, ...] = (1, 2, 4, 8)  # K of iterative generation
    test_fraction: float = 0.2
    validation_fraction: float = 0.1  # of the training cells
    hidden_fraction: float = 0.5  # genes hidden in each held-out cell
    knn_choices: tuple[int, ...] = (5, 10, 20, 40)  # k of the kNN baseline, chosen on validation
    cell_prompt_split: str = "own"  # the cell-prompt pass's genes: "own" split or upstream's "same"


# FULL was chosen on the validation cells only (train on fit cells, ``evaluate`` on
# validation cells): at equal compute, 128 genes with more steps beat 256 genes
# with fewer, and batches of 16 beat 32.  Training takes ~130 CPU-seconds.
FULL = Settings(n_genes=128, d_model=64, n_layers=2, n_heads=4, d_ff=128, steps=2000,
                batch_size=16, lr=4e-3, warmup_steps=100, eval_every=400)
QUICK = Settings(n_genes=64, d_model=16, n_layers=1, n_heads=2, d_ff=32, steps=12,
                 batch_size=16, lr=2e-3, warmup_steps=3, eval_every=6,
                 generation_steps=(1, 2), knn_choices=(5, 10))


# ----------------------------------------------------------------------------
# data


def load_pbmc() -> anndata.AnnData:
    """pbmc68k_reduced with X = the log1p-normalised ``.raw`` values (700 cells x 765 genes)."""
    import scanpy as sc

    bundled = sc.datasets.pbmc68k_reduced()
    return anndata.AnnData(X=bundled.raw.X.copy(), obs=bundled.obs[[LABEL_KEY]].copy(),
                           var=pd.DataFrame(index=bundled.raw.var_names.astype(str)))


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator):
    """(rest, held) index arrays: ``round(fraction * n)`` cells of each label held (>= 1 if n >= 2)."""
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held = int(round(fraction * members.size))
        if members.size >= 2:
            n_held = min(max(n_held, 1), members.size - 1)
        held.extend(members[:n_held])
    held = np.sort(np.array(held, dtype=np.int64))
    rest = np.setdiff1d(np.arange(labels.size), held)
    return rest, held


def drop_silent_cells(data: anndata.AnnData, splits):
    """Drop cells that express none of ``data``'s genes (they cannot be binned);
    returns the kept data, the splits re-indexed into it, and how many were dropped."""
    expressed = np.asarray((data.X > 0).sum(axis=1)).ravel() > 0
    new_index = np.cumsum(expressed) - 1  # old row -> row in the kept data
    kept_splits = tuple(new_index[cells[expressed[cells]]] for cells in splits)
    return data[expressed].copy(), kept_splits, int((~expressed).sum())


# ----------------------------------------------------------------------------
# evaluation helpers


def pearson_per_cell(prediction: np.ndarray, truth: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Pearson r of each row over its hidden genes (NaN where either side is constant)."""
    scores = np.full(truth.shape[0], np.nan)
    for cell in range(truth.shape[0]):
        x, y = prediction[cell, hidden[cell]], truth[cell, hidden[cell]]
        if x.std() > 0 and y.std() > 0:
            scores[cell] = np.corrcoef(x, y)[0, 1]
    return scores


def summary(scores: np.ndarray) -> dict:
    finite = scores[np.isfinite(scores)]
    return {"mean": float(finite.mean()) if finite.size else float("nan"),
            "sd": float(finite.std()) if finite.size else float("nan"),
            "n_cells": int(finite.size), "n_undefined": int(scores.size - finite.size)}


def hide_genes(n_cells: int, n_genes: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool (cells, genes): ``round(fraction * n_genes)`` random genes per cell are hidden."""
    n_hidden = int(round(fraction * n_genes))
    hidden = np.zeros((n_cells, n_genes), dtype=bool)
    for cell in range(n_cells):
        hidden[cell, rng.permutation(n_genes)[:n_hidden]] = True
    return hidden


def knn_impute(reference: np.ndarray, query: np.ndarray, hidden: np.ndarray, k: int) -> np.ndarray:
    """Each query cell's hidden genes = the mean of its k nearest reference cells,
    with distances measured on that cell's known genes only."""
    prediction = query.astype(np.float64).copy()
    for cell in range(query.shape[0]):
        known = ~hidden[cell]
        distances = ((reference[:, known] - query[cell, known]) ** 2).sum(axis=1)
        nearest = np.argsort(distances, kind="stable")[:k]
        prediction[cell, hidden[cell]] = reference[nearest][:, hidden[cell]].mean(axis=0)
    return prediction


def correlation_matrix(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """r[a, b] = Pearson r of generated profile a with true profile b."""
    n = generated.shape[0]
    both = np.corrcoef(np.vstack([generated, truth]))
    return both[:n, n:]


def type_match(r: np.ndarray, types: list[str]) -> dict:
    """Own-type correlation, best other-type correlation, and how often the own type wins."""
    own = np.diag(r)
    others = np.where(np.eye(len(types), dtype=bool), -np.inf, r).max(axis=1)
    wins = r.argmax(axis=1) == np.arange(len(types))
    return {"own_type_r": {t: float(v) for t, v in zip(types, own)},
            "own_type_r_mean": float(own.mean()), "best_other_r_mean": float(others.mean()),
            "own_type_is_max": int(wins.sum()), "n_types": len(types)}


def knn_label_accuracy(train_x, train_labels, test_x, test_labels, k: int = 10) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    classifier = KNeighborsClassifier(n_neighbors=k).fit(train_x, train_labels)
    return float((classifier.predict(test_x) == test_labels).mean())


# ----------------------------------------------------------------------------
# the experiment


@dataclass
class Prepared:
    """The data of one run: selected genes, tokens, bins and the seeded splits (row indices)."""

    data: anndata.AnnData  # cells x selected genes, log1p values
    labels: np.ndarray  # bulk_labels as str
    vocab: GeneVocab
    tokens: CellTokens  # every cell, all selected genes
    binned: np.ndarray  # (cells, genes) float bins: the truth everything is scored against
    fit_cells: np.ndarray  # the model trains on these
    val_cells: np.ndarray  # validation: training curve, kNN's k
    test_cells: np.ndarray  # held out; touched only by the final evaluation
    n_dropped: int

    @property
    def genes(self) -> list[str]:
        return list(self.tokens.genes)

    @property
    def train_cells(self) -> np.ndarray:
        return np.sort(np.concatenate([self.fit_cells, self.val_cells]))


def prepare(settings: Settings, seed: int) -> Prepared:
    rng = np.random.default_rng([seed, 0])
    data = load_pbmc()
    labels = data.obs[LABEL_KEY].astype(str).to_numpy()
    train_cells, test_cells = stratified_split(labels, settings.test_fraction, rng)
    fit_pos, val_pos = stratified_split(labels[train_cells], settings.validation_fraction, rng)
    fit_cells, val_cells = train_cells[fit_pos], train_cells[val_pos]
    genes = select_highly_variable_genes(data[train_cells], settings.n_genes)  # training cells only
    data, (fit_cells, val_cells, test_cells), n_dropped = drop_silent_cells(
        data[:, genes].copy(), (fit_cells, val_cells, test_cells))
    vocab = GeneVocab.from_adata(data)
    tokens = tokenize_adata(data, vocab, n_bins=51)  # all selected genes, zeros included
    return Prepared(data, data.obs[LABEL_KEY].astype(str).to_numpy(), vocab, tokens,
                    tokens.binned.astype(np.float64), fit_cells, val_cells, test_cells, n_dropped)


def build_model(prepared: Prepared, settings: Settings, seed: int) -> ScGPT:
    """A fresh (untrained) ScGPT for ``prepared``'s genes, initialised from ``seed``."""
    config = ScGPTConfig(vocab_size=len(prepared.vocab), d_model=settings.d_model,
                         n_heads=settings.n_heads, n_layers=settings.n_layers, d_ff=settings.d_ff,
                         seed=seed)
    return ScGPT(config, prepared.vocab)


def train_config(settings: Settings, seed: int, device: str = "cpu") -> TrainConfig:
    """The ``genlab.train`` settings of the pretraining run."""
    return TrainConfig(steps=settings.steps, lr=settings.lr, warmup_steps=settings.warmup_steps,
                       min_lr_ratio=0.1, weight_decay=0.01, grad_clip=1.0,
                       eval_every=settings.eval_every, seed=seed, device=str(device))


def fit(model: ScGPT, prepared: Prepared, settings: Settings, seed: int, device: str = "cpu",
        progress: bool = True) -> History:
    """Pretrain ``model`` in place on the fit cells (moved to ``device``); returns its History.

    Every ``eval_every`` steps the GEP and GEPC losses are measured on the
    validation cells, with a fixed seeded half of each cell's genes unknown.
    """
    tokens = prepared.tokens
    validation = split_known_unknown(*(t[torch.as_tensor(prepared.val_cells)] for t in
                                       (tokens.gene_ids, tokens.values, tokens.is_real)),
                                     unknown_fraction=0.5, generator=torch.Generator().manual_seed(seed))

    def validation_losses(model: ScGPT) -> dict[str, float]:
        losses = scgpt_losses(model, PretrainBatch(validation, None, 0.5))
        return {"val_gep_loss": float(losses.gep), "val_gepc_loss": float(losses.gepc)}

    batches = pretraining_batches(tokens.subset(prepared.fit_cells), settings.batch_size,
                                  cell_prompt_split=settings.cell_prompt_split)
    return train(model, batches, scgpt_loss, train_config(settings, seed, device), eval_fn=validation_losses,
                 progress=progress)


def train_model(prepared: Prepared, settings: Settings, seed: int, progress: bool = True,
                device: str = "cpu"):
    """Pretrain a fresh ScGPT on the fit cells; returns (model in eval mode, history, seconds)."""
    model = build_model(prepared, settings, seed)
    started = time.perf_counter()
    history = fit(model, prepared, settings, seed, device, progress)
    seconds = time.perf_counter() - started
    model.eval()
    return model, history, seconds


def choose_knn_k(prepared: Prepared, settings: Settings, seed: int) -> tuple[int, dict]:
    """k of the kNN baseline: best mean r on the validation cells (reference: fit cells)."""
    binned, fit, val = prepared.binned, prepared.fit_cells, prepared.val_cells
    hidden = hide_genes(len(val), binned.shape[1], settings.hidden_fraction,
                        np.random.default_rng([seed, 2]))
    scores = {k: summary(pearson_per_cell(knn_impute(binned[fit], binned[val], hidden, k),
                                          binned[val], hidden))["mean"]
              for k in settings.knn_choices}
    return max(settings.knn_choices, key=lambda k: scores[k]), scores


@dataclass
class Imputation:
    """Gene-prompt imputation of ``eval_cells``: what was hidden, each method's answer, its scores."""

    cells: np.ndarray  # the evaluated cells (row indices)
    hidden: np.ndarray  # (cells, genes) bool: the genes each cell had to impute
    truth: np.ndarray  # (cells, genes) bins
    predictions: dict[str, np.ndarray]  # method -> (cells, genes); known genes keep their bins
    scores: dict[str, np.ndarray]  # method -> (cells,) Pearson r over the hidden genes
    generations: dict[int, anndata.AnnData]  # K -> ``generate_from_gene_prompt``'s output


def impute(model: ScGPT, prepared: Prepared, reference_cells: np.ndarray, eval_cells: np.ndarray,
           settings: Settings, seed: int, knn_k: int) -> Imputation:
    """(a) Gene prompt: hide a seeded random ``hidden_fraction`` of each evaluated cell's genes
    and generate them in K steps for every K of ``settings.generation_steps``; beside two
    baselines fitted on ``reference_cells``: each gene's mean, and kNN on the known genes."""
    binned, genes = prepared.binned, prepared.genes
    truth = binned[eval_cells]
    hidden = hide_genes(len(eval_cells), len(genes), settings.hidden_fraction,
                        np.random.default_rng([seed, 1]))
    eval_data = prepared.data[eval_cells].copy()
    predictions, generations = {}, {}
    for K in settings.generation_steps:
        generations[K] = model.generate_from_gene_prompt(eval_data, hidden, steps=K)
        predictions[f"scGPT K={K}"] = generations[K].X
    predictions["gene mean (training cells)"] = np.broadcast_to(
        binned[reference_cells].mean(axis=0), truth.shape)
    predictions[f"kNN on known genes (k={knn_k}, chosen on validation)"] = knn_impute(
        binned[reference_cells], truth, hidden, knn_k)
    scores = {method: pearson_per_cell(prediction, truth, hidden)
              for method, prediction in predictions.items()}
    return Imputation(np.asarray(eval_cells), hidden, truth, predictions, scores, generations)


@dataclass
class CellPrompts:
    """Cell-prompt generation: one generated profile per cell type, correlated with the true ones."""

    types: list[str]
    prompts: np.ndarray  # (types, d_model): each type's mean reference-cell embedding
    true_profiles: np.ndarray  # (types, genes): each type's mean binned profile over the evaluated cells
    generated: dict[int, np.ndarray]  # K -> (types, genes) generated profiles
    correlations: dict[str, np.ndarray]  # method -> (types, types): r[generated a, true b]


def cell_prompt_generation(model: ScGPT, prepared: Prepared, embeddings: np.ndarray,
                           reference_cells: np.ndarray, eval_cells: np.ndarray,
                           settings: Settings) -> CellPrompts:
    """(b) Cell prompt: each type's mean reference embedding in the <cls> slot, a whole profile
    generated from it in K steps; beside it K = 1 with a plain encoder (upstream's cell-prompt
    inference), and the reference cells' own mean profile of the type."""
    binned, labels, genes = prepared.binned, prepared.labels, prepared.genes
    types = sorted(set(labels[eval_cells]))

    def type_means(values, cells):
        return np.stack([values[cells][labels[cells] == t].mean(axis=0) for t in types])

    prompts, true_profiles = type_means(embeddings, reference_cells), type_means(binned, eval_cells)
    generated, correlations = {}, {}
    for K in settings.generation_steps:
        generated[K] = model.generate_from_cell_prompt(prompts, genes, steps=K,
                                                       obs=pd.DataFrame(index=types)).X
        correlations[f"scGPT K={K}"] = correlation_matrix(generated[K], true_profiles)
    plain = model.generate_from_cell_prompt(prompts, genes, steps=1, generative_mask=False).X
    correlations[PLAIN_ENCODER_ROW] = correlation_matrix(plain, true_profiles)
    correlations["reference: training mean profile of the type"] = correlation_matrix(
        type_means(binned, reference_cells), true_profiles)
    return CellPrompts(types, prompts, true_profiles, generated, correlations)


def embedding_accuracy(prepared: Prepared, embeddings: np.ndarray, reference_cells: np.ndarray,
                       eval_cells: np.ndarray, seed: int) -> dict[str, float]:
    """(c) 10-NN cell-type accuracy from reference to evaluated cells: the scGPT embedding
    beside 32 PCA components of the binned values (PCA fitted on the reference cells)."""
    from sklearn.decomposition import PCA

    binned, labels = prepared.binned, prepared.labels
    pca = PCA(n_components=min(32, binned.shape[1] - 1), random_state=seed).fit(binned[reference_cells])
    pcs = pca.transform(binned)
    return {
        name: knn_label_accuracy(x[reference_cells], labels[reference_cells],
                                 x[eval_cells], labels[eval_cells])
        for name, x in (("scGPT cell embedding", embeddings),
                        (f"PCA ({pca.n_components_} components of the binned values)", pcs))
    }


def evaluate(model: ScGPT, prepared: Prepared, reference_cells: np.ndarray, eval_cells: np.ndarray,
             settings: Settings, seed: int, knn_k: int) -> dict:
    """(a) imputation, (b) cell-prompt generation, (c) embedding accuracy on ``eval_cells``;
    baselines and prompts come from ``reference_cells``.  Writes X_scgpt of every cell."""
    imputation = impute(model, prepared, reference_cells, eval_cells, settings, seed, knn_k)
    embeddings = model.embed(prepared.data)  # (cells, d_model); also data.obsm["X_scgpt"]
    prompts = cell_prompt_generation(model, prepared, embeddings, reference_cells, eval_cells, settings)
    return {"gene_prompt_imputation_pearson": {method: summary(scores) for method, scores
                                               in imputation.scores.items()},
            "cell_prompt_generation": {method: type_match(r, prompts.types) for method, r
                                       in prompts.correlations.items()},
            "cell_type_knn_accuracy": embedding_accuracy(prepared, embeddings, reference_cells,
                                                         eval_cells, seed)}


def run(out: Path, quick: bool = False, seed: int = 0, progress: bool = True,
        cell_prompt_split: str = "own") -> dict:
    started = time.perf_counter()
    settings = replace(QUICK if quick else FULL, cell_prompt_split=cell_prompt_split)
    prepared = prepare(settings, seed)
    model, history, train_seconds = train_model(prepared, settings, seed, progress)
    knn_k, knn_scores = choose_knn_k(prepared, settings, seed)
    evaluation = evaluate(model, prepared, prepared.train_cells, prepared.test_cells,
                          settings, seed, knn_k)

    out.mkdir(parents=True, exist_ok=True)
    umap_path = out / "scgpt_umap.png"
    save_umap(prepared.data, umap_path, seed)

    results = {
        "command": "python -m genlab.experiments.scgpt_pbmc" + (" --quick" if quick else "")
                   + (f" --cell-prompt-split {cell_prompt_split}" if cell_prompt_split != "own" else ""),
        "quick": quick, "seed": seed, "settings": asdict(settings),
        "data": {"cells": int(prepared.data.n_obs), "cells_dropped_no_expressed_gene": prepared.n_dropped,
                 "genes": len(prepared.genes), "train_cells": int(prepared.fit_cells.size),
                 "validation_cells": int(prepared.val_cells.size),
                 "test_cells": int(prepared.test_cells.size), "n_bins": 51,
                 "torch_threads": torch.get_num_threads()},
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds,
        "final_train_loss_mean_last_50": float(np.mean(history.train_loss[-50:])),
        "validation": [{"step": step, **metrics} for step, metrics in history.evals],
        "knn_validation_mean_r": {str(k): v for k, v in knn_scores.items()},
        **evaluation,
        "umap": str(umap_path),
    }
    results["total_seconds"] = time.perf_counter() - started
    (out / "scgpt_results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return results


def umap_coordinates(data: anndata.AnnData, seed: int, use_rep: str = EMBEDDING_KEY) -> np.ndarray:
    """A 2-D UMAP of ``data.obsm[use_rep]`` (15-NN graph, scanpy's defaults), seeded;
    also stored in ``data.obsm["X_umap"]``.  Returns the (cells, 2) coordinates."""
    import scanpy as sc

    threads = torch.get_num_threads()
    sc.pp.neighbors(data, use_rep=use_rep, random_state=seed, transformer="sklearn")
    sc.tl.umap(data, random_state=seed)
    torch.set_num_threads(threads)  # numba's OpenMP layer may reset it
    return data.obsm["X_umap"]


def save_umap(data: anndata.AnnData, path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    umap_coordinates(data, seed)
    fig = sc.pl.umap(data, color=LABEL_KEY, show=False, return_fig=True,
                     title="scGPT cell embeddings (pbmc68k_reduced)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def markdown(results: dict) -> str:
    lines = [f"scGPT on pbmc68k_reduced ({results['data']['genes']} genes, "
             f"{results['data']['test_cells']} held-out cells; training {results['train_seconds']:.0f} s, "
             f"total {results['total_seconds']:.0f} s)", "",
             "| gene prompt: impute 50% of each held-out cell's genes | Pearson r per cell (mean ± sd) |",
             "|---|---|"]
    for method, s in results["gene_prompt_imputation_pearson"].items():
        undefined = f" ({s['n_undefined']} undefined)" if s["n_undefined"] else ""
        lines.append(f"| {method} | {s['mean']:.3f} ± {s['sd']:.3f}{undefined} |")
    lines += ["", "| cell prompt: mean type embedding in <cls> | own-type r (mean) | "
              "best other-type r (mean) | types where own type is max |", "|---|---|---|---|"]
    for method, s in results["cell_prompt_generation"].items():
        lines.append(f"| {method} | {s['own_type_r_mean']:.3f} | {s['best_other_r_mean']:.3f} | "
                     f"{s['own_type_is_max']}/{s['n_types']} |")
    lines += ["", "| embedding | 10-NN cell-type accuracy on held-out cells |", "|---|---|"]
    for method, accuracy in results["cell_type_knn_accuracy"].items():
        lines.append(f"| {method} | {accuracy:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("figures"),
                        help="folder for scgpt_umap.png and scgpt_results.json (default: figures)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a seconds-long smoke run (also: {QUICK_ENV}=1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--cell-prompt-split", choices=CELL_PROMPT_SPLITS, default="own",
                        help="genes of the cell-prompt training pass: a split of its own (default) "
                             "or the GEP split, as upstream scGPT does")
    args = parser.parse_args(argv)
    quick = args.quick or is_quick()
    return run(args.out, quick=quick, seed=args.seed, progress=not args.no_progress,
               cell_prompt_split=args.cell_prompt_split)


if __name__ == "__main__":
    main()
