"""Autoregressive pixel models as Pyro programs with no latent.

``model(x)`` observes x under an :class:`~pyro_genmodels.distributions.autoregressive.
AutoregressiveImage` inside ``pyro.plate("data", N)``; ``guide(x)`` is empty;
``log_prob(x)`` is exact, ``(N,)`` nats; ``sample(n)`` runs the sequential loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from pyro.nn import pyro_method

from ..distributions.autoregressive import AutoregressiveImage
from ..nn.pixelcnn import GatedPixelCNNNet, PixelCNNNet
from ..nn.pixelrnn import PixelRNNNet
from ..registry import register_model
from .base import ImageModel, likelihood_from_config

PIXEL_LIKELIHOODS = ("bernoulli", "categorical", "logistic-mixture")


@dataclass
class PixelConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    likelihood: str = "bernoulli"  # "bernoulli" | "categorical" (256-way) | "logistic-mixture"
    hidden_channels: int = 32  # feature maps per layer (a multiple of C for channel-aware RGB)
    num_layers: int = 5  # residual blocks / gated layers / LSTM layers
    num_mixtures: int = 5  # logistic-mixture only: mixture components per pixel

    def __post_init__(self):
        if self.likelihood not in PIXEL_LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r} for a pixel model; "
                f"valid: {', '.join(PIXEL_LIKELIHOODS)}"
            )
        for key in ("hidden_channels", "num_layers", "num_mixtures"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        self.image_shape = tuple(self.image_shape)


@dataclass
class GatedPixelCNNConfig(PixelConfig):
    kernel_size: int = 3  # gated layers after the first (which is 7 wide)
    context_dim: int = 0  # size of a conditioning vector h (class one-hot, latent), 0: none
    context_channels: int = 0  # channels of a conditioning map (H x W), 0: none


class PixelModel(ImageModel):
    """Shared by the autoregressive models: likelihood, program, exact log p(x), sampling."""

    def __init__(self, config: PixelConfig):
        super().__init__(config)
        self.likelihood = likelihood_from_config(config, self.image_shape)
        channels = self.image_shape[0]
        groups = channels if self.likelihood.channel_aware else 1
        self.net = self.build_net(channels, self.likelihood.param_channels, groups)

    def build_net(self, in_channels: int, out_channels: int, groups: int) -> torch.nn.Module:
        raise NotImplementedError

    def distribution(self, context=None, context_map=None) -> AutoregressiveImage:
        """p(x | context) over whole images."""
        return AutoregressiveImage(
            self.net, self.likelihood, self.image_shape, context, context_map
        )

    def params(self, x: torch.Tensor, context=None, context_map=None) -> torch.Tensor:
        """The network's raw output ``(N, P, H, W)`` for images x (for inspection and tests)."""
        return self.net(self.likelihood.net_input(x), context, context_map)

    @pyro_method
    def model(self, x: torch.Tensor, context=None) -> None:
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", self.distribution(context), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, context=None) -> None:
        """Empty: the model has no latent variables."""

    def log_prob(self, x: torch.Tensor, context=None) -> torch.Tensor:
        """Exact log p(x) per image, ``(N,)`` nats."""
        return self.distribution(context).log_prob(self.check_input(x))

    @torch.no_grad()
    def sample(self, num_samples: int, context=None, cached: bool = True) -> torch.Tensor:
        """Draw ``num_samples`` images pixel by pixel, ``(num_samples, C, H, W)``.

        :param cached: the fast sampler (default) or, with ``False``, the naive reference
            loop; with the same seed both return the same images.
        """
        d = self.distribution(context)
        return d.sample((int(num_samples),) if context is None else (), cached=cached)


@register_model("pixelcnn", PixelConfig)
class PixelCNN(PixelModel):
    """PixelCNN: masked convolutions (7x7 mask A, residual 3x3 mask-B blocks)."""

    def build_net(self, in_channels, out_channels, groups):
        c = self.config
        return PixelCNNNet(in_channels, out_channels, c.hidden_channels, c.num_layers, groups)


@register_model("gated-pixelcnn", GatedPixelCNNConfig)
class GatedPixelCNN(PixelModel):
    """Gated PixelCNN: vertical and horizontal stacks (no blind spot), gated units,
    optional conditioning on a vector (``context_dim``) and a map (``context_channels``)."""

    def build_net(self, in_channels, out_channels, groups):
        c = self.config
        return GatedPixelCNNNet(
            in_channels, out_channels, c.hidden_channels, c.num_layers, groups,
            kernel_size=c.kernel_size, context_dim=c.context_dim,
            context_channels=c.context_channels,
        )  # fmt: skip


@register_model("pixelrnn", PixelConfig)
class RowLSTMPixelRNN(PixelModel):
    """PixelRNN with Row LSTM layers."""

    def build_net(self, in_channels, out_channels, groups):
        c = self.config
        return PixelRNNNet(
            in_channels, out_channels, c.hidden_channels, c.num_layers, groups, "row"
        )


@register_model("diagonal-bilstm", PixelConfig)
class DiagonalBiLSTMPixelRNN(PixelModel):
    """PixelRNN with Diagonal BiLSTM layers."""

    def build_net(self, in_channels, out_channels, groups):
        c = self.config
        return PixelRNNNet(
            in_channels, out_channels, c.hidden_channels, c.num_layers, groups, "diagonal"
        )
