"""What do the Pyro program and the Lightning loop cost per SVI step?

Times one training step of the library's VAE three ways over the *same* encoder,
posterior and decoder modules and the same batches:

* **Lightning**: the library's training loop (``Trainer`` -> ``lightning.pytorch.Trainer``
  over :class:`~pyro_genmodels.infer.lightning.SVIModule`): the interval between
  consecutive ``on_train_batch_end`` hooks, so the loop's own work (data fetching, hooks,
  logging, optimizer plumbing) is inside it;
* **loop**: the hand-written loop the library had before Lightning: Pyro's ELBO
  ``differentiable_loss``, ``backward``, fused Adam, one batch after another;
* **PyTorch**: a hand-written PyTorch ELBO step with fused Adam (no Pyro at all).

Blocks of steps alternate (Lightning, loop, PyTorch, twice) in one process; prints median
step times and the ratios (Lightning / loop is the cost of the engine, loop / PyTorch that
of the Pyro program).

    .venv/bin/python benchmarks/svi_overhead.py [--steps 200] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import lightning.pytorch as pl
import pyro
import torch
import torch.nn.functional as F
from _common import binarized_mnist, machine, timed

import pyro_genmodels as pg
from pyro_genmodels.infer import TrainConfig, Trainer, make_elbo, resolve_device
from pyro_genmodels.infer.train import quiet_lightning


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


class _StepTimes(pl.Callback):
    def __init__(self):
        self.last, self.times = None, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def lightning_steps(vae, objective: str, batch: int, steps: int, data: torch.Tensor) -> list:
    """Per-step times of the library's Lightning loop over the first ``steps`` batches."""
    config = TrainConfig(objective=objective, batch_size=batch, epochs=1, progress=False)
    trainer = Trainer(vae, config)
    clock = _StepTimes()
    real = trainer._lightning_trainer

    def with_clock(max_epochs):
        pl_trainer = real(max_epochs)
        pl_trainer.callbacks.append(clock)
        return pl_trainer

    trainer._lightning_trainer = with_clock
    with quiet_lightning():
        trainer.fit(data[: batch * steps])
    return clock.times[10:]  # the first steps warm up


def loop_steps(vae, objective: str, batch: int, steps: int, data: torch.Tensor, device) -> list:
    """The pre-Lightning loop: differentiable_loss, backward, fused Adam."""
    elbo = make_elbo(objective, 1, 1)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    vae.train()

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = elbo.differentiable_loss(vae.model, vae.guide, x) / x.shape[0]
        loss.backward()
        opt.step()

    times = []
    for i in range(steps):
        x = data[i * batch : (i + 1) * batch].to(device)
        times.append(timed(lambda x=x: step(x), device))
    return times[10:]


def torch_steps(vae, objective: str, batch: int, steps: int, data: torch.Tensor, device) -> list:
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    times = []
    for i in range(steps):
        x = data[i * batch : (i + 1) * batch].to(device)
        times.append(timed(lambda x=x: handwritten_step(vae, opt, x, objective == "meanfield"),
                           device))  # fmt: skip
    return times[10:]


def measure(objective: str, batch: int, steps: int, device: torch.device, data: torch.Tensor):
    """Median step times: Lightning, the hand-written Pyro loop, plain PyTorch."""
    torch.manual_seed(0)
    base = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50)
    data = data[: batch * steps]
    times: list[list[float]] = [[], [], []]
    for _ in range(2):
        times[0] += lightning_steps(copy.deepcopy(base), objective, batch, steps, data)
        ref = copy.deepcopy(base).to(device)
        times[1] += loop_steps(ref, objective, batch, steps, data, device)
        ref = copy.deepcopy(base).to(device)
        times[2] += torch_steps(ref, objective, batch, steps, data, device)
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
    print(f"# SVI step: Lightning loop vs hand-written loop vs PyTorch ({machine()}, {device})")
    print(f"# data: {source}; VAE 784-512-256 / 50 / 256-512-784 (MLP); medians over 2 "
          f"alternating blocks of {args.steps} steps each")  # fmt: skip
    print("| objective | batch | Lightning ms/step | hand-written loop ms/step | ratio "
          "| PyTorch ELBO ms/step | loop / PyTorch |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for objective in ("elbo", "meanfield"):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            lit, loop, plain = measure(objective, batch, args.steps, device, data)
            name = {"elbo": "Trace_ELBO", "meanfield": "TraceMeanField_ELBO"}[objective]
            print(f"| {name} | {batch} | {lit * 1e3:.2f} | {loop * 1e3:.2f} | {lit / loop:.2f} "
                  f"| {plain * 1e3:.2f} | {loop / plain:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
