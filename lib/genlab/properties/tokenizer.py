"""Assignment 6 (tokenization): how its strings and bytes travel as arrays, and how a
mismatch is explained.

**Arrays.** Checks store numbers only (``.npz``, no pickle), so every piece of text is an
int64 array: a ``str`` is its UTF-8 bytes, shape ``(n,)``; a list of tokens (``bytes``,
or special tokens as ``str``) is ``(k, L)``, one token per row, padded with -1; merges are
``(n, 2, L)``; a vocabulary ``{id: bytes}`` with ids ``0..V-1`` is ``(V, L)``, row = id.

**One wrapper for both sides.** ``call_train_merges``, ``call_encode`` and ``call_decode``
take a function written on strings and bytes (the student's, or the spec's reference and
known bugs) and the arrays of a case; they convert the arrays to Python values, call the
function, check what it returned and convert that back to an array. The notebook's
graded functions (``train_merges_on_arrays``, ...) and the spec's references both go
through them, so the two sides cannot convert differently.

**Property** ``tokenizer.exact`` (``params``: ``output`` = "merges" | "ids" | "text", and
``bugs``, the known bugs' messages by name): every output must equal the reference
exactly. An output that equals a known bug's gets that bug's message; any other mismatch
is described in the words of BPE: the first merge that differs, with how often both
pairs occur at that step (was it a tie?), the first token id that differs, with the
tokens' bytes, or the first character of the text that differs.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import torch

from genlab.properties import register

PAD = -1

# ----------------------------------------------------------------- values <-> arrays


def text_to_array(text: str) -> torch.Tensor:
    """A string -> its UTF-8 bytes, int64 (n,)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def array_to_text(array) -> str:
    return bytes(int(b) for b in _flat(array)).decode("utf-8", errors="replace")


def tokens_to_array(tokens) -> torch.Tensor:
    """Tokens (bytes, or str written as UTF-8) -> int64 (k, L), padded with -1 (L >= 1)."""
    data = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in tokens]
    width = max((len(t) for t in data), default=1) or 1
    out = torch.full((len(data), width), PAD, dtype=torch.long)
    for row, token in enumerate(data):
        out[row, :len(token)] = torch.tensor(list(token), dtype=torch.long)
    return out


def array_to_tokens(array) -> list[bytes]:
    return [bytes(int(b) for b in row if b >= 0) for row in _rows(array)]


def merges_to_array(merges) -> torch.Tensor:
    """[(bytes, bytes), ...] -> int64 (n, 2, L), padded with -1."""
    flat = tokens_to_array([token for pair in merges for token in pair])  # (2n, L)
    return flat.reshape(len(merges), 2, flat.shape[-1])


def array_to_merges(array) -> list[tuple[bytes, bytes]]:
    array = np.asarray(array)
    tokens = array_to_tokens(array.reshape(-1, array.shape[-1]) if array.size else np.zeros((0, 1)))
    return list(zip(tokens[0::2], tokens[1::2]))


def vocab_to_array(vocab: dict[int, bytes]) -> torch.Tensor:
    """{id: bytes} with ids 0..V-1 -> int64 (V, L), row i the bytes of id i."""
    if sorted(vocab) != list(range(len(vocab))):
        raise ValueError("a vocabulary stored as an array needs the ids 0..V-1")
    return tokens_to_array([vocab[i] for i in range(len(vocab))])


def array_to_vocab(array) -> dict[int, bytes]:
    return dict(enumerate(array_to_tokens(array)))


def _flat(array) -> list[int]:
    return np.asarray(array).reshape(-1).tolist()


def _rows(array) -> list[list[int]]:
    return np.asarray(array).tolist()


# ------------------------------------------------------------- the wrappers (one per function)


