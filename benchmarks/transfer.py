"""The lecture's transfer experiment on MNIST: pretrain without labels, classify with few.

Pretrains a VAE and a deterministic autoencoder on all 50000 MNIST training
images (statically binarized, labels unused), then trains the same classifier
(the encoder plus a linear layer) on ``--labels-per-class`` labelled images
from scratch and initialized from each pretrained encoder, and fits linear
probes on the codes and on raw pixels. Prints test accuracy (all 10000 images).

    .venv/bin/python benchmarks/transfer.py --pretrain-epochs 10 --labels-per-class 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import data_dir, machine, write_table

from pyro_genmodels.transfer import transfer_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--labels-per-class", type=int, default=100)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=100)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/transfer")
    args = parser.parse_args()
    root = data_dir() if args.dataset != "digits" else None
    if args.dataset != "digits" and root is None:
        raise SystemExit("needs mnist.npz: set $PYRO_GENMODELS_DATA or ../shared/data")
    results = []
    for pretrain in ("vae", "autoencoder"):
        r = transfer_experiment(
            args.dataset, pretrain, args.labels_per_class, args.pretrain_epochs,
            args.finetune_epochs, args.latent_dim, (512, 256), root, seed=args.seed,
        )  # fmt: skip
        results.append(r)
        print(json.dumps({"pretrain": pretrain, **r.accuracies}), flush=True)
    first = results[0]
    lines = [
        f"{args.dataset} (static binarization), {first.labels_per_class} labels per class "
        f"({first.num_labeled} labelled images); encoders MLP 784-512-256, codes of "
        f"{args.latent_dim}; pretraining {args.pretrain_epochs} epochs on all training images; "
        f"classifiers {args.finetune_epochs} epochs; test accuracy on the whole test split. "
        f"{machine()}.",
        "",
        "| method | test accuracy |",
        "|---|---:|",
    ]
    seen = set()
    for r in results:
        for method, acc in r.accuracies.items():
            if method not in seen:
                seen.add(method)
                lines.append(f"| {method} | {acc:.4f} |")
    write_table(Path(args.out), lines)


if __name__ == "__main__":
    main()
