"""Assignment 3, "GPT: the decoder": what is graded, on which inputs, for how many points.

The student writes GPT-2's causal self-attention with a KV cache (a module, graded on
fixed seeded weights through the module convention of ``genlab.checks``), the shifted
language-model loss, the sampling filters (temperature, top-k, top-p), the sampling
step, the decoding loop with and without the cache, and, after training a tiny GPT on
an HMM language, the next-token log-probabilities of the trained model, judged against
the exact Bayes-optimal loss of that language on held-out sequences.

Public checks run in the student's notebook; hidden ones (other shapes, other models,
edge cases, another held-out set) only at grading.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

import genlab.properties.gpt  # noqa: F401  (registers the test models "genlab:gpt03_*")
from autograder.spec import TORCH_ATTENTION_CALLS, Assignment, CaseSpec, Check, check_maker
from genlab.data import HMMLanguage, Vocab
from genlab.decoder import GPT, GPTConfig, filter_logits
from genlab.decoder import CausalSelfAttention as _GenlabAttention

_HERE = "autograder.specs.a03_gpt"

# The notebook's language and its margin: the trained model's held-out loss must come
# within MARGIN nats of the Bayes-optimal loss of the held-out sequences. Measured on the
# public / hidden held-out sets (the notebook's training, 300 steps, one CPU thread):
# solution +0.039 / +0.033, a bigram model fitted on the training set +0.224 / +0.240,
# the untrained model +1.25 / +1.26. 0.1 passes the solution with room for other
# machines and seeds and fails a model that does not use the context beyond one token.
LANGUAGE = dict(seed=0)  # HMMLanguage(seed=0): 8 states, 24 symbols; the notebook uses the same
SEQUENCE_LENGTH = 32
MARGIN = 0.1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ references


class ReferenceAttention(_GenlabAttention):
    """genlab's attention under the notebook's interface:
    ``forward(x, layer_past=None) -> (y, present)``, present = stack(k, v) (2, B, H, T_past + T, D)."""

    def forward(self, x, layer_past=None):
        if layer_past is None:
            y, (k, v) = super().forward(x, is_causal=True)
        else:
            T, T_past = x.shape[1], layer_past.shape[-2]
            allowed = torch.ones(T, T_past + T, dtype=torch.bool, device=x.device).tril(T_past)
            y, (k, v) = super().forward(x, attn_mask=allowed, layer_past=(layer_past[0], layer_past[1]))
        return y, torch.stack((k, v))


def reference_sample_next_token(logits, do_sample=False, temperature=1.0, top_k=None, top_p=None,
                                generator=None):
    """What the notebook prescribes: argmax, or softmax(filter_logits(...)) and one
    torch.multinomial call on the whole batch with the given generator."""
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    device = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(device), 1, generator=generator).to(logits.device)


def reference_generate(model, input_ids, max_new_tokens, use_cache=True, do_sample=False,
                       temperature=1.0, top_k=None, top_p=None, generator=None):
    model = model.to(input_ids.device)
    return GPT.generate(model, input_ids, max_new_tokens, do_sample=do_sample, temperature=temperature,
                        top_k=top_k, top_p=top_p, use_cache=use_cache, generator=generator)


@torch.no_grad()
def generate_prompt_not_fed(model, input_ids, max_new_tokens, use_cache=True, do_sample=False,
                            temperature=1.0, top_k=None, top_p=None, generator=None):
    """With the cache, every step (the first too) feeds only the newest token."""
    if not use_cache:
        return reference_generate(model, input_ids, max_new_tokens, use_cache, do_sample, temperature,
                                  top_k, top_p, generator)
    model = model.to(input_ids.device).eval()
    tokens, cache = input_ids, None
    for _ in range(max_new_tokens):
        out = model(tokens[:, -1:], past_key_values=cache, use_cache=True)
        logits, cache = out.logits[:, -1], out.past_key_values  # (B, V)
        if do_sample:
            probs = F.softmax(filter_logits(logits.float(), temperature, top_k, top_p), dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        else:
            next_token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        tokens = torch.cat((tokens, next_token), dim=1)
    return tokens


def bayes_next_token_logprobs(input_ids):
    """The Bayes-optimal answer to next_token_logprobs: (B, T, V) float64 log P(token t+1 = v |
    tokens <= t) under the notebook's HMM (forward algorithm); -inf for the special tokens."""
    hmm = HMMLanguage(**LANGUAGE)
    vocab = hmm.vocab
    symbols = vocab.ids_to_symbols(input_ids.detach().cpu().long())  # (B, T)
    likelihoods = hmm.emission.T[symbols]  # (B, T, S)
    predicted = hmm.start_probs.expand(symbols.shape[0], -1)  # (B, S) P(z_t | x_<t)
    out = []
    for t in range(symbols.shape[1]):
        joint = predicted * likelihoods[:, t]
        filtered = joint / joint.sum(dim=1, keepdim=True)  # P(z_t | x_<=t)
        predicted = filtered @ hmm.transition  # P(z_t+1 | x_<=t)
        out.append(predicted @ hmm.emission)  # (B, n_symbols) P(x_t+1 | x_<=t)
    probs = torch.stack(out, dim=1)  # (B, T, n_symbols)
    specials = torch.zeros(*probs.shape[:2], Vocab.n_special, dtype=probs.dtype)
    return torch.cat([specials, probs], dim=-1).log()  # (B, T, V)


