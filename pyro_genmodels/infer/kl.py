r"""Per-example :math:`\mathrm{KL}(q(z \mid x) \,\|\, p(z))` for a model/guide pair.

Analytic where torch has the pair registered (e.g. diagonal Normal against
Normal), Monte Carlo :math:`\mathbb{E}_q[\log q - \log p]` otherwise.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch.distributions import kl_divergence as torch_kl

from .importance import (
    _PARTICLES,
    _chunk_log_weights,
    _max_plate_nesting,
    _positive_int,
    _reduce,
    _sample_sites,
)


def _site_kl(guide_site, model_site, nesting: int, analytic: bool) -> torch.Tensor:
    if analytic:
        try:
            kl = torch_kl(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            pass
        else:
            return _reduce(guide_site, kl, nesting)
    log_q = guide_site["fn"].log_prob(guide_site["value"])
    log_p = model_site["fn"].log_prob(model_site["value"])
    return _reduce(guide_site, log_q, nesting) - _reduce(model_site, log_p, nesting)


@torch.no_grad()
def kl_divergence(
    model, guide, x: torch.Tensor, num_samples: int = 1, analytic: bool = True
) -> torch.Tensor:
    r"""Per-example KL(q(z | x) || p(z)) in nats, summed over the guide's latent sites.

    :param num_samples: particles for the Monte Carlo part (and for sites whose
        prior depends on other latents, whose analytic KL is conditional on them).
        With enumerated model sites (the GMVAE cluster y) the prior is the mixture
        summed over them, and the KL is estimated by Monte Carlo.
    :param analytic: use ``torch.distributions.kl_divergence`` where registered.
    :returns: ``(N,)`` tensor.
    """
    num_samples = _positive_int(num_samples, "num_samples")
    if x.shape[0] == 0:
        return x.new_zeros((0,))
    layout = _max_plate_nesting(model, guide, x)
    nesting = layout.nesting
    if layout.enumerated:  # p(z) = sum_y p(y) p(z | y): Monte Carlo against the summed-out prior
        lw = _chunk_log_weights(model, guide, x, num_samples, layout, observed=False)
        return -lw.mean(0)
    particle_dim = -nesting - 1
    with pyro.plate(_PARTICLES, num_samples, dim=particle_dim):
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    model_sites = _sample_sites(model_tr)
    total = x.new_zeros((1,) * (nesting + 1))
    for name, site in _sample_sites(guide_tr).items():
        total = total + _site_kl(site, model_sites[name], nesting, analytic)
    total = total.reshape((1,) * (nesting + 1 - total.dim()) + tuple(total.shape))
    per_particle = total.mean(particle_dim, keepdim=True).reshape(-1)
    return per_particle.expand(x.shape[0]) if per_particle.numel() == 1 else per_particle
