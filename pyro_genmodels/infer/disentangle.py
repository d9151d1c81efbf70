"""Objectives for disentangled representations, as Pyro ELBOs any VAE model/guide pair can
train with: beta-TCVAE (:class:`TCVAE_ELBO`), FactorVAE (:class:`FactorVAE_ELBO`), DIP-VAE I
and II (:class:`DIPVAE_ELBO`) and AnnealedVAE (:class:`AnnealedELBO`); beta-VAE is the
``beta`` of every objective.

beta-TCVAE (Chen et al. 2018, "Isolating sources of disentanglement in VAEs"):

The KL term of the ELBO, averaged over the data, splits into three (their eq. 2)::

    E_p(x) KL(q(z|x) || p(z)) = I_q(x; z)                        index-code MI
                              + KL(q(z) || prod_d q(z_d))          total correlation
                              + sum_d KL(q(z_d) || p(z_d))         dimension-wise KL

and beta-TCVAE weights them ``alpha``, ``beta``, ``gamma``. Per image i of a minibatch of N
(from a data set of M), with z_i ~ q(z | x_i)::

    MI_i = log q(z_i | x_i) - log q(z_i)
    TC_i = log q(z_i) - sum_d log q(z_id)
    DW_i = sum_d log q(z_id) - log p(z_i)

so ``MI_i + TC_i + DW_i = log q(z_i | x_i) - log p(z_i)`` exactly, and with
``alpha = beta = gamma = 1`` the loss is the negative ELBO on the same sample. The aggregate
posterior q(z) = (1/M) sum_m q(z | x_m) and its marginals q(z_d) are estimated on the
minibatch by weighted sampling: the image's own term with weight 1/M and each of the
N - 1 others with weight (M - 1) / (M (N - 1)), an unbiased estimate of q(z_i) for
batches drawn uniformly, exact when the batch is the whole data set. (Chen et al.'s code
weights every term 1/(N M), which shifts log q(z) and the log marginals by constants.)
"""

from __future__ import annotations

import math

import torch
from pyro.infer.util import torch_item
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent

from .elbo import TraceELBO


class _LossFromParticles:
    """``loss`` through :meth:`_differentiable_loss_particle` (Trace_ELBO's own ``loss``
    recomputes the plain ELBO and would leave out the objective's terms)."""

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))


