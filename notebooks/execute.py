"""Execute notebooks in their normal (not fast) mode and store the outputs in place.

``python notebooks/execute.py [NOTEBOOK ...]`` (default: all of them), from the repository
root with the package installed. Each notebook's first line is rewritten to say how long it
took here; a cell that writes to stderr (a warning) fails the run and nothing is written.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
TIME_LINE = "*Runs in about"


def _time_line(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    cores = os.cpu_count()
    return (f"{TIME_LINE} {minutes} min on a laptop CPU ({cores} cores, {platform.machine()}; "
            f"`PYRO_GENMODELS_FAST=1` runs it in seconds).*")  # fmt: skip


def stderr_outputs(nb) -> list[str]:
    """The text each code cell wrote to stderr (warnings), as ``"cell N: text"``."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                found.append(f"cell {i}: {out['text'].strip()[:300]}")
    return found


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "PYRO_GENMODELS_FAST"}
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    start = time.perf_counter()
    NotebookClient(nb, timeout=3600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute(env=env)  # fmt: skip
    seconds = time.perf_counter() - start
    warnings = stderr_outputs(nb)
    if warnings:
        raise RuntimeError(f"{path.name} wrote to stderr:\n" + "\n".join(warnings))
    first = nb.cells[0]
    lines = first.source.splitlines()
    body = [line for line in lines if not line.startswith(TIME_LINE)]
    first.source = "\n".join([body[0], "", _time_line(seconds), *body[1:]]).replace(
        "\n\n\n", "\n\n"
    )
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        seconds = execute(path)
        print(f"{path.name}: {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
