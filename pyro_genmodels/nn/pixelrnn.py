"""PixelRNN networks (van den Oord et al. 2016): Row LSTM and Diagonal BiLSTM.

Both start with a 7x7 mask-A convolution, stack LSTM layers with residual
connections and end in 1x1 masked output layers. Input-to-state convolutions are
masked (mask B, channel-aware for RGB); state-to-state convolutions only read
states of earlier pixels. No normalization layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .masked import MaskedConv2d, channel_groups, down_shift
from .pixelcnn import _check_channels, _Head, declare_wiring


def _lstm_update(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class RowLSTMLayer(nn.Module):
    """Row LSTM: row r's states come from a masked 1 x k conv of row r's input and a
    1-D conv (width k) of row r-1's states: a triangular context above the pixel."""

    def __init__(self, in_channels: int, hidden: int, groups: int, kernel_size: int = 3):
        super().__init__()
        gate_groups = channel_groups(hidden, groups).repeat(4)
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(
            in_channels, 4 * hidden, (1, kernel_size), "B", groups, out_groups=gate_groups
        )
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, _, width = x.shape
        inputs = self.input_to_state(x).permute(2, 0, 1, 3).contiguous()  # (H, N, 4h, W)
        state = x.new_zeros(n, self.hidden, width)
        cell = torch.zeros_like(state)
        rows = []
        for row in inputs.unbind(0):  # unbind: one cheap backward, not a zero-filled copy per row
            state, cell = _lstm_update(row + self.state_to_state(state), cell)
            rows.append(state)
        return torch.stack(rows, 2)  # (N, h, H, W)


def skew(x: torch.Tensor) -> torch.Tensor:
    """Shift row r right by r: ``(N, C, H, W) -> (N, C, H, W + H - 1)``.

    Done with one pad and one reshape (no per-row copies, so the backward is cheap):
    with rows padded to W + H and laid end to end, row r of the skewed map is the
    run starting at r (W + H - 1).
    """
    n, c, h, w = x.shape
    flat = F.pad(x, (0, h)).reshape(n, c, h * (w + h))
    return flat[..., : h * (w + h - 1)].reshape(n, c, h, w + h - 1)


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """Invert :func:`skew`: ``(N, C, H, W + H - 1) -> (N, C, H, W)``."""
    n, c, h, length = x.shape
    flat = F.pad(x.reshape(n, c, h * length), (0, h))
    return flat.reshape(n, c, h, length + 1)[..., :width]


class DiagonalLSTM(nn.Module):
    """One direction of the Diagonal BiLSTM: on the skewed map, column j's states come
    from a 1x1 masked conv of the input and a width-2 conv over column j-1's states at
    rows r-1 and r, i.e. the pixel above and the pixel to the left."""

    def __init__(self, in_channels: int, hidden: int, groups: int):
        super().__init__()
        gate_groups = channel_groups(hidden, groups).repeat(4)
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(
            in_channels, 4 * hidden, 1, "B", groups, out_groups=gate_groups
        )
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        inputs = skew(self.input_to_state(x))  # (N, 4h, H, W + H - 1)
        inputs = inputs.permute(3, 0, 1, 2).contiguous()  # one contiguous slab per column
        state = x.new_zeros(n, self.hidden, height)
        cell = torch.zeros_like(state)
        columns = []
        for column in inputs.unbind(0):
            recurrent = self.state_to_state(F.pad(state, (1, 0)))  # rows r-1 and r
            state, cell = _lstm_update(column + recurrent, cell)
            columns.append(state)
        return unskew(torch.stack(columns, 3), width)  # (N, h, H, W)


class DiagonalBiLSTMLayer(nn.Module):
    """Left-to-right plus right-to-left diagonal LSTMs; the right-to-left output is
    shifted down one row so that it only carries rows above the pixel."""

    def __init__(self, in_channels: int, hidden: int, groups: int):
        super().__init__()
        self.forward_lstm = DiagonalLSTM(in_channels, hidden, groups)
        self.backward_lstm = DiagonalLSTM(in_channels, hidden, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left_to_right = self.forward_lstm(x)
        right_to_left = self.backward_lstm(x.flip(-1)).flip(-1)
        return left_to_right + down_shift(right_to_left, 1)


class PixelRNNNet(nn.Module):
    """7x7 mask-A conv, ``num_layers`` LSTM layers (``"row"`` or ``"diagonal"``) with
    residual 1x1 connections, and the 1x1 output head."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 32,
        num_layers: int = 2,
        groups: int = 1,
        kind: str = "row",
        first_kernel: int = 7,
    ):
        super().__init__()
        _check_channels(hidden_channels, groups)
        if kind not in ("row", "diagonal"):
            raise ValueError(f"kind must be 'row' or 'diagonal', got {kind!r}")
        h = hidden_channels
        self.kind = kind
        self.input = MaskedConv2d(in_channels, 2 * h, first_kernel, "A", groups)
        make = (
            (lambda: RowLSTMLayer(2 * h, h, groups))
            if kind == "row"
            else (lambda: DiagonalBiLSTMLayer(2 * h, h, groups))
        )
        self.lstms = nn.ModuleList(make() for _ in range(num_layers))
        self.residuals = nn.ModuleList(
            MaskedConv2d(h, 2 * h, 1, "B", groups) for _ in range(num_layers)
        )
        self.head = _Head(2 * h, 2 * h, out_channels, groups)
        declare_wiring(self, in_channels, out_channels, groups)

    def forward(self, x, context=None, context_map=None):
        if context is not None or context_map is not None:
            raise ValueError("the PixelRNN networks are unconditional")
        features = self.input(x)
        for lstm, residual in zip(self.lstms, self.residuals, strict=True):
            features = features + residual(lstm(features))
        return self.head(features)

    def cached_sampler(self, ref, batch, image_shape, context=None, context_map=None):
        """Row LSTM: the recurrent state carried from row to row; Diagonal BiLSTM: the
        left-to-right states one position per step, the right-to-left ones a row behind
        (:mod:`.cached`)."""
        if context is not None or context_map is not None:
            raise ValueError("the PixelRNN networks are unconditional")
        from .cached import DiagonalBiLSTMSampler, RowLSTMSampler

        sampler = RowLSTMSampler if self.kind == "row" else DiagonalBiLSTMSampler
        return sampler(self, ref, batch, image_shape)