# ------------------------------------------------------------------------- known bugs


class _AttentionVariant(_GenlabAttention):
    """The attention written out by hand, with one known mistake (``bug``)."""

    bug = ""

    def forward(self, x, layer_past=None):
        B, T, C = x.shape
        H = self.n_head
        D = C // H
        q, k, v = self.c_attn(x).split(C, dim=-1)
        if self.bug.startswith("heads_reshaped"):
            q, k, v = (t.reshape(B, H, T, D) for t in (q, k, v))
        else:
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        if layer_past is not None:
            k_all = torch.cat((layer_past[0], k), dim=-2)
            v_all = torch.cat((layer_past[1], v), dim=-2)
        else:
            k_all, v_all = k, v
        T_past = k_all.shape[-2] - T
        scale = {"scale_by_d": D, "scale_by_n_embd": math.sqrt(C)}.get(self.bug, math.sqrt(D))
        scores = q @ k_all.transpose(-2, -1) / scale  # (B, H, T, T_past + T)
        if self.bug != "no_causal_mask":
            offset = 0 if self.bug == "cache_mask_not_offset" else T_past
            allowed = torch.ones(T, T_past + T, dtype=torch.bool).tril(offset)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        y = scores.softmax(dim=-1) @ v_all  # (B, H, T, D)
        if self.bug == "heads_reshaped_both":
            y = y.reshape(B, T, C)
        else:
            y = y.transpose(1, 2).reshape(B, T, C)
        y = y if self.bug == "no_c_proj" else self.c_proj(y)
        if self.bug == "present_without_past":
            return y, torch.stack((k, v))
        return y, torch.stack((k_all, v_all))


def _variant(bug: str) -> type:
    return type(f"Attention_{bug}", (_AttentionVariant,), {"bug": bug, "__module__": __name__})


NoCausalMask = _variant("no_causal_mask")
ScaleByD = _variant("scale_by_d")
ScaleByNEmbd = _variant("scale_by_n_embd")
HeadsReshaped = _variant("heads_reshaped")
HeadsReshapedBoth = _variant("heads_reshaped_both")
NoCProj = _variant("no_c_proj")
CacheMaskNotOffset = _variant("cache_mask_not_offset")
PresentWithoutPast = _variant("present_without_past")

_HEADS = ("reshaping (B, T, C) straight to (B, H, T, D) mixes tokens across heads: view as "
          "(B, T, H, D), then transpose(1, 2); merge back with transpose(1, 2).reshape(B, T, C)")
