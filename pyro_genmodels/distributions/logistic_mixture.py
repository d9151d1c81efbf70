r"""The discretized logistic mixture of PixelCNN++ (Salimans et al. 2017).

Grey levels ``k = 0..255`` sit at ``x_k = 2k/255 - 1`` in [-1, 1]; level k
takes the logistic mass of ``[x_k - 1/255, x_k + 1/255]``, and the edge levels 0
and 255 take the tails below and above. Per pixel, one mixture index is shared
by all channels; within a pixel the channel means are coupled linearly to the
earlier channels' values (G on R; B on R and G) through ``coeffs`` (squashed by
tanh), so RGB is modelled jointly without channel masks.

Unlike the reference implementation, interior bins use an exact, stable form of
``log(sigmoid(a) - sigmoid(b))`` rather than switching to the density at the bin
centre when the difference underflows, so the 256 probabilities sum to one.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

NUM_LEVELS = 256
MIN_LOG_SCALE = -7.0


def _coupled_means(locs, coeffs, x):
    """``locs`` ``(..., M, C, H, W)`` plus the linear coupling to earlier channels of ``x``.

    :param coeffs: ``(..., M, C(C-1)/2, H, W)``, already squashed to (-1, 1), ordered
        (1,0), (2,0), (2,1), ...: channel c depends on channels 0..c-1.
    :param x: ``(..., 1, C, H, W)`` values in [-1, 1].
    """
    c_total = locs.shape[-3]
    means = [locs[..., 0, :, :]]
    k = 0
    for c in range(1, c_total):
        mean = locs[..., c, :, :]
        for prev in range(c):
            mean = mean + coeffs[..., k, :, :] * x[..., prev, :, :]
            k += 1
        means.append(mean)
    return torch.stack(means, -3)


class DiscretizedLogisticMixture(dist.TorchDistribution):
    """A mixture of ``M`` discretized logistics over images of grey levels 0..255.

    :param logits: mixture weights, ``(..., M, H, W)``.
    :param locs: component means in [-1, 1] units, ``(..., M, C, H, W)``.
    :param log_scales: component log-scales, ``(..., M, C, H, W)`` (clamped at -7).
    :param coeffs: channel coupling, ``(..., M, C(C-1)/2, H, W)`` (tanh applied here);
        an empty dim for one channel.

    ``event_shape == (C, H, W)``; ``batch_shape`` is the leading dims.
    """

    arg_constraints = {
        "logits": constraints.real,
        "locs": constraints.real,
        "log_scales": constraints.real,
        "coeffs": constraints.real,
    }
    support = constraints.integer_interval(0, NUM_LEVELS - 1)
    has_rsample = False

    def __init__(self, logits, locs, log_scales, coeffs, validate_args=None):
        c = locs.shape[-3]
        if coeffs.shape[-3] != c * (c - 1) // 2:
            raise ValueError(f"{c} channels need {c * (c - 1) // 2} coupling coefficients")
        self.logits, self.locs = logits, locs
        self.log_scales = log_scales.clamp(min=MIN_LOG_SCALE)
        self.coeffs = coeffs
        batch_shape = logits.shape[:-3]
        super().__init__(batch_shape, locs.shape[-3:], validate_args=validate_args)

    @property
    def num_mixtures(self) -> int:
        return self.logits.shape[-3]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("logits", "locs", "log_scales", "coeffs"):
            value = getattr(self, name)
            setattr(new, name, value.expand(batch_shape + value.shape[len(self.batch_shape) :]))
        super(DiscretizedLogisticMixture, new).__init__(batch_shape, self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        x = (value / 127.5 - 1.0).unsqueeze(-4)  # (..., 1, C, H, W) in [-1, 1]
        means = _coupled_means(self.locs, torch.tanh(self.coeffs), x)
        centered = x - means
        inv_scale = torch.exp(-self.log_scales)
        plus_in = inv_scale * (centered + 1.0 / 255)
        min_in = inv_scale * (centered - 1.0 / 255)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid: level 0 takes the lower tail
        log_one_minus_cdf_min = -F.softplus(min_in)  # level 255 takes the upper tail
        # log(sigmoid(a) - sigmoid(b)), exactly and stably in both tails (a - b = 2 / (255 s)):
        # sigmoid(a) - sigmoid(b) = e^b (e^(a-b) - 1) / ((1 + e^a) (1 + e^b))
        interior = (
            min_in
            + torch.log(torch.expm1(plus_in - min_in))
            - F.softplus(plus_in)
            - F.softplus(min_in)
        )
        log_probs = torch.where(
            x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, interior)
        )  # (..., M, C, H, W)
        per_mixture = log_probs.sum(-3) + torch.log_softmax(self.logits, -3)  # (..., M, H, W)
        return torch.logsumexp(per_mixture, -3).sum((-1, -2))

    def sample(self, sample_shape=torch.Size()):  # noqa: B008 - torch's signature
        shape = self._extended_shape(sample_shape)  # (..., C, H, W)
        with torch.no_grad():
            lead = shape[:-3]
            logits = self.logits.expand(lead + self.logits.shape[-3:])
            pick = dist.Categorical(logits=logits.movedim(-3, -1)).sample()  # (..., H, W)
            one_hot = F.one_hot(pick, self.num_mixtures).movedim(-1, -3).to(self.locs.dtype)
            sel = one_hot.unsqueeze(-3)  # (..., M, 1, H, W)

            def choose(t):
                return (t.expand(lead + t.shape[-4:]) * sel).sum(-4)  # (..., C', H, W)

            locs, log_scales, coeffs = choose(self.locs), choose(self.log_scales), None
            coeffs = torch.tanh(choose(self.coeffs)) if self.coeffs.shape[-3] else None
            u = torch.rand(shape, dtype=locs.dtype, device=locs.device).clamp(1e-5, 1 - 1e-5)
            noise = torch.log(u) - torch.log1p(-u)  # standard logistic
            levels = torch.zeros(shape, dtype=locs.dtype, device=locs.device)
            values = torch.zeros(shape, dtype=locs.dtype, device=locs.device)
            k = 0
            for c in range(shape[-3]):
                mean = locs[..., c, :, :]
                for prev in range(c):  # couple to the *quantized* earlier channels
                    mean = mean + coeffs[..., k, :, :] * values[..., prev, :, :]
                    k += 1
                x = (mean + torch.exp(log_scales[..., c, :, :]) * noise[..., c, :, :]).clamp(-1, 1)
                levels[..., c, :, :] = torch.round((x + 1) * 127.5)
                values[..., c, :, :] = levels[..., c, :, :] / 127.5 - 1
            return levels


def num_params(num_channels: int, num_mixtures: int) -> int:
    """Network outputs per pixel: M logits, M*C locs, M*C log-scales, M*C(C-1)/2 coeffs."""
    c = num_channels
    return num_mixtures * (1 + 2 * c + c * (c - 1) // 2)


def from_params(params: torch.Tensor, num_channels: int, num_mixtures: int):
    """Split a network output ``(..., P, H, W)`` into a :class:`DiscretizedLogisticMixture`."""
    m, c = num_mixtures, num_channels
    lead, (h, w) = params.shape[:-3], params.shape[-2:]
    n_coeffs = c * (c - 1) // 2
    logits, locs, log_scales, coeffs = params.split([m, m * c, m * c, m * n_coeffs], dim=-3)
    return DiscretizedLogisticMixture(
        logits,
        locs.reshape(*lead, m, c, h, w),
        log_scales.reshape(*lead, m, c, h, w),
        coeffs.reshape(*lead, m, n_coeffs, h, w),
        validate_args=False,
    )
