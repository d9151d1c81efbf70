"""Training s/epoch against pythae on the same network, in one run.

A 784-200-200-50 ReLU VAE (our ``create_model("vae")``, fixed seed), batch 100, Adam 1e-3,
``--epochs`` epochs on the first ``--limit`` static binarized-MNIST training images, no
validation. Ours is ``infer.fit`` (Lightning, ``Trace_ELBO``); pythae 0.1.2's ``VAE`` wraps
the very same encoder, posterior and decoder modules and trains with its ``BaseTrainer``.
Runs alternate (ours, pythae, ours, ...) because this machine's speed drifts over minutes;
the table gives the median s/epoch over all epochs of all runs (the first epoch of each run
is left out: it pays for warm-up).

pythae runs in its own virtual environment, made as in ``benchmarks/iw_vs_pythae.py``::

    .venv/bin/python benchmarks/train_vs_pythae.py --limit 50000 --epochs 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch
from _common import ROOT, binarized_mnist, machine, write_table
from iw_vs_pythae import PYTHAE_MODEL

import pyro_genmodels as pg
from pyro_genmodels.infer import TrainConfig, fit

PYTHAE_TRAIN = (
    PYTHAE_MODEL
    + r"""
from pythae.data.datasets import BaseDataset
from pythae.trainers import BaseTrainer, BaseTrainerConfig
from pythae.trainers.training_callbacks import TrainingCallback


class Clock(TrainingCallback):
    def __init__(self):
        self.seconds, self.start = [], None

    def on_epoch_begin(self, training_config, **kwargs):
        self.start = time.perf_counter()

    def on_epoch_end(self, training_config, **kwargs):
        self.seconds.append(time.perf_counter() - self.start)


x = torch.load({data!r})
config = VAEConfig(input_dim=(1, 28, 28), latent_dim=50, reconstruction_loss="bce")
vae = VAE(config, encoder=Encoder(), decoder=Decoder())
train_config = BaseTrainerConfig(output_dir={out!r}, num_epochs={epochs}, learning_rate=1e-3,
                                 per_device_train_batch_size=100, no_cuda=True,
                                 optimizer_cls="Adam", steps_saving=None)
clock = Clock()
trainer = BaseTrainer(vae, BaseDataset(x, torch.zeros(len(x))), None, train_config,
                      callbacks=[clock])
trainer.train()
print(json.dumps(clock.seconds))
"""
)


def ours(x: torch.Tensor, epochs: int) -> list[float]:
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50, hidden_dims=(200, 200))
    config = TrainConfig(epochs=epochs, batch_size=100, lr=1e-3, progress=False)
    rows = fit(vae, x, None, config)
    return [r["seconds"] for r in rows]


def pythae(x: torch.Tensor, epochs: int, python: str) -> list[float]:
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50, hidden_dims=(200, 200))
    with tempfile.TemporaryDirectory() as tmp:
        state, data = Path(tmp) / "vae.pt", Path(tmp) / "x.pt"
        torch.save(vae.state_dict(), state)
        torch.save(x, data)
        script = PYTHAE_TRAIN.format(root=str(ROOT), state=str(state), data=str(data),
                                     out=str(Path(tmp) / "out"), epochs=epochs,
                                     threads=torch.get_num_threads())  # fmt: skip
        done = subprocess.run([python, "-c", script], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"pythae failed (see iw_vs_pythae.py to set it up):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50_000, help="first N training images")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each")
    parser.add_argument("--pythae-python", default=str(ROOT / ".venv-pythae" / "bin" / "python"))
    parser.add_argument("--out", default="results/train_vs_pythae")
    args = parser.parse_args()
    pyro.settings.set(module_local_params=True)  # as the CLI and the notebooks
    x, source = binarized_mnist("train", args.limit)
    times: dict[str, list[float]] = {"pyro-genmodels fit": [], "pythae 0.1.2 BaseTrainer": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        times["pyro-genmodels fit"] += ours(x, args.epochs)[1:]
        times["pythae 0.1.2 BaseTrainer"] += pythae(x, args.epochs, args.pythae_python)[1:]
        print(json.dumps(times), f"({time.perf_counter() - start:.0f} s)", flush=True)
    base = statistics.median(times["pythae 0.1.2 BaseTrainer"])
    rows = [dict(code=name, s_per_epoch=statistics.median(t), ratio=statistics.median(t) / base,
                 epochs=len(t)) for name, t in times.items()]  # fmt: skip
    lines = [
        f"training, {len(x)} {source} images, 784-200-200-50 ReLU VAE, batch 100, Adam 1e-3, "
        f"no validation ({machine()})",
        "",
        "| code | s/epoch (median) | ratio to pythae | epochs timed |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['code']} | {r['s_per_epoch']:.2f} | {r['ratio']:.2f} | {r['epochs']} |"
              for r in rows]  # fmt: skip
    write_table(Path(args.out), lines, rows)


if __name__ == "__main__":
    main()