def aggregate_log_q(pair: torch.Tensor, dataset_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch estimates of log q(z_i) and of sum_d log q(z_id) from
    ``pair[i, j, d] = log q(z_id | x_j)`` ``(N, N, D)``, with the weights of the module
    docstring; returns two ``(N,)`` tensors."""
    n, m = pair.shape[0], int(dataset_size)
    if n > m:
        raise ValueError(f"a batch of {n} images from a data set of {m}")
    other = math.log((m - 1) / (m * (n - 1))) if n > 1 else 0.0
    log_weight = torch.full((n, n), other, dtype=pair.dtype, device=pair.device)
    log_weight.fill_diagonal_(-math.log(m))
    log_qz = torch.logsumexp(pair.sum(-1) + log_weight, dim=1)
    log_marginals = torch.logsumexp(pair + log_weight.unsqueeze(-1), dim=1).sum(-1)
    return log_qz, log_marginals


class TCVAE_ELBO(TraceELBO):  # noqa: N801 (Pyro's naming)
    """The beta-TCVAE loss for a model/guide pair with one latent site whose guide
    distribution is diagonal (an ``Independent`` of a batch of univariate distributions,
    batched over the images in the data plate).

    :param dataset_size: M, the number of training images the minibatches come from (the
        trainer sets it; None until then).
    :param alpha: weight of the index-code mutual information.
    :param beta: weight of the total correlation.
    :param gamma: weight of the dimension-wise KL.
    """

    def __init__(self, dataset_size: int | None, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 1.0, **kwargs):  # fmt: skip
        if dataset_size is not None and int(dataset_size) < 2:
            raise ValueError(f"dataset_size must be at least 2, got {dataset_size}")
        for name, weight in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        super().__init__(num_particles=1, vectorize_particles=False, **kwargs)
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def decomposition(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Per image ``(N,)``: ``log_lik`` (log p(x | z)), ``mi``, ``tc``, ``dwkl``,
        ``log_q`` (log q(z|x)), ``log_p`` (log p(z)), on one sample of z."""
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        return self._terms(model_trace, guide_trace)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``sum_i -log p(x_i | z_i) + alpha MI_i + beta TC_i + gamma DW_i``."""
        t = self.decomposition(model, guide, *args, **kwargs)
        regularizer = self.alpha * t["mi"] + self.beta * t["tc"] + self.gamma * t["dwkl"]
        return (regularizer - t["log_lik"]).sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def _terms(self, model_trace, guide_trace) -> dict[str, torch.Tensor]:
        latents = [name for name, s in guide_trace.nodes.items()
                   if s["type"] == "sample" and not site_is_subsample(s)
                   and not s["is_observed"]]  # fmt: skip
        if len(latents) != 1:
            raise ValueError(f"beta-TCVAE needs one latent site in the guide, got {latents}")
        name = latents[0]
        q_site, p_site = guide_trace.nodes[name], model_trace.nodes.get(name)
        if p_site is None or p_site["is_observed"]:
            raise ValueError(f"guide site {name!r} is not a latent of the model")
        fn = q_site["fn"]
        if not (isinstance(fn, Independent) and fn.reinterpreted_batch_ndims == 1):
            raise ValueError(
                f"beta-TCVAE needs a diagonal q({name}|x) (an Independent over one event "
                f"dimension) to estimate the marginals q({name}_d); got {type(fn).__name__}"
            )
        z = q_site["value"]
        if z.dim() != 2 or fn.batch_shape != z.shape[:1]:
            got = f"{tuple(z.shape)} with batch shape {tuple(fn.batch_shape)}"
            raise ValueError(f"expected {name} of shape (N, D) batched over the images, got {got}")
        n, m = z.shape[0], self.dataset_size
        if m is None:
            raise ValueError("beta-tcvae needs the size of the training set (dataset_size=)")
        pair = fn.base_dist.log_prob(z.unsqueeze(1))  # [i, j, d] = log q(z_id | x_j)
        log_qz, log_marginals = aggregate_log_q(pair, m)
        log_q = pair.diagonal(dim1=0, dim2=1).sum(0)
        log_p = p_site["fn"].log_prob(p_site["value"])
        log_lik = z.new_zeros(n)
        for other, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                lp = site["fn"].log_prob(site["value"])
                if site["mask"] is not None:
                    lp = lp * site["mask"]
                log_lik = log_lik + lp.reshape(n, -1).sum(-1)
            elif other != name:
                raise ValueError(f"model latent {other!r} is not in the guide")
        return {
            "log_lik": log_lik,
            "mi": log_q - log_qz,
            "tc": log_qz - log_marginals,
            "dwkl": log_marginals - log_p,
            "log_q": log_q,
            "log_p": log_p,
        }


def _posterior_moments(fn) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean ``(N, D)`` and covariance ``(N, D, D)`` of a Gaussian guide distribution."""
    if isinstance(fn, Independent) and fn.reinterpreted_batch_ndims == 1:
        mean, variance = fn.mean, fn.variance
        return mean, torch.diag_embed(variance)
    if hasattr(fn, "covariance_matrix") and len(fn.event_shape) == 1:
        return fn.mean, fn.covariance_matrix
    raise ValueError(
        f"DIP-VAE needs the mean and covariance of q(z|x): a diagonal (Independent) or "
        f"multivariate Gaussian guide, got {type(fn).__name__}"
    )


def dip_penalty(mean: torch.Tensor, covariance: torch.Tensor, variant: str,
                lambda_od: float, lambda_d: float) -> torch.Tensor:  # fmt: skip
    """Kumar et al.'s (2018) penalty ``lambda_od sum_{i != j} C_ij^2 + lambda_d sum_i
    (C_ii - 1)^2`` on ``C``, the covariance over the batch of the encoder means (variant
    ``"i"``) or of z under q(z) (``"ii"``: that plus the mean of the posterior covariances).
    Covariances over the batch divide by N (disentanglement_lib's)."""
    centred = mean - mean.mean(0)
    cov = centred.T @ centred / mean.shape[0]
    if variant == "ii":
        cov = cov + covariance.mean(0)
    elif variant != "i":
        raise ValueError(f"unknown DIP-VAE variant {variant!r}; valid: i, ii")
    diagonal = torch.diagonal(cov)
    off = cov - torch.diag_embed(diagonal)
    return lambda_od * (off**2).sum() + lambda_d * ((diagonal - 1) ** 2).sum()


class DIPVAE_ELBO(_LossFromParticles, TraceELBO):  # noqa: N801 (Pyro's naming)
    """DIP-VAE (Kumar et al. 2018): the negative ELBO plus N times :func:`dip_penalty` of the
    batch (N images), so that per image the penalty weighs as in disentanglement_lib, whose
    losses are batch means. One latent site, with a Gaussian guide.

    :param variant: ``"i"`` (covariance of the encoder means) or ``"ii"`` (of z under q(z)).
    :param lambda_od: weight of the off-diagonal terms.
    :param lambda_d: weight of the diagonal terms (disentanglement_lib: 10 lambda_od for I,
        lambda_od for II).
    """

    def __init__(self, variant: str = "i", lambda_od: float = 10.0, lambda_d: float | None = None,
                 **kwargs):  # fmt: skip
        if variant not in ("i", "ii"):
            raise ValueError(f"unknown DIP-VAE variant {variant!r}; valid: i, ii")
        lambda_d = (10.0 if variant == "i" else 1.0) * lambda_od if lambda_d is None else lambda_d
        if not (lambda_od >= 0 and lambda_d >= 0):
            raise ValueError(f"DIP-VAE weights must be >= 0, got {lambda_od}, {lambda_d}")
        super().__init__(vectorize_particles=False, **kwargs)
        self.variant, self.lambda_od, self.lambda_d = variant, float(lambda_od), float(lambda_d)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        latents = [s for s in guide_trace.nodes.values()
                   if s["type"] == "sample" and not s["is_observed"]
                   and not site_is_subsample(s)]  # fmt: skip
        if len(latents) != 1:
            raise ValueError(f"DIP-VAE needs one latent site in the guide, got {len(latents)}")
        mean, covariance = _posterior_moments(latents[0]["fn"])
        penalty = mean.shape[0] * dip_penalty(mean, covariance, self.variant, self.lambda_od,
                                              self.lambda_d)  # fmt: skip
        return loss + penalty.detach(), surrogate + penalty


def capacity_at(capacity: float, capacity_steps: float, step: int) -> float:
    """Burgess et al.'s capacity after optimizer step ``step`` (0-based): rising linearly
    from 0 to ``capacity`` nats over ``capacity_steps`` steps, then held."""
    if capacity_steps <= 0:
        return float(capacity)
    return float(capacity) * min(1.0, (step + 1) / capacity_steps)


class AnnealedELBO(_LossFromParticles, TraceELBO):  # noqa: N801 (Pyro's naming)
    """AnnealedVAE (Burgess et al. 2018, "Understanding disentangling in beta-VAE"): the
    reconstruction term plus ``gamma * N * |KL - C|``, where KL is the batch mean of
    KL(q(z|x) || p(z)) (analytic where torch has it, else the sample's log q - log p) and
    the capacity C (nats) is set by the trainer at every step (:func:`capacity_at`).
    """

    def __init__(self, gamma: float = 1000.0, capacity: float = 0.0, **kwargs):
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        super().__init__(vectorize_particles=False, **kwargs)
        self.gamma, self.capacity = float(gamma), float(capacity)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        from torch.distributions import kl_divergence

        log_lik, kl, n = 0.0, 0.0, None
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                log_lik = log_lik + site["log_prob_sum"]
                continue
            q = guide_trace.nodes.get(name)
            if q is None:
                raise ValueError(f"AnnealedVAE needs every latent in the guide; {name!r} is not")
            if not q["fn"].has_rsample:
                raise ValueError(f"AnnealedVAE needs a reparameterized q({name}|x)")
            try:
                per_image = kl_divergence(q["fn"], site["fn"])
            except NotImplementedError:
                per_image = q["fn"].log_prob(q["value"]) - site["fn"].log_prob(site["value"])
            n = per_image.numel()
            kl = kl + per_image.sum()
        if n is None:
            raise ValueError("AnnealedVAE needs a latent site")
        loss = -log_lik + self.gamma * n * (kl / n - self.capacity).abs()
        return loss.detach(), loss


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each column of ``z`` ``(N, D)`` shuffled across the batch on its own: samples of
    prod_d q(z_d) from samples of q(z) (Kim & Mnih 2018, Algorithm 1)."""
    order = torch.argsort(torch.rand(z.shape, generator=generator, device=z.device), dim=0)
    return torch.gather(z, 0, order)


class Discriminator(torch.nn.Module):
    """FactorVAE's discriminator: an MLP of ``layers`` hidden layers of ``hidden`` units with
    LeakyReLU(0.2) (disentanglement_lib: 6 x 1000), two logits: (from q(z), permuted)."""

    def __init__(self, latent_dim: int, hidden: int = 1000, layers: int = 6):
        super().__init__()
        sizes = [int(latent_dim), *[int(hidden)] * int(layers)]
        body = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            body += [torch.nn.Linear(a, b), torch.nn.LeakyReLU(0.2)]
        self.net = torch.nn.Sequential(*body, torch.nn.Linear(sizes[-1], 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class FactorVAE_ELBO(_LossFromParticles, TraceELBO):  # noqa: N801 (Pyro's naming)
    """FactorVAE (Kim & Mnih 2018, "Disentangling by factorising"): the negative ELBO plus
    ``gamma`` times the discriminator's estimate of the total correlation of each image's
    z, ``logit_q(z) - logit_perm(z)`` (the density-ratio trick), and the discriminator's own
    cross-entropy between the batch's z and :func:`permute_dims` of it.

    Both are in one differentiable loss, so one optimizer with two parameter groups trains
    both at once: the VAE's part sees the discriminator's parameters detached and the
    discriminator's part sees z detached, so each gradient is that of its own loss (the
    value returned is the VAE's part alone). The discriminator is a module the trainer
    owns (so that it is checkpointed and moved with the rest), set as ``discriminator``.
    """

    def __init__(self, gamma: float = 35.0, discriminator: torch.nn.Module | None = None,
                 **kwargs):  # fmt: skip
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        super().__init__(vectorize_particles=False, **kwargs)
        self.gamma, self.discriminator = float(gamma), discriminator

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if self.discriminator is None:
            raise ValueError("FactorVAE needs its discriminator (FactorVAE_ELBO.discriminator)")
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        latents = [s for s in guide_trace.nodes.values()
                   if s["type"] == "sample" and not s["is_observed"]
                   and not site_is_subsample(s)]  # fmt: skip
        if len(latents) != 1 or latents[0]["value"].dim() != 2:
            raise ValueError("FactorVAE needs one latent site of shape (N, D) in the guide")
        z = latents[0]["value"]
        d = self.discriminator
        frozen = {name: p.detach() for name, p in d.named_parameters()}
        logits = torch.func.functional_call(d, frozen, (z,))
        tc = (logits[:, 0] - logits[:, 1]).sum()
        n = z.shape[0]
        real, fake = z.detach(), permute_dims(z.detach())
        labels = torch.cat([torch.zeros(n), torch.ones(n)]).long().to(z.device)
        d_loss = n * torch.nn.functional.cross_entropy(d(torch.cat([real, fake])), labels)
        self.last_discriminator_loss = d_loss.detach() / n
        return (loss + self.gamma * tc.detach(),
                surrogate + self.gamma * tc + (d_loss - d_loss.detach()))  # fmt: skip
