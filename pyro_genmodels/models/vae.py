"""The variational autoencoder as a Pyro program.

``model(x)``: z ~ p(z) (a prior program, possibly with an enumerated cluster),
x | z ~ p(x | z) with a neural decoder. ``guide(x)``: z ~ q(z | x) from an
encoder and a swappable posterior family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pyro
import torch
from pyro.nn import pyro_method
from torch import nn

from ..distributions import LIKELIHOODS, Likelihood
from ..nn import (
    HIDDEN_LAYERS,
    NETWORKS,
    WEIGHT_INITS,
    HiddenLayer,
    WeightInit,
    he_normal_,
    make_encoder_decoder,
)
from ..registry import register_model
from .base import CodeDecoderModel, likelihood_from_config
from .guides import Posterior, family_class, family_options
from .priors import PRIORS, Prior, VampPrior, make_prior

PseudoInputMap = Literal["sigmoid", "hardtanh"]


@dataclass
class VAEConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    likelihood: str = "bernoulli"  # p(x|z): bernoulli, gaussian, categorical, logistic-mixture
    latent_dim: int = 50  # size of z (number of one-hot codes for guide="categorical")
    guide: str = "diagonal"  # posterior family, see pyro_genmodels.models.list_families()
    guide_options: Any = field(default_factory=dict)  # the family's Options, e.g. {"rank": 4}
    prior: str = "auto"  # "standard" | "mixture" | "vamp" | "categorical"; auto: the family's
    #: mlp; conv: H, W % 4 == 0; conv-deep: 8 convs; conv-4x4: disentanglement_lib's four
    #: 4x4 stride-2 convs, H, W % 16 == 0
    network: Literal["mlp", "conv", "conv-deep", "conv-4x4"] = "mlp"
    hidden_dims: tuple[int, ...] = (512, 256)  # encoder widths; the MLP decoder mirrors them
    hidden_layer: HiddenLayer = "relu"  # relu, or gated: (W1 x + b1) * sigmoid(W2 x + b2)
    weight_init: WeightInit = "torch"  # torch: PyTorch's default; he-normal: N(0, 2 / fan_in)
    gaussian_scale: float | None = None  # gaussian only: fixed std, or None to learn it
    prior_components: int = 10  # prior="mixture" (GMVAE clusters) or "vamp" (pseudo-inputs)
    pseudo_input_map: PseudoInputMap = "sigmoid"  # vamp: u = sigmoid(w) or hardtanh(w) (paper)
    pseudo_input_mean: float = -1.0  # vamp: mean of the initial w (paper: 0.05 with hardtanh)
    pseudo_input_std: float = 0.1  # vamp: std of the initial w (paper: 0.01)
    num_mixtures: int = 5  # likelihood="logistic-mixture": components per pixel

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
        family = family_class(self.guide)  # raises for unknown names, listing the valid ones
        self.guide_options = family_options(self.guide, self.guide_options)
        if self.prior == "auto":
            self.prior = family.default_prior
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; valid: auto, {', '.join(PRIORS)}")
        if (self.prior == "categorical") != (family.default_prior == "categorical"):
            raise ValueError(
                "the categorical guide and the categorical prior go together "
                f"(got guide={self.guide!r}, prior={self.prior!r})"
            )
        for key, valid in (
            ("hidden_layer", HIDDEN_LAYERS),
            ("weight_init", WEIGHT_INITS),
            ("pseudo_input_map", VampPrior.MAPS),
        ):
            if getattr(self, key) not in valid:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; valid: {', '.join(valid)}")
        if not self.pseudo_input_std >= 0:
            raise ValueError(f"pseudo_input_std must be >= 0, got {self.pseudo_input_std}")
        self.latent_dim = int(self.latent_dim)
        self.image_shape = tuple(self.image_shape)
        self.hidden_dims = tuple(self.hidden_dims)


@register_model("vae", VAEConfig)
class VAE(CodeDecoderModel):
    """A VAE whose parts can all be replaced.

    :param config: a :class:`VAEConfig` (``create_model("vae", **keys)`` builds it).
    :param encoder: ``(..., C, H, W) -> (..., F)`` with attribute ``feature_dim``.
    :param decoder: ``(..., z_size) -> (..., likelihood.param_channels, H, W)``.
    :param likelihood: a :class:`~pyro_genmodels.distributions.Likelihood`.
    :param posterior: a :class:`~pyro_genmodels.models.guides.Posterior` family.
    :param prior: a :class:`~pyro_genmodels.models.priors.Prior`.

    Subclass and override :meth:`model` or :meth:`guide` to change the program itself.
    """

    #: images per batch in ``evaluate``: AIS moves all chains of a batch together, and a
    #: leapfrog step's fixed cost (Pyro's trace, autograd) is shared by more images: vae-paper
    #: at T = 1000 x 8 chains with bfloat16 gradients, 0.468 s an image at 200 a batch against
    #: 0.631 s at 100 on a 2-core CPU (docs/benchmarks.md)
    eval_batch_size = 200

    def __init__(
        self,
        config: VAEConfig | None = None,
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        likelihood: Likelihood | None = None,
        posterior: Posterior | None = None,
        prior: Prior | None = None,
    ):
        config = config or VAEConfig()
        super().__init__(config)
        if likelihood is None:
            likelihood = likelihood_from_config(config, self.image_shape)
        self.likelihood = likelihood
        self.prior = prior or make_prior(
            config.prior,
            config.latent_dim,
            self.image_shape,
            config.prior_components,
            getattr(config.guide_options, "num_classes", None),
            pseudo_input_map=config.pseudo_input_map,
            init_mean=config.pseudo_input_mean,
            init_std=config.pseudo_input_std,
        )
        z_size = math.prod(self.prior.event_shape)
        built = [encoder is None, decoder is None, posterior is None]
        if encoder is None or decoder is None:
            enc, dec = make_encoder_decoder(
                config.network, self.image_shape, z_size, likelihood.param_channels,
                config.hidden_dims, config.hidden_layer,
            )  # fmt: skip
            encoder = encoder or enc
            decoder = decoder or dec
        self.encoder = encoder
        self.decoder = decoder
        feature_dim = getattr(encoder, "feature_dim", None) or config.hidden_dims[-1]
        family = family_class(config.guide)
        self.posterior = posterior or family(feature_dim, config.latent_dim, config.guide_options)
        if config.weight_init == "he-normal":  # the networks built here, not those passed in
            for part, new in zip((self.encoder, self.decoder, self.posterior), built, strict=True):
                if new:
                    he_normal_(part)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def latent_is_real(self) -> bool:
        """False for one-hot codes (``guide="categorical"``)."""
        return self.prior.name != "categorical"

    @property
    def requires_enumeration(self) -> bool:
        """The model has discrete sites that only ``TraceEnum_ELBO`` sums out."""
        return bool(self.prior.enumerated)

    @property
    def default_objective(self) -> str:
        """The training objective ``objective="auto"`` picks for this model."""
        if self.requires_enumeration:
            return "enum"
        return "elbo" if self.latent_is_real else "meanfield"  # codes: analytic discrete KL

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        """z with its event dims flattened: the decoder's input ``(..., z_size)``."""
        n = len(self.prior.event_shape)
        return z.flatten(-n) if n > 1 else z

    # -- the Pyro program ---------------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = self.prior.sample_site("z", x, self)  # (..., N, *event)
            pyro.sample("x", self.likelihood(self.decoder(self._flat(z))), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(self.encoder(x)))

    # -- conveniences -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of q(z | x), ``(N, z_size)`` (class probabilities for one-hot codes)."""
        x = self.check_input(x)
        return self.posterior.mean(self.encoder(x))

    @torch.no_grad()
    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) = log p(z) + log p(x | z) for z ``(..., N, *event)``, discrete parts of
        the prior summed out; ``(..., N)``. Up to log p(x), the log posterior density."""
        x = self.check_input(x)
        return self.prior.log_prob(z, self) + self.likelihood(self.decoder(self._flat(z))).log_prob(
            x
        )

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False) -> torch.Tensor:
        """Draw images: z ~ p(z), then x ~ p(x | z) (or its mean if ``mean``)."""
        z = self.prior.draw(int(num_samples), self._ref(), self)
        return self.decode(self._flat(z), mean=mean)
