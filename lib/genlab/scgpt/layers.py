"""scGPT's small modules: the gene and value encoders, the transformer layer, the heads.

``TransformerLayer`` applies either a (T, T) mask (the ``"scratch"`` backend)
or ``known_unknown_attention``, the same attention with K+1 keys (the
``"torch"`` backend), whose mask ``self_slot_mask`` builds.  The heads turn
final outputs into predicted values (GEP), their log-variance (confidence) and
values predicted from the cell embedding (GEPC/MVC).  Part of ``genlab.scgpt``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.attention import MultiHeadAttention, merge_heads, split_heads

__all__ = [
    "GeneEncoder",
    "ValueEncoder",
    "FeedForward",
    "TransformerLayer",
    "self_slot_mask",
    "known_unknown_attention",
    "ExpressionHead",
    "ConfidenceHead",
    "CellExpressionHead",
]


class GeneEncoder(nn.Module):
    """Token id -> embedding, then LayerNorm: (B, T) -> (B, T, C)."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int, eps: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embedding(gene_ids))  # (B, T, C)


class ValueEncoder(nn.Module):
    """Expression value in bins -> embedding, an MLP on the bin *as a number*: (B, T) -> (B, T, C).

    Why not one embedding row per bin: (1) bins are ordered (bin 20 and bin 21
    mean almost the same expression); an MLP of the number has that built in,
    a table would have to learn it row by row; (2) generated values are real
    numbers (the GEP head's means) and iterative generation feeds them back as
    known values: the MLP takes them as they are, a table would need them
    rounded.  The input is divided by ``ScGPTConfig.value_scale`` (n_bins - 1,
    the largest bin, unless set), which puts bins in [0, 1].
    Linear(1, C) -> ReLU -> Linear(C, C) -> LayerNorm, like upstream's
    ``ContinuousValueEncoder``.
    """

    def __init__(self, d_model: int, value_scale: float, eps: float):
        super().__init__()
        self.value_scale = value_scale
        self.fc_in = nn.Linear(1, d_model)
        self.fc_out = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = (values / self.value_scale).unsqueeze(-1)  # (B, T, 1)
        return self.norm(self.fc_out(F.relu(self.fc_in(x))))  # (B, T, C)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(C, d_ff) -> GELU -> Linear(d_ff, C)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))  # (B, T, C)


class TransformerLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(LN(x)), then x + MLP(LN(x)).

    Pre-LN (LayerNorm inside the residual branch, one final LayerNorm after the
    last layer) trains stably with a short warm-up, which matters for a
    minutes-long CPU run; upstream scGPT uses post-LN
    (``nn.TransformerEncoderLayer`` defaults).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float, backend: str):
        super().__init__()
        self.norm_attn = nn.LayerNorm(d_model, eps=eps)
        self.attn = MultiHeadAttention(d_model, n_heads, backend=backend)
        self.norm_ff = nn.LayerNorm(d_model, eps=eps)
        self.ff = FeedForward(d_model, d_ff)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, n_known: int | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C).  ``attn_mask``: (..., T, T), True = may attend; or, with
        ``n_known`` = K, the (..., T, K+1) mask of ``known_unknown_attention``."""
        h = self.norm_attn(x)
        if n_known is None:
            x = x + self.attn(h, attn_mask=attn_mask)  # (B, T, C)
        else:
            x = x + known_unknown_attention(self.attn, h, n_known, attn_mask)  # (B, T, C)
        return x + self.ff(self.norm_ff(x))  # (B, T, C)


def self_slot_mask(known_is_real: torch.Tensor, unknown_is_real: torch.Tensor) -> torch.Tensor:
    """The mask of ``known_unknown_attention``: bool (T, K+1), or (B, 1, T, K+1) with padding.

    K = 1 + P.  Rows are the queries [<cls>, known; unknown] (T = K + G), columns
    the keys [<cls>, known genes, self slot]: every query sees the real known
    keys; the self slot is open to real unknown genes only.  This is
    ``known_unknown_mask`` AND padding with the unknown keys' columns folded
    into the one self-slot column.
    """
    B, P = known_is_real.shape
    K, G = 1 + P, unknown_is_real.size(1)
    device = known_is_real.device
    if bool(known_is_real.all()) and bool(unknown_is_real.all()):  # no padding: one (T, K+1) for all cells
        mask = torch.ones(K + G, K + 1, dtype=torch.bool, device=device)
        mask[:K, K] = False
        return mask
    cls_is_real = torch.ones(B, 1, dtype=torch.bool, device=device)
    keys = torch.cat([cls_is_real, known_is_real], dim=1)[:, None, None, :].expand(B, 1, K + G, K)
    slot = torch.cat([torch.zeros(B, K, dtype=torch.bool, device=device), unknown_is_real], dim=1)
    return torch.cat([keys, slot[:, None, :, None]], dim=-1)  # (B, 1, T, K+1)


def _extended_width(head_dim: int, device: torch.device) -> int:
    """Channels of the self-slot attention: one more than a head's; on a GPU rounded up to a
    multiple of 8 (zeros) so that torch's fused kernels accept it."""
    return head_dim + 1 if device.type == "cpu" else 8 * (head_dim // 8 + 1)


def known_unknown_attention(attn: MultiHeadAttention, x: torch.Tensor, n_known: int,
                            allowed: torch.Tensor) -> torch.Tensor:
    """``attn(x, attn_mask=known_unknown_mask + padding)`` with K+1 keys instead of T.

    x (B, T, C) is [<cls>, known; unknown] with K = ``n_known`` tokens before the
    unknown genes; ``allowed`` is ``self_slot_mask``.  Under the known/unknown
    mask an unknown gene's key is seen by that gene alone, so the (T, T) scores
    hold only T * K + G useful entries.  Here the keys are the K known ones plus
    one *self slot*, and one fused attention call computes everything:

    - each query gets one extra channel holding its own score q_i . k_i; the
      self slot's key is 1 in that channel and 0 elsewhere (and the known keys
      are 0 there), so query i scores the slot exactly q_i . k_i / sqrt(Dh);
    - the slot's value is 1 in that extra channel and 0 elsewhere, so the
      output's extra channel is the softmax weight w_i of the slot, and the
      head output is out_i + w_i v_i.

    Same softmax, same keys, same values as the (T, T) mask: equal up to
    floating-point rounding (the tests check it against the mask and against
    ``TwoStreamScGPT``).  Every query sees <cls>, so no row is fully masked.
    """
    q, k, v = (split_heads(proj(x), attn.n_heads)  # (B, H, T, Dh) each
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    B, H, T, Dh = q.shape
    K = n_known
    width = _extended_width(Dh, q.device)
    own = (q * k).sum(dim=-1, keepdim=True)  # (B, H, T, 1) q_i . k_i
    q_ext = torch.cat([q, own, q.new_zeros(B, H, T, width - Dh - 1)], dim=-1)  # (B, H, T, width)
    slot = q.new_zeros(B, H, 1, width)
    slot[..., Dh] = 1.0  # the self slot's key and value
    k_ext = torch.cat([F.pad(k[:, :, :K], (0, width - Dh)), slot], dim=2)  # (B, H, K+1, width)
    v_ext = torch.cat([F.pad(v[:, :, :K], (0, width - Dh)), slot], dim=2)  # (B, H, K+1, width)
    dropout_p = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, attn_mask=allowed, dropout_p=dropout_p,
                                         scale=1.0 / math.sqrt(Dh))  # (B, H, T, width)
    heads = out[..., :Dh] + out[..., Dh:Dh + 1] * v  # (B, H, T, Dh): + w_i v_i
    return attn.o_proj(merge_heads(heads))  # (B, T, C)


class ExpressionHead(nn.Module):
    """GEP: an unknown gene's final output -> its predicted value in bins: (B, G, C) -> (B, G)."""

    def __init__(self, d_model: int, value_scale: float):
        super().__init__()
        self.value_scale = value_scale
        self.hidden = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.hidden(h))).squeeze(-1) * self.value_scale  # (B, G)


class ConfidenceHead(nn.Module):
    """An unknown gene's final output -> log of the variance of its GEP prediction (bins^2).

    Trained with a Gaussian negative log-likelihood around the (detached) GEP
    mean (``gaussian_nll``), so it learns how far off the prediction tends to
    be for this gene in this context.  **Confidence = -predicted variance**
    (``ScGPTOutput.confidence``): the gene the model expects to miss by least
    is the most confident.  The raw output (log-variance of value / value_scale)
    is clamped to [-12, 4], i.e. standard deviations of e^-6 .. e^2 times
    ``value_scale`` (0.12 .. 370 bins for 51 bins), which keeps exp() finite.
    """

    def __init__(self, d_model: int, value_scale: float):
        super().__init__()
        self.log_scale_sq = 2.0 * math.log(value_scale)
        self.hidden = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raw = self.out(F.gelu(self.hidden(h))).squeeze(-1)  # (B, G), log-variance of value/scale
        return raw.clamp(-12.0, 4.0) + self.log_scale_sq  # (B, G), log-variance in bins^2


class CellExpressionHead(nn.Module):
    """GEPC/MVC: a gene's value from the cell embedding alone: (B, C), (B, G, C) -> (B, G).

    value = value_scale * < W_cell c , sigmoid(W_gene e_gene) >: the cell
    embedding c (the ``<cls>`` output) is projected once per cell, each gene's
    query is a projection of its gene embedding (no value, no context), and
    the prediction is their inner product.  The loss on it forces the cell
    embedding to carry the whole expression profile.
    """

    def __init__(self, d_model: int, value_scale: float):
        super().__init__()
        self.value_scale = value_scale
        self.cell_proj = nn.Linear(d_model, d_model)
        self.gene_query = nn.Linear(d_model, d_model)

    def forward(self, cell: torch.Tensor, gene_embeddings: torch.Tensor) -> torch.Tensor:
        query = torch.sigmoid(self.gene_query(gene_embeddings))  # (B, G, C)
        projected = self.cell_proj(cell)  # (B, C)
        return torch.einsum("bgc,bc->bg", query, projected) * self.value_scale  # (B, G)
