"""Likelihood objects: decoder outputs -> a distribution over whole images.

A likelihood is an object, not a string switch: it knows how many decoder
channels it consumes per image channel, which data representation it models
(``data_format``), how to check data before observing it, and its mean image.
Every distribution it returns has ``event_shape == (C, H, W)``, so one
``pyro.sample("x", ..., obs=x)`` inside ``pyro.plate("data", N)`` scores a whole
image per example.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from . import logistic_mixture
from .logistic_mixture import NUM_LEVELS


class Likelihood(nn.Module):
    """Base class. Subclasses set :attr:`name`, :attr:`data_format`, :attr:`num_params`.

    :param image_shape: ``(C, H, W)`` of the modelled images.
    """

    name: str = ""
    #: which representation of the images this likelihood scores
    data_format: str = ""
    #: decoder output channels per image channel
    num_params: int = 1
    #: the values of black and white in this representation (for figures)
    value_range: tuple[float, float] = (0.0, 1.0)
    #: autoregressive models: parameters of channel c may see channels < c of the same
    #: pixel (channel-aware masks); False when a pixel's channels are modelled jointly
    channel_aware: bool = True

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)

    @property
    def param_channels(self) -> int:
        """Channels a decoder must output: ``num_params * C``."""
        return self.num_params * self.image_shape[0]

    @property
    def num_dims(self) -> int:
        """Number of scalar dimensions of one image, ``C * H * W``."""
        return math.prod(self.image_shape)

    def nll_offset(self) -> float:
        """Nats per image added to ``-log p(x)`` to report a discrete NLL (0 if discrete)."""
        return 0.0

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """Data rescaled to about [-1, 1] for a network that reads it (autoregressive models)."""
        return x

    def is_valid(self, x: torch.Tensor) -> bool:
        """Whether every value of ``x`` is in the support (False for NaN)."""
        raise NotImplementedError

    def invalid_message(self, x: torch.Tensor) -> str:
        """Why ``x`` is not valid data for this likelihood."""
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`ValueError` unless ``x`` is valid data for this likelihood."""
        if not self.is_valid(x):
            if not bool(torch.isfinite(x).all()):
                raise ValueError("images contain NaN or infinite values")
            raise ValueError(self.invalid_message(x))

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """The image distribution for decoder output ``params`` of shape ``(..., P*C, H, W)``."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean image ``(..., C, H, W)`` for decoder output ``params``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}"


class _BernoulliLogProb(torch.autograd.Function):
    """``value * logits - softplus(logits)`` per element, gradient ``value - sigmoid(logits)``
    (and ``logits`` for ``value``, as Pyro's), for tensors of one shape.

    Written out because torch's ways are slow on a CPU: ``softplus`` and
    ``binary_cross_entropy_with_logits`` go through ``log1p``, which this CPU build does not
    vectorize (8 ns an element against 0.5 for ``exp``), and the composed expression makes
    about ten passes over the logits forward and five backward. Here ``softplus(a) =
    relu(a) + log(1 + exp(-|a|))`` (``log(1 + e)`` with ``e <= 1`` is within one rounding of
    ``log1p(e)``: absolute error below 2^-24 in float32), and the gradient takes one
    ``sigmoid`` and two in-place passes: forward and backward on 10 x 100 x 784 logits take
    0.42 of the time of torch's (``benchmarks/bernoulli_logprob.py``).
    """

    @staticmethod
    def forward(ctx, logits, value):
        ctx.save_for_backward(logits, value)
        log_term = logits.abs().neg_().exp_().add_(1).log_()
        return torch.addcmul(logits.clamp_min(0).neg_().sub_(log_term), value, logits)

    @staticmethod
    def backward(ctx, grad):
        logits, value = ctx.saved_tensors
        grad_value = grad * logits if ctx.needs_input_grad[1] else None
        grad_logits = torch.sigmoid(logits).neg_().add_(value).mul_(grad)
        return grad_logits, grad_value


class BernoulliLogits(dist.Bernoulli):
    """Pyro's Bernoulli with ``log_prob = value * logits - softplus(logits)`` in a few passes
    over the logits, and in float32 when the logits are in a lower precision (under autocast:
    a sum of 784 bfloat16 terms would be off by about a nat)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        dtype = torch.promote_types(logits.dtype, value.dtype)
        logits, value = torch.broadcast_tensors(logits.to(dtype), value.to(dtype))
        return _BernoulliLogProb.apply(logits, value)


def _value_range(x: torch.Tensor) -> str:
    return f"[{x.min().item():.4g}, {x.max().item():.4g}]"


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels for binary images, parameterized by logits."""

    name = "bernoulli"
    data_format = "binary"
    num_params = 1

    def is_valid(self, x: torch.Tensor) -> bool:
        return bool(((x == 0) | (x == 1)).all())

    def invalid_message(self, x: torch.Tensor) -> str:
        return (
            "the bernoulli likelihood needs binary images with values in {0, 1}; got values "
            f"in {_value_range(x)}. Binarize grey levels first "
            "(pyro_genmodels.data.binarize, or --binarization static|dynamic)."
        )

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliLogits(logits=params, validate_args=False).to_event(3)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class GaussianLikelihood(Likelihood):
    """Independent Gaussian pixels for continuous images in [0, 1].

    The data are dequantized grey levels, ``x = (level + u) / 256`` with
    ``u ~ U[0, 1)``, so :meth:`nll_offset` (``C*H*W * log 256``) turns the density
    into an upper bound on the discrete NLL in nats, comparable across models.

    :param scale: a fixed standard deviation, or ``None`` for a learned per-pixel scale.
    """

    name = "gaussian"
    data_format = "dequantized"
    num_params = 1

    def __init__(self, image_shape: tuple[int, int, int], scale: float | None = None):
        super().__init__(image_shape)
        if scale is None:
            self.log_scale = nn.Parameter(torch.full(self.image_shape, math.log(0.1)))
            self.fixed_scale = None
        else:
            if not scale > 0:
                raise ValueError(f"gaussian scale must be positive, got {scale}")
            self.log_scale = None
            self.fixed_scale = float(scale)

    def nll_offset(self) -> float:
        return self.num_dims * math.log(256.0)

    def is_valid(self, x: torch.Tensor) -> bool:
        return bool(((x >= 0) & (x <= 1)).all())

    def invalid_message(self, x: torch.Tensor) -> str:
        return (
            "the gaussian likelihood needs continuous images in [0, 1] (dequantized grey "
            f"levels); got values in {_value_range(x)}"
        )

    def scale(self, params: torch.Tensor) -> torch.Tensor:
        if self.fixed_scale is not None:
            return params.new_tensor(self.fixed_scale)
        return self.log_scale.clamp(min=-7.0).exp()

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, self.scale(params), validate_args=False).to_event(3)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def extra_repr(self) -> str:
        scale = "learned" if self.fixed_scale is None else self.fixed_scale
        return f"image_shape={self.image_shape}, scale={scale}"


class _LevelsLikelihood(Likelihood):
    """Shared by the 256-level likelihoods: integer grey levels 0..255 stored as float."""

    data_format = "levels"
    value_range = (0.0, 255.0)

    def is_valid(self, x: torch.Tensor) -> bool:
        return bool(((x >= 0) & (x <= 255) & (x == torch.round(x))).all())

    def invalid_message(self, x: torch.Tensor) -> str:
        return (
            f"the {self.name} likelihood needs integer grey levels 0..255 (stored as float); got "
            f"values in {_value_range(x)}" + (" (non-integer)" if x.max() <= 255 else "")
        )

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        return x / 127.5 - 1


class CategoricalLikelihood(_LevelsLikelihood):
    """A 256-way softmax per channel and pixel; parameters laid out channel by channel
    (``C`` blocks of 256 logits), so channel c's block can be masked to see channels < c."""

    name = "categorical"
    num_params = NUM_LEVELS

    def _logits(self, params: torch.Tensor) -> torch.Tensor:
        c = self.image_shape[0]
        lead, (h, w) = params.shape[:-3], params.shape[-2:]
        return params.reshape(*lead, c, NUM_LEVELS, h, w).movedim(-3, -1)  # (..., C, H, W, 256)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Categorical(logits=self._logits(params), validate_args=False).to_event(3)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self._logits(params), -1)
        return (probs * torch.arange(NUM_LEVELS, dtype=params.dtype, device=params.device)).sum(-1)


class LogisticMixtureLikelihood(_LevelsLikelihood):
    """The PixelCNN++ discretized logistic mixture (:mod:`.logistic_mixture`); one mixture
    index per pixel shared by its channels, coupled linearly, so not channel-masked."""

    name = "logistic-mixture"
    channel_aware = False

    def __init__(self, image_shape: tuple[int, int, int], num_mixtures: int = 5):
        super().__init__(image_shape)
        if int(num_mixtures) < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}")
        self.num_mixtures = int(num_mixtures)

    @property
    def param_channels(self) -> int:
        return logistic_mixture.num_params(self.image_shape[0], self.num_mixtures)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return logistic_mixture.from_params(params, self.image_shape[0], self.num_mixtures)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        d = self(params)
        weights = torch.softmax(d.logits, -3).unsqueeze(-3)  # (..., M, 1, H, W)
        return ((d.locs.clamp(-1, 1) * weights).sum(-4) + 1) * 127.5

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, num_mixtures={self.num_mixtures}"


LIKELIHOODS: dict[str, type[Likelihood]] = {
    BernoulliLikelihood.name: BernoulliLikelihood,
    GaussianLikelihood.name: GaussianLikelihood,
    CategoricalLikelihood.name: CategoricalLikelihood,
    LogisticMixtureLikelihood.name: LogisticMixtureLikelihood,
}


def get_likelihood(name: str, image_shape: tuple[int, int, int], **kwargs) -> Likelihood:
    """Build a likelihood by name (see :data:`LIKELIHOODS`); ``kwargs`` go to its class."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; valid: {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name](image_shape, **kwargs)
