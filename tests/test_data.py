"""genlab.data: the HMM oracle against brute-force enumeration, sampling, the
docstring corpus, tokenizers and LM batches."""

import itertools
import sys

import pytest
import torch

from genlab.data import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    CharTokenizer,
    HMMLanguage,
    Vocab,
    WordTokenizer,
    lm_batches,
    stdlib_docstrings,
)

LENGTH = 5  # tiny model: 4**5 sequences x 3**5 hidden paths, enumerated exactly


@pytest.fixture(scope="module")
def tiny_hmm():
    return HMMLanguage(n_states=3, n_symbols=4, seed=7, symbols_per_state=2, floor=0.05)


@pytest.fixture(scope="module")
def all_sequences(tiny_hmm):
    """Every sequence of length LENGTH (X, L) and its probability (X,), by enumerating
    every hidden path: P(x) = sum_z P(z_0) prod P(z_t | z_t-1) prod P(x_t | z_t)."""
    hmm = tiny_hmm
    sequences = torch.tensor(list(itertools.product(range(hmm.n_symbols), repeat=LENGTH)))  # (X, L)
    paths = torch.tensor(list(itertools.product(range(hmm.n_states), repeat=LENGTH)))  # (P, L)
    path_probs = hmm.start_probs[paths[:, 0]].clone()  # (P,)
    emission_probs = torch.ones(len(sequences), len(paths), dtype=torch.float64)  # (X, P)
    for t in range(LENGTH):
        if t > 0:
            path_probs *= hmm.transition[paths[:, t - 1], paths[:, t]]
        emission_probs *= hmm.emission[paths[None, :, t], sequences[:, None, t]]
    return sequences, emission_probs @ path_probs


def brute_force_prob(all_sequences, sequence, known):
    """P(x_i = sequence_i for every position i where ``known``), by summation."""
    sequences, probs = all_sequences
    matches = (sequences[:, known] == sequence[known]).all(dim=1)
    return probs[matches].sum()


def brute_force_masked_posterior(all_sequences, sequence, masked, t):
    """(V,) P(x_t = v | the unmasked tokens of ``sequence``)."""
    sequences, probs = all_sequences
    consistent = (sequences[:, ~masked] == sequence[~masked]).all(dim=1)
    weights = probs * consistent  # (X,)
    per_symbol = torch.zeros(4, dtype=torch.float64).index_add_(0, sequences[:, t], weights)
    return per_symbol / weights.sum()


@pytest.fixture(scope="module")
def tiny_samples(tiny_hmm):
    return tiny_hmm.sample(6, LENGTH, seed=11)  # (6, L)


@pytest.fixture(scope="module")
def tiny_mask():
    mask = torch.rand(6, LENGTH, generator=torch.Generator().manual_seed(5)) < 0.4
    mask[0] = True  # everything hidden: the posterior is the marginal
    mask[1] = False  # nothing hidden
    mask[2] = torch.tensor([False, True, True, True, False])
    return mask


def test_parameters_are_distributions(tiny_hmm, all_sequences):
    default = HMMLanguage()
    for hmm in (tiny_hmm, default):
        assert hmm.start_probs.dtype == torch.float64
        for probs in (hmm.start_probs[None], hmm.transition, hmm.emission):
            assert (probs > 0).all()
            torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs), dtype=torch.float64))
    assert default.transition.shape == (8, 8) and default.emission.shape == (8, 24)
    _, probs = all_sequences
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_next_token_log_probs_match_brute_force(tiny_hmm, all_sequences, tiny_samples):
    log_probs = tiny_hmm.next_token_log_probs(tiny_samples)  # (N, L)
    assert log_probs.shape == tiny_samples.shape and log_probs.dtype == torch.float64
    for n, sequence in enumerate(tiny_samples):
        for t in range(LENGTH):
            prefix_now = torch.arange(LENGTH) <= t
            prefix_before = torch.arange(LENGTH) < t
            expected = (brute_force_prob(all_sequences, sequence, prefix_now)
                        / brute_force_prob(all_sequences, sequence, prefix_before))
            torch.testing.assert_close(log_probs[n, t], expected.log(), rtol=1e-10, atol=1e-12)
    # the loss averages positions 1..L-1 (what a shifted causal-LM loss scores)
    assert tiny_hmm.next_token_loss(tiny_samples) == pytest.approx(float(-log_probs[:, 1:].mean()))
    assert tiny_hmm.next_token_loss(tiny_samples, include_first=True) == pytest.approx(
        float(-log_probs.mean()))


def test_masked_posteriors_match_brute_force(tiny_hmm, all_sequences, tiny_samples, tiny_mask):
    posteriors = tiny_hmm.masked_token_posteriors(tiny_samples, tiny_mask)  # (N, L, V)
    assert posteriors.shape == (6, LENGTH, 4) and posteriors.dtype == torch.float64
    torch.testing.assert_close(posteriors.sum(-1), torch.ones(6, LENGTH, dtype=torch.float64))
    for n, (sequence, masked) in enumerate(zip(tiny_samples, tiny_mask)):
        for t in range(LENGTH):
            if masked[t]:
                expected = brute_force_masked_posterior(all_sequences, sequence, masked, t)
            else:  # a visible token is known for sure
                expected = torch.nn.functional.one_hot(sequence[t], 4).double()
            torch.testing.assert_close(posteriors[n, t], expected, rtol=1e-10, atol=1e-12)


