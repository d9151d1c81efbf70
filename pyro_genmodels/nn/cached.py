r"""Cached (incremental) evaluation of the causal networks, for fast sampling.

Sampling an autoregressive image draws pixel i from the network's output at i, which depends
on pixels before i only. The naive sampler reruns the whole network on every row drawn so
far for each of the H x W (x C) steps. Following Ramachandran et al. (2017), "Fast
Generation for Convolutional Autoregressive Models", each layer here keeps the activations
it has already produced (a :class:`Canvas` per layer input) and a step computes **one
position per layer**: the output at pixel (r, c) of every layer reads only positions
before (r, c) of the layer below (or the rows above and the centre, for mask B), and those
were computed at earlier steps and never change. Positions whose inputs are complete only
when a row starts (the vertical stack of the Gated PixelCNN, which sees the rows above)
are computed a row at a time.

A sampler is called in raster order, ``step(r, c) -> (B, P)`` parameters of pixel (r, c),
after the caller has written every pixel before (r, c) into :attr:`image` (the network's
input, i.e. ``likelihood.net_input`` of the drawn values). Calling it again at the same
(r, c) recomputes that position (the channel sub-steps of RGB, where channel ch's outputs
see the channels < ch just written). Outputs equal the full network's output at (r, c) up to
float rounding (the tests check this on random inputs, layer by layer causal).

Written by hand because neither torch nor Pyro has incremental convolutions; everything
runs on the modules' own (masked) weights, so a sampler needs no training of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pixelrnn import _lstm_update


class Canvas:
    """A ``(B, C, H, W)`` map filled in raster order, stored with a zero border so that every
    causal window is a plain slice (positions above the image or beside it read 0, as the
    convolutions' zero padding does)."""

    def __init__(self, ref: torch.Tensor, batch: int, channels: int, height: int, width: int,
                 pad: int):  # fmt: skip
        self.width, self.pad = width, pad
        self.data = ref.new_zeros(batch, channels, height + pad, width + 2 * pad)

    def put(self, r: int, c: int, value: torch.Tensor) -> None:
        """Write ``(B, C)`` values at pixel (r, c)."""
        self.data[:, :, r + self.pad, c + self.pad] = value

    def put_row(self, r: int, value: torch.Tensor) -> None:
        """Write ``(B, C, W)`` values on row r."""
        self.data[:, :, r + self.pad, self.pad : self.pad + self.width] = value

    def at(self, r: int, c: int) -> torch.Tensor:
        return self.data[:, :, r + self.pad, c + self.pad]

    def row(self, r: int) -> torch.Tensor:
        """``(B, C, W)``: row r."""
        return self.data[:, :, r + self.pad, self.pad : self.pad + self.width]

    def window(self, r: int, c: int, top: int, rows: int, left: int, cols: int) -> torch.Tensor:
        """Rows ``r - top ..`` (``rows`` of them), columns ``c - left ..`` (``cols``)."""
        y, x = r + self.pad - top, c + self.pad - left
        return self.data[:, :, y : y + rows, x : x + cols]

    def row_window(self, r: int, top: int, rows: int, left: int, cols: int) -> torch.Tensor:
        """The window of every column of row r at once, for a ``conv2d`` without padding."""
        y, x = r + self.pad - top, self.pad - left
        return self.data[:, :, y : y + rows, x : x + self.width + cols - 1]


def _weight(conv: nn.Module) -> torch.Tensor:
    mask = getattr(conv, "mask", None)
    return conv.weight * mask if mask is not None else conv.weight


class ConvAt:
    """A (masked) convolution evaluated at single positions from a :class:`Canvas` of its
    input: ``out(r, c) = sum_ij W[i, j] in(r - top + i, c - left + j)`` over the kernel rows
    that can be non-zero (those at or above the centre for a causal mask).

    :param conv: a ``Conv2d`` / ``MaskedConv2d`` / ``Conv1d`` (a 1-D conv reads one row).
    :param top: how many rows above the output row the kernel's first row reads.
    :param rows: kernel rows used (from the first).
    :param left: how many columns left of the output column the kernel's first column reads
        (default: the conv's own padding, i.e. a centred kernel).
    """

    def __init__(self, conv: nn.Module, top: int, rows: int, left: int | None = None):
        w = _weight(conv).detach()
        if w.dim() == 3:  # Conv1d over a row: one kernel row
            w = w.unsqueeze(2)
        self.top, self.rows, self.cols = top, rows, w.shape[-1]
        self.left = conv.padding[-1] if left is None else left
        self.kernel = w[:, :, :rows].contiguous()  # (out, in, rows, cols), for whole rows
        self.matrix = self.kernel.reshape(w.shape[0], -1).t().contiguous()  # (in*rows*cols, out)
        self.bias = None if conv.bias is None else conv.bias.detach()

    def __call__(self, canvas: Canvas, r: int, c: int) -> torch.Tensor:
        """``(B, out)`` at pixel (r, c)."""
        patch = canvas.window(r, c, self.top, self.rows, self.left, self.cols)
        out = patch.reshape(patch.shape[0], -1) @ self.matrix
        return out if self.bias is None else out + self.bias

    def row(self, canvas: Canvas, r: int) -> torch.Tensor:
        """``(B, out, W)`` on every column of row r."""
        window = canvas.row_window(r, self.top, self.rows, self.left, self.cols)
        return F.conv2d(window, self.kernel, self.bias)[:, :, 0]


class Linear1x1:
    """A (masked) 1x1 convolution on the ``(B, C)`` vector of one pixel."""

    def __init__(self, conv: nn.Module):
        w = _weight(conv).detach()
        self.matrix = w.reshape(w.shape[0], -1).t().contiguous()
        self.bias = None if conv.bias is None else conv.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.matrix
        return out if self.bias is None else out + self.bias


def _causal_conv(conv: nn.Module) -> ConvAt:
    """A centred masked k x k convolution: rows from k//2 above down to the centre."""
    kh = conv.weight.shape[-2]
    return ConvAt(conv, top=kh // 2, rows=kh // 2 + 1)


class _Head:
    def __init__(self, head: nn.Sequential):
        self.first, self.second = Linear1x1(head[1]), Linear1x1(head[3])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(torch.relu(x))))


