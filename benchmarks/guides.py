"""What does each posterior family (and objective) buy in log p(x)?

Trains every family with the same encoder, decoder and budget on statically
binarized MNIST, picks each run's best epoch on the validation split, and
writes a markdown table: test ELBO, importance-weighted NLL (K samples per image
on the first ``--test-limit`` test images), Pareto k mean and max, KL, seconds
per epoch.

    .venv/bin/python benchmarks/guides.py --epochs 10 --test-limit 1000 --out results/guides
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import data_dir, machine, write_table

from pyro_genmodels.evaluation import evaluate_run
from pyro_genmodels.infer import TrainConfig
from pyro_genmodels.runs import train_run

BASE = {"latent_dim": 50, "hidden_dims": (512, 256)}
#: (label, model config, objective, particles)
CONFIGS = [
    ("diagonal", {"guide": "diagonal"}, "elbo", 1),
    ("diagonal, meanfield (analytic KL)", {"guide": "diagonal"}, "meanfield", 1),
    ("diagonal, IWAE k=5", {"guide": "diagonal"}, "iwae", 5),
    ("full-rank", {"guide": "full-rank"}, "elbo", 1),
    ("low-rank (rank 2)", {"guide": "low-rank", "guide_options": {"rank": 2}}, "elbo", 1),
    ("mixture (4 components)", {"guide": "mixture", "guide_options": {"num_components": 4}},
     "elbo", 1),
    ("iaf (2 steps)", {"guide": "iaf", "guide_options": {"flow_steps": 2}}, "elbo", 1),
    ("diagonal, VampPrior (50)", {"guide": "diagonal", "prior": "vamp", "prior_components": 50},
     "elbo", 1),
    ("gmvae (10 clusters, enumerated)", {"guide": "gmvae", "prior_components": 10}, "enum", 1),
    ("categorical (30 codes x 10, Gumbel-softmax)",
     {"guide": "categorical", "latent_dim": 30, "guide_options": {"num_classes": 10}},
     "meanfield", 1),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--out", default="results/guides", help="run directories and table")
    parser.add_argument("--only", help="comma-separated labels' first words to run")
    args = parser.parse_args()
    root = data_dir()
    if root is None:
        raise SystemExit("needs binarized_mnist.npz: set $PYRO_GENMODELS_DATA or ../shared/data")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (label, config, objective, particles) in enumerate(CONFIGS):
        if args.only and label.split()[0].strip(",") not in args.only.split(","):
            continue
        run_dir = out / f"run{i}"
        train_config = TrainConfig(
            epochs=args.epochs, objective=objective, num_particles=particles, progress=False
        )
        resume = (run_dir / "checkpoint.pt").is_file()
        _, metrics = train_run(
            "vae", "binarized-mnist", run_dir, {**BASE, **config}, train_config, root,
            resume=resume,
        )  # fmt: skip
        r = evaluate_run(
            run_dir, num_samples=args.num_samples, limit=args.test_limit, progress=False
        )
        seconds = sum(m["seconds"] for m in metrics) / len(metrics)
        row = {"label": label, "objective": objective, "seconds_per_epoch": seconds, **r}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("label", "nll", "elbo", "psis_khat_mean")}),
              flush=True)  # fmt: skip
    lines = [
        f"Static binarized MNIST; MLP 784-512-256 encoder, 256-512-784 decoder, latent 50; "
        f"{args.epochs} epochs, batch 128, Adam 1e-3; best epoch on the validation split; "
        f"test NLL by importance sampling with K={args.num_samples} on the first "
        f"{args.test_limit} test images. {machine()}.",
        "",
        "| q(z\\|x) / objective | best epoch | test ELBO | test NLL (IW) | Pareto k mean | "
        "Pareto k max | KL | s/epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['epoch']} | {r['elbo']:.2f} | {r['nll']:.2f} | "
            f"{r['psis_khat_mean']:.2f} | {r['psis_khat_max']:.2f} | {r['kl']:.2f} | "
            f"{r['seconds_per_epoch']:.1f} |"
        )
    write_table(out, lines, rows)


if __name__ == "__main__":
    main()