def test_masked_posteriors_ignore_the_hidden_tokens(tiny_hmm, tiny_samples, tiny_mask):
    changed = torch.where(tiny_mask, (tiny_samples + 1) % 4, tiny_samples)
    torch.testing.assert_close(tiny_hmm.masked_token_posteriors(tiny_samples, tiny_mask),
                               tiny_hmm.masked_token_posteriors(changed, tiny_mask))
    one_row_mask = tiny_mask[2]  # (L,) broadcasts over the batch
    torch.testing.assert_close(tiny_hmm.masked_token_posteriors(tiny_samples, one_row_mask),
                               tiny_hmm.masked_token_posteriors(tiny_samples, one_row_mask.expand(6, -1)))


def test_bayes_masked_scores_match_brute_force(tiny_hmm, all_sequences, tiny_samples, tiny_mask):
    hits, best_probs, true_probs = [], [], []
    for sequence, masked in zip(tiny_samples, tiny_mask):
        for t in masked.nonzero().flatten().tolist():
            posterior = brute_force_masked_posterior(all_sequences, sequence, masked, t)
            hits.append(float(posterior.argmax() == sequence[t]))
            best_probs.append(float(posterior.max()))
            true_probs.append(float(posterior[sequence[t]]))
    scores = tiny_hmm.bayes_masked_accuracy(tiny_samples, tiny_mask)
    assert scores["accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert scores["expected_accuracy"] == pytest.approx(sum(best_probs) / len(best_probs))
    assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["expected_accuracy"] <= 1.0
    expected_loss = -torch.tensor(true_probs).log().mean()
    assert tiny_hmm.bayes_masked_loss(tiny_samples, tiny_mask) == pytest.approx(float(expected_loss))
    with pytest.raises(ValueError, match="no position"):
        tiny_hmm.bayes_masked_accuracy(tiny_samples, torch.zeros_like(tiny_mask))


def test_oracle_sits_between_zero_and_the_unigram_entropy():
    hmm = HMMLanguage(seed=0)
    held_out = hmm.sample(200, 64, seed=1)  # (200, 64)
    counts = torch.bincount(held_out.flatten(), minlength=hmm.n_symbols).double()
    frequencies = counts[counts > 0] / counts.sum()
    empirical_unigram_entropy = float(-(frequencies * frequencies.log()).sum())
    bayes_loss = hmm.next_token_loss(held_out)
    assert 0.0 < bayes_loss < empirical_unigram_entropy - 0.3  # context helps, a lot
    assert abs(hmm.unigram_entropy() - empirical_unigram_entropy) < 0.05
    mask = torch.rand(held_out.shape, generator=torch.Generator().manual_seed(2)) < 0.15
    assert 0.0 < hmm.bayes_masked_loss(held_out, mask) < bayes_loss  # both sides beat one side
    scores = hmm.bayes_masked_accuracy(held_out, mask)
    assert 1 / hmm.n_symbols < scores["accuracy"] < 1.0
    assert abs(scores["accuracy"] - scores["expected_accuracy"]) < 0.05


def test_sampling_is_seeded_and_ignores_global_rng():
    hmm = HMMLanguage(seed=3)
    torch.manual_seed(0)
    first = hmm.sample(4, 30, seed=9)
    torch.manual_seed(123)
    torch.rand(10)
    second = hmm.sample(4, 30, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, second)
    assert first.dtype == torch.long and first.shape == (4, 30)
    assert 0 <= int(first.min()) and int(first.max()) < hmm.n_symbols
    assert not torch.equal(first, hmm.sample(4, 30, seed=10))
    with pytest.raises(ValueError, match="exactly one"):
        hmm.sample(4, 30)


def test_models_are_seeded():
    torch.manual_seed(1)
    a = HMMLanguage(seed=4)
    torch.manual_seed(2)
    b = HMMLanguage(seed=4)
    assert torch.equal(a.transition, b.transition) and torch.equal(a.emission, b.emission)
    assert not torch.equal(a.emission, HMMLanguage(seed=5).emission)


def test_vocab_layout():
    assert (PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID) == (0, 1, 2, 3, 4)
    vocab = Vocab.for_hmm(24)
    assert len(vocab) == 29 and vocab.itos[:5] == list(SPECIAL_TOKENS)
    assert vocab.token_to_id("[MASK]") == MASK_ID and vocab.token_to_id("s0") == 5
    assert vocab.token_to_id("never seen") == UNK_ID
    symbols = torch.tensor([[0, 23, 7]])
    ids = vocab.symbols_to_ids(symbols)
    assert ids.tolist() == [[5, 28, 12]]
    assert torch.equal(vocab.ids_to_symbols(ids), symbols)
    with pytest.raises(ValueError, match="special"):
        vocab.ids_to_symbols(torch.tensor([MASK_ID, 6]))
    with pytest.raises(ValueError):
        vocab.symbols_to_ids(torch.tensor([24]))
    assert HMMLanguage().vocab.itos == vocab.itos


def test_stdlib_docstrings_without_imports():
    watched = {"tkinter", "turtle", "antigravity", "this", "turtledemo", "idlelib"}
    assert not watched & set(sys.modules), "precondition: a watched module is already imported"
    docstrings = stdlib_docstrings()
    assert not watched & set(sys.modules)
    assert len(docstrings) > 1000
    assert all(isinstance(d, str) and d.strip() for d in docstrings)
    assert sum("turtle" in d.lower() for d in docstrings) > 0  # turtle.py was read, not imported
    assert stdlib_docstrings(max_files=40) == docstrings[: len(stdlib_docstrings(max_files=40))]


@pytest.fixture(scope="module")
def english():
    return stdlib_docstrings(max_files=60)[:300]


def test_char_tokenizer_round_trip(english, tmp_path):
    tokenizer = CharTokenizer().fit(english)
    assert tokenizer.vocab.itos[:5] == list(SPECIAL_TOKENS)
    for text in english[:50]:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text) and min(ids) >= 5
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("\u2603") == [UNK_ID]
    assert tokenizer.decode([MASK_ID] + tokenizer.encode("ab"), skip_special_tokens=True) == "ab"
    assert tokenizer.decode(torch.tensor([MASK_ID])) == "[MASK]"
    tokenizer.save(tmp_path / "char.json")
    loaded = CharTokenizer.load(tmp_path / "char.json")
    assert loaded.vocab.itos == tokenizer.vocab.itos
    with pytest.raises(ValueError):
        WordTokenizer.load(tmp_path / "char.json")


