"""Models as PyroModules; importing this package fills the registry."""

from .base import ImageModel
from .guides import Posterior, list_families, make_posterior, register_family
from .priors import StandardNormalPrior
from .vae import VAE, VAEConfig

__all__ = [
    "VAE",
    "ImageModel",
    "Posterior",
    "StandardNormalPrior",
    "VAEConfig",
    "list_families",
    "make_posterior",
    "register_family",
]
