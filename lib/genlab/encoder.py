"""BERT: a bidirectional Transformer encoder and its two pretraining tasks.

BERT reads a whole sequence at once: every token attends to every other real
token, left and right (only padding is masked, never the future).  The input
is the sum of three embeddings,

    word (which token) + token type (sentence A or B) + position (where),

followed by LayerNorm, then a stack of *post-LN* encoder layers:

    x = LayerNorm(x + Dropout(SelfAttention(x)))
    x = LayerNorm(x + Dropout(W2 GELU(W1 x)))

The *pooler* reads the hidden state of the first token, ``[CLS]``, through a
dense layer and tanh: one vector per sequence, used for sentence-level tasks.

Pretraining (``BertForPreTraining``) has two heads:

- masked language modelling (MLM): about 15% of the tokens are selected
  (``mask_tokens``) and the model predicts the original token at those
  positions, from both sides' context.  The output projection reuses the word
  embedding matrix (weight tying), plus a per-token bias.
- next sentence prediction (NSP): the input is ``[CLS] A [SEP] B [SEP]``
  (``make_nsp_pairs``); from the pooled ``[CLS]`` vector the model says whether
  B really followed A (label 0, "IsNext") or is a random sentence (label 1).

Parameter names are exactly those of Hugging Face's ``modeling_bert.py``
(``embeddings.word_embeddings``, ``encoder.layer.0.attention.self.query``, ...)
so that ``from_hf`` can load a ``transformers`` model key by key and the two
can be checked against each other numerically.

Conventions (see ``genlab.masks``): ``attention_mask`` is HF-style 0/1 (B, T)
and becomes a boolean (B, 1, 1, T) mask with True = may attend.  A sequence
with no real token at all gets zeros from attention, never NaN.  Attention can
be computed by genlab's from-scratch ``scaled_dot_product_attention`` (explicit
matmuls: readable, and visible to torch.fx for FLOP counting) or by torch's
fused ``F.scaled_dot_product_attention``; both give the same numbers.

Randomness: the models' initial weights come from ``seed`` (constructor
argument, default 0); ``mask_tokens`` and ``make_nsp_pairs`` take a
``torch.Generator``, and so does ``forward`` for dropout in training mode
(without one, dropout uses torch's global RNG, like ``nn.Dropout``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

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
from genlab.masks import padding_mask

__all__ = [
    "BertConfig",
    "BertModel",
    "BertForPreTraining",
    "BertPreTrainingOutput",
    "mask_tokens",
    "make_nsp_pairs",
    "IGNORE_INDEX",
]

IGNORE_INDEX = -100  # label of positions that take no part in a loss

# hidden_act names (HF's) -> the ``approximate`` argument of nn.GELU
GELU_APPROXIMATIONS = {
    "gelu": "none",  # exact: x * Phi(x), with the Gaussian CDF written via erf
    "gelu_new": "tanh",  # the tanh approximation of the original BERT/GPT-2 code
    "gelu_pytorch_tanh": "tanh",
    "gelu_tanh": "tanh",
}


# ----------------------------------------------------------------------------
# small modules, in the order the data flows through them


class Dropout(nn.Module):
    """``nn.Dropout`` that can draw its mask from a ``torch.Generator``.

    The generator must live on the input's device.  Without one, this is
    ``F.dropout`` (torch's global RNG).  A no-op in eval mode or when p == 0.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if generator is None:
            return F.dropout(x, self.p, training=True)
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)  # rescale: same expectation

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BertEmbeddings(nn.Module):
    """Token ids (B, T) -> LayerNorm(word + token type + position) (B, T, C)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, C)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, C)
        self.LayerNorm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, generator=None) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (T,)
        x = (self.word_embeddings(input_ids)  # (B, T, C)
             + self.token_type_embeddings(token_type_ids)  # (B, T, C)
             + self.position_embeddings(positions))  # (T, C), the same for every sequence
        return self.dropout(self.LayerNorm(x), generator)  # (B, T, C)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention without the output projection (HF: ``attention.self``).

    The output projection lives in ``BertResidualOutput`` (HF: ``attention.output``).
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(C, C)
        self.key = nn.Linear(C, C)
        self.value = nn.Linear(C, C)
        self.dropout_p = config.attention_probs_dropout_prob  # on the attention weights
        self.backend = config.attn_backend

    def forward(self, x, allowed=None, generator=None) -> torch.Tensor:
        """x (B, T, C), allowed bool (B, 1, 1, T) or None -> (B, T, C)."""
        q, k, v = (split_heads(proj(x), self.num_heads)  # (B, H, T, Dh) each
                   for proj in (self.query, self.key, self.value))
        dropout_p = self.dropout_p if self.training else 0.0
        # torch's fused kernel cannot take a generator, so seeded dropout goes the scratch way
        if self.backend == "scratch" or (dropout_p > 0.0 and generator is not None):
            heads, _ = scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout_p, generator=generator
            )  # (B, H, T, Dh)
        else:
            # F.scaled_dot_product_attention, with zeros for a query that sees no key
            heads = torch_attention(q, k, v, allowed, False, dropout_p)  # (B, H, T, Dh)
        return merge_heads(heads)  # (B, T, C)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> add the sublayer's input -> LayerNorm: post-LN.

    Closes both sublayers of a layer: HF's ``attention.output`` (in_features = C)
    and ``output`` (in_features = intermediate_size).
    """

    def __init__(self, in_features: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, residual, generator=None) -> torch.Tensor:
        """hidden (B, T, in_features), residual (B, T, C) -> (B, T, C)."""
        return self.LayerNorm(self.dropout(self.dense(hidden), generator) + residual)


