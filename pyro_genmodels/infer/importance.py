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
* a model without latent sites gives the exact log p(x).

Pyro's ``Importance.get_log_normalizer`` and ``vectorized_importance_weights``
sum log-weights over the batch; the functions here never do.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from .diagnostics import effective_sample_size, psis_khat
from .hints import hint

DATA_PLATE = "data"
_PARTICLES = "_iw_particles"
#: elements per chunk (particles x examples x pixels) when chunk_size is None
_CHUNK_BUDGET = 2**22


def _empty_guide(*args, **kwargs) -> None:
    """A guide with no sites: every latent is then drawn from the prior."""


def _sample_sites(trace) -> dict:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }


def _data_frame(site):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE and frame.vectorized:
            return frame
    raise ValueError(
        f"sample site {site['name']!r} is not inside pyro.plate({DATA_PLATE!r}, N); per-example "
        f"log p(x) needs every sample site of the model and guide inside a vectorized plate "
        f"named {DATA_PLATE!r} over the N examples"
    )


def _data_dim(site) -> int:
    return _data_frame(site).dim


def _check_plates(site, num_examples: int) -> None:
    """The data plate covers the batch, and no plate subsamples (its scale would be lost)."""
    frame = _data_frame(site)
    for f in site["cond_indep_stack"]:
        if f.full_size is not None and f.full_size != f.size:
            raise ValueError(
                f"site {site['name']!r}: pyro.plate({f.name!r}) subsamples {f.size} of "
                f"{f.full_size}; per-example log p(x) needs full plates (drop subsample_size "
                "and pass the subset of examples as x)"
            )
    if frame.size != num_examples:
        raise ValueError(
            f"site {site['name']!r}: pyro.plate({DATA_PLATE!r}) has size {frame.size} but x has "
            f"{num_examples} examples; the data plate must span x.shape[0]"
        )


class Layout(NamedTuple):
    """What one probe trace tells about a model/guide pair."""

    nesting: int  # max plate nesting (the data plate and any plates inside it)
    enumerated: list[str]  # model sites summed out by parallel enumeration
    has_latent: bool  # whether the model has any unobserved site


def _max_plate_nesting(model, guide, x) -> Layout:
    """Trace once without particles: plate nesting, enumerable sites, whether any latent."""
    with poutine.block():
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    guide_sites = _sample_sites(guide_tr)
    model_sites = _sample_sites(model_tr)
    nesting = 0
    for site in [*guide_sites.values(), *model_sites.values()]:
        _check_plates(site, x.shape[0])
        for frame in site["cond_indep_stack"]:
            if frame.vectorized:
                nesting = max(nesting, -frame.dim)
    for name, site in guide_sites.items():
        if name not in model_sites:
            raise ValueError(f"guide site {name!r} does not appear in the model")
        if site["is_observed"]:
            raise ValueError(f"guide site {name!r} is observed; guides only sample latents")
    enumerated = [
        name
        for name, site in model_sites.items()
        if not site["is_observed"]
        and name not in guide_sites
        and site["infer"].get("enumerate") == "parallel"
    ]
    has_latent = any(not s["is_observed"] for s in model_sites.values())
    return Layout(nesting, enumerated, has_latent)


def _reduce(site, log_prob: torch.Tensor, nesting: int) -> torch.Tensor:
    """Sum a site's log-prob over every plate but particles and data (no enumeration)."""
    mask = site["mask"]
    if mask is not None and not isinstance(mask, bool):
        log_prob = torch.where(mask, log_prob, log_prob.new_zeros(()))
    elif mask is False:
        log_prob = torch.zeros_like(log_prob)
    return _sum_plates(log_prob, nesting, _data_dim(site))


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
    target = frozenset({to_symbol[_PARTICLES], to_symbol[DATA_PLATE]})
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


def _per_example(total, layout: Layout, data_dim: int, k: int, n: int) -> torch.Tensor:
    """A per-particle, per-example total (particle and data dims kept) as ``(k, n)``."""
    nesting = layout.nesting
    total = torch.as_tensor(total)
    total = total.reshape((1,) * (nesting + 1 - total.dim()) + tuple(total.shape))
    return total.reshape(total.shape[-nesting - 1], total.shape[data_dim]).expand(k, n)


