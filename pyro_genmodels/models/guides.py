"""Posterior families q(z | x), amortized through an encoder's features.

A family is a module mapping encoder features ``h`` of shape ``(..., F)`` to a
distribution over ``z`` with batch shape ``(...)``; the VAE's ``guide`` samples
``z`` from it inside the data plate, so swapping the family never touches the
model. Families whose latents are not real vectors (``categorical``) or that
come with their own prior (``gmvae``) say so through ``default_prior``.

=============  =====================================================================
``diagonal``   N(mu, diag sigma^2), the standard VAE posterior
``full-rank``  N(mu, L L^T) with an amortized Cholesky factor L (``scale_tril``)
``low-rank``   N(mu, W W^T + diag d) with a rank-``rank`` factor W
``mixture``    a ``num_components`` mixture of diagonal Gaussians (reparameterized)
``iaf``        ``flow_steps`` inverse autoregressive flow steps on a diagonal Gaussian,
               conditioned on the encoder features
``gmvae``      diagonal q(z|x) for the Gaussian-mixture VAE: the model's cluster y is
               summed out by enumeration (prior ``mixture``, objective ``enum``)
``categorical``  ``latent_dim`` one-hot codes of ``num_classes`` classes, relaxed
               (Gumbel-softmax) in training, exact at evaluation (prior ``categorical``)
=============  =====================================================================
"""

from __future__ import annotations

import inspect

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.nn.functional import softplus

from ..distributions.relaxed import GumbelSoftmaxCategorical

_FAMILIES: dict[str, type] = {}


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


