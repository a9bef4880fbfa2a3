"""Assignment 3 (GPT): the small test models of its ``generate`` checks, and its properties.

**Test models.** A ``generate(model, ...)`` check needs a model as an argument; a case
names one as ``"genlab:<name>"`` and ``genlab.checks.call_arguments`` builds it from
``NAMED_CALLABLES``, where this module registers the models below when it is imported
(the assignment's setup cell imports it). Each is genlab's ``GPT`` with fixed seeded
weights, initialised wider than GPT-2 (std 0.3 instead of 0.02) so that the greedy
choice at every step wins by a clear margin (at least 0.02 in the logits along the
graded trajectories) and the same tokens come out on any machine; its own ``.generate``
is switched off, since the exercise is to write it. ``gpt03_small_cache_only`` is
``gpt03_small`` that raises unless called as a decoding loop with the KV cache calls it
(the prompt once, then only the newest token with ``past_key_values``): a case with
``use_cache=True`` on it fails a loop that never uses the cache.

**Properties** (``compare="property:<name>"``), judged on all of a check's outputs:

- ``gpt.causal``: the output at positions ``<= t`` does not move when only the inputs
  after ``t`` change (case 2 is case 1 with the tokens after ``t`` replaced);
- ``gpt.cache_equals_no_cache``: ``generate`` with and without the KV cache gives the
  same tokens, and those are the reference's greedy tokens;
- ``gpt.generated_tokens``: exactly the reference's tokens, case by case; a mismatch on a
  sampling case adds that the student's own ``sample_next_token``/``filter_logits`` run inside;
- ``gpt.heldout_loss``: the next-token log-probabilities of a trained model score a
  held-out loss within ``margin`` nats of the exact Bayes-optimal loss of the language
  (the reference output is the Bayes-optimal predictive distribution itself), normalised,
  and causal (case 2 changes the tokens after ``t``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from genlab.checks import NAMED_CALLABLES
from genlab.properties import register

# ------------------------------------------------------------------ test models

TEST_MODELS = {
    # name: GPTConfig fields and the seed of the weights
    "gpt03_small": dict(vocab_size=16, n_positions=32, n_embd=32, n_layer=2, n_head=4, seed=0),
    "gpt03_deep": dict(vocab_size=24, n_positions=32, n_embd=24, n_layer=3, n_head=2, seed=1),
    # gpt03_small that only accepts what a loop using the KV cache feeds it (see CACHE_ONLY)
    "gpt03_small_cache_only": dict(vocab_size=16, n_positions=32, n_embd=32, n_layer=2, n_head=4, seed=0),
}
TEST_INIT_STD = 0.3
# Test models that raise unless called as ``generate(..., use_cache=True)`` must call them:
# the prompt once without a cache, then only the newest token with ``past_key_values``.
CACHE_ONLY = {"gpt03_small_cache_only"}
NOT_CACHED = ("this test model only accepts what a loop using the KV cache feeds it: with "
              "use_cache=True, run the prompt once, then only the newest token (B, 1) with "
              "past_key_values=the cache of the previous call; {what}")


def build_test_model(name: str):
    """The test model ``name`` of TEST_MODELS: a genlab GPT in eval mode, generate switched off."""
    import torch

    from genlab.decoder import GPT, GPTConfig

    class TestGPT(GPT):
        def generate(self, *args, **kwargs):
            raise RuntimeError(
                "this test model's own .generate is switched off: write the decoding loop "
                "yourself, calling model(input_ids, past_key_values=..., use_cache=...)")

    class CacheOnlyGPT(TestGPT):
        prompt_length = None  # the length of the first call without a cache

        def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False,
                    labels=None):
            T = input_ids.shape[-1]
            if past_key_values is None:
                if self.prompt_length is None:
                    self.prompt_length = T
                elif T > self.prompt_length:
                    raise RuntimeError(NOT_CACHED.format(
                        what=f"this call passes {T} tokens and no cache"))
            elif T != 1:
                raise RuntimeError(NOT_CACHED.format(
                    what=f"this call passes {T} tokens together with the cache"))
            return super().forward(input_ids, attention_mask, past_key_values, use_cache, labels)

    fields = dict(TEST_MODELS[name])
    seed = fields.pop("seed")
    config = GPTConfig(**fields, initializer_range=TEST_INIT_STD)
    cls = CacheOnlyGPT if name in CACHE_ONLY else TestGPT
    with torch.no_grad():
        return cls(config, seed=seed).eval()


for _name in TEST_MODELS:
    NAMED_CALLABLES.setdefault(_name, functools.partial(build_test_model, _name))


# ------------------------------------------------------------------- properties


def _first(outputs: list, what: str) -> tuple[np.ndarray | None, str | None]:
    if not outputs:
        return None, f"returned nothing, expected {what}"
    return outputs[0], None


@register("gpt.causal")
def causal(outputs_per_case, cases, params) -> str | None:
    """Case 2 = case 1 with every input after position ``t`` changed: outputs <= t must agree."""
    t = int(params["t"])
    atol = float(params.get("atol", 1e-5))
    a, problem = _first(outputs_per_case[0], "an output (B, T, C)")
    b, problem_b = _first(outputs_per_case[1], "an output (B, T, C)")
    if problem or problem_b:
        return problem or problem_b
    if a.shape != b.shape or a.ndim != 3:
        return f"the output has shape {a.shape} on one input and {b.shape} on the other, expected (B, T, C)"
    change = _difference(a, b).max(axis=(0, 2))  # (T,)
    leaked = np.flatnonzero(change[: t + 1] > atol)
    if leaked.size:
        p = int(leaked[0])
        return (f"the output at position {p} changed (by up to {change[p]:.3g}) when only the tokens "
                f"after position {t} changed: position {p} attends to the future. Block the scores "
                f"of keys j > i before the softmax (the causal mask)")
    if not (change[t + 1:] > atol).any():
        return (f"the outputs after position {t} did not change when their own tokens changed: "
                "the output must depend on the input")
    return None


# A generate that, with the cache, never runs the whole prompt: one cause, one message, in every
# check that sees it (the reference builder stores its tokens as the known bug "prompt_not_fed")
PROMPT_NOT_FED = ("with use_cache=True your first step fed only the prompt's last token, so the model "
                  "never saw the rest of the prompt: run the whole prompt once (that fills the cache), "
                  "then feed only the newest token with past_key_values")
GENERATE_BUGS = {"prompt_not_fed": PROMPT_NOT_FED}


def _tokens_rule():
    """Token ids compared exactly, the known generate bugs named."""
    from genlab.checks import Rule

    return Rule(compare="exact", rtol=0.0, atol=0.0, output_names=("tokens",), bug_messages=GENERATE_BUGS)


@register("gpt.cache_equals_no_cache")
def cache_equals_no_cache(outputs_per_case, cases, params) -> str | None:
    """Case 1 with use_cache=True, case 2 the same call with use_cache=False."""
    with_cache, problem = _first(outputs_per_case[0], "the token ids (B, T + new)")
    without, problem_b = _first(outputs_per_case[1], "the token ids (B, T + new)")
    if problem or problem_b:
        return problem or problem_b
    expected = cases[0].expected[0]
    prompt = cases[0].inputs["input_ids"].shape[1]
    for got, label in ((with_cache, "use_cache=True"), (without, "use_cache=False")):
        if got.shape != expected.shape:
            return (f"with {label} the tokens have shape {got.shape}, expected {expected.shape} "
                    "(the prompt, then the new tokens)")
        if got.dtype.kind not in "iu":
            return f"with {label} the tokens have dtype {got.dtype}, expected torch.long (int64)"
    from genlab.checks import compare_outputs

    known = compare_outputs([with_cache], cases[0], _tokens_rule())
    if known in GENERATE_BUGS.values():
        return known
    if not np.array_equal(with_cache, without):
        b, pos = (int(i) for i in np.argwhere(with_cache != without)[0])
        where = (f"new token {pos - prompt + 1} of row {b}" if pos >= prompt
                 else f"prompt position {pos} of row {b}")
        return (f"the KV cache changes the result: at {where} use_cache=True gives {with_cache[b, pos]}, "
                f"use_cache=False gives {without[b, pos]}. With a cache, feed only the newest token "
                "and pass the cache back (past_key_values)")
    if not np.array_equal(with_cache, expected):
        b, pos = (int(i) for i in np.argwhere(with_cache != expected)[0])
        if pos < prompt:
            return (f"row {b}: the output must start with the prompt, but position {pos} is "
                    f"{with_cache[b, pos]}, not {expected[b, pos]}")
        return (f"cache and no cache agree, but at new token {pos - prompt + 1} of row {b} you chose "
                f"{with_cache[b, pos]} where greedy decoding chooses {expected[b, pos]} (the argmax of "
                "the logits at the LAST position)")
    return None


SAMPLING_HINT = (". This case samples (do_sample=True): your generate draws through YOUR "
                 "sample_next_token and filter_logits, so check those first (do their checks pass?); "
                 "if they do, check that generate passes do_sample, temperature, top_k, top_p and "
                 "the generator through to sample_next_token, and draws nothing else from the generator")


@register("gpt.generated_tokens")
def generated_tokens(outputs_per_case, cases, params) -> str | None:
    """Every case: exactly the reference's tokens (as compare="exact"); a mismatch on a case
    that samples says that the student's own sampling functions run inside."""
    from genlab.checks import compare_outputs

    for i, (outputs, case) in enumerate(zip(outputs_per_case, cases)):
        problem = compare_outputs(outputs, case, _tokens_rule())
        if problem:
            sampling = "do_sample" in case.inputs and bool(case.inputs["do_sample"]) \
                and problem not in GENERATE_BUGS.values()
            return (f"case {i + 1} of {len(cases)} ({case.describe()}): {problem}"
                    + (SAMPLING_HINT if sampling else ""))
    return None


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in float64, 0 where both hold the same value (equal infinities included)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(a == b, 0.0, np.abs(a - b))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def heldout_loss(log_probs: np.ndarray, input_ids: np.ndarray) -> float:
    """Mean of -log p(token t+1 | tokens <= t) over t = 0 .. T-2: the shifted LM loss."""
    B, T = input_ids.shape
    nxt = input_ids[:, 1:]  # (B, T-1)
    picked = np.take_along_axis(log_probs[:, :-1].astype(np.float64), nxt[..., None], axis=-1)[..., 0]
    return float(-picked.mean())