class BertAttention(nn.Module):
    """Self-attention sublayer: ``self`` (attend) and ``output`` (project, add, norm)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config.hidden_size, config)

    def forward(self, x, allowed=None, generator=None) -> torch.Tensor:
        return self.output(self.self(x, allowed, generator), x, generator)  # (B, T, C)


class BertIntermediate(nn.Module):
    """First half of the feed-forward sublayer: C -> intermediate_size, then GELU."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU(approximate=GELU_APPROXIMATIONS[config.hidden_act])

    def forward(self, x) -> torch.Tensor:
        return self.act(self.dense(x))  # (B, T, intermediate_size)


class BertLayer(nn.Module):
    """One encoder layer: attention sublayer, then feed-forward sublayer."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config.intermediate_size, config)

    def forward(self, x, allowed=None, generator=None) -> torch.Tensor:
        x = self.attention(x, allowed, generator)  # (B, T, C)
        return self.output(self.intermediate(x), x, generator)  # (B, T, C)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, allowed=None, generator=None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, allowed, generator)  # (B, T, C)
        return x


class BertPooler(nn.Module):
    """The sequence's vector: tanh(dense(hidden state of [CLS], the first token))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, C)


class BertPredictionHeadTransform(nn.Module):
    """MLM head, part 1: dense -> GELU -> LayerNorm, per position."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.GELU(approximate=GELU_APPROXIMATIONS[config.hidden_act])
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))  # (B, T, C)


class BertLMPredictionHead(nn.Module):
    """MLM head: transform, then scores over the vocabulary.

    ``decoder`` is tied by ``BertForPreTraining`` to the word embeddings: its
    (V, C) weight *is* the embedding matrix, so a token's score is the dot
    product of the hidden state with that token's input embedding, plus
    ``bias`` (which is also ``decoder.bias``; HF saves it under both names).
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, hidden) -> torch.Tensor:
        return self.decoder(self.transform(hidden))  # (B, T, V)


