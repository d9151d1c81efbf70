"""Image likelihoods as distributions over whole images (event_shape ``(C, H, W)``)."""

from .likelihoods import (
    DATA_FORMATS,
    LIKELIHOOD_DATA_FORMATS,
    LIKELIHOODS,
    BernoulliLikelihood,
    CategoricalLikelihood,
    GaussianLikelihood,
    Likelihood,
    LogisticMixtureLikelihood,
    get_likelihood,
)
from .logistic_mixture import DiscretizedLogisticMixture

__all__ = [
    "DATA_FORMATS",
    "LIKELIHOOD_DATA_FORMATS",
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "DiscretizedLogisticMixture",
    "LogisticMixtureLikelihood",
    "GaussianLikelihood",
    "Likelihood",
    "get_likelihood",
]
