"""Posterior families q(z | x), amortized through an encoder's features.

A family is a module mapping encoder features ``h`` of shape ``(..., F)`` to a
distribution over ``z`` with ``event_shape == (latent_dim,)`` and batch shape
``(...)``. The VAE's ``guide`` samples ``z`` from it inside the data plate, so
swapping the family never touches the model.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

_FAMILIES: dict[str, Callable[..., Posterior]] = {}


def register_family(name: str):
    """Class decorator adding a posterior family to :func:`make_posterior`."""

    def decorator(cls):
        _FAMILIES[name] = cls
        cls.family = name
        return cls

    return decorator


def list_families() -> list[str]:
    """Names accepted by ``create_model("vae", guide=NAME)`` and ``--guide NAME``."""
    return list(_FAMILIES)


def make_posterior(name: str, feature_dim: int, latent_dim: int, **options) -> Posterior:
    """Build a posterior family by name (see :func:`list_families`)."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown guide family {name!r}; valid: {', '.join(_FAMILIES)}")
    return _FAMILIES[name](feature_dim, latent_dim, **options)


class Posterior(nn.Module):
    """Base class of amortized posterior families.

    :param feature_dim: size of the encoder features ``h``.
    :param latent_dim: size of ``z``.
    """

    family: str = ""
    #: the support of z: "real" for continuous families, "one-hot" for discrete codes
    latent_support: str = "real"

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.latent_dim = int(latent_dim)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of q(z | x), ``(..., latent_dim)``; used by ``encode``."""
        return self(h).mean


def _positive(raw: torch.Tensor) -> torch.Tensor:
    return softplus(raw) + 1e-5


@register_family("diagonal")
class DiagonalNormal(Posterior):
    """q(z | x) = N(mu(h), diag(sigma(h)^2)): the standard VAE posterior."""

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__(feature_dim, latent_dim)
        self.loc = nn.Linear(feature_dim, latent_dim)
        self.raw_scale = nn.Linear(feature_dim, latent_dim)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        scale = _positive(self.raw_scale(h))
        return dist.Normal(self.loc(h), scale, validate_args=False).to_event(1)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.loc(h)