def _traces(model, guide, x, k: int, layout: Layout):
    """Guide and model (replayed on it) traced under a plate of k particles, log-probs in."""
    with pyro.plate(_PARTICLES, k, dim=-layout.nesting - 1):
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
    (minus a KL sample), enumerated sites still summed out.
    """
    guide_tr, model_tr = _traces(model, guide, x, k, layout)
    guide_sites = _sample_sites(guide_tr)
    sites = [
        site
        for name, site in _sample_sites(model_tr).items()
        if (site["is_observed"] and observed) or name in guide_sites or name in layout.enumerated
    ]
    total = _model_log_prob(model_tr, sites, layout)
    for site in guide_sites.values():
        total = total - _reduce(site, site["unscaled_log_prob"], layout.nesting)
    data_dim = _data_dim(next(iter(_sample_sites(model_tr).values())))
    return _per_example(total, layout, data_dim, k, x.shape[0])


def _default_chunk(model, x: torch.Tensor) -> int:
    """Particles per chunk: the module's ``iw_samples_per_pass`` hint (particles x examples
    per pass, for costly decoders such as a PixelCNN), else a memory budget of
    particles x examples x pixels."""
    per_pass = hint(model, "iw_samples_per_pass")
    if per_pass:
        return max(1, int(per_pass) // max(1, x.shape[0]))
    return max(1, _CHUNK_BUDGET // max(1, x.numel()))


def _positive_int(value, name: str) -> int:
    """``value`` as an int >= 1; a float, bool or anything else is a ValueError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def _log_weights(model, guide, x, num_samples, chunk_size) -> tuple[torch.Tensor, bool]:
    num_samples = _positive_int(num_samples, "num_samples")
    chunk = None if chunk_size is None else _positive_int(chunk_size, "chunk_size")
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError("x must be a tensor whose first dimension indexes the examples")
    if x.shape[0] == 0:
        return x.new_zeros((num_samples, 0)), True
    guide = _empty_guide if guide is None else guide
    layout = _max_plate_nesting(model, guide, x)
    if not layout.has_latent:
        lw = _chunk_log_weights(model, guide, x, 1, layout)
        return lw.expand(num_samples, x.shape[0]), False
    chunk = chunk or _default_chunk(model, x)
    chunks = []
    for start in range(0, num_samples, chunk):
        k = min(chunk, num_samples - start)
        chunks.append(_chunk_log_weights(model, guide, x, k, layout))
    return torch.cat(chunks, 0), True


@torch.no_grad()
def log_importance_weights(
    model, guide, x: torch.Tensor, num_samples: int, chunk_size: int | None = None
) -> torch.Tensor:
    """The log importance weights ``log p(x_n, z_k) - log q(z_k | x_n)``.

    :param model: a Pyro model ``model(x)`` whose sample sites all lie in
        ``pyro.plate("data", N)``.
    :param guide: its guide ``guide(x)``; ``None`` draws every latent from the prior.
    :param x: a batch of images ``(N, C, H, W)`` (any tensor whose first dim is N).
    :param num_samples: K, the number of importance samples per example.
    :param chunk_size: particles evaluated at once (default: from a memory budget).
    :returns: ``(K, N)`` log weights; for a model without latents every row is log p(x).
    """
    return _log_weights(model, guide, x, num_samples, chunk_size)[0]


@torch.no_grad()
def log_marginal(
    model, guide, x: torch.Tensor, num_samples: int, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Per-example importance-weighted estimate of :math:`\log p(x)` in nats.

    :math:`\log \frac{1}{K}\sum_k p(x, z_k)/q(z_k \mid x)` with :math:`z_k \sim q(z \mid x)`,
    a stochastic lower bound that rises towards :math:`\log p(x)` as K grows
    (exact for a model without latents, or a guide equal to the posterior).

    :returns: ``(N,)`` tensor.
    """
    lw, has_latent = _log_weights(model, guide, x, num_samples, chunk_size)
    if not has_latent:
        return lw[0].clone()
    return torch.logsumexp(lw, 0) - math.log(lw.shape[0])


def prior_log_marginal(
    model, x: torch.Tensor, num_samples: int, chunk_size: int | None = None
) -> torch.Tensor:
    r"""The naive estimate :math:`\log \frac{1}{K}\sum_k p(x \mid z_k)`, :math:`z_k \sim p(z)`.

    Unbiased in p(x) but with enormous variance in high dimensions: almost no prior
    sample explains a given image. Shown next to :func:`log_marginal` for contrast.
    """
    return log_marginal(model, None, x, num_samples, chunk_size)


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
    model, guide, x: torch.Tensor, num_samples: int, chunk_size: int | None = None
) -> IWEstimate:
    """:func:`log_marginal` with its diagnostics: the ELBO from the same samples,
    the PSIS Pareto k and the effective sample size, per example."""
    lw, has_latent = _log_weights(model, guide, x, num_samples, chunk_size)
    k = lw.shape[0]
    return IWEstimate(
        log_marginal=torch.logsumexp(lw, 0) - math.log(k) if has_latent else lw[0].clone(),
        elbo=lw.mean(0),
        khat=psis_khat(lw) if has_latent else torch.full((x.shape[0],), float("nan")),
        ess=effective_sample_size(lw) if has_latent else torch.full((x.shape[0],), float(k)),
        num_samples=k,
        has_latent=has_latent,
    )
