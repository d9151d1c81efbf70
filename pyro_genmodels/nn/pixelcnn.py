"""PixelCNN and Gated PixelCNN networks: image -> parameters of every pixel conditional.

Both map ``(B, C, H, W)`` inputs (rescaled to about [-1, 1]) to ``(B, P, H, W)``
outputs where the output at pixel i depends only on input pixels before i (see
:mod:`.masked`). No normalization layers: batch statistics would leak the future.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .masked import MaskedConv2d, channel_groups


def declare_wiring(net, in_channels, out_channels, groups, context_dim=0, context_channels=0):
    """Set the attributes a causal network declares for
    :class:`~pyro_genmodels.distributions.AutoregressiveImage` to check its wiring against:
    image channels in, parameter channels out, mask groups (C for channel-aware masks, 1
    when a pixel's channels are modelled jointly), and the context sizes it expects."""
    net.in_channels, net.out_channels, net.groups = in_channels, out_channels, groups
    net.context_dim, net.context_channels = context_dim, context_channels


def _check_channels(hidden: int, groups: int) -> None:
    if hidden < 1 or hidden % groups:
        raise ValueError(
            f"hidden_channels must be a positive multiple of the {groups} channel groups, "
            f"got {hidden}"
        )


class _Head(nn.Sequential):
    """ReLU, 1x1 mask-B conv, ReLU, 1x1 mask-B conv to the likelihood's parameters."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, groups: int):
        super().__init__(
            nn.ReLU(),
            MaskedConv2d(in_channels, hidden, 1, "B", groups),
            nn.ReLU(),
            MaskedConv2d(hidden, out_channels, 1, "B", groups),
        )


class ResidualBlock(nn.Module):
    """The PixelCNN residual block: 1x1 (2h -> h), masked k x k (h -> h), 1x1 (h -> 2h)."""

    def __init__(self, hidden: int, groups: int, kernel_size: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(2 * hidden, hidden, 1, "B", groups),
            nn.ReLU(),
            MaskedConv2d(hidden, hidden, kernel_size, "B", groups),
            nn.ReLU(),
            MaskedConv2d(hidden, 2 * hidden, 1, "B", groups),
        )

    def forward(self, x):
        return x + self.net(x)


class PixelCNNNet(nn.Module):
    """PixelCNN (van den Oord et al. 2016): a 7x7 mask-A conv, ``num_layers`` residual
    blocks of masked 3x3 convs, two 1x1 output layers. Has the blind spot of stacked
    masked convolutions (above right of each pixel)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_layers: int = 7,
        groups: int = 1,
        kernel_size: int = 3,
        first_kernel: int = 7,
    ):
        super().__init__()
        _check_channels(hidden_channels, groups)
        h = hidden_channels
        self.input = MaskedConv2d(in_channels, 2 * h, first_kernel, "A", groups)
        self.blocks = nn.Sequential(
            *(ResidualBlock(h, groups, kernel_size) for _ in range(num_layers))
        )
        self.head = _Head(2 * h, 2 * h, out_channels, groups)
        declare_wiring(self, in_channels, out_channels, groups)

    def forward(self, x, context=None, context_map=None):
        if context is not None or context_map is not None:
            raise ValueError("PixelCNN is unconditional; use gated-pixelcnn for a context")
        return self.head(self.blocks(self.input(x)))

    def cached_sampler(self, ref, batch, image_shape, context=None, context_map=None):
        """One position per layer and sampling step (:mod:`.cached`)."""
        from .cached import PixelCNNSampler

        if context is not None or context_map is not None:
            raise ValueError("PixelCNN is unconditional; use gated-pixelcnn for a context")
        return PixelCNNSampler(self, ref, batch, image_shape)


