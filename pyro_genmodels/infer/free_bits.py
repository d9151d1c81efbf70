"""Free bits (Kingma et al. 2016): a KL floor against posterior collapse.

The ELBO's KL term is replaced by ``sum_j max(lambda, mean_batch KL_j)``: each
latent dimension j may use ``lambda`` nats per image without penalty, so the
optimizer has no reason to switch it off. KL_j is analytic where torch has the
pair per dimension (e.g. diagonal Normal against Normal), otherwise a Monte Carlo
estimate of the site's total KL with the floor ``lambda`` times its size.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent, kl_divergence


def _per_dim_kl(q, p) -> torch.Tensor | None:
    """Analytic KL per latent dimension ``(batch..., event...)``, or None."""
    if isinstance(q, Independent) and isinstance(p, Independent):
        try:
            return kl_divergence(q.base_dist, p.base_dist)
        except NotImplementedError:
            return None
    return None


class FreeBitsELBO(pyro.infer.Trace_ELBO):
    """``Trace_ELBO`` with a free-bits floor on the KL term (nats per latent dimension)."""

    def __init__(self, free_bits: float, num_particles: int = 1, **kwargs):
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}")
        super().__init__(num_particles=num_particles, vectorize_particles=False, **kwargs)
        self.free_bits = float(free_bits)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._particle_loss(model_trace, guide_trace)
        return loss / self.num_particles

    def _particle_loss(self, model_trace, guide_trace) -> torch.Tensor:
        guide_sites = {
            name: site
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
        }
        loss = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                loss = loss - site["log_prob_sum"]
            elif name not in guide_sites:
                raise ValueError(f"free bits needs every latent in the guide; {name!r} is not")
        for name, q_site in guide_sites.items():
            p_site = model_trace.nodes[name]
            scale = q_site["scale"]
            kl = _per_dim_kl(q_site["fn"], p_site["fn"])
            if kl is not None:  # (N, D): floor each dimension's batch mean
                n = kl.shape[0] if kl.dim() else 1
                floor = kl.reshape(n, -1).mean(0).clamp(min=self.free_bits).sum() * n
            else:  # Monte Carlo total per example, floored at lambda x its size
                log_q = q_site["fn"].log_prob(q_site["value"])
                log_p = p_site["fn"].log_prob(p_site["value"])
                kl = (log_q - log_p).reshape(-1)
                size = math.prod(q_site["fn"].event_shape)
                floor = kl.mean().clamp(min=self.free_bits * size) * kl.numel()
            loss = loss + scale * floor
        return loss
