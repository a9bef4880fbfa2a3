"""GPT: a decoder-only transformer that predicts the next token; GPT-2's layout by
default, Llama's with a few switches.

Reading order: the config, rotary positions, the modules of a block (causal
self-attention, MLP, the pre-norm block itself), the model, the converters
from Hugging Face's ``GPT2LMHeadModel`` and ``LlamaForCausalLM``, the loss,
the sampling filters.

The model, for token ids x of shape (B, T):

    h = wte[x] (+ wpe[positions] with learned positions)   # (B, T, C)
    for each block:
        h = h + attn(ln_1(h))                       # tokens look at the past
        h = h + mlp(ln_2(h))                        # each token thinks alone
    logits = ln_f(h) @ lm_head^T                    # (B, T, V); lm_head is wte when tied

Logits at position t score the token at t + 1, so ``lm_loss`` compares
logits[:, :-1] with input_ids[:, 1:].

One decoder, five switches (``GPTConfig``; the defaults are GPT-2):

=====================  ===========================  ==============================
switch                 GPT-2 (default)              Llama
=====================  ===========================  ==============================
``norm``               ``"layernorm"``              ``"rmsnorm"``
``position_embedding`` ``"learned"`` (``wpe``)      ``"rotary"`` (``rope_theta``)
``mlp``                ``"gelu"``                   ``"swiglu"``
``n_kv_heads``         ``None`` (= ``n_head``)      fewer: grouped-query attention
``bias``, ``tie_...``  biases, tied head            no biases, untied head
=====================  ===========================  ==============================

``LLAMA_STYLE`` holds the Llama column (``GPTConfig(**LLAMA_STYLE, ...)``).

Calling the model:

- ``model(input_ids)`` -> logits (B, T, V) for every position.
- ``model(input_ids, labels=input_ids)`` or ``model(..., use_cache=True)``
  -> ``GPTOutput(logits, loss, past_key_values)``: asking for a loss or a
  cache is what switches the return type, so the plain call stays a tensor.

The KV cache: during generation the keys and values of earlier tokens never
change (a token only sees its past), so each layer keeps them, as a pair
(k, v) of shape (B, H_kv, T_past, D), and a generation step runs only the
newest token, whose position id continues from the cache length (the offset).
With rotary positions the cache holds keys *after* rotation: a key's rotation
depends on its own position only, so it is done once, when the key is made.
With grouped-query attention the cache holds the n_kv_heads heads only: that
is GQA's memory saving (n_head / n_kv_heads times smaller).

Parameter names are GPT-2's (``transformer.h.0.attn.c_attn`` ...), so
``GPT.from_hf`` loads a ``transformers`` GPT-2 and the two agree numerically.
GPT-2 stores its projections in ``Conv1D`` modules, (in, out); we use
``nn.Linear``, (out, in), so the converter transposes them.  A Llama's
weights map onto the same names, with two fused matrices (one matmul each):

    model.embed_tokens                    -> transformer.wte
    layers.i.input_layernorm              -> transformer.h.i.ln_1
    layers.i.self_attn.{q,k,v}_proj       -> transformer.h.i.attn.c_attn (rows q | k | v)
    layers.i.self_attn.o_proj             -> transformer.h.i.attn.c_proj
    layers.i.post_attention_layernorm     -> transformer.h.i.ln_2
    layers.i.mlp.{gate,up}_proj           -> transformer.h.i.mlp.c_fc (rows gate | up)
    layers.i.mlp.down_proj                -> transformer.h.i.mlp.c_proj
    model.norm, lm_head                   -> transformer.ln_f, lm_head

Masks follow genlab's convention: bool, True = may attend (``genlab.masks``).
Dropout (off by default) draws from torch's global RNG like ``nn.Dropout``;
everything else random here takes a seed or a ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.attention import (
    BACKENDS,
    torch_attention,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)
from genlab.checkpoints import OMITTED_FROM_KEY_WHEN_DEFAULT
from genlab.masks import combine_masks, padding_mask

__all__ = ["GPTConfig", "GPTOutput", "GPT", "LLAMA_STYLE", "lm_loss", "filter_logits",
           "rotary_cos_sin", "apply_rotary"]

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "gelu": F.gelu,  # exact, erf-based (BERT)
}
NORMS = ("layernorm", "rmsnorm")
POSITION_EMBEDDINGS = ("learned", "rotary")
MLPS = ("gelu", "swiglu")

# the switches that turn the default GPT-2 into a Llama-style decoder
LLAMA_STYLE = dict(norm="rmsnorm", position_embedding="rotary", mlp="swiglu", bias=False,
                   tie_word_embeddings=False)

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (k, v), each (B, H_kv, T, D)


# ----------------------------------------------------------------------------
# config


def _switch(default):
    """A config field whose default leaves it out of checkpoint keys (see ``GPTConfig``)."""
    return field(default=default, metadata={OMITTED_FROM_KEY_WHEN_DEFAULT: True})


@dataclass
class GPTConfig:
    """The decoder's hyperparameters: GPT-2's names for what GPT-2 has, Llama's
    (``transformers.LlamaConfig``) for what only Llama has; the defaults are a tiny
    GPT-2 for the CPU.

    Field names that are Llama's own: ``rope_theta``, ``tie_word_embeddings``.
    Where GPT-2 already has a name, that name is the field and Llama's is a read-only
    alias (a property): ``num_key_value_heads`` -> ``n_kv_heads`` (resolved: never
    None), ``intermediate_size`` -> ``n_inner`` (resolved), ``rms_norm_eps`` ->
    ``layer_norm_epsilon`` (the eps of either norm), ``hidden_size`` -> ``n_embd``.
    """

    vocab_size: int = 256
    n_positions: int = 128  # longest sequence (context length; Llama: max_position_embeddings)
    n_embd: int = 64  # C, the width of the residual stream
    n_layer: int = 2
    n_head: int = 4  # H query heads; each head has D = n_embd // n_head channels
    n_inner: int | None = None  # MLP width; None means 4 * n_embd (for either MLP)
    activation_function: str = "gelu_new"  # mlp="gelu" only: "gelu_new" (tanh GELU) or "gelu"
    layer_norm_epsilon: float = 1e-5  # the eps of either norm (Llama: rms_norm_eps)
    resid_pdrop: float = 0.0  # GPT-2 trained with 0.1; 0 suits tiny models
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0  # Llama: attention_dropout
    initializer_range: float = 0.02
    attn_backend: str = "torch"  # "torch": fused F.scaled_dot_product_attention;
    # "scratch": genlab.attention's explicit matmuls (same numbers; traceable ops)
    # the switches (defaults: GPT-2; LLAMA_STYLE holds Llama's).  Added after models were
    # cached with this config: at their defaults they stay out of genlab.checkpoints' keys,
    # so a GPT-2 trained before them still loads
    norm: str = _switch("layernorm")  # "layernorm" or "rmsnorm" (no centring, no bias)
    position_embedding: str = _switch("learned")  # "learned" (wpe) or "rotary" (RoPE in q and k)
    rope_theta: float = _switch(10000.0)  # rotary only: the base of the rotation frequencies
    mlp: str = _switch("gelu")  # "gelu": c_proj(act(c_fc x)); "swiglu": c_proj(silu(gate) * up)
    n_kv_heads: int | None = _switch(None)  # key/value heads (Llama: num_key_value_heads); None =
    # n_head (multi-head), 1 = multi-query; in between: grouped-query attention
    bias: bool = _switch(True)  # biases in every Linear and LayerNorm (Llama has none)
    tie_word_embeddings: bool = _switch(True)  # lm_head shares wte's (V, C) matrix

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            _check_positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        if self.n_inner is not None:
            _check_positive_int("n_inner", self.n_inner, "None or ")
        if self.n_kv_heads is not None:
            _check_positive_int("n_kv_heads", self.n_kv_heads, "None or ")
            if self.n_head % self.n_kv_heads != 0:
                raise ValueError(f"GPTConfig.n_kv_heads={self.n_kv_heads} must divide "
                                 f"n_head={self.n_head} (each kv head serves a group of "
                                 f"query heads)")
        for name, allowed in (("activation_function", sorted(ACTIVATIONS)), ("norm", NORMS),
                              ("position_embedding", POSITION_EMBEDDINGS), ("mlp", MLPS),
                              ("attn_backend", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {tuple(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("layer_norm_epsilon", "initializer_range", "rope_theta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GPTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.position_embedding == "rotary" and self.head_dim % 2 != 0:
            raise ValueError(f"rotary positions rotate pairs of channels: the head dimension "
                             f"n_embd // n_head = {self.head_dim} must be even")
        for name in ("bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:  # D
        return self.n_embd // self.n_head

    @property
    def num_key_value_heads(self) -> int:  # Llama's name; n_kv_heads resolved
        return self.n_head if self.n_kv_heads is None else self.n_kv_heads

    @property
    def intermediate_size(self) -> int:  # Llama's name; n_inner resolved
        return self.n_inner or 4 * self.n_embd

    @property
    def rms_norm_eps(self) -> float:  # Llama's name
        return self.layer_norm_epsilon

    @property
    def hidden_size(self) -> int:  # Llama's name
        return self.n_embd


def _check_positive_int(name, value, prefix=""):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"GPTConfig.{name} must be {prefix}a positive int, got {value!r}")


# ----------------------------------------------------------------------------
# rotary positions (RoPE)
#
# Each head's D channels are D/2 pairs; pair i turns by the angle position * theta^(-2i/D)
# (fast turns for the first pairs, slow ones for the last).  A turn preserves lengths, and
# q_m . k_n after turning q by m and k by n depends on m - n only: attention sees relative
# positions, with nothing to learn.  Pairing: here, as in transformers' Llama, channel i
# pairs with channel i + D/2 ("rotate_half").  The RoPE paper (Su et al., RoFormer) pairs
# neighbours (2i, 2i + 1), and so do Meta's original Llama checkpoints; transformers'
# conversion permuted the rows of q_proj and k_proj of every head (even rows first, then
# odd) so that the halves convention computes the same attention.  Loading interleaved
# weights would need that permutation; transformers' Llama weights load as they are.


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B or 1, T) -> (cos, sin), each (B or 1, 1, T, D), computed in float32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
    inv_freq = 1.0 / (theta ** (exponents / head_dim))  # (D/2,): theta^(-2i/D)
    angles = positions[..., None].float() * inv_freq  # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, D): pair i, i + D/2
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn every channel pair (i, i + D/2) of x (B, H, T, D) by its angle."""
    first, second = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    # (a, b) -> (a cos - b sin, b cos + a sin): a 2-d rotation of each pair
    return x * cos + torch.cat((-second, first), dim=-1) * sin  # (B, H, T, D)


