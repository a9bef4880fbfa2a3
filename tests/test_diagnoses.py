"""No surprise after submitting (issue 15): plausible wrong implementations, written as a
student would, are flagged by a PUBLIC check in the student's own notebook, with a message
that names the real cause (and not a wrong one)."""

from __future__ import annotations

import math
import warnings

import numpy as np
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



# ---- assignment 4: binning, as a student writes it (torch.quantile, torch.searchsorted)


def _bins(values, n_bins, n_edges=None, count_equal=True, shift=0, edges_of="nonzero",
          zeros_too=False, ties="highest", dtype=None, generator=None):
    """bin_values with the slips passed in (all defaults: right). ``edges_of``: the values the
    quantiles are taken of ("nonzero" of the cell, its whole "row", the whole "matrix");
    ``ties``: "highest" (the rule), "middle" of upstream main's range, "random" as main."""
    x_all = values if dtype is None else values.to(dtype)  # (cells, genes)
    bins = torch.zeros(values.shape, dtype=torch.long)
    for cell, row in enumerate(x_all):
        nonzero = row > 0  # (genes,)
        if not nonzero.any():
            continue
        pool = {"nonzero": row[nonzero], "row": row, "matrix": x_all[x_all > 0]}[edges_of]
        edges = torch.quantile(pool, torch.linspace(0, 1, n_edges or n_bins - 1, dtype=row.dtype))
        chosen = torch.ones_like(nonzero) if zeros_too else nonzero
        x = row[chosen]
        at_most = torch.searchsorted(edges, x, right=count_equal)  # edges <= x (or < x)
        below = torch.searchsorted(edges, x, right=False)  # edges < x
        if ties == "middle":
            at_most = torch.where(at_most > below, (below + 1 + at_most) // 2, at_most)
        elif ties == "random":  # upstream main: ceil(u (below - at_most) + at_most)
            u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
            at_most = torch.ceil(u * (below - at_most) + at_most).long()
        bins[cell, chosen] = at_most + shift
    return bins


def bins_right(values, n_bins=51):
    return _bins(values, n_bins)


def bins_in_float64(values, n_bins=51):
    return _bins(values, n_bins, dtype=torch.float64)


def bins_numpy(values, n_bins=51):
    x = values.numpy()
    bins = np.zeros(x.shape, dtype=np.int64)
    for cell, row in enumerate(x):
        if (row > 0).any():
            bins[cell, row > 0] = np.digitize(row[row > 0], np.quantile(row[row > 0], np.linspace(0, 1, n_bins - 1)))
    return torch.from_numpy(bins)


def bins_in_integers(values, n_bins=51):
    """Exact arithmetic: edge k sits at position k (n - 1) / (n_bins - 2) of the sorted values, so x
    reaches edge k iff k (n - 1) <= (#{v <= x} - 1)(n_bins - 2)."""
    bins = torch.zeros(values.shape, dtype=torch.long)
    for cell, row in enumerate(values):
        x = row[row > 0]
        if x.numel() == 1:
            bins[cell, row > 0] = n_bins - 1
        elif x.numel() > 1:
            up_to = torch.searchsorted(x.sort().values, x, right=True)  # (n,) #{v <= x}
            bins[cell, row > 0] = 1 + (up_to - 1) * (n_bins - 2) // (x.numel() - 1)
    return bins


def bins_mid_rank(values, n_bins=51):  # genlab's old rule
    bins = torch.zeros(values.shape, dtype=torch.long)
    for cell, row in enumerate(values):
        x = row[row > 0]
        ordered = x.sort().values
        twice = torch.searchsorted(ordered, x, right=False) + torch.searchsorted(ordered, x, right=True)
        bins[cell, row > 0] = 1 + twice * (n_bins - 1) // (2 * max(x.numel(), 1))
    return bins


def bins_random_ties(values, n_bins=51):  # upstream main's rule, seeded here to be repeatable
    return _bins(values, n_bins, ties="random", generator=torch.Generator().manual_seed(0))


# bug name in the spec's BIN_BUGS -> the student's function with that slip
BIN_SLIPS = {
    "mid_rank": bins_mid_rank,
    "edges_below": lambda values, n_bins=51: _bins(values, n_bins, count_equal=False),
    "n_bins_edges": lambda values, n_bins=51: _bins(values, n_bins, n_edges=n_bins),
    "zeros_in_quantiles": lambda values, n_bins=51: _bins(values, n_bins, edges_of="row"),
    "zeros_binned": lambda values, n_bins=51: _bins(values, n_bins, edges_of="row", zeros_too=True),
    "whole_matrix": lambda values, n_bins=51: _bins(values, n_bins, edges_of="matrix"),
    "from_zero": lambda values, n_bins=51: _bins(values, n_bins, shift=-1),
    "ties_middle": lambda values, n_bins=51: _bins(values, n_bins, ties="middle"),
    "float32": lambda values, n_bins=51: _bins(values, n_bins, dtype=torch.float32),
}


def bin_verdicts(fn) -> dict[str, str | None]:
    """check name -> problem (None: passed), public and hidden checks of bin_values."""
    checks = AssignmentChecks("04_scgpt")
    return dict(checks._run("bin_values", fn, public=True) + checks._run("bin_values", fn, public=False))


def bin_points(verdicts) -> int:
    from autograder import spec

    return sum(c.points for c in spec.load("04_scgpt").checks if c.name in verdicts and verdicts[c.name] is None)


@pytest.mark.parametrize("fn", [bins_right, bins_in_float64, bins_numpy, bins_in_integers],
                         ids=lambda fn: fn.__name__)
def test_every_correct_binning_scores_full_points(fn):
    """torch.quantile in float32 or float64, numpy's quantile, exact integers: the cases never
    let the last bit of an interpolation decide a bin, so all of them get every point."""
    verdicts = bin_verdicts(fn)
    assert set(verdicts) == {"bin_values", "bin_values.hidden"}
    assert all(problem is None for problem in verdicts.values()), verdicts
    assert bin_points(verdicts) == 4


@pytest.mark.parametrize("bug", sorted(BIN_SLIPS))
def test_each_binning_slip_gets_its_message_and_no_points(bug):
    from autograder.specs.a04_scgpt import BIN_BUGS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.quantile on one value, etc.
        verdicts = bin_verdicts(BIN_SLIPS[bug])
    message = BIN_BUGS[bug][1]
    for name, problem in verdicts.items():
        assert problem is not None, f"{bug} passes {name}"
        assert problem.splitlines()[0].endswith(": " + message), (name, problem)
    assert bin_points(verdicts) == 0


def test_random_ties_fail_without_a_wrong_story():
    """Upstream main's random tie-breaking cannot be matched by a stored output; it fails
    both checks with the first differing bin, and no named bug claims it."""
    from autograder.specs.a04_scgpt import BIN_BUGS

    verdicts = bin_verdicts(bins_random_ties)
    assert bin_points(verdicts) == 0
    for problem in verdicts.values():
        assert "`bins` differs at" in problem, problem
        assert not any(message in problem for _, message in BIN_BUGS.values()), problem


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


# ---- assignment 6: a plain BPE as a student writes it, with the slips passed in


def _tokenizer_pieces(text, special_tokens, longest_first=True):
    import regex

    if not special_tokens:
        return [(text, False)]
    ordered = sorted(special_tokens, key=len, reverse=True) if longest_first else list(special_tokens)
    parts = regex.split("(" + "|".join(map(regex.escape, ordered)) + ")", text)
    return [(p, k % 2 == 1) for k, p in enumerate(parts) if p]


def _pretokens(piece, pretokenize=True):
    from genlab.tokenizers import GPT2_PATTERN
    import regex

    return regex.findall(GPT2_PATTERN, piece) if pretokenize else [piece]


def _join_left_to_right(tokens, pair):
    out, skip = [], False
    for left, right in zip(tokens, tokens[1:] + [None]):
        if skip:
            skip = False
        elif (left, right) == pair:
            out.append(left + right)
            skip = True
        else:
            out.append(left)
    return out


def student_train(text, n_merges, special_tokens, tie="greatest", pretokenize=True, cut_specials=True,
                  weighted=True, extra=0):
    from collections import Counter

    pieces = _tokenizer_pieces(text, special_tokens if cut_specials else [])
    counts = Counter(p for piece, special in pieces if not special for p in _pretokens(piece, pretokenize))
    words = {w: [bytes([b]) for b in w.encode()] for w in counts}
    merges = []
    for _ in range(n_merges + extra):
        pairs = {}
        for w, tokens in words.items():
            for pair in zip(tokens, tokens[1:]):
                pairs[pair] = pairs.get(pair, 0) + (counts[w] if weighted else 1)
        if not pairs:
            break
        top = max(pairs.values())
        tied = [p for p, n in pairs.items() if n == top]
        best = {"greatest": max(tied), "first_seen": tied[0], "smallest": min(tied),
                "greatest_second": max(tied, key=lambda p: (p[1], p[0]))}[tie]
        merges.append(best)
        words = {w: _join_left_to_right(t, best) for w, t in words.items()}
    return merges


def student_encode(text, vocab, merges, special_tokens, order="rank", longest_first=True, cut_specials=True,
                   pretokenize=True):
    ids = {t: i for i, t in vocab.items()}
    rank = {p: r for r, p in enumerate(merges)}
    known = set(vocab.values())
    out = []
    for piece, special in _tokenizer_pieces(text, special_tokens if cut_specials else [], longest_first):
        if special:
            out.append(ids[piece.encode()])
            continue
        for pre in _pretokens(piece, pretokenize):
            tokens = [bytes([b]) for b in pre.encode()]
            if order == "longest":
                data, tokens, i = pre.encode(), [], 0
                while i < len(data):
                    n = max(n for n in range(1, len(data) - i + 1) if n == 1 or data[i:i + n] in known)
                    tokens.append(data[i:i + n])
                    i += n
            while order != "longest":
                candidates = [p for p in zip(tokens, tokens[1:]) if p in rank]
                if not candidates:
                    break
                pick = min(candidates, key=rank.get) if order == "rank" else candidates[0]
                tokens = _join_left_to_right(tokens, pick)
            out.extend(ids[t] for t in tokens)
    return out


def student_decode(ids, vocab, per_token=False, errors="replace"):
    if per_token:
        return "".join(vocab[i].decode("utf-8", errors=errors) for i in ids)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors=errors)


