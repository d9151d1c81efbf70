"""How much Tomczak & Welling's Bernoulli clamp moves a shipped model's test NLL.

Their code scores binary pixels with ``log Bernoulli(x | clamp(p, 1e-5, 1 - 1e-5))``; ours
uses the exact logits. This script scores the first ``--images`` test images of static
binarized MNIST both ways with the same K draws from q(z | x) per image, and prints the two
importance-sampled NLLs and their paired difference (plain - clamped).

    .venv/bin/python benchmarks/bernoulli_clamp.py [--name NAME] [--images 1000] [--k 1000]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from _common import machine

import pyro_genmodels as pg
from pyro_genmodels.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="vae-vampprior-paper")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = pg.load_pretrained(args.name)
    x = load_dataset("binarized-mnist", "test", "binary").fixed()[: args.images]
    nll = {"plain": [], "clamped": []}
    with torch.no_grad():
        for xb in x.split(args.batch):
            q = vae.posterior(vae.encoder(xb))
            z = q.sample((args.k,))
            log_w = vae.prior.log_prob(z, vae) - q.log_prob(z)
            logits = vae.decoder(z).reshape(args.k, len(xb), -1)
            xf = xb.reshape(len(xb), -1).expand_as(logits)
            p = torch.sigmoid(logits).clamp(1e-5, 1 - 1e-5)
            ll = {
                "plain": -F.binary_cross_entropy_with_logits(logits, xf, reduction="none").sum(-1),
                "clamped": (xf * p.log() + (1 - xf) * (1 - p).log()).sum(-1),
            }
            for key, value in ll.items():
                nll[key].append(math.log(args.k) - torch.logsumexp(value + log_w, 0))
    plain, clamped = torch.cat(nll["plain"]), torch.cat(nll["clamped"])
    diff = plain - clamped
    print(f"{args.name}, first {len(plain)} test images, K = {args.k}; {machine()}")
    print("| scoring | NLL, nats |\n|---|---:|")
    print(f"| exact logits (ours) | {plain.mean():.3f} |")
    print(f"| probabilities clamped to [1e-5, 1 - 1e-5] (theirs) | {clamped.mean():.3f} |")
    print(f"plain - clamped: {diff.mean():.4f} +- {diff.std() / len(diff) ** 0.5:.4f} (paired)")


if __name__ == "__main__":
    main()
