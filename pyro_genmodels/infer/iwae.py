"""The IWAE objective as a differentiable loss.

Pyro's ``RenyiELBO(alpha=0)`` is the IWAE bound, but it only offers
``loss_and_grads``, which calls ``backward`` only when the traces contain
``pyro.param`` sites, and a module-local PyroModule has none. This subclass adds
``differentiable_loss``: the per-example bound ``log (1/K) sum_k w_k`` over K
vectorized particles (reparameterized guides), summed over the batch.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum


class IWAE_ELBO(pyro.infer.RenyiELBO):  # noqa: N801 - Pyro's naming
    """``RenyiELBO(alpha=0)`` with a ``differentiable_loss`` (negative IWAE bound)."""

    def __init__(self, num_particles: int = 1, **kwargs):
        super().__init__(alpha=0, num_particles=num_particles, vectorize_particles=True, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_w = log_w + torch_sum(site["log_prob"], sum_dims)
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    if not is_identically_zero(site["score_parts"].score_function):
                        raise NotImplementedError(
                            f"the iwae objective needs reparameterized guide sites; "
                            f"{site['name']!r} is not"
                        )
                    log_w = log_w - torch_sum(site["log_prob"], sum_dims)
            particles.append(log_w)
        vectorized = self.vectorize_particles and self.num_particles > 1
        log_w = particles[0] if vectorized else torch.stack(particles)  # (K, N)
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)
        return -bound.sum()