# a trained model's log-probs are never this close to the exact Bayes posterior everywhere:
# a forward pass over the HMM's own start, transition and emission probabilities is
EXACT_POSTERIOR = 1e-3


@register("gpt.heldout_loss")
def heldout(outputs_per_case, cases, params) -> str | None:
    """Case 1: held-out sequences; case 2: some of them with the tokens after ``t`` replaced.
    params: margin (nats above the Bayes-optimal loss), t, rows (case 2's rows of case 1)."""
    margin, t = float(params["margin"]), int(params["t"])
    below = float(params.get("below", 0.05))
    ids = cases[0].inputs["input_ids"]
    bayes_log_probs = cases[0].expected[0]
    B, T, V = bayes_log_probs.shape
    got, problem = _first(outputs_per_case[0], "log-probabilities (B, T, V)")
    if problem:
        return problem
    if got.shape != (B, T, V):
        return (f"`log_probs` has shape {got.shape}, expected (B, T, V) = {(B, T, V)}: one distribution "
                "over the whole vocabulary for every position")
    if got.dtype.kind != "f":
        return f"`log_probs` has dtype {got.dtype}, expected a float tensor"
    got = got.astype(np.float64)
    if np.isnan(got).any() or np.isposinf(got).any():
        b, p, v = np.argwhere(np.isnan(got) | np.isposinf(got))[0]
        return f"`log_probs` contains {got[b, p, v]} at [{b}, {p}, {v}]"
    total = _logsumexp(got)  # (B, T): 0 for log-probabilities
    off = np.abs(total) > 1e-3
    if off.any():
        b, p = np.argwhere(off)[0]
        return (f"`log_probs` are not normalised log-probabilities: logsumexp over the vocabulary is "
                f"{total[b, p]:.4g} at [{b}, {p}], expected 0 (apply log_softmax to the logits)")
    changed, problem = _first(outputs_per_case[1], "log-probabilities (B, T, V)")
    if problem:
        return problem
    rows = np.asarray(params["rows"])
    if changed.shape != (len(rows), T, V):
        return f"`log_probs` has shape {changed.shape}, expected {(len(rows), T, V)}"
    moved = _difference(changed[:, : t + 1], got[rows, : t + 1]).max(axis=(0, 2))
    leaked = np.flatnonzero(moved > 1e-4)
    if leaked.size:
        p = int(leaked[0])
        return (f"the log-probs at position {p} changed (by up to {moved[p]:.3g}) when only the tokens "
                f"after position {t} changed: your model sees the future")
    loss = heldout_loss(got, ids)
    bayes = heldout_loss(bayes_log_probs, ids)
    n = B * (T - 1)
    if loss > bayes + margin:
        message = (f"held-out loss {loss:.3f} nats on {n} tokens; needs <= {bayes + margin:.3f} "
                   f"(Bayes-optimal {bayes:.3f} + {margin:g})")
        # read one position later, do the log-probs predict the tokens far better? Then [b, t]
        # holds the distribution meant for [b, t - 1]: an off-by-one in the output, not training
        later = -np.take_along_axis(got[:, 1:], ids[:, 1:, None], axis=-1)[..., 0].mean()
        if later < loss - margin or loss > math.log(V):
            return (message + ". Far above the optimum"
                    + (f" (above log V = {math.log(V):.2f}, uniform guessing)" if loss > math.log(V) else "")
                    + (f"; read one position later your log-probs score {later:.3f}" if later < loss - margin
                       else "")
                    + ": check the alignment first. [b, t] must be the model's output at position t "
                    "itself, the distribution of token t + 1 given tokens 0..t: no shift, no padding "
                    "in front")
        return message + ": train the model (does the training loss go down? is the loss shifted?)"
    if loss < bayes - below:
        return (f"held-out loss {loss:.3f} nats is below the Bayes-optimal {bayes:.3f}: no causal model "
                "can do that. Does position t see token t + 1?")
    finite = np.isfinite(bayes_log_probs)
    if np.abs(got[finite] - bayes_log_probs[finite]).max() < EXACT_POSTERIOR:
        return ("these log-probabilities are the language's exact posterior (computed from the "
                "generator's own parameters), not the predictions of the model you trained: "
                "return what your trained GPT predicts")
    return None