def _graded(function, **slips):
    from functools import partial

    from genlab.properties import tokenizer

    call = {"train_merges_on_arrays": (tokenizer.call_train_merges, student_train),
            "encode_on_arrays": (tokenizer.call_encode, student_encode),
            "decode_on_arrays": (tokenizer.call_decode, student_decode)}[function]
    return lambda **arrays: call[0](partial(call[1], **slips), **arrays)


# (function, slips, the spec's bug it is) for every named bug of assignment 6
TOKENIZER_SLIPS = [
    ("train_merges_on_arrays", {"tie": "first_seen"}, "tie_first_seen"),
    ("train_merges_on_arrays", {"tie": "smallest"}, "tie_smallest"),
    ("train_merges_on_arrays", {"pretokenize": False}, "across_pretokens"),
    ("train_merges_on_arrays", {"cut_specials": False}, "special_tokens_merged"),
    ("train_merges_on_arrays", {"weighted": False}, "unweighted"),
    ("encode_on_arrays", {"order": "leftmost"}, "leftmost_first"),
    ("encode_on_arrays", {"order": "longest"}, "longest_match"),
    ("encode_on_arrays", {"cut_specials": False}, "specials_not_split"),
    ("encode_on_arrays", {"longest_first": False}, "specials_in_given_order"),
    ("encode_on_arrays", {"pretokenize": False}, "across_pretokens"),
    ("decode_on_arrays", {"per_token": True}, "per_token"),
    ("decode_on_arrays", {"errors": "ignore"}, "ignore"),
]


