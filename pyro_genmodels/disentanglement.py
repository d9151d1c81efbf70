"""Disentanglement metrics, as disentanglement_lib defines them (Locatello et al. 2019,
"Challenging common assumptions in the unsupervised learning of disentangled
representations", appendix; google-research/disentanglement_lib, ``evaluation/metrics``).

``codes`` is an ``(N, D)`` array or tensor of floats (the q(z|x) means), ``factors`` an
``(N, K)`` array or tensor of integer class indices of the true factors of variation.

- :func:`mig`: mutual information gap (Chen et al. 2018);
- :func:`sap`: separated attribute predictability (Kumar et al. 2018);
- :func:`dci`: disentanglement, completeness and informativeness (Eastwood & Williams 2018);
- :func:`modularity`: modularity (Ridgeway & Mozer 2018);
- :func:`beta_vae_score` (Higgins et al. 2017) and :func:`factor_vae_score` (Kim & Mnih
  2018): interventional, on a data set that draws images from given factors
  (:class:`FactorData`).

A factor with one value (dSprites' colour) is left out of every score, as
disentanglement_lib's data sets leave it out: it has nothing to capture, and counting it
would lower SAP, modularity and the interventional scores and raise DCI's informativeness.

The classifiers and regressors the definitions call for are scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sklearn.metrics import mutual_info_score

__all__ = [
    "DCI",
    "FactorData",
    "beta_vae_score",
    "dci",
    "discretize",
    "factor_vae_score",
    "mig",
    "modularity",
    "mutual_information",
    "sap",
]


def _codes_factors(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes, float)
    factors = np.asarray(factors.detach().cpu() if hasattr(factors, "detach") else factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(
            f"codes must be (N, D) and factors (N, K) with the same N, got {codes.shape} "
            f"and {factors.shape}"
        )
    if len(codes) < 2:
        raise ValueError(f"need at least 2 examples, got {len(codes)}")
    if not np.isfinite(codes).all():
        raise ValueError("codes must be finite")
    if not np.issubdtype(factors.dtype, np.integer):
        if not np.array_equal(factors, np.round(factors)):
            raise ValueError("factors must be integer class indices")
        factors = factors.astype(np.int64)
    return codes, factors


def _varying(factors: np.ndarray, metric: str) -> np.ndarray:
    """The factor columns with more than one value."""
    keep = factors.min(axis=0) != factors.max(axis=0)
    if not keep.any():
        raise ValueError(f"every factor is constant: {metric} is undefined")
    return factors[:, keep]


def _varying_factors(data: FactorData) -> list[int]:
    """The factors of ``data`` with more than one value (the ones an intervention fixes)."""
    keep = [k for k, size in enumerate(data.factor_sizes) if size > 1]
    if not keep:
        raise ValueError("every factor has one value: nothing to intervene on")
    return keep


def discretize(codes, num_bins: int = 20) -> np.ndarray:
    """Each code dimension binned into ``num_bins`` equal-width bins over its range
    (disentanglement_lib's ``_histogram_discretize``): ``(N, D)`` integers."""
    codes = np.asarray(codes, float)
    out = np.zeros(codes.shape, np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], num_bins)[1][:-1]
        out[:, d] = np.digitize(codes[:, d], edges)
    return out


def mutual_information(codes, factors, num_bins: int = 20) -> np.ndarray:
    """``(D, K)`` mutual information in nats between each binned code dimension and each
    factor."""
    codes, factors = _codes_factors(codes, factors)
    binned = discretize(codes, num_bins)
    return np.array(
        [[mutual_info_score(factors[:, k], binned[:, d]) for k in range(factors.shape[1])]
         for d in range(binned.shape[1])]
    )  # fmt: skip


def _entropies(factors: np.ndarray) -> np.ndarray:
    return np.array([mutual_info_score(f, f) for f in factors.T])


def mig(codes, factors, num_bins: int = 20) -> float:
    """Mutual information gap: for each factor, the gap between the two code dimensions with
    the most mutual information with it, over the factor's entropy; averaged over factors.
    A factor with one value (no entropy) is left out."""
    codes, factors = _codes_factors(codes, factors)
    if codes.shape[1] < 2:
        raise ValueError("MIG needs at least 2 code dimensions")
    factors = _varying(factors, "MIG")
    m = mutual_information(codes, factors, num_bins)
    top = np.sort(m, axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / _entropies(factors)))


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    if n - n_test < 1:
        raise ValueError(f"{n} examples are too few to split")
    return order[n_test:], order[:n_test]


