"""Assignment 2, "BERT: the encoder": what is graded, on which inputs, for how many points.

* ``BertEmbeddings`` and ``BertLayer``: the student's modules, built as ``cls(config)`` with
  fixed seeded tiny weights under Hugging Face's parameter names (genlab.checks' module
  convention), against genlab's modules; known bugs (pre-LN, a missing residual or
  token-type embedding, ...) are recognised and named.
* ``mask_tokens``: a property over large seeded samples (``genlab.properties.bert``):
  BERT's rules at every position and the 15% / 80 / 10 / 10 rates within binomial
  tolerances; two calls with the same seed must agree.
* ``pretraining_loss``: MLM + NSP against genlab's loss.
* ``fill_masks``: the BERT the student pretrained in the notebook fills in [MASK] tokens of
  held-out sequences of the HMM language; its accuracy on the masked positions must reach
  ``ACCURACY_FRACTION`` of the exact Bayes-optimal accuracy on the same tokens. The true
  tokens are the reference output, computed from the held-out set's seed (``true_tokens``).
"""

from __future__ import annotations

import functools
import json
import math

import torch
import torch.nn.functional as F

from autograder.spec import Assignment, CaseSpec, check_maker
from genlab import encoder
from genlab.data import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID, HMMLanguage
from genlab.properties.bert import MASKING_INPUTS  # registers the inputs "genlab:bert02_masking_*"

SPECIAL_IDS = (PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID)

# The language of the notebook's pretraining (section 5), and its held-out sets.
HMM_SEED = 1            # HMMLanguage(seed=1): 8 states, 24 symbols, ids 5..28
CHAIN_LENGTH = 16       # one "document": 16 symbols cut into sentences A and B
MASKED_PER_SEQUENCE = 2  # [MASK]s per held-out sequence (2 of 16 symbols)
HELD_OUT = {            # name -> (sampling seed, number of sequences)
    "public": (1001, 256),
    "hidden": (2002, 512),
}
# fill_masks must reach this fraction of the Bayes-optimal accuracy. Measured (torch 2.13,
# CPU): the solution reaches 0.89 (public set) and 0.915 (hidden set) of it, and 0.88-0.96 on
# validation sets over 8 training seeds, with pre-LN layers or 70/10/20 masking too; an
# untrained model 0.05-0.07; the best context-free guess (the most frequent symbol) 0.19-0.22;
# a model still on its initial plateau (token frequencies only) about 0.3.
ACCURACY_FRACTION = 0.75

MODEL_CALLS = ("genlab.encoder.BertModel", "genlab.encoder.BertForPreTraining",
               "genlab.encoder.BertEncoder")
EMBEDDING_CALLS = ("genlab.encoder.BertEmbeddings",) + MODEL_CALLS
LAYER_CALLS = ("genlab.encoder.BertLayer", "genlab.encoder.BertAttention",
               "genlab.encoder.BertSelfAttention", "genlab.encoder.BertResidualOutput",
               "genlab.encoder.BertIntermediate") + MODEL_CALLS
BAYES_CALLS = tuple(f"genlab.data.HMMLanguage.{name}" for name in (
    "masked_token_posteriors", "bayes_masked_accuracy", "bayes_masked_loss", "_masked_scores",
    "_forward", "_backward"))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ modules


def _config(**fields) -> dict:
    base = dict(vocab_size=29, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=32, max_position_embeddings=16, type_vocab_size=2)
    return {**base, **fields}


