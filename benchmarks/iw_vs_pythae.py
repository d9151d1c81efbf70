"""Importance-weighted log p(x) against pythae's ``get_nll`` on the same network, in one run.

A 784-200-200-50 ReLU VAE (our ``create_model("vae")``, fixed seed, untrained or trained for
``--epochs``); pythae 0.1.2's ``VAE`` wraps the very same encoder, posterior and decoder
(``log_var = 2 log sigma``, the decoder's sigmoid for its ``bce``), so both estimate the same
quantity. Rows: this checkout's ``log_marginal``, the same at ``--baseline-rev`` (the old
estimator with torch's Bernoulli log-likelihood), and pythae at two of its batch sizes; then
the decoder alone on the same number of latents, as a fraction of the float32 matmul rate.

pythae runs in its own virtual environment (``--pythae-python``), made once with::

    python3 -m venv .venv-pythae
    .venv-pythae/bin/pip install --no-deps pythae==0.1.2
    .venv-pythae/bin/pip install "pydantic>=2" cloudpickle imageio
    .venv/bin/python benchmarks/iw_vs_pythae.py --link-pythae .venv-pythae  # sees .venv

Then::

    .venv/bin/python benchmarks/iw_vs_pythae.py --limit 1000 --num-samples 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    BASELINE_REV,
    ROOT,
    baseline_infer,
    binarized_mnist,
    machine,
    matmul_gflops,
    write_table,
)
from iw_throughput import decoder_flops

import pyro_genmodels as pg
from pyro_genmodels.distributions import likelihoods
from pyro_genmodels.infer import log_marginal
from pyro_genmodels.infer.program import CPU_CHUNK_BYTES

#: pythae's view of our VAE (formatted with root, threads, state): the very same encoder,
#: posterior and decoder modules behind pythae's BaseEncoder / BaseDecoder
PYTHAE_MODEL = r"""
import json, sys, time, numpy as np, torch
sys.path.insert(0, {root!r})
import pyro_genmodels as pg
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder

torch.set_num_threads({threads})
ours = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50, hidden_dims=(200, 200))
ours.load_state_dict(torch.load({state!r}))


class Encoder(BaseEncoder):
    def __init__(self):
        super().__init__()
        self.encoder, self.posterior = ours.encoder, ours.posterior

    def forward(self, x):
        q = self.posterior(self.encoder(x)).base_dist
        return ModelOutput(embedding=q.loc, log_covariance=2 * q.scale.log())


class Decoder(BaseDecoder):
    def __init__(self):
        super().__init__()
        self.decoder = ours.decoder

    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.decoder(z)))
"""

PYTHAE_RUN = (
    PYTHAE_MODEL
    + r"""
ours.eval()
config = VAEConfig(input_dim=(1, 28, 28), latent_dim=50, reconstruction_loss="bce")
vae = VAE(config, encoder=Encoder(), decoder=Decoder()).eval()
x = torch.load({data!r})
out = []
for batch in {batches}:
    times = []
    for _ in range({repeats}):
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            nll = -vae.get_nll(x, n_samples={k}, batch_size=batch)
        times.append(time.perf_counter() - start)
    out.append(dict(batch=batch, seconds=min(times), nll=float(nll)))
print(json.dumps(out))
"""
)


@contextlib.contextmanager
def torch_bernoulli():
    """The Bernoulli log-likelihood as it was at the baseline: torch's, through BCE."""
    import pyro.distributions as dist

    forward = likelihoods.BernoulliLikelihood.forward
    likelihoods.BernoulliLikelihood.forward = lambda self, params: dist.Bernoulli(
        logits=params, validate_args=False
    ).to_event(3)
    try:
        yield
    finally:
        likelihoods.BernoulliLikelihood.forward = forward


