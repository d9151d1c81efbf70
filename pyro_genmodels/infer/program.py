r"""What one trace of a model/guide pair tells the estimators, and whether an estimate exists.

:func:`probe` traces the guide once, replays the model on it and returns a :class:`Layout`
(plate nesting, enumerated sites, auxiliary guide sites, the data plate's dim). It refuses,
with a :class:`ValueError` that says why, every pair for which an importance-sampling estimate
of :math:`\log p(x)` does not exist or would silently be another quantity:

* a site outside ``pyro.plate("data", N)``, a subsampled plate, a data plate of another size;
* a model with no site that observes data;
* a guide site the model does not have (unless marked ``infer={"is_auxiliary": True}``, as
  the ``z_unconstrained`` sites of Pyro's ``AutoNormal`` are), or one the model *observes*
  (e.g. after ``pyro.condition``): its draws would enter q but not p;
* a point-mass guide site (``dist.Delta``: ``AutoDelta``, deterministic encoders) not pushed
  forward from an auxiliary site: a point mass has no density to weight by;
* a guide site whose support differs from the model site's (a ``LogNormal`` guide for a
  ``Normal`` latent covers z > 0 only, and the estimate would be the integral over z > 0).
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

DATA_PLATE = "data"
PARTICLES = "_iw_particles"


def empty_guide(*args, **kwargs) -> None:
    """A guide with no sites: every latent is then drawn from the prior."""


def sample_sites(trace) -> dict:
    """The trace's sample sites (subsample sites left out), by name."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }


def is_auxiliary(site) -> bool:
    return bool(site["infer"].get("is_auxiliary"))


def data_frame(site):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE and frame.vectorized:
            return frame
    hint = ""
    if is_auxiliary(site):
        hint = (
            " (an auxiliary guide site that joins all examples, as AutoDiagonalNormal's and "
            "AutoMultivariateNormal's do, has no per-example density: use AutoNormal, or a "
            "guide with a site per example)"
        )
    raise ValueError(
        f"sample site {site['name']!r} is not inside pyro.plate({DATA_PLATE!r}, N); per-example "
        f"log p(x) needs every sample site of the model and guide inside a vectorized plate "
        f"named {DATA_PLATE!r} over the N examples{hint}"
    )


def check_plates(site, num_examples: int) -> None:
    """The data plate covers the batch, and no plate subsamples (its scale would be lost)."""
    frame = data_frame(site)
    for f in site["cond_indep_stack"]:
        if f.full_size is not None and f.full_size != f.size:
            raise ValueError(
                f"site {site['name']!r}: pyro.plate({f.name!r}) subsamples {f.size} of "
                f"{f.full_size}; per-example log p(x) needs full plates (drop subsample_size "
                "and pass the subset of examples as x)"
            )
    if frame.size != num_examples:
        raise ValueError(
            f"site {site['name']!r}: pyro.plate({DATA_PLATE!r}) has size {frame.size} but x has "
            f"{num_examples} examples; the data plate must span x.shape[0]"
        )


class Layout(NamedTuple):
    """What one probe trace tells about a model/guide pair."""

    nesting: int  # max plate nesting (the data plate and any plates inside it)
    enumerated: list[str]  # model sites summed out by parallel enumeration
    has_latent: bool  # whether the model has any unobserved site
    data_dim: int = -1  # the dim of pyro.plate("data")
    auxiliary: tuple[str, ...] = ()  # guide sites marked is_auxiliary (in log q, not in p)
    latents: tuple[str, ...] = ()  # the model's unobserved sites


def _base_fn(fn):
    """``fn`` without the wrappers (Independent, masked, expanded) that keep its support."""
    while isinstance(fn, dist.Independent | dist.MaskedDistribution | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn


def is_point_mass(fn) -> bool:
    return isinstance(_base_fn(fn), dist.Delta)


#: constraint classes that differ from another only on a set of measure zero
_SAME_AS = {constraints._GreaterThanEq: constraints._GreaterThan,
            constraints._HalfOpenInterval: constraints._Interval}  # fmt: skip


def _kind(c) -> type:
    """The constraint's class below ``Constraint`` (Pyro's softplus_positive is positive)."""
    mro = type(c).__mro__
    kind = mro[mro.index(constraints.Constraint) - 1]
    return _SAME_AS.get(kind, kind)


def _same_value(a, b) -> bool:
    if isinstance(a, constraints.Constraint) or isinstance(b, constraints.Constraint):
        return (
            isinstance(a, constraints.Constraint)
            and isinstance(b, constraints.Constraint)
            and same_support(a, b)
        )
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_same_value, a, b))
    if isinstance(a, torch.Tensor | float | int) and isinstance(b, torch.Tensor | float | int):
        a, b = (torch.as_tensor(v).detach().double().cpu() for v in (a, b))
        try:
            return bool((a == b).all())
        except RuntimeError:  # shapes that do not broadcast
            return False
    return a == b


def _unwrap(c):
    """The constraint inside the wrappers that keep its set (independent, mixture)."""
    while hasattr(c, "base_constraint"):
        c = c.base_constraint
    return c


