"""A single-cell simulator whose conditionals are exact: a ground truth for gene-prompt generation.

Cells are drawn from a mixture over K cell types of Gaussians in
log-expression with low-rank-plus-diagonal covariance.  For cell type k
(weight pi_k) and G genes::

    mu_k    = b + a * sum_p A[k, p] * 1[gene in program p]        (G,)
    Sigma_k = W_k W_k^T + diag(psi)                               (G, G)
    W_k     = s * rows_normalised(sqrt(1 - f) * V + sqrt(f) * V_k)  (G, r)
    x | k   ~ N(mu_k, Sigma_k),   i.e.  x = mu_k + W_k z + sqrt(psi) * eps

- b (G,): a shared baseline, uniform in ``baseline_range``;
- *marker programs*: P disjoint sets of ``genes_per_program`` genes (program p
  is genes p*m .. (p+1)*m - 1); type k raises program p by ``marker_effect``
  a when A[k, p] (default: program p belongs to type p mod K, so with P = K
  each type has one program of its own and types share every other gene);
- *within-type programs*: r latent factors z ~ N(0, I_r) with loadings W_k;
  V (shared by all types) and V_k (type k's own) have iid N(0, 1) entries,
  f = ``type_specific_loadings`` sets how much of the loading direction is
  type-specific (0: the same within-type correlations in every type, so
  shared genes say nothing about the type; 1: independent per type), and
  each gene's row of W_k is scaled to norm s = ``loading_scale``, so a gene
  has the same variance s^2 + psi_g in every type (types differ in means and
  correlations, not in variances);
- psi (G,): each gene's own noise variance, uniform in ``noise_var_range``.

**Exact conditionals.**  Split the genes into known genes K (values x_K) and
unknown genes U.  Bayes' rule and the Gaussian conditioning formulas give, in
closed form::

    p(k | x_K)        = pi_k N(x_K; mu_kK, S_kKK) / sum_j pi_j N(x_K; mu_jK, S_jKK)
    x_U | x_K, k      ~ N(m_k, C_k)
    m_k               = mu_kU + S_kUK S_kKK^-1 (x_K - mu_kK)
    C_k               = S_kUU - S_kUK S_kKK^-1 S_kKU
    p(x_U | x_K)      = sum_k p(k | x_K) N(x_U; m_k, C_k)

(S_k = Sigma_k, its blocks indexed by K and U).  ``CellSimulator.conditional``
computes this in float64 (``MixtureConditional``): the Bayes-optimal point
prediction E[x_U | x_K] = sum_k p(k | x_K) m_k, exact joint samples, exact
log-densities, and independent per-gene samples from each gene's own marginal
(the chimeras that one-shot sampling makes, see below).

**Why this ground truth.**  The default types share most genes and differ on
a few marker programs.  A cell whose known genes include no marker gene of
its type is ambiguous (with ``type_specific_loadings`` > 0 the shared genes'
correlations carry some evidence too): p(k | x_K) is spread over several
types, and the conditional of the unknown genes is a mixture whose
components sit ``marker_effect`` apart on the marker genes (3.2 to 3.6 of a
gene's within-type standard deviations with the defaults, more once the known
genes pin down the factors), so it is bimodal.  A coherent sample commits to
one type for all unknown genes at once.  Drawing every unknown gene
independently from its own marginal (``sample_independent``: the best that
one-shot generation with independent per-gene sampling can do) picks a type
per gene: the result is a chimera, with markers of several types raised
together, and marker genes of different types come out uncorrelated where
the exact joint anti-correlates them.  (A model whose per-gene predictive is
one Gaussian, like ``ScGPT``'s mean and confidence heads, cannot even
represent the bimodal marginal: its one-shot draws fall between the modes.)
Point predictions do not show any of this: E[x_U | x_K] is the same however
the joint is sampled.  ``MixtureConditional.chimeric`` flags samples that no
plausible type explains.

**What the model sees: continuous values, not bins.**  scGPT bins each cell's
values by their ranks within the cell (``bin_expression``): a bin depends on
all the cell's values together, so the exact conditional given *binned* known
values is a Gaussian-mixture integral over a region cut out by rank
constraints, with no closed form.  The simulator's values are therefore fed
to the model as they are, continuous log-expression: genlab's ``ScGPT``
embeds a value with an MLP of the number (``ValueEncoder``) and predicts real
numbers, so nothing in the model needs bins.  ``tokenize_adata`` always bins;
``continuous_cell_tokens`` builds the same ``CellTokens`` with the raw values
instead (no zeros, no binning) for ``pretraining_batches`` and
``generate_values``.  The model divides values by ``ScGPTConfig.value_scale``
(``n_bins - 1`` unless set), so either set ``value_scale`` to the values' scale
or give it ``n_bins = tokens.n_bins``, which ``continuous_cell_tokens`` sets so
that the largest value is at most ``n_bins - 1``.  ``ScGPT.generate_from_gene_prompt`` and ``embed`` call
``tokenize_adata`` and so bin: do not use them on simulated cells.

Values are Gaussian, so not positive with certainty.  With the defaults
every gene's standard deviation is at most sqrt(0.5^2 + 0.15) = 0.63 and its
mean at least 3, so 0 lies at least 4.7 standard deviations below every mean,
for any seed: P(x < 0) < 1.1e-6 per value (``negative_value_probability``
gives the average, also stored in ``adata.uns``).  There is no dropout (zeros
would break exactness) and no clipping.

Example::

    >>> from genlab.scgpt.simulator import CellSimulator
    >>> sim = CellSimulator(seed=0)                      # 4 types, 50 genes
    >>> adata = sim.sample(500, seed=1)                  # AnnData, obs["cell_type"]
    >>> known = sim.gene_names[20:30]                    # shared genes only: ambiguous
    >>> unknown = sim.gene_names[:20]                    # the four marker programs
    >>> cond = sim.conditional(known, adata[:, known].X, unknown)
    >>> cond.type_probs.shape, cond.mean().shape         # (cells, K), (cells, U)
    ((500, 4), (500, 20))
    >>> coherent = cond.sample(seed=2)                   # (cells, U), exact joint draws
    >>> chimeras = cond.sample_independent(seed=2)       # each gene from its own marginal
    >>> bool(cond.chimeric(chimeras).mean() > cond.chimeric(coherent).mean())
    True

``genlab.experiments.scgpt_simulated`` trains ``ScGPT`` on these cells and
measures one-shot against K-step generation, the mean and sampled, against
this exact conditional (lecture 8, ``course/08_scgpt_sampling.ipynb``).

Everything random takes a seed or a ``np.random.Generator``; the model's
parameters are drawn from ``np.random.default_rng(seed)`` at construction.
Part of ``genlab.scgpt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import anndata
import numpy as np
import pandas as pd
import scipy.special
import torch

from genlab.scgpt.tokens import CellTokens, GeneVocab

__all__ = [
    "CellSimulator",
    "MixtureConditional",
    "continuous_cell_tokens",
]

UNS_KEY = "simulator"  # where ``CellSimulator.sample`` describes the model in ``adata.uns``


def _generator(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise TypeError(f"seed must be an int or a np.random.Generator, got {type(seed).__name__}")


def _finite_float64(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)):
        raise ValueError(f"{what} must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or infinite values (first at index "
                         f"{tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])})")
    return array


def _ones_after_first_axis(array: np.ndarray, n: int) -> np.ndarray:
    """(A, B, ...) -> (A, 1, .., 1, B, ...) with ``n`` ones: broadcasts against sample axes."""
    return array.reshape(array.shape[:1] + (1,) * n + array.shape[1:])


def _mahalanobis(residual: np.ndarray, cholesky: np.ndarray) -> np.ndarray:
    """r^T (L L^T)^-1 r for residual (K, ..., D) and Cholesky factors L (K, D, D) -> (K, ...)."""
    D = cholesky.shape[-1]
    flat = residual.reshape(residual.shape[0], -1, D)  # (K, n, D)
    whitened = np.linalg.solve(cholesky, np.swapaxes(flat, 1, 2))  # (K, D, n) = L^-1 r
    return (whitened ** 2).sum(axis=1).reshape(residual.shape[:-1])


def _gaussian_log_density(residual: np.ndarray, cholesky: np.ndarray) -> np.ndarray:
    """log N(residual; 0, L L^T) for residual (K, ..., D) and Cholesky factors L (K, D, D) -> (K, ...)."""
    D = cholesky.shape[-1]
    log_det = 2.0 * np.log(np.diagonal(cholesky, axis1=1, axis2=2)).sum(axis=1)  # (K,)
    log_det = log_det.reshape((-1,) + (1,) * (residual.ndim - 2))
    return -0.5 * (_mahalanobis(residual, cholesky) + log_det + D * np.log(2.0 * np.pi))


# ----------------------------------------------------------------------------
# the exact conditional


@dataclass
class MixtureConditional:
    """p(x_U | x_K) for N cells: a K-component Gaussian mixture per cell (module docstring).

    ``type_log_probs`` (N, K) log p(k | x_K); ``means`` (N, K, U) the per-type
    conditional means m_k; ``covariances`` (K, U, U) the per-type conditional
    covariances C_k (the same for every cell: they do not depend on x_K).
    """

    known_genes: list[str]
    unknown_genes: list[str]
    type_names: list[str]
    type_log_probs: np.ndarray  # (N, K)
    means: np.ndarray  # (N, K, U)
    covariances: np.ndarray  # (K, U, U)
    _cholesky: np.ndarray = field(init=False, repr=False)  # (K, U, U)

    def __post_init__(self):
        self._cholesky = np.linalg.cholesky(self.covariances)

    def __repr__(self) -> str:
        return (f"MixtureConditional({self.n_cells} cells, {len(self.known_genes)} known -> "
                f"{len(self.unknown_genes)} unknown genes, {len(self.type_names)} types)")

    @property
    def n_cells(self) -> int:
        return self.means.shape[0]

    @property
    def type_probs(self) -> np.ndarray:
        """(N, K) posterior type probabilities p(k | x_K)."""
        return np.exp(self.type_log_probs)

    def subset(self, cells) -> MixtureConditional:
        """The conditionals of some cells (an index array or a boolean mask)."""
        index = np.arange(self.n_cells)[np.asarray(cells)]
        return MixtureConditional(list(self.known_genes), list(self.unknown_genes), list(self.type_names),
                                  self.type_log_probs[index], self.means[index], self.covariances)

    def mean(self) -> np.ndarray:
        """(N, U) E[x_U | x_K] = sum_k p(k | x_K) m_k: the prediction with the least mean squared error."""
        return np.einsum("nk,nku->nu", self.type_probs, self.means)

    def covariance(self) -> np.ndarray:
        """(N, U, U) Cov[x_U | x_K] = sum_k p(k | x_K) (C_k + m_k m_k^T) - mean mean^T."""
        w, mean = self.type_probs, self.mean()
        second = np.einsum("nk,kuv->nuv", w, self.covariances) + np.einsum(
            "nk,nku,nkv->nuv", w, self.means, self.means)
        return second - mean[:, :, None] * mean[:, None, :]

    def _draw_types(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Types drawn from p(k | x_K): int array (*shape), shape = (S, N) or (S, N, U)."""
        cumulative = np.cumsum(self.type_probs, axis=1)  # (N, K)
        cumulative[:, -1] = 1.0
        uniform = rng.random(shape)
        expanded = _ones_after_first_axis(cumulative, len(shape) - 2)  # (N, K) or (N, 1, K)
        return (uniform[..., None] >= expanded).sum(axis=-1)  # first k with u < cumulative_k

    def sample(self, n_samples: int | None = None, *, seed, return_types: bool = False):
        """Exact joint draws of x_U | x_K: (N, U), or (n_samples, N, U) when ``n_samples`` is given.

        Each draw picks one type k ~ p(k | x_K) for the whole cell, then
        x_U = m_k + L_k eps (C_k = L_k L_k^T).  With ``return_types`` also the
        drawn types, (N,) or (n_samples, N).
        """
        rng = _generator(seed)
        S = 1 if n_samples is None else int(n_samples)
        if S < 1:
            raise ValueError(f"n_samples must be >= 1 or None, got {n_samples}")
        types = self._draw_types((S, self.n_cells), rng)  # (S, N)
        noise = rng.standard_normal((S, self.n_cells, len(self.unknown_genes)))  # (S, N, U)
        values = self.means[np.arange(self.n_cells), types]  # (S, N, U) m_k of each draw's type
        for k in range(len(self.type_names)):  # + L_k eps, type by type (memory: no (S, N, U, U))
            drawn = types == k
            values[drawn] += noise[drawn] @ self._cholesky[k].T
        if n_samples is None:
            values, types = values[0], types[0]
        return (values, types) if return_types else values

    def sample_independent(self, n_samples: int | None = None, *, seed) -> np.ndarray:
        """Each unknown gene drawn on its own from its exact marginal p(x_g | x_K): (N, U) or (S, N, U).

        The marginal of gene g is the 1-D mixture sum_k p(k | x_K) N(m_kg, C_k[g, g]);
        each gene draws its own type, so a cell may mix types (a chimera).
        This is the best one-shot generation with independent per-gene
        sampling can do; its per-gene marginals are exact, its joint is not.
        """
        rng = _generator(seed)
        S = 1 if n_samples is None else int(n_samples)
        if S < 1:
            raise ValueError(f"n_samples must be >= 1 or None, got {n_samples}")
        U = len(self.unknown_genes)
        types = self._draw_types((S, self.n_cells, U), rng)  # (S, N, U) one type per gene
        cells, genes = np.arange(self.n_cells)[:, None], np.arange(U)[None, :]
        sd = np.sqrt(np.diagonal(self.covariances, axis1=1, axis2=2))  # (K, U)
        values = self.means[cells, types, genes] + sd[types, genes] * rng.standard_normal(types.shape)
        return values[0] if n_samples is None else values

    def _checked_unknown(self, x_unknown) -> np.ndarray:
        x = _finite_float64(x_unknown, "x_unknown")
        U = len(self.unknown_genes)
        if x.ndim not in (2, 3) or x.shape[-2:] != (self.n_cells, U):
            raise ValueError(f"x_unknown must be (cells, unknown genes) = ({self.n_cells}, {U}) "
                             f"or (samples, {self.n_cells}, {U}), got {x.shape}")
        return x

    def _residuals(self, x: np.ndarray) -> np.ndarray:
        """x - m_k for x (..., N, U) -> (K, ..., N, U)."""
        return x[None] - _ones_after_first_axis(np.moveaxis(self.means, 1, 0), x.ndim - 2)

    def log_prob(self, x_unknown) -> np.ndarray:
        """log p(x_U | x_K) of values (N, U) or (S, N, U) -> (N,) or (S, N)."""
        x = self._checked_unknown(x_unknown)
        log_w = np.moveaxis(self.type_log_probs, 1, 0)  # (K, N)
        log_density = _gaussian_log_density(self._residuals(x), self._cholesky)  # (K, ..., N)
        return scipy.special.logsumexp(_ones_after_first_axis(log_w, x.ndim - 2) + log_density, axis=0)

    def chimeric(self, x_unknown, level: float = 0.99, min_prob: float = 1e-3) -> np.ndarray:
        """Bool (N,) or (S, N): True where no plausible type explains the generated values.

        A type k is *plausible* for a cell if p(k | x_K) >= ``min_prob``; it
        *explains* x_U if the squared Mahalanobis distance (x_U - m_k)^T
        C_k^-1 (x_U - m_k) is at most the ``level`` quantile of chi^2 with U
        degrees of freedom.  An exact sample comes from one type k, under which
        that distance is chi^2_U, so at most a fraction 1 - ``level`` of exact
        samples are flagged, plus those drawn from implausible types (posterior
        mass below ``min_prob`` each); a chimera (markers of two types raised
        at once) lies far from every type's conditional.
        """
        import scipy.stats  # slow to import; only needed here

        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        x = self._checked_unknown(x_unknown)
        U = len(self.unknown_genes)
        mahalanobis = _mahalanobis(self._residuals(x), self._cholesky)  # (K, ..., N)
        explained = mahalanobis <= scipy.stats.chi2.ppf(level, df=U)
        plausible = _ones_after_first_axis(np.moveaxis(self.type_probs, 1, 0) >= min_prob, x.ndim - 2)  # (K, .., N)
        return ~(explained & plausible).any(axis=0)


