"""Assignment 1, "Attention and masks": what is graded, on which inputs, for how many points.

Public checks run in the student's notebook; hidden checks (other shapes, float64,
fully masked rows, a sliding-window attention) run only at grading.
"""

from __future__ import annotations

import math

import torch

from autograder.spec import TORCH_ATTENTION_CALLS, Assignment, CaseSpec, check_maker
from genlab.attention import scaled_dot_product_attention, split_heads

ATTENTION_CALLS = (
    *TORCH_ATTENTION_CALLS,
    "genlab.attention.scaled_dot_product_attention",
    "genlab.attention.MultiHeadAttention",
    "genlab.attention.multi_head_self_attention",
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ cases


def causal_case(T: int) -> CaseSpec:
    return CaseSpec(make=lambda: {"T": T}, meta={"T": T})


def padding_case(seed: int, B: int, T: int, dtype: str = "int64", rows: str = "random") -> CaseSpec:
    def make():
        lengths = torch.randint(1, T + 1, (B,), generator=_gen(seed))
        if rows == "edge":  # one row without padding, one fully padded
            lengths[0], lengths[-1] = T, 0
        attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).to(getattr(torch, dtype))
        return {"attention_mask": attention_mask}

    return CaseSpec(make=make, meta={"B": B, "T": T, "dtype": dtype, "seed": seed, "rows": rows},
                    kind="a row without padding and a fully padded row" if rows == "edge" else "")


def sdpa_case(seed: int, B=1, H=2, Tq=4, Tk=4, D=8, Dv=None, dtype="float32",
              mask: str = "none") -> CaseSpec:
    """mask: none | padding (B,1,1,Tk) | random (B,1,Tq,Tk) | causal (is_causal=True) |
    fully_masked (a random mask with query row 1 blocked everywhere) | both (a random mask
    and is_causal=True: the call must raise ValueError)."""
    Dv = Dv or D

    def make():
        g, dt = _gen(seed), getattr(torch, dtype)
        q = torch.randn(B, H, Tq, D, generator=g, dtype=dt)
        k = torch.randn(B, H, Tk, D, generator=g, dtype=dt)
        v = torch.randn(B, H, Tk, Dv, generator=g, dtype=dt)
        inputs = {"q": q, "k": k, "v": v}
        if mask == "padding":
            lengths = torch.randint(1, Tk + 1, (B,), generator=g)
            inputs["attn_mask"] = (torch.arange(Tk)[None, :] < lengths[:, None])[:, None, None, :]
        elif mask in ("random", "fully_masked", "both"):
            attn_mask = torch.rand(B, 1, Tq, Tk, generator=g) < 0.6
            attn_mask[..., 0] = True  # every query sees at least one key ...
            if mask == "fully_masked":
                attn_mask[:, :, 1, :] = False  # ... but query 1, which sees none
            inputs["attn_mask"] = attn_mask
        if mask in ("causal", "both"):
            inputs["is_causal"] = True
        return inputs

    kind = {"none": "", "padding": "padding mask", "random": "boolean mask",
            "fully_masked": "a fully masked query row", "causal": "is_causal",
            "both": "attn_mask and is_causal=True together (an error)"}[mask]
    if mask == "causal" and Tq != Tk:
        kind += ", Tq < Tk" if Tq < Tk else ", Tq > Tk"
    if Dv != D:
        kind += ", Dv != D"
    return CaseSpec(make=make, meta={"B": B, "H": H, "Tq": Tq, "Tk": Tk, "D": D, "Dv": Dv,
                                     "dtype": dtype, "mask": mask, "seed": seed}, kind=kind)


