r"""Per-example :math:`\mathrm{KL}(q(z \mid x) \,\|\, p(z))` for a model/guide pair.

Analytic where torch has the pair registered (e.g. diagonal Normal against
Normal), Monte Carlo :math:`\mathbb{E}_q[\log q - \log p]` otherwise.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch.distributions import kl_divergence as torch_kl

from .importance import _chunk_log_weights, _reduce
from .program import PARTICLES, check_batch, empty_guide, positive_int, probe, sample_sites


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
    model,
    guide,
    x: torch.Tensor,
    num_samples: int = 1,
    analytic: bool = True,
    *,
    allow_point_mass: bool = False,
) -> torch.Tensor:
    r"""Per-example KL(q(z | x) || p(z)) in nats, summed over the guide's latent sites.

    :param guide: the guide; ``None`` (every latent from its prior) has KL 0.
    :param num_samples: particles for the Monte Carlo part (and for sites whose
        prior depends on other latents, whose analytic KL is conditional on them).
        With enumerated model sites (the GMVAE cluster y) the prior is the mixture
        summed over them, and with auxiliary guide sites (Pyro's AutoNormal) q is their
        push-forward; both are estimated by Monte Carlo.
    :param analytic: use ``torch.distributions.kl_divergence`` where registered.
    :param allow_point_mass: Pyro's ELBO convention for a point-mass guide site (its
        ``log_density`` for log q, so the "KL" is ``-log p(z_hat)``), as training logs it.
    :returns: ``(N,)`` tensor.
    :raises ValueError: for the pairs :func:`~pyro_genmodels.infer.log_marginal` refuses
        (a point-mass guide has no KL to a density, unless ``allow_point_mass``).
    """
    num_samples = positive_int(num_samples, "num_samples")
    check_batch(x)
    if x.shape[0] == 0:
        return x.new_zeros((0,))
    guide = empty_guide if guide is None else guide
    layout = probe(model, guide, x, point_mass=allow_point_mass)
    nesting = layout.nesting
    if layout.enumerated or layout.auxiliary:  # Monte Carlo against the summed-out prior
        lw = _chunk_log_weights(model, guide, x, num_samples, layout, observed=False)
        return -lw.mean(0)
    particle_dim = -nesting - 1
    with pyro.plate(PARTICLES, num_samples, dim=particle_dim):
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    model_sites = sample_sites(model_tr)
    total = x.new_zeros((1,) * (nesting + 1))
    for name, site in sample_sites(guide_tr).items():
        total = total + _site_kl(site, model_sites[name], nesting, analytic)
    total = total.reshape((1,) * (nesting + 1 - total.dim()) + tuple(total.shape))
    per_particle = total.mean(particle_dim, keepdim=True).reshape(-1)
    return per_particle.expand(x.shape[0]) if per_particle.numel() == 1 else per_particle
