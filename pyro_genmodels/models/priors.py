"""Priors p(z). A prior is a module called with a reference tensor (the data),
so the distribution it returns lives on the data's device and dtype."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over ``latent_dim`` dimensions."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)

    def forward(self, ref: torch.Tensor) -> dist.TorchDistribution:
        loc = ref.new_zeros(self.latent_dim)
        return dist.Normal(loc, torch.ones_like(loc), validate_args=False).to_event(1)
