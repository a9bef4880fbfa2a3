"""The scGPT model: ``ScGPTConfig``, ``ScGPTOutput`` and ``ScGPT``.

``ScGPT.forward`` runs the single sequence [<cls>, known genes; unknown genes]
under the known/unknown mask; ``embed``, ``generate_from_gene_prompt`` and
``generate_from_cell_prompt`` take and give AnnData.  Part of ``genlab.scgpt``
(the package docstring explains the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import anndata
import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from genlab.masks import combine_masks, known_unknown_mask, padding_mask
from genlab.scgpt.generation import Generation, _generation_adata, generate_values
from genlab.scgpt.layers import (
    CellExpressionHead,
    ConfidenceHead,
    ExpressionHead,
    GeneEncoder,
    TransformerLayer,
    ValueEncoder,
    self_slot_mask,
)
from genlab.scgpt.packing import _all_real
from genlab.scgpt.tokens import GeneVocab, tokenize_adata

__all__ = [
    "EMBEDDING_KEY",
    "ScGPTConfig",
    "ScGPTOutput",
    "ScGPT",
]

EMBEDDING_KEY = "X_scgpt"  # where ``ScGPT.embed`` writes cell embeddings in ``adata.obsm``


@dataclass
class ScGPTConfig:
    """Hyperparameters of ``ScGPT``.  ``vocab_size`` = ``len(GeneVocab)`` (genes + 2)."""

    vocab_size: int
    n_bins: int = 51
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    layer_norm_eps: float = 1e-5
    pad_id: int = GeneVocab.pad_id
    cls_id: int = GeneVocab.cls_id
    attention_backend: str = "torch"  # "scratch" (genlab's own, the (T, T) mask) or "torch" (fused SDPA, self slot)
    seed: int = 0  # parameter initialisation
    # Values are divided by value_scale inside the model (and the heads multiply by it).
    # None: the largest bin, n_bins - 1, filled in when the config is made.  Set it for
    # values that are not bins (e.g. continuous log-expression: about the largest value).
    value_scale: float | None = None

    def __post_init__(self):
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must count <pad>, <cls> and >= 1 gene, got {self.vocab_size}")
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.value_scale is None:
            self.value_scale = float(self.n_bins - 1)
        if not (isinstance(self.value_scale, (int, float)) and math.isfinite(self.value_scale)
                and self.value_scale > 0):
            raise ValueError(f"value_scale must be a finite number > 0, got {self.value_scale!r}")
        self.value_scale = float(self.value_scale)


@dataclass
class ScGPTOutput:
    """What ``ScGPT.forward`` returns; G = number of unknown genes."""

    cell_embedding: torch.Tensor  # (B, C) the <cls> output
    value: torch.Tensor  # (B, G) GEP: predicted value of each unknown gene, bins
    log_var: torch.Tensor  # (B, G) log of the predicted variance of ``value``, bins^2
    cell_value: torch.Tensor  # (B, G) GEPC/MVC: the value predicted from cell_embedding alone
    hidden: torch.Tensor  # (B, 1+P+G, C) final outputs of [<cls>, known; unknown]

    @property
    def confidence(self) -> torch.Tensor:
        """(B, G) confidence of each GEP prediction: minus its predicted variance (bins^2)."""
        return -self.log_var.exp()


class ScGPT(nn.Module):
    """scGPT for masked generation; see the ``genlab.scgpt`` docstring.

    ``forward`` takes a batch already split into known genes (ids and values)
    and unknown genes (ids only) and returns ``ScGPTOutput``.  With a
    ``vocab`` the AnnData-level methods work too: ``embed``,
    ``generate_from_gene_prompt``, ``generate_from_cell_prompt``.
    """

    def __init__(self, config: ScGPTConfig, vocab: GeneVocab | None = None):
        super().__init__()
        if vocab is not None and len(vocab) != config.vocab_size:
            raise ValueError(f"len(vocab)={len(vocab)} differs from config.vocab_size={config.vocab_size}")
        self.config = config
        self.vocab = vocab
        C, eps, scale = config.d_model, config.layer_norm_eps, config.value_scale
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(config.seed)
            self.gene_encoder = GeneEncoder(config.vocab_size, C, config.pad_id, eps)
            self.value_encoder = ValueEncoder(C, scale, eps)
            self.generate_flag = nn.Parameter(torch.randn(C))  # "to be generated", in place of a value
            self.cell_prompt_norm = nn.LayerNorm(C, eps=eps)
            self.layers = nn.ModuleList(
                TransformerLayer(C, config.n_heads, config.d_ff, eps, config.attention_backend)
                for _ in range(config.n_layers)
            )
            self.final_norm = nn.LayerNorm(C, eps=eps)
            self.expression_head = ExpressionHead(C, scale)
            self.confidence_head = ConfidenceHead(C, scale)
            self.cell_expression_head = CellExpressionHead(C, scale)

    # -- the pieces both the single-sequence model and the two-stream reference use

    def embed_tokens(self, known_genes, known_values, unknown_genes, cell_prompt=None):
        """Input embeddings: <cls> (B, 1, C), known (B, P, C), unknown (B, G, C).

        known = gene embedding + value embedding; unknown = gene embedding +
        the learned ``generate_flag``; <cls> = the ``<cls>`` embedding, or
        ``cell_prompt`` (B, C) (a cell embedding) after a LayerNorm when given:
        a cell embedding is a final-LayerNorm output, and the norm puts an
        average of several (e.g. a cell type's mean) back on that scale.
        """
        B = known_genes.size(0)
        if known_values.shape != known_genes.shape:
            raise ValueError(f"known_values {tuple(known_values.shape)} must match "
                             f"known_genes {tuple(known_genes.shape)}")
        if unknown_genes.size(0) != B:
            raise ValueError(f"known and unknown genes need the same batch size, "
                             f"got {B} and {unknown_genes.size(0)}")
        dtype = self.generate_flag.dtype
        if cell_prompt is None:
            cls_ids = torch.full((B, 1), self.config.cls_id, dtype=torch.long, device=known_genes.device)
            cls = self.gene_encoder(cls_ids)  # (B, 1, C)
        else:
            if cell_prompt.shape != (B, self.config.d_model):
                raise ValueError(f"cell_prompt must be (B, d_model) = ({B}, {self.config.d_model}), "
                                 f"got {tuple(cell_prompt.shape)}")
            cls = self.cell_prompt_norm(cell_prompt.to(dtype)).unsqueeze(1)  # (B, 1, C)
        known = self.gene_encoder(known_genes) + self.value_encoder(known_values.to(dtype))  # (B, P, C)
        unknown = self.gene_encoder(unknown_genes) + self.generate_flag  # (B, G, C)
        return cls, known, unknown

    def heads(self, cell: torch.Tensor, unknown_hidden: torch.Tensor,
              unknown_genes: torch.Tensor, hidden: torch.Tensor) -> ScGPTOutput:
        """Apply the three heads to the final (normed) outputs."""
        return ScGPTOutput(
            cell_embedding=cell,  # (B, C)
            value=self.expression_head(unknown_hidden),  # (B, G)
            log_var=self.confidence_head(unknown_hidden),  # (B, G)
            cell_value=self.cell_expression_head(cell, self.gene_encoder(unknown_genes)),  # (B, G)
            hidden=hidden,
        )

    def attention_mask(self, known_is_real: torch.Tensor, unknown_is_real: torch.Tensor,
                       generative_mask: bool = True) -> torch.Tensor:
        """Bool, True = may attend: (B, 1, T, T), T = 1+P+G; (B, 1, 1, T) without the generative mask.

        ``known_unknown_mask(1 + P, G)`` (``<cls>`` counts as known) AND a
        padding mask that hides padded keys from every query.  Every query may
        still see ``<cls>``, so no row is fully masked.  ``generative_mask=False``:
        the padding mask alone, a plain encoder in which every token sees every
        real token, unknown genes included (upstream's cell-prompt inference).
        """
        B, P = known_is_real.shape
        G = unknown_is_real.size(1)
        cls_is_real = torch.ones(B, 1, dtype=torch.bool, device=known_is_real.device)
        is_real = torch.cat([cls_is_real, known_is_real, unknown_is_real], dim=1)  # (B, T)
        if not generative_mask:
            return padding_mask(is_real)  # (B, 1, 1, T)
        structure = known_unknown_mask(1 + P, G, device=known_is_real.device)  # (T, T)
        return combine_masks(structure, padding_mask(is_real))  # (B, 1, T, T)

    # -- forward

    def forward(self, known_genes: torch.Tensor, known_values: torch.Tensor,
                unknown_genes: torch.Tensor, known_is_real: torch.Tensor | None = None,
                unknown_is_real: torch.Tensor | None = None,
                cell_prompt: torch.Tensor | None = None,
                generative_mask: bool = True) -> ScGPTOutput:
        """One attention call per layer on the single sequence [<cls>, known; unknown].

        known_genes (B, P) ids, known_values (B, P) bins, unknown_genes (B, G)
        ids; ``*_is_real`` (B, P) / (B, G) bool, False at padding (None: no
        padding); ``cell_prompt`` (B, C) replaces the <cls> input.  P or G may
        be 0.  ``generative_mask=False`` runs a plain encoder instead (padding
        mask only: unknown genes see each other, known genes see them), as
        upstream's ``TransformerModel.generate`` does for a cell prompt.
        """
        known_is_real = _all_real(known_is_real, known_genes)
        unknown_is_real = _all_real(unknown_is_real, unknown_genes)
        cls, known, unknown = self.embed_tokens(known_genes, known_values, unknown_genes, cell_prompt)
        P = known.size(1)
        x = torch.cat([cls, known, unknown], dim=1)  # (B, 1+P+G, C)
        if not generative_mask:  # plain encoder: padding only, any backend
            mask, n_known = self.attention_mask(known_is_real, unknown_is_real, False), None  # (B, 1, 1, T)
        elif self.config.attention_backend == "scratch":  # the mask itself, written out
            mask, n_known = self.attention_mask(known_is_real, unknown_is_real), None  # (B, 1, T, T)
        else:  # the same attention with 1+P+1 keys, fused (``known_unknown_attention``)
            mask, n_known = self_slot_mask(known_is_real, unknown_is_real), 1 + P  # (..., T, 2+P)
        for layer in self.layers:
            x = layer(x, mask, n_known)  # (B, T, C)
        x = self.final_norm(x)
        return self.heads(x[:, 0], x[:, 1 + P:], unknown_genes, hidden=x)

    # -- AnnData in, AnnData out

    def _require_vocab(self) -> GeneVocab:
        if self.vocab is None:
            raise ValueError("this ScGPT has no vocab; build it as ScGPT(config, vocab) to use AnnData")
        return self.vocab

    def _device(self) -> torch.device:
        return self.generate_flag.device

    @torch.no_grad()
    def embed(self, adata: anndata.AnnData, batch_size: int = 64,
              key: str = EMBEDDING_KEY) -> np.ndarray:
        """Cell embeddings (<cls> outputs, all genes of ``adata`` known) -> ``adata.obsm[key]``.

        Every gene of ``adata`` must be in the vocabulary; values are binned
        per cell as in training.  Returns the (cells, d_model) array.
        """
        tokens = tokenize_adata(adata, self._require_vocab(), self.config.n_bins)
        device = self._device()
        embeddings = []
        for start in range(0, len(tokens), batch_size):
            rows = slice(start, start + batch_size)
            genes = tokens.gene_ids[rows].to(device)
            no_unknown = genes[:, :0]  # (B, 0)
            out = self(genes, tokens.values[rows].to(device), no_unknown,
                       known_is_real=tokens.is_real[rows].to(device))
            embeddings.append(out.cell_embedding.float().cpu())
        result = torch.cat(embeddings).numpy()  # (N, C)
        adata.obsm[key] = result
        return result

    def _unknown_matrix(self, adata: anndata.AnnData, unknown) -> np.ndarray:
        """Bool (cells, genes) from a bool matrix or from gene names."""
        if isinstance(unknown, torch.Tensor):
            unknown = unknown.cpu().numpy()
        array = np.asarray(unknown)
        if array.dtype == bool:
            if array.shape != adata.shape:
                raise ValueError(f"unknown must be bool (cells, genes) = {adata.shape}, got {array.shape}")
            return array
        names = [str(gene) for gene in array.ravel()]
        absent = [gene for gene in names if gene not in adata.var_names]
        if absent:
            raise ValueError(f"unknown genes not in adata.var_names: {absent[:5]}")
        column = np.isin(adata.var_names.astype(str), names)
        return np.broadcast_to(column, adata.shape).copy()

    @torch.no_grad()
    def generate_from_gene_prompt(self, adata: anndata.AnnData, unknown, steps: int = 1,
                                  batch_size: int = 64, sample: bool = False,
                                  generator: torch.Generator | None = None) -> anndata.AnnData:
        """Gene prompt: generate the ``unknown`` genes of each cell from its other (known) genes.

        ``unknown``: bool (cells, genes) array, True = generate; or a list of
        gene names generated in every cell.  Known genes keep their bins;
        binning uses each cell's full ``adata`` row as in training (to impute
        genes whose values you do not have, set them to 0).  ``steps`` = K of
        iterative generation (1 = one shot).  ``sample``: draw each generated
        value from the predicted Gaussian (``generate_values``), from
        ``generator``, instead of taking the mean.  Returns an AnnData with
        ``adata``'s obs and var: X = bins (known genes) and generated values,
        layers ``generated`` (bool), ``confidence`` (NaN for known genes) and
        ``step`` (the step that generated the gene, -1 for known genes).
        """
        unknown = self._unknown_matrix(adata, unknown)
        tokens = tokenize_adata(adata, self._require_vocab(), self.config.n_bins)
        generation = self._generate_in_batches(tokens.gene_ids, tokens.values, torch.from_numpy(unknown),
                                               batch_size, steps=steps, sample=sample, generator=generator)
        return _generation_adata(generation, unknown, adata.obs.copy(), adata.var.copy())

    @torch.no_grad()
    def generate_from_cell_prompt(self, cell_embeddings, genes: Sequence[str] | None = None,
                                  steps: int = 1, obs: pd.DataFrame | None = None,
                                  batch_size: int = 64, generative_mask: bool = True,
                                  sample: bool = False,
                                  generator: torch.Generator | None = None) -> anndata.AnnData:
        """Cell prompt: a whole profile from each cell embedding placed in the <cls> slot.

        ``cell_embeddings`` (n, d_model), e.g. the mean ``X_scgpt`` of one cell
        type; ``genes`` to generate (default: every gene of the vocabulary);
        ``steps`` = K.  The model runs under the known/unknown mask it was
        trained with; ``generative_mask=False`` runs it as a plain encoder
        instead (the genes being generated see each other), as upstream's
        ``TransformerModel.generate`` does, which a model trained with the mask
        has never seen (``genlab.experiments.scgpt_pbmc`` measures both).
        ``sample``, ``generator``: as in ``generate_from_gene_prompt``.
        Returns an AnnData (n, genes) with layers as in
        ``generate_from_gene_prompt``.
        """
        vocab = self._require_vocab()
        genes = vocab.genes if genes is None else [str(gene) for gene in genes]
        prompts = torch.as_tensor(np.asarray(cell_embeddings), dtype=torch.float32)
        if prompts.dim() != 2 or prompts.size(1) != self.config.d_model:
            raise ValueError(f"cell_embeddings must be (n, {self.config.d_model}), "
                             f"got {tuple(prompts.shape)}")
        n = prompts.size(0)
        gene_ids = torch.from_numpy(vocab.encode(genes)).expand(n, -1)  # (n, G)
        unknown = torch.ones(n, len(genes), dtype=torch.bool)
        generation = self._generate_in_batches(gene_ids, torch.zeros(n, len(genes)), unknown, batch_size,
                                               cell_prompts=prompts, steps=steps, sample=sample,
                                               generator=generator, generative_mask=generative_mask)
        if obs is None:
            obs = pd.DataFrame(index=[f"generated_{i}" for i in range(n)])
        return _generation_adata(generation, unknown.numpy(), obs, pd.DataFrame(index=genes))

    def _generate_in_batches(self, gene_ids, values, is_unknown, batch_size, cell_prompts=None,
                             **generate_options) -> Generation:
        """``generate_values`` on ``batch_size`` cells at a time (on the model's device), concatenated."""
        device = self._device()
        parts = []
        for start in range(0, gene_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            prompt = None if cell_prompts is None else cell_prompts[rows].to(device)
            part = generate_values(self, gene_ids[rows].to(device), values[rows].to(device),
                                   is_unknown[rows].to(device), cell_prompt=prompt, **generate_options)
            parts.append(part)
        return Generation(*(torch.cat([getattr(p, f.name).cpu() for p in parts])
                            for f in fields(Generation)))