def _seeded_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights of ``module``'s shapes drawn from ``seed``, far from the identity: unit-scale
    embeddings, 1/sqrt(fan_in) matrices, non-zero biases and LayerNorm gains != 1, so that
    every known bug changes the output."""
    g = _gen(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        noise = torch.randn(tensor.shape, generator=g)
        if name.endswith("LayerNorm.weight"):
            value = 1.0 + 0.2 * noise
        elif name.endswith("LayerNorm.bias") or name.endswith(".bias"):
            value = 0.2 * noise
        elif "embeddings" in name:
            value = noise
        else:  # a Linear weight (out, in)
            value = noise / math.sqrt(tensor.shape[1])
        state[name] = value.to(tensor.dtype)
    return state


def _module_inputs(cls: type, config: dict, seed: int) -> dict:
    module = cls(encoder.BertConfig(**config))
    inputs = {"__module__": json.dumps({"config_class": "genlab.encoder.BertConfig",
                                        "config": config}, sort_keys=True)}
    for name, value in _seeded_state(module, seed).items():
        inputs[f"__state__.{name}"] = value
    return inputs


def embeddings_case(seed: int, B: int, T: int, token_types: bool = True, **config) -> CaseSpec:
    config = _config(**config)

    def make():
        inputs = _module_inputs(encoder.BertEmbeddings, config, seed)
        g = _gen(seed + 100)
        inputs["input_ids"] = torch.randint(config["vocab_size"], (B, T), generator=g)
        if token_types:
            inputs["token_type_ids"] = torch.randint(config["type_vocab_size"], (B, T), generator=g)
        return inputs

    return CaseSpec(make=make, meta={"B": B, "T": T, "hidden_size": config["hidden_size"],
                                     "vocab_size": config["vocab_size"],
                                     "token_type_ids": "given" if token_types else "omitted",
                                     "seed": seed},
                    kind="" if token_types else "token_type_ids omitted")


def layer_case(seed: int, B: int, T: int, padding: bool, **config) -> CaseSpec:
    config = _config(**config)

    def make():
        inputs = _module_inputs(encoder.BertLayer, config, seed)
        g = _gen(seed + 100)
        inputs["x"] = torch.randn(B, T, config["hidden_size"], generator=g)
        if padding:  # every sequence keeps at least one real token; the first has none padded
            lengths = torch.randint(1, T + 1, (B,), generator=g)
            lengths[0] = T
            inputs["allowed"] = (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]
        return inputs

    return CaseSpec(make=make, meta={"B": B, "T": T, "hidden_size": config["hidden_size"],
                                     "heads": config["num_attention_heads"],
                                     "intermediate_size": config["intermediate_size"],
                                     "allowed": "padding mask" if padding else "None",
                                     "seed": seed},
                    kind="padding mask" if padding else "")


class ReferenceEmbeddings(encoder.BertEmbeddings):
    """genlab's embeddings, with token_type_ids defaulting to zeros (as in Hugging Face)."""

    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return super().forward(input_ids, token_type_ids)


# known bugs: the same modules and weights, computed the wrong way


class EmbeddingsWithoutTokenType(encoder.BertEmbeddings):
    def forward(self, input_ids, token_type_ids=None):
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class EmbeddingsNormBeforePosition(encoder.BertEmbeddings):
    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.LayerNorm(self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids))
        return x + self.position_embeddings(positions)


class EmbeddingsWithoutLayerNorm(encoder.BertEmbeddings):
    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        return (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
                + self.position_embeddings(positions))


class PreLNLayer(encoder.BertLayer):
    """x + Sublayer(LayerNorm(x)), twice: GPT-2's arrangement, not BERT's."""

    def forward(self, x, allowed=None):
        attention, ffn_norm = self.attention, self.output.LayerNorm
        x = x + attention.output.dense(attention.self(attention.output.LayerNorm(x), allowed))
        return x + self.output.dense(self.intermediate(ffn_norm(x)))


class LayerWithoutResidual(encoder.BertLayer):
    def forward(self, x, allowed=None):
        attention = self.attention
        x = attention.output.LayerNorm(attention.output.dense(attention.self(x, allowed)))
        return self.output.LayerNorm(self.output.dense(self.intermediate(x)))


class LayerIgnoringMask(encoder.BertLayer):
    def forward(self, x, allowed=None):
        return super().forward(x, None)


class LayerWithTanhGelu(encoder.BertLayer):
    def forward(self, x, allowed=None):
        self.intermediate.act = torch.nn.GELU(approximate="tanh")
        return super().forward(x, allowed)


class LayerWithOneHead(encoder.BertLayer):
    def forward(self, x, allowed=None):
        self.attention.self.num_heads = 1
        return super().forward(x, allowed)


