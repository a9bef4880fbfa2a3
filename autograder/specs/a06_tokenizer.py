"""Assignment 6, "Tokenization": what is graded, on which inputs, for how many points.

The student writes byte-level BPE as ``genlab.tokenizers`` does it: the merge loop with
the tie rule (``train_merges``), encoding by rank with special tokens matched longest
first (``encode``), and decoding (``decode``). The functions work on strings and bytes;
checks store numbers only, so each is graded through a wrapper of
``genlab.properties.tokenizer`` (``call_train_merges``, ...) that the notebook's given
``*_on_arrays`` functions and the references below share.

References are genlab's: ``learn_merges`` on ``count_pretokens_in_text`` (the first
``n_merges`` merges), ``BPETokenizer.encode`` and ``.decode``. The known bugs are written
here on strings, as a student would slip, and go through the same wrappers.

Inputs are texts typed below (no file that differs between Python versions), so the
references rebuild byte for byte anywhere. Public cases: a toy text whose merges are
decided by ties, an English paragraph, special tokens (back to back, and one the prefix of
another), CJK, emoji and combining marks, a text that runs out of pairs, ids cut in the
middle of a character. Hidden cases: the same kinds on other texts.
"""

from __future__ import annotations

from collections import Counter

import regex
import torch

from autograder.spec import Assignment, CaseSpec, check_maker
from genlab.properties.tokenizer import (
    call_decode, call_encode, call_train_merges, merge_pair, merges_to_array, pair_counts,
    split_words, text_to_array, tokens_to_array, vocab_to_array)
from genlab.tokenizers import GPT2_PATTERN, BPETokenizer, count_pretokens_in_text, learn_merges

_HERE = "autograder.specs.a06_tokenizer"

# ------------------------------------------------------------------------------ texts

TOY = "low low low low lower lower newest newest newest widest widest"
ENGLISH = (
    "A tokenizer turns text into numbers. The numbers are ids of tokens, and the tokens are "
    "pieces of text that the model reads one after the other. Byte pair encoding starts from "
    "single bytes and glues together the pair that is seen most often, then the next one, and "
    "so on, until the vocabulary is as large as we want. The merges are learned once, from a "
    "training text, and then applied to any text the model will ever read.")
ENGLISH_OTHER = (
    "Preheat the oven, then mix the flour, the butter and the sugar in a large bowl. Bake the "
    "bread for forty minutes; let the loaf rest before you cut it. Bakers say that the rest "
    "matters more than the heat, and that the best loaves are baked slowly.")
CODE = (
    "def add(a, b):\n    return a + b\n\n\ndef total(values):\n    result = 0\n"
    "    for value in values:\n        result = add(result, value)\n    return result\n\n"
    "print(total([1, 2, 3, 10, 20, 30]))  # prints 66\n")
CODE_OTHER = (
    "class Counter:\n    def __init__(self):\n        self.counts = {}\n\n"
    "    def add(self, key, n=1):\n        self.counts[key] = self.counts.get(key, 0) + n\n"
    "        return self.counts[key]\n\n\ncounter = Counter()\nfor word in \"a b a c a\".split():\n"
    "    counter.add(word)\n")
UNICODE = (
    "naïve café, déjà vu: crème brûlée. 東京の天気は晴れです。東京タワーは東京にあります。"
    " 🙂🙂 👍🏽👍🏽 Cafe\u0301 and cafe\u0301 again: e\u0301, e\u0301!")
UNICODE_OTHER = (
    "Καλημέρα κόσμε, καλή μέρα! Привет, мир; привет всем. 한국어 텍스트, 한국어 단어. "
    "👨‍👩‍👧 and 👨‍👩‍👧 again. A\u030a, o\u0308, o\u0308ver: 北京和上海, 北京。")
# the texts encoded and decoded with the merges learned from ENGLISH and UNICODE
ENGLISH_SENTENCE = "The model reads the tokens of the text, and then it writes new ones: tokenizers!"
UNICODE_SENTENCE = "Crème brûlée in 東京 🙂👍🏽, cafe\u0301 or café? 北京!"
SPECIALS = ["<|endoftext|>", "<|pad|>"]
SPECIAL_TEXT = ("the first document ends here.<|endoftext|>the second document is short."
                "<|endoftext|><|endoftext|>the third<|pad|><|pad|> document ends.<|endoftext|>")
