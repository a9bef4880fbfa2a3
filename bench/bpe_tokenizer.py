"""Byte-level BPE: genlab.tokenizers (plain Python) against Hugging Face ``tokenizers`` and
``tiktoken`` (Rust), training and encoding on the same text, in one run.

    .venv/bin/python bench/bpe_tokenizer.py [--corpus docstrings|sources] [--max-files N]
            [--vocab 4096] [--repeats 3] [--workers 2]

The corpus ships offline with Python: ``docstrings`` (default) is the course's text, the
docstrings of the standard library (``genlab.data.stdlib_docstrings``, about 2 MB);
``sources`` is the text of the same ``.py`` files, about ten times larger, where the
pre-tokenization's share of training grows. ``--max-files`` reads only the first N files.
Documents are joined by ``<|endoftext|>``.

- Training: ``train_bpe`` (one process, and ``--workers`` processes for the pre-token
  counts) against HF's ``BpeTrainer`` (byte-level alphabet, GPT-2 pre-tokenizer; it uses its
  own thread pool, on every core) at the same vocabulary size, on the same file. Only the
  times compare: HF's trainer does not cut special tokens out of its training text (it counts
  the pairs inside ``<|endoftext|>``) and breaks ties between equally frequent pairs its own
  way, so its merges differ. Then where genlab's training time goes: the two phases
  (pre-tokenization = regex + counting, and the merge loop), timed apart.
- Encoding: genlab's vocabulary and merges, loaded into HF's BPE model and into a tiktoken
  ``Encoding`` (ranks = genlab's ids, which follow the merge order); every document encoded
  by each, one thread (``TOKENIZERS_PARALLELISM=false``; tiktoken one call per document);
  genlab with its pre-token cache warm (the steady state when encoding a corpus) and cold (a
  fresh tokenizer for each repeat); HF's BPE model keeps its own cache of words, warm after
  the warm-up. The ids of all three are compared before timing.

Target (issue 17): encoding with the cache within 5x of the Rust libraries
(ratio = genlab time / peer time <= 5).
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before tokenizers is imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, table  # noqa: E402

from genlab.data import _stdlib_sources, stdlib_docstrings  # noqa: E402
from genlab.tokenizers import GPT2_PATTERN, BPETokenizer, count_pretokens, learn_merges, train_bpe  # noqa: E402

EOT = "<|endoftext|>"
CPU = torch.device("cpu")


def hf_from_merges(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]]):
    """HF's byte-level BPE holding genlab's ids and merges (tokens in GPT-2's byte-to-unicode form)."""
    import tokenizers as hf

    from genlab.tokenizers import bytes_to_unicode

    b2u = bytes_to_unicode()
    as_str = lambda token: "".join(b2u[b] for b in token)  # noqa: E731
    special = {EOT.encode(): EOT}
    model = hf.models.BPE(vocab={special.get(t) or as_str(t): i for i, t in vocab.items()},
                          merges=[(as_str(a), as_str(b)) for a, b in merges])
    tokenizer = hf.Tokenizer(model)
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.add_special_tokens([hf.AddedToken(EOT, special=True, normalized=False)])
    return tokenizer


def tiktoken_from_merges(vocab: dict[int, bytes]):
    """A tiktoken Encoding whose ranks are genlab's ids (None when tiktoken is not installed)."""
    try:
        import tiktoken
    except ImportError:
        return None
    specials = {EOT: 256}
    ranks = {token: i for i, token in vocab.items() if i not in specials.values()}
    return tiktoken.Encoding("genlab-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def hf_train(path: Path, vocab_size: int):
    import tokenizers as hf

    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train([str(path)], trainer)
    return tokenizer


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=("docstrings", "sources"), default="docstrings")
    parser.add_argument("--max-files", type=int, default=None, help="read the first N files only")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    if args.corpus == "docstrings":
        documents = stdlib_docstrings(args.max_files)
    else:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = _stdlib_sources(root)[:args.max_files]
        documents = [f.read_bytes().decode("utf-8", errors="replace") for f in files]
    text = EOT.join(documents)
    megabytes = len(text.encode("utf-8")) / 1e6
    folder = tempfile.TemporaryDirectory()
    path = Path(folder.name) / f"{args.corpus}.txt"
    path.write_bytes(text.encode("utf-8"))
    print(f"# byte-level BPE, stdlib {args.corpus}: {len(documents):,} documents, {megabytes:.2f} MB, "
          f"vocab {args.vocab}; {os.cpu_count()} cores; median of {args.repeats} interleaved repeats")

    # ---- training ----
    results: dict[str, float] = {}
    trained: dict[str, object] = {}

    def train_ours(workers: int):
        def run():
            trained["ours"] = train_bpe(path, args.vocab, [EOT], progress=False, workers=workers)
        return run

    def train_hf():
        hf_train(path, args.vocab)

    steps = {"genlab train_bpe, workers=1": train_ours(1)}
    if args.workers > 1:
        steps[f"genlab train_bpe, workers={args.workers}"] = train_ours(args.workers)
    steps["HF tokenizers BpeTrainer (all cores)"] = train_hf
    times = median_seconds(steps, CPU, warmup=0, repeats=args.repeats)
    peer = times["HF tokenizers BpeTrainer (all cores)"]
    print("\n## training\n")
    print(table([(name, f"{t:.2f} s", f"{megabytes / t:.2f} MB/s", f"{t / peer:.2f}x")
                 for name, t in times.items()],
                header=("implementation", "median time", "throughput", "time / HF")))
    vocab, merges = trained["ours"]
    results.update({f"train {name}": t for name, t in times.items()})

    # where genlab's training time goes
    pretokenize, setup, loop = ("pre-tokenization (regex + counting), 1 process",
                                "pair counts, pair index and heap, built once", "the merges")
    phase: dict[str, list[float]] = {pretokenize: [], setup: [], loop: []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        counts = count_pretokens(path, [EOT], workers=1, progress=False)
        counted = time.perf_counter()
        learn_merges(counts, 256 + 1 + 1, [EOT], progress=False)  # bytes, <|endoftext|>, one merge: the set-up
        built = time.perf_counter()
        learn_merges(counts, args.vocab, [EOT], progress=False)
        phase[pretokenize].append(counted - start)
        phase[setup].append(built - counted)
        phase[loop].append(time.perf_counter() - built - (built - counted))
    medians = {name: sorted(t)[len(t) // 2] for name, t in phase.items()}
    total = sum(medians.values())
    print(f"\ngenlab training, phase by phase ({len(counts):,} distinct pre-tokens, {len(merges)} merges):\n")
    print(table([(name, f"{t:.2f} s", f"{100 * t / total:.0f}%") for name, t in medians.items()],
                header=("phase", "median time", "share")))
    results.update({f"phase {name}": t for name, t in medians.items()})

    # ---- encoding ----
    ours = BPETokenizer(vocab, merges, [EOT])
    hf = hf_from_merges(vocab, merges)
    tk = tiktoken_from_merges(vocab)
    expected = [ours.encode(d) for d in documents]  # also warms the cache
    n_ids = sum(map(len, expected))
    hf_ids = [e.ids for e in hf.encode_batch(documents)]
    check = [f"HF {sum(a == b for a, b in zip(expected, hf_ids))}/{len(documents)}"]
    if tk is not None:
        tk_ids = [tk.encode_ordinary(d) for d in documents]
        check.append(f"tiktoken {sum(a == b for a, b in zip(expected, tk_ids))}/{len(documents)}")
    print(f"\n## encoding ({n_ids:,} ids, {megabytes * 1e6 / n_ids:.2f} bytes per token)\n")
    print("documents with ids identical to genlab's: " + ", ".join(check))

    def encode_ours_warm():
        for d in documents:
            ours.encode(d)

    def encode_ours_cold():
        fresh = BPETokenizer(vocab, merges, [EOT])
        for d in documents:
            fresh.encode(d)

    steps = {"genlab BPETokenizer, cache warm": encode_ours_warm,
             "genlab BPETokenizer, cache cold": encode_ours_cold,
             "HF tokenizers (1 thread)": lambda: hf.encode_batch(documents)}
    if tk is not None:
        steps["tiktoken (1 thread)"] = lambda: [tk.encode_ordinary(d) for d in documents]
    times = median_seconds(steps, CPU, warmup=1, repeats=args.repeats)
    warm = times["genlab BPETokenizer, cache warm"]
    print(table([(name, f"{t:.3f} s", f"{megabytes / t:.2f} MB/s", f"{warm / t:.2f}x")
                 for name, t in times.items()],
                header=("implementation", "median time", "throughput", "genlab warm / this")))
    for name, t in times.items():
        if not name.startswith("genlab"):
            verdict = "met" if warm / t <= 5 else "MISSED"
            print(f"target genlab (cache warm) within 5x of {name}: {verdict} (ratio {warm / t:.2f})")
    if tk is None:
        print("tiktoken is not installed (pip install tiktoken): its row is missing")
    results.update({f"encode {name}": t for name, t in times.items()})
    folder.cleanup()
    return results


if __name__ == "__main__":
    main()
