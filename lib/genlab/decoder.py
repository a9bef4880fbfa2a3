"""GPT: a decoder-only transformer that predicts the next token, in GPT-2's layout.

Reading order: the config, the three small modules of a block (causal
self-attention, MLP, the pre-LN block itself), the model, the loss, the
sampling filters, and the converter from Hugging Face's ``GPT2LMHeadModel``.

The model, for token ids x of shape (B, T):

    h = wte[x] + wpe[positions]                     # (B, T, C)
    for each block:
        h = h + attn(ln_1(h))                       # tokens look at the past
        h = h + mlp(ln_2(h))                        # each token thinks alone
    logits = ln_f(h) @ wte^T                        # (B, T, V), lm_head tied to wte

Logits at position t score the token at t + 1, so ``lm_loss`` compares
logits[:, :-1] with input_ids[:, 1:].

Calling the model:

- ``model(input_ids)`` -> logits (B, T, V) for every position.
- ``model(input_ids, labels=input_ids)`` or ``model(..., use_cache=True)``
  -> ``GPTOutput(logits, loss, past_key_values)``: asking for a loss or a
  cache is what switches the return type, so the plain call stays a tensor.

The KV cache: during generation the keys and values of earlier tokens never
change (a token only sees its past), so each layer keeps them, as a pair
(k, v) of shape (B, H, T_past, D), and a generation step runs only the newest
token, whose position id continues from the cache length.

Parameter names are GPT-2's (``transformer.h.0.attn.c_attn`` ...), so
``GPT.from_hf`` loads a ``transformers`` GPT-2 and the two agree numerically.
GPT-2 stores its projections in ``Conv1D`` modules, (in, out); we use
``nn.Linear``, (out, in), so the converter transposes them.

Masks follow genlab's convention: bool, True = may attend (``genlab.masks``).
Dropout (off by default) draws from torch's global RNG like ``nn.Dropout``;
everything else random here takes a seed or a ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

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
from genlab.masks import combine_masks, padding_mask

__all__ = ["GPTConfig", "GPTOutput", "GPT", "lm_loss", "filter_logits"]

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "gelu": F.gelu,  # exact, erf-based (BERT)
}

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (k, v), each (B, H, T, D)


# ----------------------------------------------------------------------------
# config


@dataclass
class GPTConfig:
    """GPT-2's hyperparameters under GPT-2's names; the defaults are a tiny CPU model."""

    vocab_size: int = 256
    n_positions: int = 128  # longest sequence (context length)
    n_embd: int = 64  # C, the width of the residual stream
    n_layer: int = 2
    n_head: int = 4  # H; each head has D = n_embd // n_head channels
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    activation_function: str = "gelu_new"  # "gelu_new" (tanh GELU) or "gelu" (exact)
    layer_norm_epsilon: float = 1e-5
    resid_pdrop: float = 0.0  # GPT-2 trained with 0.1; 0 suits tiny models
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    initializer_range: float = 0.02
    attn_backend: str = "torch"  # "torch": fused F.scaled_dot_product_attention;
    # "scratch": genlab.attention's explicit matmuls (same numbers; traceable ops)

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner < 1):
            raise ValueError(f"GPTConfig.n_inner must be None or an int >= 1, "
                             f"got {self.n_inner!r}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"GPTConfig.activation_function must be one of {sorted(ACTIVATIONS)}, "
                f"got {self.activation_function!r}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("layer_norm_epsilon", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GPTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.attn_backend not in BACKENDS:
            raise ValueError(
                f"GPTConfig.attn_backend must be one of {BACKENDS}, got {self.attn_backend!r}"
            )


# ----------------------------------------------------------------------------
# the block


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over the past, with a fused q/k/v projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.backend = config.attn_backend
        self.attn_pdrop = config.attn_pdrop
        self.c_attn = nn.Linear(C, 3 * C)  # q, k and v in one matmul
        self.c_proj = nn.Linear(C, C)  # mixes the heads
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attn_mask=None, is_causal=False, layer_past=None):
        """x (B, T, C) -> (output (B, T, C), present (k, v) each (B, H, T_past + T, D))."""
        q, k, v = self.c_attn(x).split(x.size(-1), dim=-1)  # (B, T, C) each
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # (B, H, T, D) each
        if layer_past is not None:
            past_k, past_v = layer_past  # (B, H, T_past, D)
            k = torch.cat([past_k, k], dim=-2)  # (B, H, T_past + T, D)
            v = torch.cat([past_v, v], dim=-2)
        dropout_p = self.attn_pdrop if self.training else 0.0
        if self.backend == "torch":  # fast path: torch's fused kernel
            y = torch_attention(q, k, v, attn_mask, is_causal, dropout_p)  # (B, H, T, D)
        else:  # readable path: softmax(q k^T / sqrt(D)) v as explicit matmuls
            y, _ = scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p
            )  # (B, H, T, D)
        y = self.resid_dropout(self.c_proj(merge_heads(y)))  # (B, T, C)
        return y, (k, v)


class MLP(nn.Module):
    """Position-wise feed-forward: widen, activate, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.act = ACTIVATIONS[config.activation_function]
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block: normalise, transform, add back to the residual stream."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, is_causal=False, layer_past=None):
        a, present = self.attn(self.ln_1(x), attn_mask, is_causal, layer_past)
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
    """GPT-2 language model with a tied output head. ``GPT(config, seed=0)``."""

    def __init__(self, config: GPTConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.n_positions, config.n_embd),  # learned positions
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one (V, C) matrix
        self._init_weights(torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator):
        """GPT-2's init: N(0, 0.02) weights, zero biases, unit LayerNorms, and the
        projections into the residual stream (``c_proj``) scaled by 1/sqrt(2 n_layer),
        since each of the 2 n_layer residual branches adds its variance."""
        std = self.config.initializer_range
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module is not self.lm_head:
                scale = math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 1.0
                nn.init.normal_(module.weight, 0.0, std / scale, generator=generator)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
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

        x = self.transformer.wte(input_ids) + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.drop(x)
        presents = []
        for i, block in enumerate(self.transformer.h):
            layer_past = None if past_key_values is None else past_key_values[i]
            x, present = block(x, attn_mask, is_causal, layer_past)  # (B, T, C)
            presents.append(present)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)

        if not use_cache and labels is None:
            return logits
        return GPTOutput(
            logits=logits,
            loss=None if labels is None else lm_loss(logits, labels),
            past_key_values=tuple(presents) if use_cache else None,
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
    # loading GPT-2 from transformers

    @classmethod
    def from_hf(cls, hf_model) -> "GPT":
        """A ``GPT`` with the config and weights of a ``transformers`` GPT-2.

        Accepts ``GPT2LMHeadModel`` (or ``GPT2Model``; the head is tied anyway).
        Conv1D weights (in, out) are transposed into nn.Linear's (out, in).
        """
        config = _config_from_hf(hf_model.config)
        model = cls(config)
        ours = model.state_dict()
        theirs = {}
        for key, value in hf_model.state_dict().items():
            key = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
            if key.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # old transformers versions store GPT-2's causal mask as a buffer
            if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                value = value.t()  # Conv1D (in, out) -> Linear (out, in)
            theirs[key] = value.detach()
        theirs.setdefault("lm_head.weight", theirs.get("transformer.wte.weight"))
        missing = sorted(set(ours) - set(theirs))
        unexpected = sorted(set(theirs) - set(ours))
        wrong_shape = sorted(k for k in set(ours) & set(theirs)
                             if ours[k].shape != theirs[k].shape)
        if missing or unexpected or wrong_shape:
            raise ValueError(
                "GPT.from_hf: the checkpoint does not match GPT-2's layout; "
                f"missing {missing[:8]}, unexpected {unexpected[:8]}, "
                f"wrong shape {[(k, tuple(theirs[k].shape)) for k in wrong_shape[:8]]}"
            )
        if not torch.equal(theirs["lm_head.weight"], theirs["transformer.wte.weight"]):
            raise ValueError("GPT.from_hf: lm_head is not tied to wte; genlab's GPT ties them")
        model.load_state_dict(theirs)
        reference = next(hf_model.parameters())
        return model.to(device=reference.device, dtype=reference.dtype)


def _config_from_hf(hf_config) -> GPTConfig:
    """GPTConfig from a transformers ``GPT2Config``, refusing variants we do not build."""
    unsupported = {
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
    }
    for name, ours in unsupported.items():
        if getattr(hf_config, name, ours) != ours:
            raise ValueError(f"GPT.from_hf: {name}={getattr(hf_config, name)!r} is not supported")
    wanted = [f.name for f in fields(GPTConfig) if f.name != "attn_backend"]
    return GPTConfig(**{name: getattr(hf_config, name) for name in wanted})


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