SPECIALS_OTHER = ["<s>", "</s>", "<sep>"]
SPECIAL_TEXT_OTHER = "<s>question: who?<sep>answer: we.</s><s>question: why?<sep><sep>answer: so.</s></s>"
# one special token the prefix of another, listed shortest first: the longest must win
OVERLAPPING = ["<|a|>", "<|a|><|b|>"]
OVERLAPPING_TEXT = "x<|a|><|b|>y<|a|>z<|a|><|a|><|b|> the a b<|a|><|b|><|a|>"
OVERLAPPING_OTHER = ["[A]", "[A][A]", "[A][A][B]"]
OVERLAPPING_TEXT_OTHER = "one[A][A][B]two[A][A][A]three[A][B] four[A][A][A][B]"
RUNS_OUT = "aaab ab ab"  # only a few merges before every pre-token is one token
RUNS_OUT_OTHER = "xyz xyz yzx"

# ------------------------------------------------------------------------ references


def _segments(text: str, special_tokens: list[str], longest_first: bool = True) -> list[tuple[str, bool]]:
    """``text`` cut at the special tokens: (piece, is_special) in order."""
    if not special_tokens:
        return [(text, False)]
    ordered = sorted(special_tokens, key=len, reverse=True) if longest_first else special_tokens
    pattern = regex.compile("(" + "|".join(regex.escape(s) for s in ordered) + ")")
    return [(piece, k % 2 == 1) for k, piece in enumerate(pattern.split(text)) if piece]


def genlab_train_merges(text, n_merges, special_tokens):
    """genlab's merge loop on the pre-tokens of ``text``: its first ``n_merges`` merges (a
    merge that makes bytes already in the vocabulary does not grow it, so learn_merges may
    learn more merges than the vocabulary grows by; training is greedy, so the first
    n_merges are what a loop of n_merges steps learns)."""
    counts = count_pretokens_in_text(text, special_tokens)
    _, merges = learn_merges(counts, 256 + len(special_tokens) + n_merges, special_tokens, progress=False)
    return merges[:n_merges]


def reference_train_merges(text, n_merges, special_tokens):
    return call_train_merges(genlab_train_merges, text, n_merges, special_tokens)


def reference_encode(text, vocab, merges, special_tokens):
    return call_encode(lambda t, v, m, s: BPETokenizer(v, m, s).encode(t), text, vocab, merges, special_tokens)


def reference_decode(ids, vocab):
    return call_decode(lambda i, v: BPETokenizer(v, []).decode(i), ids, vocab)


# ------------------------------------------------------------------ known bugs: training


def _learn(counts: dict[str, int], n_merges: int, choose) -> list[tuple[bytes, bytes]]:
    """The merge loop, recounting every step; ``choose(pair_counts)`` picks the pair."""
    words, merges = split_words(counts), []
    for _ in range(n_merges):
        pairs = pair_counts(words, counts)
        if not pairs:
            break
        pair = choose(pairs)
        merges.append(pair)
        words = {pretoken: merge_pair(word, pair) for pretoken, word in words.items()}
    return merges


def _smallest_of_the_most_frequent(pairs: Counter):
    top = max(pairs.values())
    return min(pair for pair, n in pairs.items() if n == top)


def train_tie_smallest(text, n_merges, special_tokens):
    return call_train_merges(lambda t, n, s: _learn(count_pretokens_in_text(t, s), n, _smallest_of_the_most_frequent),
                             text, n_merges, special_tokens)


def train_tie_first_seen(text, n_merges, special_tokens):
    # max() over a Counter filled in text order: the first pair seen among the most frequent
    return call_train_merges(lambda t, n, s: _learn(count_pretokens_in_text(t, s), n,
                                                    lambda pairs: max(pairs, key=pairs.get)),
                             text, n_merges, special_tokens)


def _genlab_loop(counts: dict[str, int], n_merges: int, special_tokens: list[str]):
    return learn_merges(counts, 256 + len(special_tokens) + n_merges, special_tokens, progress=False)[1][:n_merges]


def train_across_pretokens(text, n_merges, special_tokens):
    # each piece between special tokens is one "pre-token"
    def loop(t, n, s):
        return _genlab_loop(Counter(p for p, special in _segments(t, s) if not special), n, s)

    return call_train_merges(loop, text, n_merges, special_tokens)


