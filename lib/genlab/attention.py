"""Scaled dot-product attention and multi-head attention, from scratch.

Every token emits a query q, a key k and a value v.  Query i scores key j by
the dot product q_i . k_j, scaled by 1/sqrt(D) so that the scores of random
D-dimensional vectors have unit variance whatever D is.  A softmax over the
keys turns each query's scores into weights that sum to 1, and the output of
query i is the weighted average of the values:

    weights = softmax(q @ k^T / sqrt(D) + mask)      # (..., Tq, Tk)
    output  = weights @ v                            # (..., Tq, Dv)

Masks (see ``genlab.masks``) are boolean with True = may attend.  A blocked
score is replaced by ``torch.finfo(dtype).min`` so that exp() of it is exactly
0 (a literal like -1e9 is not "minus infinity" in float16/bfloat16 and is not
small enough in float64).  A query that may attend to no key at all (a fully
masked row, e.g. a padding query whose keys are all padding) gets zero weights
and a zero output: a defined answer instead of the NaN of 0/0.

Multi-head attention runs H such attentions side by side on D/H-dimensional
slices of learned projections of x, then mixes the heads with an output
projection.  ``MultiHeadAttention`` can compute the attention with the
from-scratch function below or with ``torch.nn.functional.
scaled_dot_product_attention`` (fused kernels); both give the same numbers.

``dependence_map`` is the causality experiment of the course: perturb one
input token at a time and watch which outputs move.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "scaled_dot_product_attention",
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
    "multi_head_self_attention",
    "dependence_map",
]

BACKENDS = ("scratch", "torch")


# ----------------------------------------------------------------------------
# checks and mask handling shared by both backends


def _scores_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Size:
    """Validate q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv); return (..., Tq, Tk)."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(f"q, k and v need at least 2 dimensions (..., T, D); got {shapes}")
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q and k must have the same last dimension D; got {shapes}")
    if k.size(-2) != v.size(-2):
        raise ValueError(f"k and v must have the same number of keys Tk; got {shapes}")
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(f"leading (batch) dimensions do not broadcast; got {shapes}") from None
    return torch.Size((*batch, q.size(-2), k.size(-2)))


def _checked_mask(attn_mask, is_causal, scores_shape, dtype, device):
    """Validate attn_mask against is_causal and the scores; return it on ``device``."""
    if attn_mask is None:
        return None
    if is_causal:
        raise ValueError(
            "pass either attn_mask or is_causal=True, not both "
            "(combine the masks yourself, e.g. with genlab.masks.combine_masks)"
        )
    if attn_mask.dtype != torch.bool and attn_mask.dtype != dtype:
        raise ValueError(
            f"attn_mask must be bool (True = may attend) or a float mask of the "
            f"query's dtype {dtype}; got {attn_mask.dtype}"
        )
    try:
        fits = torch.broadcast_shapes(attn_mask.shape, scores_shape) == scores_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the "
            f"attention scores' shape {tuple(scores_shape)} (..., Tq, Tk)"
        )
    return attn_mask.to(device)  # a mask built on the CPU still works for CUDA inputs


def _allowed(attn_mask, is_causal, Tq, Tk, device) -> torch.Tensor | None:
    """The mask as bool, True = may attend, or None when nothing is masked.

    A float mask blocks a key where it holds -inf or finfo(dtype).min (what
    ``genlab.masks.to_additive`` writes); other values only shift the scores.
    """
    if is_causal:
        # top-left aligned like torch SDPA: query i sees keys 0..i (even if Tq != Tk);
        # for Tq == Tk this is genlab.masks.causal_mask(T)
        return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril()  # (Tq, Tk)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return attn_mask
    return attn_mask > torch.finfo(attn_mask.dtype).min


