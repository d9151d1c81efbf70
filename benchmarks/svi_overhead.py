"""What does writing the VAE as a Pyro program cost per SVI step?

Times one training step of the library's VAE (``Trainer._step``: Pyro's ELBO
``differentiable_loss`` + the trainer's fused Adam) against a hand-written
PyTorch ELBO step over the *same* encoder, posterior and decoder modules, with
``torch.optim.Adam`` as users write it and with the fused kernel the library
uses, interleaved in one process; prints median step times and the ratios
(the second ratio isolates the cost of the Pyro program itself).

    .venv/bin/python benchmarks/svi_overhead.py [--steps 200] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import pyro
import torch
import torch.nn.functional as F
from _common import binarized_mnist, machine, timed

import pyro_genmodels as pg
from pyro_genmodels.infer import TrainConfig, Trainer, resolve_device


def handwritten_step(vae, optimizer, x: torch.Tensor, analytic_kl: bool) -> float:
    """The same ELBO in plain PyTorch: reparameterized z, Bernoulli log-likelihood, KL."""
    q = vae.posterior(vae.encoder(x)).base_dist  # Normal(loc, scale), (N, D)
    z = q.rsample()
    log_lik = -F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="none")
    log_lik = log_lik.flatten(1).sum(1)
    if analytic_kl:
        kl = 0.5 * (q.scale**2 + q.loc**2 - 1 - 2 * q.scale.log()).sum(1)
    else:  # Monte Carlo, as Trace_ELBO: log q(z) - log p(z)
        kl = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(1)
    loss = (kl - log_lik).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def measure(objective: str, batch: int, steps: int, device: torch.device, data: torch.Tensor):
    """Median step times: library, hand-written (default Adam), hand-written (fused Adam)."""
    torch.manual_seed(0)
    lib = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50)
    ref, ref_fused = copy.deepcopy(lib).to(device), copy.deepcopy(lib).to(device)
    trainer = Trainer(lib, TrainConfig(objective=objective, device=str(device), progress=False))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    fused_opt = torch.optim.Adam(ref_fused.parameters(), lr=1e-3, fused=True)
    analytic = objective == "meanfield"
    steps_fns = [
        lambda x: trainer._step(x, 1.0),
        lambda x: handwritten_step(ref, ref_opt, x, analytic),
        lambda x: handwritten_step(ref_fused, fused_opt, x, analytic),
    ]
    times: list[list[float]] = [[], [], []]
    for i in range(steps + 10):  # interleaved; the first 10 rounds are warm-up
        x = data[(i * batch) % (len(data) - batch) :][:batch].to(device)
        for fn, bucket in zip(steps_fns, times, strict=True):
            t = timed(lambda fn=fn, x=x: fn(x), device)
            if i >= 10:
                bucket.append(t)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="32,128,512")
    parser.add_argument(
        "--global-params",
        action="store_true",
        help="Pyro's default module_local_params=False (the CLI and notebooks turn it on)",
    )
    args = parser.parse_args()
    pyro.settings.set(module_local_params=not args.global_params)
    device = resolve_device(args.device)
    data, source = binarized_mnist("train", limit=20_000)
    print(f"# SVI step: library VAE vs hand-written PyTorch ELBO ({machine()}, {device})")
    print(f"# data: {source}; VAE 784-512-256 / 50 / 256-512-784 (MLP); median of {args.steps} "
          "interleaved steps")  # fmt: skip
    print("| objective | batch | library ms/step | hand-written ms/step (Adam) | ratio "
          "| hand-written, fused Adam | ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for objective in ("elbo", "meanfield"):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            lib, ref, fused = measure(objective, batch, args.steps, device, data)
            name = {"elbo": "Trace_ELBO", "meanfield": "TraceMeanField_ELBO"}[objective]
            print(f"| {name} | {batch} | {lib * 1e3:.2f} | {ref * 1e3:.2f} | {lib / ref:.2f} "
                  f"| {fused * 1e3:.2f} | {lib / fused:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