def test_char_tokenizer_caps_vocab_by_frequency():
    tokenizer = CharTokenizer().fit(["aaab", "aac"], max_vocab=7)
    assert tokenizer.vocab.itos[5:] == ["a", "b"]  # a: 5, then b and c tie -> alphabetical
    assert tokenizer.encode("abc") == [5, 6, UNK_ID]


def test_word_tokenizer_rules():
    tokenizer = WordTokenizer()
    assert tokenizer.split("Return x_1 (an int), or None.") == [
        "Return", "x_1", "(", "an", "int", ")", ",", "or", "None", "."]
    assert tokenizer.split("the [MASK] is") == ["the", "[MASK]", "is"]
    assert tokenizer.normalize("Return  x_1( an int ) ,or\nNone .") == "Return x_1 (an int), or None."
    assert tokenizer.normalize("a = b [ 0 ]") == "a = b [0]"


def test_word_tokenizer_round_trip(english, tmp_path):
    tokenizer = WordTokenizer().fit(english)
    for text in english[:50]:
        ids = tokenizer.encode(text)
        assert UNK_ID not in ids
        normalized = tokenizer.normalize(text)
        assert tokenizer.decode(ids) == normalized
        assert tokenizer.decode(tokenizer.encode(normalized)) == normalized  # exact on normal text
    sentence = "Return the value (an int), or None."
    assert tokenizer.decode(tokenizer.encode(sentence)) == sentence
    assert tokenizer.decode(tokenizer.encode("the [MASK] value")) == "the [MASK] value"

    capped = WordTokenizer(lowercase=True).fit(english, max_vocab=50)
    assert len(capped) == 50
    assert UNK_ID in capped.encode("Zyzzyva the")
    assert capped.decode(capped.encode("The THE the")) == "the the the"
    capped.save(tmp_path / "word.json")
    loaded = WordTokenizer.load(tmp_path / "word.json")
    assert loaded.lowercase and loaded.vocab.itos == capped.vocab.itos


def test_lm_batches_from_sequences():
    n_rows, length = 5, 40
    tokens = torch.arange(n_rows)[:, None] * 1000 + torch.arange(length)  # (N, L): row*1000 + pos
    inputs, targets = lm_batches(tokens, batch_size=16, block_size=8,
                                 generator=torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (16, 8) and inputs.dtype == torch.long
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    assert torch.equal(targets, inputs + 1)  # next token of the same row: never crosses rows
    assert torch.equal(inputs, inputs[:, :1] + torch.arange(8))  # contiguous
    again, _ = lm_batches(tokens, 16, 8, torch.Generator().manual_seed(0))
    assert torch.equal(inputs, again)


def test_lm_batches_from_a_stream():
    stream = torch.arange(100)
    inputs, targets = lm_batches(stream, 64, 99, torch.Generator().manual_seed(1))
    assert torch.equal(inputs[0], stream[:99]) and torch.equal(targets[0], stream[1:])
    seen = torch.cat([lm_batches(stream, 64, 4, torch.Generator().manual_seed(s))[0][:, 0]
                      for s in range(4)])
    assert int(seen.min()) == 0 and int(seen.max()) == 95  # every start is possible
    with pytest.raises(ValueError, match="too short"):
        lm_batches(stream, 4, 100, torch.Generator())
