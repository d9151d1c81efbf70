"""The mean-field ELBO without the log densities it does not use, on the device.

Pyro's ``TraceMeanField_ELBO`` scores every site of both traces (``get_importance_trace``
computes log p and log q of each latent) and then replaces the latents' terms by the
analytic KL(q || p): the latents' log densities are computed, differentiated through and
thrown away at every step; and it reads each particle's ELBO back to the host.
:class:`MeanFieldELBO` computes the observed sites' log densities only, and the latents'
where the loss needs them (a latent without a closed-form KL, or an auxiliary guide site),
and keeps the loss on the device (:class:`~pyro_genmodels.infer.elbo.DeviceLoss`). Under
``pyro.validation_enabled()`` it is Pyro's own path, with its checks.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites

from .elbo import DeviceLoss


class MeanFieldELBO(DeviceLoss, pyro.infer.TraceMeanField_ELBO):
    """``TraceMeanField_ELBO``, the same loss, scoring only the sites the loss reads."""

    def _get_trace(self, model, guide, args, kwargs):
        if is_validation_enabled() or isinstance(
            poutine.unwrap(guide), poutine.messenger.Messenger
        ):
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = prune_subsample_sites(poutine.trace(replayed).get_trace(*args, **kwargs))
        model_trace.compute_log_prob(lambda name, site: site["is_observed"])
        return model_trace, prune_subsample_sites(guide_trace)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        """-(log p(x | z) - KL(q || p)) of one particle, the KL analytic where torch has it
        and log q(z) - log p(z) of the sample where not (as Pyro's, without its checks)."""
        if is_validation_enabled():
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        elbo = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
                continue
            q = guide_trace.nodes[name]
            try:
                kl = torch.distributions.kl_divergence(q["fn"], site["fn"])
            except NotImplementedError:
                elbo = elbo + _log_prob_sum(model_trace, name) - _log_prob_sum(guide_trace, name)
                continue
            kl = scale_and_mask(kl, q["scale"], q["mask"])
            elbo = elbo - (kl.sum() if torch.is_tensor(kl) else kl * q["fn"].batch_shape.numel())
        for name, q in guide_trace.nodes.items():  # auxiliary guide sites: their entropy
            if q["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - _log_prob_sum(guide_trace, name)
        return -elbo.detach(), -elbo


def _log_prob_sum(trace, name: str) -> torch.Tensor:
    """The scaled, masked log density of site ``name`` of ``trace``, summed (memoized)."""
    trace.compute_log_prob(lambda n, site: n == name)
    return trace.nodes[name]["log_prob_sum"]
