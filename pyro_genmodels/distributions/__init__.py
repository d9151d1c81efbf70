"""Image likelihoods as distributions over whole images (event_shape ``(C, H, W)``)."""

from .autoregressive import AutoregressiveImage
from .likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    CategoricalLikelihood,
    GaussianLikelihood,
    Likelihood,
    LogisticMixtureLikelihood,
    get_likelihood,
)
from .logistic_mixture import DiscretizedLogisticMixture
from .mixture import DiagonalNormalMixture

__all__ = [
    "AutoregressiveImage",
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "DiagonalNormalMixture",
    "DiscretizedLogisticMixture",
    "LogisticMixtureLikelihood",
    "GaussianLikelihood",
    "Likelihood",
    "get_likelihood",
]
