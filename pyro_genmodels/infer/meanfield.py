"""The mean-field ELBO without the log densities it does not use.

Pyro's ``TraceMeanField_ELBO`` scores every site of both traces (``get_importance_trace``
computes log p and log q of each latent) and then replaces the latents' terms by the
analytic KL(q || p): the latents' log densities are computed, differentiated through and
thrown away at every step. :class:`MeanFieldELBO` computes the observed sites' log
densities only, and the latents' where the loss needs them (a latent without a
closed-form KL, or an auxiliary guide site). Under ``pyro.validation_enabled()`` it is
Pyro's own path, with its checks.
"""

from __future__ import annotations

import pyro
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites


class MeanFieldELBO(pyro.infer.TraceMeanField_ELBO):
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
        try:
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        except KeyError:  # a latent without a closed-form KL: the loss reads its densities
            model_trace.compute_log_prob()
            guide_trace.compute_score_parts()
            return super()._differentiable_loss_particle(model_trace, guide_trace)
