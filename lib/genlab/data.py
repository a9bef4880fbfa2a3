"""Data for the course: a synthetic language with a known optimum, and real text.

Two kinds of data live here.

**A hidden Markov model language** (``HMMLanguage``).  A hidden state
``z_t`` walks through ``n_states`` states with a transition matrix; each state
emits a visible symbol ``x_t`` from its own emission distribution.  Because the
generating process is known, the *best possible* scores of any model are known
too, and computed exactly with the forward-backward algorithm:

- ``next_token_loss``: the Bayes-optimal cross-entropy of a causal LM (GPT);
- ``masked_token_posteriors`` / ``bayes_masked_accuracy`` /
  ``bayes_masked_loss``: the Bayes-optimal predictions of a masked LM (BERT).

A trained model can only come close to these numbers from above (loss) or below
(accuracy, in expectation); the gap is what the model has still to learn.

**A real English corpus without download** (``stdlib_docstrings``): the
docstrings of Python's standard library, read with ``ast``, plus two small
tokenizers (``CharTokenizer``, ``WordTokenizer``) and ``lm_batches`` to cut
random training blocks for a causal LM.

Token ids follow one layout everywhere (``Vocab``): the special tokens
``[PAD]=0, [CLS]=1, [SEP]=2, [MASK]=3, [UNK]=4`` first, then the real tokens.
Every random choice takes a seed or a ``torch.Generator``.
"""

from __future__ import annotations

import ast
import collections
import functools
import json
import os
import re
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "SPECIAL_TOKENS",
    "PAD_ID",
    "CLS_ID",
    "SEP_ID",
    "MASK_ID",
    "UNK_ID",
    "Vocab",
    "HMMLanguage",
    "stdlib_docstrings",
    "CharTokenizer",
    "WordTokenizer",
    "lm_batches",
]

# ---------------------------------------------------------------------------
# Vocabulary layout shared by the HMM language and the tokenizers
# ---------------------------------------------------------------------------

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID = range(len(SPECIAL_TOKENS))