_HERE = "autograder.specs.a02_bert"
EMBEDDING_BUGS = {
    "no_token_type": (f"{_HERE}.EmbeddingsWithoutTokenType",
                      "the token-type (segment) embedding is missing: the input is "
                      "LayerNorm(word + token_type + position)"),
    "norm_before_position": (f"{_HERE}.EmbeddingsNormBeforePosition",
                             "you add the position embedding after the LayerNorm: LayerNorm comes "
                             "after the sum of all three embeddings"),
    "no_layernorm": (f"{_HERE}.EmbeddingsWithoutLayerNorm",
                     "the LayerNorm after the sum of the three embeddings is missing"),
}
LAYER_BUGS = {
    "pre_ln": (f"{_HERE}.PreLNLayer",
               "your layer is pre-LN, x + Sublayer(LayerNorm(x)) (GPT-2's arrangement); BERT is "
               "post-LN: x = LayerNorm(x + Sublayer(x)) after each of the two sublayers"),
    "no_residual": (f"{_HERE}.LayerWithoutResidual",
                    "the residual connections are missing: each sublayer gives "
                    "LayerNorm(x + Sublayer(x)), not LayerNorm(Sublayer(x))"),
    "ignores_mask": (f"{_HERE}.LayerIgnoringMask",
                     "your layer ignores `allowed`: queries attend to padding keys (block the "
                     "scores where allowed is False before the softmax)"),
    "tanh_gelu": (f"{_HERE}.LayerWithTanhGelu",
                  "your feed-forward uses the tanh approximation of GELU (approximate=\"tanh\"); "
                  "BERT uses the exact (erf) GELU: F.gelu(x) without `approximate`"),
    "one_head": (f"{_HERE}.LayerWithOneHead",
                 "your attention has one head of size hidden_size: split q, k and v into "
                 "num_attention_heads heads of size hidden_size / num_attention_heads"),
}


# ------------------------------------------------------------------------------ masking


def masking_case(name: str, mlm_probability: float, draw_seed: int) -> CaseSpec:
    """input_ids MASKING_INPUTS[name] of genlab.properties.bert, passed as "genlab:<name>" (an
    inference tensor: modifying it in place raises), and a generator seeded with draw_seed."""
    spec = {"specials": SPECIAL_IDS, "in_text": 0.0, **MASKING_INPUTS[name]}
    mask = spec["specials"][3]

    def make():
        return {"input_ids": f"genlab:{name}", "vocab_size": spec["vocab_size"], "mask_token_id": mask,
                "special_token_ids": torch.tensor(spec["specials"]),
                "mlm_probability": mlm_probability, "generator": f"seed:{draw_seed}"}

    meta = {"B": spec["B"], "T": spec["T"], "vocab_size": spec["vocab_size"],
            "mlm_probability": mlm_probability, "generator": f"seeded with {draw_seed}"}
    if spec["in_text"]:
        meta["[UNK] and [MASK] in the text"] = f"{spec['in_text']:.0%} each"
    if spec["specials"] != SPECIAL_IDS:
        meta["special ids ([PAD], [CLS], [SEP], [MASK], [UNK])"] = list(spec["specials"])
    return CaseSpec(make=make, meta=meta)


# --------------------------------------------------------------------------------- loss


def reference_pretraining_loss(prediction_logits, seq_relationship_logits, labels,
                               next_sentence_label):
    """genlab's pretraining loss: (mlm + nsp, mlm, nsp)."""
    mlm = encoder.masked_lm_loss(prediction_logits, labels)
    nsp = F.cross_entropy(seq_relationship_logits, next_sentence_label)
    return mlm + nsp, mlm, nsp


def loss_mean_over_all_positions(prediction_logits, seq_relationship_logits, labels,
                                 next_sentence_label):
    V = prediction_logits.size(-1)
    mlm = F.cross_entropy(prediction_logits.reshape(-1, V), labels.reshape(-1),
                          ignore_index=-100, reduction="sum") / labels.numel()
    nsp = F.cross_entropy(seq_relationship_logits, next_sentence_label)
    return mlm + nsp, mlm, nsp


