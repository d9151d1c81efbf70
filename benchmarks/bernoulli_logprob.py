"""The Bernoulli log-likelihood of K x N x 784 logits, forward and backward: torch's
``binary_cross_entropy_with_logits``, the composed ``x * l - softplus(l)``, and the
library's ``BernoulliLogits.log_prob``, timed in turn in one process (medians).

    .venv/bin/python benchmarks/bernoulli_logprob.py [--rows 10 100] [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _common import machine

from pyro_genmodels.distributions.likelihoods import BernoulliLogits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs=2, default=[10, 100], metavar=("K", "N"))
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    k, n = args.rows
    base = torch.randn(k, n, 784) * 5
    x = (torch.rand(n, 784) < 0.3).float()
    codes = {
        "torch binary_cross_entropy_with_logits": lambda lg: (
            -F.binary_cross_entropy_with_logits(lg, x.expand_as(lg), reduction="none")
        ),
        "x * l - softplus(l)": lambda lg: x * lg - F.softplus(lg),
        "BernoulliLogits.log_prob": lambda lg: BernoulliLogits(logits=lg).log_prob(x),
    }
    times = {c: [] for c in codes}
    for _ in range(args.repeats):
        for code, f in codes.items():
            logits = base.clone().requires_grad_()
            start = time.perf_counter()
            (grad,) = torch.autograd.grad(f(logits).sum(-1).sum(), logits)
            times[code].append(time.perf_counter() - start)
    first = statistics.median(times[next(iter(codes))])
    print(f"{k} x {n} x 784 logits, forward and backward, medians of {args.repeats}; {machine()}")
    print("\n| code | ms | ratio to torch's |\n|---|---:|---:|")
    for code, ts in times.items():
        ms = 1000 * statistics.median(ts)
        print(f"| {code} | {ms:.2f} | {ms / 1000 / first:.2f} |")


if __name__ == "__main__":
    main()