def train_special_tokens_merged(text, n_merges, special_tokens):
    # the special tokens stay in the text and are pre-tokenized like it
    return call_train_merges(lambda t, n, s: _genlab_loop(count_pretokens_in_text(t), n, []),
                             text, n_merges, special_tokens)


def train_unweighted(text, n_merges, special_tokens):
    # each distinct pre-token counted once, however often it occurs
    return call_train_merges(lambda t, n, s: _genlab_loop(dict.fromkeys(count_pretokens_in_text(t, s), 1), n, s),
                             text, n_merges, special_tokens)


TRAIN_BUGS = {
    "tie_first_seen": (f"{_HERE}.train_tie_first_seen",
                       "among equally frequent pairs you took the first one seen (max over the counts in "
                       "the order they were filled); the rule is the lexicographically greatest pair: "
                       "max(counts, key=lambda pair: (counts[pair], pair))"),
    "tie_smallest": (f"{_HERE}.train_tie_smallest",
                     "among equally frequent pairs you took the smallest; the rule is the "
                     "lexicographically greatest pair, comparing (bytes, bytes) tuples"),
    "across_pretokens": (f"{_HERE}.train_across_pretokens",
                         "your merges cross pre-token boundaries: split the text with GPT-2's pattern "
                         "(pretokenize) and count pairs only inside each pre-token"),
    "special_tokens_merged": (f"{_HERE}.train_special_tokens_merged",
                              "the special tokens took part in the merges: cut them out of the text "
                              "first (they are never merged), then pre-tokenize the pieces between them"),
    "unweighted": (f"{_HERE}.train_unweighted",
                   "you counted each distinct pre-token once; a pre-token that occurs n times "
                   "contributes its pairs n times"),
}

# ------------------------------------------------------------------ known bugs: encoding


def _ids_by(text, vocab, merges, special_tokens, merge_word, longest_first=True, split_specials=True,
            pretokenize=True):
    """Encoding with its steps passed in: ``merge_word(tokens, ranks) -> tokens`` merges one pre-token."""
    ids = {token: i for i, token in vocab.items()}
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    out = []
    for piece, special in _segments(text, special_tokens if split_specials else [], longest_first):
        if special:
            out.append(ids[piece.encode("utf-8")])
            continue
        for pretoken in (regex.findall(GPT2_PATTERN, piece) if pretokenize else [piece]):
            out.extend(ids[t] for t in merge_word([bytes([b]) for b in pretoken.encode("utf-8")], ranks))
    return out


def _by_rank(tokens, ranks):
    while True:
        found = [(ranks[pair], pair) for pair in zip(tokens, tokens[1:]) if pair in ranks]
        if not found:
            return tokens
        tokens = merge_pair(tokens, min(found)[1])


def _leftmost_first(tokens, ranks):
    while True:
        pair = next((pair for pair in zip(tokens, tokens[1:]) if pair in ranks), None)
        if pair is None:
            return tokens
        tokens = merge_pair(tokens, pair)


def _longest_match(tokens, ranks):
    """WordPiece-style: at each position the longest token of the merges that matches."""
    known = {a + b for a, b in ranks}
    word, out, i = b"".join(tokens), [], 0
    while i < len(word):
        length = max((n for n in range(2, len(word) - i + 1) if word[i:i + n] in known), default=1)
        out.append(word[i:i + length])
        i += length
    return out


def _encoding_bug(**steps):
    def encode(text, vocab, merges, special_tokens):
        return call_encode(lambda t, v, m, s: _ids_by(t, v, m, s, **{"merge_word": _by_rank, **steps}),
                           text, vocab, merges, special_tokens)

    return encode


def _encode_by_text_frequency(text, vocab, merges, special_tokens):
    """Training's step on the text being encoded: the merge whose pair is most frequent in it first."""
    ids = {token: i for i, token in vocab.items()}
    ranks = set(merges)
    pieces = _segments(text, special_tokens)
    counts = Counter(p for piece, special in pieces if not special for p in regex.findall(GPT2_PATTERN, piece))
    words = split_words(counts)
    while True:
        pairs = Counter({pair: n for pair, n in pair_counts(words, counts).items() if pair in ranks})
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        words = {pretoken: merge_pair(word, best) for pretoken, word in words.items()}
    return [i for piece, special in pieces
            for i in ([ids[piece.encode("utf-8")]] if special else
                      [ids[t] for p in regex.findall(GPT2_PATTERN, piece) for t in words[p]])]


