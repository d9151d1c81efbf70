"""Categorical codes trained with the relaxed one-hot (Gumbel-softmax) estimator.

:class:`GumbelSoftmaxCategorical` is a one-hot categorical whose reparameterized
sample is relaxed (``softmax((logits + g) / temperature)``, optionally
straight-through) **only inside** :func:`relaxed_sampling`, the context the
trainer's SVI step opens. Everywhere else (``log_marginal``, ``evaluate``,
``sample``) it draws exact hard one-hot samples (the Gumbel-max trick) and
``log_prob`` is the exact categorical log-probability, so importance weights are
valid for the discrete model.
"""

from __future__ import annotations

import contextlib
import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.distributions.kl import register_kl

_RELAXED = [False]


@contextlib.contextmanager
def relaxed_sampling(enabled: bool = True):
    """Within this context, :class:`GumbelSoftmaxCategorical` samples are relaxed."""
    old, _RELAXED[0] = _RELAXED[0], enabled
    try:
        yield
    finally:
        _RELAXED[0] = old


def is_relaxed() -> bool:
    """Whether :func:`relaxed_sampling` is active."""
    return _RELAXED[0]


class GumbelSoftmaxCategorical(dist.TorchDistribution):
    """One-hot categorical over the last dim of ``logits`` ``(..., K)``; event_shape ``(K,)``.

    :param logits: unnormalized log-probabilities.
    :param temperature: of the relaxation (used only inside :func:`relaxed_sampling`).
    :param straight_through: relaxed samples are hard one-hot in the forward pass,
        with the relaxed gradient.
    """

    arg_constraints = {"logits": constraints.real_vector, "temperature": constraints.positive}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, logits, temperature=0.5, straight_through=False, validate_args=None):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        self.straight_through = bool(straight_through)
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GumbelSoftmaxCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.temperature = self.temperature
        new.straight_through = self.straight_through
        super(GumbelSoftmaxCategorical, new).__init__(batch_shape, self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-12, max=1 - 1e-7)))
        scores = self.logits.expand(shape) + gumbel
        hard = torch.nn.functional.one_hot(scores.argmax(-1), shape[-1]).to(scores.dtype)
        if not is_relaxed():
            return hard  # an exact categorical sample (Gumbel-max)
        soft = torch.softmax(scores / self.temperature, -1)
        return hard - soft.detach() + soft if self.straight_through else soft

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        """Exact log-probability of one-hot values (a cross-entropy for relaxed ones)."""
        if self._validate_args:
            self._validate_sample(value)
        return (value * self.logits).sum(-1)

    def entropy(self):
        return -(self.probs * self.logits).sum(-1)


@register_kl(GumbelSoftmaxCategorical, dist.OneHotCategorical)
def _kl_gumbel_onehot(q, p):
    return (q.probs * (q.logits - p.logits)).sum(-1)


def uniform_one_hot(ref: torch.Tensor, num_variables: int, num_classes: int):
    """The uniform prior over ``num_variables`` one-hot codes of ``num_classes``: event (L, K).

    Unvalidated so that relaxed samples can be scored during training (their
    log-probability under the uniform prior is the constant ``-L log K``).
    """
    logits = ref.new_full((num_variables, num_classes), -math.log(num_classes))
    return dist.OneHotCategorical(logits=logits, validate_args=False).to_event(1)
