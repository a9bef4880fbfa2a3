"""No surprise after submitting (issue 15): plausible wrong implementations, written as a
student would, are flagged by a PUBLIC check in the student's own notebook, with a message
that names the real cause (and not a wrong one)."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.checks import AssignmentChecks


def public_problems(assignment: str, function: str, fn) -> dict[str, str]:
    """check name -> message, for the public checks of ``function`` that ``fn`` fails."""
    checks = AssignmentChecks(assignment)
    return {name: problem for name, problem in checks._run(function, fn, public=True) if problem}


# ---- assignment 1


def _attention(q, k, v, attn_mask, is_causal, scale_dim, causal, blocked=float("-inf")):
    """Attention as a student writes it, with the slips passed in."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(scale_dim)  # (B, H, Tq, Tk)
    if is_causal:
        attn_mask = causal(*scores.shape[-2:])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, blocked)
    weights = torch.nan_to_num(scores.softmax(dim=-1))
    return weights @ v, weights


def _top_left(Tq, Tk):
    return torch.ones(Tq, Tk, dtype=torch.bool).tril()


def sdpa_bottom_right(q, k, v, attn_mask=None, is_causal=False):
    bottom_right = lambda Tq, Tk: torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)  # noqa: E731
    return _attention(q, k, v, attn_mask, is_causal, q.shape[-1], bottom_right)


def sdpa_scaled_by_value_dim(q, k, v, attn_mask=None, is_causal=False):
    return _attention(q, k, v, attn_mask, is_causal, v.shape[-1], _top_left)


def sdpa_fully_masked_rows_not_zero(q, k, v, attn_mask=None, is_causal=False):
    # a blocked row becomes uniform, not zero
    return _attention(q, k, v, attn_mask, is_causal, q.shape[-1], _top_left, torch.finfo(q.dtype).min)


def sdpa_drops_the_mask_under_is_causal(q, k, v, attn_mask=None, is_causal=False):
    return _attention(q, k, v, None if is_causal else attn_mask, is_causal, q.shape[-1], _top_left)


def dependence_map_in_place(attention, x):
    T = x.shape[1]
    dep = torch.zeros(T, T, dtype=torch.bool)
    reference = attention(x)
    for j in range(T):
        xp = x  # not a copy
        xp[:, j, :] += 1.0
        dep[:, j] = (attention(xp) - reference).abs().amax(dim=(0, 2)) > 1e-6
    return dep


# ---- assignment 3


def lm_loss_counting_ignored(logits, input_ids):
    targets = input_ids[:, 1:].clamp(min=0)  # -100 becomes token 0 and counts
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _top_k(logits, top_k):
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits, top_p):
    if top_p is None or top_p >= 1.0:
        return logits
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
    drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filter_temperature_last(logits, temperature=1.0, top_k=None, top_p=None):
    return _top_p(_top_k(logits, top_k), top_p) / temperature


def filter_top_p_on_whole_distribution(logits, temperature=1.0, top_k=None, top_p=None):
    scaled = logits / temperature
    nucleus = _top_p(scaled, top_p)
    return _top_k(scaled, top_k).masked_fill(torch.isinf(nucleus), float("-inf"))


def filter_ignores_top_p_with_top_k(logits, temperature=1.0, top_k=None, top_p=None):
    scaled = logits / temperature
    return _top_k(scaled, top_k) if top_k is not None else _top_p(scaled, top_p)


# ---- assignment 4


def gep_loss_nan_times_zero(predicted, target, is_unknown):
    mask = is_unknown.to(predicted.dtype)
    return ((predicted - target) ** 2 * mask).sum() / mask.sum().clamp(min=1)


def generation_step_nan_first(predicted, confidence, values, pending, steps_left):
    n_move = (pending.sum(dim=1) + steps_left - 1) // steps_left  # (B,)
    rank = confidence.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # NaN ranks first
    move = (rank < n_move[:, None]) & pending
    return torch.where(move, predicted, values), pending & ~move


