"""Timing helpers shared by the benchmarks: warm-up, then the median of repeats."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(steps: dict[str, Callable[[], object]], device: torch.device,
                   warmup: int = 2, repeats: int = 10) -> dict[str, float]:
    """Median wall time of each step. Repeats are interleaved (A, B, C, A, B, C, ...) so
    that a change in the machine's load during the run hits every contender alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads (torch {torch.__version__})")


def table(rows: list[tuple[str, str, str]], header=("implementation", "time", "ratio")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