def test_the_plain_student_tokenizer_passes_every_check():
    """The student-style BPE below, without slips, passes every public and hidden check: the
    slips that follow are the only difference."""
    checks = AssignmentChecks("06_tokenizer")
    for function in ("train_merges_on_arrays", "encode_on_arrays", "decode_on_arrays"):
        verdicts = checks._run(function, _graded(function), True) + checks._run(function, _graded(function), False)
        assert verdicts and all(problem is None for _, problem in verdicts), verdicts


@pytest.mark.parametrize("function, slips, bug", TOKENIZER_SLIPS, ids=[f"{f}-{b}" for f, _, b in TOKENIZER_SLIPS])
def test_each_tokenizer_slip_gets_its_own_message(function, slips, bug):
    """Each slip fails a public check with its own message, and no check tells another bug's story."""
    from autograder.specs.a06_tokenizer import DECODE_BUGS, ENCODE_BUGS, TRAIN_BUGS

    bugs = {"train_merges_on_arrays": TRAIN_BUGS, "encode_on_arrays": ENCODE_BUGS,
            "decode_on_arrays": DECODE_BUGS}[function]
    problems = public_problems("06_tokenizer", function, _graded(function, **slips))
    assert problems, f"{bug} passes every public check"
    text = "\n".join(problems.values())
    assert bugs[bug][1] in text, text
    for other, (_, message) in bugs.items():
        assert other == bug or message not in text, (other, text)