def call_train_merges(train_merges: Callable, text, n_merges, special_tokens) -> torch.Tensor:
    """``train_merges(str, int, list[str]) -> [(bytes, bytes), ...]`` on a case's arrays."""
    specials = [token.decode("utf-8") for token in array_to_tokens(special_tokens)]
    merges = train_merges(array_to_text(text), int(n_merges), specials)
    if not isinstance(merges, (list, tuple)):
        raise TypeError(f"train_merges must return a list of (bytes, bytes) pairs, got {type(merges).__name__}")
    for rank, pair in enumerate(merges):
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, bytes) for t in pair)):
            raise TypeError(f"train_merges must return a list of (bytes, bytes) tuples; merge {rank} is {pair!r} "
                            "(tokens are bytes: b'th', not 'th')")
    return merges_to_array(merges)


def call_encode(encode: Callable, text, vocab, merges, special_tokens) -> torch.Tensor:
    """``encode(str, {id: bytes}, [(bytes, bytes)], list[str]) -> [int, ...]`` on a case's arrays."""
    specials = [token.decode("utf-8") for token in array_to_tokens(special_tokens)]
    ids = encode(array_to_text(text), array_to_vocab(vocab), array_to_merges(merges), specials)
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"encode must return a list of int ids, got {type(ids).__name__}"
                        + (f" holding {type(ids[0]).__name__}" if isinstance(ids, (list, tuple)) and ids else ""))
    return torch.tensor(ids, dtype=torch.long).reshape(-1)


def call_decode(decode: Callable, ids, vocab) -> torch.Tensor:
    """``decode([int, ...], {id: bytes}) -> str`` on a case's arrays; the text comes back as UTF-8 bytes."""
    try:
        text = decode([int(i) for i in _flat(ids)], array_to_vocab(vocab))
    except UnicodeDecodeError as err:
        raise ValueError(f"UnicodeDecodeError ({err.reason}): ids can end in the middle of a character; "
                         "decode the joined bytes with errors=\"replace\"") from None
    if not isinstance(text, str):
        raise TypeError(f"decode must return a str, got {type(text).__name__}")
    return text_to_array(text)


# ------------------------------------------------------------ BPE steps the messages replay