# ----------------------------------------------------------------------------
# the simulator


@dataclass
class CellSimulator:
    """Cell types with marker programs and within-type gene programs (module docstring).

    Parameters drawn at construction from ``np.random.default_rng(seed)``, in
    this order: ``baseline`` (G,), ``noise_var`` (G,), the shared loadings V
    (G, r), then each type's own loadings V_k (G, r).  Derived attributes:
    ``gene_names``, ``type_names``, ``program_genes`` (P, m) gene indices,
    ``type_programs`` (K, P) bool A, ``weights`` (K,) pi, ``means`` (K, G),
    ``loadings`` (K, G, r) W_k, and the ``covariances`` property (K, G, G).
    """

    n_types: int = 4
    n_genes: int = 50
    n_programs: int = 4
    genes_per_program: int = 5
    rank: int = 3
    marker_effect: float = 2.0
    loading_scale: float = 0.5
    type_specific_loadings: float = 0.5
    noise_var_range: tuple[float, float] = (0.05, 0.15)
    baseline_range: tuple[float, float] = (3.0, 5.0)
    weights: Sequence[float] | None = None  # pi; None = uniform
    type_programs: Sequence[Sequence[bool]] | None = None  # A (K, P); None = program p in type p mod K
    seed: int = 0

    gene_names: list[str] = field(init=False, repr=False)
    type_names: list[str] = field(init=False, repr=False)
    program_genes: np.ndarray = field(init=False, repr=False)
    baseline: np.ndarray = field(init=False, repr=False)
    noise_var: np.ndarray = field(init=False, repr=False)
    means: np.ndarray = field(init=False, repr=False)
    loadings: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        K, G, P, m, r = self.n_types, self.n_genes, self.n_programs, self.genes_per_program, self.rank
        for name, value, least in (("n_types", K, 1), ("n_genes", G, 1), ("n_programs", P, 0),
                                   ("genes_per_program", m, 1), ("rank", r, 0)):
            if int(value) != value or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value}")
        if P * m > G:
            raise ValueError(f"{P} programs of {m} genes need {P * m} genes, more than n_genes={G}")
        if not 0.0 <= self.type_specific_loadings <= 1.0:
            raise ValueError(f"type_specific_loadings must be in [0, 1], got {self.type_specific_loadings}")
        low, high = self.noise_var_range
        if not 0.0 < low <= high:
            raise ValueError(f"noise_var_range must satisfy 0 < low <= high, got {self.noise_var_range}")
        if self.baseline_range[0] > self.baseline_range[1]:
            raise ValueError(f"baseline_range must be (low, high), got {self.baseline_range}")
        self.weights = self._checked_weights()
        self.type_programs = self._checked_type_programs()

        self.gene_names = [f"gene_{g:0{len(str(G - 1))}d}" for g in range(G)]
        self.type_names = [f"type_{k}" for k in range(K)]
        self.program_genes = np.arange(P * m).reshape(P, m)  # (P, m)
        rng = np.random.default_rng(self.seed)
        self.baseline = rng.uniform(*self.baseline_range, size=G)  # (G,)
        self.noise_var = rng.uniform(low, high, size=G)  # (G,) psi
        shared = rng.standard_normal((G, r))  # (G, r) V
        own = rng.standard_normal((K, G, r))  # (K, G, r) V_k
        f = self.type_specific_loadings
        direction = np.sqrt(1.0 - f) * shared + np.sqrt(f) * own  # (K, G, r)
        norm = np.linalg.norm(direction, axis=2, keepdims=True)  # (K, G, 1)
        self.loadings = self.loading_scale * direction / np.where(norm > 0, norm, 1.0)  # (K, G, r) W_k
        raised = self.type_programs.astype(np.float64) @ self.program_membership()  # (K, G)
        self.means = self.baseline + self.marker_effect * raised  # (K, G) mu_k

    def _checked_weights(self) -> np.ndarray:
        if self.weights is None:
            return np.full(self.n_types, 1.0 / self.n_types)
        weights = _finite_float64(self.weights, "weights")
        if weights.shape != (self.n_types,) or (weights <= 0).any() or abs(weights.sum() - 1.0) > 1e-9:
            raise ValueError(f"weights must be {self.n_types} positive numbers summing to 1, got {self.weights}")
        return weights

    def _checked_type_programs(self) -> np.ndarray:
        K, P = self.n_types, self.n_programs
        if self.type_programs is None:
            return np.arange(P)[None, :] % K == np.arange(K)[:, None]  # (K, P)
        programs = np.asarray(self.type_programs)
        if programs.shape != (K, P) or programs.dtype != bool:
            raise ValueError(f"type_programs must be bool (n_types, n_programs) = ({K}, {P}), "
                             f"got {programs.dtype} {programs.shape}")
        return programs

    def program_membership(self) -> np.ndarray:
        """(P, G) float: 1 where the gene belongs to the program."""
        membership = np.zeros((self.n_programs, self.n_genes))
        membership[np.arange(self.n_programs)[:, None], self.program_genes] = 1.0
        return membership

    @property
    def covariances(self) -> np.ndarray:
        """(K, G, G) Sigma_k = W_k W_k^T + diag(psi)."""
        return np.einsum("kgr,khr->kgh", self.loadings, self.loadings) + np.diag(self.noise_var)

    def negative_value_probability(self) -> float:
        """P(x_g < 0) averaged over genes and types (weighted by pi): the Gaussian's tail below 0."""
        sd = np.sqrt(np.diagonal(self.covariances, axis1=1, axis2=2))  # (K, G)
        return float(self.weights @ scipy.special.ndtr(-self.means / sd).mean(axis=1))

    def gene_indices(self, genes, what: str = "genes") -> np.ndarray:
        """Gene names or integer indices -> int64 indices; clear errors for unknown or repeated genes."""
        if isinstance(genes, str):
            raise ValueError(f"{what} must be a list of genes, got the single string {genes!r}")
        items = list(genes.tolist() if isinstance(genes, (np.ndarray, pd.Index)) else genes)
        if all(isinstance(g, str) for g in items):
            position = {name: i for i, name in enumerate(self.gene_names)}
            absent = [g for g in items if g not in position]
            if absent:
                raise ValueError(f"{what}: {len(absent)} gene name(s) not in the simulator, e.g. "
                                 f"{absent[:5]} (names are {self.gene_names[0]} .. {self.gene_names[-1]})")
            indices = np.array([position[g] for g in items], dtype=np.int64)
        elif all(isinstance(g, (int, np.integer)) and not isinstance(g, (bool, np.bool_)) for g in items):
            indices = np.array(items, dtype=np.int64)
            outside = indices[(indices < 0) | (indices >= self.n_genes)]
            if outside.size:
                raise ValueError(f"{what}: gene indices must be in 0..{self.n_genes - 1}, got {outside[:5].tolist()}")
        else:
            raise ValueError(f"{what} must be all gene names (str) or all integer indices")
        if np.unique(indices).size != indices.size:
            raise ValueError(f"{what} repeat a gene: {[self.gene_names[i] for i in indices]}")
        return indices

    def sample(self, n_cells: int, seed) -> anndata.AnnData:
        """``n_cells`` cells drawn from the model: AnnData (cells, genes), float64 log-expression.

        ``obs["cell_type"]`` (categorical, categories ``type_names``);
        ``var["program"]`` the marker program of each gene ("" for shared
        genes), ``var["baseline"]``, ``var["noise_var"]``;
        ``obsm["factors"]`` (cells, r) the within-type factors z;
        ``uns["simulator"]`` the parameters (weights, means, loadings, ...).
        Draws from ``seed`` (int or ``np.random.Generator``): types, factors,
        noise, in that order.
        """
        if int(n_cells) != n_cells or n_cells < 1:
            raise ValueError(f"n_cells must be an integer >= 1, got {n_cells}")
        rng = _generator(seed)
        n = int(n_cells)
        types = rng.choice(self.n_types, size=n, p=self.weights)  # (n,)
        factors = rng.standard_normal((n, self.rank))  # (n, r) z
        noise = rng.standard_normal((n, self.n_genes))  # (n, G) eps
        X = (self.means[types] + np.einsum("ngr,nr->ng", self.loadings[types], factors)
             + np.sqrt(self.noise_var) * noise)  # (n, G)
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical.from_codes(types, categories=self.type_names)},
            index=[f"cell_{i}" for i in range(n)])
        program = np.full(self.n_genes, "", dtype=object)
        for p, genes in enumerate(self.program_genes):
            program[genes] = f"program_{p}"
        var = pd.DataFrame({"program": program, "baseline": self.baseline, "noise_var": self.noise_var},
                           index=self.gene_names)
        uns = {UNS_KEY: {"repr": repr(self), "weights": self.weights, "means": self.means,
                         "loadings": self.loadings, "noise_var": self.noise_var,
                         "type_programs": self.type_programs, "program_genes": self.program_genes,
                         "negative_value_probability": self.negative_value_probability()}}
        return anndata.AnnData(X=X, obs=obs, var=var, obsm={"factors": factors}, uns=uns)

    def conditional(self, known_genes, known_values, unknown_genes=None) -> MixtureConditional:
        """The exact p(x_U | x_K) of each cell (``MixtureConditional``), known genes common to all cells.

        ``known_genes``, ``unknown_genes``: names or indices (disjoint; unknown
        defaults to every other gene; known may be empty: the prior).
        ``known_values``: (cells, known genes) array, one cell as a 1-D array,
        or an AnnData whose columns ``known_genes`` are read.  For cells with
        different known sets, call once per set (or per cell).
        """
        known = self.gene_indices(known_genes, "known_genes")
        if unknown_genes is None:
            unknown = np.setdiff1d(np.arange(self.n_genes), known)
        else:
            unknown = self.gene_indices(unknown_genes, "unknown_genes")
        if unknown.size == 0:
            raise ValueError("there is no unknown gene to condition")
        overlap = np.intersect1d(known, unknown)
        if overlap.size:
            raise ValueError(f"known and unknown genes overlap: {[self.gene_names[i] for i in overlap[:5]]}")
        x = self._known_matrix(known_values, known)  # (N, k)

        S = self.covariances  # (K, G, G)
        S_kk, S_uk = S[:, known][:, :, known], S[:, unknown][:, :, known]  # (K, k, k), (K, U, k)
        S_uu = S[:, unknown][:, :, unknown]  # (K, U, U)
        residual = x[None] - self.means[:, None, known]  # (K, N, k)
        log_w = np.log(self.weights)[:, None] + (
            _gaussian_log_density(residual, np.linalg.cholesky(S_kk)) if known.size
            else np.zeros((self.n_types, x.shape[0])))  # (K, N)
        type_log_probs = (log_w - scipy.special.logsumexp(log_w, axis=0)).T  # (N, K)
        gain = (np.swapaxes(np.linalg.solve(S_kk, np.swapaxes(S_uk, 1, 2)), 1, 2) if known.size
                else S_uk)  # (K, U, k) S_UK S_KK^-1 (empty when nothing is known)
        means = self.means[:, None, unknown] + np.einsum("kuj,knj->knu", gain, residual)  # (K, N, U)
        covariances = S_uu - gain @ np.swapaxes(S_uk, 1, 2)  # (K, U, U)
        covariances = 0.5 * (covariances + np.swapaxes(covariances, 1, 2))
        return MixtureConditional(
            known_genes=[self.gene_names[i] for i in known],
            unknown_genes=[self.gene_names[i] for i in unknown],
            type_names=list(self.type_names), type_log_probs=type_log_probs,
            means=np.ascontiguousarray(np.moveaxis(means, 0, 1)), covariances=covariances)

    def _known_matrix(self, known_values, known: np.ndarray) -> np.ndarray:
        if isinstance(known_values, anndata.AnnData):
            columns = [self.gene_names[i] for i in known]
            absent = [g for g in columns if g not in known_values.var_names]
            if absent:
                raise ValueError(f"known genes missing from the AnnData's var_names: {absent[:5]}")
            block = known_values[:, columns].X
            known_values = block.toarray() if hasattr(block, "toarray") else block
        x = _finite_float64(known_values, "known_values")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != known.size:
            raise ValueError(f"known_values must be (cells, {known.size} known genes), got shape {x.shape}")
        return x


