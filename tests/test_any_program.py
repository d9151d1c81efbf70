"""Any Pyro program gets the right log p(x) or a clear refusal (issue 19's cases), from IW,
AIS, BDMC and KL, against closed forms, quadrature and brute force."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs import (
    F64,
    DirichletCategorical,
    GammaPoisson,
    LKJNormal,
    LogNormalPoisson,
    MaskedGammaChain,
    normal_guide,
    normal_normal,
    normal_normal_exact,
)
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal
from test_importance import LinearGaussian
from torch.distributions import constraints

from pyro_genmodels.infer import (
    ais_estimate,
    ais_log_marginal,
    bdmc,
    effective_sample_size,
    importance_estimate,
    kl_divergence,
    log_marginal,
    psis_khat,
)


def _close_in_the_mean(est, exact, copies, slack=0.02):
    """Estimates of ``copies`` replicates of each example agree with ``exact`` within four
    standard errors of their mean (plus ``slack`` for the bias of log-mean-exp)."""
    err = (est.double() - exact.double()).reshape(copies, -1)
    mean, se = err.mean(0), err.std(0) / math.sqrt(copies)
    assert (mean.abs() < 4 * se + slack).all(), (mean, se)


def _every_estimator(model, guide, x, simulate=True):
    yield lambda: log_marginal(model, guide, x, 10)
    yield lambda: importance_estimate(model, guide, x, 10)
    yield lambda: ais_log_marginal(model, guide, x, 5, 2)
    yield lambda: kl_divergence(model, guide, x)
    if simulate:  # BDMC's forward AIS on data simulated from the model
        yield lambda: bdmc(model, guide, len(x), 5, 2, x_like=x)


# -- 1. the guide samples a site the model observes ----------------------------------------


def test_a_guide_sampling_an_observed_site_is_refused_and_the_conditioned_model_is_exact():
    x = torch.tensor([0.5, 2.0], dtype=F64)
    conditioned = pyro.condition(normal_normal, data={"z": torch.tensor(0.0, dtype=F64)})
    for run in _every_estimator(conditioned, normal_guide, x, simulate=False):
        with pytest.raises(
            ValueError, match="the guide samples site 'z', which the model observes"
        ):
            run()
    exact = dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0)) + dist.Normal(0.0, 1.0).log_prob(x)
    torch.testing.assert_close(log_marginal(conditioned, None, x, 10), exact.double())
    torch.testing.assert_close(ais_log_marginal(conditioned, None, x, 5, 2), exact.double())
    torch.testing.assert_close(
        exact, torch.tensor([-1.9629, -3.8379], dtype=F64), atol=1e-4, rtol=0
    )


# -- 2. a guide whose support is not the model's ---------------------------------------------


def _guide_of(make):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", make(x))

    return guide


def test_a_guide_with_another_support_is_refused_naming_the_site_and_both_supports():
    x = torch.tensor([-1.0, 0.5, 2.5], dtype=F64)
    lognormal = _guide_of(lambda x: dist.LogNormal(x.new_zeros(()), 1.0))
    for run in _every_estimator(normal_normal, lognormal, x):
        with pytest.raises(ValueError, match=r"guide site 'z' has support GreaterThan.*Real"):
            run()

    def beta_model(x):
        with pyro.plate("data", x.shape[0]):
            p = pyro.sample("p", dist.Beta(x.new_tensor(2.0), x.new_tensor(3.0)))
            pyro.sample("x", dist.Bernoulli(p), obs=x)

    xb = torch.tensor([0.0, 1.0], dtype=F64)

    def p_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("p", dist.Uniform(x.new_tensor(0.2), x.new_tensor(0.8)))

    for run in _every_estimator(beta_model, p_guide, xb):
        with pytest.raises(ValueError, match=r"'p' has support Interval\(lower_bound=0.2"):
            run()

    def unit_guide(x):  # Uniform(0, 1) covers Beta's support exactly: accepted, and exact
        with pyro.plate("data", x.shape[0]):
            pyro.sample("p", dist.Uniform(x.new_tensor(0.0), x.new_tensor(1.0)))

    exact = torch.tensor([math.log(3 / 5), math.log(2 / 5)], dtype=F64)  # E[1 - p], E[p]
    torch.testing.assert_close(log_marginal(beta_model, unit_guide, xb, 20000), exact, atol=0.02,
                               rtol=0)  # fmt: skip


def test_a_lognormal_guide_for_a_gamma_latent_is_the_same_support():
    # Gamma's support is [0, inf), LogNormal's (0, inf): the same up to a point
    gp = GammaPoisson()
    x = torch.tensor([0.0, 3.0, 7.0], dtype=F64)

    def guide(x):  # near the posterior Gamma(a + x, b + 1), whose mean is (a + x) / (b + 1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(((gp.a + x) / (gp.b + 1)).log(), 0.6))

    # (p/q is unbounded as z -> 0, where the LogNormal vanishes faster than z^(a-1): a loose
    # but valid proposal)
    torch.testing.assert_close(log_marginal(gp.model, guide, x, 20000), gp.exact(x), atol=0.03,
                               rtol=0)  # fmt: skip


# -- 3. point masses --------------------------------------------------------------------------


def test_point_mass_guides_are_refused_and_say_what_to_use_instead():
    x = torch.tensor([-1.0, 0.5, 2.5], dtype=F64)
    delta = _guide_of(lambda x: dist.Delta(x / 2))
    auto = AutoDelta(normal_normal)
    auto(x)
    for guide in (delta, auto):
        for run in _every_estimator(normal_normal, guide, x):
            with pytest.raises(ValueError, match=r"point mass .* Use guide=None"):
                run()


# -- 4. latents whose unconstrained space has another shape ----------------------------------


@pytest.fixture(scope="module")
def lkj_data():
    lkj = LKJNormal()
    g = torch.Generator().manual_seed(0)
    chol = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=F64)
    x = torch.randn(3, lkj.m, 2, generator=g, dtype=F64) @ chol.T
    return lkj, x


def test_lkj_quadrature_is_normalized(lkj_data):
    lkj, _ = lkj_data
    rho = torch.linspace(-1, 1, 40001, dtype=F64)[1:-1]
    log_prior = dist.LKJCholesky(2, torch.tensor(lkj.eta, dtype=F64)).log_prob(lkj.cholesky(rho))
    assert torch.logsumexp(log_prior, 0).exp() * (rho[1] - rho[0]) == pytest.approx(1, abs=1e-4)


def test_ais_and_iw_on_an_lkj_cholesky_latent_match_quadrature(lkj_data):
    lkj, x = lkj_data
    exact = lkj.exact(x)
    copies = 6
    xs = x.repeat(copies, 1, 1)  # chains + tuning chains no longer meet N by chance
    est = ais_log_marginal(lkj.model, None, xs, 100, 8, seed=0)
    _close_in_the_mean(est, exact.repeat(copies), copies)
    torch.testing.assert_close(log_marginal(lkj.model, None, x, 20000), exact, atol=0.02, rtol=0)


def test_ais_on_a_simplex_latent_matches_the_dirichlet_multinomial():
    dc = DirichletCategorical()
    g = torch.Generator().manual_seed(1)
    x = torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), 8 * 4, True, generator=g)
    x = x.reshape(4, 8).to(F64)
    copies = 5
    est = ais_log_marginal(dc.model, None, x.repeat(copies, 1), 100, 8, seed=0)
    _close_in_the_mean(est, dc.exact(x).repeat(copies), copies)
    torch.testing.assert_close(log_marginal(dc.model, None, x, 20000), dc.exact(x), atol=0.02,
                               rtol=0)  # fmt: skip


def _wishart_normal(x):
    with pyro.plate("data", x.shape[0]):
        s = pyro.sample("S", dist.Wishart(x.new_tensor(4.0), torch.eye(2, dtype=x.dtype)))
        pyro.sample("x", dist.MultivariateNormal(x.new_zeros(2), precision_matrix=s), obs=x)


@pytest.mark.filterwarnings("ignore:Singular sample detected")  # Wishart draws, now and then
def test_ais_refuses_supports_without_a_bijection_and_iw_still_works():
    x = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=F64)
    with pytest.raises(
        ValueError, match=r"no bijection .* support PositiveDefinite\(\) of site 'S'"
    ):
        ais_log_marginal(_wishart_normal, None, x, 5, 2)
    # x | S ~ N(0, S^-1) with S ~ Wishart(4, I): x is multivariate t with 3 degrees of freedom
    scale = torch.eye(2, dtype=F64) / math.sqrt(3)
    exact = dist.MultivariateStudentT(3.0, torch.zeros(2, dtype=F64), scale).log_prob(x)
    torch.testing.assert_close(log_marginal(_wishart_normal, None, x, 50000), exact, atol=0.03,
                               rtol=0)  # fmt: skip

    class CholeskyFactor(dist.LKJCholesky):  # a latent whose support is LowerCholesky
        support = constraints.lower_cholesky

    def cholesky_model(x):
        with pyro.plate("data", x.shape[0]):
            L = pyro.sample("L", CholeskyFactor(2, x.new_tensor(2.0)))
            pyro.sample("x", dist.MultivariateNormal(x.new_zeros(2), scale_tril=L), obs=x)

    with pytest.raises(ValueError, match=r"support LowerCholesky\(\) of site 'L'"):
        ais_log_marginal(cholesky_model, None, x, 5, 2)


# -- 5. divergent trajectories at the default settings ---------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_ais_at_default_settings_on_gamma_poisson_matches_the_negative_binomial(dtype):
    gp = GammaPoisson()
    copies = 8
    x = torch.tensor([0.0, 3.0, 7.0, 15.0], dtype=dtype).repeat(copies)
    est = ais_log_marginal(gp.model, None, x, 100, 16, seed=0)  # num_leapfrog=10, step 0.05
    _close_in_the_mean(est, gp.exact(x), copies, slack=0.03)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("step_size", [0.05, 2.0])  # the default, and divergent first steps
def test_ais_on_lognormal_latents_matches_quadrature(dtype, step_size):
    ln = LogNormalPoisson()
    copies = 6
    x = torch.tensor([0.0, 3.0, 7.0, 15.0], dtype=dtype).repeat(copies)
    est = ais_estimate(ln.model, None, x, 300, 8, seed=0, step_size=step_size)
    assert est.log_marginal.dtype == dtype
    _close_in_the_mean(est.log_marginal, ln.exact(x), copies, slack=0.03)


# -- 6. masked latents --------------------------------------------------------------------------


def test_masked_gamma_chain_by_ais_and_iw_matches_the_unmasked_terms():
    chain = MaskedGammaChain([4, 2, 1])
    x = torch.tensor([[1.0, 4.0, 2.0, 0.0], [3.0, 0.0, 9.0, 9.0], [2.0, 5.0, 5.0, 5.0]], dtype=F64)
    exact = chain.exact(x)
    torch.testing.assert_close(log_marginal(chain.model, None, x, 20000), exact, atol=0.03, rtol=0)
    copies = 6
    long_chain = MaskedGammaChain([4, 2, 1] * copies)
    est = ais_estimate(long_chain.model, None, x.repeat(copies, 1), 200, 8, seed=0)
    _close_in_the_mean(est.log_marginal, exact.repeat(copies), copies, slack=0.03)
    assert (est.step_size < 5).all()  # the masked coordinates no longer drift away


# -- 7. per-example parameters and closures: traced on the batch as given --------------------


def test_a_non_amortized_guide_and_a_per_example_closure_work_in_iw_and_ais_alike():
    lg = LinearGaussian(d_z=2, d_x=4, s=0.7, seed=3)
    torch.manual_seed(1)
    x = lg.sample_x(12)
    noise = torch.linspace(0.5, 1.5, 12, dtype=F64)  # a per-example label held in a closure
    precision = torch.eye(lg.d_z, dtype=F64) + lg.W.T @ lg.W / noise[:, None, None] ** 2
    post_cov = torch.linalg.inv(precision)
    post_mean = (post_cov @ lg.W.T @ ((x - lg.b) / noise[:, None] ** 2)[..., None])[..., 0]
    loc = post_mean + 0.2  # one free location per example
    scale = 1.3 * post_cov.diagonal(dim1=-2, dim2=-1).sqrt()  # wider than the posterior

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(lg.d_z), 1.0).to_event(1))
            scale = noise[:, None].expand(x.shape)
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, scale).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    cov = lg.W @ lg.W.T + noise[:, None, None] ** 2 * torch.eye(lg.d_x, dtype=F64)
    exact = dist.MultivariateNormal(lg.b, cov).log_prob(x)
    iw = log_marginal(model, guide, x, 20000)
    torch.testing.assert_close(iw, exact, atol=0.01, rtol=0)
    ais = ais_log_marginal(model, guide, x, 200, 16, seed=0)
    torch.testing.assert_close(ais, exact, atol=0.08, rtol=0)


# -- 8. the small crashes ----------------------------------------------------------------------


def test_kl_with_no_guide_is_zero_and_a_model_without_sites_is_a_clear_error():
    x = torch.tensor([0.5, 2.0], dtype=F64)
    torch.testing.assert_close(kl_divergence(normal_normal, None, x), torch.zeros(2, dtype=F64))

    def nothing(x):
        pass

    for run in (lambda: log_marginal(nothing, None, x, 3), lambda: ais_log_marginal(nothing, None,
                x, 3, 2), lambda: kl_divergence(nothing, None, x)):  # fmt: skip
        with pytest.raises(ValueError, match="the model observes nothing"):
            run()
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        ais_log_marginal(normal_normal, None, x, 3, 2, chunk_size=0)


def test_integer_images_for_a_library_model_are_a_clear_error():
    import pyro_genmodels as pg

    vae = pg.create_model("vae", image_shape=(1, 4, 4), latent_dim=2, hidden_dims=(8,))
    x = (torch.rand(3, 1, 4, 4) < 0.5).long()
    for run in _every_estimator(vae.model, vae.guide, x, simulate=False):
        with pytest.raises(
            ValueError, match="images must be a float tensor, got dtype torch.int64"
        ):
            run()


def test_psis_and_ess_take_one_example_as_a_1d_tensor():
    u = torch.rand(20000, dtype=F64, generator=torch.Generator().manual_seed(0))
    log_w = torch.log((u**-0.5 - 1) / 0.5)  # a generalized Pareto tail with k = 0.5
    khat = psis_khat(log_w)
    assert khat.shape == () and abs(khat.item() - 0.5) < 0.1
    assert khat.item() == psis_khat(log_w[:, None])[0].item()
    assert effective_sample_size(torch.zeros(7)).item() == pytest.approx(7)


# -- 9. AutoNormal --------------------------------------------------------------------------------


def _autonormal(model, x, steps=300):
    guide = AutoNormal(model)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    for _ in range(steps):
        svi.step(x)
    return guide


def test_autonormal_by_iw_and_ais_matches_the_exact_value():
    pyro.clear_param_store()
    lg = LinearGaussian(d_z=2, d_x=4, s=0.7, seed=3)
    torch.manual_seed(2)
    x = lg.sample_x(8)
    guide = _autonormal(lg.model, x)
    exact = lg.exact_log_px(x)
    est = importance_estimate(lg.model, guide, x, 20000)
    torch.testing.assert_close(est.log_marginal, exact, atol=0.01, rtol=0)
    assert (est.khat < 0.7).all()
    ais = ais_log_marginal(lg.model, guide, x, 50, 16, seed=0)
    torch.testing.assert_close(ais, exact, atol=0.05, rtol=0)
    # q is Normal(loc, scale) per example: its KL to N(0, I), by Monte Carlo through the
    # auxiliary site and the Delta's log-density, against the closed form
    loc, scale = guide._get_loc_and_scale("z")
    q = dist.Normal(loc.detach(), scale.detach()).to_event(1)
    closed = torch.distributions.kl_divergence(
        q, dist.Normal(torch.zeros_like(loc), 1.0).to_event(1)
    )
    kl = kl_divergence(lg.model, guide, x, num_samples=20000)
    torch.testing.assert_close(kl, closed, atol=0.03, rtol=0)


def test_autonormal_on_a_positive_latent_carries_its_jacobian():
    pyro.clear_param_store()
    gp = GammaPoisson()
    x = torch.tensor([0.0, 3.0, 7.0, 15.0], dtype=F64)
    guide = _autonormal(gp.model, x)
    torch.testing.assert_close(log_marginal(gp.model, guide, x, 20000), gp.exact(x), atol=0.01,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(ais_log_marginal(gp.model, guide, x, 50, 16, seed=0), gp.exact(x),
                               atol=0.05, rtol=0)  # fmt: skip


def test_guides_whose_latent_joins_all_examples_keep_a_clear_error():
    pyro.clear_param_store()
    x = torch.tensor([0.5, 2.0], dtype=F64)
    guide = AutoDiagonalNormal(normal_normal)
    guide(x)
    with pytest.raises(ValueError, match="joins all examples.*use AutoNormal"):
        log_marginal(normal_normal, guide, x, 10)


# -- 10. scale is ignored, as log p(x) has none ----------------------------------------------


def test_poutine_scale_does_not_change_log_px():
    x = torch.tensor([-1.0, 0.5, 2.5], dtype=F64)
    scaled = pyro.poutine.scale(normal_normal, scale=100.0)
    torch.testing.assert_close(log_marginal(scaled, normal_guide, x, 3), normal_normal_exact(x))


# -- BDMC on a constrained latent ------------------------------------------------------------


def test_bdmc_sandwiches_gamma_poisson_at_the_default_kernel():
    gp = GammaPoisson()
    r = bdmc(gp.model, None, 40, 100, 8, x_like=torch.zeros(1, dtype=F64), seed=0)
    exact = gp.exact(r.x)
    for below, above in ((r.lower, exact), (exact, r.upper)):
        diff = below - above
        assert diff.mean() <= 3 * diff.std() / math.sqrt(len(diff)) + 1e-3
    assert r.gap.mean() < 0.1
