"""Assignment 7 (the whole language model): the small models its checks pass to the
student's functions, by name (``"genlab:lm07_*"`` in a case's inputs).

* ``lm07_mask``: a Llama-style decoder (RMSNorm, rotary positions, SwiGLU) **with biases**
  and a tied output layer, for the weight-decay mask: it has every kind of parameter
  (weight matrices, biases, norm gains, the embedding table shared with the output layer);
* ``lm07_mask_untied``: the same with an untied output layer (a weight matrix of its own);
* ``lm07_train`` and ``lm07_train_wide``: tiny Llama-style decoders (no biases, tied) that
  the training-loop checks train for a few steps, straight and interrupted.

Each name builds a fresh model from a fixed seed, in training mode, float32.
"""

from __future__ import annotations

import functools

from genlab.checks import NAMED_CALLABLES

LLAMA_TIED = dict(norm="rmsnorm", position_embedding="rotary", mlp="swiglu", tie_word_embeddings=True)

TEST_MODELS = {
    # name: GPTConfig fields and the seed of the weights
    "lm07_mask": dict(vocab_size=12, n_positions=16, n_embd=8, n_layer=2, n_head=2, bias=True, seed=0),
    "lm07_mask_untied": dict(vocab_size=10, n_positions=16, n_embd=8, n_layer=1, n_head=2, bias=True,
                             seed=1, tie_word_embeddings=False),
    "lm07_train": dict(vocab_size=11, n_positions=16, n_embd=16, n_layer=2, n_head=2, bias=False, seed=2),
    "lm07_train_wide": dict(vocab_size=13, n_positions=16, n_embd=24, n_layer=1, n_head=3, bias=False,
                            seed=3),
}
TEST_INIT_STD = 0.2  # larger than GPT-2's 0.02: a few steps of training move the loss visibly


def build_test_model(name: str):
    """The test model ``name`` of TEST_MODELS: a genlab GPT with Llama's switches."""
    from genlab.decoder import GPT, GPTConfig

    class TestModel(GPT):
        """Called as ``model(input_ids)`` -> logits by the student's training loop: genlab's GPT,
        reached through this module, stays usable in the grading build (whose gate shuts GPT to
        the notebook itself); the run-time tracer still sees GPT's code run."""

        def forward(self, input_ids):
            return super().forward(input_ids)

    fields = {**LLAMA_TIED, **TEST_MODELS[name]}
    seed = fields.pop("seed")
    return TestModel(GPTConfig(**fields, initializer_range=TEST_INIT_STD), seed=seed).train()


for _name in TEST_MODELS:
    NAMED_CALLABLES.setdefault(_name, functools.partial(build_test_model, _name))
