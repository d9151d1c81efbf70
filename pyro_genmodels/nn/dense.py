"""Encoders and decoders for VAEs: an MLP default and a small conv option.

All of them accept any number of leading batch dimensions, e.g. the particle
dimension that :func:`pyro_genmodels.infer.log_marginal` adds: an encoder maps
``(..., C, H, W) -> (..., feature_dim)`` and a decoder maps
``(..., latent_dim) -> (..., out_channels, H, W)``.

Hidden layers are of one of two kinds (:data:`HIDDEN_LAYERS`): ``"relu"``, an affine map
and a ReLU, or ``"gated"``, the gated layer of Dauphin et al. (2017) that Tomczak & Welling
(2018) use in every VampPrior network: ``h = (W1 x + b1) * sigmoid(W2 x + b2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

HiddenLayer = Literal["relu", "gated"]
HIDDEN_LAYERS: tuple[str, ...] = ("relu", "gated")
WeightInit = Literal["torch", "he-normal"]
WEIGHT_INITS: tuple[str, ...] = ("torch", "he-normal")


def _check_layer(layer: str) -> None:
    if layer not in HIDDEN_LAYERS:
        raise ValueError(f"unknown hidden layer {layer!r}; valid: {', '.join(HIDDEN_LAYERS)}")


class GatedDense(nn.Module):
    """``h = (W1 x + b1) * sigmoid(W2 x + b2)``: a linear half gated by a sigmoid half.

    Both halves are one ``nn.Linear(in, 2 * out)`` (one matrix product instead of two)
    split by :func:`torch.nn.functional.glu`, which computes ``a * sigmoid(b)`` of the
    first and second halves. ``linear.weight[:out]`` is W1, ``linear.weight[out:]`` is W2.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.out_features = int(out_features)
        self.linear = nn.Linear(in_features, 2 * self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.glu(self.linear(x), dim=-1)  # (..., out)


class GatedConv2d(nn.Module):
    """The convolutional gated layer: one ``Conv2d`` (``ConvTranspose2d`` with
    ``transposed``) to ``2 * out`` channels, then ``a * sigmoid(b)`` over the channel halves."""

    def __init__(self, in_channels: int, out_channels: int, *args, transposed=False, **kwargs):
        super().__init__()
        kind = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv = kind(in_channels, 2 * out_channels, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.glu(self.conv(x), dim=-3)  # (B, out, H', W')


def dense(a: int, b: int, layer: str = "relu") -> list[nn.Module]:
    """One hidden layer ``a -> b`` of kind ``layer`` (see :data:`HIDDEN_LAYERS`), as the
    modules to put in an ``nn.Sequential`` (``[Linear, ReLU]``: the layout of older
    checkpoints)."""
    _check_layer(layer)
    if layer == "gated":
        return [GatedDense(a, b)]
    return [nn.Linear(a, b), nn.ReLU()]


def conv(a: int, b: int, layer: str, *args, transposed=False, **kwargs) -> list[nn.Module]:
    """One hidden ``Conv2d`` (or ``ConvTranspose2d``) layer ``a -> b`` channels of kind
    ``layer``."""
    _check_layer(layer)
    if layer == "gated":
        return [GatedConv2d(a, b, *args, transposed=transposed, **kwargs)]
    kind = nn.ConvTranspose2d if transposed else nn.Conv2d
    return [kind(a, b, *args, **kwargs), nn.ReLU()]


def mlp(sizes: Sequence[int], layer: str = "relu", final: bool = True) -> nn.Sequential:
    """Hidden layers of kind ``layer`` through ``sizes``; with ``final=False`` the last
    map is a plain ``nn.Linear`` (an output layer)."""
    pairs = list(zip(sizes[:-1], sizes[1:], strict=False))
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairs):
        last = i == len(pairs) - 1
        layers.extend([nn.Linear(a, b)] if last and not final else dense(a, b, layer))
    return nn.Sequential(*layers)


def he_normal_(module: nn.Module) -> nn.Module:
    """Re-draw the weights of every ``nn.Linear`` in ``module`` from N(0, 2 / fan_in)
    (He et al. 2015; the initialization of Tomczak & Welling's code); biases are kept."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return module


class MLPEncoder(nn.Module):
    """Flatten the image and apply an MLP.

    :param image_shape: ``(C, H, W)``.
    :param hidden_dims: widths of the hidden layers; the last is ``feature_dim``.
    :param layer: ``"relu"`` or ``"gated"`` hidden layers.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int] = (512, 256),
        layer: str = "relu",
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.feature_dim = int(hidden_dims[-1])
        self.net = mlp([math.prod(self.image_shape), *hidden_dims], layer)

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
    :param layer: ``"relu"`` or ``"gated"`` hidden layers (the output layer is linear).
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        out_channels: int,
        hidden_dims: Sequence[int] = (256, 512),
        layer: str = "relu",
    ):
        super().__init__()
        _, h, w = image_shape
        self.out_shape = (int(out_channels), int(h), int(w))
        sizes = [latent_dim, *hidden_dims, math.prod(self.out_shape)]
        self.net = mlp(sizes, layer, final=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], *self.out_shape)  # (..., P*C, H, W)


