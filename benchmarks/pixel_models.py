"""Autoregressive pixel models on statically binarized MNIST: speed and exact NLL.

For each model: seconds per training epoch, the exact test NLL (nats and bits/dim)
after the stated budget (best epoch on the validation split), and the time to
draw 16 samples of 28x28 (the default, cached sampler; see benchmarks/sampling.py).

    .venv/bin/python benchmarks/pixel_models.py --epochs 1 --limit 10000 --out results/pixel

``--speed`` instead times training of one model (``--models``, default the Gated PixelCNN;
``--hidden-channels``, ``--num-layers``) eager and with ``TrainConfig(compile=True)``
(``torch.compile`` of the network), each in float32 and under ``precision="bf16-mixed"``
(CPU autocast; validation and evaluation stay in float32), in the same process, over the
same images: s/epoch of the second epoch (the first holds the compilation) and the train
loss after it, the two eager settings again on one thread (``torch.set_num_threads(1)``),
then where the eager step spends its time (profile):

    .venv/bin/python benchmarks/pixel_models.py --speed --limit 10000 [--models pixelcnn]
    .venv/bin/python benchmarks/pixel_models.py --speed --limit 1000 --preset gated-pixelcnn-mnist
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import binarized_mnist, data_dir, machine, write_table

import pyro_genmodels as pg
from pyro_genmodels.evaluation import evaluate_run
from pyro_genmodels.infer import TrainConfig, fit
from pyro_genmodels.plots import plot_images
from pyro_genmodels.presets import load_preset
from pyro_genmodels.runs import load_run, train_run

MODELS = ["pixelcnn", "gated-pixelcnn", "pixelrnn", "diagonal-bilstm"]


def speed(args) -> None:
    """s/epoch of one pixel model, eager and with ``torch.compile``; then the eager step's
    profile."""
    import pyro

    pyro.settings.set(module_local_params=True)
    train, source = binarized_mnist("train", limit=args.limit or 10_000)
    name = args.models if args.models in MODELS else "gated-pixelcnn"
    net = {"hidden_channels": args.hidden_channels, "num_layers": args.num_layers}
    what = f"{args.hidden_channels} x {args.num_layers}"
    if args.preset:  # the recipe's network and batch size
        preset = load_preset(args.preset)
        name, net, what = preset.model, preset.model_config, f"--preset {args.preset}"
        args.batch_size = preset.train.get("batch_size", args.batch_size)

    def build():
        torch.manual_seed(0)
        return pg.create_model(name, image_shape=(1, 28, 28), **net)

    print(f"# {name} {what}, {len(train)} images of {source}, batch {args.batch_size}; "
          f"{machine()}")  # fmt: skip
    print("| training | s/epoch (epoch 2) | first epoch (s) | speed-up | train loss after 2 |")
    print("|---|---:|---:|---:|---:|")
    base = None
    rows = (("eager, float32 (default)", False, "32"), ("torch.compile (--compile)", True, "32"),
            ("eager, --precision bf16-mixed", False, "bf16-mixed"),
            ("torch.compile, bf16-mixed", True, "bf16-mixed"))  # fmt: skip
    threads = torch.get_num_threads()
    if threads > 1:  # the eager settings again on one thread: what the second thread buys
        rows += (("eager, float32, 1 thread", False, "32", 1),
                 ("eager, bf16-mixed, 1 thread", False, "bf16-mixed", 1))  # fmt: skip
    for label, compiled, precision, *nthreads in rows:
        config = TrainConfig(epochs=2, batch_size=args.batch_size, progress=False,
                             compile=compiled, precision=precision)  # fmt: skip
        torch.set_num_threads(nthreads[0] if nthreads else threads)
        metrics = fit(build(), train, config=config)
        torch.set_num_threads(threads)
        second = metrics[1]["seconds"]
        base = base or second
        print(f"| {label} | {second:.1f} | {metrics[0]['seconds']:.1f} | {base / second:.2f}x "
              f"| {metrics[1]['train_loss']:.2f} |", flush=True)  # fmt: skip
    model = build()
    x = train[: args.batch_size]
    opt = torch.optim.Adam(model.parameters())
    elbo = pyro.infer.Trace_ELBO()

    def step():
        opt.zero_grad()
        (elbo.differentiable_loss(model.model, model.guide, x) / len(x)).backward()
        opt.step()

    step()
    with torch.profiler.profile() as prof:
        for _ in range(5):
            step()
    print("\n# where an eager training step spends its time (self CPU, 5 steps)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, help="train on the first N training images")
    parser.add_argument("--test-limit", type=int, help="evaluate the first N test images")
    parser.add_argument("--hidden-channels", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="results/pixel")
    parser.add_argument("--speed", action="store_true", help="eager vs compiled training")
    parser.add_argument("--preset", help="--speed: the network and batch size of this recipe")
    args = parser.parse_args()
    if args.speed:
        speed(args)
        return
    root = data_dir()
    if root is None:
        raise SystemExit("needs binarized_mnist.npz: set $PYRO_GENMODELS_DATA or ../shared/data")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"hidden_channels": args.hidden_channels, "num_layers": args.num_layers}
    rows = []
    for name in args.models.split(","):
        run_dir = out / name
        train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, progress=False)
        resume = (run_dir / "checkpoint.pt").is_file()
        _, metrics = train_run(
            name, "binarized-mnist", run_dir, config, train_config, root, args.limit,
            resume=resume,
        )  # fmt: skip
        result = evaluate_run(run_dir, num_samples=1, limit=args.test_limit, progress=False)
        run = load_run(run_dir, which="best")
        torch.manual_seed(0)
        start = time.perf_counter()
        samples = run.module.sample(16)
        sample_seconds = time.perf_counter() - start
        plot_images(
            samples, out / f"{name}-samples.png", title=f"{name} samples",
            value_range=run.module.likelihood.value_range,
        )  # fmt: skip
        params = sum(p.numel() for p in run.module.parameters())
        row = {
            "model": name,
            "parameters": params,
            "seconds_per_epoch": sum(m["seconds"] for m in metrics) / len(metrics),
            "sample_16_seconds": sample_seconds,
            **result,
        }
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("model", "nll", "seconds_per_epoch")}), flush=True)
    limit = f"the first {args.limit}" if args.limit else "all 50000"
    test = f"the first {args.test_limit}" if args.test_limit else "all 10000"
    lines = [
        f"Static binarized MNIST, Bernoulli likelihood; hidden_channels={args.hidden_channels}, "
        f"num_layers={args.num_layers}; {args.epochs} epoch(s) on {limit} training images, "
        f"batch {args.batch_size}, Adam 1e-3; exact NLL on {test} test images. {machine()}.",
        "",
        "| model | parameters | s/epoch | test NLL (nats) | bits/dim | 16 samples of 28x28 (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['seconds_per_epoch']:.0f} | "
            f"{r['nll']:.2f} | {r['bits_per_dim']:.4f} | {r['sample_16_seconds']:.1f} |"
        )
    write_table(out, lines, rows)


if __name__ == "__main__":
    main()
