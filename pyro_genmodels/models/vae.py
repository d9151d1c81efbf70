"""The variational autoencoder as a Pyro program.

``model(x)``: z ~ p(z), x | z ~ p(x | z) with a neural decoder.
``guide(x)``: z ~ q(z | x) from an encoder and a swappable posterior family.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from torch import nn

from ..distributions import LIKELIHOODS, Likelihood, get_likelihood
from ..nn import NETWORKS, make_encoder_decoder
from ..registry import register_model
from .base import ImageModel
from .guides import Posterior, list_families, make_posterior
from .priors import StandardNormalPrior


@dataclass
class VAEConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    likelihood: str = "bernoulli"  # "bernoulli" (binary data) | "gaussian" (grey levels)
    latent_dim: int = 50  # size of z
    guide: str = "diagonal"  # posterior family, see pyro_genmodels.models.list_families()
    network: str = "mlp"  # encoder/decoder: "mlp" | "conv" (H, W divisible by 4)
    hidden_dims: tuple[int, ...] = (512, 256)  # encoder widths; the MLP decoder mirrors them
    gaussian_scale: float | None = None  # gaussian only: fixed std, or None to learn it

    def __post_init__(self):
        if int(self.latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r} for the vae; "
                f"valid: {', '.join(LIKELIHOODS)}"
            )
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}; valid: {', '.join(NETWORKS)}")
        if self.guide not in list_families():
            raise ValueError(
                f"unknown guide family {self.guide!r}; valid: {', '.join(list_families())}"
            )
        self.latent_dim = int(self.latent_dim)
        self.image_shape = tuple(self.image_shape)
        self.hidden_dims = tuple(self.hidden_dims)


@register_model("vae", VAEConfig)
class VAE(ImageModel):
    """A VAE whose parts can all be replaced.

    :param config: a :class:`VAEConfig` (``create_model("vae", **keys)`` builds it).
    :param encoder: ``(..., C, H, W) -> (..., F)`` with attribute ``feature_dim``.
    :param decoder: ``(..., latent_dim) -> (..., likelihood.param_channels, H, W)``.
    :param likelihood: a :class:`~pyro_genmodels.distributions.Likelihood`.
    :param posterior: a :class:`~pyro_genmodels.models.guides.Posterior` family.
    :param prior: a module ``ref -> p(z)`` (default standard normal).

    Subclass and override :meth:`model` or :meth:`guide` to change the program itself.
    """

    def __init__(
        self,
        config: VAEConfig | None = None,
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        likelihood: Likelihood | None = None,
        posterior: Posterior | None = None,
        prior: nn.Module | None = None,
    ):
        config = config or VAEConfig()
        super().__init__(config)
        if likelihood is None:
            kwargs = {"scale": config.gaussian_scale} if config.likelihood == "gaussian" else {}
            likelihood = get_likelihood(config.likelihood, self.image_shape, **kwargs)
        self.likelihood = likelihood
        if encoder is None or decoder is None:
            enc, dec = make_encoder_decoder(
                config.network,
                self.image_shape,
                config.latent_dim,
                likelihood.param_channels,
                config.hidden_dims,
            )
            encoder = encoder or enc
            decoder = decoder or dec
        self.encoder = encoder
        self.decoder = decoder
        feature_dim = getattr(encoder, "feature_dim", None) or config.hidden_dims[-1]
        self.posterior = posterior or make_posterior(config.guide, feature_dim, config.latent_dim)
        self.prior = prior or StandardNormalPrior(config.latent_dim)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    # -- the Pyro program ---------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))  # (..., N, D)
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(self.encoder(x)))

    # -- conveniences -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of q(z | x), ``(N, latent_dim)``."""
        x = self.check_input(x)
        return self.posterior.mean(self.encoder(x))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Images for latents ``z`` ``(..., D)``: the likelihood's mean, or a sample."""
        params = self.decoder(z)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z) at z = the mean of q(z | x)."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False) -> torch.Tensor:
        """Draw images: z ~ p(z), then x ~ p(x | z) (or its mean if ``mean``)."""
        z = self.prior(self._ref()).sample((int(num_samples),))
        return self.decode(z, mean=mean)