ATTENTION_BUGS = {
    "no_causal_mask": (f"{_HERE}.NoCausalMask",
                       "your output equals attention WITHOUT the causal mask: position i must not see "
                       "keys j > i"),
    "scale_by_d": (f"{_HERE}.ScaleByD",
                   "the scores are divided by the head dimension D; divide by sqrt(D)"),
    "scale_by_n_embd": (f"{_HERE}.ScaleByNEmbd",
                        "the scores are divided by sqrt(n_embd); divide by sqrt(D), D = n_embd // n_head "
                        "(the dimension of one head)"),
    "heads_reshaped": (f"{_HERE}.HeadsReshaped", _HEADS),
    "heads_reshaped_both": (f"{_HERE}.HeadsReshapedBoth", _HEADS),
    "no_c_proj": (f"{_HERE}.NoCProj", "the output projection c_proj is missing"),
    "cache_mask_not_offset": (
        f"{_HERE}.CacheMaskNotOffset",
        "with a cache, new query i sits at position T_past + i and may attend to every cached key "
        "and to the new keys up to itself: offset the causal mask (tril(diagonal=T_past))"),
    "present_without_past": (
        f"{_HERE}.PresentWithoutPast",
        "`present` holds only the new keys and values: it must hold the cached ones too "
        "(concatenate layer_past and the new k, v along the time axis)"),
}


def lm_loss_not_shifted(logits, input_ids):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), input_ids.reshape(-1))


def lm_loss_shifted_backwards(logits, input_ids):
    return F.cross_entropy(logits[:, 1:].reshape(-1, logits.shape[-1]).float(), input_ids[:, :-1].reshape(-1))


def lm_loss_summed(logits, input_ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1),
                           reduction="sum")


LM_LOSS_BUGS = {
    "not_shifted": (f"{_HERE}.lm_loss_not_shifted",
                    "the loss is not shifted: you compare the logits at position t with token t itself, "
                    "so the model learns to copy its input. Position t predicts token t + 1: "
                    "logits[:, :-1] against input_ids[:, 1:]"),
    "shifted_backwards": (f"{_HERE}.lm_loss_shifted_backwards",
                          "shifted the wrong way: logits[:, 1:] against input_ids[:, :-1] predicts the "
                          "PREVIOUS token; use logits[:, :-1] against input_ids[:, 1:]"),
    "summed": (f"{_HERE}.lm_loss_summed", "the loss is summed over the tokens; take the mean"),
}


def filter_logits_top_p_one_too_few(logits, temperature=1.0, top_k=None, top_p=None):
    """The classic off-by-one: drop a token once the mass INCLUDING it reaches top_p."""
    logits = filter_logits(logits, temperature, top_k, None)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(torch.empty_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def filter_logits_finfo_min(logits, temperature=1.0, top_k=None, top_p=None):
    out = filter_logits(logits, temperature, top_k, top_p)
    return out.masked_fill(torch.isinf(out), torch.finfo(out.dtype).min)


def filter_logits_temperature_multiplied(logits, temperature=1.0, top_k=None, top_p=None):
    return filter_logits(logits * temperature * temperature, temperature, top_k, top_p)


def filter_logits_top_p_by_rank(logits, temperature=1.0, top_k=None, top_p=None):
    """Drops the right NUMBER of tokens, but by rank instead of by id (mask not scattered back)."""
    logits = filter_logits(logits, temperature, top_k, None)
    if top_p is not None and top_p < 1.0:
        sorted_logits = logits.sort(dim=-1, descending=True).values
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def filter_logits_top_p_before_top_k(logits, temperature=1.0, top_k=None, top_p=None):
    """top-p decided on the whole (temperature-scaled) distribution, not on what top-k left."""
    scaled = logits / temperature
    nucleus = filter_logits(scaled, 1.0, None, top_p)
    return filter_logits(scaled, 1.0, top_k, None).masked_fill(torch.isinf(nucleus), float("-inf"))


def filter_logits_temperature_last(logits, temperature=1.0, top_k=None, top_p=None):
    """The filters on the raw logits, the temperature applied to what they kept."""
    return filter_logits(logits, 1.0, top_k, top_p) / temperature


def filter_logits_log_softmax_first(logits, temperature=1.0, top_k=None, top_p=None):
    """Kept logits shifted by a constant per row: log_softmax(logits / T) before filtering."""
    return filter_logits(F.log_softmax(logits / temperature, dim=-1), 1.0, top_k, top_p)


def filter_logits_log_softmax_after(logits, temperature=1.0, top_k=None, top_p=None):
    """Kept logits shifted by a constant per row: the filtered logits renormalised (log_softmax)."""
    return F.log_softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)


