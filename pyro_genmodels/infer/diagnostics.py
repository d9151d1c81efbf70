"""Diagnostics of importance weights: PSIS Pareto k (through arviz) and ESS.

ArviZ moved ``psislw`` between major versions: arviz 0.x has
``arviz.psislw(log_weights)`` with the log importance *ratios* as input, while
arviz 1.x delegates to ``arviz_stats``, whose array function takes the
*log-likelihood* (it negates internally). :func:`_psislw` is the one shim.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

#: arviz fits the generalized Pareto tail to ceil(min(0.2 K, 3 sqrt(K))) weights and needs 5
MIN_PSIS_SAMPLES = 25


def _psislw(log_ratios: np.ndarray) -> np.ndarray:
    """Pareto k per row of ``log_ratios`` ``(N, K)`` (samples on the last axis)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from arviz import psislw  # arviz < 1
        except ImportError:  # arviz >= 1: the array API of arviz_stats
            from arviz_stats.base import array_stats

            _, khat = array_stats.psislw(-log_ratios, axis=-1)
        else:
            _, khat = psislw(log_ratios)
    return np.asarray(khat, dtype=np.float64).reshape(log_ratios.shape[0])


def psis_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """Pareto-smoothed importance sampling k-hat per example.

    :param log_weights: ``(K, N)`` log importance weights, K samples for N examples, or
        ``(K,)`` for one example.
    :returns: ``(N,)`` k-hat (a scalar tensor for ``(K,)`` weights); above 0.7 the
        importance-weighted estimate is unreliable (Vehtari et al. 2024). NaN where it
        is undefined: fewer than :data:`MIN_PSIS_SAMPLES` samples, or weights that are
        all equal (an exact proposal, e.g. a model without latents): no tail to fit.
    """
    if not isinstance(log_weights, torch.Tensor) or log_weights.dim() not in (1, 2):
        raise ValueError("log_weights must be a (K, N) or (K,) tensor of log importance weights")
    lw = log_weights.detach().double().cpu().reshape(log_weights.shape[0], -1).numpy().T
    khat = np.full(lw.shape[0], np.nan)
    if lw.shape[1] >= MIN_PSIS_SAMPLES:
        spread = lw.max(axis=1) - lw.min(axis=1)
        scale = np.maximum(1.0, np.abs(lw).max(axis=1))
        varying = np.isfinite(spread) & (spread > 1e-9 * scale)
        if varying.any():
            khat[varying] = _psislw(lw[varying])
    return torch.from_numpy(khat).reshape(log_weights.shape[1:])


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """Importance-sampling ESS per example, ``(sum w)^2 / sum w^2``, from ``(K, N)`` log weights
    (or ``(K,)`` for one example)."""
    lw = log_weights.double()
    return torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