def merge_pair(word: list[bytes], pair: tuple[bytes, bytes]) -> list[bytes]:
    """``word`` (a pre-token as tokens) with every occurrence of ``pair`` merged, left to right."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def pair_counts(words: dict[str, list[bytes]], counts: dict[str, int]) -> Counter:
    """Adjacent pairs of tokens inside each pre-token, a pre-token seen n times counting n times."""
    pairs: Counter = Counter()
    for pretoken, word in words.items():
        for pair in zip(word, word[1:]):
            pairs[pair] += counts[pretoken]
    return pairs


def split_words(counts: dict[str, int]) -> dict[str, list[bytes]]:
    return {pretoken: [bytes([b]) for b in pretoken.encode("utf-8")] for pretoken in counts}


def counts_at_step(text: str, special_tokens: list[str], merges: list[tuple[bytes, bytes]]) -> Counter:
    """The pair counts of ``text`` after applying ``merges``, in order (genlab's pre-tokens)."""
    from genlab.tokenizers import count_pretokens_in_text

    counts = count_pretokens_in_text(text, special_tokens)
    words = split_words(counts)
    for pair in merges:
        words = {pretoken: merge_pair(word, pair) for pretoken, word in words.items()}
    return pair_counts(words, counts)


# ------------------------------------------------------------------------ the messages


def _pair(pair: tuple[bytes, bytes]) -> str:
    return f"({pair[0]!r}, {pair[1]!r})"


def merges_difference(mine: list, expected: list, text: str, special_tokens: list[str]) -> str:
    """What differs between two merge lists, at the first rank where they differ."""
    rank = next((k for k, (a, b) in enumerate(zip(mine, expected)) if a != b), None)
    if rank is None:
        if len(mine) > len(expected):
            return (f"you learned {len(mine)} merges, expected {len(expected)}: the first {len(expected)} "
                    "match; stop after n_merges merges, or earlier when no pre-token holds a pair any more")
        return (f"you learned {len(mine)} merges, expected {len(expected)}: the first {len(mine)} match; "
                "keep merging until n_merges merges are learned (or no pre-token holds a pair any more)")
    counts = counts_at_step(text, special_tokens, expected[:rank])
    yours, theirs = mine[rank], expected[rank]
    said = (f"merge {rank} is {_pair(yours)}, expected {_pair(theirs)} (the merges before it match); "
            f"after the first {rank} merges, {_pair(theirs)} occurs {counts[theirs]} times inside pre-tokens")
    if counts[yours] == 0:
        return (said + f" and {_pair(yours)} never does: pairs are counted inside one pre-token "
                "(GPT-2's pattern, after cutting out the special tokens), never across two")
    if counts[yours] == counts[theirs]:
        return (said + f", and so does {_pair(yours)}: a tie, which the lexicographically greatest pair "
                "wins, comparing pairs as (bytes, bytes) tuples")
    return said + f", {_pair(yours)} {counts[yours]} times: merge the most frequent pair"


def _token(vocab: dict[int, bytes], i: int) -> str:
    return f"{i} ({vocab[i]!r})" if i in vocab else f"{i} (not an id of the vocabulary)"


def ids_difference(mine: list[int], expected: list[int], vocab: dict[int, bytes]) -> str:
    k = next((k for k, (a, b) in enumerate(zip(mine, expected)) if a != b), min(len(mine), len(expected)))
    said = f"you returned {len(mine)} ids, expected {len(expected)}; " if len(mine) != len(expected) else ""
    if k == min(len(mine), len(expected)):
        longer, who = (mine, "yours") if len(mine) > len(expected) else (expected, "the expected")
        return said + f"the first {k} agree, then {who} go on with id {_token(vocab, longer[k])}"
    return (said + f"token {k} is id {_token(vocab, mine[k])}, expected id {_token(vocab, expected[k])} "
            f"(the {k} before it agree)")


def text_difference(mine: str, expected: str) -> str:
    k = next((k for k, (a, b) in enumerate(zip(mine, expected)) if a != b), min(len(mine), len(expected)))
    start = max(0, k - 8)
    return (f"the text differs at character {k}: yours {mine[start:k + 8]!r}, expected "
            f"{expected[start:k + 8]!r} (lengths {len(mine)} and {len(expected)} characters)")


def _describe(output: str, got: np.ndarray, expected: np.ndarray, inputs: dict) -> str:
    if output == "merges":
        specials = [t.decode("utf-8") for t in array_to_tokens(inputs["special_tokens"])]
        return merges_difference(array_to_merges(got), array_to_merges(expected),
                                 array_to_text(inputs["text"]), specials)
    if output == "ids":
        return ids_difference(_flat(got), _flat(expected), array_to_vocab(inputs["vocab"]))
    return text_difference(array_to_text(got), array_to_text(expected))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype.kind == b.dtype.kind and bool(np.array_equal(a, b))


@register("tokenizer.exact")
def exact(outputs_per_case, cases, params) -> str | None:
    """Each case's single output equals the reference exactly (module docstring)."""
    output, bugs = params["output"], params.get("bugs", {})
    for i, (outputs, case) in enumerate(zip(outputs_per_case, cases)):
        where = f"case {i + 1} of {len(cases)} ({case.describe()})"
        if len(outputs) != 1:
            return f"{where}: returned {len(outputs)} values, expected 1 ({output})"
        got, expected = outputs[0], case.expected[0]
        if got.dtype.kind not in "iu":
            return f"{where}: `{output}` has dtype {got.dtype}, expected int64"
        if _same(got, expected):
            continue
        for bug, alternative in case.alternatives.items():
            if _same(got, alternative[0]) and bug in bugs:
                return f"{where}: {bugs[bug]}"
        return f"{where}: {_describe(output, got, expected, case.inputs)}"
    return None
