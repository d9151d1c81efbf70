r"""Importance-weighted estimates of log p(x), per example, for any model/guide pair.

For each example :math:`x_n` and :math:`z_k \sim q(z \mid x_n)`:

.. math::

    \log \hat p(x_n) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x_n, z_k)}{q(z_k \mid x_n)}

Every sample site of the pair must live in ``pyro.plate("data", N)`` (no subsampling).
Particles are vectorized with an outer plate and chunked over K (combined with
logsumexp), so K = 5000 runs in bounded memory.

Sites are handled as follows:

* latent sites sampled by the guide: ``log p - log q`` enters the weight;
* model latents absent from the guide are drawn from the prior, so their
  ``log p`` cancels against the proposal and is left out (with no guide at all
  this is the naive prior-sampling estimate);
* model latents marked ``infer={"enumerate": "parallel"}`` and absent from the
  guide are summed out exactly, per example, by Pyro's tensor contraction (the one
  ``TraceEnum_ELBO`` uses): a per-pixel variable in a plate nested in the data plate is
  summed per pixel, and a chain under ``pyro.markov`` (which reuses enumeration
  dimensions) is summed step by step, as the forward algorithm does;
* a model without latent sites gives the exact log p(x);
* auxiliary guide sites (``infer={"is_auxiliary": True}``, as in Pyro's ``AutoNormal``)
  enter log q, and so does the log-density of the ``Delta`` sites they push forward (which
  carries the Jacobian), as in Pyro's ELBOs;
* masks (``poutine.mask``, ``obs_mask``) apply; scales (``poutine.scale``, a subsampling
  plate's) do not: log p(x) of an example has no scale, so every estimator here ignores them.

Pairs for which no estimate exists are refused with a ``ValueError`` that says why
(:func:`pyro_genmodels.infer.program.probe`). Pyro's validation runs once, on a probe trace
of the batch; the chunks of particles then run with it off.

Pyro's ``Importance.get_log_normalizer`` and ``vectorized_importance_weights``
sum log-weights over the batch; the functions here never do.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.util import prune_subsample_sites

from .diagnostics import effective_sample_size, psis_khat
from .hints import hint
from .program import (
    DATA_PLATE,
    PARTICLES,
    Layout,
    check_batch,
    chunk_budget_bytes,
    data_frame,
    empty_guide,
    positive_int,
    probe,
    sample_sites,
)

#: bytes held per particle x example x pixel during one chunk (the decoder's output, its
#: log-likelihood terms and their temporaries)
_BYTES_PER_ELEMENT_AND_SAMPLE = 8


def _reduce(site, log_prob: torch.Tensor, nesting: int) -> torch.Tensor:
    """Sum a site's log-prob over every plate but particles and data (no enumeration), with
    the site's mask applied (its scale is not: log p(x) has no scale)."""
    mask = site["mask"]
    if mask is not None and not isinstance(mask, bool):
        log_prob = torch.where(mask, log_prob, log_prob.new_zeros(()))
    elif mask is False:
        log_prob = torch.zeros_like(log_prob)
    return _sum_plates(log_prob, nesting, data_frame(site).dim)


def _sum_plates(t: torch.Tensor, nesting: int, data_dim: int) -> torch.Tensor:
    """Sum ``t`` over every plate dim but the particles' and the data's (kept, size 1 or not)."""
    keep = {-nesting - 1, data_dim}
    other = [d for d in range(-nesting, 0) if d not in keep and d >= -t.dim()]
    return t.sum(other, keepdim=True) if other else t


def _contract(model_tr, sites: list, enumerated: list[str]) -> torch.Tensor:
    r""":math:`\log \sum_{y} \prod_{\text{sites}} p` per particle and example, enumerated
    sites ``y`` summed out by Pyro's tensor message passing (as ``TraceEnum_ELBO`` does).

    Each site's log-prob is packed with one symbol per plate and per enumerated variable,
    so dimensions that ``pyro.markov`` reuses along a chain stay distinct variables.
    ``contract_to_tensor`` then sums every enumerated variable out inside the plates it
    lives in (a per-pixel variable per pixel) before taking the product over those plates,
    and keeps the particle and data plates.
    """
    model_tr.pack_tensors()
    to_symbol = model_tr.plate_to_symbol
    tree: OrderedDict = OrderedDict()
    sizes = {}  # packing drops size-1 dims; the ring broadcasts them back from these sizes
    for site in sites:
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        sizes.update((to_symbol[f.name], f.size) for f in frames)
        log_prob, mask = site["packed"]["unscaled_log_prob"], site["packed"]["mask"]
        term = packed.scale_and_mask(log_prob, mask=mask)
        sizes.update(zip(term._pyro_dims, term.shape, strict=True))
        tree.setdefault(frozenset(to_symbol[f.name] for f in frames), []).append(term)
    sum_dims = {model_tr.nodes[name]["infer"]["_enumerate_symbol"] for name in enumerated}
    target = frozenset({to_symbol[PARTICLES], to_symbol[DATA_PLATE]})
    ring = LogRing(dim_to_size=sizes)
    result = contract_to_tensor(tree, sum_dims, target_ordinal=target, ring=ring)
    return packed.unpack(result, model_tr.symbol_to_dim)


