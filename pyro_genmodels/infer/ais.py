r"""Annealed importance sampling (AIS) of log p(x) per example, for any model/guide pair.

Each chain starts at :math:`z_0 \sim q(z \mid x)` (the guide; the prior when
``guide=None``) and follows the geometric path
:math:`f_b(z) = q(z \mid x)^{1-b}\, p(x, z)^{b}` over a sigmoidal schedule
:math:`0 = b_0 < \dots < b_T = 1` (Neal 2001; Wu et al. 2017 for decoder-based models).
Its log weight gathers :math:`(b_t - b_{t-1}) [\log p(x, z) - \log q(z \mid x)]` at the state
*before* the move at temperature :math:`b_t`; the move is HMC targeting :math:`f_{b_t}`, run in
each latent site's unconstrained space (``biject_to`` of its support, with its log-Jacobian).
The estimate is :math:`\log \frac{1}{C} \sum_c w_c`; with one step and no move it is the
importance-weighted estimate with K = C.

Step sizes are adapted per example toward an acceptance rate of ``target_accept`` from the
acceptance of extra *tuning chains* only; the chains that enter the estimate never influence
their own kernels. Given the tuning chains, every estimating chain therefore runs a fixed
sequence of HMC kernels, each leaving its intermediate density invariant, which is exactly the
setting in which AIS weights are unbiased (Neal 2001, section 3). Adapting from the
estimating chains themselves would make a kernel depend on the chain it moves and bias the
weights.

Randomness is drawn per example from its own stream (seeded by ``seed`` and the example's
index), so an example's estimate does not depend on how examples are batched or chunked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from torch.distributions import biject_to
from tqdm.auto import tqdm

from .diagnostics import effective_sample_size
from .importance import (
    _PARTICLES,
    Layout,
    _data_dim,
    _empty_guide,
    _enumerating,
    _max_plate_nesting,
    _model_log_prob,
    _per_example,
    _positive_int,
    _reduce,
    _sample_sites,
    _sum_plates,
    _traces,
    log_importance_weights,
)

#: chains x examples x pixels per chunk of examples when chunk_size is None
_CHUNK_BUDGET = 2**21


def sigmoid_schedule(num_steps: int, radius: float = 4.0) -> torch.Tensor:
    """``num_steps + 1`` temperatures from 0 to 1, dense at both ends (Grosse et al. 2015)."""
    num_steps = _positive_int(num_steps, "num_steps")
    if num_steps == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.sigmoid(torch.linspace(-radius, radius, num_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class AISEstimate:
    """Per-example results of :func:`ais_estimate` (tensors ``(N,)`` unless stated)."""

    log_marginal: torch.Tensor  # log (1/C) sum_c w_c, nats
    log_weights: torch.Tensor  # (C, N) the chains' log weights
    log_weight_std: torch.Tensor  # std over chains of the log weights
    ess: torch.Tensor  # effective sample size of the C weights
    acceptance_rate: torch.Tensor  # HMC acceptance, mean over steps and estimating chains
    step_size: torch.Tensor  # the adapted step size at the end
    num_steps: int
    num_chains: int
    has_latent: bool


class _Path:
    """log q(z | x), log p(x, z) and the log-Jacobian per (chain, example) at unconstrained
    values ``u`` of the latent sites; ``q`` is the guide plus the prior of any model latent
    the guide does not sample."""

    def __init__(self, model, guide, x, layout: Layout, sites: dict):
        self.model, self.guide, self.x, self.layout = model, guide, x, layout
        self.transforms = {name: biject_to(fn.support) for name, (fn, _) in sites.items()}
        self.event_dims = {name: event_dim for name, (_, event_dim) in sites.items()}
        self.data_dim = None

    def to_unconstrained(self, z: dict) -> dict:
        return {name: self.transforms[name].inv(value).detach() for name, value in z.items()}

    def __call__(self, u: dict, chains: int):
        z = {name: self.transforms[name](value) for name, value in u.items()}
        nesting = self.layout.nesting
        with pyro.plate(_PARTICLES, chains, dim=-nesting - 1):
            guide_tr = poutine.trace(poutine.condition(self.guide, data=z)).get_trace(self.x)
            model = poutine.condition(_enumerating(self.model, self.layout), data=z)
            model_tr = poutine.trace(model).get_trace(self.x)
        guide_tr.compute_log_prob()
        model_tr.compute_log_prob()
        guide_sites, model_sites = _sample_sites(guide_tr), _sample_sites(model_tr)
        if self.data_dim is None:
            self.data_dim = _data_dim(next(iter(model_sites.values())))
        log_q = 0.0
        for site in guide_sites.values():
            log_q = log_q + _reduce(site, site["unscaled_log_prob"], nesting)
        for name in z.keys() - guide_sites.keys():  # model latents drawn from their prior
            site = model_sites[name]
            log_q = log_q + _reduce(site, site["unscaled_log_prob"], nesting)
        log_p = _model_log_prob(model_tr, list(model_sites.values()), self.layout)
        log_jac = 0.0
        for name, value in u.items():
            ladj = self.transforms[name].log_abs_det_jacobian(value, z[name])
            batch_dims = value.dim() - self.event_dims[name]
            ladj = sum_rightmost(ladj, ladj.dim() - batch_dims)
            log_jac = log_jac + self._sum_inner_plates(ladj)
        n = self.x.shape[0]
        parts = (log_q, log_p, log_jac)
        return tuple(_per_example(t, self.layout, self.data_dim, chains, n) for t in parts)

    def kinetic(self, r: dict, chains: int) -> torch.Tensor:
        """``sum r^2 / 2`` per (chain, example): unit mass in the unconstrained space."""
        total = 0.0
        for name, value in r.items():
            total = total + self._sum_inner_plates(
                sum_rightmost(0.5 * value**2, self.event_dims[name])
            )
        return _per_example(total, self.layout, self.data_dim, chains, self.x.shape[0])

    def _sum_inner_plates(self, t: torch.Tensor) -> torch.Tensor:
        return _sum_plates(t, self.layout.nesting, self.data_dim)


def _check_sites(model, guide, x_one, layout: Layout) -> tuple[dict, int]:
    """The continuous latents to move, ``{name: (fn with the support, event_dim)}``, and the
    data plate's dim."""
    guide_tr, model_tr = _traces(model, guide, x_one, 1, layout)
    guide_sites = _sample_sites(guide_tr)
    sites = {}
    for name, site in _sample_sites(model_tr).items():
        if site["is_observed"] or name in layout.enumerated:
            continue
        fn = guide_sites[name]["fn"] if name in guide_sites else site["fn"]
        if fn.support.is_discrete or site["fn"].support.is_discrete:
            where = "the guide samples" if name in guide_sites else "the model has"
            raise ValueError(
                f"AIS moves continuous latents by HMC, but {where} the discrete site {name!r}; "
                "sum it out in the model (infer={'enumerate': 'parallel'}) or use "
                "importance sampling (method iw)"
            )
        sites[name] = (site["fn"], site["fn"].event_dim)
    return sites, _data_dim(next(iter(_sample_sites(model_tr).values())))


