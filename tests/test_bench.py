"""The benchmarks' own code runs, at toy sizes (the measured numbers are in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
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
