r"""Annealed importance sampling (AIS) of log p(x) per example, for any model/guide pair.

Each chain starts at :math:`z_0 \sim q(z \mid x)` (the guide; the prior when
``guide=None``) and follows the geometric path
:math:`f_b(z) = q(z \mid x)^{1-b}\, p(x, z)^{b}` over a sigmoidal schedule
:math:`0 = b_0 < \dots < b_T = 1` (Neal 2001; Wu et al. 2017 for decoder-based models).
Its log weight gathers :math:`(b_t - b_{t-1}) [\log p(x, z) - \log q(z \mid x)]` at the state
*before* the move at temperature :math:`b_t`; the move is HMC targeting :math:`f_{b_t}`, run in
each latent site's unconstrained space (``biject_to`` of its support, with its log-Jacobian,
masked like the site's log density). The estimate is :math:`\log \frac{1}{C} \sum_c w_c`;
with one step and no move it is the importance-weighted estimate with K = C.

Step sizes are adapted per example toward an acceptance rate of ``target_accept`` from the
acceptance of extra *tuning chains* only; the chains that enter the estimate never influence
their own kernels. Given the tuning chains, every estimating chain therefore runs a fixed
sequence of HMC kernels, each leaving its intermediate density invariant, which is exactly the
setting in which AIS weights are unbiased (Neal 2001, section 3). Adapting from the
estimating chains themselves would make a kernel depend on the chain it moves and bias the
weights.

A divergent trajectory (a non-finite position, gradient or density, a value outside the
support) is a rejected proposal: the path is evaluated with Pyro's validation off and such
chains keep their state. Chains and examples are one batch: the model and guide are traced on
``x`` as given (so guides with per-example parameters, such as Pyro's ``AutoNormal``, work),
and all randomness comes from torch's generator, seeded from ``seed`` and ``example_offset``.
The trade for that speed: an example's draws depend on the batch it is in (its estimate's
distribution does not). When a memory budget cannot hold all chains at once, they run in
passes: the first holds the tuning chains, and later passes replay its step sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask, sum_rightmost
from torch.distributions import biject_to
from tqdm.auto import tqdm

from .diagnostics import effective_sample_size
from .hints import hint
from .importance import (
    _enumerating,
    _model_log_prob,
    _per_example,
    _reduce,
    _sum_plates,
    _traces,
    log_importance_weights,
)
from .program import (
    CPU_MEMORY_BUDGET,
    PARTICLES,
    Layout,
    check_batch,
    chunk_budget_bytes,
    empty_guide,
    is_auxiliary,
    is_point_mass,
    positive_int,
    probe,
    sample_sites,
)

#: bytes held per chain x example x pixel during a leapfrog step (activations kept for the
#: gradient, the decoder's output and its log-likelihood terms)
_BYTES_PER_ELEMENT_AND_CHAIN = 24


def sigmoid_schedule(num_steps: int, radius: float = 4.0) -> torch.Tensor:
    """``num_steps + 1`` temperatures from 0 to 1, dense at both ends (Grosse et al. 2015)."""
    num_steps = positive_int(num_steps, "num_steps")
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


@dataclass
class _Site:
    """A latent the chains move: its bijection to the unconstrained space and event dims."""

    transform: torch.distributions.Transform
    event_dim: int  # of the constrained value
    unconstrained_event_dim: int
    auxiliary: str | None = None  # the guide's auxiliary site holding its unconstrained value


def _moved_sites(guide_tr, model_tr, layout: Layout) -> dict[str, _Site]:
    """The continuous latents to move, read from a trace, refusing what HMC cannot move."""
    guide_sites = sample_sites(guide_tr)
    sites = {}
    for name, site in sample_sites(model_tr).items():
        if site["is_observed"] or name in layout.enumerated:
            continue
        fn = guide_sites[name]["fn"] if name in guide_sites else site["fn"]
        if site["fn"].support.is_discrete or (fn.support.is_discrete and not is_point_mass(fn)):
            where = "the guide samples" if name in guide_sites else "the model has"
            raise ValueError(
                f"AIS moves continuous latents by HMC, but {where} the discrete site {name!r}; "
                "sum it out in the model (infer={'enumerate': 'parallel'}) or use "
                "importance sampling (method iw)"
            )
        support = site["fn"].support
        try:
            transform = biject_to(support)
        except NotImplementedError:
            raise ValueError(
                f"AIS moves latents in an unconstrained space, but torch registers no "
                f"bijection (biject_to) for the support {support} of site {name!r}; use "
                "importance sampling (method iw), or a parameterization with one (e.g. "
                "LKJCholesky and scales instead of a covariance matrix)"
            ) from None
        sites[name] = _Site(transform, site["fn"].event_dim, transform.domain.event_dim)
    _pair_auxiliary(guide_sites, sites)
    return sites


def _pair_auxiliary(guide_sites: dict, sites: dict[str, _Site]) -> None:
    """Auxiliary guide sites must be the unconstrained value of one moved latent (Pyro's
    AutoNormal: ``name_unconstrained``, pushed forward by ``biject_to`` of the support)."""
    for aux, site in guide_sites.items():
        if not is_auxiliary(site):
            continue
        name = aux.removesuffix("_unconstrained")
        target = sites.get(name) if name != aux else None
        if target is None or name not in guide_sites:
            raise ValueError(
                f"AIS needs q(z | x) at any z, but the guide's auxiliary site {aux!r} is not the "
                "unconstrained value of one latent (as AutoNormal's 'z_unconstrained' is for "
                "'z'); use importance sampling (method iw)"
            )
        value = target.transform(site["value"])
        if not torch.allclose(value, guide_sites[name]["value"], rtol=1e-4, atol=1e-6):
            raise ValueError(
                f"AIS: the guide's site {name!r} is not biject_to(support) of its auxiliary "
                f"site {aux!r}, so q(z | x) cannot be evaluated at a moved z; use importance "
                "sampling (method iw)"
            )
        target.auxiliary = aux


class _BernoulliForce(torch.autograd.Function):
    """The log-density of a Bernoulli site summed over ``dims`` event dims, where only its
    gradient is read (inside a leapfrog trajectory): the exact gradient ``value -
    sigmoid(logits)`` in the backward, and NaN in the forward, which spares the ``exp`` and
    ``log`` of the density (a tenth of a decoder model's gradient evaluation) and makes any
    use of the value visible."""

    @staticmethod
    def forward(ctx, logits, value, dims: int):
        ctx.save_for_backward(logits, value)
        ctx.dims = dims
        shape = torch.broadcast_shapes(logits.shape, value.shape)
        shape = shape[: len(shape) - dims]
        dtype = torch.promote_types(logits.dtype, value.dtype)
        return torch.full(shape, math.nan, dtype=dtype, device=logits.device)

    @staticmethod
    def backward(ctx, grad):
        logits, value = ctx.saved_tensors
        # in the logits' dtype (autocast's), in place: mixed dtypes take torch's slow path
        dtype, shape = logits.dtype, torch.broadcast_shapes(logits.shape, value.shape)
        force = torch.sigmoid(logits)
        if force.shape != shape:
            force = force.expand(shape).contiguous()
        grad = grad.reshape(grad.shape + (1,) * ctx.dims).to(dtype)
        force.neg_().add_(value.to(dtype)).mul_(grad)
        return force.sum_to_size(logits.shape), None, None


def _bernoulli_logits(fn) -> tuple[torch.Tensor, int] | None:
    """``(logits, event dims)`` of a Bernoulli given by its logits (inside ``Independent``
    wrappers: ``to_event``), else None."""
    dims = 0
    while isinstance(fn, torch.distributions.Independent):
        dims, fn = dims + fn.reinterpreted_batch_ndims, fn.base_dist
    if isinstance(fn, torch.distributions.Bernoulli) and "logits" in fn.__dict__:
        return fn.logits, dims
    return None


def _force_only(model_tr) -> None:
    """Fill the log-probs of the trace's observed Bernoulli sites with
    :class:`_BernoulliForce`: their gradients are exact, their values NaN. Only for a path
    that sums site log-probs (no enumeration), where the gradient does not read the values."""
    for site in model_tr.nodes.values():
        if site["type"] != "sample" or not site["is_observed"] or "log_prob" in site:
            continue
        found = _bernoulli_logits(site["fn"])
        if found is not None:
            log_p = _BernoulliForce.apply(found[0], site["value"], found[1])
            site["unscaled_log_prob"] = log_p
            site["log_prob"] = scale_and_mask(log_p, site["scale"], site["mask"])


class _Path:
    """log q(z | x), log p(x, z) and the log-Jacobian per (chain, example) at unconstrained
    values ``u``, with their gradients; ``q`` is the guide plus the prior of any model latent
    the guide does not sample. A guide with one site has its distribution traced once."""

    def __init__(self, model, guide, x, layout, sites: dict[str, _Site], chains: int,
                 gradient_dtype: torch.dtype | None = None):  # fmt: skip
        self.model, self.guide, self.x, self.layout = model, guide, x, layout
        self.sites, self.chains = sites, chains
        self.gradient_dtype = gradient_dtype
        self.cached_q = None  # (name, site) of a one-site guide, its fn traced once

    def cache_guide(self, guide_tr) -> None:
        """Keep the guide's distribution when it has one site (it depends on x alone)."""
        guide_sites = sample_sites(guide_tr)
        if len(guide_sites) == 1:
            (name, site), = guide_sites.items()  # fmt: skip
            if name in self.sites and not is_point_mass(site["fn"]):
                self.cached_q = (name, site)

    def batch_dims(self, name: str, value: torch.Tensor) -> int:
        return value.dim() - self.sites[name].unconstrained_event_dim

    def per_chain(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """``t`` (shaped like the site's unconstrained value) summed to ``(C, N)``."""
        t = sum_rightmost(t, self.sites[name].unconstrained_event_dim)
        return self.reduce(t)

    def reduce(self, t) -> torch.Tensor:
        t = _sum_plates(torch.as_tensor(t), self.layout.nesting, self.layout.data_dim)
        return _per_example(t, self.layout, self.chains, self.x.shape[0])

    def _log_jacobian(self, name, u, z, model_site) -> torch.Tensor:
        ladj = self.sites[name].transform.log_abs_det_jacobian(u, z)
        extra = ladj.dim() - self.batch_dims(name, u)
        if extra > 0:
            ladj = sum_rightmost(ladj, extra)
        return _reduce(model_site, ladj.expand(u.shape[: self.batch_dims(name, u)]), 0)

    def parts(self, u: dict, force_only: bool = False):
        """``(log_q, log_p, log_jac)``, each ``(C, N)``, at ``u`` (tensors needing grad);
        ``force_only``: for their gradients alone (``log_p`` may then be NaN)."""
        z = {name: self.sites[name].transform(value) for name, value in u.items()}
        data = dict(z)
        data.update({s.auxiliary: u[n] for n, s in self.sites.items() if s.auxiliary})
        nesting = self.layout.nesting
        with pyro.plate(PARTICLES, self.chains, dim=-nesting - 1):
            guide_tr = None
            if self.cached_q is None:
                guide_tr = poutine.trace(poutine.condition(self.guide, data=data)).get_trace(self.x)
            model = poutine.condition(_enumerating(self.model, self.layout), data=z)
            model_tr = poutine.trace(model).get_trace(self.x)
        if force_only and not self.layout.enumerated:
            _force_only(model_tr)
        model_tr.compute_log_prob()
        model_sites = sample_sites(model_tr)
        if self.cached_q is None:
            guide_tr.compute_log_prob()
            guide_sites = sample_sites(guide_tr)
            log_q = 0.0
            for site in guide_sites.values():
                log_q = log_q + _reduce(site, site["unscaled_log_prob"], nesting)
        else:
            name, site = self.cached_q
            guide_sites = {name: site}
            log_q = _reduce(site, site["fn"].log_prob(z[name]), nesting)
        for name in z.keys() - guide_sites.keys():  # model latents drawn from their prior
            site = model_sites[name]
            log_q = log_q + _reduce(site, site["unscaled_log_prob"], nesting)
        log_p = _model_log_prob(model_tr, list(model_sites.values()), self.layout)
        log_jac = 0.0
        for name, value in u.items():
            log_jac = log_jac + self._log_jacobian(name, value, z[name], model_sites[name])
        return self.reduce(log_q), self.reduce(log_p), self.reduce(log_jac)

    @staticmethod
    def _grads(u: dict, output: torch.Tensor, retain: bool = False) -> dict:
        gs = torch.autograd.grad(output, list(u.values()), retain_graph=retain, allow_unused=True)
        return {k: torch.zeros_like(v) if g is None else g.to(v.dtype)
                for (k, v), g in zip(u.items(), gs, strict=True)}  # fmt: skip

    def force(self, u: dict, beta: float) -> dict:
        """The gradient of log f_beta at ``u`` (inside a trajectory, all a step needs), under
        autocast to ``gradient_dtype`` if one is set: any deterministic force field keeps
        the leapfrog volume-preserving and reversible, hence HMC exact."""
        u = {k: v.detach().requires_grad_() for k, v in u.items()}
        low = self.gradient_dtype
        with torch.autocast(self.x.device.type, dtype=low, enabled=low is not None):
            log_q, log_p, log_jac = self.parts(u, force_only=True)
        return self._grads(u, ((1 - beta) * log_q + beta * log_p + log_jac).sum())

    def __call__(self, u: dict) -> _State:
        """The state at ``u`` (the end of a trajectory), in full precision: its parts and the
        gradients of log q + J and log p + J."""
        u = {k: v.detach().requires_grad_() for k, v in u.items()}
        log_q, log_p, log_jac = self.parts(u)
        grad_q = self._grads(u, (log_q + log_jac).sum(), retain=True)
        grad_p = self._grads(u, (log_p + log_jac).sum())
        detached = (t.detach() for t in (log_q, log_p, log_jac))
        return _State({k: v.detach() for k, v in u.items()}, *detached, grad_q, grad_p)


@dataclass
class _State:
    """Chains at ``u``; ``grad_q`` and ``grad_p`` are those of log q + J and log p + J, so
    that the gradient of f_b is ``(1 - b) grad_q + b grad_p``."""

    u: dict
    log_q: torch.Tensor
    log_p: torch.Tensor
    log_jac: torch.Tensor
    grad_q: dict
    grad_p: dict

    def f(self, beta: float) -> torch.Tensor:
        return (1 - beta) * self.log_q + beta * self.log_p + self.log_jac

    def grad(self, beta: float) -> dict:
        return {k: (1 - beta) * self.grad_q[k] + beta * self.grad_p[k] for k in self.u}

    def where(self, keep_new: torch.Tensor, new: _State, spread) -> _State:
        """Per (chain, example): ``new`` where ``keep_new``, else this state."""
        pick = {k: spread(keep_new, k) for k in self.u}

        def choose(a, b):
            return {k: torch.where(pick[k], b[k], a[k]) for k in a}

        return _State(
            choose(self.u, new.u),
            torch.where(keep_new, new.log_q, self.log_q),
            torch.where(keep_new, new.log_p, self.log_p),
            torch.where(keep_new, new.log_jac, self.log_jac),
            choose(self.grad_q, new.grad_q),
            choose(self.grad_p, new.grad_p),
        )


def _finite(path: _Path, u: dict, grads: tuple, total: torch.Tensor | None = None) -> torch.Tensor:
    """``(C, N)``: whether a chain's position, its gradients (dicts like ``u``) and its
    ``total`` density are all finite."""
    ok = torch.isfinite(total) if total is not None else True
    for k, value in u.items():
        bad = ~torch.isfinite(value)
        for g in grads:
            bad = bad | ~torch.isfinite(g[k])
        ok = ok & (path.per_chain(k, bad.to(value.dtype)) == 0)
    return ok


def _all_finite(*tensors: torch.Tensor) -> bool:
    """True only if every element is finite: a sum is finite only then (it may overflow
    when all are, a false alarm that sends the caller to the per-chain check)."""
    return bool(torch.isfinite(sum(t.sum(dtype=torch.float64) for t in tensors)))


def _hmc_move(path: _Path, state: _State, beta, eps_cn, num_leapfrog, spread):
    """One HMC move at temperature ``beta``; returns (state, accepted (C, N)). A chain whose
    trajectory diverges (a non-finite position, gradient or density) stops at its start
    and is rejected. While every chain is finite (checked by one sum a step), no chain is
    masked: the same arithmetic as the masked steps, without their ``torch.where``."""
    r = {k: torch.randn_like(v) for k, v in state.u.items()}
    kinetic0 = sum(path.per_chain(k, 0.5 * v**2) for k, v in r.items())
    eps = {k: spread(eps_cn, k) for k in r}
    start_grad = state.grad(beta)
    u, grad = state.u, start_grad
    r = {k: r[k] + 0.5 * eps[k] * grad[k] for k in r}
    diverged = torch.zeros_like(kinetic0, dtype=torch.bool)
    frozen = None  # per chain, once one has diverged

    def drift(u):  # a full position step; a diverged chain stays at its start
        u = {k: u[k] + eps[k] * r[k] for k in r}
        return u if frozen is None else {k: torch.where(frozen[k], state.u[k], u[k]) for k in r}

    for _ in range(num_leapfrog - 1):  # inside the trajectory: full steps, forces alone
        u = drift(u)
        grad = path.force(u, beta)
        if frozen is not None or not _all_finite(*u.values(), *grad.values()):
            diverged = diverged | ~_finite(path, u, (grad,))
            frozen = {k: spread(diverged, k) for k in r}  # never feed a non-finite state on
            u = {k: torch.where(frozen[k], state.u[k], u[k]) for k in r}
            grad = {k: torch.where(frozen[k], start_grad[k], grad[k]) for k in r}
        r = {k: r[k] + eps[k] * grad[k] for k in r}
    # the end of the trajectory: the state with its density, and a half step
    new = path(drift(u))
    total = new.log_q + new.log_p + new.log_jac
    if frozen is not None or not _all_finite(total, *new.u.values(), *new.grad_q.values(),
                                             *new.grad_p.values()):  # fmt: skip
        diverged = diverged | ~_finite(path, new.u, (new.grad_q, new.grad_p), total)
        new = state.where(~diverged, new, spread)
    grad = new.grad(beta)
    r = {k: r[k] + 0.5 * eps[k] * grad[k] for k in r}
    kinetic1 = sum(path.per_chain(k, 0.5 * v**2) for k, v in r.items())
    log_accept = (new.f(beta) - kinetic1) - (state.f(beta) - kinetic0)
    log_accept = torch.where(diverged | ~torch.isfinite(log_accept), -math.inf, log_accept)
    accept = torch.rand_like(log_accept).log() < log_accept
    return state.where(accept, new, spread), accept


def _anneal(path, state, betas, chains, tune, kernel, schedule, bar):
    """AIS along ``betas`` from ``state``; the first ``chains`` chains estimate, the last
    ``tune`` adapt the step sizes (or ``schedule``, a list of step sizes per move, is
    replayed). Returns (log weights (chains, N), acceptance (N,), step sizes per move)."""
    n = path.x.shape[0]
    log_eps = state.log_q.new_full((n,), math.log(kernel["step_size"]))
    log_w = torch.zeros_like(state.log_q)
    accepted = torch.zeros_like(log_eps)
    betas, used = betas.tolist(), []

    def spread(t_cn, name):  # (C, N) -> broadcastable to the site's unconstrained value
        value = state.u[name]
        shape = [1] * value.dim()
        shape[0] = t_cn.shape[0]
        shape[path.batch_dims(name, value) + path.layout.data_dim] = t_cn.shape[1]
        return t_cn.reshape(shape)

    moves = len(betas) - 2 if kernel["num_leapfrog"] else 0
    for t in range(1, len(betas)):
        log_w = log_w + (betas[t] - betas[t - 1]) * (state.log_p - state.log_q)
        if t <= moves:
            if schedule is not None:
                log_eps = schedule[t - 1]
            used.append(log_eps)
            eps = log_eps.exp().expand_as(log_w)
            state, accept = _hmc_move(path, state, betas[t], eps, kernel["num_leapfrog"], spread)
            rate_now = accept.to(log_w.dtype)
            accepted = accepted + rate_now[:chains].mean(0)
            if tune:
                log_eps = log_eps + kernel["rate"] * (rate_now[chains:].mean(0) - kernel["target"])
        bar.update(1)
    rate = accepted / moves if moves else torch.full_like(accepted, float("nan"))
    return log_w[:chains], rate, used, log_eps.exp()


def _setup(x, num_steps, num_chains, num_leapfrog, tune_chains):
    check_batch(x)
    if torch.is_floating_point(x) and not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    num_steps = positive_int(num_steps, "num_steps")
    num_chains = positive_int(num_chains, "num_chains")
    num_leapfrog = _positive_or_zero(num_leapfrog, "num_leapfrog")
    moves = num_steps > 1 and num_leapfrog > 0
    if tune_chains is None:
        tune_chains = max(2, num_chains // 4) if moves else 0
    tune_chains = _positive_or_zero(tune_chains, "tune_chains") if moves else 0
    return num_steps, num_chains, num_leapfrog, tune_chains


def _positive_or_zero(value, name: str) -> int:
    return 0 if value == 0 and not isinstance(value, bool) else positive_int(value, name)


def _kernel_options(num_leapfrog, step_size, target_accept, adapt_rate, gradient_dtype) -> dict:
    if not float(step_size) > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if not 0 < float(target_accept) < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    if gradient_dtype is not None and not (
        isinstance(gradient_dtype, torch.dtype) and gradient_dtype.is_floating_point
    ):
        raise ValueError(f"gradient_dtype must be None or a float dtype, got {gradient_dtype!r}")
    return dict(num_leapfrog=num_leapfrog, step_size=float(step_size), rate=float(adapt_rate),
                target=float(target_accept), gradient_dtype=gradient_dtype)  # fmt: skip


def _stream_seed(base: int, index: int) -> int:
    return (base * 1_000_003 + 7919 * index) % (2**62)


def _base_seed(seed) -> int:
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return int(seed)


def _check_batch_shapes(u: dict, path: _Path) -> None:
    for name, value in u.items():
        if path.batch_dims(name, value) != path.layout.nesting + 1:
            raise ValueError(
                f"latent site {name!r} has batch shape {tuple(value.shape)}, not the plates': a "
                "latent the guide does not sample cannot depend on an enumerated site (it would "
                "be drawn for every enumerated value); sample it in the guide"
            )


def _chains_per_pass(model, x, total: int, chunk_size, memory_budget) -> int:
    if chunk_size is not None:
        return positive_int(chunk_size, "chunk_size")
    per_pass = hint(model, "iw_samples_per_pass")
    if per_pass:
        return max(1, int(per_pass) // max(1, x.shape[0]))
    per_chain = _BYTES_PER_ELEMENT_AND_CHAIN * x.element_size() * max(1, x.numel())
    budget = chunk_budget_bytes(x.device, memory_budget, CPU_MEMORY_BUDGET)
    return max(1, min(total, budget // per_chain))


def _ais(model, guide, x, betas, chains, tune, kernel, layout, per_pass, bar, start=None):
    """AIS of all chains in passes of at most ``per_pass`` (the tuning chains in the first);
    ``start``: the values ``(N, ...)`` of the latents every chain starts from (reverse AIS),
    else draws from q. Returns (log weights (chains, N), acceptance (N,), step sizes (N,))."""
    log_ws, rates, schedule, eps, done, sites = [], [], None, None, 0, None
    while done < chains:
        width = max(1, per_pass - (tune if schedule is None else 0))
        est = min(chains - done, width)
        total = est + (tune if schedule is None else 0)
        with torch.no_grad():  # the draws right after the probe: T = 1 is the IW estimate
            guide_tr, model_tr = _traces(model, guide, x, total if start is None else 1, layout)
        sites = sites or _moved_sites(guide_tr, model_tr, layout)
        path = _Path(model, guide, x, layout, sites, total, kernel["gradient_dtype"])
        path.cache_guide(guide_tr)  # a one-particle trace's distribution broadcasts
        if start is None:
            z0 = {k: model_tr.nodes[k]["value"].detach() for k in sites}
        else:
            z0 = {k: start[k].unsqueeze(0).expand(total, *start[k].shape) for k in sites}
        u0 = {k: sites[k].transform.inv(v).detach() for k, v in z0.items()}
        _check_batch_shapes(u0, path)
        state = path(u0)
        log_w, rate, used, final = _anneal(path, state, betas, est, total - est, kernel,
                                           schedule, bar)  # fmt: skip
        if schedule is None:
            schedule, eps = used, final
        log_ws.append(log_w.detach())
        rates.append(rate * est)
        done += est
    return torch.cat(log_ws, 0), sum(rates) / chains, eps


def _exact(model, guide, x, num_steps, num_chains, has_latent) -> AISEstimate:
    """A model whose latents are all summed out (or absent): log p(x) exactly."""
    exact = log_importance_weights(model, guide, x, 1)[0]
    nan = torch.full_like(exact, float("nan"))
    return AISEstimate(exact, exact.expand(num_chains, x.shape[0]), torch.zeros_like(exact),
                       torch.full_like(exact, float(num_chains)), nan, nan, num_steps,
                       num_chains, has_latent)  # fmt: skip


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
    memory_budget: int | None = None,
    example_offset: int = 0,
    progress: bool = False,
    gradient_dtype: torch.dtype | None = None,
) -> AISEstimate:
    r"""AIS estimate of :math:`\log p(x)` per example, with its diagnostics.

    :param model: a Pyro model ``model(x)`` whose sample sites lie in ``pyro.plate("data", N)``;
        its latents must be continuous, or discrete and marked for parallel enumeration (then
        summed out inside the log joint; a model with no other latent gets its exact value).
    :param guide: ``guide(x)``, the starting distribution q(z | x) (continuous sites, and the
        auxiliary sites of Pyro's AutoNormal); ``None`` starts from the prior.
    :param num_steps: T, temperatures after 0 on the sigmoidal schedule (T - 1 HMC moves).
    :param num_chains: C, chains per example that enter the estimate.
    :param num_leapfrog: leapfrog steps per HMC move (0: no moves).
    :param step_size: the initial leapfrog step size, then adapted per example.
    :param target_accept: the acceptance rate the step sizes are adapted toward.
    :param adapt_rate: change of the log step size per unit of acceptance error and step.
    :param tune_chains: extra chains per example that adapt the step sizes and are left out of
        the estimate (default ``max(2, C // 4)``; see the module docstring for why).
    :param seed: seeds torch's generator for the draws (default: drawn from it); the caller's
        generator state is left as it was.
    :param chunk_size: chains per pass (default: what ``memory_budget`` holds).
    :param memory_budget: bytes a pass may take (default: a quarter of the free memory of a
        CUDA device, 1 GiB on the CPU).
    :param example_offset: index of ``x[0]`` in a larger set; mixed into the seed, so that
        batches of a larger set draw distinct streams.
    :param progress: a tqdm bar over the annealing steps.
    :param gradient_dtype: compute the leapfrog gradients under autocast to this dtype
        (``torch.bfloat16``: 2.4x faster decoder passes on a CPU with AVX512-BF16, and on
        GPUs); densities, acceptance and weights stay in full precision, so the estimate is
        exactly as valid (leapfrog with any deterministic force field is volume-preserving
        and reversible; only the acceptance rate can change). ``None``: full precision.
    :raises ValueError: for the pairs :func:`~pyro_genmodels.infer.log_marginal` refuses, a
        discrete latent the model does not enumerate, or a support without a bijection.
    """
    num_steps, num_chains, num_leapfrog, tune = _setup(
        x, num_steps, num_chains, num_leapfrog, tune_chains
    )
    kernel = _kernel_options(num_leapfrog, step_size, target_accept, adapt_rate, gradient_dtype)
    guide = empty_guide if guide is None else guide
    n = x.shape[0]
    if n == 0:
        empty = x.new_zeros((0,))
        return AISEstimate(empty, x.new_zeros((num_chains, 0)), empty, empty, empty, empty,
                           num_steps, num_chains, True)  # fmt: skip
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_stream_seed(_base_seed(seed), example_offset))
        layout = probe(model, guide, x)
        if not layout.has_latent:
            return _exact(model, guide, x, num_steps, num_chains, False)
        if set(layout.latents) <= set(layout.enumerated):  # all summed out: nothing to anneal
            return _exact(model, guide, x, num_steps, num_chains, True)
        with pyro.validation_enabled(False), torch.enable_grad():
            per_pass = _chains_per_pass(model, x, num_chains + tune, chunk_size, memory_budget)
            passes = 1 + max(0, math.ceil((num_chains + tune - per_pass) / max(1, per_pass)))
            with tqdm(total=num_steps * passes, desc="AIS", disable=not progress,
                      leave=False) as bar:  # fmt: skip
                log_w, acc, eps = _ais(model, guide, x, sigmoid_schedule(num_steps).to(x.dtype),
                                       num_chains, tune, kernel, layout, per_pass, bar)  # fmt: skip
    return _summary(log_w, acc, eps, num_steps, num_chains)


def _summary(log_w, acc, eps, num_steps, chains) -> AISEstimate:
    if eps is None:
        eps = torch.full_like(acc, float("nan"))
    return AISEstimate(
        log_marginal=torch.logsumexp(log_w, 0) - math.log(chains),
        log_weights=log_w,
        log_weight_std=log_w.std(0) if chains > 1 else torch.zeros_like(log_w[0]),
        ess=effective_sample_size(log_w),
        acceptance_rate=acc,
        step_size=eps,
        num_steps=num_steps,
        num_chains=chains,
        has_latent=True,
    )


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
    memory_budget: int | None = None,
    gradient_dtype: torch.dtype | None = None,
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
    num_examples = positive_int(num_examples, "num_examples")
    owner = getattr(model, "__self__", None)
    if x_like is None and hasattr(owner, "image_shape"):
        ref = next(owner.parameters(), torch.zeros(()))
        x_like = ref.new_zeros((1, *owner.image_shape))
    if not isinstance(x_like, torch.Tensor) or x_like.dim() == 0 or len(x_like) == 0:
        raise ValueError("bdmc needs x_like, a non-empty batch of data to take the shape from")
    template = x_like[:1].expand(num_examples, *x_like.shape[1:]).clone()
    guide_ = empty_guide if guide is None else guide
    base = _base_seed(seed)
    devices = [template.device] if template.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(_stream_seed(base, -1))
        trace = poutine.trace(poutine.uncondition(model)).get_trace(template)
    observed = [s for s in sample_sites(trace).values() if s["infer"].get("was_observed")]
    if len(observed) != 1 or observed[0]["value"].shape != template.shape:
        raise ValueError("BDMC simulates x: the model needs one observed site holding x")
    x = observed[0]["value"].detach()
    kernel = dict(num_leapfrog=num_leapfrog, step_size=step_size, target_accept=target_accept,
                  adapt_rate=adapt_rate, tune_chains=tune_chains,
                  gradient_dtype=gradient_dtype)  # fmt: skip
    forward = ais_estimate(model, guide, x, num_steps, num_chains, seed=base,
                           memory_budget=memory_budget, **kernel)  # fmt: skip
    num_steps, num_chains, num_leapfrog, tune = _setup(
        x, num_steps, num_chains, num_leapfrog, tune_chains
    )
    options = _kernel_options(num_leapfrog, step_size, target_accept, adapt_rate, gradient_dtype)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_stream_seed(base + 1, 0))
        layout = probe(model, guide_, x)
        with pyro.validation_enabled(False), torch.enable_grad():
            z_star = {name: trace.nodes[name]["value"].detach() for name in layout.latents}
            per_pass = _chains_per_pass(model, x, num_chains + tune, None, memory_budget)
            betas = sigmoid_schedule(num_steps).flip(0).to(x.dtype)
            with tqdm(disable=True) as bar:
                log_w, acc, _ = _ais(model, guide_, x, betas, num_chains, tune, options, layout,
                                     per_pass, bar, start=z_star)  # fmt: skip
    upper = -(torch.logsumexp(log_w, 0) - math.log(num_chains))
    lower = forward.log_marginal
    return BDMCResult(x, lower, upper, upper - lower, forward, acc)
