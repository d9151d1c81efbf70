"""What do the Pyro program and the Lightning loop cost per SVI step?

Times one training step of the library's VAE three ways over the *same* encoder,
posterior and decoder modules and the same batches:

* **Lightning**: the library's training loop (``fit`` -> ``lightning.pytorch.Trainer``
  over :class:`~pyro_genmodels.infer.lightning.SVIModule`): the interval between
  consecutive ``on_train_batch_end`` hooks, so the loop's own work (data fetching, hooks,
  logging, optimizer plumbing) is inside it;
* **loop**: the hand-written loop the library had before Lightning, step for step: a
  shuffled batch from the same kind of loader, Pyro's ELBO ``differentiable_loss``,
  ``backward``, fused Adam, the finite-loss check;
* **PyTorch**: a hand-written PyTorch ELBO step with fused Adam (no Pyro at all), same loader.

Every time is the interval between consecutive steps, so fetching the batch is inside it.
Each objective runs twice: with the library's classes (``TraceELBO``, ``MeanFieldELBO``:
no read of the loss back to the host) and with Pyro's own ``Trace_ELBO`` and
``TraceMeanField_ELBO`` in their place (the hand-written loop runs under Pyro's
validation, where the two are the same code).

Blocks of steps alternate (Lightning, loop, PyTorch, twice) in one process; prints median
step times and the ratios (Lightning / loop is the cost of the engine, loop / PyTorch that
of the Pyro program).

A second table times whole epochs through the command line (``pyro-genmodels train``): one
process, then ``--devices 2 --strategy ddp --accelerator cpu`` with the same per-process
batch, on 10000 binarized-MNIST images; seconds per epoch are read from ``metrics.jsonl``.

    .venv/bin/python benchmarks/svi_overhead.py [--steps 200] [--device auto] [--epochs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import pyro
import torch
import torch.nn.functional as F
from _common import ROOT, binarized_mnist, data_dir, machine, sync
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

import pyro_genmodels as pg
from pyro_genmodels.infer import TrainConfig, config, fit, make_elbo, resolve_device, train


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
    clock = _StepTimes()
    real = train._trainer

    def with_clock(*args, **kwargs):
        pl_trainer = real(*args, **kwargs)
        pl_trainer.callbacks.append(clock)
        return pl_trainer

    train._trainer = with_clock
    try:
        fit(vae, data[: batch * steps], config=config)
    finally:
        train._trainer = real
    return clock.times[10:]  # the first steps warm up


def shuffled_batches(data: torch.Tensor, batch: int, seed: int) -> DataLoader:
    """The pre-Lightning loop's loader: one shuffled ``data[list]`` gather per batch."""
    sampler = BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(seed)),
                           batch, drop_last=False)  # fmt: skip
    return DataLoader(data, sampler=sampler, batch_size=None, collate_fn=lambda b: b)


def loop_steps(vae, objective: str, batch: int, steps: int, data: torch.Tensor, device) -> list:
    """The pre-Lightning loop, step for step: shuffled batch, ``differentiable_loss`` under
    ``pyro.validation_enabled``, ``backward``, fused Adam, the finite-loss check."""
    elbo = make_elbo(objective, 1, 1)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    vae.train()
    times, total = [], 0.0
    last = time.perf_counter()
    for x in shuffled_batches(data, batch, 0):
        x = x.to(device)
        opt.zero_grad(set_to_none=True)
        with pyro.validation_enabled(True):  # TrainConfig.validate, on by default
            loss = elbo.differentiable_loss(vae.model, vae.guide, x) / x.shape[0]
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"the loss became {value}")
        loss.backward()
        opt.step()
        total += value * x.shape[0]
        sync(device)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times[10:]


def torch_steps(vae, objective: str, batch: int, steps: int, data: torch.Tensor, device) -> list:
    """The same ELBO in plain PyTorch, over the same loader."""
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    times = []
    last = time.perf_counter()
    for x in shuffled_batches(data, batch, 0):
        handwritten_step(vae, opt, x.to(device), objective == "meanfield")
        sync(device)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times[10:]