def family_class(name: str) -> type:
    if name not in _FAMILIES:
        raise ValueError(f"unknown guide family {name!r}; valid: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def make_posterior(name: str, feature_dim: int, latent_dim: int, **options) -> Posterior:
    """Build a posterior family by name; ``options`` it does not take are ignored."""
    cls = family_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(feature_dim, latent_dim, **{k: v for k, v in options.items() if k in accepted})


def _positive(raw: torch.Tensor) -> torch.Tensor:
    return softplus(raw) + 1e-5


class Posterior(nn.Module):
    """Base class of amortized posterior families.

    :param feature_dim: size of the encoder features ``h``.
    :param latent_dim: size of ``z`` (the number of codes for ``categorical``).
    """

    family: str = ""
    #: the prior this family is meant for when the config says ``prior="auto"``
    default_prior: str = "standard"

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.latent_dim = int(latent_dim)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of q(z | x) (flattened); used by ``encode``."""
        return self(h).mean


@register_family("diagonal")
class DiagonalNormal(Posterior):
    """q(z | x) = N(mu(h), diag(sigma(h)^2))."""

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__(feature_dim, latent_dim)
        self.loc = nn.Linear(feature_dim, latent_dim)
        self.raw_scale = nn.Linear(feature_dim, latent_dim)

    def forward(self, h):
        scale = _positive(self.raw_scale(h))
        return dist.Normal(self.loc(h), scale, validate_args=False).to_event(1)

    def mean(self, h):
        return self.loc(h)


@register_family("full-rank")
class FullRankNormal(Posterior):
    """q(z | x) = N(mu(h), L(h) L(h)^T), L lower triangular with a positive diagonal."""

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__(feature_dim, latent_dim)
        d = latent_dim
        self.loc = nn.Linear(feature_dim, d)
        self.raw_diag = nn.Linear(feature_dim, d)
        self.off_diag = nn.Linear(feature_dim, d * (d - 1) // 2)
        nn.init.zeros_(self.off_diag.weight)
        nn.init.zeros_(self.off_diag.bias)
        self.register_buffer("_rows", torch.tril_indices(d, d, -1)[0], persistent=False)
        self.register_buffer("_cols", torch.tril_indices(d, d, -1)[1], persistent=False)

    def scale_tril(self, h: torch.Tensor) -> torch.Tensor:
        tril = torch.diag_embed(_positive(self.raw_diag(h)))  # (..., D, D)
        tril[..., self._rows, self._cols] = self.off_diag(h)
        return tril

    def forward(self, h):
        return dist.MultivariateNormal(
            self.loc(h), scale_tril=self.scale_tril(h), validate_args=False
        )

    def mean(self, h):
        return self.loc(h)


@register_family("low-rank")
class LowRankNormal(Posterior):
    """q(z | x) = N(mu(h), W(h) W(h)^T + diag(d(h))) with W of rank ``rank``."""

    def __init__(self, feature_dim: int, latent_dim: int, rank: int = 2):
        super().__init__(feature_dim, latent_dim)
        if int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.loc = nn.Linear(feature_dim, latent_dim)
        self.raw_diag = nn.Linear(feature_dim, latent_dim)
        self.factor = nn.Linear(feature_dim, latent_dim * self.rank)

    def forward(self, h):
        w = self.factor(h).reshape(*h.shape[:-1], self.latent_dim, self.rank)
        return dist.LowRankMultivariateNormal(
            self.loc(h), 0.1 * w, _positive(self.raw_diag(h)) ** 2, validate_args=False
        )

    def mean(self, h):
        return self.loc(h)


class _Float64MixtureOfDiagNormals(dist.MixtureOfDiagNormals):
    """Pyro's mixture with its reparameterized sample computed in float64.

    The implicit gradient divides densities ``exp(log q_j)`` of the D-dimensional
    components; in float32 these underflow once ``log q_j < -103`` (D = 50 with
    scales near 2 is enough) and the gradient becomes NaN. float64 pushes that to
    -745.
    """

    def rsample(self, sample_shape=torch.Size()):  # noqa: B008 - torch's signature
        params = (self.locs.double(), self.coord_scale.double(), self.component_logits.double())
        return dist.MixtureOfDiagNormals(*params).rsample(sample_shape).to(self.locs.dtype)


@register_family("mixture")
class MixtureNormal(Posterior):
    """q(z | x) = sum_k w_k(h) N(mu_k(h), diag sigma_k(h)^2), Pyro's ``MixtureOfDiagNormals``
    (reparameterized gradients through the implicit sampling of the component)."""

    def __init__(self, feature_dim: int, latent_dim: int, num_components: int = 4):
        super().__init__(feature_dim, latent_dim)
        if int(num_components) < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.num_components = k = int(num_components)
        self.locs = nn.Linear(feature_dim, k * latent_dim)
        self.raw_scales = nn.Linear(feature_dim, k * latent_dim)
        self.logits = nn.Linear(feature_dim, k)

    def _params(self, h):
        shape = (*h.shape[:-1], self.num_components, self.latent_dim)
        locs = self.locs(h).reshape(shape)
        scales = _positive(self.raw_scales(h)).reshape(shape)
        return locs, scales, self.logits(h)

    def forward(self, h):
        return _Float64MixtureOfDiagNormals(*self._params(h))

    def mean(self, h):
        locs, _, logits = self._params(h)
        return (torch.softmax(logits, -1).unsqueeze(-1) * locs).sum(-2)


@register_family("iaf")
class IAFNormal(Posterior):
    """``flow_steps`` affine IAF steps (Kingma et al. 2016) on a diagonal Gaussian, each a
    Pyro conditional affine autoregressive transform conditioned on the features h,
    with the dimension order reversed between steps."""

    def __init__(
        self, feature_dim: int, latent_dim: int, flow_steps: int = 2, flow_hidden: int = 0
    ):
        super().__init__(feature_dim, latent_dim)
        if int(flow_steps) < 1:
            raise ValueError(f"flow_steps must be >= 1, got {flow_steps}")
        hidden = int(flow_hidden) or max(2 * latent_dim, 32)
        self.base = DiagonalNormal(feature_dim, latent_dim)
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(latent_dim, feature_dim, hidden_dims=[hidden])
            for _ in range(int(flow_steps))
        )
        self.register_buffer("_reverse", torch.arange(latent_dim - 1, -1, -1), persistent=False)

    def transforms(self, h: torch.Tensor) -> list:
        out = []
        for i, flow in enumerate(self.flows):
            if i:
                out.append(T.Permute(self._reverse))
            out.append(flow.condition(h))
        return out

    def forward(self, h):
        return dist.TransformedDistribution(self.base(h), self.transforms(h))

    def mean(self, h):
        """The flow applied to the base mean: a deterministic summary of q(z | x)."""
        z = self.base.mean(h)
        for t in self.transforms(h):
            z = t(z)
        return z


@register_family("gmvae")
class GMVAEPosterior(DiagonalNormal):
    """Diagonal q(z | x) for the Gaussian-mixture VAE; the cluster y is enumerated in the model."""

    default_prior = "mixture"


@register_family("categorical")
class CategoricalCode(Posterior):
    """``latent_dim`` independent one-hot codes of ``num_classes`` classes: event (L, K).

    Relaxed (Gumbel-softmax at ``temperature``, optionally straight-through) inside
    the trainer's SVI step; exact hard samples everywhere else.
    """

    default_prior = "categorical"

    def __init__(
        self,
        feature_dim: int,
        latent_dim: int,
        num_classes: int = 10,
        temperature: float = 0.5,
        straight_through: bool = False,
    ):
        super().__init__(feature_dim, latent_dim)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_classes = int(num_classes)
        self.temperature, self.straight_through = float(temperature), bool(straight_through)
        self.logits = nn.Linear(feature_dim, latent_dim * self.num_classes)

    def _logits(self, h):
        return self.logits(h).reshape(*h.shape[:-1], self.latent_dim, self.num_classes)

    def forward(self, h):
        q = GumbelSoftmaxCategorical(self._logits(h), self.temperature, self.straight_through)
        return q.to_event(1)

    def mean(self, h):
        return torch.softmax(self._logits(h), -1).flatten(-2)
