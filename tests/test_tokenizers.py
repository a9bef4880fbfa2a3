"""genlab.tokenizers: byte-level BPE, checked against Hugging Face ``tokenizers`` and a naive trainer.

- encoding: with the same vocabulary and merges, ``encode`` gives exactly the ids of HF's
  byte-level BPE (GPT-2 pre-tokenizer, no prefix space, no post-processor) on the course's
  texts (standard-library docstrings, the lecture notebooks, genlab's source), on edge cases
  and on random strings of awkward characters; decoding agrees too, and round trips are exact;
- training: the incremental trainer learns exactly the vocabulary and merges of a naive
  trainer written here (all pairs recounted at every step) on random small corpora full of
  ties, in one process and in parallel chunks;
- ``encode_iterable`` equals ``encode`` of the concatenation for random chunkings, and holds
  back only a few characters;
- errors name what is wrong.

Run with ``-s`` to see how many texts and ids were compared.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest
import regex

import genlab.tokenizers as tk
from genlab.data import stdlib_docstrings
from genlab.tokenizers import GPT2_PATTERN, BPETokenizer, bytes_to_unicode, train_bpe
from conftest import REPO

hf = pytest.importorskip("tokenizers")

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|pad|>", "<|fin de texte|>", "<|终|>"]  # with a space and a non-ASCII one
PARITY: dict[str, Counter] = {}  # what was compared -> counts, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def report_parity():
    yield
    lines = [f"  {what}: " + ", ".join(f"{n:,} {unit}" for unit, n in counts.items())
             for what, counts in PARITY.items()]
    print("\n[genlab.tokenizers compared]\n" + "\n".join(lines))


def count(what: str, **numbers: int) -> None:
    PARITY.setdefault(what, Counter()).update(numbers)


# ---------------------------------------------------------------------------------------------
# Hugging Face reference built from our vocabulary and merges
# ---------------------------------------------------------------------------------------------

B2U = bytes_to_unicode()


def as_hf_string(token: bytes) -> str:
    return "".join(B2U[b] for b in token)


def hf_tokenizer(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], specials: list[str]):
    """HF's byte-level BPE with our ids: tokens in GPT-2's byte-to-unicode form, special tokens
    under their own text (as GPT-2's vocab.json holds <|endoftext|>) and registered as added
    special tokens, so HF splits them off before pre-tokenization."""
    special_bytes = {s.encode("utf-8"): s for s in specials}
    hf_vocab = {special_bytes.get(token) or as_hf_string(token): i for i, token in vocab.items()}
    assert len(hf_vocab) == len(vocab)
    model = hf.models.BPE(vocab=hf_vocab, merges=[(as_hf_string(a), as_hf_string(b)) for a, b in merges])
    tokenizer = hf.Tokenizer(model)
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = hf.decoders.ByteLevel()
    tokenizer.add_special_tokens([hf.AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:
        assert tokenizer.token_to_id(s) == hf_vocab[s]
    return tokenizer


def assert_same_ids(ours: BPETokenizer, ref, texts: list[str], what: str) -> None:
    expected = [e.ids for e in ref.encode_batch(texts)]
    differences = []
    for text, ids in zip(texts, expected):
        got = ours.encode(text)
        if got != ids:
            differences.append((text, got, ids))
    count(f"encode vs HF, {what}", texts=len(texts), ids=sum(map(len, expected)), differences=len(differences))
    assert not differences, (f"{len(differences)} of {len(texts)} texts differ from HF; first: "
                             f"{differences[0][0][:200]!r}\n ours {differences[0][1][:40]}\n   hf {differences[0][2][:40]}")


# ---------------------------------------------------------------------------------------------
# Corpora: the course's own texts, nothing downloaded
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docstrings() -> list[str]:
    """The docstrings of the first 300 standard-library files (about 2,400 texts, 0.6 MB)."""
    return stdlib_docstrings(max_files=300)


@pytest.fixture(scope="module")
def course_texts() -> list[str]:
    """Every cell of the lecture notebooks and every genlab source file."""
    texts = []
    for notebook in sorted((REPO / "course").glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        texts += ["".join(cell["source"]) for cell in cells]
    texts += [path.read_text(encoding="utf-8") for path in sorted((REPO / "lib" / "genlab").rglob("*.py"))]
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def trained(docstrings, tmp_path_factory):
    """A 1,000-token vocabulary trained on half the docstrings, documents separated by <|endoftext|>."""
    path = tmp_path_factory.mktemp("bpe") / "docstrings.txt"
    path.write_text(EOT.join(docstrings[::2]), encoding="utf-8")
    vocab, merges = train_bpe(path, 1000, SPECIALS, progress=False, workers=1)
    return vocab, merges


@pytest.fixture(scope="module")
def tokenizers_pair(trained):
    vocab, merges = trained
    return BPETokenizer(vocab, merges, SPECIALS), hf_tokenizer(vocab, merges, SPECIALS)


# ---------------------------------------------------------------------------------------------
# Encoding parity with HF
# ---------------------------------------------------------------------------------------------

def test_trained_vocabulary_layout(trained):
    vocab, merges = trained
    assert len(vocab) == 1000 and sorted(vocab) == list(range(1000))
    assert all(vocab[i] == bytes([i]) for i in range(256))
    assert [vocab[256 + k] for k in range(len(SPECIALS))] == [s.encode() for s in SPECIALS]
    assert len(set(vocab.values())) == len(vocab)
    for merge in merges:
        assert merge[0] + merge[1] in vocab.values()
    # merges never cross a pre-token: no learned token holds a letter followed by a space
    learned = [vocab[i] for i in range(256 + len(SPECIALS), len(vocab))]
    assert not any(regex.search(rb"[a-zA-Z] ", token) for token in learned)
    assert merges[0] == (b" ", b"t")  # English: " the", " to", " that" ...


def test_encode_matches_hf_on_docstrings(tokenizers_pair, docstrings):
    ours, ref = tokenizers_pair
    assert_same_ids(ours, ref, docstrings, "docstrings")  # half of them unseen in training


def test_encode_matches_hf_on_course_notebooks_and_sources(tokenizers_pair, course_texts):
    ours, ref = tokenizers_pair
    assert_same_ids(ours, ref, course_texts, "course notebooks and sources")


EDGE_CASES = [
    "", " ", "  ", "   ", "\n", "\n\n\n", " \n \n", "\t\t x", "\r\n\r\n", "a  b", "a   b  ", "  leading",
    "trailing  ", "x \n y", "tabs\tand\x0bvertical\x0cfeeds",
    "I'll, you've, he's, they're, we'd, it'S, don't 'll ''ll '", "can't''t",
    "emoji 👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇩🇪 and 🙂🙂🙂",
    "combining: e\u0301 a\u0308 n\u0303 \u0301alone",
    "CJK: 漢字とひらがな、カタカナ。한국어 텍스트",
    "Ελληνικά, Русский, العربية, हिन्दी, ไทย",
    "numbers 1234567890 ١٢٣ ½ ² Ⅻ 3.14e-10",
    "symbols !!! ??? ... --- === >>> <<< ### @@@ $$$ %%%",
    "x" * 300, " " * 50 + "y", "\n" * 40 + "z", "a" + "\u00a0" * 3 + "b",
    EOT, EOT + EOT, f"a{EOT}b", f" {EOT} ", f"{EOT}\n{EOT}", f"<|pad|>{EOT}<|pad|>",
    "<|endoftext|", "<|endoftext", "endoftext|>", f"<{EOT}>", f"<|{EOT}|>",
    "<|fin de texte|>", "<|fin de texte|><|终|> <|终|>终", "x<|终|>y",
]


def test_encode_matches_hf_on_edge_cases(tokenizers_pair):
    ours, ref = tokenizers_pair
    assert_same_ids(ours, ref, EDGE_CASES, "edge cases")
    assert ours.encode("") == []
    assert ours.encode(EOT + EOT) == [256, 256]
    assert ours.encode("<|fin de texte|><|终|>") == [258, 259]


AWKWARD = (list("abcxyz ABC'0123456789 ,.!?-_()[]{}\"\\/") + [" ", " ", "  ", "\n", "\t", "\r\n", "'s", "'ll", "'re"]
           + list("éüñßøçÆ€£¥°±×÷") + list("漢字かなカナ한") + ["👍", "🏽", "\u200d", "\u0301", "\u0308"]
           + ["<|", "|>", "endoftext", EOT, "<|pad|>", "<|终|>", "ℕ", "Ⅻ", "½", "٣"]
           + ["\u00a0", "\u3000", "\u2028", "\x85", "\x1c", "\u200b", "\x0b", "\x0c", "\x00", "\ufeff"])


def random_texts(n: int, seed: int, max_len: int = 40) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(AWKWARD) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


def test_encode_matches_hf_on_random_awkward_strings(tokenizers_pair):
    ours, ref = tokenizers_pair
    assert_same_ids(ours, ref, random_texts(3000, seed=0), "random strings")


def test_overlapping_special_tokens_longest_match_wins(trained):
    """Special tokens that are prefixes of each other: the longest match at the leftmost place wins,
    as in HF (its added tokens are matched leftmost-longest)."""
    vocab, merges = trained
    specials = ["<|a|>", "<|a|><|b|>", "<|a", "b|>", "<|b|>"]
    extended = dict(vocab)
    for s in specials:
        extended[len(extended)] = s.encode()
    ours = BPETokenizer(extended, merges, specials)
    ref = hf_tokenizer(extended, merges, specials)
    ids = {s: ours.encode(s) for s in specials}
    assert all(len(v) == 1 for v in ids.values())
    assert ours.encode("<|a|><|b|>") == ids["<|a|><|b|>"]
    assert ours.encode("<|a|><|b|><|a") == ids["<|a|><|b|>"] + ids["<|a"]
    assert ours.encode("<|a|><|b") == ids["<|a|>"] + ours.encode("<|b")  # "<|b" is plain text
    texts = ["<|a|><|b|>", "<|a|><|b|><|b|>", "<|a|><|a|><|b|>", "<|a|>", "<|a|", "<|a <|a|><|b|>x",
             "<|a|><|b", "x<|ab|>", "<|b|>|><|a|>"] + random_texts(500, seed=1)
    rng = random.Random(2)
    texts += ["".join(rng.choice(["<|", "a", "|>", "b", "<|a|>", " ", "x"]) for _ in range(12)) for _ in range(500)]
    assert_same_ids(ours, ref, texts, "overlapping special tokens")


def test_special_token_missing_from_vocab_gets_a_new_id(trained):
    vocab, merges = trained
    ours = BPETokenizer(vocab, merges, ["<|new|>"])
    assert ours.encode("a<|new|>") == ours.encode("a") + [len(vocab)]
    assert ours.decode([len(vocab)]) == "<|new|>"


def test_loaded_gpt2_style_vocab_with_other_ids(trained):
    """Byte ids need not be 0..255: the same tokens under shuffled ids encode to the shuffled ids."""
    vocab, merges = trained
    order = list(vocab)
    random.Random(3).shuffle(order)
    renumber = dict(zip(vocab, order))
    shuffled = {renumber[i]: token for i, token in vocab.items()}
    ours, base = BPETokenizer(shuffled, merges, SPECIALS), BPETokenizer(vocab, merges, SPECIALS)
    ref = hf_tokenizer(shuffled, merges, SPECIALS)
    texts = EDGE_CASES + random_texts(300, seed=4)
    assert_same_ids(ours, ref, texts, "renumbered vocabulary")
    for text in texts:
        assert ours.encode(text) == [renumber[i] for i in base.encode(text)]


# ---------------------------------------------------------------------------------------------
# Decoding and round trips
# ---------------------------------------------------------------------------------------------

def test_round_trips_are_exact(tokenizers_pair, docstrings, course_texts):
    ours, _ = tokenizers_pair
    texts = docstrings + course_texts + EDGE_CASES + random_texts(1000, seed=5)
    assert [ours.decode(ours.encode(t)) for t in texts] == texts
    count("decode(encode(text)) == text", texts=len(texts))


def test_decode_matches_hf_on_random_ids_with_invalid_utf8(tokenizers_pair):
    """Random id sequences often cut UTF-8 characters: both sides put U+FFFD in the same places."""
    ours, ref = tokenizers_pair
    rng = random.Random(6)
    sequences = [[rng.randrange(len(ours.vocab)) for _ in range(rng.randint(0, 20))] for _ in range(2000)]
    sequences = [[i for i in ids if not 256 <= i < 256 + len(SPECIALS)] for ids in sequences]
    expected = ref.decode_batch(sequences, skip_special_tokens=False)
    got = [ours.decode(ids) for ids in sequences]
    count("decode vs HF, random ids", sequences=len(sequences), ids=sum(map(len, sequences)),
          differences=sum(g != e for g, e in zip(got, expected)))
    assert got == expected
    assert any("\ufffd" in text for text in got)
    assert ours.decode([0xE6, 0xBC]) == "\ufffd"  # the first two bytes of 漢
    assert ours.decode([0xE6, 0xBC, 0xA2]) == "漢"
    assert ours.decode([0xFF, ord("a")]) == "\ufffda"


def test_save_and_from_files_are_lossless_and_readable_by_hf(tokenizers_pair, trained, tmp_path):
    ours, _ = tokenizers_pair
    vocab_path, merges_path = tmp_path / "vocab.json", tmp_path / "merges.txt"
    ours.save(vocab_path, merges_path)
    loaded = BPETokenizer.from_files(vocab_path, merges_path, SPECIALS)
    assert loaded.vocab == ours.vocab and loaded.merges == ours.merges
    assert loaded.special_tokens == SPECIALS
    first = merges_path.read_text(encoding="utf-8").splitlines()[:2]
    assert first == ["#version: 0.2", "Ġ t"]
    assert json.loads(vocab_path.read_text(encoding="utf-8"))["Ċ"] == 10
    # HF reads the same two files as a BPE model
    model = hf.models.BPE.from_file(str(vocab_path), str(merges_path))
    ref = hf.Tokenizer(model)
    ref.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    texts = random_texts(300, seed=7, max_len=30)
    texts = [t.replace("<|", "") for t in texts]  # this reference knows no special tokens
    assert_same_ids(loaded, ref, texts, "HF BPE.from_file on saved files")


def test_every_byte_sequence_survives_the_files(tmp_path):
    """Tokens made of any bytes (controls, invalid UTF-8, space, the byte-to-unicode letters)."""
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"\xff", b"\x00"), (b" ", b"\n"), (b"\xc4", b"\xa0"), (b"\xff\x00", b" \n"), (b"#", b"v")]
    for a, b in merges:
        vocab[len(vocab)] = a + b
    BPETokenizer(vocab, merges).save(tmp_path / "v.json", tmp_path / "m.txt")
    loaded = BPETokenizer.from_files(tmp_path / "v.json", tmp_path / "m.txt")
    assert loaded.vocab == vocab and loaded.merges == merges
    assert len(bytes_to_unicode()) == 256 and len(set(bytes_to_unicode().values())) == 256
    assert not any(c.isspace() for c in bytes_to_unicode().values())


# ---------------------------------------------------------------------------------------------
# Training: agreement with a naive trainer
# ---------------------------------------------------------------------------------------------

def naive_train(text: str, vocab_size: int, specials: list[str]):
    """BPE as defined, with no cleverness: recount every pair at every step.  Returns the
    vocabulary, the merges, and how many merges the tie rule decided."""
    vocab = [bytes([i]) for i in range(256)] + [s.encode() for s in specials]
    merges = []
    ties = 0
    if specials:
        alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
        segments = regex.split(alternatives, text)
    else:
        segments = [text]
    words = Counter()
    for segment in segments:
        for pretoken in regex.findall(GPT2_PATTERN, segment):
            words[tuple(bytes([b]) for b in pretoken.encode())] += 1
    while len(vocab) < vocab_size:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        ties += sum(n == pairs[best] for n in pairs.values()) > 1
        merges.append(best)
        merged = best[0] + best[1]
        if merged not in vocab:
            vocab.append(merged)
        new_words = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    return dict(enumerate(vocab)), merges, ties


def random_corpus(seed: int) -> tuple[str, list[str]]:
    """Few distinct letters, short words, repeats: many pairs tie, and ties decide the merges."""
    rng = random.Random(seed)
    letters = rng.sample("abcdeé猫 ", k=rng.randint(2, 5))
    pieces = letters + [" ", " ", "\n", "'s", "1", "!", "  "]
    specials = rng.choice([[], [EOT], [EOT, "<|a"], ["<|x|>", "<|x|><|y|>"]])
    parts = []
    for _ in range(rng.randint(5, 120)):
        parts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))))
        if specials and rng.random() < 0.2:
            parts.append(rng.choice(specials))
    return "".join(parts), specials


@pytest.mark.parametrize("seed", range(40))
def test_training_matches_naive_trainer(seed, tmp_path):
    text, specials = random_corpus(seed)
    vocab_size = 256 + len(specials) + random.Random(seed).randint(1, 80)
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    vocab, merges, ties = naive_train(text, vocab_size, specials)
    got = train_bpe(path, vocab_size, specials, progress=False, workers=1)
    count("training vs naive trainer", corpora=1, merges=len(merges), **{"decided by the tie rule": ties},
          differences=int(got != (vocab, merges)))
    assert got[1] == merges
    assert got[0] == vocab


def test_training_ties_go_to_the_greatest_pair(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text("ab ab cd cd zy", encoding="utf-8")  # ' a', 'ab', ' c', 'cd' tie at 2
    vocab, merges = train_bpe(path, 257)
    assert merges == [(b"c", b"d")]  # (b'c', b'd') > (b'a', b'b') > (b' ', b'c') > (b' ', b'a')
    assert "pre-tokenizing" in capsys.readouterr().err  # the progress bars
    path.write_text("aaa", encoding="utf-8")  # the overlapping pair counts twice, merged once
    vocab, merges = train_bpe(path, 300, progress=False)
    assert merges == [(b"a", b"a"), (b"aa", b"a")] and len(vocab) == 258  # then nothing is left


def test_parallel_counting_equals_one_process(tmp_path, monkeypatch):
    """Chunks cut at special tokens and at newlines after printable ASCII count the same pre-tokens."""
    rng = random.Random(8)
    parts = []
    for _ in range(3000):
        parts.append("".join(rng.choice(AWKWARD) for _ in range(rng.randint(0, 12))))
    path = tmp_path / "big.txt"
    path.write_text("".join(parts), encoding="utf-8")
    monkeypatch.setattr(tk, "_MIN_BYTES_PER_WORKER", 1000)
    monkeypatch.setattr(tk, "_CUT_SEARCH_WINDOW", 64)
    for specials in ([], [EOT, "<|pad|>"], ["<|", "<|终|>"]):
        one = tk.count_pretokens(path, specials, workers=1, progress=False)
        size = path.stat().st_size
        cuts = tk._chunk_boundaries(path, size, 8, [s.encode() for s in specials])
        assert len(cuts) > 5, cuts
        many = tk.count_pretokens(path, specials, workers=2, progress=False)
        assert many == one
        with monkeypatch.context() as patch:  # one process, one chunk at a time
            patch.setattr(tk, "_MAX_CHUNK_BYTES", 2000)
            assert tk.count_pretokens(path, specials, workers=1, progress=False) == one
        text = path.read_bytes().decode("utf-8")  # not read_text: it would turn "\r\n" into "\n"
        special_chars = sum(len(s) for s in regex.findall(tk._special_regex(specials), text)) if specials else 0
        assert sum(n * len(p) for p, n in one.items()) == len(text) - special_chars  # every character once
        count("parallel vs one-process pre-token counts", pretokens=len(one), differences=int(many != one))
    vocab1 = train_bpe(path, 400, [EOT], progress=False, workers=1)
    vocab2 = train_bpe(path, 400, [EOT], progress=False, workers=2)
    assert vocab1 == vocab2


# ---------------------------------------------------------------------------------------------
# encode_iterable
# ---------------------------------------------------------------------------------------------

def random_chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 12))))
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def test_encode_iterable_equals_encode_for_random_chunkings(tokenizers_pair, trained):
    ours, _ = tokenizers_pair
    vocab, merges = trained
    overlapping = BPETokenizer(vocab, merges, SPECIALS + ["<|a|>", "<|a|><|b|>", "<|a"])
    rng = random.Random(9)
    texts = EDGE_CASES + random_texts(400, seed=10) + ["<|a|><|b|> <|a|><|a|><|b|><|a"] * 5
    compared = 0
    for tokenizer in (ours, overlapping):
        for text in texts:
            for _ in range(3):
                chunks = random_chunks(text, rng)
                assert list(tokenizer.encode_iterable(chunks)) == tokenizer.encode(text), chunks
                compared += 1
        for text in texts[:60]:  # one character at a time: every cut
            assert list(tokenizer.encode_iterable(iter(text))) == tokenizer.encode(text)
            compared += 1
    count("encode_iterable vs encode", chunkings=compared)


BOUNDARY_CASES = ["x'll y", "it's 've 're 'd", "a   b", "a\n\n b", " \t\n x", "<|endoftext|>x",
                  "<|a|><|b|><|a", "ab12 3.5 !!x", "漢字 👍🏽e\u0301", "<|终|><|fin de texte|>"]


def test_encode_iterable_at_every_cut(tmp_path):
    """Every way to cut a short text into two or three chunks: a contraction (\"'l\" + \"l\"), a run
    of spaces or a special token split across chunks still encodes as the whole.  The vocabulary
    is trained on these texts, so that each of their pre-tokens is one token and a wrong split
    shows in the ids."""
    specials = SPECIALS + ["<|a|>", "<|a|><|b|>", "<|a"]
    path = tmp_path / "cases.txt"
    path.write_bytes(" ".join(BOUNDARY_CASES * 20).encode("utf-8"))
    tokenizer = BPETokenizer(*train_bpe(path, 400, specials, progress=False), specials)
    assert len(tokenizer.encode("'ll")) == 1 and len(tokenizer.encode("  ")) == 1  # "'" + "ll" would be 2
    compared = 0
    for text in BOUNDARY_CASES:
        expected = tokenizer.encode(text)
        for i, j in itertools.combinations_with_replacement(range(len(text) + 1), 2):
            chunks = [text[:i], text[i:j], text[j:]]
            assert list(tokenizer.encode_iterable(chunks)) == expected, chunks
            compared += 1
    count("encode_iterable vs encode", chunkings=compared)


def test_encode_iterable_is_lazy_and_holds_back_little(tokenizers_pair, docstrings):
    """Fed line by line, the text read but not yet encoded is never more than the line just read
    and a pre-token or two (ASCII text: a token's bytes are its characters, so it is exact)."""
    ours, _ = tokenizers_pair
    lines = [line for line in "\n\n".join(docstrings[:400]).splitlines(keepends=True) if line.isascii()]
    consumed = 0

    def reading():
        nonlocal consumed
        for line in lines:
            consumed += len(line)
            yield line

    produced, encoded_length, held_back = [], 0, []
    for i in ours.encode_iterable(reading()):
        produced.append(i)
        encoded_length += len(ours.vocab[i])
        held_back.append(consumed - encoded_length)
    assert produced == ours.encode("".join(lines))
    assert max(held_back) <= max(map(len, lines)) + 40, max(held_back)
    endless = itertools.cycle(["Hello world. ", "It's\n", "<|endoftext|>"])
    assert len(list(itertools.islice(ours.encode_iterable(endless), 50))) == 50


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def test_vocab_size_too_small(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab_size=257 is too small.*2 special token\(s\).*at least 258"):
        train_bpe(path, 257, [EOT, "<|pad|>"], progress=False)
    with pytest.raises(ValueError, match="vocab_size=10"):
        train_bpe(tmp_path / "missing.txt", 10, progress=False)  # checked before the file is read
    assert len(train_bpe(path, 256, progress=False)[0]) == 256


def test_file_that_is_not_utf8_names_file_and_offset(tmp_path, monkeypatch):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ok\n".encode("utf-8") * 500 + "na\u00efve".encode("latin-1") + b"\n")
    offset = len("caf\u00e9 ok\n".encode("utf-8")) * 500 + 2
    with pytest.raises(ValueError, match=rf"latin1\.txt is not valid UTF-8: byte offset {offset} \(byte 0xef\)"):
        train_bpe(path, 300, progress=False, workers=1)
    monkeypatch.setattr(tk, "_MIN_BYTES_PER_WORKER", 500)
    monkeypatch.setattr(tk, "_CUT_SEARCH_WINDOW", 64)
    with pytest.raises(ValueError, match=rf"byte offset {offset} "):
        train_bpe(path, 300, progress=False, workers=2)


def test_decode_rejects_ids_outside_the_vocabulary(tokenizers_pair):
    ours, _ = tokenizers_pair
    with pytest.raises(ValueError, match=r"id 1000 at position 2 is not in the vocabulary \(ids are 0..999\)"):
        ours.decode([1, 2, 1000])
    with pytest.raises(ValueError, match="id -1 at position 0"):
        ours.decode([-1])
    with pytest.raises(ValueError, match="id 'a' at position 0"):
        ours.decode(["a"])


@pytest.mark.parametrize("specials, message", [
    ([""], "non-empty strings"), ([EOT, EOT], "given twice"), (EOT, "list of strings"),
    (["\n"], "single byte, which already has id 10"),
])
def test_bad_special_tokens(specials, message, tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        train_bpe(path, 300, specials, progress=False)


def test_bad_vocabularies_and_files(tmp_path):
    with pytest.raises(ValueError, match="lacks 1 single-byte token.*first: 7"):
        BPETokenizer({i: bytes([i]) for i in range(256) if i != 7}, [])
    base = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match=r"merge 0 \(b'a', b'b'\): b'ab' is not in the vocabulary"):
        BPETokenizer(base, [(b"a", b"b")])
    with pytest.raises(ValueError, match="ids 97 and 256 have the same bytes b'a'"):
        BPETokenizer({**base, 256: b"a"}, [])
    (tmp_path / "v.json").write_text(json.dumps({"a": 0, "a b": 1}), encoding="utf-8")
    (tmp_path / "m.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"v\.json: 'a b' contains ' '"):
        BPETokenizer.from_files(tmp_path / "v.json", tmp_path / "m.txt")
    (tmp_path / "m.txt").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    (tmp_path / "v.json").write_text(json.dumps({B2U[i]: i for i in range(256)}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.txt, line 2: expected two tokens"):
        BPETokenizer.from_files(tmp_path / "v.json", tmp_path / "m.txt")