def _check_divisible(image_shape: Sequence[int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise ValueError(f"the conv network needs H and W divisible by 4, got {h}x{w}")


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions and a linear layer: ``(..., C, H, W) -> (..., feature_dim)``."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: int = 32,
        feature_dim: int = 256,
        layer: str = "relu",
    ):
        super().__init__()
        _check_divisible(image_shape)
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            *conv(c, channels, layer, 4, stride=2, padding=1),  # (B, ch, H/2, W/2)
            *conv(channels, 2 * channels, layer, 4, stride=2, padding=1),  # (B, 2ch, H/4, W/4)
            nn.Flatten(),
            *dense(2 * channels * (h // 4) * (w // 4), feature_dim, layer),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        h = self.net(x.reshape(-1, *self.image_shape))
        return h.reshape(*lead, self.feature_dim)


class ConvDecoder(nn.Module):
    """A linear layer and two stride-2 transposed convolutions: ``(..., D) -> (..., P*C, H, W)``."""

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        out_channels: int,
        channels: int = 32,
        layer: str = "relu",
    ):
        super().__init__()
        _check_divisible(image_shape)
        _, h, w = image_shape
        self.seed_shape = (2 * channels, h // 4, w // 4)
        self.out_shape = (int(out_channels), int(h), int(w))
        self.fc = nn.Sequential(*dense(latent_dim, math.prod(self.seed_shape), layer))
        self.net = nn.Sequential(
            # (B, ch, H/2, W/2)
            *conv(2 * channels, channels, layer, 4, stride=2, padding=1, transposed=True),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),  # (B, P*C, H, W)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.seed_shape)
        return self.net(h).reshape(*lead, *self.out_shape)


#: Gulrajani et al.'s (2017) MNIST encoder: (channels, stride) of its eight 3x3 convolutions
DEEP_CONV = ((32, 1), (32, 2), (32, 1), (64, 2), (64, 1), (64, 2), (64, 1), (64, 1))


def _halved(size: Sequence[int], times: int) -> tuple[int, int]:
    h, w = size
    for _ in range(times):
        h, w = (h + 1) // 2, (w + 1) // 2  # a 3x3 stride-2 conv with padding 1: ceil(n / 2)
    return h, w


class DeepConvEncoder(nn.Module):
    """The encoder of Gulrajani et al.'s MNIST PixelVAE, for any image size: eight 3x3
    convolutions (:data:`DEEP_CONV`; H -> ceil(H / 8)) and a linear layer:
    ``(..., C, H, W) -> (..., feature_dim)``."""

    def __init__(self, image_shape: Sequence[int], feature_dim: int = 256, layer: str = "relu"):
        super().__init__()
        self.image_shape, self.feature_dim = tuple(image_shape), feature_dim
        layers, channels = [], image_shape[0]
        for out, stride in DEEP_CONV:
            layers += conv(channels, out, layer, 3, stride=stride, padding=1)
            channels = out
        h, w = _halved(image_shape[1:], 3)
        self.net = nn.Sequential(
            *layers, nn.Flatten(), *dense(channels * h * w, feature_dim, layer)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        return self.net(x.reshape(-1, *self.image_shape)).reshape(*lead, self.feature_dim)


class DeepConvDecoder(nn.Module):
    """The mirror of :class:`DeepConvEncoder` (their ``Decoder_no_blind`` before its
    PixelCNN): a linear layer to 64 x ceil(H/8) x ceil(W/8), then 3x3 convolutions with a
    4x4 stride-2 transposed convolution in place of each stride, cropped to the encoder's
    sizes, and a 3x3 output convolution: ``(..., D) -> (..., P*C, H, W)``."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], out_channels: int,
                 layer: str = "relu"):  # fmt: skip
        super().__init__()
        _, h, w = image_shape
        self.sizes = [_halved((h, w), i) for i in range(3, -1, -1)]  # smallest first
        self.seed_shape = (DEEP_CONV[-1][0], *self.sizes[0])
        self.out_shape = (int(out_channels), int(h), int(w))
        self.fc = nn.Sequential(*dense(latent_dim, math.prod(self.seed_shape), layer))
        blocks, channels = [], self.seed_shape[0]
        for out, stride in reversed(DEEP_CONV[1:]):
            args = (4, 2, 1) if stride == 2 else (3, 1, 1)
            blocks.append(nn.Sequential(*conv(channels, out, layer, *args, transposed=stride == 2)))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        x = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.seed_shape)
        stage = 0
        for block in self.blocks:
            x = block(x)
            if x.shape[-2:] != self.sizes[stage]:  # after an upsampling: crop to the stage
                stage += 1
                x = x[..., : self.sizes[stage][0], : self.sizes[stage][1]]
        return self.out(x).reshape(*lead, *self.out_shape)


#: the convolutions of Burgess et al. (2018) and disentanglement_lib's ``conv_encoder``:
#: (out channels) of four 4x4 stride-2 layers, each halving H and W
CONV_4X4 = (32, 32, 64, 64)


class Conv4x4Encoder(nn.Module):
    """disentanglement_lib's convolutional encoder (Burgess et al. 2018; Locatello et al.
    2019): four 4x4 stride-2 convolutions of 32, 32, 64, 64 channels (H, W divisible by 16)
    and a linear layer to ``feature_dim`` (256): ``(..., C, H, W) -> (..., feature_dim)``."""

    def __init__(self, image_shape: Sequence[int], feature_dim: int = 256, layer: str = "relu"):
        super().__init__()
        _, h, w = image_shape
        if h % 16 or w % 16:
            raise ValueError(f"network 'conv-4x4' needs H and W divisible by 16, got {h}x{w}")
        self.image_shape, self.feature_dim = tuple(image_shape), feature_dim
        layers, channels = [], image_shape[0]
        for out in CONV_4X4:
            layers += conv(channels, out, layer, 4, stride=2, padding=1)
            channels = out
        self.net = nn.Sequential(
            *layers, nn.Flatten(), *dense(channels * (h // 16) * (w // 16), feature_dim, layer)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        return self.net(x.reshape(-1, *self.image_shape)).reshape(*lead, self.feature_dim)


class Conv4x4Decoder(nn.Module):
    """disentanglement_lib's deconvolutional decoder, the mirror of :class:`Conv4x4Encoder`:
    linear layers to 256 and to 64 x H/16 x W/16, then 4x4 stride-2 transposed convolutions
    of 64, 32, 32 channels and one to the likelihood's parameters:
    ``(..., D) -> (..., P*C, H, W)``."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], out_channels: int,
                 layer: str = "relu", hidden: int = 256):  # fmt: skip
        super().__init__()
        _, h, w = image_shape
        self.seed_shape = (CONV_4X4[-1], h // 16, w // 16)
        self.out_shape = (int(out_channels), int(h), int(w))
        layers, channels = [], CONV_4X4[-1]
        for out in reversed(CONV_4X4[:-1]):
            layers += conv(channels, out, layer, 4, stride=2, padding=1, transposed=True)
            channels = out
        self.net = nn.Sequential(
            *dense(latent_dim, hidden, layer), *dense(hidden, math.prod(self.seed_shape), layer),
            nn.Unflatten(-1, self.seed_shape), *layers,
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        return self.net(z.reshape(-1, z.shape[-1])).reshape(*lead, *self.out_shape)


NETWORKS = ("mlp", "conv", "conv-deep", "conv-4x4")


def make_encoder_decoder(
    network: str,
    image_shape: Sequence[int],
    latent_dim: int,
    out_channels: int,
    hidden_dims: Sequence[int],
    layer: str = "relu",
) -> tuple[nn.Module, nn.Module]:
    """Build a matching (encoder, decoder) pair by name: ``"mlp"`` or ``"conv"``.

    For ``"mlp"`` the encoder uses ``hidden_dims`` and the decoder their reverse;
    for ``"conv"`` (two strided convolutions, H and W divisible by 4), ``"conv-deep"``
    (:class:`DeepConvEncoder`, any size) and ``"conv-4x4"`` (:class:`Conv4x4Encoder`,
    disentanglement_lib's, H and W divisible by 16) the last of ``hidden_dims`` is the
    encoder's feature size.
    ``layer``: the kind of every hidden layer, ``"relu"`` or ``"gated"``.
    """
    _check_layer(layer)
    hidden_dims = tuple(int(h) for h in hidden_dims)
    if not hidden_dims or min(hidden_dims) < 1:
        raise ValueError(f"hidden_dims must be positive integers, got {hidden_dims}")
    if network == "mlp":
        return (
            MLPEncoder(image_shape, hidden_dims, layer),
            MLPDecoder(latent_dim, image_shape, out_channels, hidden_dims[::-1], layer),
        )
    if network == "conv":
        return (
            ConvEncoder(image_shape, feature_dim=hidden_dims[-1], layer=layer),
            ConvDecoder(latent_dim, image_shape, out_channels, layer=layer),
        )
    if network == "conv-deep":
        return (
            DeepConvEncoder(image_shape, feature_dim=hidden_dims[-1], layer=layer),
            DeepConvDecoder(latent_dim, image_shape, out_channels, layer=layer),
        )
    if network == "conv-4x4":
        return (
            Conv4x4Encoder(image_shape, feature_dim=hidden_dims[-1], layer=layer),
            Conv4x4Decoder(latent_dim, image_shape, out_channels, layer=layer),
        )
    raise ValueError(f"unknown network {network!r}; valid: {', '.join(NETWORKS)}")