def _gate(pre: torch.Tensor) -> torch.Tensor:
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class CachedSampler:
    """Base: the input canvas that the caller fills, and the batch size. Canvases get a zero
    border as wide as the network's widest kernel needs (rows above, columns either side)."""

    def __init__(self, net: nn.Module, ref: torch.Tensor, batch: int, image_shape,
                 in_channels: int):  # fmt: skip
        _, self.height, self.width = image_shape
        self.batch, self.ref = batch, ref
        kernels = [m.kernel_size for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        self.pad = max(k // 2 + 1 for kernel in kernels for k in kernel)
        self.image = self.canvas(in_channels)

    def canvas(self, channels: int) -> Canvas:
        return Canvas(self.ref, self.batch, channels, self.height, self.width, self.pad)

    def step(self, r: int, c: int) -> torch.Tensor:
        raise NotImplementedError


class PixelCNNSampler(CachedSampler):
    """:class:`~pyro_genmodels.nn.pixelcnn.PixelCNNNet`, one position per layer and step:
    the 7x7 mask-A input conv and each block's masked k x k conv read their canvases, the
    1x1 convs work on the pixel's vector."""

    def __init__(self, net, ref, batch, image_shape):
        super().__init__(net, ref, batch, image_shape, net.input.in_channels)
        self.input = _causal_conv(net.input)
        self.blocks = []
        for block in net.blocks:
            reduce, conv, expand = block.net[1], block.net[3], block.net[5]
            canvas = self.canvas(conv.in_channels)
            self.blocks.append((Linear1x1(reduce), canvas, _causal_conv(conv), Linear1x1(expand)))
        self.head = _Head(net.head)

    def step(self, r: int, c: int) -> torch.Tensor:
        f = self.input(self.image, r, c)
        for reduce, canvas, conv, expand in self.blocks:
            canvas.put(r, c, torch.relu(reduce(torch.relu(f))))
            f = f + expand(torch.relu(conv(canvas, r, c)))
        return self.head(f)


class GatedPixelCNNSampler(CachedSampler):
    """:class:`~pyro_genmodels.nn.pixelcnn.GatedPixelCNNNet`: the vertical stack of row r sees
    rows above r only, so it is computed for the whole row when the row starts; the
    horizontal stack, the skips and the head one position per step. The context vector's
    and map's contributions are computed once."""

    def __init__(self, net, ref, batch, image_shape, context=None, context_map=None):
        super().__init__(net, ref, batch, image_shape, net.layers[0].v_conv.in_channels)
        self.layers, self.row = [], None
        v_in = h_in = self.image
        for layer in net.layers:
            k, hidden = layer.k, layer.hidden
            top = k // 2 + 1 if layer.first else k // 2
            bias_v = bias_h = 0
            if layer.cond is not None and context is not None:
                bias = layer.cond(context)  # (B, 4h)
                bias_v, bias_h = bias[:, : 2 * hidden, None], bias[:, 2 * hidden :]
            map_bias = None
            if layer.cond_map is not None and context_map is not None:
                map_bias = layer.cond_map(context_map)  # (B, 4h, H, W)
            entry = {
                "first": layer.first,
                "v_in": v_in,
                "h_in": h_in,
                "v_conv": ConvAt(layer.v_conv, top=top, rows=k // 2 + 1, left=k // 2),
                "v_to_h": layer.v_to_h,
                "h_conv": ConvAt(layer.h_conv, top=0, rows=1),
                "h_out": Linear1x1(layer.h_out),
                "skip": Linear1x1(layer.skip),
                "bias_v": bias_v,
                "bias_h": bias_h,
                "map": map_bias,
                "hidden": hidden,
                "v": self.canvas(hidden),
                "h": self.canvas(hidden),
            }
            self.layers.append(entry)
            v_in, h_in = entry["v"], entry["h"]
        self.head = _Head(net.head)

    def _start_row(self, r: int) -> None:
        for e in self.layers:
            v_pre = e["v_conv"].row(e["v_in"], r)  # (B, 2h, W)
            e["v_to_h_row"] = e["v_to_h"](v_pre.unsqueeze(2))[:, :, 0]  # before the biases
            v_pre = v_pre + e["bias_v"]
            if e["map"] is not None:
                v_pre = v_pre + e["map"][:, : 2 * e["hidden"], r]
            e["v"].put_row(r, _gate(v_pre))
        self.row = r

    def step(self, r: int, c: int) -> torch.Tensor:
        if r != self.row:
            self._start_row(r)
        skips = 0
        h = None
        for e in self.layers:
            h_pre = e["h_conv"](e["h_in"], r, c) + e["v_to_h_row"][:, :, c] + e["bias_h"]
            if e["map"] is not None:
                h_pre = h_pre + e["map"][:, 2 * e["hidden"] :, r, c]
            gated = _gate(h_pre)
            h_out = e["h_out"](gated)
            h = h_out if e["first"] else h_out + h
            e["h"].put(r, c, h)
            skips = skips + e["skip"](gated)
        return self.head(skips)


class RowLSTMSampler(CachedSampler):
    """:class:`~pyro_genmodels.nn.pixelrnn.PixelRNNNet` with Row LSTM layers: the recurrent
    state of row r-1 (state and cell canvases) is carried to row r, and the LSTM at (r, c)
    reads the states at (r-1, c-k//2 .. c+k//2) and its row's input up to c."""

    def __init__(self, net, ref, batch, image_shape):
        super().__init__(net, ref, batch, image_shape, net.input.in_channels)
        self.input = _causal_conv(net.input)
        self.layers = []
        for lstm, residual in zip(net.lstms, net.residuals, strict=True):
            self.layers.append(
                (
                    self.canvas(lstm.input_to_state.in_channels),  # the layer's input
                    ConvAt(lstm.input_to_state, top=0, rows=1),
                    self.canvas(lstm.hidden),  # states
                    ConvAt(lstm.state_to_state, top=1, rows=1),  # of the row above
                    self.canvas(lstm.hidden),  # cells
                    Linear1x1(residual),
                )
            )
        self.head = _Head(net.head)

    def step(self, r: int, c: int) -> torch.Tensor:
        f = self.input(self.image, r, c)
        for inputs, input_to_state, states, state_to_state, cells, residual in self.layers:
            inputs.put(r, c, f)
            gates = input_to_state(inputs, r, c) + state_to_state(states, r, c)
            state, cell = _lstm_update(gates, cells.at(r - 1, c))
            states.put(r, c, state)
            cells.put(r, c, cell)
            f = f + residual(state)
        return self.head(f)


class _DiagonalDirection:
    """One direction of a Diagonal BiLSTM layer at single positions. The state at (r, c)
    reads the states above, (r-1, c), and beside, (r, c -+ 1), and the cell beside. Beside
    the image the skewed map has zero input, so the states there do not depend on the image:
    the column next to the image is computed once, by the module's own recursion on zeros."""

    def __init__(self, lstm: nn.Module, height: int):
        self.input_to_state = Linear1x1(lstm.input_to_state)
        w = lstm.state_to_state.weight.detach()  # (4h, h, 2): taps on rows r-1 and r
        self.above = w[:, :, 0].t().contiguous()
        self.beside = w[:, :, 1].t().contiguous()
        self.bias = lstm.state_to_state.bias.detach()
        hidden = lstm.hidden
        state = w.new_zeros(1, hidden, height)
        cell = torch.zeros_like(state)
        self.edge_state = w.new_zeros(height, hidden)  # the state just outside row r
        self.edge_cell = w.new_zeros(height, hidden)
        for j in range(height - 1):  # skewed column j; row j + 1 is the column beside
            state, cell = _lstm_update(lstm.state_to_state(F.pad(state, (1, 0))), cell)
            self.edge_state[j + 1], self.edge_cell[j + 1] = state[0, :, j + 1], cell[0, :, j + 1]

    def gates(self, inputs: torch.Tensor, above: torch.Tensor, beside: torch.Tensor):
        return self.input_to_state(inputs) + above @ self.above + beside @ self.beside + self.bias


class DiagonalBiLSTMSampler(CachedSampler):
    """:class:`~pyro_genmodels.nn.pixelrnn.PixelRNNNet` with Diagonal BiLSTM layers.

    The left-to-right LSTM runs one position per step. The right-to-left LSTM of row r
    reads the whole row (it runs from the right edge), so its output enters the pixels of
    row r + 1 only (the layer's one-row down shift): it is computed for row r - 1, right to
    left, when row r starts. Each state is computed once, so a sample costs about two
    network passes instead of H x W / 2 for the naive loop; the right-to-left sweep is W
    sequential steps per row, which is as far as caching can go, since that direction is
    itself sequential along the row.
    """

    def __init__(self, net, ref, batch, image_shape):
        super().__init__(net, ref, batch, image_shape, net.input.in_channels)
        self.input = _causal_conv(net.input)
        self.row = None
        self.layers = []
        for layer, residual in zip(net.lstms, net.residuals, strict=True):
            hidden = layer.forward_lstm.hidden
            self.layers.append(
                {
                    "inputs": self.canvas(layer.forward_lstm.input_to_state.in_channels),
                    "ltr": _DiagonalDirection(layer.forward_lstm, self.height),
                    "rtl": _DiagonalDirection(layer.backward_lstm, self.height),
                    "ltr_state": self.canvas(hidden),
                    "ltr_cell": self.canvas(hidden),
                    "rtl_state": self.canvas(hidden),  # row r - 1 once row r has started
                    "residual": Linear1x1(residual),
                }
            )
        self.head = _Head(net.head)

    def _right_to_left(self, e: dict, q: int) -> None:
        """The right-to-left states of row q (complete), from the right edge."""
        d, states, width = e["rtl"], e["rtl_state"], self.width
        inputs = e["inputs"].row(q).transpose(1, 2)  # (B, W, C)
        above = states.row(q - 1).transpose(1, 2)  # (B, W, h)
        pre = d.input_to_state(inputs) + above @ d.above + d.bias  # (B, W, 4h)
        state = d.edge_state[q].expand(self.batch, -1)
        cell = d.edge_cell[q].expand(self.batch, -1)
        for c in range(width - 1, -1, -1):
            state, cell = _lstm_update(pre[:, c] + state @ d.beside, cell)
            states.put(q, c, state)

    def step(self, r: int, c: int) -> torch.Tensor:
        if r != self.row:
            if r > 0:
                for e in self.layers:
                    self._right_to_left(e, r - 1)
            self.row = r
        f = self.input(self.image, r, c)
        for e in self.layers:
            e["inputs"].put(r, c, f)
            d = e["ltr"]
            above = e["ltr_state"].at(r - 1, c)
            if c > 0:
                beside, cell = e["ltr_state"].at(r, c - 1), e["ltr_cell"].at(r, c - 1)
            else:
                beside = d.edge_state[r].expand(self.batch, -1)
                cell = d.edge_cell[r].expand(self.batch, -1)
            state, cell = _lstm_update(d.gates(f, above, beside), cell)
            e["ltr_state"].put(r, c, state)
            e["ltr_cell"].put(r, c, cell)
            out = state + e["rtl_state"].at(r - 1, c)  # the right-to-left map, shifted down
            f = f + e["residual"](out)
        return self.head(f)
