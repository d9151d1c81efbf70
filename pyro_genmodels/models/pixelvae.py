"""PixelVAE (Gulrajani et al. 2017): a VAE whose p(x | z) is a Gated PixelCNN.

z ~ p(z) exactly as in the VAE (any prior, any guide family); x | z follows the
same :class:`~pyro_genmodels.distributions.autoregressive.AutoregressiveImage` as
the standalone ``gated-pixelcnn``, now conditioned on z through a global vector
and/or a spatial feature map. The autoregressive decoder is shallow by default
so that the latent carries the global structure (a deep one can model the
images alone and the KL collapses to 0; see free bits and KL annealing in the
trainer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyro
import torch
import torch.nn.functional as F
from pyro.nn import pyro_method
from torch import nn

from ..distributions.autoregressive import AutoregressiveImage
from ..nn.pixelcnn import GatedPixelCNNNet
from ..registry import register_model
from .pixel import PIXEL_LIKELIHOODS
from .vae import VAE, VAEConfig

CONTEXTS = ("vector", "map", "both")


@dataclass
class PixelVAEConfig(VAEConfig):
    latent_dim: int = 32  # size of z
    hidden_channels: int = 32  # Gated PixelCNN feature maps
    num_layers: int = 2  # gated layers: shallow, so that z is used
    kernel_size: int = 3  # gated layers after the first (which is 7 wide); Gulrajani et al.: 5
    context: Literal["vector", "map", "both"] = "both"  # how z conditions the PixelCNN
    context_dim: int = 64  # size of the conditioning vector computed from z
    map_channels: int = 8  # channels of the conditioning map computed from z

    def __post_init__(self):
        super().__post_init__()
        if self.likelihood not in PIXEL_LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r} for the pixelvae; "
                f"valid: {', '.join(PIXEL_LIKELIHOODS)}"
            )
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; valid: {', '.join(CONTEXTS)}")


class LatentToContext(nn.Module):
    """z ``(..., D)`` -> a context vector ``(..., context_dim)`` and a map ``(..., Cm, H, W)``."""

    def __init__(self, z_size: int, image_shape, context: str, context_dim: int, map_channels: int):
        super().__init__()
        _, self.height, self.width = image_shape
        self.vector = None
        self.seed = None
        if context in ("vector", "both"):
            self.vector = nn.Sequential(
                nn.Linear(z_size, 2 * context_dim),
                nn.ReLU(),
                nn.Linear(2 * context_dim, context_dim),
            )
        if context in ("map", "both"):
            self.seed_shape = (map_channels, max(1, self.height // 4), max(1, self.width // 4))
            self.seed = nn.Sequential(
                nn.Linear(z_size, 2 * context_dim),
                nn.ReLU(),
                nn.Linear(2 * context_dim, map_channels * self.seed_shape[1] * self.seed_shape[2]),
            )
            self.refine = nn.Conv2d(map_channels, map_channels, 3, padding=1)

    def forward(self, z: torch.Tensor):
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        vector = self.vector(flat).reshape(*lead, -1) if self.vector is not None else None
        cmap = None
        if self.seed is not None:
            seed = self.seed(flat).reshape(-1, *self.seed_shape)
            up = F.interpolate(seed, size=(self.height, self.width), mode="nearest")
            cmap = self.refine(F.relu(up)).reshape(
                *lead, self.seed_shape[0], self.height, self.width
            )
        return vector, cmap


@register_model("pixelvae", PixelVAEConfig)
class PixelVAE(VAE):
    """A VAE with an autoregressive decoder (a conditional Gated PixelCNN)."""

    #: evaluation: images per batch, and particles x images per decoder pass (a PixelCNN pass
    #: per particle; on a CPU, 500 per pass runs about 2x slower than 20 to 50, see
    #: benchmarks/iw_throughput.py --model pixelvae)
    eval_batch_size = 10
    iw_samples_per_pass = 50

    def __init__(self, config: PixelVAEConfig | None = None, **parts):
        config = config or PixelVAEConfig()
        decoder = parts.pop("decoder", None)
        if decoder is None:
            z_size = config.latent_dim * (
                config.guide_options.num_classes if config.prior == "categorical" else 1
            )
            decoder = LatentToContext(
                z_size, config.image_shape, config.context, config.context_dim, config.map_channels
            )
        super().__init__(config, decoder=decoder, **parts)
        channels = self.image_shape[0]
        groups = channels if self.likelihood.channel_aware else 1
        self.pixel_net = GatedPixelCNNNet(
            channels,
            self.likelihood.param_channels,
            config.hidden_channels,
            config.num_layers,
            groups,
            kernel_size=config.kernel_size,
            context_dim=config.context_dim if config.context in ("vector", "both") else 0,
            context_channels=config.map_channels if config.context in ("map", "both") else 0,
        )

    def conditional(self, z: torch.Tensor) -> AutoregressiveImage:
        """p(x | z) for flattened latents ``z`` ``(..., z_size)``; batch shape ``(...)``."""
        vector, cmap = self.decoder(z)
        return AutoregressiveImage(
            self.pixel_net,
            self.likelihood,
            self.image_shape,
            vector,
            cmap,
            batch_shape=z.shape[:-1],
        )

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = self.prior.sample_site("z", x, self)
            pyro.sample("x", self.conditional(self._flat(z)), obs=x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mean: bool = False, cached: bool = True) -> torch.Tensor:
        """Images for latents ``z`` ``(n, z_size)``: an autoregressive sample (there is no
        closed-form mean of a PixelCNN); ``cached=False`` runs the naive reference loop."""
        return self.conditional(z).sample(cached=cached)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False, cached: bool = True) -> torch.Tensor:
        """z ~ p(z), then x ~ p(x | z) pixel by pixel (cached sampler unless ``cached=False``;
        with the same seed both return the same images)."""
        z = self.prior.draw(int(num_samples), self._ref(), self)
        return self.decode(self._flat(z), mean=mean, cached=cached)

    @torch.no_grad()
    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        return self.prior.log_prob(z, self) + self.conditional(self._flat(z)).log_prob(x)
