"""Issue 19's programs, old estimators against new: each case's value (or the error it
raises) beside the exact log p(x), from one process.

    .venv/bin/python benchmarks/any_program.py [--baseline-rev faf73f0] [--out results/any_program]

"Old" is ``pyro_genmodels.infer`` at ``--baseline-rev`` (the commit before the fixes).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from _common import BASELINE_REV, ROOT, baseline_infer, machine, write_table

sys.path.insert(0, str(ROOT / "tests"))
programs = importlib.import_module("programs")
F64 = torch.float64


def _fmt(fn) -> str:
    try:
        value = fn()
    except Exception as error:  # noqa: BLE001 (a table of what each version does)
        kind = "ValueError" if isinstance(error, ValueError) else type(error).__name__
        return f"{kind}: {str(error).splitlines()[0][:60]}"
    return "[" + ", ".join(f"{v:.2f}" for v in value.tolist()) + "]"


def cases():
    """``(case, exact log p(x), model, guide, x)``."""
    x = torch.tensor([0.5, 2.0], dtype=F64)
    conditioned = pyro.condition(programs.normal_normal, data={"z": torch.tensor(0.0, dtype=F64)})
    exact_cond = dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0)) + dist.Normal(0.0, 1.0).log_prob(
        x
    )

    def lognormal_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(x.new_zeros(()), 1.0))

    def delta_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(x / 2))

    x3 = torch.tensor([-1.0, 0.5, 2.5], dtype=F64)
    gp = programs.GammaPoisson()
    counts = torch.tensor([0.0, 3.0, 7.0, 15.0], dtype=F64)
    lkj = programs.LKJNormal()
    torch.manual_seed(0)
    xl = torch.randn(3, lkj.m, 2, dtype=F64) @ torch.tensor([[1.0, 0.6], [0.0, 0.8]], dtype=F64)
    chain = programs.MaskedGammaChain([4, 2, 1])
    xc = torch.tensor([[1.0, 4.0, 2.0, 0.0], [3.0, 0.0, 9.0, 9.0], [2.0, 5.0, 5.0, 5.0]], dtype=F64)
    return [
        ("1 guide samples an observed site", exact_cond, conditioned, programs.normal_guide, x),
        ("2 LogNormal guide, Normal latent", programs.normal_normal_exact(x3),
         programs.normal_normal, lognormal_guide, x3),
        ("3 point-mass guide", programs.normal_normal_exact(x3), programs.normal_normal,
         delta_guide, x3),
        ("4 LKJCholesky latent", lkj.exact(xl), lkj.model, None, xl),
        ("5 Gamma-Poisson, AIS defaults", gp.exact(counts), gp.model, None, counts),
        ("6 masked Gamma chain", chain.exact(xc), chain.model, None, xc),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--out", default="results/any_program")
    args = parser.parse_args()
    import pyro_genmodels.infer as new

    old = baseline_infer(args.baseline_rev)
    old_ais, old_iw = old.ais, old.importance
    lines = [
        f"Old: pyro_genmodels.infer at {args.baseline_rev}; new: this checkout. IW K = 20000, "
        f"AIS T = 100 x 16 chains, default HMC settings, seed 0. {machine()}.",
        "",
        "| case | exact | IW old | IW new | AIS old | AIS new |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for name, exact, *pair in cases():
        torch.manual_seed(0)
        row = {
            "case": name,
            "exact": _fmt(lambda exact=exact: exact),
            "iw_old": _fmt(lambda p=pair: old_iw.log_marginal(*p, 20000)),
            "iw_new": _fmt(lambda p=pair: new.log_marginal(*p, 20000)),
            "ais_old": _fmt(lambda p=pair: old_ais.ais_log_marginal(*p, 100, 16, seed=0)),
            "ais_new": _fmt(lambda p=pair: new.ais_log_marginal(*p, 100, 16, seed=0)),
        }
        rows.append(row)
        lines.append("| " + " | ".join(row.values()) + " |")
        print(lines[-1], flush=True)
    write_table(Path(args.out), lines, rows)


if __name__ == "__main__":
    main()