def _stream_seed(base: int, index: int) -> int:
    return (base * 1_000_003 + 7919 * index) % (2**62)


def _draw_initial(model, guide, x_n, chains: int, seed: int, devices) -> dict:
    """z_0 ~ q(z | x_n) for one example, drawn as :func:`log_importance_weights` draws it
    from the same seed (so that one AIS step is that estimate)."""
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        layout = _max_plate_nesting(model, guide, x_n)
        guide_tr, model_tr = _traces(model, guide, x_n, chains, layout)
    return {
        name: site["value"].detach()
        for name, site in _sample_sites(model_tr).items()
        if not site["is_observed"] and name not in layout.enumerated
    }


class _Noise:
    """Standard normals and uniforms drawn per example from its own stream."""

    def __init__(self, seeds: list[int], device: torch.device, data_index):
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.device, self.data_index = device, data_index

    def normal_like(self, name: str, value: torch.Tensor) -> torch.Tensor:
        i = self.data_index[name]
        shape = list(value.shape)
        shape[i] = 1
        parts = [
            torch.randn(shape, generator=g, device=self.device, dtype=value.dtype)
            for g in self.gens
        ]
        return torch.cat(parts, i)

    def uniform(self, chains: int, dtype) -> torch.Tensor:
        parts = [
            torch.rand((chains, 1), generator=g, device=self.device, dtype=dtype) for g in self.gens
        ]
        return torch.cat(parts, 1)  # (chains, N)


