"""Sampling speed of the autoregressive models: the naive loop against the cached sampler.

For each model, seconds to draw ``--num`` samples of 28x28 with ``sample(n, cached=False)``
(the whole network on the rows drawn so far, at each of the 784 steps) and with the
default cached sampler (one position per layer and step, :mod:`pyro_genmodels.nn.cached`),
from the same seed; the two must return identical images, and the script checks it. The
throughput column is the network's FLOPs for the images drawn (convolutions and matrix
products of one full pass per image, counted by ``torch.utils.flop_counter``: the work the
cached sampler has to do) per second of cached sampling, against the float32 matmul rate
measured in the same run. Sampling time does not depend on the weights, so the models are
freshly initialized.

    .venv/bin/python benchmarks/sampling.py [--num 64] [--models gated,pixelvae,row,diagonal]
    .venv/bin/python benchmarks/sampling.py --profile gated   # where the cached time goes
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, matmul_gflops
from torch.utils.flop_counter import FlopCounterMode

import pyro_genmodels as pg

#: name -> (model, config, description)
MODELS = {
    "gated": (
        "gated-pixelcnn",
        {"hidden_channels": 64, "num_layers": 8},
        "Gated PixelCNN, 64 feature maps x 8 layers",
    ),
    "pixelvae": (
        "pixelvae",
        {"latent_dim": 32, "hidden_channels": 32, "num_layers": 2},
        "PixelVAE of the README (32-d z, Gated PixelCNN 32 x 2)",
    ),
    "row": (
        "pixelrnn",
        {"hidden_channels": 32, "num_layers": 5},
        "Row LSTM, 32 feature maps x 5 layers",
    ),
    "diagonal": (
        "diagonal-bilstm",
        {"hidden_channels": 32, "num_layers": 5},
        "Diagonal BiLSTM, 32 feature maps x 5 layers",
    ),
}


def build(key: str):
    name, config, _ = MODELS[key]
    torch.manual_seed(0)
    return pg.create_model(name, image_shape=(1, 28, 28), **config).eval()


def network_flops(model) -> float:
    """FLOPs of one full network pass on one image (the autoregressive part only)."""
    x = torch.zeros(1, 1, 28, 28)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if hasattr(model, "pixel_net"):
            d = model.conditional(torch.zeros(1, model.config.latent_dim))
            d.log_prob(x)
        else:
            model.log_prob(x)
    return float(counter.get_total_flops())


def timed_sample(model, num: int, cached: bool) -> tuple[float, torch.Tensor]:
    torch.manual_seed(1)
    start = time.perf_counter()
    images = model.sample(num, cached=cached)
    return time.perf_counter() - start, images


def profile(key: str, num: int) -> None:
    model = build(key)
    model.sample(2)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.sample(num)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=64, help="samples per timing")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--profile", choices=list(MODELS), help="profile the cached sampler")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.num)
        return
    rate = matmul_gflops(torch.device("cpu"))
    print(f"# sampling {args.num} images of 28x28 ({machine()}); float32 2048^3 matmul: "
          f"{rate:.0f} GFLOP/s")  # fmt: skip
    print("| model | naive (s) | cached (s) | ratio | identical | cached GFLOP/s "
          "| fraction of the matmul rate |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|---:|")
    for key in args.models.split(","):
        model = build(key)
        model.sample(2)  # warm-up
        fast, a = timed_sample(model, args.num, cached=True)
        naive, b = timed_sample(model, args.num, cached=False)
        gflops = network_flops(model) * args.num / fast / 1e9
        print(f"| {MODELS[key][2]} | {naive:.1f} | {fast:.2f} | {naive / fast:.0f}x "
              f"| {'yes' if torch.equal(a, b) else 'NO'} | {gflops:.2f} "
              f"| {gflops / rate:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
