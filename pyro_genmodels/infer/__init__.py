"""Inference: SVI training, importance-weighted and AIS log p(x), BDMC, KL, diagnostics.

This layer consumes any ``(model, guide)`` callables and never imports ``models``.
"""

from .ais import AISEstimate, BDMCResult, ais_estimate, ais_log_marginal, bdmc
from .checkpoint import CheckpointError, load_checkpoint, save_atomic
from .config import (
    OBJECTIVES,
    LatentScale,
    TrainConfig,
    TrainingDiverged,
    kl_weight,
    make_elbo,
    resolve_objective,
)
from .diagnostics import effective_sample_size, psis_khat
from .disentangle import DIPVAE_ELBO, TCVAE_ELBO, AnnealedELBO, FactorVAE_ELBO
from .elbo import TraceELBO, TraceEnumELBO
from .free_bits import FreeBitsELBO
from .importance import (
    IWEstimate,
    importance_estimate,
    log_importance_weights,
    log_marginal,
    prior_log_marginal,
)
from .kl import kl_divergence
from .meanfield import MeanFieldELBO
from .program import resolve_device
from .train import fit

__all__ = [
    "AISEstimate",
    "AnnealedELBO",
    "DIPVAE_ELBO",
    "BDMCResult",
    "ais_estimate",
    "ais_log_marginal",
    "bdmc",
    "OBJECTIVES",
    "CheckpointError",
    "FreeBitsELBO",
    "IWEstimate",
    "LatentScale",
    "MeanFieldELBO",
    "TCVAE_ELBO",
    "TraceELBO",
    "TraceEnumELBO",
    "TrainConfig",
    "TrainingDiverged",
    "FactorVAE_ELBO",
    "effective_sample_size",
    "fit",
    "importance_estimate",
    "kl_divergence",
    "kl_weight",
    "load_checkpoint",
    "log_importance_weights",
    "log_marginal",
    "make_elbo",
    "prior_log_marginal",
    "psis_khat",
    "resolve_device",
    "resolve_objective",
    "save_atomic",
]