def sap(codes, factors, test_fraction: float = 0.2, seed: int = 0) -> float:
    """Separated attribute predictability: for each factor and code dimension, the test
    accuracy of a linear SVM (``LinearSVC(C=0.01, class_weight="balanced")``) that predicts
    the factor from that dimension alone; the mean over factors of the gap between the two
    best dimensions. The examples are split at random (``seed``) into training and test.

    Each dimension is standardized on the training split first, so that the score does not
    depend on the codes' scale (disentanglement_lib fits the raw codes, whose scale
    interacts with ``C``). One linear SVM on one dimension separates a factor's extreme
    values from the rest but not its middle ones, so with many values per factor even codes
    equal to the factors score well below 1."""
    from sklearn.svm import LinearSVC

    codes, factors = _codes_factors(codes, factors)
    if codes.shape[1] < 2:
        raise ValueError("SAP needs at least 2 code dimensions")
    factors = _varying(factors, "SAP")
    train, test = _split(len(codes), test_fraction, seed)
    std = codes[train].std(axis=0)
    codes = (codes - codes[train].mean(axis=0)) / np.where(std > 0, std, 1.0)
    score = np.zeros((codes.shape[1], factors.shape[1]))
    for k in range(factors.shape[1]):
        y_train, y_test = factors[train, k], factors[test, k]
        if len(np.unique(y_train)) < 2:
            continue  # a constant factor: nothing to predict (disentanglement_lib scores 0)
        for d in range(codes.shape[1]):
            svm = LinearSVC(C=0.01, class_weight="balanced")
            svm.fit(codes[train, d : d + 1], y_train)
            score[d, k] = np.mean(svm.predict(codes[test, d : d + 1]) == y_test)
    top = np.sort(score, axis=0)[::-1]
    return float(np.mean(top[0] - top[1]))


@dataclass(frozen=True)
class DCI:
    """The three DCI scores, and the ``(D, K)`` importance matrix they come from."""

    disentanglement: float  #: how much each code dimension captures at most one factor
    completeness: float  #: how much each factor is captured by one code dimension
    informativeness: float  #: mean test accuracy of predicting the factors from the codes
    importance: np.ndarray  #: feature importance of code d for factor k


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """``1 - H(p)`` per row of ``p`` (normalized), with logarithms in ``base``."""
    total = p.sum(axis=1, keepdims=True)
    p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    logs = np.log(p, out=np.zeros_like(p), where=p > 0) / np.log(base)
    return 1.0 + (p * logs).sum(axis=1)


def dci(codes, factors, test_fraction: float = 0.2, seed: int = 0, **gbt_options) -> DCI:
    """Eastwood & Williams's DCI with gradient-boosted trees
    (``GradientBoostingClassifier(**gbt_options)``, scikit-learn's defaults otherwise), one per
    factor. The importance of code d for factor k is the trees' feature importance;
    disentanglement is ``1 - H_K`` of each code's row of importances, weighted by the row's
    share; completeness ``1 - H_D`` of each factor's column, weighted alike; informativeness
    the mean test accuracy."""
    from sklearn.ensemble import GradientBoostingClassifier

    codes, factors = _codes_factors(codes, factors)
    factors = _varying(factors, "DCI")
    train, test = _split(len(codes), test_fraction, seed)
    num_codes, num_factors = codes.shape[1], factors.shape[1]
    importance = np.zeros((num_codes, num_factors))
    accuracy = []
    for k in range(num_factors):
        y_train, y_test = factors[train, k], factors[test, k]
        if len(np.unique(y_train)) < 2:
            accuracy.append(float(np.mean(y_test == y_train[0])))
            continue
        model = GradientBoostingClassifier(random_state=seed, **gbt_options)
        model.fit(codes[train], y_train)
        importance[:, k] = np.abs(model.feature_importances_)
        accuracy.append(float(np.mean(model.predict(codes[test]) == y_test)))
    total = importance.sum()
    if total == 0:
        return DCI(0.0, 0.0, float(np.mean(accuracy)), importance)
    per_code = _one_minus_entropy(importance, max(num_factors, 2))
    per_factor = _one_minus_entropy(importance.T, max(num_codes, 2))
    disentanglement = float(np.sum(per_code * importance.sum(axis=1) / total))
    completeness = float(np.sum(per_factor * importance.sum(axis=0) / total))
    return DCI(disentanglement, completeness, float(np.mean(accuracy)), importance)