encode_leftmost_first = _encoding_bug(merge_word=_leftmost_first)
encode_longest_match = _encoding_bug(merge_word=_longest_match)
encode_specials_not_split = _encoding_bug(split_specials=False)
encode_specials_in_given_order = _encoding_bug(longest_first=False)
encode_across_pretokens = _encoding_bug(pretokenize=False)


def encode_by_text_frequency(text, vocab, merges, special_tokens):
    return call_encode(_encode_by_text_frequency, text, vocab, merges, special_tokens)


ENCODE_BUGS = {
    "leftmost_first": (f"{_HERE}.encode_leftmost_first",
                       "you merged the leftmost pair that has a merge; merge the pair with the lowest "
                       "rank (the merge learned first) wherever it is in the pre-token, then repeat"),
    "by_text_frequency": (f"{_HERE}.encode_by_text_frequency",
                          "you merged the pair most frequent in the text being encoded, as training does; "
                          "encoding applies the learned merges by rank (the one learned first first), "
                          "whatever the counts in this text"),
    "longest_match": (f"{_HERE}.encode_longest_match",
                      "you matched the longest vocabulary token at each position (WordPiece's way); "
                      "BPE applies the merges by rank, which can cut a word differently"),
    "specials_not_split": (f"{_HERE}.encode_specials_not_split",
                           "the special tokens were pre-tokenized like text (GPT-2's pattern cuts <|endoftext|> into "
                           "\"<|\", \"endoftext\", \"|>\"): cut the text at the special tokens first, "
                           "each occurrence is one id"),
    "specials_in_given_order": (f"{_HERE}.encode_specials_in_given_order",
                                "where one special token is the prefix of another, the longest must win: "
                                "try the special tokens longest first (sorted by length, descending)"),
    "across_pretokens": (f"{_HERE}.encode_across_pretokens",
                         "your merges cross pre-token boundaries: pre-tokenize each piece between special "
                         "tokens (pretokenize) and merge inside each pre-token"),
}

# ------------------------------------------------------------------ known bugs: decoding


def decode_per_token(ids, vocab):
    return call_decode(lambda i, v: "".join(v[k].decode("utf-8", errors="replace") for k in i), ids, vocab)


def decode_ignoring_errors(ids, vocab):
    return call_decode(lambda i, v: b"".join(v[k] for k in i).decode("utf-8", errors="ignore"), ids, vocab)


DECODE_BUGS = {
    "per_token": (f"{_HERE}.decode_per_token",
                  "you decoded each token on its own; a character's UTF-8 bytes can be split over "
                  "several tokens, so join all the bytes first and decode once"),
    "ignore": (f"{_HERE}.decode_ignoring_errors",
               "you dropped the bytes that are not valid UTF-8 (errors=\"ignore\"); they must show as "
               "U+FFFD, the replacement character (errors=\"replace\")"),
}

# ------------------------------------------------------------------------------ cases


def _specials(tokens: list[str]):
    return tokens_to_array(tokens) if tokens else tokens_to_array([]).reshape(0, 1)


def train_case(text: str, n_merges: int, special_tokens: list[str], kind: str, name: str) -> CaseSpec:
    return CaseSpec(make=lambda: {"text": text_to_array(text), "n_merges": n_merges,
                                  "special_tokens": _specials(special_tokens)},
                    meta={"text": name, "n_merges": n_merges, "special_tokens": special_tokens}, kind=kind)


def _trained(corpus: str, n_merges: int, special_tokens: list[str]):
    counts = count_pretokens_in_text(corpus, special_tokens)
    return learn_merges(counts, 256 + len(special_tokens) + n_merges, special_tokens, progress=False)


def encode_case(text: str, corpus: str, n_merges: int, special_tokens: list[str], kind: str, name: str) -> CaseSpec:
    """Encode ``text`` with the vocabulary and merges genlab learns from ``corpus``."""

    def make():
        vocab, merges = _trained(corpus, n_merges, special_tokens)
        return {"text": text_to_array(text), "vocab": vocab_to_array(vocab), "merges": merges_to_array(merges),
                "special_tokens": _specials(special_tokens)}

    return CaseSpec(make=make, meta={"text": name, "n_merges": n_merges, "special_tokens": special_tokens},
                    kind=kind)


