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


def machine(device: torch.device | None = None) -> str:
    """The hardware a table's figures come from: the GPU's name when ``device`` is one."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
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


#: the last commit before issue 19's estimators: the "old code" of the A/B benchmarks
BASELINE_REV = "faf73f0"


#: the modules of ``pyro_genmodels.infer`` the baseline estimators import
BASELINE_MODULES = ("ais", "importance", "diagnostics", "hints", "kl")


def baseline_source(rev: str, name: str) -> str:
    """``pyro_genmodels/infer/NAME.py`` at git revision ``rev``: from git, or on a machine
    given a working tree without ``.git`` (the GPU machine) from ``.baseline/REV/NAME.py``,
    written beforehand by ``benchmarks/_common.py --export-baseline``."""
    import subprocess

    copy = ROOT / ".baseline" / rev / f"{name}.py"
    if copy.is_file():
        return copy.read_text()
    return subprocess.run(
        ["git", "show", f"{rev}:pyro_genmodels/infer/{name}.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def write_baseline(rev: str, folder: Path) -> None:
    """Write the baseline modules at ``rev`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in BASELINE_MODULES:
        (folder / f"{name}.py").write_text(baseline_source(rev, name))


def baseline_infer(rev: str = BASELINE_REV):
    """``pyro_genmodels.infer``'s estimators as they were at git revision ``rev``, imported as
    a separate package (``_baseline_infer``) so that old and new run in one process."""
    import importlib
    import sys
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="baseline-"))
    package = root / "_baseline_infer"
    write_baseline(rev, package)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    for name in ("ais", "importance", "kl"):
        importlib.import_module(f"_baseline_infer.{name}")
    return importlib.import_module("_baseline_infer")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="benchmark helpers")
    parser.add_argument("--export-baseline", metavar="REV", nargs="?", const=BASELINE_REV,
                        help="write the baseline estimators to .baseline/REV (git-ignored), "
                        "for a machine that gets the working tree without .git")  # fmt: skip
    args = parser.parse_args()
    if args.export_baseline:
        folder = ROOT / ".baseline" / args.export_baseline
        write_baseline(args.export_baseline, folder)
        print(folder)