def test_a_tokenizer_mismatch_without_a_name_is_explained():
    """Slips that no named bug covers get a message in the words of BPE: the number of merges,
    a tie broken some other way, the decode error."""
    stops_late = public_problems("06_tokenizer", "train_merges_on_arrays", _graded("train_merges_on_arrays", extra=1))
    assert "merges, expected" in "\n".join(stops_late.values()), stops_late
    other_tie = public_problems("06_tokenizer", "train_merges_on_arrays",
                                _graded("train_merges_on_arrays", tie="greatest_second"))
    assert "a tie, which the lexicographically greatest pair wins" in "\n".join(other_tie.values()), other_tie
    strict = public_problems("06_tokenizer", "decode_on_arrays", _graded("decode_on_arrays", errors="strict"))
    assert 'errors="replace"' in strict["decode.invalid_utf8"], strict


# ---- assignment 7: each named slip, written as a student writes it


def student_rms_norm(x, weight, eps, eps_outside=False):
    rms = x.pow(2).mean(dim=-1, keepdim=True)
    return x / (rms.sqrt() + eps) * weight if eps_outside else x / torch.sqrt(rms + eps) * weight


def student_rotary(x, offset, theta, interleaved=False, use_offset=True):
    T, D = x.shape[-2:]
    start = offset if use_offset else 0
    angles = torch.outer(torch.arange(start, start + T, dtype=torch.float64),
                         theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)).to(x.dtype)  # (T, D/2)
    cos, sin = angles.cos(), angles.sin()
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def student_swiglu(x, w_gate, w_up, w_down, gate_on_up=False):
    g, u = x @ w_gate.T, x @ w_up.T
    return ((g * torch.sigmoid(g)) * u if not gate_on_up else g * (u * torch.sigmoid(u))) @ w_down.T


def student_adamw(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                  bias_correction=True, coupled=False):
    if coupled:
        grad = grad + weight_decay * param
    else:
        param = param - lr * weight_decay * param
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * grad ** 2
    m_hat, v_hat = (m / (1 - beta1 ** step), v / (1 - beta2 ** step)) if bias_correction else (m, v)
    return param - lr * m_hat / (torch.sqrt(v_hat) + eps), m, v


def student_decay_mask(model, rule="matrices"):
    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    keep = {"matrices": lambda p: p.dim() > 1 and not any(p is t for t in tables),
            "everything": lambda p: True, "embeddings": lambda p: p.dim() > 1}[rule]
    return torch.tensor([keep(p) for _, p in model.named_parameters()])


def student_lr_at(step, lr, warmup_steps, steps, min_lr_ratio, off_by_one=False):
    if step < warmup_steps:
        return lr * (step if off_by_one else step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, steps - 1 - warmup_steps))
    return min_lr_ratio * lr + (lr - min_lr_ratio * lr) * (1 + math.cos(math.pi * t)) / 2