def _enumerating(model, layout: Layout):
    """The model with its enumerated sites enumerated left of the particle dim."""
    if not layout.enumerated:
        return model
    return EnumMessenger(first_available_dim=-layout.nesting - 2)(model)


def _model_log_prob(model_tr, sites: list, layout: Layout) -> torch.Tensor:
    """Sum of the ``sites``' log-probs per particle and example, enumerated sites summed out."""
    if layout.enumerated:
        return _contract(model_tr, sites, layout.enumerated)
    total = 0.0
    for site in sites:
        total = total + _reduce(site, site["unscaled_log_prob"], layout.nesting)
    return total


def _per_example(total, layout: Layout, k: int, n: int) -> torch.Tensor:
    """A per-particle, per-example total (particle and data dims kept) as ``(k, n)``."""
    nesting = layout.nesting
    total = torch.as_tensor(total)
    total = total.reshape((1,) * (nesting + 1 - total.dim()) + tuple(total.shape))
    return total.reshape(total.shape[-nesting - 1], total.shape[layout.data_dim]).expand(k, n)


def _traces(model, guide, x, k: int, layout: Layout):
    """Guide and model (replayed on it) traced under a plate of k particles, log-probs in."""
    with pyro.plate(PARTICLES, k, dim=-layout.nesting - 1):
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(_enumerating(model, layout), trace=guide_tr))
        model_tr = model_tr.get_trace(x)
    guide_tr, model_tr = prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    return guide_tr, model_tr


def _chunk_log_weights(model, guide, x, k, layout: Layout, observed=True) -> torch.Tensor:
    """``(k, N)`` log weights for one chunk of k particles.

    With ``observed=False`` the observed sites are left out: ``log p(z) - log q(z | x)``
    (minus a KL sample), enumerated sites still summed out. The guide's auxiliary sites
    enter log q, and so does the log-density of the point masses they push forward.
    """
    guide_tr, model_tr = _traces(model, guide, x, k, layout)
    guide_sites = sample_sites(guide_tr)
    sites = [
        site
        for name, site in sample_sites(model_tr).items()
        if (site["is_observed"] and observed) or name in guide_sites or name in layout.enumerated
    ]
    total = _model_log_prob(model_tr, sites, layout)
    for site in guide_sites.values():
        total = total - _reduce(site, site["unscaled_log_prob"], layout.nesting)
    return _per_example(total, layout, k, x.shape[0])


