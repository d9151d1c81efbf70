r"""Autoregressive distributions over whole images.

:math:`p(x \mid h) = \prod_i p(x_i \mid x_{<i}, h)` in raster order (and channel
order within a pixel for channel-aware likelihoods). A causal network maps the
image (and an optional context) to the parameters of every conditional at once,
so ``log_prob`` is one network pass; ``sample`` is the sequential H x W (x C)
loop. By default each step runs the network's cached sampler (one position per layer,
:mod:`pyro_genmodels.nn.cached`); ``sample(..., cached=False)`` is the reference loop that
reruns the network on the rows drawn so far (step (r, c) only needs the rows up to r).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from .likelihoods import Likelihood


def _check_wiring(net, likelihood: Likelihood, image_shape, context, context_map) -> None:
    """The declared wiring of ``net`` against the likelihood, the image and the context."""
    channels = image_shape[0]
    declared = {k: getattr(net, k, None) for k in ("in_channels", "out_channels", "groups")}
    if declared["in_channels"] not in (None, channels):
        raise ValueError(
            f"the network reads {declared['in_channels']} input channels but the images have "
            f"{channels}"
        )
    if declared["out_channels"] not in (None, likelihood.param_channels):
        raise ValueError(
            f"the network outputs {declared['out_channels']} channels but the {likelihood.name} "
            f"likelihood of {channels}-channel images needs {likelihood.param_channels} "
            f"({likelihood.num_params} per image channel)"
        )
    want = channels if likelihood.channel_aware else 1
    if declared["groups"] not in (None, want):
        how = "channel by channel" if likelihood.channel_aware else "jointly"
        raise ValueError(
            f"the network's masks have groups={declared['groups']} but the {likelihood.name} "
            f"likelihood models a pixel's channels {how} (channel_aware="
            f"{likelihood.channel_aware}): it needs groups={want}, else a channel's own value "
            "leaks into its prediction"
        )
    for name, t, size, dims in (
        ("context", context, getattr(net, "context_dim", None), -1),
        ("context_map", context_map, getattr(net, "context_channels", None), -3),
    ):
        if size is None:
            continue
        if t is None and size:
            raise ValueError(
                f"the network was built for a {name} of size {size} (it is conditional) but none "
                f"was given: pass {name}="
            )
        if t is not None and not size:
            raise ValueError(f"the network was built without a {name} (it is unconditional)")
        if t is not None and (t.dim() < -dims or t.shape[dims] != size):
            raise ValueError(
                f"the network expects a {name} with {size} channels in dim {dims}, got shape "
                f"{tuple(t.shape)}"
            )
    if context_map is not None and tuple(context_map.shape[-2:]) != tuple(image_shape[1:]):
        raise ValueError(
            f"context_map has spatial shape {tuple(context_map.shape[-2:])}, the images "
            f"{tuple(image_shape[1:])}"
        )


def _check_params(params: torch.Tensor, likelihood: Likelihood) -> None:
    if params.dim() < 3 or params.shape[-3] != likelihood.param_channels:
        raise ValueError(
            f"the network returned {tuple(params.shape)}: the {likelihood.name} likelihood needs "
            f"{likelihood.param_channels} channels in dim -3"
        )


class AutoregressiveImage(dist.TorchDistribution):
    """An image distribution defined by a causal network and a pixel likelihood.

    :param net: ``net(x_in, context, context_map) -> (B, P, H', W)`` for inputs
        ``(B, C, H', W)`` of any height ``H' <= H``; output (r, c) depends on input
        pixels before (r, c) only (and on earlier channels of (r, c) for
        channel-aware likelihoods).
    :param likelihood: maps network outputs to a distribution over images
        (``likelihood.channel_aware`` tells the sampler to draw channel by channel).
    :param image_shape: ``(C, H, W)``.
    :param context: optional ``(..., D)`` conditioning vector (class one-hot or latent);
        its leading dims are the batch shape.
    :param context_map: optional ``(..., Cm, H, W)`` conditioning map.

    A network that declares its wiring (``in_channels``, ``out_channels``, ``groups``,
    ``context_dim``, ``context_channels``: the library's nets do, see
    :func:`pyro_genmodels.nn.declare_wiring`) is checked against the likelihood and the
    context when the distribution is built; the output channels of any network are checked
    at every call. A mismatch is a ``ValueError`` naming both sides, never a broadcast.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        net,
        likelihood: Likelihood,
        image_shape,
        context: torch.Tensor | None = None,
        context_map: torch.Tensor | None = None,
        batch_shape=None,
        validate_args=None,
    ):
        self.net, self.likelihood = net, likelihood
        self.context, self.context_map = context, context_map
        if batch_shape is None:
            if context is not None:
                batch_shape = context.shape[:-1]
            elif context_map is not None:
                batch_shape = context_map.shape[:-3]
            else:
                batch_shape = ()
        super().__init__(torch.Size(batch_shape), torch.Size(image_shape), validate_args)
        _check_wiring(net, likelihood, self.event_shape, context, context_map)
        if self._validate_args:
            for name, t in (("context", context), ("context_map", context_map)):
                if t is not None and not bool(torch.isfinite(t).all()):
                    raise ValueError(f"the {name} contains NaN or infinite values")

    @constraints.dependent_property
    def support(self):
        if self.likelihood.data_format == "binary":
            return constraints.independent(constraints.boolean, 3)
        return constraints.independent(constraints.integer_interval(0, 255), 3)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(AutoregressiveImage, _instance)
        batch_shape = torch.Size(batch_shape)
        new.net, new.likelihood = self.net, self.likelihood
        new.context = (
            self.context.expand(batch_shape + self.context.shape[-1:])
            if self.context is not None
            else None
        )
        new.context_map = (
            self.context_map.expand(batch_shape + self.context_map.shape[-3:])
            if self.context_map is not None
            else None
        )
        super(AutoregressiveImage, new).__init__(batch_shape, self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    def _conditional(self, x: torch.Tensor, lead: torch.Size) -> dist.TorchDistribution:
        """The pixel likelihood given images ``x`` ``(B, C, H', W)`` flattened from ``lead``."""
        ctx, ctx_map = self._flat_context(lead)
        if ctx_map is not None:
            ctx_map = ctx_map[..., : x.shape[-2], :]
        params = self.net(self.likelihood.net_input(self._as_input(x)), ctx, ctx_map)
        _check_params(params, self.likelihood)
        return self.likelihood(params)

    def _as_input(self, x: torch.Tensor) -> torch.Tensor:
        """Integer or boolean images in the network's float dtype."""
        if torch.is_floating_point(x):
            return x
        ref = self._reference()
        return x.to(ref.dtype if ref.is_floating_point() else torch.get_default_dtype())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) in nats, summed over the image."""
        if value.shape[-3:] != self.event_shape:
            raise ValueError(
                f"expected images of shape (..., {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(value.shape)}"
            )
        if self._validate_args:  # on by default; training checks its data once, not per step
            self.likelihood.check_data(value)  # ValueError on bad data, before any network
        has_context = self.context is not None or self.context_map is not None
        lead = torch.broadcast_shapes(value.shape[:-3], self.batch_shape if has_context else ())
        x = value.expand(lead + self.event_shape).reshape(-1, *self.event_shape)
        lp = self._conditional(x, lead).log_prob(x).reshape(lead)
        return lp.expand(torch.broadcast_shapes(lead, self.batch_shape))

    def _flat_context(self, lead: torch.Size):
        """The context vector ``(n, D)`` and map ``(n, Cm, H, W)`` (or None) for ``lead``."""
        ctx = ctx_map = None
        if self.context is not None:
            ctx = self.context.expand(lead + self.context.shape[-1:]).reshape(
                -1, self.context.shape[-1]
            )
        if self.context_map is not None:
            ctx_map = self.context_map.expand(lead + self.context_map.shape[-3:])
            ctx_map = ctx_map.reshape(-1, *self.context_map.shape[-3:])
        return ctx, ctx_map

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size(), cached: bool = True) -> torch.Tensor:  # noqa: B008
        """Draw images pixel by pixel (and channel by channel for channel-aware likelihoods).

        :param cached: use the network's cached sampler (one position per layer and step,
            :mod:`pyro_genmodels.nn.cached`) where it has one; ``False`` runs the whole
            network on the rows drawn so far at every step (the reference). Both draw each
            pixel from ``likelihood(params of that pixel).sample()``, so they consume the random
            stream identically and, with the same seed, return the same images.
        """
        shape = torch.Size(sample_shape) + self.batch_shape
        c, h, w = self.event_shape
        n = math.prod(shape)
        ref = self._reference()
        x = ref.new_zeros(n, c, h, w)
        ctx, ctx_map = self._flat_context(shape)
        sampler = None
        if cached and hasattr(self.net, "cached_sampler"):
            sampler = self.net.cached_sampler(ref, n, self.event_shape, ctx, ctx_map)
        channels = range(c) if self.likelihood.channel_aware else [None]
        for r in range(h):
            rows_map = ctx_map[..., : r + 1, :] if ctx_map is not None else None
            for col in range(w):
                for ch in channels:
                    if sampler is not None:
                        params = sampler.step(r, col)  # (n, P)
                    else:
                        net_in = self.likelihood.net_input(x[:, :, : r + 1])
                        params = self.net(net_in, ctx, rows_map)
                        _check_params(params, self.likelihood)
                        params = params[:, :, r, col]
                    draw = self.likelihood(params[:, :, None, None]).sample()[:, :, 0, 0]
                    if ch is None:
                        x[:, :, r, col] = draw
                    else:
                        x[:, ch, r, col] = draw[:, ch]
                    if sampler is not None:
                        sampler.image.put(r, col, self.likelihood.net_input(x[:, :, r, col]))
        return x.reshape(shape + self.event_shape)

    def _reference(self) -> torch.Tensor:
        for t in (self.context, self.context_map):
            if t is not None:
                return t
        for p in self.net.parameters():
            return p
        return torch.zeros(())