def student_clip_rows(grads, max_norm, per_parameter=False):
    total = grads.norm()
    if per_parameter:
        scales = (max_norm / (grads.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
    else:
        scales = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return grads * scales, total


@torch.enable_grad()
def student_run(model, batches, lr, warmup_steps, min_lr_ratio, weight_decay, max_norm, interrupt_at,
                restart_schedule=False):
    """A student's loop: the updates, the schedule and the resume written out; a restarted schedule
    counts the steps after the resume from 0."""
    import copy

    model = copy.deepcopy(model)
    params = list(model.parameters())
    decay = student_decay_mask(model).tolist()
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    rates = []
    for step in range(len(batches)):
        resumed = interrupt_at and step >= interrupt_at
        rate = student_lr_at(step - interrupt_at if resumed and restart_schedule else step, lr, warmup_steps,
                             len(batches), min_lr_ratio)
        batch = batches[step]
        logits = model(batch)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        for p in params:
            p.grad = None
        loss.backward()
        clipped, _ = student_clip_rows(torch.cat([p.grad.flatten() for p in params])[None], max_norm)
        with torch.no_grad():
            offset = 0
            for i, p in enumerate(params):
                grad = clipped[0, offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                new, m, v = student_adamw(p, grad, *state[i], step + 1, rate, 0.9, 0.95, 1e-8,
                                          weight_decay if decay[i] else 0.0)
                p.copy_(new)
                state[i] = (m, v)
        rates.append(rate)
    return torch.cat([p.detach().flatten() for p in params]), torch.tensor(rates, dtype=torch.float64)


class StudentLanguageModel(torch.nn.Module):
    """genlab's Llama-style GPT re-assembled, with the output layer tied or not (blocks are genlab's:
    this slip is about the tie only)."""

    untied = False

    def __new__(cls, config):
        from genlab.decoder import GPT

        model = GPT(config.__class__(**{**config.__dict__, "tie_word_embeddings": not cls.untied}))
        return model


class UntiedStudentLanguageModel(StudentLanguageModel):
    untied = True


def _partial(fn, **slips):
    from functools import partial

    return partial(fn, **slips)


# (function, the student's function with its slip, the spec's bug it is)
LANGUAGE_MODEL_SLIPS = [
    ("rms_norm", _partial(student_rms_norm, eps_outside=True), "eps_outside_sqrt"),
    ("rotary", _partial(student_rotary, interleaved=True), "interleaved"),
    ("rotary", _partial(student_rotary, use_offset=False), "offset_ignored"),
    ("swiglu", _partial(student_swiglu, gate_on_up=True), "gate_on_up"),
    ("LanguageModel", UntiedStudentLanguageModel, "untied"),
    ("adamw_update", _partial(student_adamw, bias_correction=False), "no_bias_correction"),
    ("adamw_update", _partial(student_adamw, coupled=True), "l2_coupled"),
    ("weight_decay_mask", _partial(student_decay_mask, rule="everything"), "everything"),
    ("weight_decay_mask", _partial(student_decay_mask, rule="embeddings"), "embeddings"),
    ("lr_at", _partial(student_lr_at, off_by_one=True), "warmup_off_by_one"),
    ("clip_rows", _partial(student_clip_rows, per_parameter=True), "per_parameter"),
    ("run_with_interruption", _partial(student_run, restart_schedule=True), "schedule_restarted"),
]
LANGUAGE_MODEL_PLAIN = {"rms_norm": student_rms_norm, "rotary": student_rotary, "swiglu": student_swiglu,
                        "LanguageModel": StudentLanguageModel, "adamw_update": student_adamw,
                        "weight_decay_mask": student_decay_mask, "lr_at": student_lr_at,
                        "clip_rows": student_clip_rows, "run_with_interruption": student_run}


@pytest.mark.parametrize("function", sorted(LANGUAGE_MODEL_PLAIN))
def test_the_plain_student_language_model_pieces_pass(function):
    """Without their slips, the student-style pieces pass every public and hidden check."""
    checks = AssignmentChecks("07_language_model")
    fn = LANGUAGE_MODEL_PLAIN[function]
    verdicts = checks._run(function, fn, True) + checks._run(function, fn, False)
    assert verdicts and all(problem is None for _, problem in verdicts), verdicts


@pytest.mark.parametrize("function, fn, bug", LANGUAGE_MODEL_SLIPS, ids=[b for _, _, b in LANGUAGE_MODEL_SLIPS])
def test_each_language_model_slip_gets_its_own_message(function, fn, bug):
    """Each slip fails a public check with its own message, and no check tells another bug's story."""
    from autograder.spec import load

    bugs = {name: message for c in load("07_language_model").checks for name, (_, message) in c.bugs.items()}
    problems = public_problems("07_language_model", function, fn)
    assert problems, f"{bug} passes every public check"
    text = "\n".join(problems.values())
    assert bugs[bug] in text, text
    for other, message in bugs.items():
        assert other == bug or message not in text, (other, text)


def test_naive_softmax_cross_entropy_fails_on_huge_logits():
    """log(softmax) written out overflows on logits of size 1e4: the public check says where."""
    def naive(logits, targets):
        probs = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)
        return -probs.gather(-1, targets[:, None]).log().mean()

    problems = public_problems("07_language_model", "cross_entropy", naive)
    assert "cross_entropy" in problems and "logit scale=10000.0" in problems["cross_entropy"], problems
