"""Where does an AIS gradient evaluation spend its time? One leapfrog force of the shipped
``vae-paper`` on ``--limit`` test images x ``--chains`` chains, five ways:

* **decoder alone**: the same decoder's forward pass and its backward pass to z under
  bfloat16 autocast, with the Bernoulli force ``x - sigmoid(logits)``, in plain PyTorch (no
  Pyro, no prior, no guide): what a force cannot go below with these kernels;
* **force, bfloat16** / **force, float32**: ``_Path.force``, the step inside a trajectory;
* **state, float32**: ``_Path.__call__``, the end of a trajectory (densities in full
  precision and the gradients of log q + J and log p + J, one forward pass);
* **bfloat16 force + float32 densities**: the alternative end of a trajectory (a force pass,
  then a no-grad full-precision pass for the densities).

Best and median of ``--repeats`` calls each, then the operators of the bfloat16 force by
their own CPU time (``torch.profiler``). Then whole AIS runs (``--steps`` temperatures, 8
chains, bfloat16 gradients) on batches of each of ``--batches`` images: milliseconds per
move, and per move and image. Run it alone on the machine:

    .venv/bin/python benchmarks/ais_force.py [--limit 100] [--chains 10] [--repeats 40] \
        [--batches 50,100,200,400] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
from _common import binarized_mnist, machine

import pyro_genmodels as pg
from pyro_genmodels.infer import ais
from pyro_genmodels.infer.program import probe


def best_and_median(fn, repeats: int) -> tuple[float, float]:
    """Milliseconds: the best and the median of ``repeats`` calls, after 5 warm-up calls."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=100, help="test images")
    parser.add_argument("--chains", type=int, default=10, help="chains per image (8 + 2 tuning)")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--batches", default="50,100,200,400", help="images per AIS batch")
    parser.add_argument("--steps", type=int, default=30, help="AIS temperatures per run")
    args = parser.parse_args()

    vae = pg.load_pretrained("vae-paper")
    x, source = binarized_mnist("test", args.limit)
    layout = probe(vae.model, vae.guide, x)
    with pyro.validation_enabled(False), torch.enable_grad():
        with torch.no_grad():
            guide_tr, model_tr = ais._traces(vae.model, vae.guide, x, args.chains, layout)
        sites = ais._moved_sites(guide_tr, model_tr, layout)
        path = ais._Path(vae.model, vae.guide, x, layout, sites, args.chains, torch.bfloat16)
        path.cache_guide(guide_tr)
        u = {k: sites[k].transform.inv(model_tr.nodes[k]["value"]).detach() for k in sites}
        z0 = u["z"]

        def decoder_alone():
            z = z0.detach().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = vae.decoder(z)
            force = x.to(logits.dtype) - torch.sigmoid(logits)
            return torch.autograd.grad(logits, z, force)[0]

        def force(dtype):
            def call():
                path.gradient_dtype = dtype
                return path.force(u, 0.5)

            return call

        def densities_no_grad():
            with torch.no_grad():
                return path.parts(u)

        def force_then_densities():
            path.gradient_dtype = torch.bfloat16
            path.force(u, 1.0)
            densities_no_grad()

        def state():
            path.gradient_dtype = torch.bfloat16
            return path(u)

        rows = [
            ("decoder alone (bfloat16 autocast, plain PyTorch)", decoder_alone),
            ("force, bfloat16 (`_Path.force`)", force(torch.bfloat16)),
            ("force, float32", force(None)),
            ("state, float32 (`_Path.__call__`, end of a trajectory)", state),
            ("bfloat16 force + float32 densities (no grad)", force_then_densities),
        ]
        times = {name: best_and_median(fn, args.repeats) for name, fn in rows}
        path.gradient_dtype = torch.bfloat16
        with torch.profiler.profile() as prof:
            for _ in range(10):
                path.force(u, 0.5)
    n = args.limit * args.chains
    print(f"{machine()}; vae-paper, {n} rows: {args.limit} images of {source}",
          f"x {args.chains} chains\n")  # fmt: skip
    base = times[rows[1][0]][0]
    print("| evaluation | best ms | median ms | best / force bfloat16 |")
    print("|---|---:|---:|---:|")
    for name, (best, median) in times.items():
        print(f"| {name} | {best:.2f} | {median:.2f} | {best / base:.2f} |")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("\n| operator (force, bfloat16) | calls per force | self ms per force | share |")
    print("|---|---:|---:|---:|")
    for e in events[:12]:
        print(f"| `{e.key}` | {e.count // 10} | {e.self_cpu_time_total / 10e3:.2f} | "
              f"{e.self_cpu_time_total / total:.0%} |")  # fmt: skip
    by_batch(vae, [int(b) for b in args.batches.split(",")], args.steps)


def by_batch(vae, batches: list[int], steps: int) -> None:
    """AIS on batches of each size: the fixed cost of a leapfrog step is shared by the batch."""
    x, _ = binarized_mnist("test", max(batches))
    print(f"\n| images per batch | ms per move | ms per move and image | AIS T = {steps} x 8, "
          "bfloat16 gradients |")  # fmt: skip
    print("|---:|---:|---:|---:|")
    ais.ais_estimate(vae.model, vae.guide, x[:10], 3, 8, seed=0, gradient_dtype=torch.bfloat16)
    for b in batches:
        start = time.perf_counter()
        ais.ais_estimate(vae.model, vae.guide, x[:b], steps, 8, seed=0,
                         gradient_dtype=torch.bfloat16)  # fmt: skip
        seconds = time.perf_counter() - start
        move = 1e3 * seconds / (steps - 1)
        print(f"| {b} | {move:.1f} | {move / b:.3f} | {seconds:.2f} s |")


if __name__ == "__main__":
    main()
