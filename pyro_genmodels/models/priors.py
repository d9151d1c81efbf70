"""Priors p(z) as small Pyro programs.

A prior is a module with

* ``sample_site(name, ref, owner)``: the sample statements of p(z), run inside the
  model's data plate; returns z. ``ref`` is the data (device, dtype, batch),
  ``owner`` the model (the VampPrior needs its encoder and posterior);
* ``draw(n, ref, owner)``: n samples of z outside any Pyro program;
* ``event_shape``: the shape of one z;
* ``enumerated``: whether it has discrete sites summed out by ``TraceEnum_ELBO``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..distributions.mixture import DiagonalNormalMixture
from ..distributions.relaxed import uniform_one_hot


class Prior(nn.Module):
    name = ""
    enumerated = False

    @property
    def event_shape(self) -> torch.Size:
        raise NotImplementedError

    def sample_site(self, name: str, ref: torch.Tensor, owner=None) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, n: int, ref: torch.Tensor, owner=None) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor, owner=None) -> torch.Tensor:
        """log p(z) with any discrete part summed out, ``(...)`` for z ``(..., *event)``."""
        raise NotImplementedError


class StandardNormalPrior(Prior):
    """p(z) = N(0, I) over ``latent_dim`` dimensions."""

    name = "standard"

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.latent_dim])

    def forward(self, ref: torch.Tensor) -> dist.TorchDistribution:
        loc = ref.new_zeros(self.latent_dim)
        return dist.Normal(loc, torch.ones_like(loc), validate_args=False).to_event(1)

    def sample_site(self, name, ref, owner=None):
        return pyro.sample(name, self(ref))

    def draw(self, n, ref, owner=None):
        return self(ref).sample((n,))

    def log_prob(self, z, owner=None):
        return self(z).log_prob(z)


class MixtureOfGaussiansPrior(Prior):
    """The GMVAE prior: a cluster y ~ Cat(pi), then z | y ~ N(mu_y, diag(sigma_y^2)).

    y is a model-only site marked for parallel enumeration, so ``TraceEnum_ELBO``
    sums it out exactly in training and ``log_marginal`` sums it out per image.
    Means, scales and weights are learned.
    """

    name = "mixture"
    enumerated = True

    def __init__(self, latent_dim: int, num_components: int = 10):
        super().__init__()
        self.latent_dim, self.num_components = int(latent_dim), int(num_components)
        self.locs = nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(num_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(num_components))

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.latent_dim])

    def component(self, y: torch.Tensor) -> dist.TorchDistribution:
        scale = self.log_scales.clamp(-7, 5).exp()
        return dist.Normal(self.locs[y], scale[y], validate_args=False).to_event(1)

    def marginal(self) -> dist.TorchDistribution:
        """p(z) with y summed out, as one distribution."""
        scale = self.log_scales.clamp(-7, 5).exp()
        return DiagonalNormalMixture(self.logits, self.locs, scale)

    def sample_site(self, name, ref, owner=None):
        y = pyro.sample(
            f"{name}_cluster",
            dist.Categorical(logits=self.logits),
            infer={"enumerate": "parallel"},
        )
        return pyro.sample(name, self.component(y))

    def draw(self, n, ref, owner=None):
        return self.marginal().sample((n,))

    def log_prob(self, z, owner=None):
        return self.marginal().log_prob(z)


class VampPrior(Prior):
    """p(z) = 1/K sum_k q(z | u_k) with K learned pseudo-inputs u_k (Tomczak & Welling 2018).

    Uses the owner's encoder and posterior family; the mixture is summed inside
    ``log_prob`` (``MixtureSameFamily``), so it needs no enumeration.

    The pseudo-inputs are a bounded map of free parameters ``w_k`` (``pseudo_logits``):
    ``"sigmoid"``: u_k = sigmoid(w_k); ``"hardtanh"``: u_k = hardtanh(w_k) = clamp(w_k, 0, 1),
    the paper's map (a bias-free linear layer with a hard-tanh on one-hot inputs, whose
    output for input e_k is the k-th weight column: here that column is ``w_k`` itself,
    which spares the K x K identity product). ``w`` starts at N(init_mean, init_std^2);
    the paper draws N(0.05, 0.01^2) for binary MNIST.
    """

    name = "vamp"
    MAPS = ("sigmoid", "hardtanh")

    def __init__(
        self,
        latent_dim: int,
        image_shape,
        num_components: int = 50,
        pseudo_input_map: str = "sigmoid",
        init_mean: float = -1.0,
        init_std: float = 0.1,
    ):
        super().__init__()
        if pseudo_input_map not in self.MAPS:
            raise ValueError(
                f"unknown pseudo_input_map {pseudo_input_map!r}; valid: {', '.join(self.MAPS)}"
            )
        self.latent_dim, self.num_components = int(latent_dim), int(num_components)
        self.pseudo_input_map = pseudo_input_map
        init = torch.randn(num_components, *image_shape) * init_std + init_mean
        self.pseudo_logits = nn.Parameter(init)

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.latent_dim])

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs ``(K, C, H, W)``, in [0, 1]."""
        if self.pseudo_input_map == "hardtanh":
            return nn.functional.hardtanh(self.pseudo_logits, 0.0, 1.0)
        return torch.sigmoid(self.pseudo_logits)

    def distribution(self, owner) -> dist.TorchDistribution:
        u = self.pseudo_inputs()  # (K, C, H, W)
        q = owner.posterior(owner.encoder(u))  # batch (K,), event (D,)
        logits = u.new_zeros(self.num_components)
        normal = getattr(q, "base_dist", None)
        if type(normal) is dist.Normal and normal.loc.dim() == 2:  # diagonal q: matmul density
            return DiagonalNormalMixture(logits, normal.loc, normal.scale)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), q)

    def sample_site(self, name, ref, owner=None):
        return pyro.sample(name, self.distribution(owner))

    def draw(self, n, ref, owner=None):
        return self.distribution(owner).sample((n,))

    def log_prob(self, z, owner=None):
        return self.distribution(owner).log_prob(z)


