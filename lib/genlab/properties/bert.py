"""Properties of assignment 2 (BERT): statistics of MLM masking, accuracy of a pretrained model.

``bert.mlm_masking`` judges a student's ``mask_tokens`` on large seeded samples: every
position obeys BERT's rules (labels, special tokens, untouched positions), and the
rates (15% selected; of those 80% ``[MASK]``, 10% a random token, 10% unchanged) lie
within binomial tolerances.

Its inputs are built here (``MASKING_INPUTS``, passed as ``"genlab:<name>"``) as inference
tensors, so that a ``mask_tokens`` that modifies ``input_ids`` in place raises.

``bert.masked_accuracy`` judges ``fill_masks``, the student's pretrained BERT filling in
``[MASK]`` tokens of held-out sequences of the HMM language: its accuracy on the masked
positions must reach a fraction of the exact Bayes-optimal accuracy on the same tokens.
The true tokens are the case's expected output (hidden for hidden cases).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from genlab.checks import NAMED_CALLABLES
from genlab.properties import register

IGNORE_INDEX = -100

# ------------------------------------------------------------- masking inputs

# The input_ids of the mask_tokens checks, passed as "genlab:<name>": built here (from a seed)
# as *inference tensors*, which raise an error when modified in place (the exercise forbids
# it; a copy, ``input_ids.clone()``, is an ordinary tensor). name -> arguments of masking_ids.
GENLAB_SPECIALS = (0, 1, 2, 3, 4)  # [PAD], [CLS], [SEP], [MASK], [UNK] (genlab.data)
MASKING_INPUTS = {
    "bert02_masking_0": dict(seed=0, B=128, T=128, vocab_size=29, in_text=0.02),
    "bert02_masking_1": dict(seed=1, B=128, T=256, vocab_size=1000, in_text=0.03),
    "bert02_masking_2": dict(seed=2, B=128, T=256, vocab_size=29),
    # other special ids, at the end of the vocabulary
    "bert02_masking_3": dict(seed=3, B=128, T=128, vocab_size=45, in_text=0.02,
                             specials=(40, 41, 42, 43, 44)),
}


def masking_ids(seed: int, B: int, T: int, vocab_size: int, in_text: float = 0.0,
                specials: tuple = GENLAB_SPECIALS):
    """B sequences "[CLS] A [SEP] B [SEP] [PAD]..." of ordinary tokens, lengths T/2..T.
    ``in_text``: the fraction of the text's tokens that are [UNK], and again [MASK] (special:
    never to be selected); ``specials``: the ids of [PAD], [CLS], [SEP], [MASK], [UNK]."""
    import torch

    pad, cls, sep, mask, unk = specials
    g = torch.Generator().manual_seed(seed)
    if tuple(specials) == GENLAB_SPECIALS:
        ids = torch.randint(len(specials), vocab_size, (B, T), generator=g)
    else:
        ordinary = torch.tensor([i for i in range(vocab_size) if i not in specials])
        ids = ordinary[torch.randint(len(ordinary), (B, T), generator=g)]
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    cut = lengths // 2  # where A's [SEP] goes
    rows = torch.arange(B)
    text = torch.arange(T)[None, :] < lengths[:, None] - 1
    text[:, 0] = False
    text[rows, cut] = False
    ids[:, 0] = cls
    ids[rows, cut] = sep
    ids[rows, lengths - 1] = sep
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = pad
    if in_text:
        u = torch.rand(B, T, generator=g)
        ids[text & (u < in_text)] = unk
        ids[text & (u >= in_text) & (u < 2 * in_text)] = mask
    return ids


def guarded_masking_ids(name: str):
    """MASKING_INPUTS[name] as an inference tensor: modifying it in place raises."""
    import torch

    with torch.inference_mode():
        return masking_ids(**MASKING_INPUTS[name])


for _name in MASKING_INPUTS:
    NAMED_CALLABLES.setdefault(_name, functools.partial(guarded_masking_ids, _name))


@functools.cache
def _named_masking_ids(name: str) -> np.ndarray:
    """MASKING_INPUTS[name] as an array, built once per process (every submission of a class
    is judged against the same inputs)."""
    ids = masking_ids(**MASKING_INPUTS[name]).numpy()
    ids.flags.writeable = False
    return ids


def _input_ids(inputs: dict) -> np.ndarray:
    """A case's input_ids: stored, or "genlab:<name>" of MASKING_INPUTS."""
    ids = inputs["input_ids"]
    if ids.dtype.kind == "U":
        return _named_masking_ids(str(ids).removeprefix("genlab:"))
    return ids