# ----------------------------------------------------------------------------
# the block


def make_norm(config: GPTConfig) -> nn.Module:
    """LayerNorm: (x - mean) / std * weight + bias.  RMSNorm: x / rms(x) * weight
    (no centring, no bias; rms(x) = sqrt(mean(x^2) + eps))."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over the past, with a fused q/k/v projection.

    With n_kv_heads < n_head (grouped-query attention) the projection makes
    n_head query heads but only n_kv_heads key and value heads; query head h
    uses kv head h // (n_head // n_kv_heads), as transformers' ``repeat_kv``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.n_kv_head = config.num_key_value_heads
        self.kv_dim = self.n_kv_head * config.head_dim
        self.backend = config.attn_backend
        self.attn_pdrop = config.attn_pdrop
        self.c_attn = nn.Linear(C, C + 2 * self.kv_dim, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(C, C, bias=config.bias)  # mixes the heads
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attn_mask=None, is_causal=False, layer_past=None, rotary=None):
        """x (B, T, C) -> (output (B, T, C), present (k, v) each (B, H_kv, T_past + T, D)).

        ``rotary``: (cos, sin) of the new tokens' positions, each (B or 1, 1, T, D).
        """
        q, k, v = self.c_attn(x).split([x.size(-1), self.kv_dim, self.kv_dim], dim=-1)
        q = split_heads(q, self.n_head)  # (B, H, T, D)
        k, v = split_heads(k, self.n_kv_head), split_heads(v, self.n_kv_head)  # (B, H_kv, T, D)
        if rotary is not None:  # turn the new q and k by their positions, before caching k
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if layer_past is not None:
            past_k, past_v = layer_past  # (B, H_kv, T_past, D)
            k = torch.cat([past_k, k], dim=-2)  # (B, H_kv, T_past + T, D)
            v = torch.cat([past_v, v], dim=-2)
        y = self._attend(q, k, v, attn_mask, is_causal)  # (B, H, T, D)
        y = self.resid_dropout(self.c_proj(merge_heads(y)))  # (B, T, C)
        return y, (k, v)

    def _attend(self, q, k, v, attn_mask, is_causal):
        """q (B, H, T, D), k and v (B, H_kv, Tk, D) -> (B, H, T, D)."""
        dropout_p = self.attn_pdrop if self.training else 0.0
        groups = self.n_head // self.n_kv_head
        if self.backend == "torch" and groups > 1 and attn_mask is None:
            # without a mask no query row is fully masked, so torch's kernel may run as is,
            # sharing each kv head with its group itself (no copies of k and v)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
                                                  is_causal=is_causal, enable_gqa=True)
        if groups > 1:  # each kv head copied for the query heads of its group
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if self.backend == "torch":  # fast path: torch's fused kernel
            return torch_attention(q, k, v, attn_mask, is_causal, dropout_p)
        # readable path: softmax(q k^T / sqrt(D)) v as explicit matmuls
        y, _ = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                            dropout_p=dropout_p)
        return y


class MLP(nn.Module):
    """Position-wise feed-forward: widen, activate, project back.

    ``mlp="gelu"``: c_proj(act(c_fc x)).  ``mlp="swiglu"``: c_fc makes two
    halves, a gate and an "up" projection, and c_proj(silu(gate) * up); c_fc's
    rows hold Llama's gate_proj, then its up_proj.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        inner = config.intermediate_size
        self.gated = config.mlp == "swiglu"
        self.c_fc = nn.Linear(config.n_embd, 2 * inner if self.gated else inner, bias=config.bias)
        self.act = F.silu if self.gated else ACTIVATIONS[config.activation_function]
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        h = self.c_fc(x)  # (B, T, inner), or (B, T, 2 inner) gated
        if self.gated:
            gate, up = h.chunk(2, dim=-1)  # (B, T, inner) each
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: normalise, transform, add back to the residual stream."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, is_causal=False, layer_past=None, rotary=None):
        a, present = self.attn(self.ln_1(x), attn_mask, is_causal, layer_past, rotary)
        x = x + a  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x, present