def decode_case(text: str, corpus: str, n_merges: int, special_tokens: list[str], kind: str, name: str,
                drop_last: int = 0) -> CaseSpec:
    """Decode the ids of ``text`` (as genlab encodes it), without its last ``drop_last`` ids."""

    def make():
        vocab, merges = _trained(corpus, n_merges, special_tokens)
        ids = BPETokenizer(vocab, merges, special_tokens).encode(text)
        return {"ids": torch.tensor(ids[:len(ids) - drop_last], dtype=torch.long), "vocab": vocab_to_array(vocab)}

    meta = {"text": name, "n_merges": n_merges} | ({"ids": f"all but the last {drop_last}"} if drop_last else {})
    return CaseSpec(make=make, meta=meta, kind=kind)


# ------------------------------------------------------------------------------ checks

# genlab's tokenizer, whole and in parts, and Hugging Face's (a Rust library: the source check
# sees its names)
TOKENIZER_CALLS = ("genlab.tokenizers.learn_merges", "genlab.tokenizers.train_bpe",
                   "genlab.tokenizers.count_pretokens", "genlab.tokenizers.count_pretokens_in_text",
                   "genlab.tokenizers.BPETokenizer", "tokenizers.Tokenizer", "tokenizers.models.BPE",
                   "tokenizers.trainers.BpeTrainer")


def _per_function(cell: str, reference: str, output: str, bugs: dict) -> dict:
    return dict(cell=cell, reference=f"{_HERE}.{reference}", dtype="int64", compare="property:tokenizer.exact",
                outputs=(output,), forbidden=TOKENIZER_CALLS, bugs=bugs,
                params={"output": output, "bugs": {bug: message for bug, (_, message) in bugs.items()}})


PER_FUNCTION = {
    "train_merges_on_arrays": _per_function("test_train_merges", "reference_train_merges", "merges", TRAIN_BUGS),
    "encode_on_arrays": _per_function("test_encode", "reference_encode", "ids", ENCODE_BUGS),
    "decode_on_arrays": _per_function("test_decode", "reference_decode", "text", DECODE_BUGS),
}

check = check_maker(PER_FUNCTION)