class Vocab:
    """An ordered list of token strings: the special tokens first, then ``tokens``.

    ``Vocab(["a", "b"])`` has ids ``[PAD]=0 .. [UNK]=4, a=5, b=6``.  The ids of
    the special tokens are the module constants ``PAD_ID`` .. ``UNK_ID``.
    """

    n_special = len(SPECIAL_TOKENS)
    pad_id, cls_id, sep_id, mask_id, unk_id = PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID

    def __init__(self, tokens):
        tokens = list(tokens)
        clashes = sorted(set(tokens) & set(SPECIAL_TOKENS))
        if clashes:
            raise ValueError(f"Vocab tokens may not repeat the special tokens: {clashes}")
        if len(set(tokens)) != len(tokens):
            duplicates = sorted(t for t, n in collections.Counter(tokens).items() if n > 1)
            raise ValueError(f"Vocab tokens must be unique, duplicates: {duplicates[:5]}")
        self.itos = list(SPECIAL_TOKENS) + tokens  # id -> token string
        self.stoi = {token: i for i, token in enumerate(self.itos)}  # token string -> id

    @classmethod
    def for_hmm(cls, n_symbols: int) -> "Vocab":
        """Token ids for HMM symbols: symbol ``k`` is token ``"s{k}"`` with id ``k + 5``."""
        return cls(f"s{k}" for k in range(n_symbols))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, tokens={self.itos[self.n_special:self.n_special + 8]}...)"

    def token_to_id(self, token: str) -> int:
        """Id of ``token``; ``UNK_ID`` when it is not in the vocabulary."""
        return self.stoi.get(token, UNK_ID)

    def id_to_token(self, token_id: int) -> str:
        return self.itos[token_id]

    def symbols_to_ids(self, symbols: torch.Tensor) -> torch.Tensor:
        """HMM symbols 0..n_symbols-1 -> token ids (shifted past the special tokens)."""
        n_symbols = len(self) - self.n_special
        if symbols.numel() and (symbols.min() < 0 or symbols.max() >= n_symbols):
            raise ValueError(f"symbols must lie in 0..{n_symbols - 1}")
        return symbols + self.n_special

    def ids_to_symbols(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> HMM symbols; raises if any id is a special token."""
        if ids.numel() and (ids.min() < self.n_special or ids.max() >= len(self)):
            raise ValueError(
                f"ids_to_symbols expects symbol ids {self.n_special}..{len(self) - 1}; "
                "special tokens ([PAD], [MASK], ...) have no symbol"
            )
        return ids - self.n_special


# ---------------------------------------------------------------------------
# A hidden Markov model language with exact Bayes-optimal scores
# ---------------------------------------------------------------------------


def _dirichlet_rows(rng: np.random.Generator, support: np.ndarray, concentration: float,
                    floor: float) -> torch.Tensor:
    """Float64 rows with Dirichlet(concentration) weights on the True entries of the bool
    ``support`` (R, C) and zero elsewhere, then mixed with a uniform ``floor`` so that
    every probability is positive (every sequence stays possible)."""
    n_rows, n_cols = support.shape
    rows = np.zeros((n_rows, n_cols))  # (R, C)
    for row, allowed in zip(rows, support):
        row[allowed] = rng.dirichlet(np.full(allowed.sum(), concentration))
    rows = (1.0 - floor) * rows + floor / n_cols
    return torch.from_numpy(rows / rows.sum(axis=1, keepdims=True))


def _as_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if (generator is None) == (seed is None):
        raise ValueError("pass exactly one of generator= or seed=")
    return generator if generator is not None else torch.Generator().manual_seed(seed)


class HMMLanguage:
    """A seeded hidden Markov model over ``n_symbols`` visible symbols.

    Parameters (all float64 tensors, rows sum to 1):

    - ``start_probs``  (S,)    P(z_0 = s)
    - ``transition``   (S, S)  transition[i, j] = P(z_{t+1} = j | z_t = i)
    - ``emission``     (S, V)  emission[s, v]   = P(x_t = v | z_t = s)

    The structure makes the language learnable yet not trivial:

    - **sparse transitions**: each state moves to only ``n_successors``
      states: its successor on a random cycle through all states (so every
      state is reachable) and ``n_successors - 1`` others drawn at random
      (itself allowed);
    - **overlapping emissions**: the symbols are shuffled onto a ring and
      state ``s`` emits from a window of ``symbols_per_state`` consecutive
      symbols starting at ``s * n_symbols // n_states``.  When the windows
      are wider than ``n_symbols / n_states`` neighbouring states share
      symbols, so a symbol does not reveal its state: the best prediction
      needs the whole context, to the left (GPT) or on both sides (BERT);
    - the weights on the allowed entries are Dirichlet(``concentration``)
      (start probabilities: Dirichlet(1) over all states), then mixed with a
      uniform ``floor`` so that no probability is exactly 0.

    With the defaults (8 states, 24 symbols; seeds 0-4) the optimal
    next-token loss is about 1.9-2.1 nats, against 2.2-2.3 for a bigram model
    fitted on plenty of samples and 2.7-3.0 for the unigram entropy (log 24 =
    3.18 for uniform guessing); the optimal masked-token accuracy at 15%
    masking is about 0.36-0.43.  ``n_successors`` and ``symbols_per_state`` are
    capped at ``n_states`` and ``n_symbols``.

    All exact computations run on CPU in float64 and return CPU tensors.
    """

    def __init__(self, n_states: int = 8, n_symbols: int = 24, seed: int = 0,
                 concentration: float = 1.0, n_successors: int = 2,
                 symbols_per_state: int = 6, floor: float = 1e-3):
        if n_states < 1 or n_symbols < 2 or n_successors < 1 or symbols_per_state < 1:
            raise ValueError("need n_states >= 1, n_symbols >= 2, n_successors >= 1 and "
                             f"symbols_per_state >= 1, got {n_states}, {n_symbols}, "
                             f"{n_successors}, {symbols_per_state}")
        self.n_states, self.n_symbols, self.seed = n_states, n_symbols, seed
        S, V = n_states, n_symbols
        rng = np.random.default_rng(seed)

        cycle = rng.permutation(S)  # cycle[k] -> cycle[k + 1]: every state reachable
        successors = np.zeros((S, S), dtype=bool)  # (S, S) allowed transitions
        successors[cycle, np.roll(cycle, -1)] = True
        n_extra = min(n_successors, S) - 1
        for state in range(S):
            others = np.flatnonzero(~successors[state])
            successors[state, rng.choice(others, size=n_extra, replace=False)] = True

        ring = rng.permutation(V)  # symbols in ring order
        window = min(symbols_per_state, V)
        emits = np.zeros((S, V), dtype=bool)  # (S, V) allowed emissions
        for state in range(S):
            first = state * V // S
            emits[state, ring[(first + np.arange(window)) % V]] = True

        self.start_probs = _dirichlet_rows(rng, np.ones((1, S), dtype=bool), 1.0, floor)[0]  # (S,)
        self.transition = _dirichlet_rows(rng, successors, concentration, floor)  # (S, S)
        self.emission = _dirichlet_rows(rng, emits, concentration, floor)  # (S, V)

    def __repr__(self) -> str:
        return f"HMMLanguage(n_states={self.n_states}, n_symbols={self.n_symbols}, seed={self.seed})"

    @property
    def vocab(self) -> Vocab:
        """Token layout for BERT/GPT: specials first, symbol k -> id k + 5."""
        return Vocab.for_hmm(self.n_symbols)

    # -- sampling ------------------------------------------------------------

    def sample(self, n_sequences: int, length: int, generator: torch.Generator | None = None,
               seed: int | None = None) -> torch.Tensor:
        """LongTensor (N, L) of symbols 0..n_symbols-1; pass ``generator`` or ``seed``."""
        generator = _as_generator(generator, seed)
        start = self.start_probs.expand(n_sequences, -1)  # (N, S)
        states = torch.multinomial(start, 1, generator=generator)[:, 0]  # (N,)
        symbols = []
        for t in range(length):
            if t > 0:
                states = torch.multinomial(self.transition[states], 1, generator=generator)[:, 0]
            emitted = torch.multinomial(self.emission[states], 1, generator=generator)[:, 0]  # (N,)
            symbols.append(emitted)
        if not symbols:
            return torch.empty(n_sequences, 0, dtype=torch.long)
        return torch.stack(symbols, dim=1)  # (N, L)

    # -- forward-backward on sequences with possibly missing observations -----

    def _check_sequences(self, sequences: torch.Tensor) -> torch.Tensor:
        sequences = torch.as_tensor(sequences).detach().cpu().long()
        if sequences.dim() == 1:
            sequences = sequences[None]
        if sequences.dim() != 2 or sequences.size(1) == 0:
            raise ValueError(f"sequences must have shape (N, L) with L >= 1, got {tuple(sequences.shape)}")
        if sequences.min() < 0 or sequences.max() >= self.n_symbols:
            raise ValueError(
                f"sequences must hold HMM symbols 0..{self.n_symbols - 1} "
                "(convert token ids with Vocab.ids_to_symbols)"
            )
        return sequences

    def _likelihoods(self, sequences: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """(N, L, S): P(x_t | z_t = s) where observed, 1 where missing (masked)."""
        likelihoods = self.emission.T[sequences]  # (N, L, S)
        return torch.where(observed[..., None], likelihoods, torch.ones_like(likelihoods))

    def _forward(self, likelihoods: torch.Tensor):
        """Scaled forward pass.

        Returns ``filtered`` (N, L, S) = P(z_t | observations up to t) and
        ``scales`` (N, L) = P(x_t | observations before t), the normaliser of
        each step (exactly 1 at a missing position).
        """
        N, L, S = likelihoods.shape
        predicted = self.start_probs.expand(N, S)  # (N, S) P(z_t | x_<t)
        filtered, scales = [], []
        for t in range(L):
            joint = predicted * likelihoods[:, t]  # (N, S) P(z_t, x_t | x_<t)
            scale = joint.sum(dim=1)  # (N,)   P(x_t | x_<t)
            filtered.append(joint / scale[:, None])  # (N, S) P(z_t | x_<=t)
            scales.append(scale)
            predicted = filtered[-1] @ self.transition  # (N, S) P(z_{t+1} | x_<=t)
        return torch.stack(filtered, dim=1), torch.stack(scales, dim=1)

    def _backward(self, likelihoods: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """(N, L, S) scaled backward messages: P(x_>t | z_t) / P(x_>t | x_<=t)."""
        N, L, S = likelihoods.shape
        message = torch.ones(N, S, dtype=torch.float64)  # (N, S) nothing after the end
        messages = [message]
        for t in range(L - 1, 0, -1):
            message = (likelihoods[:, t] * message) @ self.transition.T / scales[:, t, None]
            messages.append(message)
        return torch.stack(messages[::-1], dim=1)  # (N, L, S)

    # -- causal LM (GPT): next-token prediction ---------------------------------

    def next_token_log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        """(N, L) float64: log P(x_t | x_<t) for every position (t = 0: log P(x_0))."""
        sequences = self._check_sequences(sequences)
        observed = torch.ones_like(sequences, dtype=torch.bool)
        _, scales = self._forward(self._likelihoods(sequences, observed))
        return scales.log()  # (N, L)

    def next_token_loss(self, sequences: torch.Tensor, include_first: bool = False) -> float:
        """Bayes-optimal next-token cross-entropy in nats, averaged over positions.

        Default: the mean of ``-log P(x_t | x_<t)`` over positions
        ``t = 1 .. L-1`` of every sequence: exactly the positions a causal LM
        trained with the shifted loss (``logits[:, :-1]`` against
        ``tokens[:, 1:]``) is scored on.  ``include_first=True`` also averages
        ``-log P(x_0)`` (a model with a BOS token predicts that too).
        """
        log_probs = self.next_token_log_probs(sequences)  # (N, L)
        scored = log_probs if include_first else log_probs[:, 1:]
        if scored.numel() == 0:
            raise ValueError("next_token_loss needs sequences of length >= 2")
        return float(-scored.mean())

    # -- masked LM (BERT): predicting hidden tokens from both sides -----------

    def masked_token_posteriors(self, sequences: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, L, n_symbols) float64: P(x_t = v | every unmasked token of the sequence).

        ``mask`` is bool (N, L) or (L,), **True = masked** (hidden from the
        model), as BERT's masked positions.  A masked position is a missing
        observation: its emission likelihood is 1 and its true symbol is never
        used.  The posterior of a masked token is ``sum_s P(z_t = s | unmasked)
        * emission[s, v]`` with the state posterior from forward-backward.  At
        unmasked positions the token is known: the row is one-hot on it.

        This is the optimum for inputs where every masked position shows
        ``[MASK]``; BERT's 10% random / 10% unchanged corruption shows other
        tokens there, so evaluate models with all selected positions masked.
        """
        sequences = self._check_sequences(sequences)
        masked = torch.as_tensor(mask).cpu().bool().expand_as(sequences)  # (N, L)
        likelihoods = self._likelihoods(sequences, ~masked)  # (N, L, S)
        filtered, scales = self._forward(likelihoods)
        backward = self._backward(likelihoods, scales)
        state_posterior = filtered * backward  # (N, L, S) P(z_t | unmasked tokens)
        state_posterior = state_posterior / state_posterior.sum(dim=-1, keepdim=True)
        symbol_posterior = state_posterior @ self.emission  # (N, L, V)
        known = torch.nn.functional.one_hot(sequences, self.n_symbols).double()  # (N, L, V)
        return torch.where(masked[..., None], symbol_posterior, known)

    def _masked_scores(self, sequences, mask):
        """Posteriors at the masked positions (M, V) and the true symbols there (M,)."""
        sequences = self._check_sequences(sequences)
        masked = torch.as_tensor(mask).cpu().bool().expand_as(sequences)
        if not bool(masked.any()):
            raise ValueError("mask selects no position (True = masked)")
        posteriors = self.masked_token_posteriors(sequences, masked)  # (N, L, V)
        return posteriors[masked], sequences[masked]  # (M, V), (M,)

    def bayes_masked_accuracy(self, sequences: torch.Tensor, mask: torch.Tensor) -> dict:
        """Bayes-optimal masked-token accuracy over the masked positions.

        ``accuracy``: fraction of masked positions whose most probable symbol
        is the true one (what the optimal model scores on these samples).
        ``expected_accuracy``: mean of the largest posterior probability (its
        expectation over the language; less noisy than ``accuracy``).
        """
        posteriors, truth = self._masked_scores(sequences, mask)
        best_prob, best_symbol = posteriors.max(dim=-1)  # (M,), (M,)
        return {
            "accuracy": float((best_symbol == truth).double().mean()),
            "expected_accuracy": float(best_prob.mean()),
        }

    def bayes_masked_loss(self, sequences: torch.Tensor, mask: torch.Tensor) -> float:
        """Bayes-optimal masked-LM cross-entropy: mean -log P(true symbol | unmasked), nats."""
        posteriors, truth = self._masked_scores(sequences, mask)
        return float(-posteriors.gather(1, truth[:, None]).log().mean())

    # -- reference numbers ------------------------------------------------------

    def stationary_distribution(self) -> torch.Tensor:
        """(S,) the state distribution pi with pi @ transition = pi."""
        eigenvalues, eigenvectors = torch.linalg.eig(self.transition.T)
        closest_to_one = torch.argmin((eigenvalues - 1).abs())
        pi = eigenvectors[:, closest_to_one].real  # (S,)
        return pi / pi.sum()

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the stationary symbol distribution: the loss of the best
        model that ignores context."""
        symbol_probs = self.stationary_distribution() @ self.emission  # (V,)
        return float(-(symbol_probs * symbol_probs.log()).sum())

    def entropy_rate(self, n_sequences: int = 256, length: int = 512, seed: int = 0) -> float:
        """Monte-Carlo estimate (nats/symbol) of the entropy rate: the optimal loss with
        unlimited context, from the second half of long sampled sequences."""
        sequences = self.sample(n_sequences, length, seed=seed)
        log_probs = self.next_token_log_probs(sequences)  # (N, L)
        return float(-log_probs[:, length // 2:].mean())


# ---------------------------------------------------------------------------
# A real English corpus: the standard library's docstrings
# ---------------------------------------------------------------------------

_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_DOCUMENTED_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _stdlib_sources(root: Path) -> list[Path]:
    """Sorted .py files under ``root``, skipping test directories and installed packages."""
    sources = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in _SKIPPED_DIRS]
        sources.extend(Path(folder) / name for name in files if name.endswith(".py"))
    return sorted(sources)


def stdlib_docstrings(max_files: int | None = None) -> list[str]:
    """Docstrings of Python's standard library, in a deterministic order.

    Reads the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (sorted
    paths; ``test``/``tests``/``idle_test`` directories and
    ``site-packages`` skipped) with ``ast``: nothing is imported or executed.
    Files that fail to parse are skipped.  Within a file, docstrings come in
    ``ast.walk`` order (module, then classes and functions), cleaned with
    ``ast.get_docstring``; empty ones are dropped.  ``max_files`` limits how
    many files are read (the first ones in sorted order).  The result is
    cached per process (parsing the whole library takes a few seconds); each
    call returns a fresh list.
    """
    return list(_read_stdlib_docstrings(max_files))


@functools.lru_cache(maxsize=4)
def _read_stdlib_docstrings(max_files: int | None) -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = _stdlib_sources(root)[:max_files]
    docstrings = []
    for path in sources:
        try:
            with warnings.catch_warnings():  # e.g. SyntaxWarning for odd escapes
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError, RecursionError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, _DOCUMENTED_NODES):
                docstring = ast.get_docstring(node, clean=True)
                if docstring and docstring.strip():
                    docstrings.append(docstring)
    return tuple(docstrings)


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------


class _Tokenizer:
    """Shared machinery: a ``Vocab`` fitted by frequency, encode/decode, JSON."""

    kind = ""  # set by subclasses; stored in JSON

    def __init__(self, vocab: Vocab | None = None):
        self.vocab = vocab if vocab is not None else Vocab([])

    # subclasses define how text is cut into units and glued back
    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def join(self, units: list[str]) -> str:
        raise NotImplementedError

    def normalize(self, text: str) -> str:
        """What ``decode(encode(text))`` returns when every unit of ``text`` is in vocab."""
        return self.join(self.split(text))

    def fit(self, texts, max_vocab: int | None = None, min_freq: int = 1):
        """Keep the units seen at least ``min_freq`` times, the most frequent first
        (ties by string order), at most ``max_vocab`` ids in all (specials
        included).  Returns ``self``."""
        if isinstance(texts, str):
            texts = [texts]
        counts = collections.Counter(unit for text in texts for unit in self.split(text))
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        ranked = sorted((u for u, n in counts.items() if n >= min_freq), key=lambda u: (-counts[u], u))
        if max_vocab is not None:
            if max_vocab < len(SPECIAL_TOKENS):
                raise ValueError(f"max_vocab must be >= {len(SPECIAL_TOKENS)} (the special tokens)")
            ranked = ranked[: max_vocab - len(SPECIAL_TOKENS)]
        self.vocab = Vocab(ranked)
        return self

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids; units outside the vocabulary become ``UNK_ID``."""
        return [self.vocab.token_to_id(unit) for unit in self.split(text)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text from ids (list, or a 1-D tensor); special tokens decode to
        their names (``"[MASK]"``) unless ``skip_special_tokens``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        units = [self.vocab.id_to_token(int(i)) for i in ids
                 if not (skip_special_tokens and int(i) < Vocab.n_special)]
        return self.join(units)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": self.vocab.itos[Vocab.n_special:], **self._options()}

    def _options(self) -> dict:
        return {}

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path) -> "_Tokenizer":
        """Load a tokenizer saved by ``save`` (of this class)."""
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        if state.pop("kind") != cls.kind:
            raise ValueError(f"{path} does not hold a {cls.__name__}")
        tokens = state.pop("tokens")
        tokenizer = cls(**state)
        tokenizer.vocab = Vocab(tokens)
        return tokenizer


class CharTokenizer(_Tokenizer):
    """One token per character.

    Round trip: ``decode(encode(text)) == text`` exactly for any text whose
    characters were all seen in ``fit`` (within the vocabulary cap); unseen
    characters become ``[UNK]``.
    """

    kind = "char"

    def split(self, text: str) -> list[str]:
        return list(text)

    def join(self, units: list[str]) -> str:
        return "".join(units)


class WordTokenizer(_Tokenizer):
    r"""Words and punctuation marks, split by the regex ``\w+|[^\w\s]``.

    A word is a run of letters, digits and underscores; every other visible
    character is a token of its own; whitespace only separates tokens (the
    special tokens ``[MASK]`` etc. are recognised as single tokens).

    Decoding puts one space between tokens, except none before a closing
    mark ``. , ; : ! ? ) ] } %`` and none after an opening bracket ``( [ {``.
    ``normalize(text)`` applies exactly these rules (and lowercasing when
    ``lowercase=True``), so for text whose tokens are all in the vocabulary

        decode(encode(text)) == normalize(text),

    and ``decode(encode(text)) == text`` when ``text`` is already normalized,
    e.g. ``"Return the value (an int), or None."``.
    """

    kind = "word"
    _pattern = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)) + r"|\w+|[^\w\s]")
    _no_space_before = frozenset(".,;:!?)]}%")
    _no_space_after = frozenset("([{")

    def __init__(self, vocab: Vocab | None = None, lowercase: bool = False):
        super().__init__(vocab)
        self.lowercase = lowercase

    def _options(self) -> dict:
        return {"lowercase": self.lowercase}

    def split(self, text: str) -> list[str]:
        units = self._pattern.findall(text)
        if self.lowercase:
            units = [u if u in SPECIAL_TOKENS else u.lower() for u in units]
        return units

    def join(self, units: list[str]) -> str:
        pieces = []
        for previous, unit in zip([None] + units[:-1], units):
            glued = previous is None or unit in self._no_space_before or previous in self._no_space_after
            pieces.append(unit if glued else " " + unit)
        return "".join(pieces)