def _index(idx) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _first(mask: np.ndarray) -> tuple:
    return tuple(np.argwhere(mask)[0])


def _rate_problem(what: str, count: int, total: int, p: float, z: float, of: str) -> str | None:
    """None when count/total is within z binomial standard deviations of p."""
    rate = count / total
    sd = math.sqrt(p * (1 - p) / total)
    if abs(rate - p) <= z * sd:
        return None
    return (f"{rate:.1%} of {of} {what} ({count:,} of {total:,}); expected {p:.1%} "
            f"± {z * sd:.1%} ({z:g} standard deviations of a binomial)")


def _same_inputs(a, b, but: tuple[str, ...] = ()) -> bool:
    """Do the two cases pass the same inputs (apart from those named in ``but``)?"""
    return a.inputs.keys() == b.inputs.keys() and all(
        a.inputs[k].dtype == b.inputs[k].dtype and np.array_equal(a.inputs[k], b.inputs[k])
        for k in a.inputs if k not in but)


def _masking_problem(outputs: list[np.ndarray], inputs: dict, params: dict) -> str | None:
    if len(outputs) != 2:
        return f"returned {len(outputs)} value(s), expected 2 (masked_input_ids, labels)"
    ids = _input_ids(inputs)
    masked, labels = outputs
    for name, got in (("masked_input_ids", masked), ("labels", labels)):
        if got.shape != ids.shape:
            return f"`{name}` has shape {tuple(got.shape)}, expected {tuple(ids.shape)} (like input_ids)"
        if got.dtype.kind not in "iu":
            return f"`{name}` has dtype {got.dtype}, expected an integer dtype (torch.long)"
    vocab_size = int(inputs["vocab_size"])
    mask_id = int(inputs["mask_token_id"])
    specials = sorted({int(i) for i in np.ravel(inputs["special_token_ids"])} | {mask_id})
    is_special = np.isin(ids, specials)
    selected = labels != IGNORE_INDEX

    wrong_label = selected & (labels != ids)
    if wrong_label.any():
        at = _first(wrong_label)
        return (f"labels{_index(at)} is {labels[at]}, but a label must be -100 (not selected) or "
                f"the original token ({ids[at]}): the model learns to predict the token that was there")
    special_selected = selected & is_special
    if special_selected.any():
        at = _first(special_selected)
        return (f"the special token {ids[at]} at {_index(at)} was selected (its label is not -100): "
                f"special tokens {specials} must never be selected")
    changed_unselected = ~selected & (masked != ids)
    if changed_unselected.any():
        at = _first(changed_unselected)
        return (f"masked_input_ids{_index(at)} is {masked[at]} but the token was {ids[at]} and its "
                "label is -100: only selected positions may change, and each selected position "
                "keeps its original token as its label")
    random_special = selected & (masked != ids) & (masked != mask_id) & np.isin(masked, specials)
    out_of_range = selected & ((masked < 0) | (masked >= vocab_size))
    if out_of_range.any():
        at = _first(out_of_range)
        return (f"masked_input_ids{_index(at)} is {masked[at]}, outside the vocabulary "
                f"0..{vocab_size - 1}")
    if random_special.any():
        at = _first(random_special)
        return (f"a selected token at {_index(at)} became the special token {masked[at]}: random "
                f"replacements are drawn from the ordinary tokens only (not {specials})")

    z = float(params.get("z", 5.0))
    p = float(inputs["mlm_probability"])
    n_ordinary = int((~is_special).sum())
    n_selected = int(selected.sum())
    # Of the selected: 80% [MASK]; 10% a random ordinary token (which is the original one
    # with probability 1/K); 10% unchanged. So "changed to another token" and "unchanged"
    # have the rates below.
    K = vocab_size - len(specials)
    p_mask = float(params.get("mask_fraction", 0.8))
    p_random = float(params.get("random_fraction", 0.1))
    p_keep = 1.0 - p_mask - p_random
    n_mask = int((selected & (masked == mask_id)).sum())
    n_other = int((selected & (masked != mask_id) & (masked != ids)).sum())
    n_same = int((selected & (masked == ids)).sum())
    problem = _rate_problem("were selected", n_selected, n_ordinary, p, z, "the ordinary tokens")
    if problem:
        p_same = p_keep + p_random / K
        if (n_selected and n_selected < p * n_ordinary and n_same / n_selected < p_same
                and _rate_problem("", n_same, n_selected, p_same, z, "")):
            # too few labels, and too few of the labelled positions unchanged: the labels are
            # only where the token changed
            return (f"{n_selected / n_ordinary:.1%} of the ordinary tokens have a label (expected "
                    f"{p:.1%} with mlm_probability={p:g}), and only {n_same / n_selected:.1%} of "
                    f"those kept their token (expected {p_same:.1%}): labels seem to be set only "
                    "where the token changed. Every selected position needs its label (the original "
                    f"token), including the ~{p_keep:.0%} left unchanged: labels = input_ids wherever "
                    "selected, -100 elsewhere")
        return problem + f" with mlm_probability={p:g}"
    if n_selected == 0:
        return None
    of = "the selected tokens"
    for what, count, expected, advice in (
            ("became [MASK]", n_mask, p_mask,
             f"replace a selected token by [MASK] (id {mask_id}) with probability {p_mask:g}"),
            ("became a random other token", n_other, p_random * (K - 1) / K,
             f"replace a selected token by a random ordinary token with probability {p_random:g}"),
            ("were left unchanged", n_same, p_keep + p_random / K,
             f"leave a selected token unchanged with probability {p_keep:g}")):
        problem = _rate_problem(what, count, n_selected, expected, z, of)
        if problem:
            if count / n_selected < expected and what.startswith("became a random"):
                advice += (f" of ALL the selected tokens (not {p_random:g} of those left after "
                           "[MASK], which gives 2%)")
            return f"{problem}: {advice}"
    return None


