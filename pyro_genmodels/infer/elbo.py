"""Pyro's ``Trace_ELBO`` and ``TraceEnum_ELBO`` as training losses that stay on the device
(:class:`DeviceLoss` does the same for :class:`~pyro_genmodels.infer.MeanFieldELBO`).

Pyro's ``differentiable_loss`` reads the loss back to the host at every call: ``.item()`` of
each particle's ELBO (twice per particle in ``Trace_ELBO``), a NaN check of the loss, and
another NaN check of its gradient from a backward hook. On a GPU each read waits for the
device to finish the step so far. The classes here compute the same loss (value and
gradient) without these reads; a loss that is not finite is left to the caller (the trainer
checks every few steps). Under ``pyro.validation_enabled()`` they are Pyro's own classes,
with every check and warning.
"""

from __future__ import annotations

import pyro
import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer.traceenum_elbo import _compute_dice_elbo  # Pyro's dice ELBO of one particle
from pyro.infer.util import is_validation_enabled, torch_item


class DeviceLoss:
    """``differentiable_loss`` from the ``(value, surrogate)`` pair of each particle (a mixin
    for Pyro's ``Trace_ELBO`` family): the value, with the surrogate's gradient, averaged over
    the particles, without reading either back to the host."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        if is_validation_enabled():
            return super().differentiable_loss(model, guide, *args, **kwargs)
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            value, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = loss + (value + (surrogate - surrogate.detach())) / self.num_particles
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Pyro's (``pyro.infer.SVI``'s step), a float as there."""
        return torch_item(super().loss_and_grads(model, guide, *args, **kwargs))


class TraceELBO(DeviceLoss, pyro.infer.Trace_ELBO):
    """``Trace_ELBO`` whose loss stays on the device. A guide with a site that is not
    reparameterized (a score-function term) takes Pyro's particle loss, which reads the
    particle's ELBO once."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        guide_sites = [s for s in guide_trace.nodes.values() if s["type"] == "sample"]
        if is_validation_enabled() or not all(
            is_identically_zero(s["score_parts"].score_function) for s in guide_sites
        ):
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        # all reparameterized: the surrogate ELBO is the ELBO, log p(x, z) - log q(z)
        elbo = sum(s["log_prob_sum"] for s in model_trace.nodes.values() if s["type"] == "sample")
        elbo = elbo - sum(s["log_prob_sum"] for s in guide_sites)
        return -elbo.detach(), -elbo


class TraceEnumELBO(pyro.infer.TraceEnum_ELBO):
    """``TraceEnum_ELBO`` without the NaN checks of its loss and gradient (Pyro's sum over
    the enumerated sites still reads whether any of their probabilities is zero)."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        if is_validation_enabled():
            return super().differentiable_loss(model, guide, *args, **kwargs)
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = elbo + _compute_dice_elbo(model_trace, guide_trace)
        if not (torch.is_tensor(elbo) and elbo.requires_grad):
            raise ValueError(f"the ELBO cannot be differentiated: {elbo}")
        return -elbo / self.num_particles