class BertPreTrainingHeads(nn.Module):
    """``predictions`` (MLM, every position) and ``seq_relationship`` (NSP, pooled)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, hidden, pooled):
        return self.predictions(hidden), self.seq_relationship(pooled)  # (B, T, V), (B, 2)


# ----------------------------------------------------------------------------
# configuration


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class BertConfig:
    """BERT's hyperparameters, with Hugging Face's field names.

    The defaults are a tiny model that trains on a laptop CPU; BERT-base is
    ``vocab_size=30522, hidden_size=768, num_hidden_layers=12,
    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512``.
    ``attn_backend``: "torch" (fused ``F.scaled_dot_product_attention``) or
    "scratch" (``genlab.attention.scaled_dot_product_attention``); same numbers.
    """

    vocab_size: int = 1000
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    attn_backend: str = "torch"

    def __post_init__(self):
        problems = []
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if (_is_int(self.hidden_size) and _is_int(self.num_attention_heads)
                and self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads):
            problems.append(f"hidden_size={self.hidden_size} is not divisible by "
                            f"num_attention_heads={self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            problems.append(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not isinstance(self.initializer_range, (int, float)) or not self.initializer_range >= 0:
            problems.append(f"initializer_range must be >= 0, got {self.initializer_range!r}")
        if self.hidden_act not in GELU_APPROXIMATIONS:
            problems.append(f"hidden_act must be one of {sorted(GELU_APPROXIMATIONS)}, "
                            f"got {self.hidden_act!r}")
        if self.pad_token_id is not None and not (
                _is_int(self.pad_token_id) and _is_int(self.vocab_size)
                and 0 <= self.pad_token_id < self.vocab_size):
            problems.append(f"pad_token_id must be None or an id in [0, vocab_size={self.vocab_size}), "
                            f"got {self.pad_token_id!r}")
        if self.attn_backend not in BACKENDS:
            problems.append(f"attn_backend must be one of {BACKENDS}, got {self.attn_backend!r}")
        if problems:
            raise ValueError("invalid BertConfig: " + "; ".join(problems))

    @classmethod
    def from_hf(cls, hf_config, **overrides) -> BertConfig:
        """The config of a ``transformers.BertConfig``; ``overrides`` replace fields
        (e.g. ``attn_backend="scratch"``).  Raises ValueError for what genlab's
        BERT does not implement (decoder mode, cross-attention, relative positions)."""
        unsupported = []
        if getattr(hf_config, "is_decoder", False):
            unsupported.append("is_decoder=True (causal BERT)")
        if getattr(hf_config, "add_cross_attention", False):
            unsupported.append("add_cross_attention=True")
        position_type = getattr(hf_config, "position_embedding_type", "absolute")
        if position_type != "absolute":
            unsupported.append(f"position_embedding_type={position_type!r}")
        if unsupported:
            raise ValueError("genlab's BertModel cannot represent this transformers config: "
                             + ", ".join(unsupported))
        values = {field.name: getattr(hf_config, field.name)
                  for field in dataclasses.fields(cls) if hasattr(hf_config, field.name)}
        values.update(overrides)
        return cls(**values)


@torch.no_grad()
def init_bert_weights(model: nn.Module, std: float, generator: torch.Generator) -> None:
    """BERT's initialisation (as HF's), drawn from ``generator``: Linear and
    Embedding weights ~ N(0, std), biases 0, the padding token's embedding 0,
    LayerNorm weight 1 and bias 0.  A tied weight is drawn once.  The numbers
    are drawn on the CPU and copied, so a model built on any device (e.g. under
    ``with torch.device("cuda"):``) gets the same weights."""
    drawn = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if id(module.weight) in drawn:
                continue  # the tied MLM decoder: its weight is the word embedding matrix
            drawn.add(id(module.weight))
            module.weight.copy_(std * torch.randn(module.weight.shape, generator=generator))
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
            if getattr(module, "padding_idx", None) is not None:
                module.weight[module.padding_idx] = 0.0
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------
# loading weights from transformers

# buffers of HF's BertEmbeddings that hold no learned weights (older versions saved them)
_HF_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _load_hf_weights(model: nn.Module, hf_model: nn.Module) -> nn.Module:
    """Copy ``hf_model``'s weights into ``model`` key by key (the names are the same
    by design); ValueError listing every missing, unexpected or mis-shaped key.
    The result takes the HF model's device, dtype and train/eval mode."""
    ours = model.state_dict()
    theirs = {name: tensor for name, tensor in hf_model.state_dict().items()
              if not name.endswith(_HF_BUFFERS)}
    problems = [f"missing in transformers: {name}" for name in sorted(set(ours) - set(theirs))]
    problems += [f"unexpected from transformers: {name}" for name in sorted(set(theirs) - set(ours))]
    problems += [f"shape of {name}: transformers {tuple(theirs[name].shape)}, "
                 f"genlab {tuple(ours[name].shape)}"
                 for name in sorted(set(ours) & set(theirs)) if theirs[name].shape != ours[name].shape]
    if problems:
        raise ValueError(f"cannot load {type(hf_model).__name__} into {type(model).__name__}:\n  "
                         + "\n  ".join(problems))
    model.load_state_dict({name: theirs[name] for name in ours})
    reference = next(hf_model.parameters())
    return model.to(device=reference.device, dtype=reference.dtype).train(hf_model.training)