def filter_logits_max_subtracted(logits, temperature=1.0, top_k=None, top_p=None):
    """Kept logits shifted by a constant per row: the row's maximum subtracted."""
    out = filter_logits(logits, temperature, top_k, top_p)
    return out - out.amax(dim=-1, keepdim=True)


_SHIFTED = ("the kept logits are shifted by a constant per row (log_softmax, or the maximum subtracted): "
            "that is the same distribution after the softmax, but filter_logits must return the kept "
            "logits exactly as logits / temperature, and -inf for the removed ones")
FILTER_BUGS = {
    "temperature_last": (f"{_HERE}.filter_logits_temperature_last",
                         "the temperature was applied after the filters: divide the logits by the "
                         "temperature first, then apply top-k and top-p to the scaled logits (the "
                         "temperature changes which tokens top-p keeps)"),
    "top_p_before_top_k": (f"{_HERE}.filter_logits_top_p_before_top_k",
                           "top-p was applied to the whole distribution, not to what top-k left: apply "
                           "top-k first, then compute the top-p probabilities as the softmax of the "
                           "remaining logits (the removed ones are -inf)"),
    "log_softmax_first": (f"{_HERE}.filter_logits_log_softmax_first", _SHIFTED),
    "log_softmax_after": (f"{_HERE}.filter_logits_log_softmax_after", _SHIFTED),
    "max_subtracted": (f"{_HERE}.filter_logits_max_subtracted", _SHIFTED),
    "top_p_one_too_few": (f"{_HERE}.filter_logits_top_p_one_too_few",
                          "top-p keeps one token too few: keep the smallest set of most likely tokens whose "
                          "probabilities sum to >= top_p, i.e. drop a token only when the tokens MORE likely "
                          "than it already reach top_p (cumulative - probs >= top_p)"),
    "top_p_by_rank": (f"{_HERE}.filter_logits_top_p_by_rank",
                      "top-p removed tokens by their rank in the sorted order, not by their id: scatter "
                      "the mask back to vocabulary order"),
    "finfo_min": (f"{_HERE}.filter_logits_finfo_min",
                  "removed tokens must be -inf (probability exactly 0 after softmax), not the most "
                  "negative float"),
    "temperature_multiplied": (f"{_HERE}.filter_logits_temperature_multiplied",
                               "divide the logits by the temperature (T < 1 sharpens); you multiplied"),
}