# ----------------------------------------------------------------------------
# the model


@dataclass
class GPTOutput:
    """What ``GPT.forward`` returns when asked for a loss or a cache."""

    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None  # scalar, when labels were given
    past_key_values: KVCache | None = None  # per layer (k, v), when use_cache=True


class GPT(nn.Module):
    """The decoder language model (GPT-2 by default; see ``GPTConfig``'s switches).
    ``GPT(config, seed=0)``."""

    def __init__(self, config: GPTConfig, seed: int = 0):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))  # token embeddings
        if config.position_embedding == "learned":
            modules["wpe"] = nn.Embedding(config.n_positions, config.n_embd)  # learned positions
        modules.update(
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=make_norm(config),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied: one (V, C) matrix
        self._init_weights(torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator):
        """GPT-2's init: N(0, 0.02) weights, zero biases, unit norms, and the
        projections into the residual stream (``c_proj``) scaled by 1/sqrt(2 n_layer),
        since each of the 2 n_layer residual branches adds its variance."""
        std = self.config.initializer_range
        tied = self.config.tie_word_embeddings
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                if module is self.lm_head and tied:
                    continue  # its weight is wte's, drawn already
                scale = math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 1.0
                nn.init.normal_(module.weight, 0.0, std / scale, generator=generator)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor | GPTOutput:
        """input_ids (B, T) -> logits (B, T, V), or a ``GPTOutput``.

        ``attention_mask``: HF-style 0/1 (B, T_past + T), 1 = real token; left or
        right padding.  Position ids count real tokens only (cumsum of the mask).
        ``past_key_values``: the cache from an earlier call; input_ids are then
        only the new tokens.  ``labels`` (B, T): usually input_ids with -100
        where no loss is wanted; the shift happens inside (see ``lm_loss``).
        Returns ``GPTOutput`` when ``use_cache`` or ``labels`` is given, else logits.
        """
        if input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(
                f"input_ids must be integer token ids of shape (B, T), got "
                f"{input_ids.dtype} {tuple(input_ids.shape)}"
            )
        B, T = input_ids.shape
        T_past = 0 if past_key_values is None else past_key_values[0][0].size(-2)
        if T_past + T > self.config.n_positions:
            raise ValueError(
                f"sequence of {T_past + T} tokens (cache {T_past} + input {T}) is longer "
                f"than the model's context, n_positions={self.config.n_positions}"
            )
        if past_key_values is not None and len(past_key_values) != self.config.n_layer:
            raise ValueError(
                f"past_key_values has {len(past_key_values)} layers, "
                f"the model has n_layer={self.config.n_layer}"
            )
        positions, attn_mask, is_causal = self._positions_and_mask(
            attention_mask, B, T, T_past, input_ids.device
        )

        x = self.transformer.wte(input_ids)  # (B, T, C)
        rotary = None
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(positions)  # (B, T, C)
        else:  # positions enter each attention, as turns of q and k
            rotary = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta,
                                    x.dtype)  # (B or 1, 1, T, D) each
        x = self.transformer.drop(x)
        presents = []
        for i, block in enumerate(self.transformer.h):
            layer_past = None if past_key_values is None else past_key_values[i]
            x, present = block(x, attn_mask, is_causal, layer_past, rotary)  # (B, T, C)
            presents.append(present)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)

        if not use_cache and labels is None:
            return logits
        return GPTOutput(
            logits=logits,
            loss=None if labels is None else lm_loss(logits, labels),
            # after a first pass k and v may be views of the fused q, k, v output (which
            # holds q too): copies of their own keep the cache at exactly its formula's bytes
            past_key_values=tuple((k.contiguous(), v.contiguous()) for k, v in presents)
            if use_cache else None,
        )

    def _positions_and_mask(self, attention_mask, B, T, T_past, device):
        """Position ids (B or 1, T) and how to mask: (attn_mask or None, is_causal).

        Without padding the cheap cases need no mask tensor: a fresh sequence
        uses is_causal; a single new token after the cache may see every key.
        Otherwise the mask is causal (query i sits at T_past + i) AND padding.
        """
        if attention_mask is None:
            positions = torch.arange(T_past, T_past + T, device=device)[None]  # (1, T)
            if T_past == 0:
                return positions, None, True
            if T == 1:
                return positions, None, False
        else:
            if attention_mask.shape != (B, T_past + T):
                raise ValueError(
                    f"attention_mask must have shape (B, T_past + T) = {(B, T_past + T)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            attention_mask = attention_mask.to(device)
            # the n-th real token sits at position n - 1; leading pads get 0
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, T_past:]  # (B, T)
        causal = torch.ones(T, T_past + T, dtype=torch.bool, device=device).tril(T_past)  # (T, Tk)
        pad = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, Tk)
        return positions, combine_masks(causal, pad), False  # (T, Tk) or (B, 1, T, Tk)

    # ------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        eos_token_id: int | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue input_ids (B, T) by up to max_new_tokens -> (B, T + new).

        Greedy (argmax) unless ``do_sample``; then the logits go through
        ``filter_logits(temperature, top_k, top_p)`` and a token is drawn with
        ``generator`` (default: a CPU generator seeded 0, so a call without one
        is reproducible; pass your own for fresh draws).  With ``eos_token_id``
        a finished row keeps emitting it, and generation stops once all rows
        are finished.  ``attention_mask`` (B, T) allows left-padded prompts.
        Runs in eval mode (restores the training flag afterwards).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        B, T = input_ids.shape
        if T + max_new_tokens > self.config.n_positions:
            raise ValueError(
                f"prompt of {T} tokens + max_new_tokens={max_new_tokens} exceeds the "
                f"model's context, n_positions={self.config.n_positions}"
            )
        if do_sample:
            _check_filters(temperature, top_k, top_p)
            if generator is None:
                generator = torch.Generator().manual_seed(0)

        was_training = self.training
        self.eval()
        try:
            tokens, new, cache = input_ids, input_ids, None  # new: what the model has not seen
            finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
            for _ in range(max_new_tokens):
                if use_cache:  # run only the unseen tokens, reuse everyone else's k, v
                    out = self(new, attention_mask, past_key_values=cache, use_cache=True)
                    logits, cache = out.logits[:, -1], out.past_key_values  # (B, V)
                else:  # rerun the whole sequence
                    logits = self(tokens, attention_mask)[:, -1]  # (B, V)
                if do_sample:
                    probs = F.softmax(filter_logits(logits.float(), temperature, top_k, top_p), -1)
                    # draw on the generator's device: a CPU generator works for CUDA models too
                    nxt = torch.multinomial(probs.to(generator.device), 1, generator=generator)
                    nxt = nxt.to(input_ids.device)  # (B, 1)
                else:
                    nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
                if eos_token_id is not None:
                    nxt = nxt.masked_fill(finished[:, None], eos_token_id)
                    finished |= nxt[:, 0] == eos_token_id
                tokens, new = torch.cat([tokens, nxt], dim=1), nxt  # (B, T + 1)
                if attention_mask is not None:
                    attention_mask = torch.cat([attention_mask, torch.ones_like(nxt)], dim=1)
                if eos_token_id is not None and bool(finished.all()):
                    break
        finally:
            self.train(was_training)
        return tokens

    # ------------------------------------------------------------------------
    # loading GPT-2 and Llama from transformers

    @classmethod
    def from_hf(cls, hf_model) -> "GPT":
        """A ``GPT`` with the config and weights of a ``transformers`` GPT-2 or Llama.

        Accepts ``GPT2LMHeadModel`` (or ``GPT2Model``, when the head is tied) and
        ``LlamaForCausalLM`` (or ``LlamaModel``, when tied).  GPT-2's Conv1D weights
        (in, out) are transposed into nn.Linear's (out, in); Llama's q, k, v and
        gate, up projections are stacked into c_attn and c_fc (the module docstring
        maps every name).  A config this decoder cannot represent is refused with
        the name of the field.
        """
        model_type = getattr(hf_model.config, "model_type", None)
        if model_type not in _CONVERTERS:
            raise ValueError(f"GPT.from_hf loads the model types {sorted(_CONVERTERS)}, "
                             f"got {model_type!r}")
        config_from_hf, state_from_hf = _CONVERTERS[model_type]
        config = config_from_hf(hf_model.config)
        model = cls(config)
        ours = model.state_dict()
        theirs = state_from_hf(hf_model.state_dict(), config)
        if config.tie_word_embeddings:
            theirs.setdefault("lm_head.weight", theirs.get("transformer.wte.weight"))
        missing = sorted(set(ours) - set(theirs))
        unexpected = sorted(set(theirs) - set(ours))
        wrong_shape = sorted(k for k in set(ours) & set(theirs)
                             if ours[k].shape != theirs[k].shape)
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"GPT.from_hf: the checkpoint does not match the {model_type} layout; "
                f"missing {missing[:8]}, unexpected {unexpected[:8]}, "
                f"wrong shape {[(k, tuple(theirs[k].shape)) for k in wrong_shape[:8]]}"
            )
        if config.tie_word_embeddings and not torch.equal(theirs["lm_head.weight"],
                                                          theirs["transformer.wte.weight"]):
            raise ValueError("GPT.from_hf: the config says tie_word_embeddings=True but "
                             "lm_head differs from the token embeddings")
        model.load_state_dict(theirs)
        reference = next(hf_model.parameters())
        return model.to(device=reference.device, dtype=reference.dtype)


