"""Shared helpers for the benchmark scripts (not part of the library)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    for candidate in (os.environ.get("PYRO_GENMODELS_DATA"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "binarized_mnist.npz").is_file():
            return Path(candidate)
    return None


def binarized_mnist(split: str, limit: int | None = None) -> tuple[torch.Tensor, str]:
    """Static binarized MNIST if available, else random binary 28x28 images (timing only)."""
    from pyro_genmodels.data import load_dataset

    root = data_dir()
    if root is None:
        gen = torch.Generator().manual_seed(0)
        n = limit or 1000
        return (torch.rand(n, 1, 28, 28, generator=gen) < 0.13).float(), "random binary 28x28"
    return load_dataset(
        "binarized-mnist", split, data_dir=root, limit=limit
    ).fixed(), "binarized-mnist"


def machine() -> str:
    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Achieved float32 GFLOP/s of an n x n matmul on ``device`` (best of ``repeats``)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def write_table(out: Path, lines: list[str], rows: list[dict] | None = None) -> None:
    """Print a markdown table and write it to ``out/table.md`` (rows to ``out/results.json``)."""
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    if rows is not None:
        (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
