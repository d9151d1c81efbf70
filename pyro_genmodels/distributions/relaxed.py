"""One-hot codes trained with the Gumbel-softmax estimator (Jang et al. 2017).

A categorical code is relaxed in training mode and exact in eval mode; the module
that owns it chooses by its ``training`` flag (see the ``categorical`` posterior
family), so plain ``pyro.infer.SVI`` trains it and evaluation scores the discrete
model. Nothing here is global state.

In training mode q(z | x) is :class:`GumbelSoftmax` (or
:class:`GumbelSoftmaxStraightThrough`): Pyro's relaxed one-hot samplers, whose
``log_prob`` is the *categorical* log-probability ``sum_k v_k log pi_k``, linear in the
code v. Against the uniform ``OneHotCategorical`` prior the ELBO's KL term is then the KL
of the discrete codes (analytic under ``TraceMeanField_ELBO``, registered below), with
the reconstruction term taken at the relaxed sample: the estimator of Jang et al.

Why not the Concrete density of ``RelaxedOneHotCategorical`` with a relaxed prior (the
ELBO of the relaxation, Maddison et al. 2017): measured on binarized MNIST (30 codes x 10,
10 epochs, K = 5000 on 1000 test images), on the simplex in float32 the density of a peaked
q underflows and its Monte Carlo KL runs away (a training loss of -9e10); in log space
(torch's ``ExpRelaxedCategorical``) the KL between two Concrete densities makes the codes
so costly that the model barely uses them (KL 6.6 nats, NLL 159.8), where the discrete KL
gives NLL 117.2 (README, the posterior-families table).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions.kl import register_kl


class _CategoricalLogProb:
    """``log_prob(v) = sum_k v_k log pi_k``: exact for one-hot v, linear in relaxed v."""

    def log_prob(self, value):
        return (value * self.logits).sum(-1)  # logits are normalized: log pi


class GumbelSoftmax(_CategoricalLogProb, dist.RelaxedOneHotCategorical):
    """Pyro's ``RelaxedOneHotCategorical`` sampler (``softmax((logits + g) / temperature)``)
    with the categorical log-probability (see the module docstring)."""


class GumbelSoftmaxStraightThrough(
    _CategoricalLogProb, dist.RelaxedOneHotCategoricalStraightThrough
):
    """Pyro's straight-through sampler (hard one-hot forward, relaxed gradient) with the
    categorical log-probability, which for its hard samples is exact."""


@register_kl(GumbelSoftmax, torch.distributions.OneHotCategorical)  # Pyro's is a subclass
@register_kl(GumbelSoftmaxStraightThrough, torch.distributions.OneHotCategorical)
def _kl_gumbel_softmax_one_hot(q, p):
    """The KL of the discrete codes, KL(Cat(pi_q) || Cat(pi_p))."""
    return (q.probs * (q.logits - p.logits)).sum(-1)


def relaxed_one_hot(logits: torch.Tensor, temperature: float, straight_through: bool = False):
    """The relaxed one-hot categorical over the last dim of ``logits``: event ``(K,)``.

    Unvalidated: a float32 relaxed sample can miss the simplex's sum-to-one check by ~1e-7.
    """
    t = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    cls = GumbelSoftmaxStraightThrough if straight_through else GumbelSoftmax
    return cls(t, logits=logits, validate_args=False)


def uniform_one_hot(ref: torch.Tensor, num_variables: int, num_classes: int, relaxed=False):
    """The uniform prior over ``num_variables`` one-hot codes of ``num_classes``: event (L, K).

    :param relaxed: leave values unvalidated, so that relaxed codes (training mode) can be
        scored: their log-probability is the constant ``-L log K``, as for one-hot codes.
    """
    logits = ref.new_full((num_variables, num_classes), -math.log(num_classes))
    validate = False if relaxed else None
    return dist.OneHotCategorical(logits=logits, validate_args=validate).to_event(1)
