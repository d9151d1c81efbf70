"""One-hot codes: Pyro's relaxed (Gumbel-softmax / Concrete) and exact distributions.

A categorical code is relaxed in training mode and exact in eval mode; the module
that owns it chooses by its ``training`` flag (see the ``categorical`` posterior
family and prior), so plain ``pyro.infer.SVI`` trains it and evaluation scores the
discrete model. Nothing here is global state.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions.utils import clamp_probs


class RelaxedOneHotCategorical(dist.RelaxedOneHotCategorical):
    """Pyro's ``RelaxedOneHotCategorical`` whose samples are kept off the simplex's edges.

    In float32 a softmax at a low temperature can return exact zeros, whose log-density
    is ``-inf``; like Pyro's straight-through variant (which does the same to its soft
    sample), the sample is passed through ``clamp_probs``.
    """

    def rsample(self, sample_shape=torch.Size()):  # noqa: B008 - torch's signature
        return clamp_probs(super().rsample(sample_shape))


def relaxed_one_hot(logits: torch.Tensor, temperature: float, straight_through: bool = False):
    """The relaxed one-hot categorical over the last dim of ``logits``: event ``(K,)``.

    :param straight_through: Pyro's ``RelaxedOneHotCategoricalStraightThrough``: hard
        one-hot samples in the forward pass, the relaxed gradient, and a ``log_prob`` of the
        relaxed sample behind them.
    """
    t = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    # unvalidated: a clamped float32 sample can miss the simplex's sum-to-one check by ~1e-6
    cls = (
        dist.RelaxedOneHotCategoricalStraightThrough
        if straight_through
        else RelaxedOneHotCategorical
    )
    return cls(t, logits=logits, validate_args=False)


def uniform_one_hot(
    ref: torch.Tensor,
    num_variables: int,
    num_classes: int,
    temperature: float | None = None,
    straight_through: bool = False,
):
    """The uniform prior over ``num_variables`` one-hot codes of ``num_classes``: event (L, K).

    :param temperature: ``None`` for the exact ``OneHotCategorical``, else its relaxation
        at this temperature (:func:`relaxed_one_hot`).
    """
    logits = ref.new_full((num_variables, num_classes), -math.log(num_classes))
    if temperature is None:
        return dist.OneHotCategorical(logits=logits).to_event(1)
    return relaxed_one_hot(logits, temperature, straight_through).to_event(1)
