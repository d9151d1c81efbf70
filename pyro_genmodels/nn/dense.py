"""Encoders and decoders for VAEs: an MLP default and a small conv option.

All of them accept any number of leading batch dimensions, e.g. the particle
dimension that :func:`pyro_genmodels.infer.log_marginal` adds: an encoder maps
``(..., C, H, W) -> (..., feature_dim)`` and a decoder maps
``(..., latent_dim) -> (..., out_channels, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, final: bool = True):
    """Linear layers with ``activation`` between them (and after the last if ``final``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if final or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Flatten the image and apply an MLP.

    :param image_shape: ``(C, H, W)``.
    :param hidden_dims: widths of the hidden layers; the last is ``feature_dim``.
    """

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int] = (512, 256)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.feature_dim = int(hidden_dims[-1])
        self.net = mlp([math.prod(self.image_shape), *hidden_dims])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: -len(self.image_shape)]
        h = self.net(x.reshape(*lead, -1))  # (..., C*H*W) -> (..., F)
        return h


class MLPDecoder(nn.Module):
    """An MLP from ``z`` to ``out_channels`` maps of size ``H x W``.

    :param latent_dim: size of ``z``.
    :param image_shape: ``(C, H, W)`` of the images (only ``H, W`` are used).
    :param out_channels: channels of the output, e.g. ``likelihood.param_channels``.
    :param hidden_dims: widths of the hidden layers, from ``z`` outwards.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        out_channels: int,
        hidden_dims: Sequence[int] = (256, 512),
    ):
        super().__init__()
        _, h, w = image_shape
        self.out_shape = (int(out_channels), int(h), int(w))
        self.net = mlp([latent_dim, *hidden_dims, math.prod(self.out_shape)], final=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], *self.out_shape)  # (..., P*C, H, W)


def _check_divisible(image_shape: Sequence[int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise ValueError(f"the conv network needs H and W divisible by 4, got {h}x{w}")


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions and a linear layer: ``(..., C, H, W) -> (..., feature_dim)``."""

    def __init__(self, image_shape: Sequence[int], channels: int = 32, feature_dim: int = 256):
        super().__init__()
        _check_divisible(image_shape)
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 4, stride=2, padding=1),  # (B, ch, H/2, W/2)
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),  # (B, 2ch, H/4, W/4)
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * (h // 4) * (w // 4), feature_dim),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        h = self.net(x.reshape(-1, *self.image_shape))
        return h.reshape(*lead, self.feature_dim)


class ConvDecoder(nn.Module):
    """A linear layer and two stride-2 transposed convolutions: ``(..., D) -> (..., P*C, H, W)``."""

    def __init__(
        self, latent_dim: int, image_shape: Sequence[int], out_channels: int, channels: int = 32
    ):
        super().__init__()
        _check_divisible(image_shape)
        _, h, w = image_shape
        self.seed_shape = (2 * channels, h // 4, w // 4)
        self.out_shape = (int(out_channels), int(h), int(w))
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.seed_shape)), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # (B, ch, H/2, W/2)
            nn.ReLU(),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),  # (B, P*C, H, W)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.seed_shape)
        return self.net(h).reshape(*lead, *self.out_shape)


NETWORKS = ("mlp", "conv")


def make_encoder_decoder(
    network: str,
    image_shape: Sequence[int],
    latent_dim: int,
    out_channels: int,
    hidden_dims: Sequence[int],
) -> tuple[nn.Module, nn.Module]:
    """Build a matching (encoder, decoder) pair by name: ``"mlp"`` or ``"conv"``.

    For ``"mlp"`` the encoder uses ``hidden_dims`` and the decoder their reverse;
    for ``"conv"`` the last of ``hidden_dims`` is the encoder's feature size.
    """
    hidden_dims = tuple(int(h) for h in hidden_dims)
    if not hidden_dims or min(hidden_dims) < 1:
        raise ValueError(f"hidden_dims must be positive integers, got {hidden_dims}")
    if network == "mlp":
        return (
            MLPEncoder(image_shape, hidden_dims),
            MLPDecoder(latent_dim, image_shape, out_channels, hidden_dims[::-1]),
        )
    if network == "conv":
        return (
            ConvEncoder(image_shape, feature_dim=hidden_dims[-1]),
            ConvDecoder(latent_dim, image_shape, out_channels),
        )
    raise ValueError(f"unknown network {network!r}; valid: {', '.join(NETWORKS)}")