# ---------------------------------------------------------------------------
# Batches for causal language modelling
# ---------------------------------------------------------------------------


def lm_batches(tokens: torch.Tensor, batch_size: int, block_size: int,
               generator: torch.Generator):
    """Random contiguous blocks for causal LM training: ``(inputs, targets)``, each
    LongTensor (batch_size, block_size).  ``targets`` is ``inputs`` shifted by
    one position in the source: ``targets[:, i]`` is the token after ``inputs[:, i]``.

    ``tokens`` is one long stream (T,) or a set of sequences (N, L); a block
    never crosses from one sequence into the next.  Each block picks its row and
    start uniformly with ``generator`` (a CPU ``torch.Generator``).  The blocks
    live on ``tokens``' device.
    """
    rows_of_tokens = tokens[None] if tokens.dim() == 1 else tokens  # (N, L)
    if rows_of_tokens.dim() != 2:
        raise ValueError(f"tokens must be 1-D or (N, L), got shape {tuple(tokens.shape)}")
    n_rows, length = rows_of_tokens.shape
    n_starts = length - block_size  # a block plus its next token needs block_size + 1 tokens
    if n_starts < 1:
        raise ValueError(f"sequences of length {length} are too short for block_size={block_size} "
                         f"(need at least block_size + 1 = {block_size + 1} tokens)")
    rows = torch.randint(n_rows, (batch_size,), generator=generator)  # (B,)
    starts = torch.randint(n_starts, (batch_size,), generator=generator)  # (B,)
    positions = starts[:, None] + torch.arange(block_size + 1)  # (B, block_size + 1)
    device = rows_of_tokens.device
    blocks = rows_of_tokens[rows[:, None].to(device), positions.to(device)]  # (B, block_size + 1)
    return blocks[:, :-1], blocks[:, 1:]
