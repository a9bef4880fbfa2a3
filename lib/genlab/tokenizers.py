"""Byte-level byte-pair encoding (BPE): the tokenizer of GPT-2 and its successors.

::

    from genlab.tokenizers import BPETokenizer, train_bpe

    vocab, merges = train_bpe("corpus.txt", vocab_size=4096, special_tokens=["<|endoftext|>"])
    tokenizer = BPETokenizer(vocab, merges, special_tokens=["<|endoftext|>"])
    ids = tokenizer.encode("It's 2 o'clock.<|endoftext|>")
    tokenizer.decode(ids)                          # the same text back
    with open("big.txt", encoding="utf-8") as f:   # lazily, a line at a time
        for i in tokenizer.encode_iterable(f): ...
    tokenizer.save("vocab.json", "merges.txt")

A language model reads integer ids.  A byte-level BPE tokenizer turns text into
ids in three steps, and training learns the table used by the third:

1. **Special tokens** (``<|endoftext|>`` between documents) are cut out first.
   Each occurrence becomes its own id and never takes part in a merge.  Where
   special tokens overlap (one is a prefix of another, ``<|a|>`` and
   ``<|a|><|b|>``), the scan goes left to right and the longest match wins.
2. **Pre-tokenization** splits the rest with GPT-2's regular expression
   ``GPT2_PATTERN``: contractions (``'s``, ``'ll``), runs of letters, runs of
   digits and runs of other symbols (each with at most one leading space), and
   whitespace.  Merges never cross the boundary of a pre-token, so ``" dog"``
   and ``"."`` stay apart in ``" dog."``.
3. **Merging**: each pre-token starts as its UTF-8 bytes, one id per byte, and
   the learned merges are applied in the order they were learned (their
   *rank*): repeatedly, the adjacent pair with the lowest rank is replaced by
   the merged token, until no adjacent pair has a merge.

Training (``train_bpe``) learns the merges greedily.  Count every adjacent pair
of tokens over all pre-tokens (a pre-token seen ``n`` times counts ``n`` times;
overlapping pairs count, so ``aaa`` holds the pair ``(a, a)`` twice); merge the
most frequent pair everywhere; repeat until the vocabulary has ``vocab_size``
entries.  Among equally frequent pairs the lexicographically greatest wins,
comparing the pairs as ``(bytes, bytes)`` tuples: with this rule every correct
trainer learns the same merges from the same text.

The vocabulary's ids: ``0..255`` are the single bytes (id = byte value), the
special tokens come next in the order given, then one id per merge in the order
learned.  Should a merge make bytes that are already a token (``("ab", "c")``
after ``("a", "bc")``), it reuses that token's id, as Hugging Face's trainer
does, so that no two ids share their bytes (the vocabulary stays a bytes <-> id
map, as GPT-2's ``vocab.json`` and tiktoken need).  Training stops early, with
a smaller vocabulary, when no pair is left to merge.

Training scales to large files: pre-tokens are counted in parallel over chunks
of the file (cut at special tokens, or before a newline that follows a printable
ASCII character, places where splitting the text cannot change its
pre-tokens), and after each merge the pair counts are updated only for the
pre-tokens that contain the merged pair (an index from pair to pre-tokens), not
recounted.  A heap keyed by (count, tie rule) gives the next pair.

Files (``BPETokenizer.save`` / ``from_files``) use GPT-2's format, which Hugging
Face ``tokenizers`` also reads: ``vocab.json`` maps each token to its id and
``merges.txt`` lists one merge per line, ``"first second"``, in rank order.
Tokens are arbitrary bytes, so both files write them through GPT-2's
byte-to-unicode table (``bytes_to_unicode``): every byte becomes one printable,
non-space character (the space is ``Ġ``, the newline ``Ċ``), which makes the
files lossless, readable, and the merge lines unambiguous.  Special tokens are
written the same way (``<|endoftext|>`` is printable ASCII, unchanged).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import multiprocessing
import os
import re as std_re
from collections import Counter, defaultdict
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import regex
from tqdm import tqdm

__all__ = [
    "GPT2_PATTERN",
    "bytes_to_unicode",
    "count_pretokens",
    "count_pretokens_in_text",
    "learn_merges",
    "train_bpe",
    "BPETokenizer",
]

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PRETOKEN_RE = regex.compile(GPT2_PATTERN)

# Below this many bytes per worker, counting runs in one process (starting workers costs more).
_MIN_BYTES_PER_WORKER = 512 << 10
# The largest chunk one process decodes at once (bounds the memory of counting a large file).
_MAX_CHUNK_BYTES = 64 << 20
# How far past the wanted chunk end to look for a safe cut (bytes read at a time).
_CUT_SEARCH_WINDOW = 1 << 16
# A safe cut for pre-tokenization: a newline right after a printable ASCII character.
_NEWLINE_CUT_RE = std_re.compile(rb"(?<=[\x21-\x7e])\n")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: each of the 256 bytes maps to one printable character.

    Bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) map to themselves; the other 68 (controls, space, soft hyphen)
    map, in increasing byte order, to the characters ``chr(256)``, ``chr(257)``, ...
    So the space (byte 32) is ``Ġ`` (chr(288)) and the newline ``Ċ`` (chr(266)).
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) \
        | set(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {char: byte for byte, char in _BYTE_TO_CHAR.items()}


def _token_to_str(token: bytes) -> str:
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def _str_to_token(text: str, where: str) -> bytes:
    try:
        return bytes(_CHAR_TO_BYTE[c] for c in text)
    except KeyError as err:
        raise ValueError(f"{where}: {text!r} contains {err.args[0]!r}, which is not a character of "
                         "GPT-2's byte-to-unicode table (is this a byte-level BPE file?)") from None


def _check_special_tokens(special_tokens: Iterable[str] | None) -> list[str]:
    """The special tokens as a list; empty, repeated or non-string ones are an error."""
    if special_tokens is None:
        return []
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a list of strings, got the string {special_tokens!r}")
    tokens = list(special_tokens)
    seen: set[str] = set()
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
        if token in seen:
            raise ValueError(f"special token {token!r} is given twice")
        seen.add(token)
    return tokens


def _check_vocab_size(vocab_size: int, special_tokens: list[str]) -> None:
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} is too small: the vocabulary starts with 256 byte tokens "
                         f"and {len(special_tokens)} special token(s), so it needs at least "
                         f"{256 + len(special_tokens)}")


def _special_regex(special_tokens: list[str]) -> regex.Pattern | None:
    """One alternation of the special tokens, longest first, so that the longest match wins."""
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(t) for t in ordered))


# --------------------------------------------------------------------------------------------
# Training, part 1: count pre-tokens (in parallel over chunks of the file)
# --------------------------------------------------------------------------------------------

def _spans_a_special(data: bytes, cut: int, specials: list[bytes]) -> bool:
    """True when an occurrence of a special token starts before ``cut`` and ends after it."""
    for special in specials:
        start = data.find(special, max(0, cut - len(special) + 1))
        while start != -1 and start < cut:
            if start + len(special) > cut:
                return True
            start = data.find(special, start + 1)
    return False


def _find_cut(file, wanted: int, size: int, specials: list[bytes]) -> int:
    """The first safe cut at or after byte ``wanted`` (``size`` if there is none).

    Safe: the start of a special token, or a newline right after a printable ASCII
    character, with no special token straddling the cut.  Pre-tokenizing the two
    sides separately then gives exactly the pre-tokens of the whole (no pattern
    alternative can join a printable non-space character to a newline, and the
    special-token scan reaches the cut between two matches)."""
    longest = max((len(s) for s in specials), default=1)
    start = max(0, wanted - longest)
    while start < size:
        file.seek(start)
        data = file.read(_CUT_SEARCH_WINDOW + 2 * longest)
        candidates = [m.start() for m in _NEWLINE_CUT_RE.finditer(data)]
        for special in specials:
            at = data.find(special)
            while at != -1:
                candidates.append(at)
                at = data.find(special, at + 1)
        for cut in sorted(set(candidates)):
            # only cuts whose neighbourhood lies inside the window can be judged
            if start + cut < wanted or cut < longest or cut > len(data) - longest:
                continue
            if not _spans_a_special(data, cut, specials):
                return start + cut
        if len(data) < _CUT_SEARCH_WINDOW + 2 * longest:
            break
        start += _CUT_SEARCH_WINDOW
    return size


def _chunk_boundaries(path: Path, size: int, n_chunks: int, specials: list[bytes]) -> list[int]:
    """Byte offsets 0 = b0 < b1 < ... = size that cut the file into about ``n_chunks`` pieces."""
    cuts = [0]
    with open(path, "rb") as file:
        for k in range(1, n_chunks):
            wanted = max(size * k // n_chunks, cuts[-1] + 1)
            if wanted >= size:
                break
            cut = _find_cut(file, wanted, size, specials)
            if cut >= size:
                break
            cuts.append(cut)
    cuts.append(size)
    return cuts


def _count_chunk(task: tuple[str, int, int, list[str]]) -> Counter:
    """Pre-token counts of the bytes ``[start, end)`` of a file (run in a worker process)."""
    path, start, end, special_tokens = task
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        raise ValueError(f"{path} is not valid UTF-8: byte offset {offset} (byte 0x{data[err.start]:02x}): "
                         f"{err.reason}") from None
    return count_pretokens_in_text(text, special_tokens)


def count_pretokens_in_text(text: str, special_tokens: Iterable[str] | None = None) -> Counter:
    """How often each pre-token occurs in ``text`` (a ``str``): the text is cut at the
    special tokens (longest match first; they are not counted), each piece is pre-tokenized
    with ``GPT2_PATTERN``.  ``count_pretokens`` does this per chunk of a file."""
    special_re = _special_regex(_check_special_tokens(special_tokens))
    segments = special_re.split(text) if special_re is not None else [text]
    counts: Counter = Counter()
    for segment in segments:
        counts.update(_PRETOKEN_RE.findall(segment))
    return counts


def count_pretokens(input_path: str | os.PathLike, special_tokens: Iterable[str] | None = None, *,
                    workers: int | None = None, progress: bool = True) -> Counter:
    """How often each pre-token (a ``str``) occurs in a UTF-8 text file.

    Special tokens are cut out first and not counted.  The file is read in
    chunks of at most 64 MiB; with ``workers > 1``, the chunks are counted in
    parallel processes (``workers=None``: one per CPU core), as many as the
    file has half-MiBs.  The counts are the same either way.
    A file that is not UTF-8 is a ``ValueError`` naming the file and the byte
    offset of the first bad byte.
    """
    path = Path(input_path)
    special_tokens = _check_special_tokens(special_tokens)
    size = path.stat().st_size
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(workers, size // _MIN_BYTES_PER_WORKER))
    specials = [t.encode("utf-8") for t in special_tokens]
    # several chunks per worker: even load, and a progress bar that moves
    n_chunks = max(4 * workers if workers > 1 else 1, -(-size // _MAX_CHUNK_BYTES))
    boundaries = _chunk_boundaries(path, size, n_chunks, specials) if n_chunks > 1 else [0, size]
    tasks = [(str(path), a, b, special_tokens) for a, b in zip(boundaries, boundaries[1:])]
    counts: Counter = Counter()
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(tasks) > 1:  # workers first: no progress-bar thread when forking
            pool = stack.enter_context(multiprocessing.get_context().Pool(workers))
            results = pool.imap(_count_chunk, tasks)  # in file order: the first bad byte is reported
        else:
            results = map(_count_chunk, tasks)
        bar = stack.enter_context(tqdm(total=size, unit="B", unit_scale=True, desc="pre-tokenizing",
                                       disable=not progress))
        for (_, a, b, _), chunk_counts in zip(tasks, results):
            counts.update(chunk_counts)
            bar.update(b - a)
    return counts


# --------------------------------------------------------------------------------------------
# Training, part 2: the merge loop with incremental pair counts
# --------------------------------------------------------------------------------------------

def _descending_key(token: bytes) -> str:
    """A string whose ascending order is the descending lexicographic order of ``token``.

    Each byte b becomes chr(256 - b) and a terminator chr(257) follows, larger
    than every such character, so that a longer token sorts before its prefix
    (``b"ab" > b"a"``).  Heap entries ``(-count, key(a), key(b))`` then pop the
    most frequent pair first and, among ties, the greatest ``(a, b)``."""
    return "".join(chr(256 - b) for b in token) + chr(257)


def learn_merges(pretoken_counts: dict[str, int], vocab_size: int,
                 special_tokens: Iterable[str] | None = None, *,
                 progress: bool = True) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """The BPE merge loop on counted pre-tokens (see the module docstring for the rules).

    Returns ``(vocab, merges)``: ``vocab`` maps ids to bytes (0..255 single bytes,
    then the special tokens, then the merged tokens), ``merges`` lists the merged
    pairs in the order learned.
    """
    special_tokens = _check_special_tokens(special_tokens)
    _check_vocab_size(vocab_size, special_tokens)
    vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        encoded = token.encode("utf-8")
        if len(encoded) == 1:
            raise ValueError(f"special token {token!r} is a single byte, which already has id {encoded[0]}")
        vocab[len(vocab)] = encoded
    id_of: dict[bytes, int] = {token: i for i, token in vocab.items()}
    key = {i: _descending_key(token) for i, token in vocab.items()}

    # each distinct pre-token once, as a list of token ids, with its count
    words: list[list[int]] = []
    word_counts: list[int] = []
    for pretoken, n in pretoken_counts.items():
        encoded = pretoken.encode("utf-8")
        if len(encoded) > 1 and n > 0:  # a single byte holds no pair
            words.append(list(encoded))
            word_counts.append(n)

    pair_counts: dict[tuple[int, int], int] = {}
    # pair -> indices of the words that contain it, or once did: a merge skips words without the pair
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w, word in enumerate(words):
        n = word_counts[w]
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + n
            where[pair].add(w)
    heap = [(-n, key[a], key[b], (a, b)) for (a, b), n in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    bar = tqdm(total=vocab_size - len(vocab), unit="token", desc="merging", disable=not progress)
    with bar:
        while len(vocab) < vocab_size:
            # the top entry may be stale (its count changed since it was pushed)
            while heap and pair_counts.get(heap[0][3], 0) != -heap[0][0]:
                heapq.heappop(heap)
            if not heap:
                break  # every pre-token is a single token: nothing left to merge
            _, _, _, pair = heapq.heappop(heap)
            a, b = pair
            merged = vocab[a] + vocab[b]
            merges.append((vocab[a], vocab[b]))
            new_id = id_of.get(merged)
            if new_id is None:
                new_id = len(vocab)
                vocab[new_id] = merged
                id_of[merged] = new_id
                key[new_id] = _descending_key(merged)
                bar.update(1)

            # rewrite each word that contains the pair, and change the counts of the pairs around each
            # merge site: x a b y becomes x c y, so (x, a) and (b, y) lose n, (x, c) and (c, y) gain n;
            # at back-to-back sites (a b a b -> c c) the pair between them, (b, a), becomes (c, c)
            delta: defaultdict[tuple[int, int], int] = defaultdict(int)
            for w in where.pop(pair):
                word = words[w]
                n = word_counts[w]
                length = len(word)
                new_word: list[int] = []
                copied = 0  # word[:copied] is already in new_word
                search_from = 0
                while True:
                    try:
                        j = word.index(a, search_from)
                    except ValueError:
                        break
                    if j + 1 >= length:
                        break
                    if word[j + 1] != b:
                        search_from = j + 1
                        continue
                    # a merge site at j: word[j:j + 2] == [a, b]
                    if j > 0:
                        if j == copied:  # the previous site ended here: (b, a) -> (c, c)
                            left_old, left_new = (b, a), (new_id, new_id)
                        else:
                            left_old, left_new = (word[j - 1], a), (word[j - 1], new_id)
                        if left_old != pair:
                            delta[left_old] -= n
                        delta[left_new] += n
                        where[left_new].add(w)
                    if j + 2 < length and not (word[j + 2] == a and j + 3 < length and word[j + 3] == b):
                        right_old, right_new = (b, word[j + 2]), (new_id, word[j + 2])
                        if right_old != pair:
                            delta[right_old] -= n
                        delta[right_new] += n
                        where[right_new].add(w)
                    new_word.extend(word[copied:j])
                    new_word.append(new_id)
                    copied = search_from = j + 2
                if copied:  # the index may list words that lost the pair to an earlier merge
                    new_word.extend(word[copied:])
                    words[w] = new_word
            pair_counts.pop(pair)
            for p, d in delta.items():
                if d == 0:
                    continue
                n = pair_counts.get(p, 0) + d
                if n > 0:
                    pair_counts[p] = n
                    heapq.heappush(heap, (-n, key[p[0]], key[p[1]], p))
                else:
                    del pair_counts[p]
    return vocab, merges


def train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: Iterable[str] | None = None,
              *, progress: bool = True,
              workers: int | None = None) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on a UTF-8 text file.

    Returns ``(vocab, merges)``: ``vocab: dict[int, bytes]`` (ids 0..255 the
    single bytes, then ``special_tokens`` in order, then one token per merge),
    ``merges: list[tuple[bytes, bytes]]`` in the order learned.  ``progress``
    shows tqdm bars; ``workers`` processes count pre-tokens (default: one per
    core, one process for small files).

    Errors (``ValueError``): ``vocab_size`` below 256 plus the number of
    special tokens; a file that is not UTF-8 (the message names the file and
    the byte offset); empty, repeated or single-byte special tokens.
    """
    special_tokens = _check_special_tokens(special_tokens)
    _check_vocab_size(vocab_size, special_tokens)  # before reading a possibly large file
    counts = count_pretokens(input_path, special_tokens, workers=workers, progress=progress)
    return learn_merges(counts, vocab_size, special_tokens, progress=progress)