def _refuse(family: str, name: str, value, why: str):
    raise ValueError(f"GPT.from_hf: {family}.{name}={value!r} is not supported ({why})")


def _gpt2_config(hf_config) -> GPTConfig:
    """GPTConfig from a transformers ``GPT2Config``, refusing variants we do not build."""
    supported = {
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
    }
    for name, ours in supported.items():
        if getattr(hf_config, name, ours) != ours:
            _refuse("GPT2Config", name, getattr(hf_config, name), f"genlab's GPT-2 has {ours}")
    same_names = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                  "activation_function", "layer_norm_epsilon", "resid_pdrop", "embd_pdrop",
                  "attn_pdrop", "initializer_range")
    return GPTConfig(**{name: getattr(hf_config, name) for name in same_names},
                     tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)))


def _gpt2_state(state: dict, config: GPTConfig) -> dict:
    theirs = {}
    for key, value in state.items():
        key = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old transformers versions store GPT-2's causal mask as a buffer
        if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            value = value.t()  # Conv1D (in, out) -> Linear (out, in)
        theirs[key] = value.detach()
    return theirs


def _llama_rope_theta(hf_config) -> float:
    """rope_theta, from ``rope_parameters`` (transformers >= 5) or ``rope_theta`` (older),
    refusing any RoPE scaling (linear, dynamic, yarn, llama3 ...)."""
    settings = {**(getattr(hf_config, "rope_scaling", None) or {}),
                **(getattr(hf_config, "rope_parameters", None) or {})}
    theta = settings.pop("rope_theta", getattr(hf_config, "rope_theta", None))
    rope_type = settings.pop("rope_type", settings.pop("type", "default"))
    if rope_type != "default" or settings:
        _refuse("LlamaConfig", "rope_scaling", {"rope_type": rope_type, **settings},
                "genlab's rotary positions are unscaled")
    return float(theta)