def loss_nan_without_selection(prediction_logits, seq_relationship_logits, labels,
                               next_sentence_label):
    V = prediction_logits.size(-1)
    mlm = F.cross_entropy(prediction_logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    nsp = F.cross_entropy(seq_relationship_logits, next_sentence_label)
    return mlm + nsp, mlm, nsp


def loss_without_nsp(prediction_logits, seq_relationship_logits, labels, next_sentence_label):
    _, mlm, nsp = reference_pretraining_loss(prediction_logits, seq_relationship_logits, labels,
                                             next_sentence_label)
    return mlm, mlm, nsp


def loss_python_float_without_selection(prediction_logits, seq_relationship_logits, labels,
                                        next_sentence_label):
    loss, mlm, nsp = reference_pretraining_loss(prediction_logits, seq_relationship_logits, labels,
                                                next_sentence_label)
    if not (labels != -100).any():
        return 0.0 + nsp, 0.0, nsp
    return loss, mlm, nsp


def loss_python_floats(prediction_logits, seq_relationship_logits, labels, next_sentence_label):
    return tuple(float(t) for t in reference_pretraining_loss(
        prediction_logits, seq_relationship_logits, labels, next_sentence_label))


_FLOATS = ("you return a Python float (a number, not a tensor): return three scalar tensors (0-d, in the "
           "dtype of the logits), also the MLM loss 0 when no position is selected (e.g. "
           "prediction_logits.sum() * 0.0) and without .item()")
LOSS_BUGS = {
    "python_float_zero": (f"{_HERE}.loss_python_float_without_selection", _FLOATS),
    "python_floats": (f"{_HERE}.loss_python_floats", _FLOATS),
    "mean_over_all": (f"{_HERE}.loss_mean_over_all_positions",
                      "your MLM loss averages over all B*T positions: average the cross-entropy "
                      "over the selected positions only (labels != -100)"),
    "nan_without_selection": (f"{_HERE}.loss_nan_without_selection",
                              "with no selected position (every label -100) the MLM loss must be 0, "
                              "not NaN: F.cross_entropy's mean divides 0 by 0 there"),
    "no_nsp": (f"{_HERE}.loss_without_nsp",
               "`loss` must be mlm_loss + nsp_loss: yours leaves out the NSP loss"),
}


def loss_case(seed: int, B: int, T: int, V: int, dtype: str = "float32",
              selection: str = "random") -> CaseSpec:
    def make():
        g, dt = _gen(seed), getattr(torch, dtype)
        labels = torch.randint(V, (B, T), generator=g)
        unselected = torch.rand(B, T, generator=g) >= 0.3
        unselected[0, 0] = False  # at least one selected position
        if selection == "none":
            unselected[:] = True
        return {"prediction_logits": 2 * torch.randn(B, T, V, generator=g, dtype=dt),
                "seq_relationship_logits": torch.randn(B, 2, generator=g, dtype=dt),
                "labels": labels.masked_fill(unselected, -100),
                "next_sentence_label": torch.randint(2, (B,), generator=g)}

    return CaseSpec(make=make, meta={"B": B, "T": T, "V": V, "dtype": dtype,
                                     "selected": "about 30%" if selection == "random" else "none",
                                     "seed": seed})


# ----------------------------------------------------------------------- held-out sets


@functools.lru_cache(maxsize=None)
def held_out_set(name: str) -> dict[str, torch.Tensor]:
    """Sequences "[CLS] A [SEP] B [SEP]" where A, B are the two halves (cut at a random
    point 4..12) of one chain of the HMM language, with MASKED_PER_SEQUENCE of the 16
    symbols replaced by [MASK]. Returns the model's inputs, the true token ids, and the
    symbols and mask from which the Bayes-optimal accuracy is computed."""
    seed, n = HELD_OUT[name]
    hmm = HMMLanguage(seed=HMM_SEED)
    g = _gen(seed)
    L = CHAIN_LENGTH
    symbols = hmm.sample(n, L, generator=g)  # (N, L)
    cut = torch.randint(L // 4, L - L // 4 + 1, (n,), generator=g)  # len(A)
    masked = torch.zeros(n, L, dtype=torch.bool)
    masked.scatter_(1, torch.rand(n, L, generator=g).argsort(dim=1)[:, :MASKED_PER_SEQUENCE], True)
    j = torch.arange(L)[None, :]
    where = 1 + j + (j >= cut[:, None]).long()  # (N, L) position of symbol j in the sequence
    truth = torch.full((n, L + 3), SEP_ID)
    truth[:, 0] = CLS_ID
    truth.scatter_(1, where, hmm.vocab.symbols_to_ids(symbols))
    input_ids = truth.clone()
    input_ids[torch.zeros_like(truth, dtype=torch.bool).scatter_(1, where, masked)] = MASK_ID
    token_type_ids = (torch.arange(L + 3)[None, :] >= cut[:, None] + 2).long()
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": torch.ones_like(input_ids), "truth": truth,
            "symbols": symbols, "masked": masked}


@functools.lru_cache(maxsize=None)
def bayes_accuracy(name: str) -> float:
    """The exact Bayes-optimal accuracy on the held-out set's masked tokens (forward-backward)."""
    s = held_out_set(name)
    return round(HMMLanguage(seed=HMM_SEED).bayes_masked_accuracy(s["symbols"], s["masked"])["accuracy"], 6)


def held_out_case(name: str) -> CaseSpec:
    def make():
        s = held_out_set(name)
        return {k: s[k] for k in ("input_ids", "token_type_ids", "attention_mask")}

    seed, n = HELD_OUT[name]
    return CaseSpec(make=make, meta={"sequences": n, "masked_tokens": n * MASKED_PER_SEQUENCE,
                                     "held_out": name})


def true_tokens(input_ids, token_type_ids=None, attention_mask=None):
    """The reference of fill_masks: the true tokens of the held-out set these inputs come from."""
    for name in HELD_OUT:
        s = held_out_set(name)
        if s["input_ids"].shape == input_ids.shape and torch.equal(s["input_ids"], input_ids.cpu()):
            return s["truth"].to(input_ids.device)
    raise ValueError("these inputs are none of the held-out sets")


# ------------------------------------------------------------------------------ checks

PER_FUNCTION = {
    "BertEmbeddings": dict(cell="test_embeddings", reference=f"{_HERE}.ReferenceEmbeddings",
                           outputs=("embeddings",), forbidden=EMBEDDING_CALLS, bugs=EMBEDDING_BUGS),
    "BertLayer": dict(cell="test_layer", reference="genlab.encoder.BertLayer",
                      outputs=("hidden",), forbidden=LAYER_CALLS, bugs=LAYER_BUGS),
    "mask_tokens": dict(cell="test_mask_tokens", reference="genlab.encoder.mask_tokens",
                        dtype="int64", compare="property:bert.mlm_masking",
                        outputs=("masked_input_ids", "labels"),
                        forbidden=("genlab.encoder.mask_tokens",), params={"z": 5.0}),
    "pretraining_loss": dict(cell="test_loss", reference=f"{_HERE}.reference_pretraining_loss",
                             outputs=("loss", "mlm_loss", "nsp_loss"),
                             forbidden=("genlab.encoder.masked_lm_loss",
                                        "genlab.encoder.BertForPreTraining"),
                             bugs=LOSS_BUGS),
    "fill_masks": dict(cell="test_fill_masks", reference=f"{_HERE}.true_tokens", dtype="int64",
                       compare="property:bert.masked_accuracy", outputs=("filled_ids",),
                       forbidden=BAYES_CALLS + EMBEDDING_CALLS + LAYER_CALLS),
}


check = check_maker(PER_FUNCTION)


def accuracy_params(name: str) -> dict:
    return {"fraction": ACCURACY_FRACTION, "bayes_accuracy": [bayes_accuracy(name)],
            "mask_token_id": MASK_ID}


# The pre_ln sample: the solution's BertLayer.forward with LayerNorm moved before each sublayer.
POST_LN = """\
        q, k, v = (proj(x).view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, C/H) each
                   for proj in (attention.query, attention.key, attention.value))
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, T, C/H)
        merged = heads.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        x = attention_output.LayerNorm(x + self.dropout(attention_output.dense(merged)))  # add, then norm
        h = F.gelu(self.intermediate.dense(x))  # (B, T, intermediate_size)
        return self.output.LayerNorm(x + self.dropout(self.output.dense(h)))  # (B, T, C)
"""
PRE_LN = """\
        normed = attention_output.LayerNorm(x)
        q, k, v = (proj(normed).view(B, T, H, C // H).transpose(1, 2)
                   for proj in (attention.query, attention.key, attention.value))
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        merged = heads.transpose(1, 2).reshape(B, T, C)
        x = x + self.dropout(attention_output.dense(merged))
        h = F.gelu(self.intermediate.dense(self.output.LayerNorm(x)))
        return x + self.dropout(self.output.dense(h))
"""

SPEC = Assignment(
    name="02_bert",
    notebook="bert.ipynb",
    # the Bayes-optimal answers the notebook shows beside the trained model (sections 5, 7)
    notebook_uses=("genlab.data.HMMLanguage.bayes_masked_accuracy", "genlab.data.HMMLanguage.bayes_masked_loss",
                   "genlab.data.HMMLanguage.masked_token_posteriors"),
    checks=[
        check("embeddings", "BertEmbeddings", True,
              [embeddings_case(0, B=2, T=6), embeddings_case(1, B=3, T=5, hidden_size=8),
               embeddings_case(4, B=2, T=4, token_types=False)],
              "word + token type + position, then LayerNorm, on fixed tiny weights; token_type_ids "
              "omitted (all zeros)", points=2),
        check("embeddings.hidden", "BertEmbeddings", False,
              [embeddings_case(2, B=2, T=9, token_types=False, vocab_size=50, hidden_size=12),
               embeddings_case(3, B=1, T=16, hidden_size=24, type_vocab_size=3)],
              "token_type_ids omitted (all zeros); T = max_position_embeddings; 3 token types",
              points=2),
        check("layer", "BertLayer", True,
              [layer_case(0, B=2, T=5, padding=False), layer_case(1, B=3, T=6, padding=True)],
              "post-LN encoder layer on fixed tiny weights, without and with a padding mask",
              points=3),
        check("layer.hidden", "BertLayer", False,
              [layer_case(2, B=3, T=7, padding=True, hidden_size=24, num_attention_heads=3,
                          intermediate_size=40),
               layer_case(3, B=2, T=4, padding=True, hidden_size=8, num_attention_heads=1,
                          intermediate_size=16)],
              "three heads of size 8, one head; padding", points=3),
        check("mask_tokens", "mask_tokens", True,
              [masking_case("bert02_masking_0", mlm_probability=0.15, draw_seed=0),
               masking_case("bert02_masking_0", mlm_probability=0.15, draw_seed=0),
               masking_case("bert02_masking_0", mlm_probability=0.15, draw_seed=1)],
              "15% selected, 80/10/10, specials (also [UNK] and [MASK] in the text) never selected, "
              "labels, input_ids not modified; the same seed twice, another seed", points=2),
        check("mask_tokens.hidden", "mask_tokens", False,
              [masking_case("bert02_masking_1", mlm_probability=0.3, draw_seed=11),
               masking_case("bert02_masking_2", mlm_probability=0.15, draw_seed=12),
               masking_case("bert02_masking_2", mlm_probability=0.15, draw_seed=12),
               masking_case("bert02_masking_2", mlm_probability=0.15, draw_seed=14),
               # other special ids (at the end of the vocabulary): random tokens from range(5, V)
               # or genlab's constants instead of special_token_ids give specials
               masking_case("bert02_masking_3", mlm_probability=0.15, draw_seed=13)],
              "mlm_probability = 0.3 and a 1000-token vocabulary; a larger sample, twice, and with "
              "another seed; other special ids", points=3),
        check("loss", "pretraining_loss", True,
              [loss_case(0, B=2, T=6, V=11), loss_case(4, B=2, T=4, V=11, selection="none")],
              "MLM cross-entropy over the selected positions + NSP cross-entropy; no selected "
              "position (MLM loss 0, a tensor)", points=2),
        check("loss.hidden", "pretraining_loss", False,
              [loss_case(1, B=4, T=9, V=29, dtype="float64"),
               loss_case(2, B=3, T=5, V=7, dtype="float64", selection="none")],
              "float64; a batch with no selected position (MLM loss 0, not NaN)",
              dtype="float64", points=2),
        check("fill_masks", "fill_masks", True, [held_out_case("public")],
              f"masked-token accuracy of the pretrained BERT >= {ACCURACY_FRACTION:.0%} of "
              "Bayes-optimal, public held-out set", params=accuracy_params("public"), points=2),
        check("fill_masks.hidden", "fill_masks", False, [held_out_case("hidden")],
              f"masked-token accuracy of the pretrained BERT >= {ACCURACY_FRACTION:.0%} of "
              "Bayes-optimal, hidden held-out set", params=accuracy_params("hidden"), points=4),
    ],
    samples={
        "solution": {"solved": "all", "lost": []},
        "blank": {"solved": [], "lost": "all"},
        # the two modules done; masking, loss and so pretraining not yet
        "partial": {"solved": ["embeddings", "layer"],
                    "lost": ["mask_tokens", "mask_tokens.hidden", "loss", "loss.hidden",
                             "fill_masks", "fill_masks.hidden"]},
        # the classic confusion with GPT-2: LayerNorm before each sublayer (it still trains)
        "pre_ln": {"solved": "all", "lost": ["layer", "layer.hidden"],
                   "edit": {"layer": [POST_LN, PRE_LN]}},
        # "10% random" written as action < 0.1, which overwrites part of the 80% [MASK]: 70/10/20
        "split": {"solved": "all", "lost": ["mask_tokens", "mask_tokens.hidden"],
                  "edit": {"mask_tokens": ["(action >= 0.8) & (action < 0.9)", "(action < 0.1)"]}},
    },
)