# ----------------------------------------------------------------------------
# continuous values as the model's tokens


def continuous_cell_tokens(adata: anndata.AnnData, vocab: GeneVocab) -> CellTokens:
    """``CellTokens`` of ``adata``'s raw values, unbinned (see "What the model sees" above).

    Every cell has every gene of ``adata`` (in ``var_names`` order; each must
    be in ``vocab``) with its value as it is: ``values`` (N, G) float32 and
    ``binned`` (N, G) float64 hold the continuous values.  ``n_bins`` is set
    to ``ceil(max value) + 1`` so that ``ScGPTConfig(n_bins=tokens.n_bins)``
    has ``value_scale`` >= every value.
    """
    genes = [str(g) for g in adata.var_names]
    column_ids = torch.from_numpy(vocab.encode(genes))  # raises for genes missing from the vocabulary
    block = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
    values = _finite_float64(block, "expression values")  # (N, G)
    N, G = values.shape
    return CellTokens(
        gene_ids=column_ids.expand(N, G).clone(), values=torch.from_numpy(values).float(),
        is_real=torch.ones(N, G, dtype=torch.bool), binned=values, genes=genes,
        obs_names=[str(name) for name in adata.obs_names],
        n_bins=max(int(np.ceil(values.max())) + 1, 2))