def measure(objective: str, batch: int, steps: int, device: torch.device, data: torch.Tensor):
    """Median step times: Lightning, the hand-written Pyro loop, plain PyTorch."""
    torch.manual_seed(0)
    base = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50)
    repeats = -(-batch * steps // len(data))  # large batches go over the images again
    data = data.repeat(repeats, 1, 1, 1)[: batch * steps]
    times: list[list[float]] = [[], [], []]
    for _ in range(2):
        times[0] += lightning_steps(copy.deepcopy(base), objective, batch, steps, data)
        ref = copy.deepcopy(base).to(device)
        times[1] += loop_steps(ref, objective, batch, steps, data, device)
        ref = copy.deepcopy(base).to(device)
        times[2] += torch_steps(ref, objective, batch, steps, data, device)
    return [statistics.median(t) for t in times]


@contextlib.contextmanager
def pyros_classes(active: bool):
    """``make_elbo("elbo")`` and ``make_elbo("meanfield")`` as Pyro's own ``Trace_ELBO`` and
    ``TraceMeanField_ELBO`` (the library's objectives before
    :class:`~pyro_genmodels.infer.elbo.TraceELBO` and
    :class:`~pyro_genmodels.infer.MeanFieldELBO`) while ``active``."""
    real = config._elbo_objectives

    def table():
        objectives = real()
        objectives["elbo"] = lambda n, fb: pyro.infer.Trace_ELBO(num_particles=n)
        objectives["meanfield"] = lambda n, fb: pyro.infer.TraceMeanField_ELBO(num_particles=n)
        return objectives

    config._elbo_objectives = table if active else real
    try:
        yield
    finally:
        config._elbo_objectives = real


def epoch_seconds(devices: int, epochs: int, limit: int) -> tuple[float, float]:
    """Median s/epoch and the last validation ELBO of ``train`` with ``devices`` CPU processes.

    Each DDP process gets one thread (``OMP_NUM_THREADS=1``), as it would with one core each.
    """
    root = data_dir()
    dataset = ["--dataset", "binarized-mnist", "--data-dir", str(root)] if root else [
        "--dataset", "digits"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "pyro_genmodels.cli", "train", "--model", "vae", *dataset,
                "--epochs", str(epochs), "--limit", str(limit), "--batch-size", "100",
                "--out", tmp, "--no-progress", "--accelerator", "cpu", "--seed", "0"]  # fmt: skip
        if devices > 1:
            argv += ["--devices", str(devices), "--strategy", "ddp"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if devices > 1 else dict(os.environ)
        subprocess.run(argv, check=True, cwd=ROOT, env=env, capture_output=True)
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").open()]
    return statistics.median(r["seconds"] for r in rows), rows[-1]["valid_elbo"]


def jit_steps(batch: int, steps: int, data: torch.Tensor) -> dict[str, float]:
    """Median step times of Pyro's ``Trace_ELBO`` against ``JitTrace_ELBO`` (and the
    meanfield pair) on the library's VAE, in Pyro's global-param mode: the JIT traces the
    parameters through the param store, and under module-local params (the library's mode)
    it fails with a ``KeyError`` for the first network parameter."""
    elbos = {
        "Trace_ELBO": lambda: pyro.infer.Trace_ELBO(max_plate_nesting=1),
        "JitTrace_ELBO": lambda: pyro.infer.JitTrace_ELBO(max_plate_nesting=1,
                                                          ignore_jit_warnings=True),
        "TraceMeanField_ELBO": lambda: pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1),
        "JitTraceMeanField_ELBO": lambda: pyro.infer.JitTraceMeanField_ELBO(
            max_plate_nesting=1, ignore_jit_warnings=True),
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in elbos}
    x = data[:batch]
    with pyro.settings.context(module_local_params=False):
        for _ in range(2):  # interleaved blocks
            for name, make in elbos.items():
                pyro.clear_param_store()
                torch.manual_seed(0)
                vae = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50)
                elbo, opt = make(), torch.optim.Adam(vae.parameters(), lr=1e-3)
                for i in range(steps + 10):
                    start = time.perf_counter()
                    with pyro.validation_enabled(False):
                        loss = elbo.differentiable_loss(vae.model, vae.guide, x) / batch
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if i >= 10:
                        times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def elbo_passes(batch: int, device: torch.device, rounds: int = 6, passes: int = 150) -> dict:
    """Milliseconds per forward and backward pass of the ELBO (validation off): Pyro's
    ``Trace_ELBO`` and ``TraceMeanField_ELBO`` against the library's ``TraceELBO`` and
    ``MeanFieldELBO``, which read nothing back to the host. Blocks of ``passes`` passes in a
    row, the device synchronized at the end of each block (so on a GPU a pass that waits for
    the device costs that wait); the median over ``rounds`` interleaved blocks."""
    from pyro_genmodels.infer import MeanFieldELBO
    from pyro_genmodels.infer.elbo import TraceELBO

    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50).to(device)
    x = (torch.rand(batch, 1, 28, 28, device=device) < 0.3).float()
    elbos = {"Trace_ELBO (Pyro's class)": pyro.infer.Trace_ELBO(), "TraceELBO": TraceELBO(),
             "TraceMeanField_ELBO (Pyro's class)": pyro.infer.TraceMeanField_ELBO(),
             "MeanFieldELBO": MeanFieldELBO()}  # fmt: skip
    for elbo in elbos.values():
        elbo.max_plate_nesting = 1
    times: dict[str, list[float]] = {name: [] for name in elbos}
    with pyro.validation_enabled(False):
        for round_ in range(rounds + 1):  # the first round warms up
            for name, elbo in elbos.items():
                sync(device)
                start = time.perf_counter()
                for _ in range(passes):
                    elbo.differentiable_loss(vae.model, vae.guide, x).backward()
                sync(device)
                if round_:
                    times[name].append((time.perf_counter() - start) / passes)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="32,128,512")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the s/epoch table")
    parser.add_argument("--jit", action="store_true", help="only the JitTrace_ELBO table")
    parser.add_argument("--epoch-limit", type=int, default=10_000, help="training images")
    parser.add_argument(
        "--global-params",
        action="store_true",
        help="Pyro's default module_local_params=False (the CLI and notebooks turn it on)",
    )
    parser.add_argument(
        "--passes", action="store_true", help="only the ELBOs' forward + backward, batch 128"
    )
    args = parser.parse_args()
    pyro.settings.set(module_local_params=not args.global_params)
    device = resolve_device(args.device)
    if args.passes:
        print(f"# the ELBO's forward + backward, batch 128 ({machine()}, {device})")
        print("| ELBO | ms/pass | ratio to Pyro's class |\n|---|---:|---:|")
        t = elbo_passes(128, device)
        pyros = {"TraceELBO": "Trace_ELBO (Pyro's class)",
                 "MeanFieldELBO": "TraceMeanField_ELBO (Pyro's class)"}  # fmt: skip
        for name, ms in t.items():
            print(f"| {name} | {ms:.2f} | {ms / t[pyros.get(name, name)]:.3f} |")
        return
    data, source = binarized_mnist("train", limit=20_000)
    if args.jit:
        print(f"# Pyro's ELBO against its JIT-compiled one, batch 128, global params ({machine()})")
        print("| ELBO | ms/step | ratio |\n|---|---:|---:|")
        t = jit_steps(128, args.steps, data)
        for name, seconds in t.items():
            base = t[name.replace("Jit", "")]
            print(f"| {name} | {seconds * 1e3:.2f} | {seconds / base:.2f} |")
        return
    print(f"# SVI step: Lightning loop vs hand-written loop vs PyTorch ({machine()}, {device})")
    print(f"# data: {source}; VAE 784-512-256 / 50 / 256-512-784 (MLP); medians over 2 "
          f"alternating blocks of {args.steps} steps each")  # fmt: skip
    print("| objective | batch | Lightning ms/step | hand-written loop ms/step | ratio "
          "| PyTorch ELBO ms/step | loop / PyTorch | Lightning / PyTorch |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    names = {"elbo": "Trace_ELBO (TraceELBO)", "pyro-elbo": "Trace_ELBO (Pyro's class)",
             "meanfield": "TraceMeanField_ELBO (MeanFieldELBO)",
             "pyro-meanfield": "TraceMeanField_ELBO (Pyro's class)"}  # fmt: skip
    for objective in names:
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            with pyros_classes(objective.startswith("pyro-")):
                lit, loop, plain = measure(objective.removeprefix("pyro-"), batch, args.steps,
                                           device, data)  # fmt: skip
            name = names[objective]
            print(f"| {name} | {batch} | {lit * 1e3:.2f} | {loop * 1e3:.2f} | {lit / loop:.2f} "
                  f"| {plain * 1e3:.2f} | {loop / plain:.2f} | {lit / plain:.2f} |")  # fmt: skip
    if args.epochs <= 0:
        return
    print(f"\n# s/epoch through `pyro-genmodels train` ({args.epoch_limit} images, batch 100 "
          f"per process, median of {args.epochs} epochs)")  # fmt: skip
    print("| processes | s/epoch | ratio to 1 process | valid ELBO after the last epoch |")
    print("|---:|---:|---:|---:|")
    base = None
    for devices in (1, 2):
        seconds, elbo = epoch_seconds(devices, args.epochs, args.epoch_limit)
        base = base or seconds
        print(f"| {devices} | {seconds:.2f} | {seconds / base:.2f} | {elbo:.2f} |")


if __name__ == "__main__":
    main()