def _llama_config(hf_config) -> GPTConfig:
    """GPTConfig from a transformers ``LlamaConfig``, refusing variants we do not build."""
    for name, ours in (("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu")):
        if getattr(hf_config, name, ours) != ours:
            _refuse("LlamaConfig", name, getattr(hf_config, name),
                    f"genlab's Llama-style decoder has {ours!r}")
    head_dim = getattr(hf_config, "head_dim", None)
    heads_split = hf_config.hidden_size // hf_config.num_attention_heads
    if head_dim not in (None, heads_split):
        _refuse("LlamaConfig", "head_dim", head_dim,
                f"genlab's heads split hidden_size evenly: {heads_split}")
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        n_positions=hf_config.max_position_embeddings,
        n_embd=hf_config.hidden_size,
        n_layer=hf_config.num_hidden_layers,
        n_head=hf_config.num_attention_heads,
        n_kv_heads=hf_config.num_key_value_heads,
        n_inner=hf_config.intermediate_size,
        layer_norm_epsilon=hf_config.rms_norm_eps,
        attn_pdrop=float(hf_config.attention_dropout),
        initializer_range=hf_config.initializer_range,
        rope_theta=_llama_rope_theta(hf_config),
        **{**LLAMA_STYLE, "tie_word_embeddings": bool(hf_config.tie_word_embeddings)},
    )