def modularity(codes, factors, num_bins: int = 20) -> float:
    """Ridgeway & Mozer's modularity: for each code dimension, one minus the share of its
    squared mutual information with factors other than its best one, normalized by
    ``K - 1``; a dimension with no information scores 0. The mean over code dimensions."""
    codes, factors = _codes_factors(codes, factors)
    factors = _varying(factors, "modularity")
    num_factors = factors.shape[1]
    if num_factors < 2:
        raise ValueError("modularity needs at least 2 factors that vary")
    squared = mutual_information(codes, factors, num_bins) ** 2
    best = squared.max(axis=1)
    delta = np.divide(squared.sum(axis=1) - best, best * (num_factors - 1),
                      out=np.zeros_like(best), where=best > 0)  # fmt: skip
    score = np.where(best > 0, 1.0 - delta, 0.0)
    return float(np.mean(score))


class FactorData(Protocol):
    """A data set that draws images from given factors (what interventional metrics need)."""

    factor_sizes: tuple[int, ...]  #: number of values of each factor

    def sample_factors(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """``(num, K)`` factor indices drawn uniformly."""

    def images_from_factors(self, factors: np.ndarray, rng: np.random.Generator):
        """The images ``(num, C, H, W)`` with those factors."""


Encoder = Callable[[object], np.ndarray]


def _encode(encode: Encoder, images) -> np.ndarray:
    codes = encode(images)
    return np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes, float)


def beta_vae_score(
    data: FactorData, encode: Encoder, batch_size: int = 64, num_train: int = 10000,
    num_eval: int = 5000, seed: int = 0,
) -> float:  # fmt: skip
    """Higgins et al.'s beta-VAE score: each point picks a factor k, draws ``batch_size``
    pairs of images that share factor k (the other factors drawn afresh), and averages
    ``|code(x1) - code(x2)|`` over the pairs; a logistic regression predicts k from that
    average. The score is its accuracy on ``num_eval`` new points."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    varying = _varying_factors(data)

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        features, labels = [], []
        for _ in range(n):
            k = varying[rng.integers(len(varying))]
            first = data.sample_factors(batch_size, rng)
            second = data.sample_factors(batch_size, rng)
            second[:, k] = first[:, k]
            a = _encode(encode, data.images_from_factors(first, rng))
            b = _encode(encode, data.images_from_factors(second, rng))
            features.append(np.abs(a - b).mean(axis=0))
            labels.append(k)
        return np.array(features), np.array(labels)

    x_train, y_train = points(num_train)
    x_eval, y_eval = points(num_eval)
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    return float(np.mean(model.predict(x_eval) == y_eval))


def factor_vae_score(data: FactorData, encode: Encoder, batch_size: int = 64,
                     num_train: int = 10000, num_eval: int = 5000,
                     num_variance_estimate: int = 10000, seed: int = 0) -> float:  # fmt: skip
    """Kim & Mnih's FactorVAE score: the codes are divided by their standard deviation over
    ``num_variance_estimate`` images; dimensions whose variance there is below 0.05 are
    inactive. Each vote fixes a factor k across ``batch_size`` images and takes the active
    dimension of least (normalized) variance; a majority-vote classifier maps each dimension
    to the factor it was most often the vote for, trained on ``num_train`` votes. The score
    is its accuracy on ``num_eval`` new votes (0 if no dimension is active)."""
    rng = np.random.default_rng(seed)
    codes = _encode(encode, data.images_from_factors(
        data.sample_factors(num_variance_estimate, rng), rng))  # fmt: skip
    variance = codes.var(axis=0)
    active = variance >= 0.05
    if not active.any():
        return 0.0
    scale = np.sqrt(variance)
    varying = _varying_factors(data)

    def votes(n: int) -> np.ndarray:
        table = np.zeros((codes.shape[1], len(data.factor_sizes)), np.int64)
        for _ in range(n):
            k = varying[rng.integers(len(varying))]
            factors = data.sample_factors(batch_size, rng)
            factors[:, k] = factors[0, k]
            z = _encode(encode, data.images_from_factors(factors, rng)) / scale
            spread = z.var(axis=0)
            spread[~active] = np.inf
            table[np.argmin(spread), k] += 1
        return table

    train = votes(num_train)
    assignment = train.argmax(axis=1)  # dimension -> its most frequent factor
    evaluation = votes(num_eval)
    correct = evaluation[np.arange(len(assignment)), assignment].sum()
    return float(correct / evaluation.sum())