def _gate(pre: torch.Tensor) -> torch.Tensor:
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of the Gated PixelCNN (van den Oord et al. 2016, Conditional Image
    Generation with PixelCNN Decoders).

    The vertical stack at row r sees the rows above only (a (k//2+1) x k conv, shifted
    down one row in the first layer); the horizontal stack at (r, c) sees row r left of
    c through a masked 1 x k conv, plus the vertical stack of its row (information flows
    vertical -> horizontal only). Units are gated, tanh(W_f x + V_f h) * sigmoid(W_g x +
    V_g h), with an optional context vector h and context map; the horizontal stack is
    residual and feeds a skip connection.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        groups: int,
        kernel_size: int,
        first: bool,
        context_dim: int = 0,
        context_channels: int = 0,
    ):
        super().__init__()
        k = kernel_size
        self.k, self.first, self.hidden = k, first, hidden
        gate_groups = channel_groups(hidden, groups).repeat(2)  # (f, g) halves, same groups
        self.v_conv = nn.Conv2d(in_channels, 2 * hidden, (k // 2 + 1, k))
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.h_conv = MaskedConv2d(
            in_channels, 2 * hidden, (1, k), "A" if first else "B", groups, out_groups=gate_groups
        )
        self.h_out = MaskedConv2d(hidden, hidden, 1, "B", groups)
        self.skip = MaskedConv2d(hidden, hidden, 1, "B", groups)
        self.cond = nn.Linear(context_dim, 4 * hidden, bias=False) if context_dim else None
        self.cond_map = (
            nn.Conv2d(context_channels, 4 * hidden, 1, bias=False) if context_channels else None
        )

    def forward(self, v, h, context=None, context_map=None):
        k, height = self.k, v.shape[2]
        top = k // 2 + 1 if self.first else k // 2  # first layer: strictly the rows above
        v_pre = self.v_conv(F.pad(v, (k // 2, k // 2, top, 0)))[:, :, :height]
        h_pre = self.h_conv(h) + self.v_to_h(v_pre)
        if self.cond is not None and context is not None:
            bias = self.cond(context)[:, :, None, None]  # (B, 4h, 1, 1)
            v_pre, h_pre = v_pre + bias[:, : 2 * self.hidden], h_pre + bias[:, 2 * self.hidden :]
        if self.cond_map is not None and context_map is not None:
            bias = self.cond_map(context_map)
            v_pre, h_pre = v_pre + bias[:, : 2 * self.hidden], h_pre + bias[:, 2 * self.hidden :]
        gated = _gate(h_pre)
        h_out = self.h_out(gated)
        if not self.first:
            h_out = h_out + h
        return _gate(v_pre), h_out, self.skip(gated)


class GatedPixelCNNNet(nn.Module):
    """A stack of :class:`GatedLayer` (no blind spot), skip connections summed into a
    1x1 output head. ``context_dim`` / ``context_channels`` enable conditioning."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_layers: int = 7,
        groups: int = 1,
        kernel_size: int = 3,
        first_kernel: int = 7,
        context_dim: int = 0,
        context_channels: int = 0,
    ):
        super().__init__()
        _check_channels(hidden_channels, groups)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        h = hidden_channels
        cond = {"context_dim": context_dim, "context_channels": context_channels}
        layers = [GatedLayer(in_channels, h, groups, first_kernel, True, **cond)]
        layers += [
            GatedLayer(h, h, groups, kernel_size, False, **cond) for _ in range(num_layers - 1)
        ]
        self.layers = nn.ModuleList(layers)
        self.head = _Head(h, h, out_channels, groups)
        declare_wiring(self, in_channels, out_channels, groups, context_dim, context_channels)

    def forward(self, x, context=None, context_map=None):
        if context is not None and not self.context_dim:
            raise ValueError("this network was built without context_dim")
        if context_map is not None and not self.context_channels:
            raise ValueError("this network was built without context_channels")
        v, h, skips = x, x, 0
        for layer in self.layers:
            v, h, skip = layer(v, h, context, context_map)
            skips = skips + skip
        return self.head(skips)

    def cached_sampler(self, ref, batch, image_shape, context=None, context_map=None):
        """Vertical stack a row at a time, the rest one position per step (:mod:`.cached`)."""
        from .cached import GatedPixelCNNSampler

        if context is not None and not self.context_dim:
            raise ValueError("this network was built without context_dim")
        if context_map is not None and not self.context_channels:
            raise ValueError("this network was built without context_channels")
        return GatedPixelCNNSampler(self, ref, batch, image_shape, context, context_map)