def heads_case(seed: int, B: int, T: int, C: int, H: int, split: bool, dtype="float32") -> CaseSpec:
    def make():
        g, dt = _gen(seed), getattr(torch, dtype)
        if split:
            return {"x": torch.randn(B, T, C, generator=g, dtype=dt), "n_heads": H}
        return {"x": torch.randn(B, H, T, C // H, generator=g, dtype=dt)}

    shape = {"B": B, "T": T, "C": C, "n_heads": H} if split else {"B": B, "H": H, "T": T, "Dh": C // H}
    return CaseSpec(make=make, meta={**shape, "dtype": dtype, "seed": seed})


def mha_case(seed: int, B=2, T=5, C=8, H=2, dtype="float32", mask="none") -> CaseSpec:
    def make():
        g, dt = _gen(seed), getattr(torch, dtype)
        inputs = {"x": torch.randn(B, T, C, generator=g, dtype=dt)}
        for name in ("W_q", "W_k", "W_v", "W_o"):
            inputs[name] = torch.randn(C, C, generator=g, dtype=dt) / math.sqrt(C)
        inputs["n_heads"] = H
        if mask == "causal":
            inputs["is_causal"] = True
        elif mask == "padding":
            lengths = torch.randint(1, T + 1, (B,), generator=g)
            inputs["attn_mask"] = (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]
        return inputs

    return CaseSpec(make=make, meta={"B": B, "T": T, "C": C, "n_heads": H, "dtype": dtype,
                                     "mask": mask, "seed": seed},
                    kind={"none": "", "causal": "is_causal", "padding": "padding mask"}[mask])


def dependence_case(seed: int, attention: str, B=1, T=6, C=8) -> CaseSpec:
    def make():
        return {"attention": f"genlab:{attention}",
                "x": torch.randn(B, T, C, generator=_gen(seed), dtype=torch.float64)}

    return CaseSpec(make=make, meta={"attention": attention, "B": B, "T": T, "C": C, "seed": seed},
                    kind="a batch" if B > 1 else "")


# ------------------------------------------------------------------------- known bugs


def sdpa_without_scale(q, k, v, attn_mask=None, is_causal=False):
    return scaled_dot_product_attention(q * math.sqrt(q.shape[-1]), k, v, attn_mask, is_causal)


def sdpa_inverted_mask(q, k, v, attn_mask=None, is_causal=False):
    if attn_mask is None:
        return scaled_dot_product_attention(q, k, v, None, is_causal)
    return scaled_dot_product_attention(q, k, v, ~attn_mask, is_causal)


def sdpa_softmax_over_queries(q, k, v, attn_mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if is_causal:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-2)
    return weights @ v, weights


def sdpa_causal_bottom_right(q, k, v, attn_mask=None, is_causal=False):
    """is_causal aligned to the bottom-right corner (query i sees keys 0..i + Tk - Tq)."""
    if not is_causal:
        return scaled_dot_product_attention(q, k, v, attn_mask, is_causal)
    Tq, Tk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)  # (Tq, Tk)
    return scaled_dot_product_attention(q, k, v, allowed, False)


def dependence_map_in_place(attention, x):
    """Each position's nudge left in x for the next one (``xp = x`` does not copy)."""
    x = x.clone()  # the case's own tensor stays as it was; the nudges pile up in this copy
    T = x.size(1)
    dep = torch.zeros(T, T, dtype=torch.bool)  # (T_out, T_in)
    with torch.no_grad():
        reference = attention(x)  # (B, T, C)
        for j in range(T):
            x[:, j, :] += 1.0
            dep[:, j] = (attention(x) - reference).abs().amax(dim=(0, 2)) > 1e-6
    return dep


def split_heads_reshape_only(x, n_heads):
    B, T, C = x.shape
    return x.reshape(B, n_heads, T, C // n_heads)


def _mha_on(attention):
    """Multi-head self-attention, right in every step, built on the given attention."""

    def mha(x, W_q, W_k, W_v, W_o, n_heads, attn_mask=None, is_causal=False):
        from genlab.attention import merge_heads

        q, k, v = (split_heads(x @ W, n_heads) for W in (W_q, W_k, W_v))
        heads, _ = attention(q, k, v, attn_mask, is_causal)
        return merge_heads(heads) @ W_o

    return mha


mha_on_sdpa_without_scale = _mha_on(sdpa_without_scale)
mha_on_sdpa_inverted_mask = _mha_on(sdpa_inverted_mask)
mha_on_sdpa_softmax_over_queries = _mha_on(sdpa_softmax_over_queries)


def mha_without_output_projection(x, W_q, W_k, W_v, W_o, n_heads, attn_mask=None, is_causal=False):
    from genlab.attention import multi_head_self_attention

    identity = torch.eye(W_o.shape[0], dtype=W_o.dtype)
    return multi_head_self_attention(x, W_q, W_k, W_v, identity, n_heads, attn_mask, is_causal)


_HERE = "autograder.specs.a01_attention"
SDPA_BUGS = {
    "no_scale": (f"{_HERE}.sdpa_without_scale",
                 "your output equals attention WITHOUT the 1/sqrt(d) scaling of the scores"),
    "inverted_mask": (f"{_HERE}.sdpa_inverted_mask",
                      "mask polarity inverted: True must mean 'may attend' (you blocked the allowed keys)"),
    "softmax_over_queries": (f"{_HERE}.sdpa_softmax_over_queries",
                             "softmax over the wrong dimension: each query's weights must sum to 1 "
                             "over the keys (dim=-1)"),
    "causal_bottom_right": (f"{_HERE}.sdpa_causal_bottom_right",
                            "your causal mask is aligned to the bottom-right corner (tril(diagonal=Tk - Tq)); "
                            "here is_causal is top-left aligned: query i sees keys 0..i, whatever Tk"),
}
DEPENDENCE_BUGS = {"in_place": (
    f"{_HERE}.dependence_map_in_place",
    "your map is what nudging x itself gives: `xp = x` is the same tensor, not a copy, so each "
    "position's nudge stays in x for the next positions. Nudge a copy (x.clone()) each time")}
SPLIT_BUGS = {"reshape_without_transpose": (
    f"{_HERE}.split_heads_reshape_only",
    "reshaping straight to (B, H, T, C/H) mixes tokens across heads: view as (B, T, H, C/H), "
    "then transpose(1, 2)")}
# a right multi-head attention on a wrong scaled_dot_product_attention (the known bugs above)
_WRONG_SDPA = {"sdpa_no_scale": ("mha_on_sdpa_without_scale", "without the 1/sqrt(d) scaling"),
               "sdpa_inverted_mask": ("mha_on_sdpa_inverted_mask", "with the mask polarity inverted"),
               "sdpa_softmax_over_queries": ("mha_on_sdpa_softmax_over_queries",
                                             "whose softmax runs over the queries")}
MHA_BUGS = {
    "no_output_projection": (f"{_HERE}.mha_without_output_projection",
                             "the output projection W_o is missing"),
    **{bug: (f"{_HERE}.{function}", f"your multi-head attention equals the right one built on an "
                                    f"attention {what}: fix scaled_dot_product_attention first")
       for bug, (function, what) in _WRONG_SDPA.items()},
}

# ------------------------------------------------------------------------------ checks

# What every check of one function shares: its test cell, reference, comparison, bans.
PER_FUNCTION = {
    "causal_mask": dict(cell="test_causal_mask", reference="genlab.masks.causal_mask",
                        dtype="bool", compare="exact", outputs=("mask",),
                        forbidden=("genlab.masks.causal_mask", "genlab.masks.sliding_window_mask")),
    "padding_mask": dict(cell="test_padding_mask", reference="genlab.masks.padding_mask",
                         dtype="bool", compare="exact", outputs=("mask",),
                         forbidden=("genlab.masks.padding_mask",)),
    "scaled_dot_product_attention": dict(
        cell="test_sdpa", reference="genlab.attention.scaled_dot_product_attention",
        outputs=("output", "weights"), forbidden=ATTENTION_CALLS, bugs=SDPA_BUGS),
    "split_heads": dict(cell="test_heads", reference="genlab.attention.split_heads",
                        outputs=("heads",), forbidden=("genlab.attention.split_heads",), bugs=SPLIT_BUGS),
    "merge_heads": dict(cell="test_heads", reference="genlab.attention.merge_heads",
                        outputs=("merged",), forbidden=("genlab.attention.merge_heads",)),
    "multi_head_self_attention": dict(
        cell="test_mha", reference="genlab.attention.multi_head_self_attention",
        forbidden=ATTENTION_CALLS, bugs=MHA_BUGS),
    "dependence_map": dict(cell="test_dependence", reference="genlab.attention.dependence_map",
                           dtype="bool", compare="exact", outputs=("dependence",),
                           forbidden=("genlab.attention.dependence_map",), bugs=DEPENDENCE_BUGS),
}


check = check_maker(PER_FUNCTION)


SDPA = "scaled_dot_product_attention"
MHA = "multi_head_self_attention"

SPEC = Assignment(
    name="01_attention",
    notebook="attention.ipynb",
    checks=[
        check("causal_mask", "causal_mask", True, [causal_case(4), causal_case(6)],
              "causal mask, small T"),
        check("causal_mask.hidden", "causal_mask", False,
              [causal_case(1), causal_case(9), causal_case(16)], "causal mask, T = 1 and larger T"),
        check("padding_mask", "padding_mask", True,
              [padding_case(0, B=2, T=5), padding_case(5, B=2, T=3, rows="edge")],
              "padding mask from an int 0/1 attention_mask; a row without padding and a fully "
              "padded one"),
        check("padding_mask.hidden", "padding_mask", False,
              [padding_case(1, B=3, T=7, dtype="float32"), padding_case(2, B=3, T=4, rows="edge"),
               padding_case(3, B=1, T=1), padding_case(4, B=2, T=6, dtype="bool")],
              "padding mask: float input, no padding, all padding, T = 1, bool input"),
        check("sdpa", SDPA, True,
              [sdpa_case(0), sdpa_case(1, B=2, Tq=5, Tk=5, mask="padding"),
               sdpa_case(10, B=1, H=2, Tq=4, Tk=4, D=4, mask="causal"),
               sdpa_case(11, B=1, H=1, Tq=2, Tk=4, D=4, mask="causal"),
               sdpa_case(12, B=1, H=1, Tq=4, Tk=2, D=4, mask="causal"),
               sdpa_case(13, B=2, H=1, Tq=3, Tk=4, D=4, Dv=3, mask="random"),
               sdpa_case(14, B=1, H=1, Tq=3, Tk=4, D=4, mask="fully_masked"),
               sdpa_case(15, B=1, H=1, Tq=3, Tk=3, D=4, mask="both")],
              "attention without a mask, with a padding mask, with is_causal=True (Tq = Tk, "
              "Tq < Tk, Tq > Tk: top-left aligned), with a boolean mask and Dv != D, and with a "
              "query row whose keys are all blocked (zeros); attn_mask and is_causal=True together "
              "raise ValueError"),
        check("sdpa.causal", SDPA, False,
              [sdpa_case(2, B=2, H=3, Tq=6, Tk=6, D=4, mask="causal"),
               sdpa_case(5, B=1, H=2, Tq=3, Tk=5, D=4, mask="causal"),
               sdpa_case(6, B=2, H=1, Tq=5, Tk=3, D=4, mask="causal")],
              "attention with is_causal=True; Tq < Tk and Tq > Tk (top-left aligned: query i "
              "sees keys 0..i)"),
        check("sdpa.float64", SDPA, False,
              [sdpa_case(3, B=3, H=1, Tq=3, Tk=7, D=5, Dv=6, dtype="float64", mask="random")],
              "float64, Tq != Tk, Dv != D, a random mask", dtype="float64"),
        check("sdpa.fully_masked", SDPA, False,
              [sdpa_case(4, B=2, H=2, Tq=4, Tk=5, D=4, mask="fully_masked")],
              "a query row with every key blocked gives zeros, not NaN"),
        check("split_heads", "split_heads", True, [heads_case(0, 2, 3, 8, 2, split=True)],
              "(B, T, C) -> (B, H, T, C/H)"),
        check("split_heads.hidden", "split_heads", False,
              [heads_case(1, 1, 5, 12, 4, split=True),
               heads_case(2, 3, 2, 6, 1, split=True, dtype="float64")],
              "other head counts, one head, float64"),
        check("merge_heads", "merge_heads", True, [heads_case(0, 2, 3, 8, 2, split=False)],
              "(B, H, T, D) -> (B, T, H*D)"),
        check("merge_heads.hidden", "merge_heads", False,
              [heads_case(1, 1, 5, 12, 4, split=False),
               heads_case(2, 3, 2, 6, 1, split=False, dtype="float64")],
              "other head counts, one head, float64"),
        check("mha", MHA, True, [mha_case(0), mha_case(1, mask="causal"), mha_case(3, B=2, T=4, mask="padding")],
              "multi-head self-attention, without a mask, causal, and with a padding mask"),
        check("mha.hidden", MHA, False,
              [mha_case(2, B=3, T=6, C=16, H=4, dtype="float64", mask="padding")],
              "float64, four heads, a padding mask", dtype="float64"),
        check("dependence_map", "dependence_map", True,
              [dependence_case(0, "causal_attention"), dependence_case(1, "full_attention"),
               dependence_case(4, "full_attention", B=2, T=5)],
              "the causality experiment on causal and full attention; a batch of two"),
        check("dependence_map.hidden", "dependence_map", False,
              [dependence_case(2, "window_attention", T=7),
               dependence_case(3, "causal_attention", B=2, T=4)],
              "a sliding-window attention; a batch of two"),
    ],
    samples={
        # solved: the solution cells (by grade_id) that carry the solution; the rest stay blank.
        # lost: the checks it must fail ("all" for every one); it scores all other points.
        "solution": {"solved": "all", "lost": []},
        "blank": {"solved": [], "lost": "all"},
        "partial": {"solved": ["causal_mask", "padding_mask", "sdpa"],
                    "lost": ["split_heads", "split_heads.hidden", "merge_heads", "merge_heads.hidden",
                             "mha", "mha.hidden", "dependence_map", "dependence_map.hidden"]},
        # the classic polarity bug: True where attention_mask is 0
        "polarity": {"solved": "all", "lost": ["padding_mask", "padding_mask.hidden"],
                     "edit": {"padding_mask": ["attention_mask != 0", "attention_mask == 0"]}},
    },
)
