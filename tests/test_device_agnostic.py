"""Device-agnostic code, checked without a GPU.

The classic way a model that passes every CPU test breaks on CUDA is a tensor made
inside ``forward`` without a device (``torch.arange(T)``, ``torch.zeros(B, T)``): it lands
on the CPU and the next operation with a CUDA tensor fails.  On a machine without a GPU
such a call cannot be caught by running on CUDA, so these tests catch the cause instead:
they run every model computation of the library (forward and backward, losses, masks,
generation with and without the KV cache, sampling, scGPT's iterative generation,
orthogonal layers) under a ``TorchFunctionMode`` that records each tensor factory called
from genlab's own code without a ``device=`` argument.  The list must be empty.

Models are built, and data prepared, outside the recorder: construction follows the
default device on purpose (``with torch.device("cuda"): GPT(config)`` builds on the GPU),
and data preparation (tokenising, sampling batches from a CPU generator) is CPU work whose
tensors ``genlab.train`` moves with ``.to(device)``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

import genlab
from genlab import masks, quantum
from genlab.attention import MultiHeadAttention, scaled_dot_product_attention
from genlab.decoder import GPT, GPTConfig, lm_loss
from genlab.encoder import BertConfig, BertForPreTraining, mask_tokens
from genlab.scgpt import (ScGPT, ScGPTConfig, TwoStreamScGPT, generate_values, scgpt_losses,
                          split_known_unknown, PretrainBatch)

LIBRARY = os.path.dirname(os.path.realpath(genlab.__file__))

# Factories that put a new tensor on the default device unless told otherwise
# (``torch.from_numpy`` always on the CPU).  ``*_like`` and ``Tensor.new_*`` follow
# their argument's device and are fine.
FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.rand,
             torch.randn, torch.randint, torch.randperm, torch.tensor, torch.as_tensor, torch.eye,
             torch.linspace, torch.from_numpy, torch.tril_indices, torch.triu_indices}


class DevicelessFactories(TorchFunctionMode):
    """Records ``file:line factory`` for each factory called from genlab without a device."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = sys._getframe(1)
            path = os.path.realpath(caller.f_code.co_filename)
            if path.startswith(LIBRARY + os.sep):
                where = os.path.relpath(path, os.path.dirname(LIBRARY))
                self.calls[f"{where}:{caller.f_lineno} ({caller.f_code.co_name}) {func.__name__}"] += 1
        return func(*args, **kwargs)


def assert_device_agnostic(run) -> None:
    recorder = DevicelessFactories()
    with recorder:
        run()
    assert not recorder.calls, (
        "tensors made without a device inside model code (they would land on the CPU "
        "next to CUDA tensors):\n  " + "\n  ".join(f"{n}x {c}" for c, n in recorder.calls.items()))


def test_the_recorder_catches_a_deviceless_factory():
    """The check can fail: a factory without a device, called from genlab's own code, is seen."""
    recorder = DevicelessFactories()
    with recorder:
        masks.causal_mask(4)  # device=None: the call inside passes device=None, i.e. none
        masks.causal_mask(4, device="cpu")
    assert len(recorder.calls) == 1 and "masks.py" in next(iter(recorder.calls))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_masks_and_attention():
    q, k, v = (torch.randn(2, 2, 6, 8, generator=gen(i)) for i in range(3))
    padding = masks.padding_mask(torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]))
    modules = [MultiHeadAttention(16, 2, backend=b) for b in ("scratch", "torch")]
    x = torch.randn(2, 6, 16, generator=gen(3), requires_grad=True)

    def run():
        masks.causal_mask(6, device=q.device)
        masks.known_unknown_mask(3, 4, device=q.device)
        masks.sliding_window_mask(6, 2, device=q.device)
        masks.padding_mask(torch.ones_like(q[:, 0, :, 0], dtype=torch.long))
        scaled_dot_product_attention(q, k, v, is_causal=True)
        scaled_dot_product_attention(q, k, v, attn_mask=padding, dropout_p=0.5, generator=gen(4))
        for module in modules:
            module(x, attn_mask=padding).sum().backward()
            module(x, is_causal=True)

    assert_device_agnostic(run)


def test_bert_pretraining_step():
    models = [BertForPreTraining(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=32,
                                            max_position_embeddings=16, attn_backend=backend))
              for backend in ("scratch", "torch")]
    input_ids = torch.randint(5, 50, (2, 10), generator=gen(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    next_sentence = torch.tensor([0, 1])

    def run():
        masked, labels = mask_tokens(input_ids, 50, 4, [0, 1, 2, 3, 4], generator=gen(1))
        for model in models:
            model.train()
            out = model(masked, attention_mask=attention_mask, labels=labels,
                        next_sentence_label=next_sentence, generator=gen(2))
            out.loss.backward()
            model.eval()
            model(masked, attention_mask=attention_mask)

    assert_device_agnostic(run)


def test_gpt_training_and_generation():
    model = GPT(GPTConfig(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2), seed=0)
    ids = torch.randint(0, 50, (2, 8), generator=gen(0))

    def run():
        lm_loss(model(ids), ids).backward()
        model.generate(ids[:, :3], 6)
        model.generate(ids[:, :3], 6, use_cache=False)
        model.generate(ids[:, :3], 6, do_sample=True, temperature=0.7, top_k=5, top_p=0.9,
                       generator=gen(1))

    assert_device_agnostic(run)


@pytest.mark.parametrize("backend", ["scratch", "torch"])
def test_scgpt_losses_and_iterative_generation(backend):
    config = ScGPTConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=2, d_ff=32,
                         attention_backend=backend)
    model = ScGPT(config)
    B, L = 3, 12
    gene_ids = torch.stack([torch.randperm(38, generator=gen(i))[:L] + 2 for i in range(B)])
    values = torch.randint(1, 51, (B, L), generator=gen(5)).float()
    is_real = torch.ones(B, L, dtype=torch.bool)
    is_real[2, 9:] = False
    batch = PretrainBatch(split_known_unknown(gene_ids, values, is_real, 0.5, gen(6)),
                          split_known_unknown(gene_ids, values, is_real, 0.75, gen(7)), 0.5)
    unknown = torch.zeros(B, L, dtype=torch.bool)
    unknown[:, ::3] = True
    two_stream = TwoStreamScGPT(model)

    def run():
        scgpt_losses(model, batch).total.backward()
        two_stream(**batch.gep.model_inputs())
        with torch.no_grad():
            generate_values(model, gene_ids, values, unknown & is_real, steps=3)
            prompt = torch.randn(B, config.d_model, generator=gen(8))
            generate_values(model, gene_ids, torch.zeros_like(values), is_real, steps=2,
                            cell_prompt=prompt)

    assert_device_agnostic(run)


@pytest.mark.parametrize("layout", ["pyramid", "x", "butterfly"])
def test_orthogonal_layers(layout):
    layer = quantum.OrthogonalLayer(8, layout, generator=gen(0))
    attention = quantum.OrthogonalAttention(8, layout, generator=gen(1))
    compound = quantum.CompoundLayer(4, "pyramid" if layout == "butterfly" else layout)
    x = torch.randn(3, 5, 8, generator=gen(2))

    def run():
        layer(x).sum().backward()
        attention(x).sum().backward()
        compound(torch.randn(2, compound.dim, generator=gen(3))).sum().backward()

    assert_device_agnostic(run)