# ----------------------------------------------------------------------------
# the models


class BertModel(nn.Module):
    """Embeddings, encoder layers, pooler.  HF parameter names throughout.

    ``BertModel(config, seed=0)``: the initial weights are drawn from a
    generator seeded with ``seed`` (not from torch's global RNG).
    """

    def __init__(self, config: BertConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        init_bert_weights(self, config.initializer_range, torch.Generator().manual_seed(seed))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) -> (last_hidden_state (B, T, C), pooled_output (B, C)).

        ``token_type_ids`` (B, T): 0 for sentence A, 1 for B; default all 0.
        ``attention_mask`` (B, T): HF-style, 1 = real token, 0 = padding;
        default: every token is real.  ``generator`` (on the model's device)
        seeds dropout in training mode.
        """
        self._check_inputs(input_ids, token_type_ids, attention_mask)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        allowed = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, T)
        if allowed is not None and self.config.attn_backend == "torch" and _no_padding(allowed):
            allowed = None  # the same result, and the fused kernel is faster without a mask

        x = self.embeddings(input_ids, token_type_ids, generator)  # (B, T, C)
        x = self.encoder(x, allowed, generator)  # (B, T, C)
        return x, self.pooler(x)  # (B, T, C), (B, C)

    def _check_inputs(self, input_ids, token_type_ids, attention_mask) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        T = input_ids.size(1)
        if T > self.config.max_position_embeddings:
            raise ValueError(f"sequence length T={T} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        for name, tensor in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
            if tensor is not None and tensor.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(tensor.shape)}")

    @classmethod
    def from_hf(cls, hf_model, **config_overrides) -> BertModel:
        """A genlab BertModel holding the weights of a ``transformers`` BERT.

        ``hf_model``: ``transformers.BertModel``, or any BERT with a head
        (``BertForPreTraining``, ...), whose base model is then taken.
        ``config_overrides`` replace config fields, e.g. ``attn_backend="scratch"``.
        """
        hf_model = getattr(hf_model, "base_model", hf_model)
        model = cls(BertConfig.from_hf(hf_model.config, **config_overrides))
        return _load_hf_weights(model, hf_model)


def _no_padding(allowed: torch.Tensor) -> bool:
    """True when a padding mask allows every key (one host sync, as in transformers).
    Under tracing (make_fx, torch.compile) the mask is kept: a graph must not depend on data."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    if torch.compiler.is_compiling() or get_proxy_mode() is not None:
        return False
    return bool(allowed.all())


@dataclass
class BertPreTrainingOutput:
    """What ``BertForPreTraining`` returns.  Losses are None without their labels;
    ``loss`` = ``mlm_loss`` + ``nsp_loss`` (those of the two that were computed)."""

    prediction_logits: torch.Tensor  # (B, T, V)
    seq_relationship_logits: torch.Tensor  # (B, 2)
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None


def masked_lm_loss(prediction_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100.

    The same as ``F.cross_entropy(..., ignore_index=-100)``, except that a batch
    with no selected position gives 0 instead of NaN (0 / 0).
    """
    V = prediction_logits.size(-1)
    total = F.cross_entropy(prediction_logits.reshape(-1, V), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


class BertForPreTraining(nn.Module):
    """``bert`` (BertModel) + ``cls`` heads: MLM over the vocabulary, NSP over 2 classes.

    ``BertForPreTraining(config, seed=0)``: the weights are drawn from a
    generator seeded with ``seed``, body first, so that ``.bert`` holds the same
    weights as ``BertModel(config, seed)``.
    """

    def __init__(self, config: BertConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        # weight tying: the MLM decoder's (V, C) weight is the word embedding matrix itself
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        init_bert_weights(self, config.initializer_range, torch.Generator().manual_seed(seed))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> BertPreTrainingOutput:
        """input_ids (B, T) -> logits for MLM (B, T, V) and NSP (B, 2), and losses.

        ``labels`` (B, T): original token at the positions to predict, -100
        elsewhere (``mask_tokens`` makes them).  ``next_sentence_label`` (B,):
        0 = B follows A, 1 = B is random.  Other arguments as ``BertModel``.
        """
        hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask, generator)
        prediction_logits, seq_relationship_logits = self.cls(hidden, pooled)  # (B, T, V), (B, 2)

        mlm_loss = None if labels is None else masked_lm_loss(prediction_logits, labels)
        nsp_loss = (None if next_sentence_label is None
                    else F.cross_entropy(seq_relationship_logits, next_sentence_label.reshape(-1)))
        if mlm_loss is not None and nsp_loss is not None:
            loss = mlm_loss + nsp_loss
        else:
            loss = mlm_loss if mlm_loss is not None else nsp_loss
        return BertPreTrainingOutput(prediction_logits, seq_relationship_logits,
                                     loss=loss, mlm_loss=mlm_loss, nsp_loss=nsp_loss)

    @classmethod
    def from_hf(cls, hf_model, **config_overrides) -> BertForPreTraining:
        """A genlab BertForPreTraining with the weights of ``transformers.BertForPreTraining``.

        genlab always ties the MLM decoder to the word embeddings, so an HF
        model whose two matrices differ (untied) is refused with a ValueError.
        """
        decoder = hf_model.cls.predictions.decoder.weight
        embeddings = hf_model.bert.embeddings.word_embeddings.weight
        if decoder.shape != embeddings.shape or not torch.equal(decoder, embeddings):
            raise ValueError("the transformers model's MLM decoder is not tied to its word "
                             "embeddings (tie_word_embeddings=False?); genlab always ties them")
        model = cls(BertConfig.from_hf(hf_model.config, **config_overrides))
        return _load_hf_weights(model, hf_model)


# ----------------------------------------------------------------------------
# pretraining data: masked tokens and sentence pairs


def _draw_device(generator: torch.Generator | None, default) -> torch.device:
    """Random numbers are drawn where the generator lives (``default`` without one)."""
    return generator.device if generator is not None else torch.device(default)


def mask_tokens(
    input_ids: torch.Tensor,
    vocab_size: int,
    mask_token_id: int,
    special_token_ids: Sequence[int],
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's MLM corruption: returns ``(masked_input_ids, labels)``, both like input_ids.

    The procedure, with every draw from ``generator`` in this order:

    1. ``select ~ U[0, 1)`` per position; a position is *selected* when
       ``select < mlm_probability`` and its token is not special (not in
       ``special_token_ids``, not ``mask_token_id``).  So each ordinary token is
       selected independently with probability ``mlm_probability`` (a Bernoulli
       per position, as HF's ``DataCollatorForLanguageModeling``): 15% on
       average, not exactly 15% of every sequence.  Padding, [CLS], [SEP] are
       never selected, provided their ids are in ``special_token_ids``.
    2. ``action ~ U[0, 1)`` per position decides what a selected position
       becomes: ``action < 0.8`` -> ``mask_token_id`` (80%);
       ``0.8 <= action < 0.9`` -> a random token (10%); otherwise it is left
       unchanged (10%).  (HF draws a second Bernoulli(0.5) for random vs
       unchanged: the same distribution, different random numbers.)
    3. ``random token`` ~ uniform over the *non-special* ids of
       ``range(vocab_size)``, drawn for every position (HF draws from the whole
       vocabulary, specials included).  It may equal the original token.

    ``labels`` holds the original token at selected positions and -100 at all
    others.  The input is not modified.  Draws happen on the generator's device
    and are moved to the input's device, so a CPU generator gives the same
    result on CPU and CUDA (without a generator: torch's global RNG for the
    input's device).
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    specials = sorted({int(i) for i in special_token_ids} | {int(mask_token_id)})
    out_of_range = [i for i in specials if not 0 <= i < vocab_size]
    if out_of_range:
        raise ValueError(f"special/mask token ids {out_of_range} are outside [0, vocab_size={vocab_size})")
    if len(specials) >= vocab_size:
        raise ValueError("every id of the vocabulary is special: no token to draw at random")
    device = input_ids.device
    special_ids = torch.tensor(specials, device=device)
    ordinary_ids = torch.ones(vocab_size, dtype=torch.bool, device=device)
    ordinary_ids[special_ids] = False
    ordinary_ids = ordinary_ids.nonzero().squeeze(1)  # (V - #specials,) the ids we may draw

    draw = dict(size=input_ids.shape, generator=generator, device=_draw_device(generator, device))
    select = torch.rand(**draw).to(device)  # (B, T)
    action = torch.rand(**draw).to(device)  # (B, T)
    random_index = torch.randint(len(ordinary_ids), **draw).to(device)  # (B, T)

    selected = (select < mlm_probability) & ~torch.isin(input_ids, special_ids)  # (B, T)
    random_ids = ordinary_ids[random_index].to(input_ids.dtype)  # (B, T)

    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    masked_input_ids = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked_input_ids = torch.where(to_random, random_ids, masked_input_ids)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked_input_ids, labels


def _randint(n: int, generator: torch.Generator | None) -> int:
    """One integer uniform in 0..n-1."""
    return int(torch.randint(n, (1,), generator=generator, device=_draw_device(generator, "cpu")))


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer sentence (A on ties) until both fit."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def make_nsp_pairs(
    documents: Sequence[Sequence[Sequence[int]]],
    num_pairs: int,
    max_len: int,
    cls_token_id: int,
    sep_token_id: int,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """A batch of NSP examples ``[CLS] A [SEP] B [SEP] [PAD]...`` of length ``max_len``.

    ``documents``: a list of documents, each a list of sentences, each a
    non-empty list of token ids.  For each of the ``num_pairs`` examples, with
    every draw from ``generator`` (CPU generator; torch's global RNG if None):

    1. a document uniformly among those with at least 2 sentences, and in it a
       sentence A uniformly among all but the last;
    2. a fair coin: with probability 1/2, B is the sentence after A in the same
       document (``next_sentence_label`` 0, IsNext, as HF); otherwise B is a
       sentence drawn uniformly from a document drawn uniformly among the
       *other* documents (label 1, NotNext);
    3. if ``len(A) + len(B) > max_len - 3``, tokens are dropped from the end of
       the longer of the two (A on ties) until they fit.

    Returns a dict of CPU tensors, ready for ``model(**batch)`` with a ``BertForPreTraining``:
    ``input_ids``, ``token_type_ids`` (0 for [CLS] A [SEP], 1 for B [SEP],
    0 on padding), ``attention_mask`` (1 real, 0 padding), all (N, max_len),
    and ``next_sentence_label`` (N,).
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    if max_len < 5:
        raise ValueError(f"max_len must be >= 5 ([CLS] A [SEP] B [SEP] with A, B non-empty), got {max_len}")
    if any(len(sentence) == 0 for document in documents for sentence in document):
        raise ValueError("every sentence must hold at least one token")
    with_next = [d for d, document in enumerate(documents) if len(document) >= 2]
    non_empty = [d for d, document in enumerate(documents) if len(document) >= 1]
    if not with_next or len(non_empty) < 2:
        raise ValueError("make_nsp_pairs needs a document with at least 2 sentences "
                         "and at least 2 non-empty documents")

    input_ids = torch.full((num_pairs, max_len), pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros(num_pairs, max_len, dtype=torch.long)
    attention_mask = torch.zeros(num_pairs, max_len, dtype=torch.long)
    next_sentence_label = torch.zeros(num_pairs, dtype=torch.long)
    for n in range(num_pairs):
        d = with_next[_randint(len(with_next), generator)]
        i = _randint(len(documents[d]) - 1, generator)
        a = documents[d][i]
        is_next = _randint(2, generator) == 0
        if is_next:
            b = documents[d][i + 1]
        else:
            others = [other for other in non_empty if other != d]
            other = others[_randint(len(others), generator)]
            b = documents[other][_randint(len(documents[other]), generator)]
        a, b = _truncate_pair(a, b, max_len - 3)

        tokens = [cls_token_id, *a, sep_token_id, *b, sep_token_id]
        length, first_b = len(tokens), len(a) + 2
        input_ids[n, :length] = torch.tensor(tokens)
        token_type_ids[n, first_b:length] = 1
        attention_mask[n, :length] = 1
        next_sentence_label[n] = 0 if is_next else 1
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "next_sentence_label": next_sentence_label,
    }