def _anneal(path, u, betas, chains, tune, noise, step_size, num_leapfrog, rate, target, bar):
    """Run AIS along ``betas`` from ``u``; returns (log weights (C+tune, N), acceptance (N,),
    step sizes (N,)). Works in either direction (reverse AIS: betas from 1 to 0)."""
    total = chains + tune
    n = path.x.shape[0]
    ref = next(iter(u.values()))
    log_eps = ref.new_full((n,), math.log(step_size))
    log_w = ref.new_zeros((total, n))
    accepted = ref.new_zeros((n,))
    betas = betas.to(ref.dtype).tolist()

    def target_and_grad(u, beta):
        u = {k: v.detach().requires_grad_() for k, v in u.items()}
        log_q, log_p, log_jac = path(u, total)
        f = (1 - beta) * log_q + beta * log_p + log_jac
        grads = torch.autograd.grad(f.sum(), list(u.values()))
        return u, f.detach(), dict(zip(u, grads, strict=True)), (log_p - log_q).detach()

    def spread(t_cn, name):  # (C, N) -> broadcastable to the site's value
        value = u[name]
        shape = [1] * value.dim()
        shape[0], shape[noise.data_index[name]] = total, n
        return t_cn.reshape(shape)

    for t in range(1, len(betas)):
        u, f0, grad, ell = target_and_grad(u, betas[t])
        log_w = log_w + (betas[t] - betas[t - 1]) * ell
        if t == len(betas) - 1 or num_leapfrog == 0:
            bar.update(1)
            continue
        eps = log_eps.exp().expand(total, n)
        r = {k: noise.normal_like(k, v) for k, v in u.items()}
        kinetic0 = path.kinetic(r, total)
        u1 = {k: v.detach() for k, v in u.items()}
        r1 = {k: r[k] + 0.5 * spread(eps, k) * grad[k] for k in r}
        for step in range(num_leapfrog):
            u1 = {k: u1[k] + spread(eps, k) * r1[k] for k in u1}
            u1, f1, grad1, _ = target_and_grad(u1, betas[t])
            scale = 1.0 if step == num_leapfrog - 1 else 2.0  # full steps inside, half at the end
            r1 = {k: r1[k] + 0.5 * scale * spread(eps, k) * grad1[k] for k in r1}
        kinetic1 = path.kinetic(r1, total)
        log_accept = (f1 - kinetic1) - (f0 - kinetic0)
        accept = noise.uniform(total, ref.dtype).log() < torch.nan_to_num(log_accept, nan=-math.inf)
        u = {k: torch.where(spread(accept, k), u1[k].detach(), u[k].detach()) for k in u}
        rate_now = accept.to(ref.dtype)
        accepted = accepted + rate_now[:chains].mean(0)
        if tune:
            log_eps = log_eps + rate * (rate_now[chains:].mean(0) - target)
        bar.update(1)
    moves = len(betas) - 2 if num_leapfrog else 0
    rate_mean = accepted / moves if moves else torch.full_like(accepted, float("nan"))
    return log_w, rate_mean, log_eps.exp()