# (assignment, function, wrong implementation, a phrase of the message, a phrase it must not hold)
WRONG = [
    ("01_attention", "scaled_dot_product_attention", sdpa_bottom_right, "bottom-right corner", None),
    ("01_attention", "scaled_dot_product_attention", sdpa_scaled_by_value_dim, "Dv=3", None),
    ("01_attention", "scaled_dot_product_attention", sdpa_fully_masked_rows_not_zero,
     "mask=fully_masked", None),
    ("01_attention", "scaled_dot_product_attention", sdpa_drops_the_mask_under_is_causal,
     "it must raise ValueError", None),
    ("01_attention", "dependence_map", dependence_map_in_place, "`xp = x` is the same tensor",
     "leaks the future"),
    ("03_gpt", "lm_loss", lm_loss_counting_ignored, "ignored targets (-100)", None),
    ("03_gpt", "filter_logits", filter_temperature_last, "temperature was applied after the filters", None),
    ("03_gpt", "filter_logits", filter_top_p_on_whole_distribution, "not to what top-k left", None),
    ("03_gpt", "filter_logits", filter_ignores_top_p_with_top_k, "expected -inf", "allowed inf"),
    ("04_scgpt", "gep_loss", gep_loss_nan_times_zero, "NaN x 0 is NaN", "ALL genes"),
    ("04_scgpt", "generation_step", generation_step_nan_first, "NaN sorts above every number", None),
]


@pytest.mark.parametrize("assignment, function, wrong, says, never", WRONG,
                         ids=[w[2].__name__ for w in WRONG])
def test_a_public_check_names_the_cause(assignment, function, wrong, says, never):
    problems = public_problems(assignment, function, wrong)
    assert problems, f"{wrong.__name__} passes every public check of {function}"
    text = "\n".join(f"{name}: {message}" for name, message in problems.items())
    assert says in text, text
    assert never is None or never not in text, text


def test_a_patched_numpy_does_not_turn_a_public_check_green(monkeypatch):
    """A notebook that replaces numpy's and torch's comparisons after its setup cell (where
    genlab.checks is imported) still sees its wrong function fail the public check."""
    import numpy as np

    for module, name in ((np, "allclose"), (np, "array_equal"), (torch, "allclose"), (torch, "equal")):
        monkeypatch.setattr(module, name, lambda *a, **k: True)
    with pytest.raises(AssertionError, match="bottom-right corner"):
        AssignmentChecks("01_attention").check("scaled_dot_product_attention", sdpa_bottom_right)


@torch.no_grad()
def generate_without_the_prompt(model, input_ids, max_new_tokens, use_cache=True, do_sample=False,
                                temperature=1.0, top_k=None, top_p=None, generator=None):
    from genlab.decoder import filter_logits

    tokens, cache = input_ids, None
    for _ in range(max_new_tokens):
        if use_cache:  # the slip: the newest token only, from the very first step
            out = model(tokens[:, -1:], past_key_values=cache, use_cache=True)
            logits, cache = out.logits[:, -1], out.past_key_values
        else:
            logits = model(tokens)[:, -1]
        if do_sample:
            probs = torch.softmax(filter_logits(logits.float(), temperature, top_k, top_p), dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator)
        else:
            next_token = logits.argmax(dim=-1, keepdim=True)
        tokens = torch.cat((tokens, next_token), dim=1)
    return tokens


def test_one_cause_one_story_in_every_generate_check():
    """A generate that never runs the whole prompt fails generate, generate.cache and
    generate.hidden, each with the same message naming that cause."""
    checks = AssignmentChecks("03_gpt")
    verdicts = dict(checks._run("generate", generate_without_the_prompt, public=True)
                    + checks._run("generate", generate_without_the_prompt, public=False))
    assert set(verdicts) == {"generate", "generate.cache", "generate.hidden"}
    for name, problem in verdicts.items():
        assert problem and "fed only the prompt's last token" in problem, (name, problem)
