"""A deterministic autoencoder, for contrast with the VAE (as in the lecture).

The code is a deterministic function of x and there is no prior over codes: the
model reconstructs well and learns features, but it is not a generative model,
so it cannot ``sample`` and has no log p(x). Trained through the same loop: its
``model(x)`` observes x under p(x | code(x)), so the loss is the reconstruction
negative log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyro
import torch
from pyro.nn import pyro_method
from torch import nn

from ..distributions import LIKELIHOODS
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


@dataclass
class AutoencoderConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    likelihood: str = "bernoulli"  # the reconstruction loss: bernoulli, gaussian, ...
    latent_dim: int = 50  # size of the code
    #: mlp; conv: H, W % 4 == 0; conv-deep: 8 convs; conv-4x4: disentanglement_lib's four
    #: 4x4 stride-2 convs, H, W % 16 == 0
    network: Literal["mlp", "conv", "conv-deep", "conv-4x4"] = "mlp"
    hidden_dims: tuple[int, ...] = (512, 256)  # encoder widths; the MLP decoder mirrors them
    hidden_layer: HiddenLayer = "relu"  # relu, or gated: (W1 x + b1) * sigmoid(W2 x + b2)
    weight_init: WeightInit = "torch"  # torch: PyTorch's default; he-normal: N(0, 2 / fan_in)
    gaussian_scale: float | None = None  # gaussian only: fixed std, or None to learn it
    num_mixtures: int = 5  # likelihood="logistic-mixture": components per pixel

    def __post_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r}; valid: {', '.join(LIKELIHOODS)}"
            )
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}; valid: {', '.join(NETWORKS)}")
        if int(self.latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        for key, valid in (("hidden_layer", HIDDEN_LAYERS), ("weight_init", WEIGHT_INITS)):
            if getattr(self, key) not in valid:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; valid: {', '.join(valid)}")
        self.image_shape = tuple(self.image_shape)
        self.hidden_dims = tuple(self.hidden_dims)


@register_model("autoencoder", AutoencoderConfig)
class Autoencoder(CodeDecoderModel):
    """x -> encoder -> code -> decoder -> p(x | code)."""

    is_generative = False
    latent_is_real = True

    def __init__(self, config: AutoencoderConfig | None = None):
        config = config or AutoencoderConfig()
        super().__init__(config)
        self.likelihood = likelihood_from_config(config, self.image_shape)
        self.encoder, self.decoder = make_encoder_decoder(
            config.network, self.image_shape, config.latent_dim, self.likelihood.param_channels,
            config.hidden_dims, config.hidden_layer,
        )  # fmt: skip
        self.to_code = nn.Linear(self.encoder.feature_dim, config.latent_dim)
        if config.weight_init == "he-normal":
            he_normal_(self)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.encoder(x))

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", self.likelihood(self.decoder(self.code(x))), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        """Empty: the code is deterministic, not a latent variable."""

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.check_input(x))

    def sample(self, num_samples: int, **kwargs) -> torch.Tensor:
        raise ValueError(
            "an autoencoder has no prior over its codes, so it cannot generate new images "
            "(the lecture's point); train a vae to sample"
        )