class UniformCategoricalPrior(Prior):
    """L independent uniform one-hot codes of K classes: event_shape ``(L, K)``.

    In training mode the categorical posterior family hands it relaxed codes, which it
    scores like one-hot codes (``-L log K``); see :mod:`pyro_genmodels.distributions.relaxed`.
    """

    name = "categorical"

    def __init__(self, num_variables: int, num_classes: int):
        super().__init__()
        self.num_variables, self.num_classes = int(num_variables), int(num_classes)

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.num_variables, self.num_classes])

    def sample_site(self, name, ref, owner=None):
        codes = uniform_one_hot(ref, self.num_variables, self.num_classes, self.training)
        return pyro.sample(name, codes)

    def draw(self, n, ref, owner=None):
        return uniform_one_hot(ref, self.num_variables, self.num_classes).sample((n,))

    def log_prob(self, z, owner=None):
        return uniform_one_hot(z, self.num_variables, self.num_classes).log_prob(z)


PRIORS = ("standard", "mixture", "vamp", "categorical")


def make_prior(
    name: str,
    latent_dim: int,
    image_shape,
    num_components: int,
    num_classes=10,
    **vamp_options,
):
    """Build a prior by name (see :data:`PRIORS`); ``num_classes``: of categorical codes;
    ``vamp_options``: keywords of :class:`VampPrior` (the pseudo-input map and its init)."""
    if name == "standard":
        return StandardNormalPrior(latent_dim)
    if name == "mixture":
        return MixtureOfGaussiansPrior(latent_dim, num_components)
    if name == "vamp":
        return VampPrior(latent_dim, image_shape, num_components, **vamp_options)
    if name == "categorical":
        return UniformCategoricalPrior(latent_dim, num_classes)
    raise ValueError(f"unknown prior {name!r}; valid: {', '.join(PRIORS)}")
