"""How loose are the importance-weighted NLLs that Pareto k flags? IW against AIS, and BDMC.

For each trained run: the first ``--limit`` test images, IW at K = ``--num-samples`` against
AIS at each of ``--ais-steps`` (``--ais-chains`` chains, ``--leapfrog`` steps per move, step
sizes adapted from tuning chains); NLL, seconds per image, the share of images whose AIS estimate
is more than 1 nat above the IW one, and the same among the images with Pareto k > 0.7.
Then BDMC on ``--bdmc-examples`` images simulated from the first run's model.

    .venv/bin/python benchmarks/evaluation.py --runs runs/vae-bmnist,runs/iwae-bmnist \\
        --limit 100 --ais-steps 100,1000 --out results/evaluation

``--speed`` instead times the estimators of this checkout against those at ``--baseline-rev``
(the code before issue 19, with torch's Bernoulli log-likelihood) on the same images and
checkpoint, in one process: AIS at ``--ais-steps`` x ``--ais-chains`` and IW at
``--num-samples``, seconds per image, the NLLs and their paired difference:

    .venv/bin/python benchmarks/evaluation.py --speed --pretrained vae-paper --limit 200 \\
        --batch 200 --ais-steps 1000 --ais-chains 8 --num-samples 1000 \\
        --gradient-dtype bfloat16 --out results/evaluation-speed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch
from _common import BASELINE_REV, baseline_infer, binarized_mnist, machine, sync, write_table
from iw_vs_pythae import torch_bernoulli

import pyro_genmodels as pg
from pyro_genmodels import infer
from pyro_genmodels.infer import ais_estimate, bdmc, importance_estimate
from pyro_genmodels.runs import load_run


def speed(args) -> None:
    """Old (``--baseline-rev``) against new estimators on one checkpoint, one process, batch
    by batch in turn (this machine's speed drifts over minutes)."""
    device = torch.device(args.device)
    module = pg.load_pretrained(args.pretrained).to(device)
    x, source = binarized_mnist("test", args.limit)
    x = x.to(device)
    old = baseline_infer(args.baseline_rev)
    steps = int(args.ais_steps.split(",")[-1])
    codes = {
        "new": (infer.ais_estimate, infer.log_marginal, contextlib.nullcontext),
        f"old ({args.baseline_rev})": (old.ais.ais_estimate, old.importance.log_marginal,
                                       torch_bernoulli),
    }  # fmt: skip
    if args.gradient_dtype:  # the new AIS with low-precision leapfrog gradients
        low = getattr(torch, args.gradient_dtype)
        codes[f"new, {args.gradient_dtype} gradients"] = (
            lambda *a, **k: infer.ais_estimate(*a, gradient_dtype=low, **k),
            infer.log_marginal,
            contextlib.nullcontext,
        )
    seconds = {(c, kind): 0.0 for c in codes for kind in ("iw", "ais")}
    per_image = {key: [] for key in seconds}
    for i, xb in enumerate(x.split(args.batch)):
        for code, (ais, iw, context) in codes.items():
            with context():
                torch.manual_seed(i)
                sync(device)
                start = time.perf_counter()
                per_image[code, "iw"].append(iw(module.model, module.guide, xb, args.num_samples))
                sync(device)
                seconds[code, "iw"] += time.perf_counter() - start
                start = time.perf_counter()
                est = ais(module.model, module.guide, xb, steps, args.ais_chains, seed=0,
                          num_leapfrog=args.leapfrog, example_offset=i * args.batch)  # fmt: skip
                sync(device)
                seconds[code, "ais"] += time.perf_counter() - start
                per_image[code, "ais"].append(est.log_marginal)
            print(json.dumps({f"{c} {k}": round(v, 2) for (c, k), v in seconds.items()}),
                  flush=True)  # fmt: skip
    per_image = {key: torch.cat(v).double() for key, v in per_image.items()}
    new_code, old_code = list(codes)[:2]
    lines = [
        f"{args.pretrained}, the first {len(x)} {source} test images, batches of {args.batch}, "
        f"old and new in turn on each batch; AIS {args.leapfrog} leapfrog steps per move. "
        f"{machine(device)}.",
        "",
        "| estimate | old s/image | new s/image | old / new | old NLL | new NLL "
        "| new - old (paired) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for kind, name in (("iw", f"IW K = {args.num_samples}"),
                       ("ais", f"AIS T = {steps} x {args.ais_chains} chains")):  # fmt: skip
        s_old, s_new = (seconds[c, kind] / len(x) for c in (old_code, new_code))
        nll_old, nll_new = (-per_image[c, kind].mean().item() for c in (old_code, new_code))
        diff = -(per_image[new_code, kind] - per_image[old_code, kind])
        se = diff.std().item() / math.sqrt(len(diff))
        rows.append(dict(estimate=name, old_s_per_image=s_old, new_s_per_image=s_new,
                         old_nll=nll_old, new_nll=nll_new, diff=diff.mean().item(),
                         diff_se=se))  # fmt: skip
        lines.append(f"| {name} | {s_old:.3f} | {s_new:.3f} | {s_old / s_new:.2f} | "
                     f"{nll_old:.2f} | {nll_new:.2f} | "
                     f"{diff.mean():+.3f} +- {se:.3f} |")  # fmt: skip
        for code in list(codes)[2:]:
            if kind == "iw":
                continue
            s_low = seconds[code, kind] / len(x)
            nll_low = -per_image[code, kind].mean().item()
            diff = -(per_image[code, kind] - per_image[old_code, kind])
            se = diff.std().item() / math.sqrt(len(diff))
            rows.append(dict(estimate=f"{name}, {code}", old_s_per_image=s_old,
                             new_s_per_image=s_low, new_nll=nll_low, diff=diff.mean().item(),
                             diff_se=se))  # fmt: skip
            lines.append(f"| {name}, {code.removeprefix('new, ')} | {s_old:.3f} | {s_low:.3f} | "
                         f"{s_old / s_low:.2f} | {nll_old:.2f} | {nll_low:.2f} | "
                         f"{diff.mean():+.3f} +- {se:.3f} |")  # fmt: skip
    write_table(Path(args.out), lines, rows)


def _iw(module, x, k, batch):
    lm, khat = [], []
    for xb in x.split(batch):
        est = importance_estimate(module.model, module.guide, xb, k)
        lm.append(est.log_marginal)
        khat.append(est.khat)
    return torch.cat(lm).double(), torch.cat(khat).double()


def _ais(module, x, steps, chains, batch, leapfrog):
    lm, acc = [], []
    for i, xb in enumerate(x.split(batch)):
        est = ais_estimate(module.model, module.guide, xb, steps, chains, num_leapfrog=leapfrog,
                           seed=0, example_offset=i * batch, progress=True)  # fmt: skip
        lm.append(est.log_marginal)
        acc.append(est.acceptance_rate)
    return torch.cat(lm).double(), torch.cat(acc).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", help="comma-separated run directories")
    parser.add_argument("--speed", action="store_true", help="old against new estimators")
    parser.add_argument("--pretrained", default="vae-paper", help="--speed: the checkpoint")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="--speed: the old code")
    parser.add_argument("--gradient-dtype", help="--speed: also AIS with bfloat16 gradients")
    parser.add_argument("--device", default="cpu", help="--speed: cpu or cuda")
    parser.add_argument("--limit", type=int, default=100, help="first N test images")
    parser.add_argument("--num-samples", type=int, default=5000, help="IW K")
    parser.add_argument("--ais-steps", default="100,1000", help="comma-separated AIS T")
    parser.add_argument("--ais-chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps per HMC move")
    parser.add_argument("--batch", type=int, default=100, help="images per AIS batch")
    parser.add_argument("--bdmc-examples", type=int, default=100)
    parser.add_argument("--bdmc-steps", default="100", help="comma-separated BDMC T")
    parser.add_argument("--out", default="results/evaluation")
    args = parser.parse_args()
    if args.speed:
        speed(args)
        return
    if not args.runs:
        parser.error("--runs is required (or --speed)")
    torch.manual_seed(0)
    rows, bdmc_rows = [], []
    for run_dir in args.runs.split(","):
        run = load_run(run_dir, which="best")
        module, name = run.module, Path(run_dir).name
        x = run.dataset("test", limit=args.limit).fixed()
        start = time.perf_counter()
        iw, khat = _iw(module, x, args.num_samples, 100)
        iw_seconds = (time.perf_counter() - start) / len(x)
        flagged = khat > 0.7
        base = {"run": name, "epoch": run.checkpoint["epoch"]}
        rows.append(
            {
                **base,
                "estimate": "IW",
                "cost": f"K = {args.num_samples}",
                "nll": -iw.mean().item(),
                "seconds_per_image": iw_seconds,
                "moved": float("nan"),
                "moved_flagged": float("nan"),
                "khat_frac": flagged.double().mean().item(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        for steps in (int(t) for t in args.ais_steps.split(",")):
            start = time.perf_counter()
            ais, acc = _ais(module, x, steps, args.ais_chains, args.batch, args.leapfrog)
            seconds = (time.perf_counter() - start) / len(x)
            moved = (ais - iw) > 1.0
            among_flagged = moved[flagged].double().mean().item() if flagged.any() else math.nan
            rows.append(
                {
                    **base,
                    "estimate": "AIS",
                    "cost": f"T = {steps} x {args.ais_chains} chains",
                    "nll": -ais.mean().item(),
                    "seconds_per_image": seconds,
                    "moved": moved.double().mean().item(),
                    "moved_flagged": among_flagged,
                    "khat_frac": math.nan,
                    "acceptance": acc.mean().item(),
                    "mean_gain_over_iw": (ais - iw).mean().item(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    first = load_run(args.runs.split(",")[0], which="best").module
    for steps in (int(t) for t in args.bdmc_steps.split(",")):
        start = time.perf_counter()
        x_like = torch.zeros(1, *first.image_shape)
        r = bdmc(first.model, first.guide, args.bdmc_examples, steps, args.ais_chains,
                 x_like=x_like, seed=1, num_leapfrog=args.leapfrog)  # fmt: skip
        bdmc_rows.append({"steps": steps, "lower": r.lower.mean().item(),
                          "upper": r.upper.mean().item(), "gap_mean": r.gap.mean().item(),
                          "gap_max": r.gap.max().item(),
                          "seconds": time.perf_counter() - start})  # fmt: skip
        print(json.dumps(bdmc_rows[-1]), flush=True)
    lines = [
        f"Static binarized MNIST, best-validation checkpoints, first {args.limit} test images; "
        f"AIS with {args.ais_chains} chains, {args.leapfrog} leapfrog steps. {machine()}.",
        "",
        "| run | estimate | cost | test NLL | s/image | Pareto k > 0.7 | AIS > IW + 1 nat "
        "| same, among k > 0.7 |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pct = lambda v: "" if v != v else f"{100 * v:.0f}%"  # noqa: E731
        lines.append(f"| {r['run']} (epoch {r['epoch']}) | {r['estimate']} | {r['cost']} | "
                     f"{r['nll']:.2f} | {r['seconds_per_image']:.2f} | {pct(r['khat_frac'])} | "
                     f"{pct(r['moved'])} | {pct(r['moved_flagged'])} |")  # fmt: skip
    lines += [
        "",
        f"BDMC on {args.bdmc_examples} images simulated from {Path(args.runs.split(',')[0]).name}:",
        "",
        "| AIS T | forward (lower) log p(x) | reverse (upper) log p(x) | gap mean | gap max | s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for b in bdmc_rows:
        gaps = f"{b['gap_mean']:.3f} | {b['gap_max']:.3f}"
        lines.append(
            f"| {b['steps']} | {b['lower']:.2f} | {b['upper']:.2f} | {gaps} | {b['seconds']:.0f} |"
        )
    write_table(Path(args.out), lines, rows + bdmc_rows)


if __name__ == "__main__":
    main()