@register("bert.mlm_masking")
def mlm_masking(outputs_per_case, cases, params) -> str | None:
    """BERT's masking rules on every case; cases with identical inputs (the same generator
    seed) must give identical outputs, and cases that differ only in the generator's seed
    different ones."""
    for i, (outputs, case) in enumerate(zip(outputs_per_case, cases)):
        problem = _masking_problem(outputs, case.inputs, params)
        if problem:
            return f"case {i + 1} of {len(cases)} ({case.describe()}): {problem}"
    for i in range(len(cases)):
        for j in range(i + 1, len(cases)):
            if _same_inputs(cases[i], cases[j]):
                a, b = outputs_per_case[i], outputs_per_case[j]
                if len(a) != len(b) or not all(x.shape == y.shape and np.array_equal(x, y)
                                               for x, y in zip(a, b)):
                    return (f"cases {i + 1} and {j + 1} pass the same input and a generator with the "
                            "same seed, but your results differ: draw every random number from "
                            "`generator` (torch.rand(..., generator=generator)), never from the "
                            "global RNG")
            elif _same_inputs(cases[i], cases[j], but=("generator",)):
                a, b = outputs_per_case[i], outputs_per_case[j]
                if len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y)
                                            for x, y in zip(a, b)):
                    return (f"cases {i + 1} and {j + 1} pass the same input with generators of "
                            "different seeds, but your masks are identical: the selection must "
                            "come from `generator`, not from the positions or a fixed seed")
    return None


@register("bert.masked_accuracy")
def masked_accuracy(outputs_per_case, cases, params) -> str | None:
    """Accuracy of the predicted tokens at the [MASK] positions, against the true tokens
    (the case's expected output), must reach ``fraction`` x the Bayes-optimal accuracy."""
    fraction = float(params["fraction"])
    mask_id = int(params.get("mask_token_id", 3))
    for i, (outputs, case) in enumerate(zip(outputs_per_case, cases)):
        where = f"case {i + 1} of {len(cases)} ({case.describe()})"
        ids = case.inputs["input_ids"]
        truth = case.expected[0]
        if len(outputs) != 1:
            return f"{where}: returned {len(outputs)} values, expected 1 (the filled-in token ids)"
        got = outputs[0]
        if got.shape != ids.shape:
            return (f"{where}: the result has shape {tuple(got.shape)}, expected "
                    f"{tuple(ids.shape)} (like input_ids)")
        if got.dtype.kind not in "iu":
            return f"{where}: the result has dtype {got.dtype}, expected token ids (torch.long)"
        masked = ids == mask_id
        changed = ~masked & (got != ids)
        if changed.any():
            at = _first(changed)
            return (f"{where}: position {_index(at)} is not [MASK] but your result changed it "
                    f"({ids[at]} -> {got[at]}): fill in the [MASK] positions and keep every other token")
        n = int(masked.sum())
        correct = int((got[masked] == truth[masked]).sum())
        accuracy = correct / n
        bayes = float(params["bayes_accuracy"][i])
        needed = fraction * bayes
        if accuracy < needed:
            return (f"{where}: masked-token accuracy {accuracy:.3f} on {n:,} held-out masked tokens; "
                    f"needs >= {needed:.3f} ({fraction:.0%} of the Bayes-optimal {bayes:.3f}). "
                    "Is your model trained (section 5), and does fill_masks use it in eval mode?")
    return None