SPEC = Assignment(
    name="06_tokenizer",
    notebook="tokenizer.ipynb",
    notebook_uses=("genlab.tokenizers.BPETokenizer",),  # the notebook compares with it, outside the functions
    checks=[
        # --- training
        check("train_merges", "train_merges_on_arrays", True,
              [train_case(TOY, 12, [], "", "toy"), train_case(ENGLISH, 40, [], "", "english")],
              "the merge loop on a toy text (ties decide) and an English paragraph", points=2),
        check("train_merges.special_tokens", "train_merges_on_arrays", True,
              [train_case(SPECIAL_TEXT, 30, SPECIALS, "special_tokens", "documents")],
              "special tokens cut out before pre-tokenization, never merged"),
        check("train_merges.unicode", "train_merges_on_arrays", True,
              [train_case(UNICODE, 40, [], "unicode", "unicode"), train_case(RUNS_OUT, 10, [], "runs_out", "aaab")],
              "accents, CJK, emoji and combining marks (bytes, not characters); a text that runs out of pairs"),
        check("train_merges.hidden", "train_merges_on_arrays", False,
              [train_case(ENGLISH_OTHER, 50, [], "", "baking"), train_case(CODE_OTHER, 40, [], "", "other code"),
               train_case(UNICODE_OTHER, 50, [], "unicode", "greek-russian-korean"),
               train_case(SPECIAL_TEXT_OTHER, 25, SPECIALS_OTHER, "special_tokens", "dialogue"),
               train_case(RUNS_OUT_OTHER, 9, [], "runs_out", "xyz")],
              "other texts of every kind: prose, code, other scripts, other special tokens", points=3),
        # --- encoding
        check("encode", "encode_on_arrays", True,
              # code first: a WordPiece-style longest match equals the leftmost-first slip on the
              # English case, and differs from every other slip only on the code
              [encode_case(CODE[40:], CODE, 40, [], "", "code"),
               encode_case(ENGLISH_SENTENCE, ENGLISH, 60, [], "", "english")],
              "merges applied by rank, inside each pre-token", points=2),
        check("encode.special_tokens", "encode_on_arrays", True,
              [encode_case(SPECIAL_TEXT.replace("first", "last"), SPECIAL_TEXT, 30, SPECIALS, "special_tokens",
                           "documents"),
               encode_case(OVERLAPPING_TEXT, OVERLAPPING_TEXT, 8, OVERLAPPING, "special_tokens", "overlapping")],
              "special tokens back to back, and one the prefix of another (the longest wins)"),
        check("encode.unicode", "encode_on_arrays", True,
              [encode_case(UNICODE_SENTENCE, UNICODE, 40, [], "unicode", "unicode")],
              "accents, CJK, emoji and combining marks, some never seen in training (single bytes)"),
        check("encode.hidden", "encode_on_arrays", False,
              [encode_case(ENGLISH_OTHER[:120], ENGLISH_OTHER, 50, [], "", "baking"),
               encode_case(CODE_OTHER[30:], CODE_OTHER, 40, [], "", "other code"),
               encode_case(UNICODE_OTHER[::-1][:60], UNICODE_OTHER, 50, [], "unicode", "greek-russian-korean"),
               encode_case(SPECIAL_TEXT_OTHER, SPECIAL_TEXT_OTHER, 25, SPECIALS_OTHER, "special_tokens",
                           "dialogue"),
               encode_case(OVERLAPPING_TEXT_OTHER, OVERLAPPING_TEXT_OTHER, 6, OVERLAPPING_OTHER,
                           "special_tokens", "overlapping")],
              "other texts and vocabularies of every kind", points=3),
        # --- decoding
        check("decode", "decode_on_arrays", True,
              [decode_case(ENGLISH_SENTENCE, ENGLISH, 60, [], "", "english"),
               decode_case(SPECIAL_TEXT, SPECIAL_TEXT, 30, SPECIALS, "special_tokens", "documents"),
               decode_case(UNICODE_SENTENCE, ENGLISH, 60, [], "unicode", "unicode")],
              "ids back to text: special tokens, characters split over several tokens"),
        check("decode.invalid_utf8", "decode_on_arrays", True,
              [decode_case(UNICODE_SENTENCE, ENGLISH, 60, [], "invalid_utf8", "unicode", drop_last=2)],
              "ids that end in the middle of a character: U+FFFD, never an error"),
        check("decode.hidden", "decode_on_arrays", False,
              [decode_case(ENGLISH_OTHER, ENGLISH_OTHER, 50, [], "", "baking"),
               decode_case(SPECIAL_TEXT_OTHER, SPECIAL_TEXT_OTHER, 25, SPECIALS_OTHER, "special_tokens",
                           "dialogue"),
               decode_case(UNICODE_OTHER, UNICODE, 40, [], "unicode", "greek-russian-korean"),
               decode_case(UNICODE_OTHER, ENGLISH, 60, [], "invalid_utf8", "greek-russian-korean", drop_last=1)],
              "other texts of every kind", points=2),
    ],
    samples={
        # solved: the solution cells (by grade_id) that carry the solution; the rest stay blank.
        # lost: the checks it must fail ("all" for every one); it scores all other points.
        "solution": {"solved": "all", "lost": []},
        "blank": {"solved": [], "lost": "all"},
        "partial": {"solved": ["helpers", "train_merges"],
                    "lost": ["encode", "encode.special_tokens", "encode.unicode", "encode.hidden",
                             "decode", "decode.invalid_utf8", "decode.hidden"]},
        # the classic tie slip: max over the counts takes the first pair seen among the most frequent
        "tie_first_seen": {"solved": "all",
                           "lost": ["train_merges", "train_merges.special_tokens", "train_merges.unicode",
                                    "train_merges.hidden"],
                           "edit": {"train_merges": ["key=lambda pair: (frequency[pair], pair))",
                                                     "key=frequency.get)"]}},
        # encoding merges the leftmost mergeable pair, not the one of lowest rank
        "leftmost_merge": {"solved": "all", "lost": ["encode"],
                           "edit": {"encode": ["min(mergeable, key=ranks.get)", "mergeable[0]"]}},
        # special tokens left in the text that is pre-tokenized
        "specials_not_split": {"solved": "all", "lost": ["encode.special_tokens", "encode.hidden"],
                               "edit": {"encode": ["split_at_special_tokens(text, special_tokens)",
                                                   "split_at_special_tokens(text, [])"]}},
        # each token decoded on its own: characters split over tokens break
        "decode_per_token": {"solved": "all", "lost": ["decode", "decode.invalid_utf8", "decode.hidden"],
                             "edit": {"decode": ['b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")',
                                                 '"".join(vocab[i].decode("utf-8", errors="replace") for i in ids)']}},
    },
)
