"""``make demo``: train a small VAE on the offline digits data and show what it learned.

Writes into ``--out`` (default ``demo-output``): the run directory, a sample grid,
reconstructions, training curves, and a figure of the log p(x) estimate against
K for the importance-weighted estimator (z ~ q(z|x)) next to the naive one
(z ~ p(z)); prints the test log p(x) with its Pareto k.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from .evaluation import evaluate_images  # noqa: E402
from .infer import TrainConfig, log_marginal, prior_log_marginal  # noqa: E402
from .plots import (  # noqa: E402
    plot_images,
    plot_log_marginal_vs_k,
    plot_reconstructions,
    plot_training_curves,
)
from .runs import train_run  # noqa: E402

MODEL_CONFIG = {"latent_dim": 8, "hidden_dims": (256, 128)}


def estimates_vs_k(module, x: torch.Tensor, ks, repeats: int) -> dict[str, np.ndarray]:
    """Mean log p(x) over ``x`` for each K, repeated: IW (q) and naive (prior) estimates."""
    out = {"importance-weighted, z ~ q(z|x)": [], "naive, z ~ p(z)": []}
    for _ in range(repeats):
        out["importance-weighted, z ~ q(z|x)"].append(
            [log_marginal(module.model, module.guide, x, k).mean().item() for k in ks]
        )
        out["naive, z ~ p(z)"].append(
            [prior_log_marginal(module.model, x, k).mean().item() for k in ks]
        )
    return {label: np.array(v) for label, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-output", help="output directory")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=1000, help="K for the test estimate")
    args = parser.parse_args(argv)
    pyro.settings.set(module_local_params=True)  # parameters live in the modules
    out = Path(args.out)
    shutil.rmtree(out / "run", ignore_errors=True)
    start = time.perf_counter()

    print(f"training a VAE (latent_dim 8) on digits for {args.epochs} epochs ...", flush=True)
    config = TrainConfig(epochs=args.epochs, batch_size=64, progress=False)
    module, metrics = train_run("vae", "digits", out / "run", MODEL_CONFIG, config)
    last = metrics[-1]
    print(f"  valid ELBO {last['valid_elbo']:.2f} nats, KL {last['valid_kl']:.2f} nats")

    from .data import load_dataset

    test = load_dataset("digits", "test", "binary").fixed()
    torch.manual_seed(0)
    plot_images(module.sample(64, mean=True), out / "samples.png", "VAE samples (pixel means)")
    plot_reconstructions(test[:32], module.reconstruct(test[:32]), out / "reconstructions.png")
    plot_training_curves(metrics, out / "training_curves.png", title="VAE on digits: training")

    result = evaluate_images(module, test, num_samples=args.num_samples, progress=False)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    ks = [1, 10, 100, 1000]
    est = estimates_vs_k(module, test[:100], ks, repeats=5)
    plot_log_marginal_vs_k(ks, est, out / "log_marginal_vs_k.png")

    print(
        f"test log p(x) = {-result['nll']:.2f} nats per image "
        f"(IW, K={result['num_samples']}, {result['num_examples']} images, static binarization); "
        f"ELBO {result['elbo']:.2f}; Pareto k mean {result['psis_khat_mean']:.2f}, "
        f"max {result['psis_khat_max']:.2f}"
    )
    for label, values in est.items():
        spread = ", ".join(
            f"K={k}: {m:.2f}+-{s:.2f}"
            for k, m, s in zip(ks, values.mean(0), values.std(0), strict=True)
        )
        print(f"  {label}: {spread}")
    print(
        f"wrote {out}/: samples.png reconstructions.png training_curves.png "
        f"log_marginal_vs_k.png eval.json run/  ({time.perf_counter() - start:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