def sample_top_p_one_too_few(logits, do_sample=False, temperature=1.0, top_k=None, top_p=None,
                             generator=None):
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    probs = F.softmax(filter_logits_top_p_one_too_few(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def sample_unfiltered(logits, do_sample=False, temperature=1.0, top_k=None, top_p=None, generator=None):
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


def sample_argmax(logits, do_sample=False, temperature=1.0, top_k=None, top_p=None, generator=None):
    return logits.argmax(dim=-1, keepdim=True)


SAMPLE_BUGS = {
    "top_p_one_too_few": (f"{_HERE}.sample_top_p_one_too_few",
                          "your tokens are those of a top-p filter that keeps one token too few "
                          "(see filter_logits)"),
    "unfiltered": (f"{_HERE}.sample_unfiltered",
                   "you sampled from the unfiltered softmax: apply filter_logits (temperature, top_k, "
                   "top_p) first"),
    "argmax": (f"{_HERE}.sample_argmax",
               "you returned the argmax although do_sample=True: draw with torch.multinomial"),
}

# ------------------------------------------------------------------------------ cases


def attention_case(seed: int, B=2, T=5, n_embd=16, n_head=2, T_past=0,
                   changed_after: int | None = None) -> CaseSpec:
    """Fixed seeded weights for GPT-2's c_attn/c_proj and an input x (and a cache layer_past).
    ``changed_after=t``: the same weights and x, with every position after t drawn anew.
    (With n_embd=16 and 2 heads, D = 8, sqrt(D) and sqrt(n_embd) all differ: each scaling
    bug has its own message.)"""
    D = n_embd // n_head

    def make():
        config = dict(vocab_size=8, n_positions=64, n_embd=n_embd, n_layer=1, n_head=n_head)
        module = _GenlabAttention(GPTConfig(**config))
        g = _gen(seed)
        inputs = {"__module__": json.dumps({"config_class": "genlab.decoder.GPTConfig", "config": config},
                                           sort_keys=True)}
        for name, value in module.state_dict().items():
            scale = 1 / math.sqrt(value.shape[-1]) if name.endswith("weight") else 0.1
            inputs[f"__state__.{name}"] = torch.randn(value.shape, generator=g) * scale
        x = torch.randn(B, T, n_embd, generator=g)
        if T_past:
            inputs["layer_past"] = torch.randn(2, B, n_head, T_past, D, generator=g)
        if changed_after is not None:
            fresh = torch.randn(B, T - changed_after - 1, n_embd, generator=_gen(seed + 1000))
            x[:, changed_after + 1:] = fresh
        inputs["x"] = x
        return inputs

    meta = {"B": B, "T": T, "n_embd": n_embd, "n_head": n_head, "seed": seed}
    if T_past:
        meta["T_past"] = T_past
    if changed_after is not None:
        meta["changed_after"] = changed_after
    return CaseSpec(make=make, meta=meta, kind="a KV cache" if T_past else "")


def lm_loss_case(seed: int, B=2, T=6, V=11, ignored: int = 0) -> CaseSpec:
    def make():
        g = _gen(seed)
        logits = torch.randn(B, T, V, generator=g) * 2
        input_ids = torch.randint(V, (B, T), generator=g)
        if ignored:  # some targets are -100 (padding): they do not count
            where = torch.randperm(B * (T - 1), generator=g)[:ignored]
            flat = input_ids[:, 1:].reshape(-1).clone()
            flat[where] = -100
            input_ids[:, 1:] = flat.view(B, T - 1)
        return {"logits": logits, "input_ids": input_ids}

    meta = {"B": B, "T": T, "V": V, "seed": seed}
    if ignored:
        meta["ignored targets (-100)"] = ignored
    return CaseSpec(make=make, meta=meta, kind="targets of -100" if ignored else "")


def logits_case(seed: int, shape=(4, 12), spread=2.0, dtype="float32", **settings) -> CaseSpec:
    """Random logits and filter/sampling settings (None settings are left out: defaults apply)."""

    def make():
        logits = torch.randn(*shape, generator=_gen(seed), dtype=getattr(torch, dtype)) * spread
        return {"logits": logits, **settings}

    meta = {"shape": list(shape), **{k: v for k, v in settings.items()}, "seed": seed}
    if dtype != "float32":
        meta["dtype"] = dtype
    return CaseSpec(make=make, meta=meta, kind=_logits_kind(shape[-1], settings))


def _logits_kind(V: int, settings: dict) -> str:
    """Which behaviour of filter_logits / sample_next_token a case exercises: one filter, the
    filters combined (their order matters), or k > V; sampling or the argmax."""
    filters = [name for name in ("temperature", "top_k", "top_p") if settings.get(name) is not None]
    if (settings.get("top_k") or 0) > V:
        kind = "k > V"
    else:
        kind = "filters combined" if len(filters) > 1 else "".join(filters)
    return ("sampling: " if settings.get("do_sample") else "") + kind


def generate_case(seed: int, model: str, B: int, T: int, max_new_tokens: int, **settings) -> CaseSpec:
    from genlab.properties.gpt import TEST_MODELS

    def make():
        input_ids = torch.randint(TEST_MODELS[model]["vocab_size"], (B, T), generator=_gen(seed))
        return {"model": f"genlab:{model}", "input_ids": input_ids, "max_new_tokens": max_new_tokens,
                **settings}

    kind = "sampling" if settings.get("do_sample") else "no new tokens" if max_new_tokens == 0 else ""
    return CaseSpec(make=make, meta={"model": model, "B": B, "T": T, "max_new_tokens": max_new_tokens,
                                     **settings, "seed": seed}, kind=kind)


def heldout_case(seed: int, n: int, rows: int | None = None, changed_after: int | None = None) -> CaseSpec:
    """Held-out sequences of the notebook's language; with ``changed_after=t`` the first
    ``rows`` of them with every token after t drawn anew."""

    def make():
        hmm = HMMLanguage(**LANGUAGE)
        ids = hmm.vocab.symbols_to_ids(hmm.sample(n, SEQUENCE_LENGTH, seed=seed))
        if changed_after is not None:
            ids = ids[:rows].clone()
            fresh = hmm.vocab.symbols_to_ids(hmm.sample(rows, SEQUENCE_LENGTH, seed=seed + 1))
            ids[:, changed_after + 1:] = fresh[:, changed_after + 1:]
        return {"input_ids": ids}

    meta = {"sequences": rows if changed_after is not None else n, "T": SEQUENCE_LENGTH, "seed": seed}
    if changed_after is not None:
        meta["changed_after"] = changed_after
    return CaseSpec(make=make, meta=meta)


# ------------------------------------------------------------------------------ checks

ATTENTION_CALLS = (
    *TORCH_ATTENTION_CALLS,
    "genlab.attention.scaled_dot_product_attention",
    "genlab.attention.torch_attention",
    "genlab.attention.MultiHeadAttention",
    "genlab.attention.multi_head_self_attention",
    "genlab.decoder.CausalSelfAttention",
)
FILTER_CALLS = ("genlab.decoder.filter_logits",)
HMM_EXACT = (
    "genlab.data.HMMLanguage.next_token_log_probs",
    "genlab.data.HMMLanguage.next_token_loss",
    "genlab.data.HMMLanguage.masked_token_posteriors",
    "genlab.data.HMMLanguage._forward",
)

ATTN = "CausalSelfAttention"
PER_FUNCTION = {
    ATTN: dict(cell="test_attention", reference=f"{_HERE}.ReferenceAttention",
               outputs=("output", "present"), forbidden=ATTENTION_CALLS, bugs=ATTENTION_BUGS),
    "lm_loss": dict(cell="test_lm_loss", reference="genlab.decoder.lm_loss", outputs=("loss",),
                    forbidden=("genlab.decoder.lm_loss",), bugs=LM_LOSS_BUGS),
    "next_token_logprobs": dict(cell="test_trained", reference=f"{_HERE}.bayes_next_token_logprobs",
                                outputs=("log_probs",), dtype="float64", forbidden=HMM_EXACT),
    "filter_logits": dict(cell="test_filter_logits", reference="genlab.decoder.filter_logits",
                          outputs=("filtered",), forbidden=FILTER_CALLS, bugs=FILTER_BUGS),
    "sample_next_token": dict(cell="test_sample_next_token", reference=f"{_HERE}.reference_sample_next_token",
                              outputs=("next_token",), dtype="int64", compare="exact",
                              forbidden=FILTER_CALLS, bugs=SAMPLE_BUGS),
    # GPT.generate is wrapped by torch.no_grad(): the tracer must name the function inside
    "generate": dict(cell="test_generate", reference=f"{_HERE}.reference_generate", outputs=("tokens",),
                     dtype="int64", compare="exact",
                     forbidden=("genlab.decoder.GPT.generate",) + FILTER_CALLS,
                     bugs={bug: (f"{_HERE}.generate_{bug}", message)
                           for bug, message in genlab.properties.gpt.GENERATE_BUGS.items()}),
}


check = check_maker(PER_FUNCTION)


def heldout_check(name: str, public: bool, seed: int, n: int, rows: int, t: int, points: int) -> Check:
    return check(name, "next_token_logprobs", public,
                 [heldout_case(seed, n), heldout_case(seed, n, rows=rows, changed_after=t)],
                 f"held-out loss of the trained model within {MARGIN} nats of the Bayes-optimal loss "
                 f"({n} sequences); causal; normalised", points=points,
                 compare="property:gpt.heldout_loss",
                 params={"margin": MARGIN, "t": t, "rows": list(range(rows))})


SPEC = Assignment(
    name="03_gpt",
    notebook="gpt.ipynb",
    # the data's own optimum, shown beside the trained model's loss
    notebook_uses=("genlab.data.HMMLanguage.next_token_loss", "genlab.data.HMMLanguage.next_token_log_probs"),
    checks=[
        # --- causal self-attention, a module with GPT-2's parameter names
        check(ATTN, ATTN, True, [attention_case(0), attention_case(1, B=1, T=7, n_embd=12, n_head=3)],
              "causal self-attention on fixed weights: output and present", points=3),
        check(f"{ATTN}.causal", ATTN, True,
              [attention_case(2, B=2, T=6), attention_case(2, B=2, T=6, changed_after=2)],
              "outputs at positions <= 2 do not move when the tokens after position 2 change",
              points=2, compare="property:gpt.causal", params={"t": 2}, bugs={}),
        check(f"{ATTN}.cache", ATTN, True,
              [attention_case(3, B=2, T=1, T_past=4), attention_case(4, B=1, T=3, T_past=2)],
              "with a KV cache (layer_past): one new token, and three new tokens", points=2),
        check(f"{ATTN}.hidden", ATTN, False,
              [attention_case(5, B=3, T=9, n_embd=8, n_head=1),
               attention_case(6, B=1, T=1, n_embd=16, n_head=8),
               attention_case(7, B=2, T=4, n_embd=24, n_head=2, T_past=5)],
              "one head, eight heads and T = 1, a cache with several new tokens", points=2),
        # --- the loss
        check("lm_loss", "lm_loss", True,
              [lm_loss_case(0), lm_loss_case(1, B=3, T=4, V=7), lm_loss_case(4, B=2, T=7, V=9, ignored=4)],
              "shifted next-token cross-entropy; targets of -100 do not count", points=2),
        check("lm_loss.hidden", "lm_loss", False,
              [lm_loss_case(2, B=2, T=9, V=29, ignored=5), lm_loss_case(3, B=1, T=2, V=5)],
              "targets of -100 do not count; T = 2 (a single target)"),
        # --- the trained model on held-out sequences of the HMM language
        heldout_check("next_token_logprobs", True, seed=1001, n=64, rows=8, t=15, points=3),
        heldout_check("next_token_logprobs.hidden", False, seed=2001, n=256, rows=16, t=7, points=3),
        # --- decoding: the filters
        check("filter_logits.temperature", "filter_logits", True,
              [logits_case(0, temperature=0.5), logits_case(1, temperature=2.0)], "temperature 0.5 and 2"),
        check("filter_logits.top_k", "filter_logits", True,
              [logits_case(2, top_k=3), logits_case(3, shape=(2, 7), top_k=1),
               logits_case(19, shape=(3, 6), top_k=8)],
              "top-k with k = 3 and k = 1; k > V keeps everything"),
        check("filter_logits.top_p", "filter_logits", True,
              [logits_case(4, shape=(6, 12), top_p=0.9),
               logits_case(5, shape=(6, 12), spread=1.0, top_p=0.5),
               # the order: temperature, then top-k, then top-p on what top-k left
               logits_case(20, shape=(64, 12), spread=1.0, temperature=0.6, top_k=4, top_p=0.75)],
              "top-p (nucleus) with p = 0.9 and 0.5; the three filters together, in their order "
              "(temperature, top-k, top-p on what top-k left)", points=2),
        check("filter_logits.hidden", "filter_logits", False,
              [logits_case(6, shape=(2, 3, 11), temperature=0.7, top_k=5, top_p=0.8),
               logits_case(7, shape=(3, 9), top_k=9, top_p=1.0),
               logits_case(8, shape=(4, 10), spread=0.5, top_p=0.001),
               logits_case(9, shape=(5, 16), temperature=1.5, top_p=0.7),
               # top-p on what top-k left, not on the whole distribution: 56 of the 64 rows differ
               logits_case(17, shape=(64, 12), spread=1.0, top_k=3, top_p=0.7),
               # top_k > V keeps everything (an unguarded logits.topk(top_k) raises)
               logits_case(18, shape=(3, 7), temperature=0.9, top_k=10)],
              "(B, T, V) logits with all three filters; k = V and p = 1 keep everything; "
              "tiny p keeps exactly one token; top-p after top-k; k > V", points=2),
        # --- decoding: one step
        check("sample_next_token.greedy", "sample_next_token", True,
              [logits_case(10, shape=(5, 9)), logits_case(11, shape=(3, 20), temperature=0.5)],
              "do_sample=False: the argmax, whatever the temperature"),
        check("sample_next_token", "sample_next_token", True,
              [logits_case(12, shape=(64, 12), spread=1.5, do_sample=True, temperature=0.7,
                           generator="seed:1"),
               logits_case(13, shape=(64, 12), spread=1.5, do_sample=True, top_k=4, generator="seed:2"),
               logits_case(14, shape=(64, 12), spread=1.5, do_sample=True, top_p=0.8, generator="seed:3"),
               logits_case(21, shape=(64, 12), spread=1.5, do_sample=True, temperature=1.2, top_k=5,
                           top_p=0.85, generator="seed:7")],
              "sampling with temperature, top-k, top-p, and all three; the same seeded generator "
              "draws the same tokens",
              points=2),
        check("sample_next_token.hidden", "sample_next_token", False,
              [logits_case(15, shape=(32, 50), spread=2.0, do_sample=True, temperature=1.3, top_k=6,
                           top_p=0.9, generator="seed:4"),
               logits_case(16, shape=(1, 30), do_sample=True, top_p=0.95, generator="seed:5")],
              "all three filters at once; a batch of one"),
        # --- decoding: the loop, with and without the KV cache
        check("generate", "generate", True,
              [generate_case(0, "gpt03_small", B=2, T=4, max_new_tokens=8),
               # raises unless fed the prompt once, then only the newest token with the cache
               generate_case(8, "gpt03_small_cache_only", B=2, T=3, max_new_tokens=6, use_cache=True),
               generate_case(9, "gpt03_small", B=2, T=3, max_new_tokens=0),
               generate_case(10, "gpt03_small", B=2, T=3, max_new_tokens=6, do_sample=True,
                             temperature=0.9, top_k=4, generator="seed:8")],
              "greedy decoding with the cache: the reference's tokens; with use_cache=True only the "
              "newest token is fed after the first step; max_new_tokens = 0; sampling", points=2),
        check("generate.cache", "generate", True,
              [generate_case(1, "gpt03_small", B=3, T=3, max_new_tokens=12, use_cache=True),
               generate_case(1, "gpt03_small", B=3, T=3, max_new_tokens=12, use_cache=False)],
              "use_cache=True and use_cache=False give the same (greedy) tokens", points=2,
              compare="property:gpt.cache_equals_no_cache"),
        check("generate.hidden", "generate", False,
              [generate_case(2, "gpt03_deep", B=1, T=1, max_new_tokens=15),
               generate_case(3, "gpt03_deep", B=2, T=6, max_new_tokens=0),
               generate_case(4, "gpt03_small", B=4, T=5, max_new_tokens=10, use_cache=False),
               generate_case(5, "gpt03_small", B=3, T=2, max_new_tokens=9, do_sample=True, temperature=0.8,
                             top_k=5, generator="seed:6")],
              "another model, a one-token prompt, max_new_tokens = 0, no cache, sampling", points=2,
              compare="property:gpt.generated_tokens"),
    ],
    samples={
        # solved: the solution cells (by grade_id) that carry the solution; the rest stay blank.
        # lost: the checks it must fail ("all" for every one); it scores all other points.
        "solution": {"solved": "all", "lost": []},
        "blank": {"solved": [], "lost": "all"},
        "partial": {"solved": ["attention", "lm_loss", "filter_logits"],
                    "lost": ["next_token_logprobs", "next_token_logprobs.hidden",
                             "sample_next_token.greedy", "sample_next_token", "sample_next_token.hidden",
                             "generate", "generate.cache", "generate.hidden"]},
        # the loss compares position t with token t: the model learns to copy its input
        "unshifted_loss": {"solved": "all",
                           "lost": ["lm_loss", "lm_loss.hidden", "next_token_logprobs",
                                    "next_token_logprobs.hidden"],
                           "edit": {"lm_loss": ["logits[:, :-1], input_ids[:, 1:]", "logits, input_ids"]}},
        # top-p drops a token once the mass including it reaches p: one token too few
        "top_p_one_too_few": {"solved": "all",
                              "lost": ["filter_logits.top_p", "filter_logits.hidden", "sample_next_token",
                                       "sample_next_token.hidden"],
                              "edit": {"filter_logits": ["cumulative - probs >= top_p",
                                                         "cumulative >= top_p"]}},
    },
)
