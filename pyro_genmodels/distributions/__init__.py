"""Image likelihoods as distributions over whole images (event_shape ``(C, H, W)``)."""

from .likelihoods import (
    DATA_FORMATS,
    LIKELIHOOD_DATA_FORMATS,
    LIKELIHOODS,
    BernoulliLikelihood,
    GaussianLikelihood,
    Likelihood,
    get_likelihood,
)

__all__ = [
    "DATA_FORMATS",
    "LIKELIHOOD_DATA_FORMATS",
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "Likelihood",
    "get_likelihood",
]