def same_support(a, b) -> bool:
    """Whether the constraints ``a`` and ``b`` describe the same set (up to measure zero).

    Independent and mixture wrappers are looked through (the event dims are the sites'
    business); a dependent constraint, which cannot be inspected, counts as the same.
    """
    a, b = _unwrap(a), _unwrap(b)
    if a is b or constraints.is_dependent(a) or constraints.is_dependent(b):
        return True
    if _kind(a) is not _kind(b):
        return False
    va, vb = vars(a), vars(b)
    return va.keys() == vb.keys() and all(_same_value(va[k], vb[k]) for k in va)


def _check_guide_site(name: str, site, model_sites: dict, auxiliary: bool, point_mass: bool):
    if site["is_observed"]:
        raise ValueError(f"guide site {name!r} is observed; guides only sample latents")
    if is_auxiliary(site):
        return
    if name not in model_sites:
        raise ValueError(
            f"guide site {name!r} does not appear in the model (mark a site that only the guide "
            "uses with infer={'is_auxiliary': True}, as Pyro's AutoNormal does)"
        )
    model_site = model_sites[name]
    if model_site["is_observed"]:
        raise ValueError(
            f"the guide samples site {name!r}, which the model observes (it is conditioned "
            "on data): its draws would enter log q but not log p, and the estimate would not "
            "be log p(x). Leave it out of the guide, e.g. poutine.block(guide, hide="
            f"[{name!r}])"
        )
    if is_point_mass(site["fn"]):
        if auxiliary or point_mass:  # pushed forward from auxiliary sites: their density
            return
        raise ValueError(
            f"guide site {name!r} is a point mass (dist.Delta, as in AutoDelta or a "
            "deterministic encoder): importance sampling needs a proposal with a density, and "
            "p(x, z_hat) at one point is not log p(x). Use guide=None (draws from the prior) "
            "or a guide with a density (e.g. AutoNormal, a Normal around the encoder's output)"
        )
    guide_support, model_support = site["fn"].support, model_site["fn"].support
    if not same_support(guide_support, model_support):
        raise ValueError(
            f"guide site {name!r} has support {guide_support} but the model's site has "
            f"support {model_support}: a proposal must cover the model's support (and stay "
            "inside it), else the estimate is the integral over part of it"
        )


def probe(model, guide, x, check_estimable: bool = True, point_mass: bool = False) -> Layout:
    """Trace the guide once, replay the model on it, and read the :class:`Layout`.

    :param check_estimable: refuse the pairs for which no importance-sampling estimate of
        log p(x) exists (see the module docstring); training only needs the plates.
    :param point_mass: accept point-mass guide sites (Pyro's ELBO convention, where a
        ``Delta`` scores its ``log_density``: a training objective, not log p(x)).
    :raises ValueError: saying why, for a pair laid out otherwise.
    """
    with poutine.block():
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    guide_sites, model_sites = sample_sites(guide_tr), sample_sites(model_tr)
    if check_estimable and not any(s["is_observed"] for s in model_sites.values()):
        raise ValueError(
            "the model observes nothing: log p(x) needs a sample site with obs=x inside "
            f"pyro.plate({DATA_PLATE!r}, N)"
            + ("" if model_sites else " (the model has no sample site at all)")
        )
    nesting = 0
    for site in [*guide_sites.values(), *model_sites.values()]:
        check_plates(site, x.shape[0])
        for frame in site["cond_indep_stack"]:
            if frame.vectorized:
                nesting = max(nesting, -frame.dim)
    auxiliary = tuple(name for name, s in guide_sites.items() if is_auxiliary(s))
    for name, site in guide_sites.items():
        if check_estimable:
            _check_guide_site(name, site, model_sites, bool(auxiliary), point_mass)
        elif name not in model_sites and not is_auxiliary(site):
            raise ValueError(f"guide site {name!r} does not appear in the model")
    enumerated = [
        name
        for name, site in model_sites.items()
        if not site["is_observed"]
        and name not in guide_sites
        and site["infer"].get("enumerate") == "parallel"
    ]
    latents = tuple(name for name, s in model_sites.items() if not s["is_observed"])
    data_dim = data_frame(next(iter(model_sites.values()))).dim if model_sites else -1
    return Layout(nesting, enumerated, bool(latents), data_dim, auxiliary, latents)


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1; a float, bool or anything else is a ValueError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def check_batch(x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError("x must be a tensor whose first dimension indexes the examples")


#: bytes a chunk of importance samples takes on the CPU when no budget is given: there,
#: chunks that stay in cache are fastest (K = 1000 x 100 MNIST images: 1.14-1.25 s in chunks
#: of 10-20 particles, 1.45 s at 53, 1.96 s at 150; best of 4, ``benchmarks/iw_vs_pythae.py``)
CPU_CHUNK_BYTES = 2**25
#: bytes a pass of AIS chains may take on the CPU: memory only (one pass is fastest)
CPU_MEMORY_BUDGET = 2**30


def chunk_budget_bytes(
    device: torch.device, budget: int | None = None, cpu_default: int = CPU_CHUNK_BYTES
) -> int:
    """Bytes one chunk of work may take: ``budget``, else a quarter of the free memory of a
    CUDA device, else ``cpu_default``."""
    if budget is not None:
        return positive_int(budget, "memory_budget")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(2**26, free // 4)
    return cpu_default


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU. Asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return device