# Llama's names -> ours, for the tensors that map one to one (layer i's prefix stays)
_LLAMA_NAMES = {
    "model.embed_tokens.weight": "transformer.wte.weight",
    "model.norm.weight": "transformer.ln_f.weight",
    "lm_head.weight": "lm_head.weight",
    "input_layernorm.weight": "ln_1.weight",
    "post_attention_layernorm.weight": "ln_2.weight",
    "self_attn.o_proj.weight": "attn.c_proj.weight",
    "mlp.down_proj.weight": "mlp.c_proj.weight",
}
# ours <- Llama's stacked by rows (dim 0): one matmul instead of three, or two
_LLAMA_STACKED = {
    "attn.c_attn.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                           "self_attn.v_proj.weight"),
    "mlp.c_fc.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


def _llama_state(state: dict, config: GPTConfig) -> dict:
    state = {(k if k.startswith(("model.", "lm_head.")) else "model." + k): v.detach()
             for k, v in state.items()}  # a bare LlamaModel's keys lack "model."
    theirs, used = {}, set()
    for key, value in state.items():
        if key in _LLAMA_NAMES:
            theirs[_LLAMA_NAMES[key]] = value
            used.add(key)
            continue
        layer, _, rest = key.removeprefix("model.layers.").partition(".")
        if key.startswith("model.layers.") and rest in _LLAMA_NAMES:
            theirs[f"transformer.h.{layer}.{_LLAMA_NAMES[rest]}"] = value
            used.add(key)
    for i in range(config.n_layer):
        for ours, parts in _LLAMA_STACKED.items():
            keys = [f"model.layers.{i}.{part}" for part in parts]
            if all(k in state for k in keys):
                theirs[f"transformer.h.{i}.{ours}"] = torch.cat([state[k] for k in keys], dim=0)
                used.update(keys)
    # whatever maps nowhere is reported as unexpected by from_hf
    theirs.update({f"<llama> {k}": v for k, v in state.items() if k not in used})
    return theirs


_CONVERTERS = {"gpt2": (_gpt2_config, _gpt2_state), "llama": (_llama_config, _llama_state)}


# ----------------------------------------------------------------------------
# the loss


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor,
            ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, T, V) at position t predict input_ids[:, t + 1].

    Targets equal to ``ignore_index`` (padding, prompt tokens) do not count.
    The mean is over the counted targets, computed in float32.
    """
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"lm_loss expects logits (B, T, V) and input_ids (B, T), got "
            f"{tuple(logits.shape)} and {tuple(input_ids.shape)}"
        )
    shifted = logits[:, :-1, :]  # (B, T-1, V): predictions for positions 1..T-1
    targets = input_ids[:, 1:]  # (B, T-1)
    return F.cross_entropy(shifted.reshape(-1, shifted.size(-1)).float(),  # (B * (T-1), V)
                           targets.reshape(-1), ignore_index=ignore_index)


# ----------------------------------------------------------------------------
# sampling filters


def _check_filters(temperature, top_k, top_p):
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 (for greedy use do_sample=False), got {temperature}"
        )
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def filter_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Logits (..., V) -> logits with the tokens that may not be drawn set to -inf.

    Applied in this order, each optional:
    - temperature: divide by it (< 1 sharpens, > 1 flattens the distribution);
    - top_k: keep exactly the k largest (ties broken by index);
    - top_p (nucleus): keep the smallest set of most likely tokens whose
      probabilities sum to >= top_p; the most likely token always stays.
    """
    _check_filters(temperature, top_k, top_p)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kept = logits.topk(top_k, dim=-1).indices  # (..., k)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, kept, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
        probs = F.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p  # the nucleus is already complete without it
        drop = torch.empty_like(drop_sorted).scatter(-1, order, drop_sorted)  # vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