def _no_key_rows(allowed: torch.Tensor | None) -> torch.Tensor | None:
    """Bool (..., Tq, 1): True for queries that may attend to no key at all."""
    if allowed is None:
        return None
    return ~allowed.any(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------
# scaled dot-product attention


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D) + mask) v, written out step by step.

    q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv); leading dims broadcast.
    ``attn_mask``: bool (True = may attend) or float (added to the scores, like
    torch SDPA), broadcastable to (..., Tq, Tk).  ``is_causal``: query i sees
    keys 0..i (top-left aligned).  Pass one or the other, not both.

    Returns ``(output (..., Tq, Dv), weights (..., Tq, Tk))``.  With dropout the
    returned weights are the dropped-out ones actually used, so that always
    ``output == weights @ v``.  Dropout draws from ``generator`` when given.
    Fully masked query rows get zero weights and zero output.
    """
    scores_shape = _scores_shape(q, k, v)
    attn_mask = _checked_mask(attn_mask, is_causal, scores_shape, q.dtype, q.device)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    Tq, Tk = scores_shape[-2:]

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., Tq, Tk)
    lowest = torch.finfo(scores.dtype).min
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        # additive mask; clamp so that -inf entries become finite, which keeps a
        # fully masked row free of NaN in the softmax and in its backward pass
        scores = (scores + attn_mask).clamp(min=lowest)

    allowed = _allowed(attn_mask, is_causal, Tq, Tk, q.device)  # (..., Tq, Tk) or None
    if allowed is not None:
        scores = scores.masked_fill(~allowed, lowest)

    weights = torch.softmax(scores, dim=-1)  # (..., Tq, Tk)
    no_key = _no_key_rows(allowed)  # (..., Tq, 1) or None
    if no_key is not None:
        # a fully masked row has all scores == lowest, so softmax spreads it
        # uniformly over keys it may not see; define its weights as zero instead
        weights = weights.masked_fill(no_key, 0.0)

    if dropout_p > 0.0:
        noise = torch.rand(weights.shape, generator=generator, device=weights.device)
        keep = noise >= dropout_p  # (..., Tq, Tk), True with probability 1 - p
        weights = weights * keep / (1.0 - dropout_p)  # rescale: same expectation

    output = weights @ v  # (..., Tq, Dv)
    return output, weights


# ----------------------------------------------------------------------------
# multi-head attention


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, C // H): head h gets channels h*Dh .. (h+1)*Dh - 1."""
    if x.dim() != 3:
        raise ValueError(f"split_heads expects x of shape (B, T, C), got {tuple(x.shape)}")
    B, T, C = x.shape
    if C % n_heads != 0:
        raise ValueError(f"channels C={C} are not divisible by n_heads={n_heads}")
    return x.reshape(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, Dh)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, Dh) -> (B, T, H * Dh): the inverse of ``split_heads``."""
    if x.dim() != 4:
        raise ValueError(f"merge_heads expects x of shape (B, H, T, Dh), got {tuple(x.shape)}")
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, C)


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def torch_attention(q, k, v, attn_mask, is_causal, dropout_p) -> torch.Tensor:
    """torch's fused SDPA with genlab's answer for fully masked rows (zeros).

    Some torch kernels (fused CUDA ones, older versions) return NaN for a query
    that may attend to nothing, and NaN would poison everything downstream,
    including the backward pass.  So such rows are unmasked before the call
    (any finite result will do) and their output is set to zero afterwards,
    which is exactly what the from-scratch path computes.
    """
    attn_mask = _checked_mask(attn_mask, is_causal, _scores_shape(q, k, v), q.dtype, q.device)
    no_key = _no_key_rows(_allowed(attn_mask, False, q.size(-2), k.size(-2), q.device))
    if no_key is not None:
        # such a row may now see every key (bool) or gets nothing added (float)
        if attn_mask.dtype == torch.bool:
            attn_mask = attn_mask | no_key
        else:
            attn_mask = attn_mask.masked_fill(no_key, 0.0)
    output = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )  # (B, H, Tq, Dv)
    if no_key is not None:
        output = output.masked_fill(no_key, 0.0)
    return output


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: project, split into heads, attend, merge, project.

    ``backend="scratch"`` uses ``scaled_dot_product_attention`` above (readable;
    returns the weights); ``backend="torch"`` uses torch's fused
    ``F.scaled_dot_product_attention`` (fast).  Both take boolean masks with
    True = may attend, so masks pass through unchanged.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True,
                 dropout: float = 0.0, backend: str = "scratch"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.dropout = dropout  # on the attention weights, only in training mode
        self.backend = _check_backend(backend)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, need_weights: bool = False,
                backend: str | None = None):
        """x (B, T, C) -> output (B, T, C), or (output, weights (B, H, T, T)).

        ``attn_mask``: bool, broadcastable to (B, H, T, T), e.g. a padding mask
        (B, 1, 1, T) or a causal mask (T, T).  ``need_weights=True`` forces the
        scratch path (torch's fused kernel does not return weights).
        ``backend`` overrides ``self.backend`` for this call.
        """
        backend = _check_backend(self.backend if backend is None else backend)
        dropout_p = self.dropout if self.training else 0.0
        q, k, v = (split_heads(proj(x), self.n_heads)  # (B, H, T, Dh) each
                   for proj in (self.q_proj, self.k_proj, self.v_proj))

        weights = None
        if need_weights or backend == "scratch":
            heads, weights = scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p
            )  # (B, H, T, Dh), (B, H, T, T)
        else:
            heads = torch_attention(q, k, v, attn_mask, is_causal, dropout_p)  # (B, H, T, Dh)

        output = self.o_proj(merge_heads(heads))  # (B, T, C)
        return (output, weights) if need_weights else output


def multi_head_self_attention(
    x: torch.Tensor,
    W_q: torch.Tensor,
    W_k: torch.Tensor,
    W_v: torch.Tensor,
    W_o: torch.Tensor,
    n_heads: int,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Functional multi-head self-attention without biases: x (B, T, C) -> (B, T, C).

    The projections are right-multiplications by square (C, C) matrices,
    ``x @ W_q`` etc.  ``MultiHeadAttention(bias=False)`` computes the same with
    ``W_q = q_proj.weight.T`` (nn.Linear stores the transposed matrix).
    """
    C = x.size(-1)
    for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v), ("W_o", W_o)):
        if W.shape != (C, C):
            raise ValueError(
                f"{name} must be ({C}, {C}) for x of shape {tuple(x.shape)}, "
                f"got {tuple(W.shape)}"
            )
    q, k, v = (split_heads(x @ W, n_heads) for W in (W_q, W_k, W_v))  # (B, H, T, Dh)
    heads, _ = scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal
    )  # (B, H, T, Dh)
    return merge_heads(heads) @ W_o  # (B, T, C)


# ----------------------------------------------------------------------------
# the causality experiment


def dependence_map(attention, x: torch.Tensor, tol: float = 1e-6,
                   delta: float = 1.0) -> torch.Tensor:
    """Which outputs depend on which input tokens: bool (T, T), dep[i, j].

    ``attention`` is any callable (B, T, C) -> (B, T, C) (put modules with
    dropout in eval mode).  For each position j, ``delta`` is added to every
    channel of token j; output position i "depends on" j when some channel of
    some batch element changes by more than ``tol``.  Causal attention gives a
    lower-triangular map (diagonal included); full attention gives all True.
    """
    if x.dim() != 3:
        raise ValueError(f"dependence_map expects x of shape (B, T, C), got {tuple(x.shape)}")
    T = x.size(1)
    dep = torch.zeros(T, T, dtype=torch.bool, device=x.device)  # (T_out, T_in)
    with torch.no_grad():
        reference = attention(x)  # (B, T, C)
        for j in range(T):
            nudged = x.clone()
            nudged[:, j, :] += delta
            change = (attention(nudged) - reference).abs().amax(dim=(0, 2))  # (T,)
            dep[:, j] = change > tol
    return dep
