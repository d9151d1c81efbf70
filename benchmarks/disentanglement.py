"""The objectives for disentanglement compared on sprites, over seeds.

Each objective trains the same VAE (disentanglement_lib's network: four 4x4 stride-2
convolutions, 10 latents, a Bernoulli decoder; ``network="conv-4x4"``) on the sprites,
then ``evaluate --disentanglement`` scores its q(z|x) means on held-out test images. The
table gives each metric's mean and spread (min-max) over the seeds, the validation ELBO and
the training time. Runs already in OUT are reused (delete them to retrain).

    python benchmarks/disentanglement.py --out results/disentanglement \\
        [--image-size 32 --limit 50000 --epochs 5 --seeds 0 1 2]

disentanglement_lib trains 300,000 steps of batch 64 on the 64x64 images; the defaults
here are a CPU budget (the 32x32 images, 50,000 of them, 5 epochs: about 3900 steps, Adam
at 5e-4 where disentanglement_lib takes 1e-4).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import machine, write_table

from pyro_genmodels.evaluation import evaluate_run
from pyro_genmodels.runs import train_run

#: name -> (objective, its settings): the usual values of each paper or of disentanglement_lib
OBJECTIVES = {
    "beta-VAE (beta 6)": ("elbo", {"beta": 6.0}),
    "beta-TCVAE (beta 6)": ("beta-tcvae", {"beta": 6.0}),
    "FactorVAE (gamma 35)": ("factor-vae", {"factor_gamma": 35.0}),
    "DIP-VAE-I (lambda_od 10)": ("dip-vae-i", {"dip_lambda_od": 10.0}),
    "DIP-VAE-II (lambda_od 10)": ("dip-vae-ii", {"dip_lambda_od": 10.0}),
    "AnnealedVAE (C 25, gamma 1000)": ("annealed", {"capacity": 25.0, "capacity_gamma": 1000.0}),
    "VAE (beta 1)": ("elbo", {}),
}
METRICS = ("mig", "sap", "dci_disentanglement", "factor_vae_score", "beta_vae_score")


def run_one(out: Path, objective: str, settings: dict, seed: int, args) -> dict:
    run_dir = out / f"{objective}-{'-'.join(f'{k}{v}' for k, v in settings.items())}-s{seed}"
    start = time.perf_counter()
    metrics = run_dir / "metrics.jsonl"
    done = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    if done < args.epochs:  # a new run, or one stopped before its last epoch: resumed
        train_config = {"objective": objective, "epochs": args.epochs, "batch_size": 64,
                        "lr": 5e-4, "seed": seed, "progress": False, **settings}  # fmt: skip
        if objective == "annealed":
            train_config["capacity_epochs"] = args.epochs * 0.8
        model_config = {"latent_dim": 10, "network": "conv-4x4", "hidden_dims": (256,)}
        resume = (run_dir / "checkpoint.pt").is_file()
        train_run("vae", "sprites", run_dir, model_config,
                  {"epochs": args.epochs} if resume else train_config, limit=args.limit,
                  image_size=args.image_size, resume=resume)  # fmt: skip
        (run_dir / "evaluation.json").unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    cached = run_dir / "evaluation.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    r = evaluate_run(run_dir, num_samples=100, limit=args.test_images, progress=False,
                     disentanglement=True, intervention_points=args.intervention_points,
                     checkpoint="last", seed=seed)  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    r.update(train_seconds=sum(row["seconds"] for row in rows) if rows else seconds,
             valid_elbo=rows[-1]["valid_elbo"], seed=seed)  # fmt: skip
    r.pop("per_image_nll", None)
    cached.write_text(json.dumps(r, indent=2) + "\n")
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/disentanglement"))
    parser.add_argument("--image-size", type=int, default=32, choices=(32, 64))
    parser.add_argument("--limit", type=int, default=50000, help="training images")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-images", type=int, default=5000, help="images scored")
    parser.add_argument("--intervention-points", type=int, default=500)
    parser.add_argument("--only", nargs="*", help="the objectives (table names) to run")
    args = parser.parse_args()
    names = [n for n in OBJECTIVES if not args.only or n in args.only]
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:  # seed by seed: a partial run still compares every objective
        for name in names:
            objective, settings = OBJECTIVES[name]
            results.setdefault(name, []).append(run_one(args.out, objective, settings, seed, args))
            print(f"{name}, seed {seed}: " + ", ".join(
                f"{m} {results[name][-1][m]:.3f}" for m in METRICS), flush=True)  # fmt: skip

    def cell(values) -> str:
        v = np.asarray(values, float)
        return f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})"

    lines = [
        f"Sprites {args.image_size}x{args.image_size}, {args.limit} training images, "
        f"{args.epochs} epochs of batch 64, seeds {args.seeds}; metrics on {args.test_images} "
        f"test images ({machine()}); mean (min-max) over seeds",
        "",
        "| objective | MIG | SAP | DCI disent. | FactorVAE score | beta-VAE score | "
        "valid ELBO | active units | train s (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for name, rs in results.items():
        lines.append(
            f"| {name} | " + " | ".join(cell([r[m] for r in rs]) for m in METRICS)
            + f" | {np.mean([r['valid_elbo'] for r in rs]):.1f} | "
            + "/".join(str(r["active_units"]) for r in rs)
            + f" | {np.median([r['train_seconds'] for r in rs]):.0f} |"
        )  # fmt: skip
        rows += [{"objective": name, **r} for r in rs]
    write_table(args.out, lines, rows)


if __name__ == "__main__":
    main()
