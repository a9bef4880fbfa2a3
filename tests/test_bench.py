"""The benchmarks' own code runs, at toy sizes (the measured numbers are in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO


def load_bench(name: str, monkeypatch):
    """Import bench/<name>.py; the sys.path entries it adds are undone after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scgpt_step_agrees_and_times_at_toy_size(monkeypatch, capsys):
    bench = load_bench("scgpt_step", monkeypatch)
    threads = torch.get_num_threads()
    try:  # one thread: toy-sized ops are all overhead, and the second thread only contends
        results = bench.main(["--genes", "20", "--batch", "2", "--dim", "8", "--heads", "2", "--layers", "1",
                              "--ff", "16", "--warmup", "0", "--repeats", "1", "--threads", "1",
                              "--fractions", "0.25", "1.0"])
    finally:
        torch.set_num_threads(threads)
    assert set(results) == {0.25, 1.0}
    assert all(len(times) == 3 and min(times.values()) > 0 for times in results.values())
    out = capsys.readouterr().out
    assert out.count("max abs diff") == 4 and out.count("target ScGPT <= two-stream") == 2
    with pytest.raises(SystemExit):
        bench.main(["--fractions", "0"])  # no unknown gene: nothing to train


def test_notebooks_bench_uses_the_test_suites_list(monkeypatch):
    bench = load_bench("notebooks", monkeypatch)
    from test_notebooks import NOTEBOOKS

    assert bench.select(None) == NOTEBOOKS
    chosen = bench.select(["course/01", "solutions/01"])
    assert chosen and all(str(p).startswith(("course/01", "solutions/01")) for p in chosen)
    row = {"seconds": 130.0, "status": "ok", "limit": 120}
    table = bench.summary_table([Path("course/x.ipynb")], {"quick": {"course/x.ipynb": row}})
    assert "| `course/x.ipynb` | 130.0 **over** | ok |" in table and "| total | 130 |" in table


def test_gpt_train_mfu_smoke_run_and_flop_counts_agree():
    """The MFU benchmark runs end to end at the tiny size on CPU, and its two FLOP counts agree:
    exactly on the weight matmuls (blocks, LM head); attention by torch's 14 L T d against
    PaLM's 12 L T d (its SDPA backward formula counts the recomputed Q K^T); the totals within
    2% (the biases and LayerNorms are in 6N but no matmul)."""
    command = [sys.executable, str(REPO / "bench" / "gpt_train_mfu.py"), "--tiny", "--device", "cpu",
               "--steps", "2", "--warmup", "1", "--threads", "1"]
    proc = subprocess.run(command,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    counts = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1].replace(",", "").isdigit():
            counts[cells[0].split(" (")[0]] = tuple(int(c.replace(",", "")) for c in cells[1:])
    L, d, V, T, tokens = 2, 64, 512, 64, 2 * 64  # --tiny: 2 layers, d=64, vocab 512, B=2, T=64
    assert counts["block weight matmuls"] == (72 * L * d * d * tokens,) * 2
    assert counts["LM head"] == (6 * d * V * tokens,) * 2
    assert counts["biases + LayerNorms"] == (6 * (13 * L * d + 2 * d) * tokens, 0)
    assert counts["attention"] == (12 * L * T * d * tokens, 14 * L * T * d * tokens)
    analytic, measured = counts["total"]
    assert analytic == sum(a for part, (a, _) in counts.items() if part != "total")
    assert measured == sum(m for part, (_, m) in counts.items() if part != "total")
    assert abs(analytic / measured - 1) < 0.02
    assert "| MFU | n/a |" in out and "tokens/s" in out and "ms/step" in out
    assert "target MFU" not in out  # only on CUDA with a known peak


def gpu_steps() -> list[tuple[str, list[str]]]:
    """``GPU_STEPS`` of the Makefile's ``gpu-check``: (name, python arguments) per step."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("GPU_STEPS :=")]
    return [(step.split(":")[0], step.split(":")[1:]) for step in line.split(":=", 1)[1].split()]


class Parsed(Exception):
    """Raised right after a script has parsed its arguments: nothing is run."""


def test_gpu_check_steps_are_valid_commands(monkeypatch):
    """Every step of ``make gpu-check`` names an existing script or module and arguments that
    its own parser accepts (a typo would only show on the GPU machine otherwise)."""
    import argparse

    steps = dict(gpu_steps())
    assert {"verify", "cuda-tests", "encoder-step", "gpt-generate", "gpt-train-mfu"} <= set(steps)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)  # exits (SystemExit) on an unknown or invalid argument
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for name, args in steps.items():
        if args[0] == "-m":
            assert args[1] in ("autograder", "pytest"), name
            for path in (a for a in args if a.startswith("tests/")):
                assert (REPO / path).is_file(), f"{name}: {path} does not exist"
            continue
        script = REPO / args[0]
        assert script.is_file(), f"{name}: {script} does not exist"
        monkeypatch.setattr(sys, "argv", [str(script), *args[1:]])
        module = load_bench(script.stem, monkeypatch)
        with pytest.raises(Parsed):
            module.main(args[1:]) if "argv" in module.main.__code__.co_varnames else module.main()
    verify = steps["verify"]
    assert verify[1:] == ["autograder", "references", "verify", "all"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_check_says_when_there_is_no_gpu(tmp_path):
    proc = subprocess.run(["make", "--no-print-directory", "gpu-check", f"PY={sys.executable}",
                           f"GPU_OUT={tmp_path}", "STAMP=pyproject.toml"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "torch sees no CUDA device" in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing ran"


def test_bpe_tokenizer_bench_runs_at_toy_size(monkeypatch, capsys):
    """Training and encoding rows for genlab and HF (tiktoken's when it is installed); the three
    encoders give the same ids on every document (the bench checks them before timing)."""
    bench = load_bench("bpe_tokenizer", monkeypatch)
    results = bench.main(["--max-files", "12", "--vocab", "300", "--repeats", "1", "--workers", "2"])
    out = capsys.readouterr().out
    assert {"train genlab train_bpe, workers=1", "train genlab train_bpe, workers=2",
            "train HF tokenizers BpeTrainer (all cores)", "encode genlab BPETokenizer, cache warm",
            "encode HF tokenizers (1 thread)"} <= set(results)
    assert all(t > 0 for t in results.values())
    n_documents = int(out.split(" documents")[0].split()[-1].replace(",", ""))
    assert f"HF {n_documents}/{n_documents}" in out
    assert "target genlab (cache warm) within 5x of HF tokenizers" in out
    if importlib.util.find_spec("tiktoken"):
        assert f"tiktoken {n_documents}/{n_documents}" in out