def _default_chunk(model, x: torch.Tensor, budget: int | None) -> int:
    """Particles per chunk: the module's ``iw_samples_per_pass`` hint (particles x examples
    per pass, for costly decoders such as a PixelCNN), else what the memory budget in
    bytes holds at :data:`_BYTES_PER_ELEMENT_AND_SAMPLE` bytes per particle, example and
    pixel."""
    per_pass = hint(model, "iw_samples_per_pass")
    if per_pass:
        return max(1, int(per_pass) // max(1, x.shape[0]))
    per_particle = _BYTES_PER_ELEMENT_AND_SAMPLE * x.element_size() * max(1, x.numel())
    return max(1, chunk_budget_bytes(x.device, budget) // per_particle)


def _log_weights(
    model, guide, x, num_samples, chunk_size, budget, point_mass=False
) -> tuple[torch.Tensor, bool]:
    num_samples = positive_int(num_samples, "num_samples")
    chunk = None if chunk_size is None else positive_int(chunk_size, "chunk_size")
    check_batch(x)
    if x.shape[0] == 0:
        return x.new_zeros((num_samples, 0)), True
    guide = empty_guide if guide is None else guide
    layout = probe(model, guide, x, point_mass=point_mass)  # Pyro's validation as the caller's
    with pyro.validation_enabled(False):  # the probe checked the data; skip per-chunk checks
        if not layout.has_latent:
            lw = _chunk_log_weights(model, guide, x, 1, layout)
            return lw.expand(num_samples, x.shape[0]), False
        chunk = chunk or _default_chunk(model, x, budget)
        chunks = []
        for start in range(0, num_samples, chunk):
            k = min(chunk, num_samples - start)
            chunks.append(_chunk_log_weights(model, guide, x, k, layout))
    return torch.cat(chunks, 0), True


@torch.no_grad()
def log_importance_weights(
    model,
    guide,
    x: torch.Tensor,
    num_samples: int,
    chunk_size: int | None = None,
    *,
    memory_budget: int | None = None,
    allow_point_mass: bool = False,
) -> torch.Tensor:
    """The log importance weights ``log p(x_n, z_k) - log q(z_k | x_n)``.

    :param model: a Pyro model ``model(x)`` whose sample sites all lie in
        ``pyro.plate("data", N)``.
    :param guide: its guide ``guide(x)``; ``None`` draws every latent from the prior.
    :param x: a batch of images ``(N, C, H, W)`` (any tensor whose first dim is N).
    :param num_samples: K, the number of importance samples per example.
    :param chunk_size: particles evaluated at once (default: what ``memory_budget`` holds).
    :param memory_budget: bytes a chunk may take (default: a quarter of the free memory of
        a CUDA device, 32 MiB on the CPU, where chunks in cache are fastest); ignored when
        ``chunk_size`` is given.
    :returns: ``(K, N)`` log weights; for a model without latents every row is log p(x).
    :raises ValueError: where no estimate exists (see :mod:`pyro_genmodels.infer.program`):
        a point-mass guide, a guide whose support differs from the model's, a guide sampling
        a site the model observes, a site outside ``pyro.plate("data", N)``.
    :param allow_point_mass: score a point-mass guide site by its ``log_density`` (Pyro's ELBO
        convention; with K = 1 the training objective of such a guide, not log p(x)).
    """
    return _log_weights(model, guide, x, num_samples, chunk_size, memory_budget, allow_point_mass)[
        0
    ]


@torch.no_grad()
def log_marginal(
    model,
    guide,
    x: torch.Tensor,
    num_samples: int,
    chunk_size: int | None = None,
    *,
    memory_budget: int | None = None,
) -> torch.Tensor:
    r"""Per-example importance-weighted estimate of :math:`\log p(x)` in nats.

    :math:`\log \frac{1}{K}\sum_k p(x, z_k)/q(z_k \mid x)` with :math:`z_k \sim q(z \mid x)`,
    a stochastic lower bound that rises towards :math:`\log p(x)` as K grows
    (exact for a model without latents, or a guide equal to the posterior).

    :returns: ``(N,)`` tensor.
    """
    lw, has_latent = _log_weights(model, guide, x, num_samples, chunk_size, memory_budget)
    if not has_latent:
        return lw[0].clone()
    return torch.logsumexp(lw, 0) - math.log(lw.shape[0])


def prior_log_marginal(
    model,
    x: torch.Tensor,
    num_samples: int,
    chunk_size: int | None = None,
    *,
    memory_budget: int | None = None,
) -> torch.Tensor:
    r"""The naive estimate :math:`\log \frac{1}{K}\sum_k p(x \mid z_k)`, :math:`z_k \sim p(z)`.

    Unbiased in p(x) but with enormous variance in high dimensions: almost no prior
    sample explains a given image. Shown next to :func:`log_marginal` for contrast.
    """
    return log_marginal(model, None, x, num_samples, chunk_size, memory_budget=memory_budget)


@dataclass
class IWEstimate:
    """Per-example results of :func:`importance_estimate` (all tensors ``(N,)``)."""

    log_marginal: torch.Tensor  # IW estimate of log p(x), nats
    elbo: torch.Tensor  # mean over the K samples of log w: a Monte Carlo ELBO
    khat: torch.Tensor  # PSIS Pareto k (NaN where undefined)
    ess: torch.Tensor  # effective sample size of the K weights
    num_samples: int
    has_latent: bool


@torch.no_grad()
def importance_estimate(
    model,
    guide,
    x: torch.Tensor,
    num_samples: int,
    chunk_size: int | None = None,
    *,
    memory_budget: int | None = None,
) -> IWEstimate:
    """:func:`log_marginal` with its diagnostics: the ELBO from the same samples,
    the PSIS Pareto k and the effective sample size, per example."""
    lw, has_latent = _log_weights(model, guide, x, num_samples, chunk_size, memory_budget)
    k = lw.shape[0]
    return IWEstimate(
        log_marginal=torch.logsumexp(lw, 0) - math.log(k) if has_latent else lw[0].clone(),
        elbo=lw.mean(0),
        khat=psis_khat(lw) if has_latent else torch.full((x.shape[0],), float("nan")),
        ess=effective_sample_size(lw) if has_latent else torch.full((x.shape[0],), float(k)),
        num_samples=k,
        has_latent=has_latent,
    )