def _positive_or_zero(value, name: str) -> int:
    return 0 if value == 0 and not isinstance(value, bool) else _positive_int(value, name)


def _setup(model, guide, x, num_steps, num_chains, num_leapfrog, tune_chains):
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError("x must be a tensor whose first dimension indexes the examples")
    if torch.is_floating_point(x) and not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    num_steps = _positive_int(num_steps, "num_steps")
    num_chains = _positive_int(num_chains, "num_chains")
    num_leapfrog = _positive_or_zero(num_leapfrog, "num_leapfrog")
    moves = num_steps > 1 and num_leapfrog > 0
    if tune_chains is None:
        tune_chains = max(2, num_chains // 4) if moves else 0
    tune_chains = _positive_or_zero(tune_chains, "tune_chains") if moves else 0
    return num_steps, num_chains, num_leapfrog, tune_chains


def _kernel_options(num_leapfrog, step_size, target_accept, adapt_rate) -> dict:
    if not float(step_size) > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if not 0 < float(target_accept) < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    return dict(num_leapfrog=num_leapfrog, step_size=float(step_size), rate=float(adapt_rate),
                target=float(target_accept))  # fmt: skip


def _base_seed(seed) -> int:
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return int(seed)


def _data_index(z: dict, sites: dict, layout: Layout, data_dim: int) -> dict:
    index = {}
    for name, value in z.items():
        batch_dims = value.dim() - sites[name][1]
        if batch_dims != layout.nesting + 1:
            raise ValueError(
                f"latent site {name!r} has batch shape {tuple(value.shape)}, not the plates': a "
                "latent the guide does not sample cannot depend on an enumerated site (it would "
                "be drawn for every enumerated value); sample it in the guide"
            )
        index[name] = batch_dims + data_dim
    return index


def _run(model, guide, x, betas, chains, tune, kwargs, seeds, start=None, bar=None):
    """AIS over one chunk of examples; ``start``: per-site values ``(N, ...)`` for all chains
    (reverse AIS), else draws from q."""
    layout = _max_plate_nesting(model, guide, x)
    sites, data_dim = _check_sites(model, guide, x[:1], layout)
    devices = [x.device] if x.device.type == "cuda" else []
    total = chains + tune
    if start is None:
        parts = [
            _draw_initial(model, guide, x[i : i + 1], total, s, devices)
            for i, s in enumerate(seeds)
        ]
        probe = parts[0]
        index = _data_index(probe, sites, layout, data_dim)
        z0 = {k: torch.cat([p[k] for p in parts], index[k]) for k in probe}
    else:
        z0 = {k: v.unsqueeze(0).expand(total, *v.shape) for k, v in start.items()}
        index = _data_index(z0, sites, layout, data_dim)
    path = _Path(model, guide, x, layout, sites)
    noise = _Noise([s ^ 0x5DEECE66D for s in seeds], x.device, index)
    return _anneal(path, path.to_unconstrained(z0), betas, chains, tune, noise, bar=bar, **kwargs)


def _summary(log_w, acc, eps, num_steps, chains) -> AISEstimate:
    lw = log_w[:chains]
    return AISEstimate(
        log_marginal=torch.logsumexp(lw, 0) - math.log(chains),
        log_weights=lw,
        log_weight_std=lw.std(0) if chains > 1 else torch.zeros_like(lw[0]),
        ess=effective_sample_size(lw),
        acceptance_rate=acc,
        step_size=eps,
        num_steps=num_steps,
        num_chains=chains,
        has_latent=True,
    )


def ais_estimate(
    model,
    guide,
    x: torch.Tensor,
    num_steps: int,
    num_chains: int = 16,
    *,
    num_leapfrog: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    adapt_rate: float = 0.2,
    tune_chains: int | None = None,
    seed: int | None = None,
    chunk_size: int | None = None,
    example_offset: int = 0,
    progress: bool = False,
) -> AISEstimate:
    r"""AIS estimate of :math:`\log p(x)` per example, with its diagnostics.

    :param model: a Pyro model ``model(x)`` whose sample sites lie in ``pyro.plate("data", N)``;
        its latents must be continuous, or discrete and marked for parallel enumeration (then
        summed out inside the log joint).
    :param guide: ``guide(x)``, the starting distribution q(z | x) (continuous sites only);
        ``None`` starts from the prior.
    :param num_steps: T, temperatures after 0 on the sigmoidal schedule (T - 1 HMC moves).
    :param num_chains: C, chains per example that enter the estimate.
    :param num_leapfrog: leapfrog steps per HMC move (0: no moves).
    :param step_size: the initial leapfrog step size, then adapted per example.
    :param target_accept: the acceptance rate the step sizes are adapted toward.
    :param adapt_rate: change of the log step size per unit of acceptance error and step.
    :param tune_chains: extra chains per example that adapt the step sizes and are left out of
        the estimate (default ``max(2, C // 4)``; see the module docstring for why).
    :param seed: base of the per-example random streams (default: drawn from torch's RNG).
    :param chunk_size: examples per chunk (default: from a memory budget); the results do not
        depend on it.
    :param example_offset: index of ``x[0]`` in a larger set, for its random streams.
    :param progress: a tqdm bar over the annealing steps.
    """
    num_steps, num_chains, num_leapfrog, tune = _setup(
        model, guide, x, num_steps, num_chains, num_leapfrog, tune_chains
    )
    guide = _empty_guide if guide is None else guide
    n = x.shape[0]
    if n == 0:
        empty = x.new_zeros((0,))
        return AISEstimate(empty, x.new_zeros((num_chains, 0)), empty, empty, empty, empty,
                           num_steps, num_chains, True)  # fmt: skip
    layout = _max_plate_nesting(model, guide, x)
    if not layout.has_latent:
        exact = log_importance_weights(model, guide, x, 1)[0]
        nan = torch.full_like(exact, float("nan"))
        return AISEstimate(exact, exact.expand(num_chains, n), torch.zeros_like(exact),
                           torch.full_like(exact, float(num_chains)), nan, nan, num_steps,
                           num_chains, False)  # fmt: skip
    kwargs = _kernel_options(num_leapfrog, step_size, target_accept, adapt_rate)
    betas = sigmoid_schedule(num_steps)
    base = _base_seed(seed)
    chunk = chunk_size or max(1, _CHUNK_BUDGET // ((num_chains + tune) * max(1, x[0].numel())))
    chunk = _positive_int(chunk, "chunk_size")
    results = []
    with torch.enable_grad(), tqdm(total=num_steps * math.ceil(n / chunk), desc="AIS",
                                   disable=not progress, leave=False) as bar:  # fmt: skip
        for i in range(0, n, chunk):
            seeds = [_stream_seed(base, example_offset + j) for j in range(i, min(n, i + chunk))]
            results.append(_run(model, guide, x[i : i + chunk], betas, num_chains, tune, kwargs,
                                seeds, bar=bar))  # fmt: skip
    log_w, acc, eps = (torch.cat(parts, -1) for parts in zip(*results, strict=True))
    return _summary(log_w.detach(), acc, eps, num_steps, num_chains)


def ais_log_marginal(model, guide, x: torch.Tensor, num_steps: int, num_chains: int = 16, **kwargs):
    r""":math:`\log \frac{1}{C} \sum_c w_c` per example, ``(N,)``: a stochastic lower bound on
    log p(x) that tightens as ``num_steps`` grows; see :func:`ais_estimate` for the options."""
    return ais_estimate(model, guide, x, num_steps, num_chains, **kwargs).log_marginal


@dataclass
class BDMCResult:
    """:func:`bdmc` per simulated example (tensors ``(N,)``)."""

    x: torch.Tensor  # the simulated data
    lower: torch.Tensor  # forward AIS from q(z | x): log p(x) in expectation at most
    upper: torch.Tensor  # reverse AIS from the true z: log p(x) in expectation at least
    gap: torch.Tensor  # upper - lower
    forward: AISEstimate
    reverse_acceptance_rate: torch.Tensor


def bdmc(
    model,
    guide,
    num_examples: int,
    num_steps: int,
    num_chains: int = 16,
    *,
    x_like: torch.Tensor | None = None,
    seed: int | None = None,
    num_leapfrog: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    adapt_rate: float = 0.2,
    tune_chains: int | None = None,
) -> BDMCResult:
    r"""Bidirectional Monte Carlo (Grosse et al. 2015) on data simulated from the model.

    Draws :math:`(z^*, x) \sim p(z)\,p(x \mid z)`; forward AIS from q(z | x) gives a stochastic
    lower bound on log p(x); reverse AIS, from :math:`b = 1` down to 0 starting at the
    exact posterior sample :math:`z^*`, estimates :math:`1/p(x)` without bias, so
    :math:`-\log \frac{1}{C}\sum_c w^{rev}_c` is a stochastic upper bound. Their gap bounds
    the error of either estimate on such data.

    :param x_like: a batch of valid data; ``x_like[0]`` is the template of the simulated
        examples (their shape; the model's observed site ``x`` is then sampled). Default: a
        black image of the ``image_shape`` of the module whose method ``model`` is.
    :param seed: base of the random streams; the other options are :func:`ais_estimate`'s,
        used in both directions.
    """
    num_examples = _positive_int(num_examples, "num_examples")
    owner = getattr(model, "__self__", None)
    if x_like is None and hasattr(owner, "image_shape"):
        ref = next(owner.parameters(), torch.zeros(()))
        x_like = ref.new_zeros((1, *owner.image_shape))
    if not isinstance(x_like, torch.Tensor) or x_like.dim() == 0 or len(x_like) == 0:
        raise ValueError("bdmc needs x_like, a non-empty batch of data to take the shape from")
    template = x_like[:1].expand(num_examples, *x_like.shape[1:]).clone()
    guide_ = _empty_guide if guide is None else guide
    with torch.no_grad():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(template)
    observed = [s for s in _sample_sites(trace).values() if s["infer"].get("was_observed")]
    if len(observed) != 1 or observed[0]["value"].shape != template.shape:
        raise ValueError("BDMC simulates x: the model needs one observed site holding x")
    x = observed[0]["value"].detach()
    layout = _max_plate_nesting(model, guide_, x)
    z_star = {
        name: site["value"].detach()
        for name, site in _sample_sites(trace).items()
        if not site["infer"].get("was_observed") and name not in layout.enumerated
    }
    base = _base_seed(seed)
    kernel = dict(num_leapfrog=num_leapfrog, step_size=step_size, target_accept=target_accept,
                  adapt_rate=adapt_rate, tune_chains=tune_chains)  # fmt: skip
    forward = ais_estimate(model, guide, x, num_steps, num_chains, seed=base, **kernel)
    num_steps, num_chains, num_leapfrog, tune = _setup(
        model, guide_, x, num_steps, num_chains, num_leapfrog, tune_chains
    )
    options = _kernel_options(num_leapfrog, step_size, target_accept, adapt_rate)
    seeds = [_stream_seed(base + 1, j) for j in range(num_examples)]
    betas = sigmoid_schedule(num_steps).flip(0)
    with torch.enable_grad(), tqdm(disable=True) as bar:
        log_w, acc, _ = _run(model, guide_, x, betas, num_chains, tune, options, seeds, z_star, bar)
    log_w = log_w[:num_chains].detach()
    upper = -(torch.logsumexp(log_w, 0) - math.log(num_chains))
    lower = forward.log_marginal
    return BDMCResult(x, lower, upper, upper - lower, forward, acc)
