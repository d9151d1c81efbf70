"""Models as PyroModules; importing this package fills the registry."""

from .autoencoder import Autoencoder, AutoencoderConfig
from .base import ImageModel
from .guides import Posterior, family_options, list_families, make_posterior, register_family
from .pixel import (
    DiagonalBiLSTMPixelRNN,
    GatedPixelCNN,
    PixelCNN,
    PixelModel,
    RowLSTMPixelRNN,
)
from .pixelvae import PixelVAE, PixelVAEConfig
from .priors import (
    PRIORS,
    MixtureOfGaussiansPrior,
    Prior,
    StandardNormalPrior,
    UniformCategoricalPrior,
    VampPrior,
    make_prior,
)
from .vae import VAE, VAEConfig

__all__ = [
    "Autoencoder",
    "AutoencoderConfig",
    "DiagonalBiLSTMPixelRNN",
    "GatedPixelCNN",
    "PixelCNN",
    "PixelModel",
    "PixelVAE",
    "PixelVAEConfig",
    "RowLSTMPixelRNN",
    "VAE",
    "ImageModel",
    "Posterior",
    "MixtureOfGaussiansPrior",
    "PRIORS",
    "Prior",
    "StandardNormalPrior",
    "UniformCategoricalPrior",
    "VampPrior",
    "make_prior",
    "VAEConfig",
    "family_options",
    "list_families",
    "make_posterior",
    "register_family",
]
