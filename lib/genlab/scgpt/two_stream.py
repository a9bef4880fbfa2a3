"""The two-stream reference: ``ScGPT`` computed the way upstream scGPT structures it.

Same weights, two streams (known tokens; unknown tokens) instead of one masked
sequence; the tests check that both give the same outputs, and
``bench/scgpt_step.py`` times them against each other.  Part of ``genlab.scgpt``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from genlab.attention import merge_heads, scaled_dot_product_attention, split_heads
from genlab.masks import padding_mask
from genlab.scgpt.layers import TransformerLayer
from genlab.scgpt.model import ScGPT, ScGPTOutput
from genlab.scgpt.packing import _all_real

__all__ = [
    "TwoStreamScGPT",
]


class TwoStreamScGPT(nn.Module):
    """Reference: the same model (same weights) computed the way upstream scGPT structures it.

    Upstream's generative layer (``flash_layers.py``, dev-temp branch) keeps two
    streams instead of one masked sequence:

    - stream 1, known tokens ([<cls>, known]): ordinary self-attention among
      themselves (padding keys hidden);
    - stream 2, unknown tokens: each unknown query attends to [the known keys;
      its own key] and nothing else.

    Per query this is exactly what ``known_unknown_mask`` allows, so the
    outputs equal ``ScGPT.forward``'s up to floating-point rounding.  It scores
    (1+P)^2 + G (1+P) pairs instead of the mask's (1+P+G)^2 (the ``"torch"``
    backend's self slot scores (1+P+G)(2+P)): the peer of the single-sequence
    model in ``bench/scgpt_step.py``.  Written from scratch on top of the
    wrapped model's parameters; it owns none.
    """

    def __init__(self, model: ScGPT):
        super().__init__()
        self.model = model

    def forward(self, known_genes, known_values, unknown_genes, known_is_real=None,
                unknown_is_real=None, cell_prompt=None) -> ScGPTOutput:
        model = self.model
        known_is_real = _all_real(known_is_real, known_genes)
        unknown_is_real = _all_real(unknown_is_real, unknown_genes)
        cls, known, unknown = model.embed_tokens(known_genes, known_values, unknown_genes, cell_prompt)
        cls_is_real = torch.ones(known_is_real.size(0), 1, dtype=torch.bool, device=known_is_real.device)
        known_keys_real = torch.cat([cls_is_real, known_is_real], dim=1)  # (B, 1+P)
        known_stream = torch.cat([cls, known], dim=1)  # (B, 1+P, C)
        unknown_stream = unknown  # (B, G, C)
        for layer in model.layers:
            known_stream, unknown_stream = _two_stream_layer(
                layer, known_stream, unknown_stream, known_keys_real, unknown_is_real)
        known_stream = model.final_norm(known_stream)
        unknown_stream = model.final_norm(unknown_stream)
        hidden = torch.cat([known_stream, unknown_stream], dim=1)  # (B, 1+P+G, C)
        return model.heads(known_stream[:, 0], unknown_stream, unknown_genes, hidden=hidden)


def _two_stream_layer(layer: TransformerLayer, known: torch.Tensor, unknown: torch.Tensor,
                      known_is_real: torch.Tensor, unknown_is_real: torch.Tensor):
    """One pre-LN layer on the two streams: known (B, P, C), unknown (B, G, C)."""
    attn = layer.attn
    H = attn.n_heads
    known_in, unknown_in = layer.norm_attn(known), layer.norm_attn(unknown)
    q_known, k_known, v_known = (split_heads(proj(known_in), H)  # (B, H, P, Dh) each
                                 for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q_unknown, k_unknown, v_unknown = (split_heads(proj(unknown_in), H)  # (B, H, G, Dh) each
                                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))

    # stream 1: known queries over known keys
    known_heads, _ = scaled_dot_product_attention(
        q_known, k_known, v_known, attn_mask=padding_mask(known_is_real))  # (B, H, P, Dh)

    # stream 2: each unknown query over [known keys; its own key]
    root_d = math.sqrt(q_unknown.size(-1))
    to_known = q_unknown @ k_known.transpose(-2, -1) / root_d  # (B, H, G, P)
    to_self = (q_unknown * k_unknown).sum(-1, keepdim=True) / root_d  # (B, H, G, 1)
    scores = torch.cat([to_known, to_self], dim=-1)  # (B, H, G, P+1)
    B, G, P = unknown.size(0), unknown.size(1), known.size(1)
    allowed = torch.cat([known_is_real[:, None, None, :].expand(B, 1, G, P),
                         unknown_is_real[:, None, :, None]], dim=-1)  # (B, 1, G, P+1)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (B, H, G, P+1); <cls> is always allowed
    unknown_heads = weights[..., :P] @ v_known + weights[..., P:] * v_unknown  # (B, H, G, Dh)

    known = known + attn.o_proj(merge_heads(known_heads))  # (B, P, C)
    unknown = unknown + attn.o_proj(merge_heads(unknown_heads))  # (B, G, C)
    known = known + layer.ff(layer.norm_ff(known))
    unknown = unknown + layer.ff(layer.norm_ff(unknown))
    return known, unknown
