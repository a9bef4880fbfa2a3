"""Attention masks: who may look at whom.

An attention layer scores every (query, key) pair.  A *mask* decides which of
those pairs count.  In genlab every mask is a boolean tensor with one polarity:

    mask[i, j] == True   means   query i may attend to key j.

This is the convention of ``torch.nn.functional.scaled_dot_product_attention``
and of Hugging Face's ``attention_mask`` (1 = real token).  Rows are queries
(the position doing the looking), columns are keys (the position looked at).

The masks of the course:

- ``causal_mask``: a decoder (GPT) token sees itself and the past, never the
  future.  Lower triangular, diagonal included.
- ``padding_mask``: nobody looks at padding tokens.  Built from an HF-style
  ``attention_mask`` of shape (B, T) and shaped (B, 1, 1, T) so that it
  broadcasts over heads and queries.
- ``known_unknown_mask``: scGPT's generation mask.  Known genes see each other;
  each unknown gene sees the known genes and itself only.
- ``sliding_window_mask``: causal, but only the last ``window`` positions.

``combine_masks`` ANDs masks together (a pair counts only if every mask allows
it) and ``to_additive`` turns a boolean mask into the float form that is added
to the scores (0 where allowed, ``torch.finfo(dtype).min`` where blocked).
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "causal_mask",
    "padding_mask",
    "known_unknown_mask",
    "sliding_window_mask",
    "combine_masks",
    "to_additive",
]


def causal_mask(T: int, device=None) -> torch.Tensor:
    """Bool (T, T), True on and below the diagonal: position i sees 0..i."""
    if T < 1:
        raise ValueError(f"causal_mask needs T >= 1, got T={T}")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool (B, 1, 1, T) from an HF-style 0/1 ``attention_mask`` of shape (B, T).

    True where the key is a real token.  The two singleton dimensions broadcast
    over heads and queries: a padding key is hidden from every query of every
    head.  Accepts int, float or bool input.
    """
    if attention_mask.dim() != 2:
        raise ValueError(
            "padding_mask expects an attention_mask of shape (B, T), "
            f"got shape {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool:
        is_zero_or_one = (attention_mask == 0) | (attention_mask == 1)
        if not bool(is_zero_or_one.all()):
            bad = attention_mask[~is_zero_or_one].unique()[:5].tolist()
            raise ValueError(
                f"padding_mask expects only 0/1 values (1 = real token), found {bad}"
            )
    return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)


def known_unknown_mask(n_known: int, n_unknown: int, device=None) -> torch.Tensor:
    """scGPT's generation mask, bool (P+G, P+G), on the sequence [known; unknown].

    With P = n_known and G = n_unknown (row = query, column = key)::

                      keys: known (P)   unknown (G)
        known   (P)         all True    all False     known genes never peek
        unknown (G)         all True    diagonal      unknown gene sees known + itself

    An unknown gene therefore cannot see the other genes being generated, so
    its prediction does not depend on which other genes are generated with it.
    """
    if n_known < 1:
        raise ValueError(f"known_unknown_mask needs n_known >= 1, got n_known={n_known}")
    if n_unknown < 0:
        raise ValueError(
            f"known_unknown_mask needs n_unknown >= 0, got n_unknown={n_unknown}"
        )
    P, G = n_known, n_unknown
    mask = torch.zeros(P + G, P + G, dtype=torch.bool, device=device)  # (P+G, P+G)
    mask[:, :P] = True  # every query sees the known genes
    mask[P:, P:] = torch.eye(G, dtype=torch.bool, device=device)  # unknown: itself only
    return mask


def sliding_window_mask(T: int, window: int, device=None) -> torch.Tensor:
    """Bool (T, T): causal, and query i sees only keys i-window+1 .. i.

    ``window=1`` leaves only the diagonal; ``window >= T`` equals ``causal_mask(T)``.
    """
    if window < 1:
        raise ValueError(f"sliding_window_mask needs window >= 1, got window={window}")
    # triu(1 - window) keeps key j >= i - window + 1: drops keys too far back
    return causal_mask(T, device=device).triu(1 - window)  # (T, T)


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Logical AND of boolean masks, with broadcasting; ``None`` entries are ignored.

    Example: ``combine_masks(causal_mask(T), padding_mask(am))`` -> (B, 1, T, T).
    Returns None when every mask is None (no masking at all).
    """
    present = [mask for mask in masks if mask is not None]
    for mask in present:
        if mask.dtype != torch.bool:
            raise ValueError(
                f"combine_masks expects boolean masks (True = may attend), got {mask.dtype}"
            )
    if not present:
        return None
    return functools.reduce(torch.logical_and, present)


def to_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask -> float mask of ``dtype``: 0 where allowed, finfo(dtype).min where blocked.

    Adding it to the scores before the softmax is the same as filling blocked
    scores with the most negative number the dtype can hold (exp of it is 0).
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"to_additive expects a boolean mask, got {mask.dtype}")
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)
