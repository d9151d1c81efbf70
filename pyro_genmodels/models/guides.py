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
``categorical``  ``latent_dim`` one-hot codes of ``num_classes`` classes: Pyro's
               ``RelaxedOneHotCategorical`` in training mode, the exact
               ``OneHotCategorical`` in eval mode (prior ``categorical``)
=============  =====================================================================

A family's settings are a small dataclass, its ``Options``; a VAE takes them nested
under the guide: ``create_model("vae", guide="low-rank", guide_options={"rank": 4})``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.nn.functional import softplus

from ..distributions.relaxed import relaxed_one_hot

_FAMILIES: dict[str, type] = {}


@dataclass
class NoOptions:
    """A family without settings."""


def register_family(name: str):
    """Class decorator adding a posterior family to :func:`make_posterior`; the class's
    ``Options`` dataclass (default: none) lists the settings it takes."""

    def decorator(cls):
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"{cls.__name__}.Options must be a dataclass")
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


def family_options(name: str, options: Any = None) -> Any:
    """The ``Options`` dataclass of family ``name`` from a dict (or an instance).

    :raises ValueError: an unknown family or option, listing the valid ones.
    """
    cls = family_class(name)
    if isinstance(options, cls.Options):
        return options
    options = dict(options or {})
    valid = [f.name for f in dataclasses.fields(cls.Options)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for guide family {name!r}; "
            f"valid: {valid if valid else 'none'}"
        )
    return cls.Options(**options)


def make_posterior(name: str, feature_dim: int, latent_dim: int, **options) -> Posterior:
    """Build a posterior family by name with its options (unknown ones are an error)."""
    cls = family_class(name)
    return cls(feature_dim, latent_dim, family_options(name, options))


def _at_least(value: Any, low: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


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
    #: the family's settings (a dataclass); instances get them as ``self.options``
    Options: type = NoOptions

    def __init__(self, feature_dim: int, latent_dim: int, options: Any = None):
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.latent_dim = int(latent_dim)
        self.options = options if options is not None else self.Options()

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of q(z | x) (flattened); used by ``encode``."""
        return self(h).mean


@register_family("diagonal")
class DiagonalNormal(Posterior):
    """q(z | x) = N(mu(h), diag(sigma(h)^2)).

    By default sigma = softplus(a(h)); with ``log_var_bounds=(low, high)``,
    log sigma^2 = hardtanh(a(h), low, high), as in Tomczak & Welling's networks
    (-6, 2): a floor on the variance that keeps the VampPrior's components from collapsing.
    """

    @dataclass
    class Options:
        log_var_bounds: tuple[float, ...] | None = None  # (low, high): bounded log variance

        def __post_init__(self):
            if self.log_var_bounds is not None:
                bounds = tuple(float(b) for b in self.log_var_bounds)
                if len(bounds) != 2 or not bounds[0] < bounds[1]:
                    raise ValueError(
                        f"log_var_bounds must be (low, high) with low < high, got {bounds}"
                    )
                self.log_var_bounds = bounds

    def __init__(self, feature_dim: int, latent_dim: int, options: Any = None):
        super().__init__(feature_dim, latent_dim, options)
        self.loc = nn.Linear(feature_dim, latent_dim)
        self.raw_scale = nn.Linear(feature_dim, latent_dim)

    def scale(self, h: torch.Tensor) -> torch.Tensor:
        raw = self.raw_scale(h)
        if self.options.log_var_bounds is None:
            return _positive(raw)
        low, high = self.options.log_var_bounds
        return torch.exp(0.5 * nn.functional.hardtanh(raw, low, high))

    def forward(self, h):
        return dist.Normal(self.loc(h), self.scale(h), validate_args=False).to_event(1)

    def mean(self, h):
        return self.loc(h)


@register_family("full-rank")
class FullRankNormal(Posterior):
    """q(z | x) = N(mu(h), L(h) L(h)^T), L lower triangular with a positive diagonal."""

    def __init__(self, feature_dim: int, latent_dim: int, options: Any = None):
        super().__init__(feature_dim, latent_dim, options)
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

    @dataclass
    class Options:
        rank: int = 2  # rank of the covariance factor W

        def __post_init__(self):
            self.rank = _at_least(self.rank, 1, "rank")

    def __init__(self, feature_dim: int, latent_dim: int, options: Any = None):
        super().__init__(feature_dim, latent_dim, options)
        self.rank = self.options.rank
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

    @dataclass
    class Options:
        num_components: int = 4  # mixture components of q(z|x)

        def __post_init__(self):
            self.num_components = _at_least(self.num_components, 1, "num_components")

    def __init__(self, feature_dim: int, latent_dim: int, options: Any = None):
        super().__init__(feature_dim, latent_dim, options)
        self.num_components = k = self.options.num_components
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

    @dataclass
    class Options:
        flow_steps: int = 2  # IAF steps
        flow_hidden: int = 0  # hidden units of each step's autoregressive net (0: max(2D, 32))

        def __post_init__(self):
            self.flow_steps = _at_least(self.flow_steps, 1, "flow_steps")
            self.flow_hidden = _at_least(self.flow_hidden, 0, "flow_hidden")

    def __init__(self, feature_dim: int, latent_dim: int, options: Any = None):
        super().__init__(feature_dim, latent_dim, options)
        hidden = self.options.flow_hidden or max(2 * latent_dim, 32)
        self.base = DiagonalNormal(feature_dim, latent_dim)
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(latent_dim, feature_dim, hidden_dims=[hidden])
            for _ in range(self.options.flow_steps)
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

    In training mode (``module.train()``) q(z | x) is relaxed: Pyro's Gumbel-softmax
    sampler at ``temperature`` (straight-through with ``straight_through``), reparameterized,
    so plain ``pyro.infer.SVI`` trains the encoder through the reconstruction term, with the
    categorical log-probability, so the KL term is that of the discrete codes (Jang et al.
    2017; :mod:`pyro_genmodels.distributions.relaxed` says why not the Concrete density).
    In eval mode it is the exact ``OneHotCategorical``, so importance weights and KL are
    those of the discrete model.
    """

    default_prior = "categorical"

    @dataclass
    class Options:
        num_classes: int = 10  # classes per code
        temperature: float = 0.5  # of the relaxed samples in training mode
        straight_through: bool = False  # training: hard one-hot forward, relaxed gradient

        def __post_init__(self):
            self.num_classes = _at_least(self.num_classes, 2, "num_classes")
            if not float(self.temperature) > 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")
            self.temperature = float(self.temperature)
            self.straight_through = bool(self.straight_through)

    def __init__(self, feature_dim: int, latent_dim: int, options: Any = None):
        super().__init__(feature_dim, latent_dim, options)
        self.num_classes = self.options.num_classes
        self.logits = nn.Linear(feature_dim, latent_dim * self.num_classes)

    def _logits(self, h):
        return self.logits(h).reshape(*h.shape[:-1], self.latent_dim, self.num_classes)

    def forward(self, h):
        logits = self._logits(h)
        if not self.training:
            return dist.OneHotCategorical(logits=logits).to_event(1)
        opts = self.options
        return relaxed_one_hot(logits, opts.temperature, opts.straight_through).to_event(1)

    def mean(self, h):
        return torch.softmax(self._logits(h), -1).flatten(-2)