def link_pythae(venv: Path) -> None:
    """Let the pythae venv import this checkout's venv packages (torch) and the project."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "pyro-genmodels-venv.pth").write_text(f"{ours}\n{ROOT}\n")
    print(f"linked {site} to {ours} and {ROOT}")


def _ours(fn, vae, x, k, batch) -> tuple[float, float]:
    """Seconds, and the NLL."""
    torch.manual_seed(0)
    start = time.perf_counter()
    lm = torch.cat([fn(vae.model, vae.guide, xb, k) for xb in x.split(batch)])
    return time.perf_counter() - start, -lm.double().mean().item()


def _decoder_rate(vae, x, k, batch) -> tuple[float, float]:
    """Seconds and GFLOP/s of the decoder alone on k latents per image, in the chunks the
    estimator uses."""
    chunk = max(1, CPU_CHUNK_BYTES // (8 * 4 * batch * 784))
    z = torch.randn(chunk, batch, 50)
    passes = len(x) // batch * -(-k // chunk)
    with torch.no_grad():
        vae.decoder(z)
        start = time.perf_counter()
        for _ in range(passes):
            vae.decoder(z)
        seconds = time.perf_counter() - start
    return seconds, passes * chunk * batch * decoder_flops(vae.decoder) / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="first N test images")
    parser.add_argument("--num-samples", type=int, default=1000, help="K")
    parser.add_argument("--batch", type=int, default=100, help="images per log_marginal call")
    parser.add_argument("--pythae-python", default=str(ROOT / ".venv-pythae" / "bin" / "python"))
    parser.add_argument("--pythae-batches", default="100,1000", help="get_nll batch sizes")
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--repeats", type=int, default=3, help="each row: best of this many")
    parser.add_argument("--link-pythae", metavar="VENV", help="set up VENV and exit")
    parser.add_argument("--out", default="results/iw_vs_pythae")
    args = parser.parse_args()
    if args.link_pythae:
        link_pythae(Path(args.link_pythae))
        return
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 28, 28), latent_dim=50, hidden_dims=(200, 200))
    vae.eval()
    x, source = binarized_mnist("test", args.limit)
    k = args.num_samples
    old = baseline_infer(args.baseline_rev).importance
    names = ["pyro-genmodels (this checkout)", f"pyro-genmodels at {args.baseline_rev}"]
    times: dict[str, list[float]] = {}
    nlls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        state, data = Path(tmp) / "vae.pt", Path(tmp) / "x.pt"
        torch.save(vae.state_dict(), state)
        torch.save(x, data)
        script = PYTHAE_RUN.format(
            root=str(ROOT), state=str(state), data=str(data), k=k,
            batches=[int(b) for b in args.pythae_batches.split(",")],
            threads=torch.get_num_threads(), repeats=1,
        )  # fmt: skip
        for _ in range(args.repeats):  # interleaved: this machine's speed drifts over minutes
            for name, fn, context in ((names[0], log_marginal, contextlib.nullcontext),
                                      (names[1], old.log_marginal, torch_bernoulli)):  # fmt: skip
                with context():
                    seconds, nlls[name] = _ours(fn, vae, x, k, args.batch)
                times.setdefault(name, []).append(seconds)
            done = subprocess.run([args.pythae_python, "-c", script], capture_output=True,
                                  text=True)  # fmt: skip
            if done.returncode:
                sys.exit(f"pythae failed (see the docstring to set it up):\n{done.stderr[-2000:]}")
            for r in json.loads(done.stdout.strip().splitlines()[-1]):
                name = f"pythae 0.1.2 get_nll, batch_size {r['batch']}"
                times.setdefault(name, []).append(r["seconds"])
                nlls[name] = r["nll"]
            print(json.dumps(times), flush=True)
    rows = [dict(code=n, seconds=min(t), median=sorted(t)[len(t) // 2], nll=nlls[n])
            for n, t in times.items()]  # fmt: skip
    dec_seconds, dec_rate = _decoder_rate(vae, x, k, args.batch)
    peak = matmul_gflops(torch.device("cpu"))
    ours = rows[0]["seconds"]
    lines = [
        f"log p(x) by importance sampling, K = {k}, {len(x)} {source} test images, "
        f"784-200-200-50 ReLU VAE (the same weights in both libraries). {machine()}.",
        "",
        f"Best (and median) of {args.repeats} interleaved runs each.",
        "",
        "| code | s, best (median) | s/image | NLL (nats) | time / this checkout |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['code']} | {r['seconds']:.2f} ({r['median']:.2f}) | "
                     f"{r['seconds'] / len(x) * 1e3:.2f} ms | {r['nll']:.2f} | "
                     f"{r['seconds'] / ours:.2f} |")  # fmt: skip
    lines += [
        "",
        f"The decoder alone on the same {k * len(x)} latents: {dec_seconds:.2f} s, "
        f"{dec_rate:.0f} GFLOP/s, {100 * dec_rate / peak:.0f}% of this machine's float32 "
        f"matmul rate ({peak:.0f} GFLOP/s, 2048 x 2048); it is "
        f"{100 * dec_seconds / ours:.0f}% of this checkout's time.",
    ]
    rows.append(dict(decoder_seconds=dec_seconds, decoder_gflops=dec_rate, matmul_gflops=peak))
    write_table(Path(args.out), lines, rows)


if __name__ == "__main__":
    main()