# --------------------------------------------------------------------------------------------
# Encoding and decoding
# --------------------------------------------------------------------------------------------

class _PretokenCache(dict):
    """pre-token -> its ids; a missing pre-token is merged and stored (all emptied when full)."""

    def __init__(self, merge, max_size: int):
        super().__init__()
        self.merge = merge
        self.max_size = max_size

    def __missing__(self, pretoken: str) -> list[int]:
        if len(self) >= self.max_size:
            self.clear()
        ids = self[pretoken] = self.merge(pretoken)
        return ids


class BPETokenizer:
    """Encode text to ids and back with a trained vocabulary and merge list.

    ``vocab`` maps ids to bytes and must hold the 256 single bytes (under any
    ids) and the result of every merge; ``merges`` is the list of merged pairs
    in rank order.  ``special_tokens`` are matched before pre-tokenization
    (longest match first); one missing from ``vocab`` is appended with a new
    id.  ``cache_size`` bounds the cache of encoded pre-tokens (emptied when
    full).
    """

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                 special_tokens: Iterable[str] | None = None, *, cache_size: int = 100_000):
        self.vocab: dict[int, bytes] = dict(vocab)
        self.merges: list[tuple[bytes, bytes]] = list(merges)
        self.special_tokens: list[str] = _check_special_tokens(special_tokens)
        self._id_of: dict[bytes, int] = {}
        for i, token in self.vocab.items():
            if not isinstance(token, bytes):
                raise ValueError(f"vocab[{i}] must be bytes, got {type(token).__name__}")
            if token in self._id_of:
                raise ValueError(f"ids {self._id_of[token]} and {i} have the same bytes {token!r}; "
                                 "a byte-level BPE vocabulary maps each token to one id")
            self._id_of[token] = i
        for token in self.special_tokens:
            encoded = token.encode("utf-8")
            if encoded not in self._id_of:
                new_id = max(self.vocab, default=-1) + 1
                self.vocab[new_id] = encoded
                self._id_of[encoded] = new_id
        missing = [b for b in range(256) if bytes([b]) not in self._id_of]
        if missing:
            raise ValueError(f"the vocabulary lacks {len(missing)} single-byte token(s) (first: {missing[0]}); "
                             "a byte-level tokenizer needs all 256 to encode any text")
        self._byte_ids: list[int] = [self._id_of[bytes([b])] for b in range(256)]
        # (left id, right id) -> (rank, merged id)
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(self.merges):
            for part in (left, right, left + right):
                if part not in self._id_of:
                    raise ValueError(f"merge {rank} ({left!r}, {right!r}): {part!r} is not in the vocabulary")
            self._ranks.setdefault((self._id_of[left], self._id_of[right]), (rank, self._id_of[left + right]))
        self._special_ids: dict[str, int] = {t: self._id_of[t.encode("utf-8")] for t in self.special_tokens}
        self._special_re = _special_regex(self.special_tokens)
        # proper prefixes of special tokens: a buffer ending in one may still become a special token
        self._special_prefixes = {t[:k] for t in self.special_tokens for k in range(1, len(t))}
        self._longest_special = max((len(t) for t in self.special_tokens), default=0)
        self._cache = _PretokenCache(self._merge, cache_size)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ---- files ---------------------------------------------------------------------------

    @classmethod
    def from_files(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike,
                   special_tokens: Iterable[str] | None = None, **kwargs) -> "BPETokenizer":
        """Load ``vocab.json`` and ``merges.txt`` as written by ``save`` (or by GPT-2 / HF)."""
        with open(vocab_path, encoding="utf-8") as file:
            raw_vocab = json.load(file)
        if not isinstance(raw_vocab, dict):
            raise ValueError(f"{vocab_path}: expected a JSON object token -> id")
        vocab = {}
        for text, i in raw_vocab.items():
            if not isinstance(i, int):
                raise ValueError(f"{vocab_path}: the id of {text!r} is {i!r}, not an integer")
            vocab[i] = _str_to_token(text, str(vocab_path))
        merges = []
        with open(merges_path, encoding="utf-8") as file:
            for line_no, line in enumerate(file, start=1):
                line = line.rstrip("\r\n")
                if (line_no == 1 and line.startswith("#version")) or not line:
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"{merges_path}, line {line_no}: expected two tokens separated by one "
                                     f"space, got {line!r}")
                where = f"{merges_path}, line {line_no}"
                merges.append((_str_to_token(parts[0], where), _str_to_token(parts[1], where)))
        return cls(vocab, merges, special_tokens, **kwargs)

    def save(self, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> None:
        """Write ``vocab.json`` (token -> id) and ``merges.txt`` in GPT-2's format (module docstring)."""
        vocab = {_token_to_str(token): i for i, token in sorted(self.vocab.items())}
        Path(vocab_path).write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{_token_to_str(a)} {_token_to_str(b)}" for a, b in self.merges]
        Path(merges_path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    # ---- encoding ------------------------------------------------------------------------

    def _merge(self, pretoken: str) -> list[int]:
        """The ids of one pre-token: its bytes, then merges applied in rank order."""
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in pretoken.encode("utf-8")]
        ranks = self._ranks
        while len(ids) > 1:
            best = None
            for pair in zip(ids, ids[1:]):
                found = ranks.get(pair)
                if found is not None and (best is None or found[0] < best[1][0]):
                    best = (pair, found)
            if best is None:
                break
            (a, b), (_, merged) = best
            out: list[int] = []
            i, length = 0, len(ids)
            while i < length:
                if i + 1 < length and ids[i] == a and ids[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids

    def _encode_segment(self, segment: str, out: list[int]) -> None:
        """Append the ids of text that holds no special token."""
        # a cache hit stays in C: map -> dict lookup -> chain; a miss calls _PretokenCache.__missing__
        out.extend(chain.from_iterable(map(self._cache.__getitem__, _PRETOKEN_RE.findall(segment))))

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``: special tokens, then pre-tokens merged by rank."""
        out: list[int] = []
        if self._special_re is None:
            self._encode_segment(text, out)
            return out
        start = 0
        for match in self._special_re.finditer(text):
            self._encode_segment(text[start:match.start()], out)
            out.append(self._special_ids[match.group()])
            start = match.end()
        self._encode_segment(text[start:], out)
        return out

    def _stable_end(self, text: str) -> int:
        """How much of ``text`` encodes the same whatever text follows it.

        Returns a position ``q`` such that for every continuation ``c``,
        ``encode(text + c)`` starts with ``encode(text[:q])``.  Three things can
        change when text follows:

        - a suffix that is a proper prefix of a special token may complete it;
          let ``h`` be where the earliest such suffix starts (``len(text)`` if none).
          The special-token scan is settled before ``h``;
        - the pre-tokens of the text between the last settled special token and
          ``h``: a pattern alternative matching ``[r, e)`` looks at most at the
          characters up to ``e + 1`` (the contraction ``'ll`` at ``'l|l``; the
          lookahead of ``\\s+(?!\\S)``), so a pre-token ending at ``e <= h - 2``
          is settled, and so is everything before it.
        """
        h = len(text)
        if self._special_prefixes:
            for i in range(max(0, len(text) - self._longest_special + 1), len(text)):
                if text[i:] in self._special_prefixes:
                    h = i
                    break
        segment_start = 0
        if self._special_re is not None:
            for match in self._special_re.finditer(text):
                if match.start() >= h:
                    break
                segment_start = match.end()
        stable = segment_start
        position = segment_start
        for pretoken in _PRETOKEN_RE.findall(text[segment_start:h]):
            position += len(pretoken)
            if position > h - 2:
                break
            stable = position
        return stable

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Yield the ids of the concatenated strings of ``iterable`` (lines of a file, say), lazily.

        The output equals ``encode("".join(iterable))``.  Only the unsettled end
        of the text read so far is held (the last pre-tokens and a possible
        partial special token; see ``_stable_end``), so memory does not grow
        with the input.
        """
        buffer = ""
        for chunk in iterable:
            if not chunk:
                continue
            buffer += chunk
            stable = self._stable_end(buffer)
            if stable > 0:
                yield from self.encode(buffer[:stable])
                buffer = buffer[stable:]
        if buffer:
            yield from self.encode(buffer)

    # ---- decoding ------------------------------------------------------------------------

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        vocab = self.vocab
        ids = list(ids)
        try:
            data = b"".join([vocab[i] for i in ids])
        except (KeyError, TypeError):
            position, bad = next((k, i) for k, i in enumerate(ids) if not isinstance(i, int) or i not in vocab)
            raise ValueError(f"id {bad!r} at position {position} is not in the vocabulary "
                             f"(ids are 0..{max(vocab)})") from None
        return data.decode("utf-8", errors="replace")
