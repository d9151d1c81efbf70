"""Masked (causal) convolutions for autoregressive image models.

Pixels are ordered in raster order and, within a pixel, by channel (R, G, B).
A masked convolution's output at pixel (r, c) sees the input rows above, the
pixels to the left in row r, and at the centre pixel (r, c) itself:

* mask ``"A"`` (first layer, on the image): only input channels of an *earlier*
  channel group than the output's (nothing at all for one group);
* mask ``"B"`` (later layers, on features): input groups up to and including the
  output's.

Feature maps are split into ``groups`` contiguous blocks, one per image channel
(``groups = C`` for channel-aware likelihoods, 1 when every channel of a pixel
is predicted at once, as in the discretized logistic mixture).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_groups(num_channels: int, groups: int) -> torch.Tensor:
    """The group of each of ``num_channels`` channels: contiguous blocks, ``(num_channels,)``."""
    if num_channels % groups:
        raise ValueError(f"{num_channels} channels cannot be split into {groups} channel groups")
    return torch.arange(num_channels) * groups // num_channels


def causal_mask(
    out_groups: torch.Tensor,
    in_groups: torch.Tensor,
    kernel_size: tuple[int, int],
    mask_type: str,
) -> torch.Tensor:
    """The ``(out, in, kh, kw)`` 0/1 mask of a causal convolution centred on the kernel.

    :param out_groups: the channel group of each output channel.
    :param in_groups: the channel group of each input channel.
    :param mask_type: ``"A"`` (centre: strictly earlier groups) or ``"B"`` (centre: up to
        the same group).
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    kh, kw = kernel_size
    cy, cx = kh // 2, kw // 2
    mask = torch.zeros(len(out_groups), len(in_groups), kh, kw)
    mask[:, :, :cy, :] = 1  # rows above
    mask[:, :, cy, :cx] = 1  # left in the centre row
    earlier = in_groups[None, :] < out_groups[:, None]
    same = in_groups[None, :] == out_groups[:, None]
    centre = earlier | same if mask_type == "B" else earlier
    mask[:, :, cy, cx] = centre.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A ``Conv2d`` whose weights are multiplied by a fixed causal mask (see module doc).

    :param groups: channel groups (``C`` for channel-aware RGB, else 1); named so as not to
        clash with ``Conv2d``'s grouped convolutions, which are not used.
    :param out_groups: explicit output groups (e.g. for LSTM gates laid out gate-major).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        mask_type: str,
        channel_groups_: int = 1,
        out_groups: torch.Tensor | None = None,
        in_groups: torch.Tensor | None = None,
    ):
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
            raise ValueError(f"masked convolutions need odd kernel sizes, got {kernel}")
        super().__init__(
            in_channels, out_channels, kernel, padding=(kernel[0] // 2, kernel[1] // 2)
        )
        g = channel_groups_
        in_groups = channel_groups(in_channels, g) if in_groups is None else in_groups
        out_groups = channel_groups(out_channels, g) if out_groups is None else out_groups
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(out_groups, in_groups, kernel, mask_type))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_type={self.mask_type}"


def down_shift(x: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """Shift a ``(N, C, H, W)`` map down by ``rows``, filling the top with zeros."""
    if rows == 0:
        return x
    return F.pad(x, (0, 0, rows, 0))[:, :, : x.shape[2], :]
