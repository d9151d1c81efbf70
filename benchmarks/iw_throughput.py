"""How fast is importance-weighted log p(x) at K = 5000?

Runs ``log_marginal`` for the default VAE (784-512-256 / 50 / 256-512-784) on N
test images with K = 5000 and prints images/s and the decoder's achieved GFLOP/s
(2 x in x out per linear layer, per particle), next to a float32 matmul rate
measured in the same run, and the fraction of it the estimator reaches.

With ``--model pixelvae`` it times the default PixelVAE instead (a Gated PixelCNN pass per
particle, random weights: speed does not depend on them) for several chunk sizes, to choose
how many particles x images one decoder pass should hold.

    .venv/bin/python benchmarks/iw_throughput.py [--num-images 100] [--num-samples 5000]
    .venv/bin/python benchmarks/iw_throughput.py --model pixelvae --num-images 10 \
        --num-samples 500 --chunk-sizes auto,2,5,10,20,50
"""

from __future__ import annotations

import argparse

import torch
from _common import binarized_mnist, machine, matmul_gflops, timed
from torch import nn

import pyro_genmodels as pg
from pyro_genmodels.infer import log_marginal, resolve_device


def decoder_flops(decoder: nn.Module) -> int:
    """Multiply-add FLOPs of the decoder's linear layers for one latent vector."""
    return sum(
        2 * m.in_features * m.out_features for m in decoder.modules() if isinstance(m, nn.Linear)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--chunk-sizes", default="auto,50,200,1000")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", choices=("vae", "pixelvae"), default="vae")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.model == "pixelvae":
        return pixelvae(args, device)
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50).to(device).eval()
    x, source = binarized_mnist("test", limit=args.num_images)
    x = x.to(device)
    peak = matmul_gflops(device)
    flops = decoder_flops(vae.decoder) * args.num_samples * len(x)
    log_marginal(vae.model, vae.guide, x[:2], 10)  # warm-up
    print(
        f"# log_marginal, K={args.num_samples}, N={len(x)} images ({source}); {machine()}, {device}"
    )
    print(f"# float32 matmul (2048^3) in this run: {peak:.1f} GFLOP/s")
    print("| chunk size | seconds | images/s | decoder GFLOP/s | fraction of matmul rate |")
    print("|---|---:|---:|---:|---:|")
    for chunk in args.chunk_sizes.split(","):
        size = None if chunk == "auto" else int(chunk)
        seconds = timed(
            lambda size=size: log_marginal(vae.model, vae.guide, x, args.num_samples, size), device
        )
        rate = flops / seconds / 1e9
        print(
            f"| {chunk} | {seconds:.2f} | {len(x) / seconds:.1f} | {rate:.1f} | {rate / peak:.2f} |"
        )


def pixelvae(args, device) -> None:
    torch.manual_seed(0)
    model = pg.create_model("pixelvae", image_shape=(1, 28, 28)).to(device).eval()
    x, source = binarized_mnist("test", limit=args.num_images)
    x = x.to(device)
    log_marginal(model.model, model.guide, x[:2], 4)  # warm-up
    print(
        f"# pixelvae log_marginal, K={args.num_samples}, N={len(x)} images ({source}); "
        f"{machine()}, {device}; auto = {model.iw_samples_per_pass} particles x images per pass"
    )
    print("| chunk size | particles x images per pass | seconds | images/s | ratio to auto |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for chunk in args.chunk_sizes.split(","):
        size = None if chunk == "auto" else int(chunk)
        seconds = min(  # best of 3: single timings on a shared CPU vary by up to 2x
            timed(
                lambda size=size: log_marginal(model.model, model.guide, x, args.num_samples, size),
                device,
            )
            for _ in range(3)
        )
        per_pass = (size or max(1, model.iw_samples_per_pass // len(x))) * len(x)
        rows.append((chunk, per_pass, seconds))
    auto = next((sec for chunk, _, sec in rows if chunk == "auto"), rows[0][2])
    for chunk, per_pass, seconds in rows:
        print(
            f"| {chunk} | {per_pass} | {seconds:.2f} | {len(x) / seconds:.2f} | "
            f"{seconds / auto:.2f} |"
        )


if __name__ == "__main__":
    main()
